"""The operators' policies (``REGISTRY_POLICIES_FILE``, YAML or JSON, re-read within a second
of a change): which tags are immutable, how much a repository may hold, and what the janitor
removes. Example::

    immutable_tags:
      - repositories: ["prod/*", "base/*"]   # globs, as the users file's grants
        tags: ["v*", "release-*"]             # globs on the tag
      - repositories: ["*"]
        regex: '^v?\\d+\\.\\d+\\.\\d+$'           # or a regular expression the whole tag matches
    quotas:
      - repositories: ["team-a/*"]            # each matching repository, on its own
        storage: 20GiB                         # the distinct blobs its manifests reference
        tags: 1000
    retention:                                 # applied by the janitor (janitor.retention)
      - repositories: ["ci/*"]
        keep_last: 20
        older_than: 30d
        unless_pulled_within: 7d
        untagged_older_than: 1d

A tag an ``immutable_tags`` rule matches, once pushed, never moves to other bits and is never
deleted (nor is the manifest it names, by digest): the manifest PUT that would move it and the
DELETE are refused with ``DENIED`` and a message naming the rule; pushing the same manifest
again is fine. A mirror's pull-through is not a push: it follows its upstream.

A repository a ``quotas`` rule matches (the first that does) may not grow past its limits: a
manifest PUT that would bring the bytes of the distinct blobs its manifests reference above
``storage`` (a blob two repositories share counts in both), or its tags above ``tags``, is
refused with ``DENIED`` naming the quota and the usage. A push that adds nothing (the same
manifest again, a tag moved) is never refused, even over a lowered limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import yaml_files
from shared.errors import ErrorCode, RegistryError
from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.policies_file import ImmutableTags as ImmutableTags
    from shared.policies_file import Quota as Quota
    from shared.policies_file import Retention as Retention

log = logging.getLogger("registry.policies")


class PoliciesFileError(ValueError):
    """The policies file cannot be used (its message says where and why)."""


@dataclass(frozen=True, slots=True)
class Usage:
    storage: int  # bytes of the distinct blobs the repository's manifests reference
    tags: int


@dataclass(frozen=True)
class Policies:
    """What the policies file says (its rules are checked by ``shared.policies_file``)."""

    immutable_tags: tuple[ImmutableTags, ...] = ()
    quotas: tuple[Quota, ...] = ()
    retention: tuple[Retention, ...] = ()

    def immutable(self, repository: str, tag: str) -> ImmutableTags | None:
        """The first rule that makes ``tag`` of ``repository`` immutable, if any."""
        return next((r for r in self.immutable_tags if r.matches(repository, tag)), None)

    def quota(self, repository: str) -> Quota | None:
        """The quota of ``repository``: the first rule that matches it, if any."""
        return next((q for q in self.quotas if q.matches(repository)), None)

    def retention_of(self, repository: str) -> Retention | None:
        """The retention rule of ``repository``: the first that matches it, if any."""
        return next((r for r in self.retention if r.matches(repository)), None)


NONE = Policies()


def parse(document: Any) -> Policies:
    """The policies ``document`` (the file's YAML or JSON) states; PoliciesFileError when it
    is not a policies file. Read by ``shared.policies_file``, imported here only when there is
    a file to read (it loads pydantic, which a registry without policies does without)."""
    if document is None:
        return NONE
    from shared import policies_file

    return policies_file.parse(document)


def load(path: Path) -> Policies:
    return parse(yaml_files.read(path, PoliciesFileError))


def _describe(found: Policies) -> str:
    return (
        f"{len(found.immutable_tags)} immutable tag rule(s), {len(found.quotas)} quota(s), "
        f"{len(found.retention)} retention rule(s)"
    )


@cache
def _file() -> yaml_files.Watched[Policies] | None:
    path = get_settings().policies_file
    if not path:
        return None
    return yaml_files.Watched("policies file", Path(path), load, PoliciesFileError, _describe)


def forget_file() -> None:
    """Read the policies file the settings name anew (after the settings changed)."""
    _file.cache_clear()


def configured() -> Policies:
    file = _file()
    return file.get() if file is not None else NONE


def read_at_start() -> None:
    """Read the policies file as a process starts: one that cannot be used stops it there."""
    yaml_files.read_at_start("REGISTRY_POLICIES_FILE", configured, PoliciesFileError)


class PolicyDenied(RegistryError):
    """A push or delete a policy refuses: ``DENIED``, and a ``deny`` event (``denied``)."""

    def __init__(
        self, repository: str, detail: str, *, tag: str | None = None, digest: str | None = None
    ) -> None:
        super().__init__(ErrorCode.DENIED, detail)
        self.repository = repository
        self.tag = tag
        self.digest = digest


def denied(session: Any, refusal: PolicyDenied) -> None:
    """Record ``refusal`` as a ``deny`` event, for the endpoints that want those (in a
    transaction of its own: the refused change's was rolled back)."""
    from shared import notifications

    notifications.record(
        session,
        "deny",
        refusal.repository,
        tag=refusal.tag,
        digest=refusal.digest,
        reason=refusal.detail,
    )


_REFUSED = {
    "move": "it cannot be moved to another manifest; push a new tag",
    "delete": "it cannot be deleted; push a new tag",
    "delete a manifest of": "the manifests its index refers to cannot be deleted",
}


def refuse_immutable(repository: str, tag: str, doing: str) -> None:
    """``DENIED`` when ``tag`` of ``repository`` is immutable; ``doing`` says what was refused
    ("move", "delete", "delete a manifest of")."""
    rule = configured().immutable(repository, tag)
    if rule is None:
        return
    log.info(
        "policy refused %s of immutable tag %s:%s (%s)", doing, repository, tag, rule.describe()
    )
    raise PolicyDenied(
        repository,
        f"tag {tag} of {repository} is immutable (policy: {rule.describe()}): " + _REFUSED[doing],
        tag=tag,
    )


def refuse_over_quota(
    repository: str, quota: Quota, before: Usage, after: Usage, tag: str | None = None
) -> None:
    """``DENIED`` when a push took ``repository`` from ``before`` to ``after`` past ``quota``
    (a push that added nothing is never refused)."""
    over = []
    if (
        quota.storage is not None
        and after.storage > quota.storage
        and after.storage > before.storage
    ):
        over.append(f"storage would be {after.storage} bytes (now {before.storage})")
    if quota.tags is not None and after.tags > quota.tags and after.tags > before.tags:
        over.append(f"tags would be {after.tags} (now {before.tags})")
    if not over:
        return
    log.info("policy refused a push over quota to %s: %s", repository, "; ".join(over))
    raise PolicyDenied(
        repository,
        f"{repository} is over its quota ({quota.describe()}): {'; '.join(over)}",
        tag=tag,
    )
