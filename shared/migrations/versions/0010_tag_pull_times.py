"""tags: when each was last pulled (for retention's "unless pulled within")

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tags",
        sa.Column(
            "pulled_at",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("tags") as table:
        table.drop_column("pulled_at")
