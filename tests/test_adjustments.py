"""Caps and discounts as lines of their own, against amounts computed by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from billing.models import ChargeLine, InvoiceDraft
from billing.money import Rounding
from rules.adjustments import adjust, prior_cap_use
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


def posted(*lines: ChargeLine, period: str = "2026-09") -> InvoiceDraft:
    return InvoiceDraft(customer_id="ACME", period=period, currency="EUR", version=1, lines=lines)


def test_a_ticket_cap_counts_what_earlier_invoices_billed_on_the_ticket() -> None:
    cap = rules(caps=[{"id": "nte", "amount": {"EUR": "500.00"}}])
    september = posted(_traced(line("old", 52000), ticket="T-1"), line("no ticket", 777),
                       _traced(line("cap", -10000), rule="nte", scope="T-1", line_kind="adjustment"))
    prior = prior_cap_use([september], "ACME", "EUR", "2026-10", cap)
    assert prior == {("nte", "T-1"): 42000}
    october = [line("a", 30000), line("c", 12345)]
    capped = adjust(october, {"a": "T-1", "c": "T-2"}, cap, Rounding.HALF_UP, prior)
    # T-1: 420.00 billed before + 300.00 now, cap 500.00 → 220.00 off; T-2 under its cap.
    assert [(a.amount_minor, a.trace["scope"]) for a in capped] == [(-22000, "T-1")]
    assert "420.00 EUR billed before" in capped[0].description


def test_a_period_cap_holds_across_a_supplementary_invoice() -> None:
    cap = rules(caps=[{"id": "month", "per": "period", "customer": "ACME", "amount": {"EUR": "1000.00"}}])
    first = adjust([line("a", 80000), line("b", 35000)], {}, cap, Rounding.HALF_UP)
    assert [a.amount_minor for a in first] == [-15000]  # 1150.00 → 1000.00
    v1 = posted(line("a", 80000), line("b", 35000), *first, period="2026-10")
    prior = prior_cap_use([v1, posted(line("sept", 99999))], "ACME", "EUR", "2026-10", cap)
    assert prior == {("month", "2026-10"): 100000}  # September's invoice is another period
    supplementary = adjust([line("late", 12000)], {}, cap, Rounding.HALF_UP, prior)
    assert [a.amount_minor for a in supplementary] == [-12000]  # the cap was reached on v1
    assert adjust([line("late", 12000)], {}, cap, Rounding.HALF_UP, {}) == []


def test_an_agreement_cap_limits_only_work_under_that_agreement() -> None:
    data = {"agreements": [{"id": "PROJ", "customer": "ACME"}],
            "caps": [{"id": "proj-nte", "per": "agreement", "agreement": "PROJ", "amount": {"EUR": "400.00"}}]}
    cap = rules(**data)
    under, outside = _traced(line("a", 30000), agreement="PROJ"), line("b", 35000)
    fee = _traced(line("fee", 50000), agreement="PROJ", line_kind="fee")
    prior = prior_cap_use([posted(_traced(line("x", 25000), agreement="PROJ"))], "ACME", "EUR", "2026-10", cap)
    capped = adjust([under, outside, fee], {}, cap, Rounding.HALF_UP, prior)
    assert [a.amount_minor for a in capped] == [-15000]  # 250.00 + 300.00 − 400.00; the fee is not capped


def test_volume_tier_discount_takes_the_percent_of_the_highest_tier_reached() -> None:
    tiers = {"id": "volume", "tiers": [{"above": {"EUR": "500.00"}, "percent": "5"},
                                       {"above": {"EUR": "1000.00"}, "percent": "10"}]}  # fmt: skip
    volume = rules(discounts=[tiers])
    assert adjust([line("a", 49999)], {}, volume, Rounding.HALF_UP) == []
    five = adjust([line("a", 50000), line("b", 12345)], {}, volume, Rounding.HALF_UP)
    assert [(d.amount_minor, d.description) for d in five] == [
        (-3117, "Discount volume: 5 % of 623.45 EUR (volume tier)")  # 3117.25 → 3117
    ]
    ten = adjust([line("a", 100000)], {}, volume, Rounding.HALF_UP)
    assert [d.amount_minor for d in ten] == [-10000]


def test_a_discount_has_a_percent_or_tiers() -> None:
    with pytest.raises(ValidationError, match="either percent or tiers"):
        rules(discounts=[{"id": "d"}])
    with pytest.raises(ValidationError, match="names its agreement"):
        rules(caps=[{"id": "c", "per": "agreement", "amount": {"EUR": "1"}}])


def _traced(template: ChargeLine, **trace: Any) -> ChargeLine:
    return template.model_copy(update={"trace": trace})
