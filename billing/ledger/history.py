"""What each customer was billed before: posted invoices per month, and the services they billed.

Read-only queries over the ledger (a few, never one per customer) for checks that compare a new draft with the
customer's own past (``rules/review.py``). Money stays integer minor units; hours are exact Decimals.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.ledger.schema import InvoiceDraftRow, InvoiceLineRow
from billing.ledger.store import Ledger
from billing.models import DraftState

CHUNK = 500  # customer ids per IN (...) clause
HISTORY_COLUMNS: tuple[str, ...] = (
    "customer_id", "currency", "period", "invoices", "total_minor", "hours", "effective_rate_minor",
)  # fmt: skip


def shift_period(period: str, months: int) -> str:
    """``"2026-01", -2`` → ``"2025-11"``."""
    year, month = map(int, period.split("-"))
    index = year * 12 + (month - 1) + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def is_time_line(trace: Mapping[str, Any]) -> bool:
    """A line of hours worked: work (not a fee, usage, milestone or adjustment) billed by the hour (not at a
    fixed amount per work log). Its ``quantity_billed`` counts as billed hours."""
    return (trace.get("line_kind") or "work") == "work" and (trace.get("rate_kind") or "hourly") == "hourly"


def effective_rate(total_minor: int, hours: Decimal) -> int | None:
    """Minor units per billed hour, rounded half up; None without hours."""
    if not hours:
        return None
    return int((Decimal(total_minor) / hours).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def customer_history(ledger: Ledger, customer_ids: Iterable[str], before_period: str, months: int) -> pd.DataFrame:
    """One row per (customer, currency, period) with posted invoices in the ``months`` months before
    ``before_period`` (``"2026-10", 6`` → 2026-04 … 2026-09); months without a posted invoice have no row.

    Columns: ``invoices`` (posted drafts: supplementary versions and agreements of the month add up),
    ``total_minor`` (int, the sum of their untaxed totals), ``hours`` (Decimal, the sum of ``quantity_billed``
    of their time lines, see ``is_time_line``), ``effective_rate_minor`` (int minor units per hour, total /
    hours rounded half up; None without hours). Two queries: totals, then time lines.
    """
    customers = sorted(set(customer_ids))
    start = shift_period(before_period, -months)
    posted = [
        InvoiceDraftRow.state == DraftState.POSTED.value,
        InvoiceDraftRow.period >= start,
        InvoiceDraftRow.period < before_period,
    ]
    keys = [InvoiceDraftRow.customer_id, InvoiceDraftRow.currency, InvoiceDraftRow.period]
    line_kind = func.coalesce(InvoiceLineRow.line_kind, "work")
    rate_kind = func.coalesce(InvoiceLineRow.rate_kind, "hourly")
    totals: list[Any] = []
    lines: list[Any] = []
    with Session(ledger.engine) as session:
        for chunk in _chunks(customers):
            totals += session.execute(
                select(*keys, func.count(), func.sum(InvoiceDraftRow.total_minor))
                .where(InvoiceDraftRow.customer_id.in_(chunk), *posted)
                .group_by(*keys)
            ).all()
            lines += session.execute(
                select(*keys, InvoiceLineRow.quantity_billed)
                .join(InvoiceLineRow, InvoiceLineRow.draft_key == InvoiceDraftRow.key)
                .where(InvoiceDraftRow.customer_id.in_(chunk), *posted, line_kind == "work", rate_kind == "hourly")
            ).all()
    hours: dict[tuple[str, str, str], Decimal] = {}
    for customer, currency, period, quantity in lines:  # exact: Decimal text summed as Decimal, never float
        hours[(customer, currency, period)] = hours.get((customer, currency, period), Decimal(0)) + Decimal(quantity)
    rows = []
    for customer, currency, period, invoices, total in totals:
        billed = hours.get((customer, currency, period), Decimal(0))
        rows.append((customer, currency, period, int(invoices), int(total), billed, effective_rate(int(total), billed)))
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    frame = frame.astype({"invoices": "int64", "total_minor": "int64", "hours": object,
                          "effective_rate_minor": "Int64"})  # fmt: skip
    return frame.sort_values(["customer_id", "currency", "period"], ignore_index=True)


def services_billed(ledger: Ledger, customer_ids: Iterable[str], before_period: str) -> dict[str, set[str]]:
    """Customer → the service types of the lines of its invoices posted for periods before ``before_period``.

    Every customer with a posted invoice is a key (with an empty set when its invoices had no lines); a
    customer missing from the answer was never invoiced. One query per chunk of customers, over the lines'
    ``service_type`` column.
    """
    customers = sorted(set(customer_ids))
    posted = [InvoiceDraftRow.state == DraftState.POSTED.value, InvoiceDraftRow.period < before_period]
    out: dict[str, set[str]] = {}
    with Session(ledger.engine) as session:
        for chunk in _chunks(customers):
            rows = session.execute(
                select(InvoiceDraftRow.customer_id, InvoiceLineRow.service_type)
                .select_from(InvoiceDraftRow)
                .outerjoin(InvoiceLineRow, InvoiceLineRow.draft_key == InvoiceDraftRow.key)
                .where(InvoiceDraftRow.customer_id.in_(chunk), *posted)
                .distinct()
            ).all()
            for customer, service in rows:
                billed = out.setdefault(customer, set())
                if service is not None:
                    billed.add(service)
    return out
