"""events: deliveries the webhook receiver accepted (replays are refused) and the pollers' cursors

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_deliveries",
        sa.Column("source", sa.String(length=100), primary_key=True),
        sa.Column("delivery_id", sa.String(length=200), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("events", sa.JSON(), nullable=True),
    )
    op.create_table(
        "source_cursors",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("cursor", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("source_cursors")
    op.drop_table("event_deliveries")
