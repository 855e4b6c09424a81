"""Prepaid hours (retainers) against balances and amounts computed by hand."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.models import ChargeLine, InvoiceDraft, WorkBatch
from rules.engine import price
from rules.retainers import balance, balances, draw_down
from rules.schema import AgreementSpec, Prepaid
from tasks.price import group_drafts
from tests.test_engine import CUSTOMERS, rules_with, work, worklogs


def block(hours: str = "10", **prepaid: Any) -> AgreementSpec:
    return AgreementSpec(id="R", customer="GLOBEX", starts=date(2026, 9, 1),
                         prepaid=Prepaid(hours=Decimal(hours), **prepaid))  # fmt: skip


def test_unused_hours_roll_over_for_the_months_allowed_then_expire() -> None:
    assert balance(block(), "2026-09", {}) == 1000
    assert balance(block(), "2026-10", {"2026-09": 400}) == 1000  # September's 6 h expired with September
    rolling = block(rollover_months=1)
    assert balance(rolling, "2026-10", {"2026-09": 400}) == 1600  # 6 h rolled over + 10 h
    # October drew 12 h: September's 6 h first (they expire), then 6 of October's → 4 h roll into November.
    assert balance(rolling, "2026-11", {"2026-09": 400, "2026-10": 1200}) == 1400
    assert balance(rolling, "2026-10", {"2026-09": 400, "2026-10": 500}) == 1100  # a supplementary invoice
    once = block("40", refill="once", rollover_months=None)
    assert balance(once, "2026-12", {"2026-09": 3000}) == 1000  # bought once, never expires
    assert balance(once, "2027-01", {"2026-09": 3000, "2026-12": 1000}) == 0


def prepaid_rules(**prepaid: Any) -> Any:
    return rules_with(agreements=[{"id": "R", "customer": "GLOBEX", "starts": "2026-09-01",
                                   "prepaid": {"hours": "6", **prepaid}}])  # fmt: skip


# GLOBEX, remote support at 95.00 EUR/h; 3 h, 4 h, then 5 h after hours (×1.5), in time order.
WORK = worklogs(("GLOBEX", "remote_support", "2026-10-06T09:00Z", 180),
                ("GLOBEX", "remote_support", "2026-10-07T09:00Z", 240),
                ("GLOBEX", "remote_support", "2026-10-08T17:00Z", 300))  # fmt: skip


def test_work_draws_the_block_in_time_order_and_overage_is_billed_at_its_rate() -> None:
    rules = prepaid_rules(overage_rate={"EUR": "130.00"})
    lines = draw_down(price(WORK, CUSTOMERS, rules).lines, rules, {"R": 600})
    shown = lines.sort_values(["started_at", "drawn_centi"], ascending=[True, False])
    columns = ["source_id", "quantity_centi", "unit_price_minor", "amount_minor", "drawn_centi"]
    assert shown[columns].values.tolist() == [
        ["WL-1", 300, 0, 0, 300],  # 3 h drawn, 3 h left
        ["WL-2", 300, 0, 0, 300],  # crosses the end of the block: 3 h drawn ...
        ["WL-2", 100, 13000, 13000, 0],  # ... and 1 h overage at 130.00
        ["WL-3", 500, 19500, 97500, 0],  # 5 h overage, after hours: 130.00 × 1.5
    ]
    assert lines["prepaid_left_centi"][lines["drawn_centi"] > 0].tolist() == [300, 0]
    assert (lines["quantity_centi"] * lines["unit_price_minor"] // 100 == lines["amount_minor"]).all()


def test_without_an_overage_rate_overage_is_billed_at_the_normal_rate() -> None:
    rules = prepaid_rules(services=["remote_support"])
    lines = draw_down(price(WORK, CUSTOMERS, rules).lines, rules, {"R": 650})
    # 7 h before the after-hours log, 6.5 h prepaid: 0.5 h overage at 95.00, then 5 h × 142.50.
    assert lines["amount_minor"].sum() == 50 * 9500 // 100 + 500 * 14250 // 100


def batch(work: pd.DataFrame) -> WorkBatch:
    return WorkBatch(source_system="test", instance="t", period="2026-10", customers=CUSTOMERS,
                     tickets=pd.DataFrame({"ticket_id": []}), worklogs=work, issues=pd.DataFrame())  # fmt: skip


def test_a_supplementary_invoice_draws_only_what_the_first_left() -> None:
    rules = prepaid_rules(overage_rate={"EUR": "130.00"})
    first = group_drafts(batch(WORK.iloc[:1]), price(WORK.iloc[:1], CUSTOMERS, rules).lines, rules, {})
    (line,) = first[0].lines
    assert (line.amount_minor, line.trace["prepaid"]) == (0, {"agreement": "R", "drawn_centi": 300, "left_centi": 300})
    assert "3.00 h Remote support drawn from the prepaid hours of agreement R (3.00 h left" in line.trace["explanation"]
    assert "prepaid" in line.description
    history = [first[0]]
    assert balances(rules, "2026-10", history) == {"R": 300}
    later = WORK.iloc[1:]
    second = group_drafts(batch(later), price(later, CUSTOMERS, rules).lines, rules, {}, history)
    amounts = sorted(li.amount_minor for li in second[0].lines)
    assert amounts == [0, 13000, 97500]  # 3 h drawn, 1 h + 5 h overage: nothing drawn twice
    assert second[0].total_minor == 110500
    over = next(li for li in second[0].lines if li.amount_minor == 13000)
    assert over.trace["overage"] == "R" and "overage beyond the prepaid hours" in over.trace["explanation"]


def test_a_month_with_nothing_left_bills_everything_as_overage() -> None:
    rules = prepaid_rules()
    spent = InvoiceDraft(customer_id="GLOBEX", period="2026-10", currency="EUR", version=1, lines=(
        ChargeLine(customer_id="GLOBEX", period="2026-10", currency="EUR", service_type="remote_support",
                   description="x", quantity_raw=Decimal(6), quantity_billed=Decimal(6), unit_price_minor=0,
                   amount_minor=0, trace={"prepaid": {"agreement": "R", "drawn_centi": 600, "left_centi": 0}}),
    ))  # fmt: skip
    drafts = group_drafts(batch(WORK), price(WORK, CUSTOMERS, rules).lines, rules, {}, [spent])
    assert drafts[0].total_minor == 300 * 9500 // 100 + 400 * 9500 // 100 + 500 * 14250 // 100


def everything_rules() -> Any:
    """Agreement rates, prepaid hours with overage, caps per ticket and period, tiered discounts, a hold."""
    from tests.test_engine import with_rates

    return with_rates(
        agreements=[{"id": "ACME-MSA", "customer": "ACME", "starts": "2026-10-01",
                     "prepaid": {"hours": "5", "overage_rate": {"EUR": "140.00"}}},
                    {"id": "GLOBEX-R", "customer": "GLOBEX", "starts": "2026-09-01",
                     "prepaid": {"hours": "3", "rollover_months": 2}}],
        caps=[{"id": "nte", "amount": {"EUR": "700.00", "USD": "800.00"}},
              {"id": "month", "per": "period", "customer": "NORTHWIND", "amount": {"USD": "1500.00"}}],
        discounts=[{"id": "vol", "tiers": [{"above": {"EUR": "300.00", "USD": "300.00"}, "percent": "2.5"},
                                           {"above": {"EUR": "2000.00", "USD": "2000.00"}, "percent": "5"}]}],
        hold=[{"id": "open-tickets", "when": {"ticket_resolved": False}}],
    )  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(st.lists(work, min_size=1, max_size=30), st.lists(st.booleans(), min_size=6, max_size=6))
def test_every_invoice_adds_up_and_every_work_log_has_exactly_one_outcome(
    rows: list[Any], resolved: list[bool]
) -> None:
    rules = everything_rules()
    frame = worklogs(*[(c, s, pd.Timestamp(t, tz="UTC").isoformat(), m, b) for c, s, t, m, b in rows])
    frame["ticket_id"] = [f"T-{n % 7}" if n % 7 < 6 else None for n in range(len(frame))]
    tickets = pd.DataFrame({"ticket_id": [f"T-{n}" for n in range(6)],
                            "resolved_at": [pd.Timestamp("2026-10-30T00:00Z") if r else pd.NaT for r in resolved]})
    work_batch = WorkBatch(source_system="t", instance="t", period="2026-10", customers=CUSTOMERS, tickets=tickets,
                           worklogs=frame, issues=pd.DataFrame())  # fmt: skip
    result = price(frame, CUSTOMERS, rules, tickets)
    drafts = group_drafts(work_batch, result.lines, rules, {})
    again = group_drafts(work_batch, price(frame, CUSTOMERS, rules, tickets).lines, rules, {})
    assert drafts == again  # the same input prices to the same invoices

    billed = {k for d in drafts for line in d.lines for k in line.work_item_keys}
    settled = [set(result.non_billable["key"]), set(result.held["key"]), set(result.unpriceable["key"]), billed]
    assert sum(len(s) for s in settled) == len(set().union(*settled)) == len(frame)  # one outcome each
    for d in drafts:
        assert d.total_minor == sum(line.amount_minor for line in d.lines)
        for line in d.lines:
            shown = (line.quantity_billed * line.unit_price_minor).quantize(Decimal(1), d.money_rounding.decimal_mode)
            assert shown == line.amount_minor  # every displayed line checks by hand
        drawn = sum(line.trace["prepaid"]["drawn_centi"] for line in d.lines if "prepaid" in line.trace)
        # never more than the balance: ACME 5 h; GLOBEX 3 h a month, September's unused 3 h rolled over
        assert drawn <= {"ACME": 500, "GLOBEX": 600}.get(d.customer_id, 0)


def test_two_customers_blocks_are_drawn_in_one_pass() -> None:
    # Found by the property test: the second agreement's rows were looked up in the frame as the first left it.
    rules = everything_rules()
    frame = worklogs(("ACME", "remote_support", "2026-10-06T09:00Z", 240),
                     ("ACME", "remote_support", "2026-10-07T09:00Z", 240),
                     ("GLOBEX", "remote_support", "2026-10-06T09:00Z", 420))  # fmt: skip
    lines = draw_down(price(frame, CUSTOMERS, rules).lines, rules, {"ACME-MSA": 500, "GLOBEX-R": 600})
    drawn = lines.groupby("customer_id", observed=True)["drawn_centi"].sum().to_dict()
    assert drawn == {"ACME": 500, "GLOBEX": 600}
    over = lines[lines["overage"]].set_index("customer_id")
    assert over.loc["ACME", ["quantity_centi", "unit_price_minor"]].tolist() == [300, 14000]  # 3 h at 140.00
    assert over.loc["GLOBEX", ["quantity_centi", "unit_price_minor"]].tolist() == [100, 9500]  # 1 h at 95.00
