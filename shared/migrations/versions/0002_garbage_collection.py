"""garbage collection reviews, blob state, job leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 18:33:09.989209
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gc_blob_reviews",
        sa.Column("digest", sa.String(length=150), nullable=False),
        sa.Column("review_after", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_gc_blob_reviews")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("gc_blob_reviews", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gc_blob_reviews_review_after"), ["review_after"], unique=False
        )

    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "gc_manifest_reviews",
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("review_after", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifests.id"],
            name=op.f("fk_gc_manifest_reviews_manifest_id_manifests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_id", name=op.f("pk_gc_manifest_reviews")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("gc_manifest_reviews", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gc_manifest_reviews_review_after"), ["review_after"], unique=False
        )

    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), server_default="present", nullable=False)
        )
        batch_op.create_index(batch_op.f("ix_blobs_storage_key"), ["storage_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blobs_storage_key"))
        batch_op.drop_column("state")
    # Indexes go with their tables (MySQL refuses to drop one that a foreign key needs).
    for table in ("gc_manifest_reviews", "job_leases", "gc_blob_reviews"):
        op.drop_table(table)
