"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 18:18:00.705470
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(length=150), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_blobs")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "repositories",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repositories")),
        sa.UniqueConstraint("name", name=op.f("uq_repositories_name")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_table(
        "uploads",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_uploads")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_uploads_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "manifests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=150), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("artifact_type", sa.String(length=255), nullable=True),
        sa.Column("subject_digest", sa.String(length=150), nullable=True),
        sa.Column(
            "annotations",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
        ),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column(
            "content",
            sa.LargeBinary()
            .with_variant(mysql.MEDIUMBLOB(), "mariadb")
            .with_variant(mysql.MEDIUMBLOB(), "mysql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_manifests_repository_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifests")),
        sa.UniqueConstraint(
            "repository_id", "digest", name=op.f("uq_manifests_repository_id_digest")
        ),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_manifests_repository_id_subject_digest"),
            ["repository_id", "subject_digest"],
            unique=False,
        )

    op.create_table(
        "repository_blobs",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("blob_digest", sa.String(length=150), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_digest"],
            ["blobs.digest"],
            name=op.f("fk_repository_blobs_blob_digest_blobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_repository_blobs_repository_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", "blob_digest", name=op.f("pk_repository_blobs")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("repository_blobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_repository_blobs_blob_digest"), ["blob_digest"], unique=False
        )

    op.create_table(
        "manifest_references",
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=150), nullable=False),
        sa.Column("is_manifest", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifests.id"],
            name=op.f("fk_manifest_references_manifest_id_manifests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_id", "digest", name=op.f("pk_manifest_references")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("manifest_references", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_manifest_references_digest"), ["digest"], unique=False)

    op.create_table(
        "tags",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifests.id"],
            name=op.f("fk_tags_manifest_id_manifests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_tags_repository_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", "name", name=op.f("pk_tags")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tags_manifest_id"), ["manifest_id"], unique=False)


def downgrade() -> None:
    # Indexes go with their tables (MySQL refuses to drop one that a foreign key needs).
    for table in (
        "tags",
        "manifest_references",
        "repository_blobs",
        "manifests",
        "uploads",
        "repositories",
        "blobs",
    ):
        op.drop_table(table)
