"""blob claims: which janitor works on a blob's objects, until when; review attempts dropped

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))
    # Never written: a review is decided when it is due, and decided again only when recorded
    # again.
    for table in ("gc_blob_reviews", "gc_manifest_reviews"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("attempts")


def downgrade() -> None:
    for table in ("gc_blob_reviews", "gc_manifest_reviews"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")
            )
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("claimed_by")
