"""The metadata database: one schema for MySQL/MariaDB and SQLite.

Blobs are stored once, content-addressed; a repository sees only the blobs linked to it
(``repository_blobs``), so a blob pushed to one repository cannot be read through another unless
it was pushed or mounted there. Manifests belong to a repository and keep their exact bytes;
``manifest_references`` records what each manifest points at (layers and config for an image,
child manifests for an index), which is what the manifest PUT checks and what garbage collection
reads. Tags point at manifests.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# Names compare byte for byte (tags are case-sensitive and listed in lexical order), so MySQL
# must not use its default case-insensitive collation.
TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}

# Manifests are kept whole in the database; MySQL's BLOB holds only 64 KiB.
ManifestBytes = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
# Annotations come from the manifest and can be as large as it is.
ManifestText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# A time that orders events within one second (MySQL's DATETIME keeps whole seconds).
PreciseDateTime = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


BLOB_PRESENT = "present"
BLOB_DELETING = "deleting"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Blob(Base):
    __tablename__ = "blobs"
    __table_args__ = (TABLE_ARGS,)

    digest: Mapped[str] = mapped_column(String(150), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # Where the bytes are now: the upload's temporary key until the janitor has moved the
    # object to its content-addressed key.
    storage_key: Mapped[str] = mapped_column(String(512), index=True)
    # "present", or "deleting" while garbage collection removes the object: a deleting blob is
    # absent to every reader, and an upload of the same content brings it back. Indexed:
    # reconcile looks for the few deleting ones.
    state: Mapped[str] = mapped_column(
        String(16), default=BLOB_PRESENT, server_default=BLOB_PRESENT, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The janitor task moving or deleting the blob's objects, and until when its claim holds
    # unless renewed: storage work is done outside any transaction, one task at a time per
    # blob (``janitor.claims``).
    claimed_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class RepositoryBlob(Base):
    __tablename__ = "repository_blobs"
    __table_args__ = (Index(None, "blob_digest"), TABLE_ARGS)

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    blob_digest: Mapped[str] = mapped_column(
        ForeignKey("blobs.digest", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Upload(Base):
    __tablename__ = "uploads"
    __table_args__ = (TABLE_ARGS,)

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    # The request writing to the upload now, on whichever replica, and until when its lease
    # holds unless renewed: chunks of one upload are written one at a time, and a replica that
    # died while writing holds the upload no longer than that (``blob_service.uploads``).
    writer: Mapped[str | None] = mapped_column(String(36), nullable=True)
    writer_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Manifest(Base):
    __tablename__ = "manifests"
    __table_args__ = (
        UniqueConstraint("repository_id", "digest"),
        Index(None, "repository_id", "subject_digest"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(150))
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_digest: Mapped[str | None] = mapped_column(String(150), nullable=True)
    # Annotations of the manifest, as JSON text, for the referrers list.
    annotations: Mapped[str | None] = mapped_column(ManifestText, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(ManifestBytes)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ManifestReference(Base):
    """A descriptor a manifest holds: a blob (config, layer) or, for an index, a manifest."""

    __tablename__ = "manifest_references"
    __table_args__ = (Index(None, "digest"), TABLE_ARGS)

    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(150), primary_key=True)
    is_manifest: Mapped[bool] = mapped_column(default=False)


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (
        Index(None, "manifest_id"),
        Index(None, "repository_id", "updated_at"),  # a repository's tags by push time
        TABLE_ARGS,
    )

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"))
    updated_at: Mapped[dt.datetime] = mapped_column(PreciseDateTime, default=utcnow)
    # When a client last pulled it by tag, recorded at most once an hour (shared.pulls), for
    # retention's "unless pulled within"; None: not since recording began.
    pulled_at: Mapped[dt.datetime | None] = mapped_column(PreciseDateTime, nullable=True)


class BlobReview(Base):
    """A blob that may have become unreferenced, to be looked at by garbage collection once
    ``review_after`` has passed (see ``shared.reviews``)."""

    __tablename__ = "gc_blob_reviews"
    __table_args__ = (Index(None, "review_after"), TABLE_ARGS)

    digest: Mapped[str] = mapped_column(String(150), primary_key=True)
    review_after: Mapped[dt.datetime] = mapped_column(DateTime)
    reason: Mapped[str] = mapped_column(String(32))


class ManifestReview(Base):
    """A manifest that may have become untagged and unreferenced."""

    __tablename__ = "gc_manifest_reviews"
    __table_args__ = (Index(None, "review_after"), TABLE_ARGS)

    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True
    )
    review_after: Mapped[dt.datetime] = mapped_column(DateTime)
    reason: Mapped[str] = mapped_column(String(32))


class JobLease(Base):
    """Who runs a singleton job (a periodic sweep) until when: several janitor replicas never
    run the same sweep at once."""

    __tablename__ = "job_leases"
    __table_args__ = (TABLE_ARGS,)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class JanitorRun(Base):
    """A housekeeping sweep a janitor ran (garbage collection, reconcile, purge, mirror
    expiry) and what it did: the history the web interface's overview shows. Kept for
    ``janitor.runs.KEPT``."""

    __tablename__ = "janitor_runs"
    __table_args__ = (Index(None, "job", "finished_at"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(PreciseDateTime)
    finished_at: Mapped[dt.datetime] = mapped_column(PreciseDateTime, index=True)
    examined: Mapped[int] = mapped_column(BigInteger, default=0)
    deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_freed: Mapped[int] = mapped_column(BigInteger, default=0)
    moved: Mapped[int] = mapped_column(BigInteger, default=0)
    dry_run: Mapped[bool] = mapped_column(default=False)


class JanitorCursor(Base):
    """Where a long walk of a housekeeping job stopped (the last key it finished), kept while
    it is unfinished: a run interrupted by a restart is taken up there by the next one."""

    __tablename__ = "janitor_cursors"
    __table_args__ = (TABLE_ARGS,)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[str] = mapped_column(String(512))
    updated_at: Mapped[dt.datetime] = mapped_column(PreciseDateTime, default=utcnow)


class EndedWebSession(Base):
    """A web interface session signed out before it expires: a copy of its cookie signs
    nobody in. Kept until the session would have expired."""

    __tablename__ = "ui_ended_sessions"
    __table_args__ = (TABLE_ARGS,)

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class OutboxEvent(Base):
    """An event for the janitor, written in the transaction that made the change it announces
    and deleted once the broker has it (``shared.events``): a crash between the commit and the
    send loses nothing."""

    __tablename__ = "event_outbox"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # When a relay may take it: a while after it is written (the process that wrote it sends
    # it at once), and again a while after a relay took it and did not delete it.
    relay_after: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class Notification(Base):
    """One event for one notification endpoint (``shared.notifications``), written in the
    transaction that made the change; the janitor delivers each endpoint's events of one
    repository in ``id`` order, and keeps them (delivered or parked) for replays until they
    are pruned."""

    __tablename__ = "notifications"
    __table_args__ = (
        # A stream's next event: the endpoint's pending events of a repository, by id.
        Index(None, "endpoint", "state", "repository", "id"),
        Index(None, "state", "next_attempt_at"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    endpoint: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str] = mapped_column(String(255))
    delivery_id: Mapped[str] = mapped_column(String(36), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)  # the event, as the envelope carries it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # delivered, parked
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Pull events sent in one request: the id of the batch's first event, which gives the
    # request its delivery id (the batch is the same on every attempt).
    batch_of: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), nullable=True
    )
