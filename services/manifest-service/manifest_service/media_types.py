"""Manifest media types this registry accepts, and how to read their descriptors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ErrorCode, ManifestMediaTypeUnsupported, RegistryError
from shared.numbers import INT64_MAX
from shared.reference import parse_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

IMAGE_MANIFESTS = {DOCKER_MANIFEST, OCI_MANIFEST}
INDEXES = {DOCKER_MANIFEST_LIST, OCI_INDEX}
SUPPORTED = IMAGE_MANIFESTS | INDEXES

# Layers that live elsewhere (Windows base layers): their blobs are not expected to be here.
FOREIGN_LAYERS = {
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass
class ParsedManifest:
    media_type: str
    blobs: list[Descriptor] = field(default_factory=list)
    manifests: list[Descriptor] = field(default_factory=list)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def _invalid(detail: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, detail)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest is missing")
    try:
        parse_digest(digest)
    except RegistryError as exc:
        raise _invalid(f"{where}.digest: {exc.detail}") from None
    # The image spec's sizes are int64 (and the database's columns): larger is no size.
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= INT64_MAX:
        raise _invalid(f"{where}.size must be an integer from 0 to {INT64_MAX}")
    return Descriptor(media_type, digest, size)


def _media_type(content_type: str | None, document: dict[str, Any]) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    given = (content_type or "").split(";", 1)[0].strip().lower()
    if given and given not in SUPPORTED:
        raise ManifestMediaTypeUnsupported(f"unsupported manifest media type {given[:200]!r}")
    if given and declared and declared != given:
        raise _invalid(
            f"Content-Type {given!r} does not match the manifest's mediaType {declared!r}"
        )
    media_type = given or declared
    if not media_type:
        # The OCI image spec lets mediaType be absent: tell the kinds apart by their fields.
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type not in SUPPORTED:
        raise ManifestMediaTypeUnsupported(f"unsupported manifest media type {media_type[:200]!r}")
    return media_type


def _artifact_type(document: dict[str, Any]) -> str | None:
    value = document.get("artifactType")
    if value is not None and not isinstance(value, str):
        raise _invalid("artifactType must be a string")
    return value or None


def parse(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse and check a manifest as pushed; raise MANIFEST_INVALID (415 for a media type
    this registry does not store) when it is not one."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise _invalid("manifest is not a JSON object")
    media_type = _media_type(content_type, document)
    version = document.get("schemaVersion")
    if type(version) is not int or version != 2:
        raise _invalid("schemaVersion must be the integer 2")
    parsed = ParsedManifest(media_type=media_type)
    if media_type in IMAGE_MANIFESTS:
        if "config" not in document:
            raise _invalid("an image manifest needs a config descriptor")
        config = _descriptor(document["config"], "config")
        # Go clients write null for an empty list (image-spec's types have no omitempty).
        layers = document.get("layers")
        if layers is None:
            layers = []
        if not isinstance(layers, list):
            raise _invalid("layers must be a list")
        parsed.blobs.append(config)
        for i, layer in enumerate(layers):
            descriptor = _descriptor(layer, f"layers[{i}]")
            if descriptor.media_type not in FOREIGN_LAYERS:
                parsed.blobs.append(descriptor)
        parsed.artifact_type = _artifact_type(document) or config.media_type
    else:
        if "manifests" not in document:
            raise _invalid("an index needs a manifests list")
        children = document["manifests"]
        if children is None:  # Go clients write null for an empty list
            children = []
        if not isinstance(children, list):
            raise _invalid("an index needs a manifests list")
        for i, child in enumerate(children):
            parsed.manifests.append(_descriptor(child, f"manifests[{i}]"))
        parsed.artifact_type = _artifact_type(document)
    if "subject" in document and document["subject"] is not None:
        parsed.subject = _descriptor(document["subject"], "subject")
    annotations = document.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise _invalid("annotations must map strings to strings")
        parsed.annotations = annotations
    return parsed
