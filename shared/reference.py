"""Grammar of the names the API carries: repository names, tags and digests.

The patterns are those of the OCI Distribution Specification ("Pulling manifests"): a
repository name is ``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*``,
a tag is ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``, and a digest is ``algorithm:encoded`` as in the
OCI image spec's descriptor section, of which this registry verifies sha256 and sha512.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shared.errors import ErrorCode, RegistryError

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# Names longer than this are refused: the database indexes them, and the reference registry
# refuses names over 255 characters too.
MAX_NAME_LENGTH = 255

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(value: str) -> Digest:
    """Parse ``value`` as a digest this registry can verify, or raise DIGEST_INVALID."""
    if not DIGEST_RE.fullmatch(value):
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid digest {value!r}")
    algorithm, encoded = value.split(":", 1)
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"unsupported digest algorithm {algorithm!r}")
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid {algorithm} digest {value!r}")
    return Digest(algorithm, encoded)


def is_digest(reference: str) -> bool:
    return ":" in reference


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise RegistryError(ErrorCode.NAME_INVALID, f"invalid repository name {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise RegistryError(ErrorCode.TAG_INVALID, f"invalid tag {tag[:200]!r}")
    return tag


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
