"""Ledger tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` create them; keep both in step."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class WorkState(StrEnum):
    """Where a work item stands. Every item ends billed, non-billable by a named rule, or quarantined.

    An item's own row holds the states up to drafted; once a draft holds it (``draft_key``) its state is its
    draft's (``DRAFT_ITEM_STATE``; posted and reconciled: billed), so approving, posting and reconciling a period
    change its drafts' rows, not every item's."""

    EXTRACTED = "extracted"
    QUARANTINED = "quarantined"
    NON_BILLABLE = "non_billable"
    PRICED = "priced"
    HELD = "held"  # not billed yet, by a hold rule (a ticket not resolved ...): billed once it clears
    DRAFTED = "drafted"
    APPROVED = "approved"
    POSTED = "posted"
    RECONCILED = "reconciled"


# How states roll up into the counts a run reports; every state belongs to exactly one.
COUNT_OF_STATE: dict[WorkState, str] = {
    WorkState.POSTED: "billed",
    WorkState.RECONCILED: "billed",
    WorkState.NON_BILLABLE: "non_billable",
    WorkState.QUARANTINED: "quarantined",
    WorkState.EXTRACTED: "pending_approval",
    WorkState.PRICED: "pending_approval",
    WorkState.DRAFTED: "pending_approval",
    WorkState.APPROVED: "pending_posting",
    WorkState.HELD: "held",
}
BILLED_STATES = (WorkState.POSTED, WorkState.RECONCILED)
# The state of an item a draft holds, by the draft's state (and, when posted, whether it was reconciled).
DRAFT_ITEM_STATE: dict[tuple[str, bool], WorkState] = {
    ("drafted", False): WorkState.DRAFTED,
    ("rejected", False): WorkState.DRAFTED,  # drafted again, awaiting a new decision
    ("approved", False): WorkState.APPROVED,
    ("posted", False): WorkState.POSTED,
    ("posted", True): WorkState.RECONCILED,
}


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class WorkItem(Base):
    __tablename__ = "work_items"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # system:instance:type:id
    source_system: Mapped[str] = mapped_column(String(50))
    instance: Mapped[str] = mapped_column(String(100))
    object_type: Mapped[str] = mapped_column(String(50))
    source_id: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str | None] = mapped_column(String(100))
    period: Mapped[str] = mapped_column(String(7), index=True)
    state: Mapped[str] = mapped_column(String(20))  # its own; once a draft holds it, the draft's counts
    content_hash: Mapped[str] = mapped_column(String(32))
    billed_hash: Mapped[str | None] = mapped_column(String(32))  # its content when its draft claimed it
    reason: Mapped[str | None] = mapped_column(Text)  # quarantine reasons or the non-billable rule
    details: Mapped[dict[str, Any] | None]
    line_id: Mapped[int | None] = mapped_column(ForeignKey("invoice_lines.id", ondelete="SET NULL"), index=True)
    draft_key: Mapped[str | None] = mapped_column(String(300), index=True)  # the draft holding it: its state
    ticket_id: Mapped[str | None] = mapped_column(String(200))
    written_back_at: Mapped[datetime | None]  # the invoice number is in the source system
    write_back_error: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class InvoiceDraftRow(Base):
    __tablename__ = "invoice_drafts"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(100))
    agreement_id: Mapped[str] = mapped_column(String(100))
    period: Mapped[str] = mapped_column(String(7), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    version: Mapped[int] = mapped_column(Integer)
    total_minor: Mapped[int] = mapped_column(BigInteger)  # untaxed: the sum of the lines
    tax_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    gross_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    line_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    customer_name: Mapped[str] = mapped_column(Text, default="", server_default="")
    content_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")  # an unchanged redraft keeps
    rules_hash: Mapped[str | None] = mapped_column(String(64))  # the rules file it was priced by
    tax_by: Mapped[str] = mapped_column(String(10), default="rules", server_default="rules")  # rules | erp
    customer_erp_ref: Mapped[str | None] = mapped_column(String(100))
    customer_country: Mapped[str | None] = mapped_column(String(10))
    money_rounding: Mapped[str] = mapped_column(String(20), server_default="half_up")
    tax_id: Mapped[str] = mapped_column(String(100), server_default="no-tax")
    tax_rate: Mapped[str] = mapped_column(String(30), server_default="0")  # Decimal as text
    tax_rounding: Mapped[str] = mapped_column(String(10), server_default="document")
    tax_base: Mapped[str] = mapped_column(String(10), server_default="displayed")
    state: Mapped[str] = mapped_column(String(20))
    reconciled_at: Mapped[datetime | None]  # when the ERP's copy was found equal to the cent
    document: Mapped[dict[str, Any] | None]  # drafts of revisions before 0007 only: the columns say it all now
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_key: Mapped[str] = mapped_column(ForeignKey("invoice_drafts.key", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    # The line contract (billing.draft_book.LINE_COLUMNS); the draft's row holds customer, period and currency.
    work_item_key: Mapped[str] = mapped_column(String(300), index=True)  # the first it bills ("": a fee)
    more_item_keys: Mapped[list[Any] | None] = mapped_column(JSON)  # the others, when it bills several
    source_id: Mapped[str] = mapped_column(Text, server_default="")
    service_type: Mapped[str] = mapped_column(String(100), server_default="")
    description: Mapped[str] = mapped_column(Text)
    quantity_raw: Mapped[str] = mapped_column(String(30))  # Decimal as text: exact on every backend
    quantity_billed: Mapped[str] = mapped_column(String(30))
    quantity_centi: Mapped[int] = mapped_column(BigInteger, server_default="0")
    unit_price_minor: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    tax_id: Mapped[str | None] = mapped_column(String(100))  # a tax of its own, else the draft's
    tax_rate: Mapped[str | None] = mapped_column(String(30))
    # How the amount came about: what the line's explanation is written from.
    line_kind: Mapped[str] = mapped_column(String(20), server_default="work")  # work, usage, fee, ..., adjustment
    rules: Mapped[str | None] = mapped_column(String(200))
    rate_minor: Mapped[int | None] = mapped_column(BigInteger)
    rate_source: Mapped[str | None] = mapped_column(String(200))
    rate_kind: Mapped[str | None] = mapped_column(String(20))
    modifier: Mapped[str | None] = mapped_column(String(50))
    multiplier_bp: Mapped[int | None] = mapped_column(BigInteger)
    raw_seconds: Mapped[int | None] = mapped_column(BigInteger)
    billed_seconds: Mapped[int | None] = mapped_column(BigInteger)
    money_rounding: Mapped[str | None] = mapped_column(String(20))
    ticket: Mapped[str | None] = mapped_column(String(200))
    agreement: Mapped[str | None] = mapped_column(String(100))
    prepaid_agreement: Mapped[str | None] = mapped_column(String(100))
    drawn_centi: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prepaid_left_centi: Mapped[int] = mapped_column(BigInteger, server_default="0")
    overage: Mapped[bool] = mapped_column(server_default=false())
    rule: Mapped[str | None] = mapped_column(String(100))  # the cap or discount of an adjustment
    scope: Mapped[str | None] = mapped_column(String(200))
    trace: Mapped[dict[str, Any] | None]  # lines of revisions before 0007 only


class Approval(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_key: Mapped[str] = mapped_column(String(300), index=True)
    approver: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(20))  # approved | rejected
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)
    flow_run_id: Mapped[str | None] = mapped_column(String(40))


class Posting(Base):
    __tablename__ = "postings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_key: Mapped[str] = mapped_column(String(300), unique=True)  # one posting per draft, ever
    erp: Mapped[str] = mapped_column(String(50))
    erp_id: Mapped[str] = mapped_column(String(100))
    erp_number: Mapped[str] = mapped_column(String(100))
    total_minor: Mapped[int] = mapped_column(BigInteger)  # untaxed, the sum of the lines
    tax_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    gross_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)


class ErpMapping(Base):
    """Links made once are remembered: our id of a customer/product → the ERP's id."""

    __tablename__ = "erp_mappings"
    __table_args__ = (UniqueConstraint("erp", "entity", "local_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    erp: Mapped[str] = mapped_column(String(50))
    entity: Mapped[str] = mapped_column(String(50))
    local_id: Mapped[str] = mapped_column(String(200))
    erp_id: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Append-only: the ledger only ever inserts here (a trigger refuses updates and deletes)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    entity: Mapped[str] = mapped_column(String(50))
    entity_key: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any] | None]


class RunLock(Base):
    """A lease on a name (``billing:<period>:<erp>``, ``posting:<erp>``) held by one process at a time, on any
    database the ledger runs on. ``holder`` identifies the process (host, pid, its start time) so a lease
    whose process died on this host is taken over at once; one on another host after ``heartbeat_at`` ages."""

    __tablename__ = "run_locks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    token: Mapped[str] = mapped_column(String(36))
    holder: Mapped[str] = mapped_column(String(300))  # host:pid:start-time
    purpose: Mapped[str] = mapped_column(Text)  # what the holder does, for the message of the one that waits
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventDelivery(Base):
    """A webhook delivery the receiver accepted, by the sender's own id: the same id again is a replay."""

    __tablename__ = "event_deliveries"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    events: Mapped[list[Any] | None] = mapped_column(JSON)  # the Prefect event ids it became


class SourceCursor(Base):
    """Where a poller stopped reading a source (``poll:<source>:<instance>``): data, so a poll can be re-run."""

    __tablename__ = "source_cursors"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    cursor: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
