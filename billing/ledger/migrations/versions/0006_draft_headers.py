"""invoice_drafts carry what their readers ask of them as columns (tax, gross, number of lines, customer name, who
computes the tax, the content hash and the rules' hash), so approving, reconciling and summing up a period read
no draft documents

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice_drafts") as batch_op:
        batch_op.add_column(sa.Column("tax_minor", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("gross_minor", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("line_count", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("customer_name", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("rules_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("tax_by", sa.String(length=10), nullable=False, server_default="rules"))
    drafts = sa.table("invoice_drafts", sa.column("key", sa.String), sa.column("document", sa.JSON),
                      sa.column("tax_minor", sa.BigInteger), sa.column("gross_minor", sa.BigInteger),
                      sa.column("line_count", sa.Integer), sa.column("customer_name", sa.Text),
                      sa.column("content_hash", sa.String), sa.column("tax_by", sa.String))  # fmt: skip
    connection = op.get_bind()
    for key, document in connection.execute(sa.select(drafts.c.key, drafts.c.document)).all():
        doc: dict[str, Any] = json.loads(document) if isinstance(document, str) else document
        connection.execute(drafts.update().where(drafts.c.key == key).values(
            tax_minor=int(doc.get("tax_minor") or 0), gross_minor=int(doc.get("gross_minor") or 0),
            line_count=len(doc.get("lines") or ()), customer_name=str(doc.get("customer_name") or ""),
            content_hash=str(doc.get("_hash") or ""), tax_by=str(doc.get("tax_by") or "rules"),
        ))  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("invoice_drafts") as batch_op:
        for column in ("tax_by", "rules_hash", "content_hash", "customer_name", "line_count", "gross_minor",
                       "tax_minor"):  # fmt: skip
            batch_op.drop_column(column)
