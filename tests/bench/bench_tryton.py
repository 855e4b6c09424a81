"""Invoices per second into a real Tryton (embedded, SQLite): one create+post call per invoice against
batched create and post calls, on the same generated drafts."""

from __future__ import annotations

import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.models import ChargeLine, InvoiceDraft
from billing.money import Rounding
from connectors.tryton import TrytonErp
from connectors.tryton_embedded import EmbeddedTryton
from tests.bench.run import peak_mb, timed

INVOICES = 40
LINES = 5


def drafts(tag: str) -> list[InvoiceDraft]:
    out = []
    for number in range(INVOICES):
        customer = f"BENCH-{tag}-{number:03d}"
        lines = tuple(
            ChargeLine(work_item_keys=(f"bench:{customer}:{n}",), source_id=f"WL-{n}", customer_id=customer,
                       period="2026-10", currency="EUR", service_type="remote_support", description=f"support {n}",
                       quantity_raw=Decimal("1.25"), quantity_billed=Decimal("1.25"), unit_price_minor=9500,
                       amount_minor=11875)
            for n in range(LINES)
        )  # fmt: skip
        out.append(InvoiceDraft(customer_id=customer, period="2026-10", currency="EUR", version=1, lines=lines,
                                customer_name=customer, money_rounding=Rounding.HALF_EVEN, tax_rate=Decimal("0.19"),
                                tax_base="unrounded"))  # fmt: skip
    return out


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, EmbeddedTryton(Path(folder), years=[2026]) as tryton:
        one_by_one_drafts, batched_drafts = drafts(uuid.uuid4().hex[:6]), drafts(uuid.uuid4().hex[:6])
        warm = TrytonErp(tryton.rpc(), batch_size=1)  # parties and products first, so both runs post only invoices
        warm.parties(one_by_one_drafts + batched_drafts)
        warm.products(one_by_one_drafts)
        one_by_one, (receipts_1, failures_1) = timed(lambda: warm.post(one_by_one_drafts))
        batched_erp = TrytonErp(tryton.rpc(), mappings=warm.mappings, batch_size=INVOICES)
        batched, (receipts_2, failures_2) = timed(lambda: batched_erp.post(batched_drafts))
    assert not failures_1 and not failures_2 and len(receipts_1) == len(receipts_2) == INVOICES
    return {
        "name": "tryton_posting",
        "rows": INVOICES,
        "seconds": round(batched, 3),
        "peak_mb": peak_mb(),
        "references": {"one_by_one": round(one_by_one, 3)},
        "lines_per_invoice": LINES,
        "invoices_per_second": {"batched": round(INVOICES / batched, 2), "one_by_one": round(INVOICES / one_by_one, 2)},
    }
