"""The review queue: which drafts go to a human and the words that say why. Expectations are worked out by
hand in the comments (median, MAD, spread, z), never by the module's own formula."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from billing.ledger import Ledger
from billing.ledger.history import HISTORY_COLUMNS, customer_history, services_billed, shift_period
from billing.models import ApprovalDecision, ChargeLine, InvoiceDraft, PostingReceipt
from billing.settings import Settings
from rules.review import ReviewFlag, review, review_flags
from rules.schema import ReviewRules, load_rules
from tasks.approve import decision_form, field_of, split_by_policy
from tests.conftest import DEMO_RULES

TOTAL_ONLY = ReviewRules(metrics=["total"])


def line(amount: int, service: str = "remote_support", hours: str = "1.00", customer: str = "ACME",
         period: str = "2026-10", currency: str = "EUR", **trace: Any) -> ChargeLine:  # fmt: skip
    return ChargeLine(customer_id=customer, period=period, currency=currency, service_type=service,
                      description=f"{service} {hours} h", quantity_raw=Decimal(hours), quantity_billed=Decimal(hours),
                      unit_price_minor=amount, amount_minor=amount, trace=trace)  # fmt: skip


def draft(*lines: ChargeLine, customer: str = "ACME", period: str = "2026-10", currency: str = "EUR",
          version: int = 1, agreement: str = "default") -> InvoiceDraft:  # fmt: skip
    return InvoiceDraft(customer_id=customer, agreement_id=agreement, period=period, currency=currency,
                        version=version, lines=lines)  # fmt: skip


def history(rows: dict[str, int | tuple[int, str]], customer: str = "ACME", currency: str = "EUR") -> pd.DataFrame:
    """period → total in cents, or (total, hours); the effective rate is written out here, not computed."""
    out = []
    for period, value in rows.items():
        total, hours = value if isinstance(value, tuple) else (value, "0")
        rate = None if Decimal(hours) == 0 else int(total / Decimal(hours))  # the tests use exact divisions
        out.append((customer, currency, period, 1, total, Decimal(hours), rate))
    return pd.DataFrame(out, columns=list(HISTORY_COLUMNS)).astype({"effective_rate_minor": "Int64"})


SERVICES = {"ACME": {"remote_support"}}
# 2026-04 … 2026-09 around 1,000 EUR: median (1,000 + 1,010) / 2 = 1,005.00; distances 55, 25, 5, 5, 15, 55 →
# MAD (15 + 25) / 2 = 20.00, 1.4826 × 20.00 = 29.65 < 10 % of the median = 100.50: spread 100.50 EUR.
AROUND_1000 = history({"2026-04": 95000, "2026-05": 98000, "2026-06": 100000, "2026-07": 101000,
                       "2026-08": 102000, "2026-09": 106000})  # fmt: skip


def test_a_total_far_above_the_customers_months_is_flagged_with_its_median() -> None:
    d = draft(line(500000))  # (5,000 − 1,005) / 100.50 = 39.75
    assert review_flags([d], AROUND_1000, SERVICES, TOTAL_ONLY) == {d.key: [ReviewFlag(
        "unusual_total",
        "total 5,000.00 EUR is 39.8× the usual spread above this customer's median of 1,005.00 EUR over the last "
        "6 months (2026-04 … 2026-09) (spread 100.50 EUR; flagged beyond 3.5×)",
    )]}  # fmt: skip


def test_a_total_within_the_usual_spread_is_not_flagged() -> None:
    for total in (105000, 95000, 130000):  # z = 45 / 100.50 = 0.45, 55 / 100.50 = 0.55, 295 / 100.50 = 2.94
        d = draft(line(total))
        assert review_flags([d], AROUND_1000, SERVICES, TOTAL_ONLY) == {d.key: []}


def test_a_total_far_below_is_flagged_too() -> None:
    d = draft(line(10000))  # (1,005 − 100) / 100.50 = 9.005
    [flag] = review_flags([d], AROUND_1000, SERVICES, TOTAL_ONLY)[d.key]
    assert flag.message.startswith("total 100.00 EUR is 9.0× the usual spread below this customer's median of 1,005.00")


def codes(total: int, rows: pd.DataFrame, settings: ReviewRules = TOTAL_ONLY) -> list[str]:
    d = draft(line(total))
    return [f.code for f in review_flags([d], rows, SERVICES, settings)[d.key]]


def test_the_spread_is_1_4826_mad_when_that_is_above_the_floor() -> None:
    # 600, 800, 1,000, 1,000, 1,400, 1,600: median 1,000; distances 400, 200, 0, 0, 400, 600 → MAD 300;
    # spread 1.4826 × 300 = 444.78 EUR (the floor, 100, is lower). 2,600: 1,600 / 444.78 = 3.597 > 3.5;
    # 2,500: 1,500 / 444.78 = 3.372.
    spread = history({"2026-04": 60000, "2026-05": 80000, "2026-06": 100000, "2026-07": 100000,
                      "2026-08": 140000, "2026-09": 160000})  # fmt: skip
    assert codes(250000, spread) == []
    high = draft(line(260000))
    assert [f.message for f in review_flags([high], spread, SERVICES, TOTAL_ONLY)[high.key]] == [
        "total 2,600.00 EUR is 3.6× the usual spread above this customer's median of 1,000.00 EUR over the last "
        "6 months (2026-04 … 2026-09) (spread 444.78 EUR; flagged beyond 3.5×)"
    ]


def test_a_flat_history_does_not_flag_a_cent() -> None:
    flat = history({f"2026-{m:02d}": 100000 for m in range(4, 10)})  # MAD 0: the spread is 10 % of 1,000 = 100
    assert codes(100001, flat) == [] and codes(99999, flat) == [] and codes(130000, flat) == []  # z 0.0001, 3.0
    assert codes(140001, flat) == ["unusual_total"]  # z = 400.01 / 100 = 4.0001
    assert codes(100001, flat, ReviewRules(metrics=["total"], min_relative_spread=Decimal(0))) == ["unusual_total"]


def test_months_outside_the_window_and_other_customers_do_not_count() -> None:
    rows = pd.concat([
        AROUND_1000,
        history({"2026-03": 900000, "2026-10": 0}, customer="ACME", currency="USD"),  # another currency
        history({"2026-03": 900000}),  # before the six months
        history({f"2026-{m:02d}": 500000 for m in range(4, 10)}, customer="BETA"),
    ])  # fmt: skip
    d = draft(line(500000))
    [flag] = review_flags([d], rows, SERVICES, TOTAL_ONLY)[d.key]
    assert "median of 1,005.00 EUR over the last 6 months (2026-04 … 2026-09)" in flag.message


def test_hours_and_effective_rate() -> None:
    # four months of 1,000 EUR for 10 h (100 EUR/h), 2026-06 … 2026-09. Hours: median 10, MAD 0, spread 10 % = 1 h;
    # 2 h is 8 spreads below. Rate: 1,000 / 2 = 500 EUR/h against 100 (spread 10): 40 spreads above. Total: equal.
    rows = history({f"2026-{m:02d}": (100000, "10.00") for m in range(6, 10)})
    d = draft(line(100000, hours="2.00"), line(0, service="monthly_fee", hours="5.00", line_kind="fee"))
    flags = review_flags([d], rows, {"ACME": {"remote_support", "monthly_fee"}}, ReviewRules())
    assert [(f.code, f.message) for f in flags[d.key]] == [
        (
            "unusual_hours",
            "hours 2.00 h is 8.0× the usual spread below this customer's median of 10.00 h over 4 months "
            "with invoices in the last 6 (2026-06 … 2026-09) (spread 1.00 h; flagged beyond 3.5×)",
        ),
        (
            "unusual_effective_rate",
            "effective rate 500.00 EUR/h is 40.0× the usual spread above this customer's median "
            "of 100.00 EUR/h over 4 months with invoices in the last 6 (2026-06 … 2026-09) "
            "(spread 10.00 EUR/h; flagged beyond 3.5×)",
        ),
    ]


def test_fixed_price_work_and_fees_are_no_hours() -> None:
    rows = history({f"2026-{m:02d}": (100000, "10.00") for m in range(6, 10)})
    d = draft(line(40000, hours="4.00"), line(30000, hours="1.00", rate_kind="fixed"),
              line(30000, service="usage", hours="300", line_kind="usage"))  # fmt: skip
    # 4 h: (10 − 4) / 1 = 6 spreads below; rate 1,000 / 4 = 250 EUR/h: (250 − 100) / 10 = 15 spreads above
    messages = [f.message for f in review_flags([d], rows, {"ACME": {"remote_support", "usage"}}, ReviewRules())[d.key]]
    assert messages[0].startswith("hours 4.00 h is 6.0× the usual spread below")
    assert messages[1].startswith("effective rate 250.00 EUR/h is 15.0× the usual spread above")


def test_a_supplementary_invoice_is_judged_with_what_its_period_already_posted() -> None:
    rows = pd.concat([AROUND_1000, history({"2026-10": 100000})])
    small = draft(line(20000), version=2)  # 200 + 1,000 = 1,200: (1,200 − 1,005) / 100.50 = 1.94
    assert review_flags([small], rows, SERVICES, TOTAL_ONLY) == {small.key: []}
    big = draft(line(50000), version=2)  # 1,500: 495 / 100.50 = 4.93
    assert [f.message for f in review_flags([big], rows, SERVICES, TOTAL_ONLY)[big.key]] == [
        "total 1,500.00 EUR for 2026-10 (this draft 500.00 EUR + 1,000.00 EUR already posted) is 4.9× the usual "
        "spread above this customer's median of 1,005.00 EUR over the last 6 months (2026-04 … 2026-09) "
        "(spread 100.50 EUR; flagged beyond 3.5×)"
    ]


def test_the_drafts_of_one_month_are_judged_together() -> None:
    # Two agreements, 500 each: the month's 1,000 is usual, although each draft alone is half of it.
    a, b = draft(line(50000)), draft(line(50000), agreement="support")
    assert review_flags([a, b], AROUND_1000, SERVICES, TOTAL_ONLY) == {a.key: [], b.key: []}
    # 3,000 + 500 + 1,000 posted = 4,500: (4,500 − 1,005) / 100.50 = 34.78; both drafts are flagged.
    c = draft(line(300000), agreement="support")
    rows = pd.concat([AROUND_1000, history({"2026-10": 100000})])
    flags = review_flags([a, c], rows, SERVICES, TOTAL_ONLY)
    assert [f.message for f in flags[c.key]] == [
        "total 4,500.00 EUR for 2026-10 (this draft 3,000.00 EUR + 500.00 EUR in 1 other draft + 1,000.00 EUR "
        "already posted) is 34.8× the usual spread above this customer's median of 1,005.00 EUR over the last "
        "6 months (2026-04 … 2026-09) (spread 100.50 EUR; flagged beyond 3.5×)"
    ]
    assert flags[a.key][0].message.startswith("total 4,500.00 EUR for 2026-10 (this draft 500.00 EUR + 3,000.00 EUR")


def test_too_little_history_asks_only_about_first_invoices_services_and_rules() -> None:
    short = history({"2026-08": (100000, "10.00"), "2026-09": (100000, "10.00")})  # 2 months < min_history 3
    d = draft(line(9900000), line(100, service="onsite_support"))
    assert review_flags([d], short, SERVICES, ReviewRules())[d.key] == [
        ReviewFlag("new_service", "service 'onsite_support' was never billed to this customer before")
    ]
    assert [f.code for f in review_flags([d], short, SERVICES, ReviewRules(min_history=2))[d.key]] == [
        "unusual_total", "unusual_hours", "unusual_effective_rate", "new_service"
    ]  # fmt: skip


def test_a_first_invoice() -> None:
    d = draft(line(100000), line(100, service="onsite_support"))
    empty = history({})
    assert review_flags([d], empty, {}, ReviewRules())[d.key] == [
        ReviewFlag("first_invoice", "first invoice for this customer")
    ]  # every service is new on a first invoice: not listed one by one
    assert review_flags([d], empty, {}, ReviewRules(first_invoice=False))[d.key] == []
    other = draft(line(100000), customer="BETA")  # only ACME was invoiced before
    assert review_flags([other], empty, SERVICES, ReviewRules())[other.key][0].code == "first_invoice"


def test_a_new_service() -> None:
    d = draft(line(100), line(100, service="onsite_support"), line(100, service="onsite_support"))
    assert review_flags([d], history({}), SERVICES, ReviewRules())[d.key] == [
        ReviewFlag("new_service", "service 'onsite_support' was never billed to this customer before")
    ]
    assert review_flags([d], history({}), SERVICES, ReviewRules(new_services=False))[d.key] == []


def test_an_unusual_rule() -> None:
    d = draft(line(100), line(-50, service="adjustment", rule="manual-override", line_kind="adjustment"),
              line(100, rate_source="ticket_fees[reset]", modifier="weekend"))  # fmt: skip
    settings = ReviewRules(unusual_rules=["manual-override", "reset"])
    assert review_flags([d], history({}), {"ACME": {"remote_support", "adjustment"}}, settings)[d.key] == [
        ReviewFlag("unusual_rule",
                   "line 2 uses rule 'manual-override' (approval.review.unusual_rules): adjustment 1.00 h"),
        ReviewFlag("unusual_rule", "line 3 uses rule 'reset' (approval.review.unusual_rules): remote_support 1.00 h"),
    ]  # fmt: skip


def test_review_disabled_flags_nothing() -> None:
    d = draft(line(9900000), line(100, service="x", rule="manual-override"))
    off = ReviewRules(enabled=False, unusual_rules=["manual-override"])
    assert review_flags([d], AROUND_1000, {}, off) == {d.key: []}


def test_every_draft_has_an_answer() -> None:
    a, b = draft(line(100000)), draft(line(100000), customer="BETA")
    flags = review_flags([a, b], AROUND_1000, {"ACME": {"remote_support"}, "BETA": {"remote_support"}}, TOTAL_ONLY)
    assert flags == {a.key: [], b.key: []}
    assert review_flags([], AROUND_1000, {}, ReviewRules()) == {}


def test_thresholds_come_from_the_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"extends: {DEMO_RULES}\nname: strict\napproval:\n  review:\n    trailing_months: 3\n    min_history: 2\n"
        "    deviation: 10\n    metrics: [total]\n    unusual_rules: [weekend]\n",
        encoding="utf-8",
    )
    rules = load_rules(path)
    settings = rules.approval.review
    assert rules.approval.timeout_seconds == 3600  # the demo's, under the review keys
    # The last three months: 1,010, 1,020, 1,060 → median 1,020; distances 10, 0, 40 → MAD 10 → 14.83 < 102.
    below = draft(line(200000))  # (2,000 − 1,020) / 102 = 9.6: under 10
    assert review_flags([below], AROUND_1000, SERVICES, settings) == {below.key: []}
    above = draft(line(210000), line(100, modifier="weekend"))  # 1,081 / 102 = 10.6
    flags = review_flags([above], AROUND_1000, SERVICES, settings)
    assert [f.message for f in flags[above.key]] == [
        "total 2,101.00 EUR is 10.6× the usual spread above this customer's median of 1,020.00 EUR over the last "
        "3 months (2026-07 … 2026-09) (spread 102.00 EUR; flagged beyond 10×)",
        "line 2 uses rule 'weekend' (approval.review.unusual_rules): remote_support 1.00 h",
    ]


def test_the_defaults_keep_every_rules_file_valid() -> None:
    settings = ReviewRules()  # what a rules file without approval.review gets
    demo = load_rules(DEMO_RULES).approval.review  # the demo bills first invoices: it does not hold them
    assert demo == settings.model_copy(update={"first_invoice": False, "new_services": False})
    assert (settings.enabled, settings.trailing_months, settings.min_history, settings.deviation,
            settings.min_relative_spread, settings.metrics, settings.first_invoice, settings.new_services,
            settings.unusual_rules) == (True, 6, 3, Decimal("3.5"), Decimal("0.1"),
                                        ["total", "hours", "effective_rate"], True, True, [])  # fmt: skip


# --- the history, from a real ledger ----------------------------------------------------------------------------


def posted(ledger: Ledger, *drafts: InvoiceDraft) -> None:
    """Save, approve and post ``drafts`` (of one period: saving makes them the period's unposted drafts)."""
    [period] = {d.period for d in drafts}
    ledger.save_drafts(period, drafts, actor="test")
    decided = datetime.now(UTC)
    ledger.record_decisions([ApprovalDecision(draft_key=d.key, approved=True, approver="ann", decided_at=decided)
                             for d in drafts])  # fmt: skip
    ledger.record_postings([PostingReceipt(draft_key=d.key, erp="files", erp_id=d.key, erp_number=d.key,
                                           total_minor=d.total_minor, currency=d.currency, posted_at=decided)
                            for d in drafts], actor="test")  # fmt: skip


def on(period: str, customer: str = "ACME", currency: str = "EUR") -> dict[str, str]:
    return {"period": period, "customer": customer, "currency": currency}


@pytest.fixture
def billed(ledger: Ledger) -> Ledger:
    # ACME, EUR, 2026-08: v1 = 2.50 h time (250.00) + fee (50.00); v2 (supplementary) = 1.25 h time (125.00)
    # + a fixed-price work log (80.00, its "1.00" is no hours) + a cap (−20.00).
    posted(
        ledger,
        draft(
            line(25000, hours="2.50", **on("2026-08"), line_kind="work", rate_kind="hourly"),
            line(5000, service="monthly_fee", **on("2026-08"), line_kind="fee"),
            period="2026-08",
        ),
    )
    posted(ledger, draft(line(12500, hours="1.25", **on("2026-08")),
                         line(8000, service="password_reset", **on("2026-08"), rate_kind="fixed"),
                         line(-2000, service="adjustment", **on("2026-08"), rule="cap-1", line_kind="adjustment"),
                         period="2026-08", version=2))  # fmt: skip
    # 2026-09: a line with no trace (a work line by the hour) 4.00 h, 400.00; usage 1,000 GB, 10.00.
    # In USD, a fee only: no hours, no rate.
    posted(ledger, draft(line(40000, hours="4.00", **on("2026-09")),
                         line(1000, service="storage", hours="1000", **on("2026-09"), line_kind="usage"),
                         period="2026-09"),
           draft(line(10000, service="monthly_fee", **on("2026-09", currency="USD"), line_kind="fee"),
                 period="2026-09", currency="USD"))  # fmt: skip
    # Not counted: before the window, the period itself, BETA's unposted draft, GAMMA (not asked for)
    posted(ledger, draft(line(777700, service="onsite_support", **on("2026-03")), period="2026-03"))
    posted(ledger, draft(line(888800, service="consulting", **on("2026-10")), period="2026-10"))
    posted(ledger, draft(line(9900, service="gamma_work", **on("2026-09", "GAMMA")), customer="GAMMA",
                         period="2026-09"))  # fmt: skip
    ledger.save_drafts("2026-09", [draft(line(5, **on("2026-09", "BETA")), customer="BETA", period="2026-09")], "t")
    return ledger


def test_customer_history_sums_posted_invoices_per_month(billed: Ledger) -> None:
    frame = customer_history(billed, ["ACME", "BETA"], "2026-10", 6)
    assert list(frame.columns) == list(HISTORY_COLUMNS)
    records = [r | {"effective_rate_minor": None if pd.isna(r["effective_rate_minor"]) else r["effective_rate_minor"]}
               for r in frame.to_dict("records")]  # fmt: skip
    assert records == [
        # 250 + 50 + 125 + 80 − 20 = 485.00 for 2.50 + 1.25 = 3.75 h: 48,500 / 3.75 = 12,933.33 → 12,933 per hour
        {"customer_id": "ACME", "currency": "EUR", "period": "2026-08", "invoices": 2, "total_minor": 48500,
         "hours": Decimal("3.75"), "effective_rate_minor": 12933},
        # 400 + 10 = 410.00 for 4 h: 10,250 per hour
        {"customer_id": "ACME", "currency": "EUR", "period": "2026-09", "invoices": 1, "total_minor": 41000,
         "hours": Decimal("4.00"), "effective_rate_minor": 10250},
        {"customer_id": "ACME", "currency": "USD", "period": "2026-09", "invoices": 1, "total_minor": 10000,
         "hours": Decimal("0"), "effective_rate_minor": None},
    ]  # fmt: skip
    assert frame["total_minor"].dtype == "int64"
    assert [type(h) for h in frame["hours"]] == [Decimal] * 3
    # A window of 7 months reaches 2026-03; one month before 2026-09 only 2026-08.
    assert customer_history(billed, ["ACME"], "2026-10", 7)["period"].tolist()[0] == "2026-03"
    assert customer_history(billed, ["ACME"], "2026-09", 1)["period"].tolist() == ["2026-08"]
    assert customer_history(billed, ["NOBODY"], "2026-10", 6).empty


def test_services_billed(billed: Ledger) -> None:
    assert services_billed(billed, ["ACME", "BETA", "GAMMA"], "2026-10") == {
        "ACME": {"remote_support", "monthly_fee", "password_reset", "adjustment", "storage", "onsite_support"},
        "GAMMA": {"gamma_work"},  # BETA's draft is not posted: BETA was never invoiced
    }
    assert services_billed(billed, ["ACME"], "2026-09") == {
        "ACME": {"remote_support", "monthly_fee", "password_reset", "adjustment", "onsite_support"}
    }
    assert services_billed(billed, ["ACME"], "2026-03") == {}


def test_review_reads_the_ledger(billed: Ledger) -> None:
    november = draft(line(100, service="consulting", **on("2026-11")), line(100, **on("2026-11")), period="2026-11")
    beta = draft(line(100, **on("2026-11", "BETA")), customer="BETA", period="2026-11")
    flags = review(billed, [november, beta], ReviewRules(metrics=["total"]))
    # 2026-10 posted counts: consulting is known. ACME's EUR months 2026-08, -09, -10: 485.00, 410.00, 8,888.00;
    # median 485.00, distances 0, 75, 8,403 → MAD 75.00, spread 1.4826 × 75 = 111.195 (above 48.50);
    # 2.00 is (485 − 2) / 111.195 = 4.34 spreads below.
    assert flags[beta.key] == [ReviewFlag("first_invoice", "first invoice for this customer")]
    [flag] = flags[november.key]
    assert flag.message.startswith(
        "total 2.00 EUR is 4.3× the usual spread below this customer's median of 485.00 EUR "
        "over 3 months with invoices in the last 6 (2026-08 … 2026-10)"
    )
    assert review(billed, [november, beta], ReviewRules(min_history=4)) == {november.key: [], beta.key: flags[beta.key]}
    assert review(billed, [november, beta], ReviewRules(enabled=False)) == {november.key: [], beta.key: []}


def test_shift_period() -> None:
    assert [shift_period("2026-01", n) for n in (-1, -13, 0, 11, 12)] == [
        "2025-12", "2024-12", "2026-01", "2026-12", "2027-01"
    ]  # fmt: skip


def test_hours_where_there_were_none() -> None:
    # Fees only for six months: hours 0 every month, so no spread at all; 3 h of work stands out, said in words.
    fees = history({f"2026-{m:02d}": 100000 for m in range(4, 10)})
    d = draft(line(100000, hours="3.00"))
    assert review_flags([d], fees, SERVICES, ReviewRules())[d.key] == [ReviewFlag(
        "unusual_hours",
        "hours 3.00 h is above this customer's median of 0.00 h over the last 6 months (2026-04 … 2026-09), "
        "which most months matched exactly",
    )]  # fmt: skip


# --- the policy: flagged drafts go to a human, whatever the approval mode ----------------------------------------


def test_flagged_drafts_wait_for_a_human_even_under_auto_with_the_reason(settings: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"  # the demo rules, with the review's defaults (the demo turns two checks off)
    rules.write_text(f"extends: {DEMO_RULES}\nname: r\n"
                     "approval:\n  review: {first_invoice: true, new_services: true}\n")  # fmt: skip
    ledger = Ledger(settings.resolved_ledger_url)
    posted(ledger, draft(line(10000, **on("2026-09")), period="2026-09"))  # ACME was invoiced before, BETA never
    acme, beta = draft(line(12000)), draft(line(9000, customer="BETA"), customer="BETA")
    ledger.save_drafts("2026-10", [acme, beta], actor="test")

    keys = [acme.key, beta.key]
    auto, held = split_by_policy(settings.model_copy(update={"rules_file": rules, "approve": "auto"}), keys)
    assert [(d.draft_key, d.approver) for d in auto] == [(acme.key, "policy:auto")]
    assert [(h.draft.key, h.reasons) for h in held] == [(beta.key, ("first invoice for this customer",))]
    form = decision_form(held).model_json_schema()["properties"][field_of(beta.key)]
    assert form["description"].startswith("Held because: first invoice for this customer. ")

    # Under manual, both are below the threshold (5,000.00 EUR): ACME passes, BETA is still held, for one reason.
    auto, held = split_by_policy(settings.model_copy(update={"rules_file": rules, "approve": "manual"}), keys)
    assert [(d.draft_key, d.approver, d.note) for d in auto] == [
        (acme.key, "policy:threshold", "total 120.00 EUR is below 5000.00 EUR")
    ]
    assert [h.reasons for h in held] == [("first invoice for this customer",)]

    # With the demo's own rules (first invoices not held), nothing waits under auto.
    auto, held = split_by_policy(settings.model_copy(update={"approve": "auto"}), keys)
    assert (len(auto), held) == (2, [])
