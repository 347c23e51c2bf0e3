"""The gateway's route table: which ``/v2/`` paths exist, their methods, and the service that
serves them. Written once; the services' own routes are the same paths.

A repository name may contain slashes, so each pattern anchors the part after the name (a
digest, a tag, an upload uuid: none of which contains a slash) at the end of the path and lets
the name take the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from shared.errors import ErrorCode, RegistryError
from shared.reference import validate_name

Service = Literal["blob", "manifest"]


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # for metrics: the route, not the path (which names a repository)
    pattern: re.Pattern[str]
    methods: frozenset[str]
    service: Service
    blob_bytes: bool = False  # a GET here answers a blob's bytes (see proxy.forward)


def _route(
    name: str, pattern: str, methods: str, service: Service, blob_bytes: bool = False
) -> Route:
    return Route(name, re.compile(pattern), frozenset(methods.split()), service, blob_bytes)


ROUTES: tuple[Route, ...] = (
    _route("catalog", r"/v2/_catalog", "GET", "manifest"),
    _route("upload start", r"/v2/(?P<name>.+)/blobs/uploads/?", "POST", "blob"),
    _route(
        "upload",
        r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_uuid>[^/]+)",
        "GET PATCH PUT DELETE",
        "blob",
    ),
    _route(
        "blob",
        r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)",
        "GET HEAD DELETE",
        "blob",
        blob_bytes=True,
    ),
    _route(
        "manifest",
        r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)",
        "GET HEAD PUT DELETE",
        "manifest",
    ),
    _route("tags", r"/v2/(?P<name>.+)/tags/list", "GET", "manifest"),
    _route("referrers", r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)", "GET", "manifest"),
)

# Forms of path traversal refused before any routing: a dot segment, an empty segment, a
# backslash, or any of them percent-encoded. Refused outright (400), never redirected.
_TRAVERSAL = re.compile(r"(^|/)\.\.?(/|$)|//|\\|%2e|%2f|%5c|%00", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    path: str
    name: str | None  # the repository's (None for the catalog)


def refuse_traversal(raw_path: str) -> None:
    """``NAME_INVALID`` (400) for a path (as sent, still percent-encoded) that could name
    another place once resolved: checked before anything is forwarded."""
    if _TRAVERSAL.search(raw_path):
        raise RegistryError(
            ErrorCode.NAME_INVALID, "path traversal or an empty path segment is not allowed"
        )


def match(raw_path: str, method: str) -> Match:
    """The route for ``raw_path`` (as sent, still percent-encoded), or the spec error to answer."""
    refuse_traversal(raw_path)
    allowed: set[str] = set()
    for route in ROUTES:
        found = route.pattern.fullmatch(raw_path)
        if found is None:
            continue
        name = found.groupdict().get("name")
        if name is not None:
            validate_name(name)
        if method in route.methods:
            path = raw_path if not raw_path.endswith("/uploads") else raw_path + "/"
            return Match(route, path, name)
        allowed |= route.methods
    if allowed:
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            f"{method} is not allowed here",
            headers={"Allow": ", ".join(sorted(allowed))},
        )
    raise RegistryError(ErrorCode.NOT_FOUND, f"no endpoint at {raw_path[:200]}")
