"""The operators' policies (``REGISTRY_POLICIES_FILE``, YAML or JSON, re-read within a second
of a change): which tags are immutable. Example::

    immutable_tags:
      - repositories: ["prod/*", "base/*"]   # globs, as the users file's grants
        tags: ["v*", "release-*"]             # globs on the tag
      - repositories: ["*"]
        regex: '^v?\\d+\\.\\d+\\.\\d+$'           # or a regular expression the whole tag matches

A tag an ``immutable_tags`` rule matches, once pushed, never moves to other bits and is never
deleted (nor is the manifest it names, by digest): the manifest PUT that would move it and the
DELETE are refused with ``DENIED`` and a message naming the rule; pushing the same manifest
again is fine. A mirror's pull-through is not a push: it follows its upstream.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import yaml_files
from shared.errors import ErrorCode, RegistryError
from shared.settings import get_settings

log = logging.getLogger("registry.policies")


class PoliciesFileError(ValueError):
    """The policies file cannot be used (its message says where and why)."""


class ImmutableTags(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repositories: tuple[str, ...] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return regex

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


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    immutable_tags: tuple[ImmutableTags, ...] = ()

    def immutable(self, repository: str, tag: str) -> ImmutableTags | None:
        """The first rule that makes ``tag`` of ``repository`` immutable, if any."""
        return next((r for r in self.immutable_tags if r.matches(repository, tag)), None)


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
    return f"{len(found.immutable_tags)} immutable tag rule(s)"


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


def refuse_immutable(repository: str, tag: str, doing: str) -> None:
    """``DENIED`` when ``tag`` of ``repository`` is immutable; ``doing`` says what was refused
    ("move", "delete")."""
    rule = configured().immutable(repository, tag)
    if rule is None:
        return
    log.info(
        "policy refused %s of immutable tag %s:%s (%s)", doing, repository, tag, rule.describe()
    )
    raise RegistryError(
        ErrorCode.DENIED,
        f"tag {tag} of {repository} is immutable (policy: {rule.describe()}): it cannot be "
        f"{'moved to another manifest' if doing == 'move' else 'deleted'}; push a new tag",
    )
