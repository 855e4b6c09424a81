"""Tax per jurisdiction and product class, rounded per line or per document, against hand computations."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import yaml

from billing.models import ChargeLine, InvoiceDraft, WorkBatch
from rules.engine import price
from rules.schema import RuleSet
from tasks.price import group_drafts
from tests.conftest import DEMO_RULES
from tests.test_engine import CUSTOMERS, worklogs


def charge(amount: int, rate: str | None = None) -> ChargeLine:
    return ChargeLine(customer_id="ACME", period="2026-10", currency="EUR", service_type="s", description="d",
                      quantity_raw=Decimal(1), quantity_billed=Decimal(1), unit_price_minor=amount,
                      amount_minor=amount, tax_rate=Decimal(rate) if rate else None)  # fmt: skip


def test_document_rounding_rounds_once_per_rate_and_line_rounding_per_line() -> None:
    lines = (charge(1005), charge(1005), charge(1050, "0.07"), charge(1050, "0.07"))
    document = InvoiceDraft(customer_id="ACME", period="2026-10", currency="EUR", version=1, lines=lines,
                            tax_rate=Decimal("0.19"))  # fmt: skip
    # 19 % of 20.10 = 3.819 → 3.82; 7 % of 21.00 = 1.47 → 5.29 in all
    assert document.tax_minor == 382 + 147
    per_line = document.model_copy(update={"tax_rounding": "line"})
    # 19 % of 10.05 = 1.9095 → 1.91 twice; 7 % of 10.50 = 0.735 → 0.74 (half-up) twice
    assert per_line.tax_minor == 191 * 2 + 74 * 2


def test_a_service_of_a_reduced_tax_class_carries_its_own_rate() -> None:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data["services"]["training"] = {"name": "Training", "tax_class": "education", "rates": {"EUR": "100.00"}}
    data["taxes"]["rates"].append({"id": "vat-de-7", "rate": "0.07", "countries": ["DE"],
                                   "product_classes": ["education"]})  # fmt: skip
    rules = RuleSet.model_validate(data)
    assert rules.taxes.for_country("DE", "education").id == "vat-de-7"
    assert rules.taxes.for_country("DE", "hardware").id == "vat-de-19"  # no rate of its own: the standard one
    assert rules.taxes.for_country("US", "education").id == "vat-0-export"
    work = worklogs(("ACME", "training", "2026-10-07T09:00Z", 60), ("ACME", "consulting", "2026-10-07T10:00Z", 60))
    batch = WorkBatch(source_system="t", instance="t", period="2026-10", customers=CUSTOMERS,
                      tickets=pd.DataFrame({"ticket_id": []}), worklogs=work, issues=pd.DataFrame())  # fmt: skip
    customers = [c.model_copy(update={"country": "DE"}) if c.customer_id == "ACME" else c for c in CUSTOMERS]
    batch.customers = customers
    (draft,) = group_drafts(batch, price(work, customers, rules).lines, rules, {})
    rates = {li.service_type: (li.tax_id, li.tax_rate) for li in draft.lines}
    assert rates == {"training": ("vat-de-7", Decimal("0.07")), "consulting": (None, None)}
    assert draft.tax_id == "vat-de-19"
    assert draft.tax_minor == 700 + 2850  # 7 % of 100.00 + 19 % of 150.00
