"""The policies file's rules, checked as they are read (``shared.policies`` says what they
mean). Imported only where a policies file is read: pydantic, which checks them, costs a
process about 7 MiB of memory.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
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

from shared.numbers import parse_duration
from shared.policies import Policies, PoliciesFileError


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


class PoliciesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    immutable_tags: tuple[ImmutableTags, ...] = ()
    quotas: tuple[Quota, ...] = ()
    retention: tuple[Retention, ...] = ()


def parse(document: Any) -> Policies:
    try:
        found = PoliciesFile.model_validate(document)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "the file"
        raise PoliciesFileError(f"{where}: {problem['msg']}") from None
    return Policies(found.immutable_tags, found.quotas, found.retention)
