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

import datetime as dt
import fnmatch
import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
)

from shared import yaml_files
from shared.errors import ErrorCode, RegistryError
from shared.numbers import parse_duration
from shared.settings import get_settings

log = logging.getLogger("registry.policies")


class PoliciesFileError(ValueError):
    """The policies file cannot be used (its message says where and why)."""


def _compiles(regex: str) -> str:
    try:
        re.compile(regex)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return regex


Pattern = Annotated[str, AfterValidator(_compiles)]  # a regular expression, checked


class ImmutableTags(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repositories: tuple[str, ...] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    regex: Pattern | None = None

    def model_post_init(self, context: Any) -> None:
        if not self.tags and self.regex is None:
            raise ValueError("a rule names its tags: tags (globs) or regex")

    def matches(self, repository: str, tag: str) -> bool:
        if not any(fnmatch.fnmatchcase(repository, glob) for glob in self.repositories):
            return False
        if any(fnmatch.fnmatchcase(tag, glob) for glob in self.tags):
            return True
        return self.regex is not None and re.fullmatch(self.regex, tag) is not None

    def describe(self) -> str:
        names = [*self.tags, *([f"/{self.regex}/"] if self.regex else [])]
        return f"tags {', '.join(names)} of {', '.join(self.repositories)}"


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repositories: tuple[str, ...] = Field(min_length=1)
    storage: ByteSize | None = Field(None, gt=0)
    tags: int | None = Field(None, gt=0)

    def model_post_init(self, context: Any) -> None:
        if self.storage is None and self.tags is None:
            raise ValueError("a quota limits storage, tags or both")

    def matches(self, repository: str) -> bool:
        return any(fnmatch.fnmatchcase(repository, glob) for glob in self.repositories)

    def describe(self) -> str:
        limits = [
            *([f"storage {self.storage.human_readable(decimal=False)}"] if self.storage else []),
            *([f"{self.tags} tags"] if self.tags else []),
        ]
        return f"{', '.join(limits)} for each of {', '.join(self.repositories)}"


Duration = Annotated[dt.timedelta, BeforeValidator(lambda v: _duration(v))]


def _duration(value: Any) -> Any:
    """``7d``, ``12h``, ``30m``, ``90s`` (or seconds, a number, never below 0) in the file."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration is not negative")
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        return parse_duration(value)
    return value


class Retention(BaseModel):
    """Which tags and untagged manifests of the matching repositories the janitor removes
    (``janitor.retention``). A tag is kept when any keep rule holds: among the ``keep_last``
    most recently pushed; matching ``keep`` or ``protect`` (regular expressions on the whole
    tag); pushed within ``older_than``; pulled within ``unless_pulled_within``; immutable. The
    others go (with neither ``keep_last`` nor ``older_than``, no tag goes). Untagged manifests
    created longer than ``untagged_older_than`` ago go too, except an index's platforms and the
    referrers of a manifest that stays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repositories: tuple[str, ...] = Field(min_length=1)
    keep_last: int | None = Field(None, ge=0)
    keep: Pattern | None = None
    protect: Pattern | None = None
    older_than: Duration | None = None
    unless_pulled_within: Duration | None = None
    untagged_older_than: Duration | None = None

    def matches(self, repository: str) -> bool:
        return any(fnmatch.fnmatchcase(repository, glob) for glob in self.repositories)

    def keeps(self, tag: str) -> bool:
        """Whether a pattern keeps ``tag`` whatever its age."""
        return any(p is not None and re.fullmatch(p, tag) for p in (self.keep, self.protect))

    def describe(self) -> str:
        parts = [
            *([f"keep the last {self.keep_last}"] if self.keep_last is not None else []),
            *([f"keep /{self.keep}/"] if self.keep else []),
            *([f"protect /{self.protect}/"] if self.protect else []),
            *([f"remove tags older than {self.older_than}"] if self.older_than else []),
            *(
                [f"unless pulled within {self.unless_pulled_within}"]
                if self.unless_pulled_within
                else []
            ),
            *(
                [f"untagged manifests older than {self.untagged_older_than}"]
                if self.untagged_older_than
                else []
            ),
        ]
        return f"{'; '.join(parts) or 'nothing'} in {', '.join(self.repositories)}"


@dataclass(frozen=True, slots=True)
class Usage:
    storage: int  # bytes of the distinct blobs the repository's manifests reference
    tags: int


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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
    if document is None:
        return NONE
    try:
        return Policies.model_validate(document)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "the file"
        raise PoliciesFileError(f"{where}: {problem['msg']}") from None


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
