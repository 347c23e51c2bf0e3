"""Who sees what in the web interface: the registry's own grants (the users file), for the
user the gateway signed in (its internal actor header; no header: anonymous).

With authentication off everything is visible, as through the API. With it on, a repository is
listed and shown only to a user who may ``pull`` from it (the V2 catalog does not filter; this
does), and its delete buttons only to one who may ``delete``. With an external token issuer
the registry holds no grants: nothing is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request

from shared.settings import get_settings
from shared.users import UsersFile
from shared.web import ACTOR_HEADER

EVERYTHING = frozenset({"*"})
NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Viewer:
    user: str | None  # None: anonymous
    signed_in_possible: bool  # authentication is on, with the registry's own users

    def actions(self, repository: str) -> frozenset[str]:
        settings = get_settings()
        if settings.auth == "none":
            return EVERYTHING
        users = _users_file(settings.auth_users_file)
        if users is None:
            return NOTHING
        return users.get().actions(self.user, repository)

    def may(self, action: str, repository: str) -> bool:
        allowed = self.actions(repository)
        return action in allowed or "*" in allowed

    def sees(self, repository: str) -> bool:
        return self.may("pull", repository)

    @property
    def operator(self) -> bool:
        """Whether the registry-wide overview is for them: anyone with authentication off, else
        a user the users file lets list the catalog (``catalog: true``)."""
        settings = get_settings()
        if settings.auth == "none":
            return True
        users = _users_file(settings.auth_users_file)
        if users is None or self.user is None:
            return False
        found = users.get().users.get(self.user)
        return found is not None and found.catalog


@lru_cache
def _users_file(path: str) -> UsersFile | None:
    return UsersFile(Path(path)) if path else None


def viewer(request: Request) -> Viewer:
    settings = get_settings()
    user = request.headers.get(ACTOR_HEADER) or None
    return Viewer(user, settings.auth != "none" and bool(settings.auth_users_file))
