"""Caps and discounts as lines of their own, against amounts computed by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import yaml

from billing.models import ChargeLine
from billing.money import Rounding
from rules.adjustments import adjust
from rules.schema import RuleSet
from tests.conftest import DEMO_RULES


def rules(**extra: Any) -> RuleSet:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data.update(extra)
    return RuleSet.model_validate(data)


def line(key: str, amount: int, customer: str = "ACME") -> ChargeLine:
    return ChargeLine(work_item_keys=(key,), source_id=key, customer_id=customer, period="2026-10", currency="EUR",
                      service_type="remote_support", description=key, quantity_raw=Decimal(1),
                      quantity_billed=Decimal("1.00"), unit_price_minor=amount, amount_minor=amount)  # fmt: skip


LINES = [line("a", 30000), line("b", 35000), line("c", 12345)]
TICKETS = {"a": "T-1", "b": "T-1", "c": "T-2"}


def test_a_ticket_over_its_cap_gets_the_excess_taken_off() -> None:
    capped = adjust(LINES, TICKETS, rules(caps=[{"id": "nte", "amount": {"EUR": "500.00"}}]), Rounding.HALF_EVEN)
    assert [(a.amount_minor, a.work_item_keys) for a in capped] == [(-15000, ())]  # T-1: 650.00 → 500.00
    assert capped[0].description == "Cap nte: ticket T-1 not to exceed 500.00 EUR (work 650.00 EUR)"
    assert sum(li.amount_minor for li in LINES + capped) == 50000 + 12345


def test_a_discount_applies_after_caps_and_rounds_by_the_currency() -> None:
    adjusted = adjust(LINES, TICKETS, rules(caps=[{"id": "nte", "amount": {"EUR": "500.00"}}],
                                            discounts=[{"id": "loyal", "customer": "ACME", "percent": "2.5"}]),
                      Rounding.HALF_EVEN)  # fmt: skip
    # 623.45 × 2.5 % = 15.58625 → 15.59
    assert [a.amount_minor for a in adjusted] == [-15000, -1559]
    assert adjusted[1].description == "Discount loyal: 2.5 % of 623.45 EUR"
    assert adjusted[1].quantity_billed * adjusted[1].unit_price_minor == adjusted[1].amount_minor


def test_other_customers_and_currencies_are_left_alone() -> None:
    mine = rules(discounts=[{"id": "x", "customer": "GLOBEX", "percent": "10"}],
                 caps=[{"id": "usd-only", "amount": {"USD": "1.00"}}])  # fmt: skip
    assert adjust(LINES, TICKETS, mine, Rounding.HALF_EVEN) == []
