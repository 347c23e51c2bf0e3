"""ui_ended_sessions: web interface sessions signed out before they expire

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_ended_sessions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_ui_ended_sessions")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        mysql_engine="InnoDB",
    )
    op.create_index(op.f("ix_ui_ended_sessions_expires_at"), "ui_ended_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_ended_sessions_expires_at"), table_name="ui_ended_sessions")
    op.drop_table("ui_ended_sessions")
