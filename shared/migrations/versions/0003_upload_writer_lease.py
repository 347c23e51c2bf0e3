"""upload writer lease: which request writes to an upload, until when

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("writer", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("writer_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("writer_expires_at")
        batch_op.drop_column("writer")
