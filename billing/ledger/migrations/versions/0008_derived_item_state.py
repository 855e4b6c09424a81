"""A work item's state once drafted is its draft's: ``work_items.draft_key`` names the draft that holds it and
``invoice_drafts.reconciled_at`` says when its posting was found in the ERP to the cent. Approving, posting and
reconciling then change a period's few thousand draft rows, not its million work items; the index on the items'
own state goes (every query of states names the period, and each state change paid for it). The view
``work_item_states`` gives every item's state as before (what a person or a report queries).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The item's own state until a draft holds it; then its draft's (rejected: drafted again, awaiting a decision).
VIEW = """
CREATE VIEW work_item_states AS
SELECT w.key, w.source_system, w.instance, w.object_type, w.source_id, w.customer_id, w.period, w.draft_key,
       CASE WHEN d.key IS NULL THEN w.state
            WHEN d.state = 'posted' AND d.reconciled_at IS NOT NULL THEN 'reconciled'
            WHEN d.state = 'posted' THEN 'posted'
            WHEN d.state = 'approved' THEN 'approved'
            ELSE 'drafted' END AS state
FROM work_items w LEFT JOIN invoice_drafts d ON d.key = w.draft_key
"""


def upgrade() -> None:
    op.add_column("work_items", sa.Column("draft_key", sa.String(length=300), nullable=True))
    op.create_index(op.f("ix_work_items_draft_key"), "work_items", ["draft_key"], unique=False)
    op.add_column("invoice_drafts", sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE work_items SET draft_key = (SELECT l.draft_key FROM invoice_lines l WHERE l.id = work_items.line_id) "
        "WHERE line_id IS NOT NULL"
    )
    op.execute(
        "UPDATE invoice_drafts SET reconciled_at = updated_at WHERE state = 'posted' AND EXISTS "
        "(SELECT 1 FROM work_items w WHERE w.draft_key = invoice_drafts.key AND w.state = 'reconciled')"
    )
    op.execute("UPDATE work_items SET state = 'drafted' WHERE draft_key IS NOT NULL")
    op.drop_index(op.f("ix_work_items_state"), table_name="work_items")
    op.execute(VIEW)  # on SQLite, a later batch_alter_table of work_items must drop and re-create it around the copy


def downgrade() -> None:
    op.execute(
        "UPDATE work_items SET state = (SELECT s.state FROM work_item_states s WHERE s.key = work_items.key) "
        "WHERE draft_key IS NOT NULL"
    )
    op.execute("DROP VIEW work_item_states")
    op.create_index(op.f("ix_work_items_state"), "work_items", ["state"], unique=False)
    with op.batch_alter_table("invoice_drafts") as batch_op:
        batch_op.drop_column("reconciled_at")
    with op.batch_alter_table("work_items") as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_items_draft_key"))
        batch_op.drop_column("draft_key")
