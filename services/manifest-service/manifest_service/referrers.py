"""Referrers of a manifest (OCI Distribution Spec, "Listing Referrers"): the manifests in a
repository whose ``subject`` is a given digest, as an OCI image index of descriptors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import select

from manifest_service.media_types import OCI_INDEX
from shared import db
from shared.models import Manifest
from shared.repositories import find_repository_id


async def referrers(repository: str, digest: str, artifact_type: str | None) -> dict[str, Any]:
    """The image index listing the referrers of ``digest``, of ``artifact_type`` if given."""
    # In a worker thread whatever the database: a subject may have many referrers.
    return await asyncio.to_thread(_referrers, repository, digest, artifact_type)


_COLUMNS = (
    Manifest.media_type,
    Manifest.digest,
    Manifest.size,
    Manifest.artifact_type,
    Manifest.annotations,
)


def _referrers(repository: str, digest: str, artifact_type: str | None) -> dict[str, Any]:
    descriptors: list[dict[str, Any]] = []
    with db.reading() as connection:
        found = find_repository_id(connection, repository)
        if found is not None:
            query = (
                select(*_COLUMNS)
                .where(Manifest.repository_id == found, Manifest.subject_digest == digest)
                .order_by(Manifest.created_at, Manifest.id)
            )
            if artifact_type is not None:
                query = query.where(Manifest.artifact_type == artifact_type)
            for manifest in connection.execute(query):
                descriptor: dict[str, Any] = {
                    "mediaType": manifest.media_type,
                    "digest": manifest.digest,
                    "size": manifest.size,
                }
                if manifest.artifact_type:
                    descriptor["artifactType"] = manifest.artifact_type
                if manifest.annotations:
                    descriptor["annotations"] = json.loads(manifest.annotations)
                descriptors.append(descriptor)
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
