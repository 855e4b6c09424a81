"""Invoice lines as columns (the line contract of billing.draft_book) and drafts with their own columns, in place
of a JSON document per draft and a JSON trace per line: a period's lines are written in bulk and read as a frame.
Existing drafts and lines get their columns from their documents; their content hashes are recomputed by the
new rule, so an unposted draft that is drafted again unchanged keeps its approval.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DRAFT_COLUMNS = (
    sa.Column("customer_erp_ref", sa.String(length=100), nullable=True),
    sa.Column("customer_country", sa.String(length=10), nullable=True),
    sa.Column("money_rounding", sa.String(length=20), nullable=False, server_default="half_up"),
    sa.Column("tax_id", sa.String(length=100), nullable=False, server_default="no-tax"),
    sa.Column("tax_rate", sa.String(length=30), nullable=False, server_default="0"),
    sa.Column("tax_rounding", sa.String(length=10), nullable=False, server_default="document"),
    sa.Column("tax_base", sa.String(length=10), nullable=False, server_default="displayed"),
)
LINE_COLUMNS = (
    sa.Column("more_item_keys", sa.JSON(), nullable=True),
    sa.Column("source_id", sa.Text(), nullable=False, server_default=""),
    sa.Column("service_type", sa.String(length=100), nullable=False, server_default=""),
    sa.Column("quantity_centi", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("tax_id", sa.String(length=100), nullable=True),
    sa.Column("tax_rate", sa.String(length=30), nullable=True),
    sa.Column("line_kind", sa.String(length=20), nullable=False, server_default="work"),
    sa.Column("rules", sa.String(length=200), nullable=True),
    sa.Column("rate_minor", sa.BigInteger(), nullable=True),
    sa.Column("rate_source", sa.String(length=200), nullable=True),
    sa.Column("rate_kind", sa.String(length=20), nullable=True),
    sa.Column("modifier", sa.String(length=50), nullable=True),
    sa.Column("multiplier_bp", sa.BigInteger(), nullable=True),
    sa.Column("raw_seconds", sa.BigInteger(), nullable=True),
    sa.Column("billed_seconds", sa.BigInteger(), nullable=True),
    sa.Column("money_rounding", sa.String(length=20), nullable=True),
    sa.Column("ticket", sa.String(length=200), nullable=True),
    sa.Column("agreement", sa.String(length=100), nullable=True),
    sa.Column("prepaid_agreement", sa.String(length=100), nullable=True),
    sa.Column("drawn_centi", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("prepaid_left_centi", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("overage", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("rule", sa.String(length=100), nullable=True),
    sa.Column("scope", sa.String(length=200), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("invoice_drafts") as batch_op:
        for column in DRAFT_COLUMNS:
            batch_op.add_column(column.copy())
        batch_op.alter_column("document", existing_type=sa.JSON(), nullable=True)
    with op.batch_alter_table("invoice_lines") as batch_op:
        for column in LINE_COLUMNS:
            batch_op.add_column(column.copy())
        batch_op.alter_column("trace", existing_type=sa.JSON(), nullable=True)
    _columns_from_documents(op.get_bind())


def _columns_from_documents(connection: sa.Connection) -> None:
    from billing.draft_book import book_of, content_hashes  # the rule of this revision, for the drafts it finds
    from billing.models import InvoiceDraft

    drafts = sa.table("invoice_drafts", sa.column("key"), sa.column("document", sa.JSON), sa.column("state"),
                      sa.column("content_hash"), *(sa.column(c.name) for c in DRAFT_COLUMNS))  # fmt: skip
    lines = sa.table("invoice_lines", sa.column("draft_key"), sa.column("line_no"),
                     *(sa.column(c.name, c.type) for c in LINE_COLUMNS))  # fmt: skip
    derived = ("key", "total_minor", "tax_minor", "gross_minor", "_hash")
    for key, document, state in connection.execute(sa.select(drafts.c.key, drafts.c.document, drafts.c.state)).all():
        doc: dict[str, Any] = json.loads(document) if isinstance(document, str) else document
        draft = InvoiceDraft.model_validate({k: v for k, v in doc.items() if k not in derived})
        book = book_of([draft])
        header = book.headers.iloc[0]
        values = {c.name: _plain(header[c.name]) for c in DRAFT_COLUMNS}
        if state != "posted":  # a posted draft's hash is never compared again
            values["content_hash"] = content_hashes(book)[0]
        connection.execute(drafts.update().where(drafts.c.key == key).values(**values))
        for row in book.lines.to_dict("records"):
            keys = tuple(row["work_item_keys"])
            connection.execute(
                lines.update()
                .where(lines.c.draft_key == key, lines.c.line_no == int(row["line_no"]))
                .values(more_item_keys=list(keys[1:]) or None,
                        **{c.name: _plain(row[c.name]) for c in LINE_COLUMNS if c.name != "more_item_keys"})
            )  # fmt: skip


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def downgrade() -> None:
    with op.batch_alter_table("invoice_lines") as batch_op:
        for column in reversed(LINE_COLUMNS):
            batch_op.drop_column(column.name)
    with op.batch_alter_table("invoice_drafts") as batch_op:
        for column in reversed(DRAFT_COLUMNS):
            batch_op.drop_column(column.name)
