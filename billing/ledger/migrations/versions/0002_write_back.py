"""work items remember their ticket and the write-back of their invoice number to the source

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("work_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ticket_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("written_back_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("write_back_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("work_items", schema=None) as batch_op:
        batch_op.drop_column("write_back_error")
        batch_op.drop_column("written_back_at")
        batch_op.drop_column("ticket_id")
