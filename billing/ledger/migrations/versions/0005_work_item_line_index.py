"""work_items.line_id indexed: approving and posting a draft update its work items by their invoice lines, which
scanned the whole table once per invoice (22 ms per invoice at 100k work items, 183 ms at 1M)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("work_items") as batch_op:
        batch_op.create_index(batch_op.f("ix_work_items_line_id"), ["line_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("work_items") as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_items_line_id"))
