"""event outbox: events written in the transaction that made the change

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("relay_after", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_outbox")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(
        op.f("ix_event_outbox_relay_after"), "event_outbox", ["relay_after"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_event_outbox_relay_after"), table_name="event_outbox")
    op.drop_table("event_outbox")
