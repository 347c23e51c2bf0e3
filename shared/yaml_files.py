"""Configuration files in YAML (JSON is YAML too): the users file, the mirrors file."""

from __future__ import annotations

from typing import Any

import yaml


def parse(text: str, where: str, error: type[ValueError]) -> Any:
    """The document ``text`` holds; ``error`` naming ``where`` and the line when it is not
    YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{where}: not valid YAML or JSON{line}") from None
