"""tags: push times to the microsecond on MySQL, and an index to list a repository's tags by
push time

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 22:20:00
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        # DATETIME keeps whole seconds: tags pushed within one second had no order.
        op.alter_column(
            "tags",
            "updated_at",
            existing_type=mysql.DATETIME(),
            type_=mysql.DATETIME(fsp=6),
            existing_nullable=False,
        )
    op.create_index("ix_tags_repository_id_updated_at", "tags", ["repository_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_tags_repository_id_updated_at", table_name="tags")
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.alter_column(
            "tags",
            "updated_at",
            existing_type=mysql.DATETIME(fsp=6),
            type_=mysql.DATETIME(),
            existing_nullable=False,
        )
