"""Real images for the client tests, written as OCI image layouts (OCI image spec,
"image-layout.md"): gzip'd tar layers holding real files, a config whose ``rootfs.diff_ids``
are the digests of the uncompressed layers, a manifest, and ``index.json``."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.registry import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, sha256

__all__ = ["OCI_CONFIG", "OCI_INDEX", "OCI_LAYER", "OCI_MANIFEST", "Layout", "sha256"]


@dataclass
class Layout:
    path: Path
    blobs: dict[str, bytes] = field(default_factory=dict)

    def add_blob(self, data: bytes) -> dict[str, object]:
        digest = sha256(data)
        self.blobs[digest] = data
        target = self.path / "blobs" / "sha256" / digest.split(":", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return {"digest": digest, "size": len(data)}


def layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A tar of ``files`` and its gzip'd form."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, mtime=0)


def write_image(
    layout: Layout,
    layers: list[dict[str, bytes]],
    architecture: str = "amd64",
) -> dict[str, object]:
    """Add an image of ``layers`` to ``layout``; returns its manifest descriptor."""
    layer_descriptors = []
    diff_ids = []
    for files in layers:
        tar_bytes, gz = layer(files)
        diff_ids.append(sha256(tar_bytes))
        layer_descriptors.append({"mediaType": OCI_LAYER, **layout.add_blob(gz)})
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"test layer {i}"} for i in range(len(layers))],
    }
    config_descriptor = {"mediaType": OCI_CONFIG, **layout.add_blob(json.dumps(config).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layer_descriptors,
    }
    descriptor: dict[str, object] = {
        "mediaType": OCI_MANIFEST,
        **layout.add_blob(json.dumps(manifest, indent=2).encode()),
        "platform": {"architecture": architecture, "os": "linux"},
    }
    return descriptor


def finish(layout: Layout, manifests: list[dict[str, object]], tag: str = "latest") -> None:
    (layout.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**m, "annotations": {"org.opencontainers.image.ref.name": tag}} for m in manifests
        ],
    }
    (layout.path / "index.json").write_text(json.dumps(index))


def single_image(path: Path, layer_count: int = 3, layer_size: int = 200_000) -> Layout:
    """An image of ``layer_count`` layers, each with a few files of random content."""
    layout = Layout(path)
    layers = [
        {f"layer{i}/data.bin": os.urandom(layer_size), f"layer{i}/README": f"layer {i}\n".encode()}
        for i in range(layer_count)
    ]
    finish(layout, [write_image(layout, layers)])
    return layout


def multi_arch_image(path: Path, architectures: tuple[str, ...] = ("amd64", "arm64")) -> Layout:
    """An index of one image per architecture, sharing a base layer."""
    layout = Layout(path)
    base = {"base/os-release": b"ID=test\n", "base/blob": os.urandom(50_000)}
    manifests = [
        write_image(layout, [base, {f"{arch}/binary": os.urandom(80_000)}], architecture=arch)
        for arch in architectures
    ]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    index_descriptor = {"mediaType": OCI_INDEX, **layout.add_blob(json.dumps(index).encode())}
    finish(layout, [index_descriptor])
    return layout
