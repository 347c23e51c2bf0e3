"""A registry of a given size, written straight into its database: the scale fixture.

``python -m bench.scale --blobs 100000 DATABASE_URL [--storage DIR]`` migrates the database and
fills it, in bulk inserts, with a registry of the shape the users this is for hold, scaled to
``--blobs``: per blob, 0.05 repositories, 0.2 image manifests, 1 tag. Each image manifest
references a config and three layers of its own and a base layer it shares with another
repository; a tenth of the blobs is unreferenced; one manifest in twenty has a referrer (a
signature with it as subject) and one in twenty is listed by an index. Every manifest is a
valid OCI document whose digest is that of its bytes; every blob's digest is that of its (tiny)
content, written under ``--storage`` when given, so that pulls of fixture content work.
Nothing is due for garbage collection: the registry is idle.

At 1,000,000 blobs: 50,000 repositories, 200,000 image manifests and 20,000 more (referrers,
indexes), 1,010,000 tags, 1,030,000 manifest references.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, insert

from shared import migrate
from shared.db import make_engine
from shared.models import Blob, Manifest, ManifestReference, Repository, RepositoryBlob, Tag

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SIGNATURE = "application/vnd.example.signature.v1"
BATCH = 5_000  # rows a statement
TAGS_PER_MANIFEST = 5


@dataclass
class Shape:
    """How many of each, for ``blobs`` blobs."""

    blobs: int

    @property
    def manifests(self) -> int:
        return max(1, self.blobs // 5)

    @property
    def repositories(self) -> int:
        return max(1, self.blobs // 20)

    @property
    def base_layers(self) -> int:  # shared across repositories
        return max(1, self.blobs // 10)


def _blob(label: str) -> tuple[str, bytes]:
    content = label.encode()
    return "sha256:" + hashlib.sha256(content).hexdigest(), content


def _key(digest: str) -> str:
    hex_digest = digest.split(":", 1)[1]
    return f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


class Filler:
    def __init__(self, engine: Engine, storage: Path | None, created: dt.datetime) -> None:
        self.engine = engine
        self.storage = storage
        self.created = created
        self.counts: dict[str, int] = {}

    def insert(self, table: Table, rows: Iterable[dict[str, Any]]) -> None:
        for batch in _batches(rows):
            with self.engine.begin() as connection:
                connection.execute(insert(table), batch)
            self.counts[table.name] = self.counts.get(table.name, 0) + len(batch)

    def blob_row(self, digest: str, content: bytes) -> dict[str, Any]:
        if self.storage is not None:
            path = self.storage / _key(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return {
            "digest": digest,
            "size": len(content),
            "storage_key": _key(digest),
            "state": "present",
            "created_at": self.created,
        }


def _descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _document(value: dict[str, Any]) -> tuple[str, bytes]:
    body = json.dumps(value, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest(), body


def fill(database_url: str, blobs: int, storage: Path | None = None) -> dict[str, int]:
    """Migrate ``database_url`` and fill it (it should be empty) with a registry of ``blobs``
    blobs; returns the rows written per table."""
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    shape = Shape(blobs)
    created = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).replace(tzinfo=None)
    filler = Filler(engine, storage, created)
    try:
        _fill(filler, shape)
        if engine.dialect.name in ("mysql", "mariadb"):
            # Statistics as a registry that grew to this size has them: the optimizer's
            # choices are what a test of query plans looks at.
            with engine.connect() as connection:
                tables = ", ".join(f"`{name}`" for name in filler.counts)
                connection.exec_driver_sql(f"ANALYZE TABLE {tables}").all()
    finally:
        engine.dispose()
    return filler.counts


def _fill(filler: Filler, shape: Shape) -> None:
    repositories = shape.repositories
    filler.insert(
        Repository.__table__,  # type: ignore[arg-type]
        (
            {"id": r + 1, "name": f"team-{r % 97}/app-{r}", "created_at": filler.created}
            for r in range(repositories)
        ),
    )
    base = [_blob(f"base layer {b}") for b in range(shape.base_layers)]
    blob_rows: list[dict[str, Any]] = [filler.blob_row(d, c) for d, c in base]
    manifest_rows: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    links: set[tuple[int, str]] = set()  # of this batch
    linked: set[tuple[int, str]] = set()  # links to shared blobs, of every batch
    shared_digests = {digest for digest, _ in base}
    tags: list[dict[str, Any]] = []
    manifest_id = 0

    def add_manifest(
        repository: int, document: dict[str, Any], media_type: str, subject: str | None = None
    ) -> tuple[int, str, int]:
        nonlocal manifest_id
        manifest_id += 1
        digest, body = _document(document)
        manifest_rows.append(
            {
                "id": manifest_id,
                "repository_id": repository,
                "digest": digest,
                "media_type": media_type,
                "artifact_type": document.get("artifactType"),
                "subject_digest": subject,
                "annotations": None,
                "size": len(body),
                "content": body,
                "created_at": filler.created,
            }
        )
        return manifest_id, digest, len(body)

    def flush(final: bool = False) -> None:
        if len(manifest_rows) < BATCH * 4 and not final:
            return
        filler.insert(Blob.__table__, blob_rows)  # type: ignore[arg-type]
        filler.insert(Manifest.__table__, manifest_rows)  # type: ignore[arg-type]
        filler.insert(ManifestReference.__table__, references)  # type: ignore[arg-type]
        filler.insert(
            RepositoryBlob.__table__,  # type: ignore[arg-type]
            (
                {"repository_id": r, "blob_digest": d, "created_at": filler.created}
                for r, d in sorted(links)
            ),
        )
        filler.insert(Tag.__table__, tags)  # type: ignore[arg-type]
        for rows in (blob_rows, manifest_rows, references, tags):
            rows.clear()
        links.clear()

    def link(repository: int, digest: str) -> None:
        if digest in shared_digests:
            if (repository, digest) in linked:
                return
            linked.add((repository, digest))
        links.add((repository, digest))

    for m in range(shape.manifests):
        repository = m % repositories + 1
        config = _blob(f"config {m}")
        own = [_blob(f"layer {m}.{n}") for n in range(3)]
        shared = base[m % len(base)]
        blob_rows.extend(filler.blob_row(d, c) for d, c in (config, *own))
        layers = [shared, *own]
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config[0], len(config[1])),
            "layers": [_descriptor(OCI_LAYER, d, len(c)) for d, c in layers],
        }
        image_id, image_digest, image_size = add_manifest(repository, document, OCI_MANIFEST)
        for digest, _ in (config, *layers):
            references.append({"manifest_id": image_id, "digest": digest, "is_manifest": False})
            link(repository, digest)
        generation = m // repositories
        for t in range(TAGS_PER_MANIFEST):
            tags.append(
                {
                    "repository_id": repository,
                    "name": f"v{generation}.{t}",
                    "manifest_id": image_id,
                    "updated_at": filler.created + dt.timedelta(seconds=m),
                    "pulled_at": None,
                }
            )
        if m % 20 == 7:  # a signature of it, as a referrer
            signature = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": SIGNATURE,
                "config": _descriptor(
                    "application/vnd.oci.empty.v1+json", base[0][0], len(base[0][1])
                ),
                "layers": [_descriptor(OCI_LAYER, shared[0], len(shared[1]))],
                "subject": _descriptor(OCI_MANIFEST, image_digest, image_size),
            }
            referrer_id, _, _ = add_manifest(repository, signature, OCI_MANIFEST, image_digest)
            for digest in {base[0][0], shared[0]}:
                references.append(
                    {"manifest_id": referrer_id, "digest": digest, "is_manifest": False}
                )
                link(repository, digest)
        if m % 20 == 13:  # an index listing it
            index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    _descriptor(
                        OCI_MANIFEST,
                        image_digest,
                        image_size,
                        platform={"architecture": "amd64", "os": "linux"},
                    )
                ],
            }
            index_id, _, _ = add_manifest(repository, index, OCI_INDEX)
            references.append(
                {"manifest_id": index_id, "digest": image_digest, "is_manifest": True}
            )
            tags.append(
                {
                    "repository_id": repository,
                    "name": f"multi-{generation}",
                    "manifest_id": index_id,
                    "updated_at": filler.created + dt.timedelta(seconds=m),
                    "pulled_at": None,
                }
            )
        flush()
    flush(final=True)
    # A tenth of the blobs referenced by nothing (pushed, never used; their reviews long done).
    filler.insert(
        Blob.__table__,  # type: ignore[arg-type]
        (filler.blob_row(*_blob(f"unused {u}")) for u in range(shape.blobs // 10)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("database_url", help="an empty database (it is migrated first)")
    parser.add_argument("--blobs", type=int, default=100_000, help="the registry's size")
    parser.add_argument("--storage", type=Path, help="a storage folder for the blobs' objects")
    args = parser.parse_args(argv)
    started = time.monotonic()
    counts = fill(args.database_url, args.blobs, args.storage)
    took = time.monotonic() - started
    rows = ", ".join(f"{table} {count:,}" for table, count in counts.items())
    print(f"filled in {took:.1f} s: {rows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("REGISTRY_LOG_LEVEL", "warning")
    sys.exit(main())
