"""blobs: an index on state, so that reconcile finds the blobs being deleted without reading
them all

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 02:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_blobs_state"), "blobs", ["state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blobs_state"), table_name="blobs")
