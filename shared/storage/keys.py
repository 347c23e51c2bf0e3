"""Where objects live in storage: every key the registry writes is built here.

    <root>/
    ├── blobs/
    │   └── sha256/
    │       └── 47/                                   first two hex digits of the digest
    │           └── 471a4b51...f4381e2/
    │               └── data                          the blob's bytes, written once
    └── uploads/
        └── <upload_uuid>/
            └── data                                  an upload in progress, appended to

A blob is stored once however many repositories hold it; which repository may read it is
recorded in the database, not in the key layout.
"""

from __future__ import annotations

from shared.reference import Digest


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}/data"


def upload_key(upload_uuid: str) -> str:
    return f"uploads/{upload_uuid}/data"


def digest_of_blob_key(key: str) -> Digest | None:
    """The digest whose blob lives at ``key``, or None for any other key."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "blobs" or parts[4] != "data" or parts[3][:2] != parts[2]:
        return None
    return Digest(parts[1], parts[3])


def upload_uuid_of_key(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "uploads" or parts[2] != "data":
        return None
    return parts[1]
