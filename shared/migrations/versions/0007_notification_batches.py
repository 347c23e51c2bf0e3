"""notifications: pull events delivered together share a batch

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "notifications",
        sa.Column("batch_of", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("notifications") as table:
        table.drop_column("batch_of")
