"""The pricing engine against amounts computed by hand (demo rules: rounding 15 min up, minimum 15)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.models import Customer
from billing.money import Rounding
from rules.engine import explain, milestones_due, price
from rules.schema import RuleSet, load_rules
from tests.conftest import DEMO_RULES

CUSTOMERS = [
    Customer(customer_id="ACME", name="Acme", currency="EUR", timezone="Europe/Berlin"),
    Customer(customer_id="GLOBEX", name="Globex", currency="EUR", timezone="Europe/Amsterdam"),
    Customer(customer_id="NORTHWIND", name="Northwind", currency="USD", timezone="America/New_York"),
    Customer(customer_id="INITECH", name="Initech", currency="USD", timezone="America/Chicago"),
]


def worklogs(*rows: tuple[str, str, str, int] | tuple[str, str, str, int, bool]) -> pd.DataFrame:
    """(customer, service, started_at UTC, minutes[, billable]) → a canonical work-log frame."""
    records: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=1):
        customer, service, started, minutes, *rest = row
        records.append({
            "key": f"t:{number}", "source_id": f"WL-{number}", "ticket_id": None, "customer_id": customer,
            "user": "u", "service_type": service, "started_at": pd.Timestamp(started), "raw_seconds": minutes * 60,
            "billable": rest[0] if rest else True, "note": "",
        })  # fmt: skip
    frame = pd.DataFrame.from_records(records)
    frame["raw_seconds"] = frame["raw_seconds"].astype("Int64")
    return frame


def rules_with(**changes: Any) -> RuleSet:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data.update(changes)
    return RuleSet.model_validate(data)


DEMO = load_rules(DEMO_RULES)


def line(result: Any, source_id: str) -> dict[str, Any]:
    return result.lines.set_index("source_id").loc[source_id].to_dict()


def test_customer_rate_and_rounding_up_to_the_increment() -> None:
    # Wed 2026-10-07 10:00 Berlin; 50 min → 60 min billed → 1.00 h × 89.50 (ACME's own rate)
    result = price(worklogs(("ACME", "remote_support", "2026-10-07T08:00Z", 50)), CUSTOMERS, DEMO)
    got = line(result, "WL-1")
    assert (got["billed_seconds"], got["quantity_centi"], got["unit_price_minor"], got["amount_minor"]) == (
        3600,
        100,
        8950,
        8950,
    )
    assert got["rate_source"] == "customer_rates[0]"
    assert got["modifier"] == ""


def test_minimum_billable_time_and_service_default_rate() -> None:
    # GLOBEX has no own rate: 7 min → minimum 15 min → 0.25 h × 95.00 = 23.75
    got = line(price(worklogs(("GLOBEX", "remote_support", "2026-10-07T08:00Z", 7)), CUSTOMERS, DEMO), "WL-1")
    assert (got["quantity_centi"], got["unit_price_minor"], got["amount_minor"]) == (25, 9500, 2375)
    assert got["rate_source"] == "services.remote_support.rates.EUR"


def test_after_hours_in_the_customers_timezone_across_dst() -> None:
    # 16:30Z is 18:30 in Amsterdam before the DST change (after hours) and 17:30 after it (business hours).
    result = price(worklogs(("GLOBEX", "consulting", "2026-10-23T16:30Z", 20),
                            ("GLOBEX", "consulting", "2026-10-26T16:30Z", 20)), CUSTOMERS, DEMO)  # fmt: skip
    before, after = line(result, "WL-1"), line(result, "WL-2")
    # 20 min → 0.50 h; 150.00 × 1.5 = 225.00 → 112.50
    assert (before["modifier"], before["unit_price_minor"], before["amount_minor"]) == ("after_hours", 22500, 11250)
    assert (after["modifier"], after["unit_price_minor"], after["amount_minor"]) == ("", 15000, 7500)


def test_weekend_beats_after_hours_and_multipliers_do_not_compound() -> None:
    # Sat 2026-10-10 11:00 and 21:00 New York; 65 min → 75 min → 1.25 h × (110.00 × 2) = 275.00
    result = price(worklogs(("NORTHWIND", "remote_support", "2026-10-10T15:00Z", 65),
                            ("NORTHWIND", "remote_support", "2026-10-11T01:00Z", 65)), CUSTOMERS, DEMO)  # fmt: skip
    for source_id in ("WL-1", "WL-2"):
        got = line(result, source_id)
        assert (got["modifier"], got["multiplier_bp"], got["unit_price_minor"], got["amount_minor"]) == (
            "weekend",
            20000,
            22000,
            27500,
        )


def test_money_rounding_is_named_per_currency() -> None:
    # 0.25 h × 110.10 = 27.525: half-even (USD in the demo) → 27.52, half-up → 27.53
    rules = rules_with(customer_rates=[{"customer": "INITECH", "service": "remote_support", "rate": "110.10"}])
    got = line(price(worklogs(("INITECH", "remote_support", "2026-10-07T15:00Z", 15)), CUSTOMERS, rules), "WL-1")
    assert got["amount_minor"] == 2752
    rules = rules_with(customer_rates=[{"customer": "INITECH", "service": "remote_support", "rate": "110.10"}],
                       currencies={"USD": {"rounding": "half_up"}})  # fmt: skip
    got = line(price(worklogs(("INITECH", "remote_support", "2026-10-07T15:00Z", 15)), CUSTOMERS, rules), "WL-1")
    assert got["amount_minor"] == 2753


def test_rounding_modes_for_time() -> None:
    rows = (
        ("GLOBEX", "remote_support", "2026-10-07T08:00Z", 22),
        ("GLOBEX", "remote_support", "2026-10-07T09:00Z", 23),
    )
    nearest = rules_with(rounding={"increment_minutes": 15, "minimum_minutes": 0, "mode": "nearest"})
    down = rules_with(rounding={"increment_minutes": 15, "minimum_minutes": 0, "mode": "down"})
    assert price(worklogs(*rows), CUSTOMERS, nearest).lines["billed_seconds"].tolist() == [900, 1800]
    assert price(worklogs(*rows), CUSTOMERS, down).lines["billed_seconds"].tolist() == [900, 900]


def test_non_billable_rules_and_missing_rates_are_named() -> None:
    rules = rules_with(services={**yaml.safe_load(DEMO_RULES.read_text())["services"],
                                 "training": {"name": "Training", "rates": {"EUR": "80.00"}}})  # fmt: skip
    result = price(worklogs(("ACME", "remote_support", "2026-10-07T08:00Z", 30, False),
                            ("ACME", "internal", "2026-10-07T08:00Z", 30),
                            ("NORTHWIND", "training", "2026-10-07T14:00Z", 30),
                            ("ACME", "training", "2026-10-07T08:00Z", 30)), CUSTOMERS, rules)  # fmt: skip
    assert dict(zip(result.non_billable["key"], result.non_billable["rule"], strict=True)) == {
        "t:1": "marked-non-billable",
        "t:2": "services.internal.billable=false",
    }
    assert result.unpriceable.to_dict("records") == [{"key": "t:3", "reason": "no rate for service training in USD"}]
    assert line(result, "WL-4")["amount_minor"] == 4000


timestamps = st.datetimes(min_value=pd.Timestamp("2026-10-01").to_pydatetime(),
                          max_value=pd.Timestamp("2026-10-31").to_pydatetime())  # fmt: skip
work = st.tuples(st.sampled_from([c.customer_id for c in CUSTOMERS]),
                 st.sampled_from(["remote_support", "onsite_support", "consulting", "project_work", "internal"]),
                 timestamps, st.integers(1, 1440), st.booleans())  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(work, min_size=1, max_size=40))
def test_every_line_checks_by_hand_and_pricing_is_deterministic(rows: list[Any]) -> None:
    frame = worklogs(*[(c, s, pd.Timestamp(t, tz="UTC").isoformat(), m, b) for c, s, t, m, b in rows])
    first, second = price(frame, CUSTOMERS, DEMO), price(frame, CUSTOMERS, DEMO)
    pd.testing.assert_frame_equal(first.lines, second.lines)
    # every work log has exactly one outcome
    outcomes = list(first.lines["key"]) + list(first.non_billable["key"]) + list(first.unpriceable["key"])
    assert sorted(outcomes) == sorted(frame["key"])
    for row in first.lines.to_dict("records"):
        mode = Rounding(row["money_rounding"])
        quantity = Decimal(int(row["quantity_centi"])) / 100
        assert Decimal(row["amount_minor"]) == (quantity * row["unit_price_minor"]).quantize(
            Decimal(1), rounding=mode.decimal_mode
        )
        assert row["billed_seconds"] >= row["raw_seconds"] and row["billed_seconds"] % 900 == 0


def with_rates(**extra: Any) -> RuleSet:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data["agreements"] = [{"id": "ACME-MSA", "customer": "ACME", "starts": "2026-10-01"}]
    data["roles"] = {"senior": "senior-engineer"}
    data["rates"] = [
        {"service": "remote_support", "agreement": "ACME-MSA", "rate": "100.00"},
        {"service": "remote_support", "agreement": "ACME-MSA", "role": "senior-engineer", "rate": "130.00"},
        {"service": "remote_support", "agreement": "ACME-MSA", "rate": "110.00", "from": "2026-10-15"},
        {"service": "consulting", "customer": "GLOBEX", "rate": "400.00", "kind": "fixed"},
    ]
    data.update(extra)
    return RuleSet.model_validate(data)


def test_the_most_specific_rate_in_force_on_the_day_wins() -> None:
    frame = worklogs(
        ("ACME", "remote_support", "2026-10-07T08:00Z", 60),  # agreement rate before the change
        ("ACME", "remote_support", "2026-10-20T08:00Z", 60),  # agreement rate after the change
        ("ACME", "remote_support", "2026-10-20T09:00Z", 60),  # a senior engineer: the role rate
        ("ACME", "remote_support", "2026-09-29T08:00Z", 60),  # before the agreement: customer rate
        ("GLOBEX", "remote_support", "2026-10-07T08:00Z", 60),
    )  # no agreement: service default
    frame.loc[2, "user"] = "senior"
    result = price(frame, CUSTOMERS, with_rates())
    got = result.lines.set_index("source_id")
    assert got["unit_price_minor"].to_dict() == {"WL-1": 10000, "WL-2": 11000, "WL-3": 13000, "WL-4": 8950,
                                                 "WL-5": 9500}  # fmt: skip
    assert got["rate_source"].astype(str).to_dict() == {"WL-1": "rates[0]", "WL-2": "rates[2]", "WL-3": "rates[1]",
                                                        "WL-4": "customer_rates[0]",
                                                        "WL-5": "services.remote_support.rates.EUR"}  # fmt: skip


def test_a_fixed_rate_is_the_amount_of_the_work_log_whatever_the_time() -> None:
    # GLOBEX consulting is a fixed 400.00 per work log, even for 20 minutes on a Saturday night.
    result = price(worklogs(("GLOBEX", "consulting", "2026-10-10T21:00Z", 20)), CUSTOMERS, with_rates())
    line = result.lines.iloc[0]
    assert (line["quantity_centi"], line["unit_price_minor"], line["amount_minor"], line["modifier"]) == (
        100,
        40000,
        40000,
        "",
    )
    assert explain(line.to_dict(), "Consulting", with_rates()).startswith("fixed 400.00 EUR per work log from rates[3]")


def test_the_agreements_example_prices_the_sample() -> None:
    from connectors.filedrop import FileDropSource
    from tests.conftest import SAMPLE

    rules = load_rules(DEMO_RULES.with_name("agreements.yaml"))
    batch = FileDropSource(SAMPLE).extract()
    valid = batch.worklogs[batch.worklogs["service_type"].isin(list(rules.services))
                           & batch.worklogs["customer_id"].isin(list(batch.customers_by_id))
                           & batch.worklogs["raw_seconds"].gt(0)]  # fmt: skip
    lines = price(valid, batch.customers, rules).lines
    acme = lines[(lines["customer_id"] == "ACME") & (lines["service_type"] == "remote_support")]
    assert set(acme["rate_source"].astype(str)) == {"rates[0]", "rates[1]", "rates[2]"}
    after_rise = acme[(acme["local_date"] >= np.datetime64("2026-10-15")) & (acme["rate_source"] != "rates[2]")]
    assert set(after_rise["rate_minor"]) == {9600}
    flat = lines[(lines["customer_id"] == "GLOBEX") & (lines["service_type"] == "onsite_support")]
    assert len(flat) and set(flat["amount_minor"]) == {25000}


def test_holidays_in_the_customers_country_and_ticket_priority_surcharge_without_compounding() -> None:
    customers = [CUSTOMERS[0].model_copy(update={"country": "DE"}), CUSTOMERS[1].model_copy(update={"country": "NL"})]
    rules = rules_with(modifiers={"weekend": {"multiplier": "2.0"},
                                  "holidays": {"multiplier": "1.75", "calendars": {"DE": ["2026-10-07"]}},
                                  "priority": {"urgent": "1.5", "high": "1.25"}})  # fmt: skip
    frame = worklogs(
        ("ACME", "remote_support", "2026-10-07T08:00Z", 60),  # German holiday: ×1.75
        ("GLOBEX", "remote_support", "2026-10-07T08:00Z", 60),  # not a Dutch one: ×1
        ("GLOBEX", "remote_support", "2026-10-08T08:00Z", 60),  # an urgent ticket: ×1.5
        ("GLOBEX", "remote_support", "2026-10-10T08:00Z", 60),
    )  # urgent on a Saturday: ×2, not ×3
    frame["ticket_id"] = [None, None, "T-1", "T-1"]
    tickets = pd.DataFrame({"ticket_id": ["T-1"], "priority": ["urgent"], "status": ["closed"],
                            "ticket_type": ["incident"]})  # fmt: skip
    got = price(frame, customers, rules, tickets).lines.set_index("source_id")
    # 89.50 × 1.75 = 156.625 → 156.62 half-even; 95.00 × 1.5 = 142.50; 95.00 × 2 = 190.00
    assert got["unit_price_minor"].to_dict() == {"WL-1": 15662, "WL-2": 9500, "WL-3": 14250, "WL-4": 19000}
    assert got["modifier"].astype(str).to_dict() == {"WL-1": "holiday", "WL-2": "", "WL-3": "priority",
                                                     "WL-4": "weekend"}  # fmt: skip


def test_non_billable_by_ticket_type_and_status() -> None:
    rules = rules_with(
        non_billable=[
            {"id": "warranty", "when": {"ticket_type": "warranty"}},
            {"id": "not-resolved", "when": {"ticket_status": ["new", "in_progress"]}},
        ]
    )
    frame = worklogs(*[("GLOBEX", "remote_support", "2026-10-07T08:00Z", 30)] * 3)
    frame["ticket_id"] = ["T-1", "T-2", "T-3"]
    tickets = pd.DataFrame({"ticket_id": ["T-1", "T-2", "T-3"], "priority": ["normal"] * 3,
                            "status": ["closed", "in_progress", "resolved"],
                            "ticket_type": ["warranty", "incident", "incident"]})  # fmt: skip
    result = price(frame, CUSTOMERS, rules, tickets)
    assert dict(zip(result.non_billable["key"], result.non_billable["rule"], strict=True)) == {
        "t:1": "warranty",
        "t:2": "not-resolved",
    }
    assert result.lines["source_id"].tolist() == ["WL-3"]


def test_a_tickets_work_is_rounded_once_not_per_work_log() -> None:
    # Three 10-minute logs on one ticket: per work log 3 × 15 min = 0.75 h; per ticket 30 min → 0.50 h.
    rows = [("GLOBEX", "remote_support", f"2026-10-07T0{h}:00Z", 10) for h in (8, 9)] + [
        ("GLOBEX", "remote_support", "2026-10-08T08:00Z", 10),
        ("GLOBEX", "remote_support", "2026-10-08T09:00Z", 10),
    ]
    frame = worklogs(*rows)
    frame["ticket_id"] = ["T-1", "T-1", "T-1", None]
    per_log = price(frame, CUSTOMERS, DEMO).lines
    per_ticket = price(
        frame,
        CUSTOMERS,
        rules_with(rounding={"scope": "ticket", "increment_minutes": 15, "minimum_minutes": 15, "mode": "up"}),
    ).lines
    per_day = price(
        frame,
        CUSTOMERS,
        rules_with(rounding={"scope": "day", "increment_minutes": 15, "minimum_minutes": 15, "mode": "up"}),
    ).lines
    assert per_log["amount_minor"].sum() == 4 * 2375
    assert sorted(per_ticket["item_keys"].map(len)) == [1, 3]
    ticket = per_ticket[per_ticket["item_keys"].map(len) == 3].iloc[0]
    assert (ticket["raw_seconds"], ticket["billed_seconds"], ticket["quantity_centi"], ticket["amount_minor"]) == (
        1800,
        1800,
        50,
        4750,
    )
    assert ticket["source_id"] == "WL-1, WL-2, WL-3"
    assert per_day["quantity_centi"].tolist() == [50, 50]  # 2 × 10 min each day → 20 min → 30 min billed
    assert sum(per_ticket["amount_minor"]) == sum(li for li in per_ticket["quantity_centi"] * 9500 // 100)


def test_a_milestone_is_due_in_the_period_its_ticket_is_done() -> None:
    rules = rules_with(milestones=[{"id": "m1", "customer": "GLOBEX", "ticket": "T-9", "description": "Go-live",
                                    "amount": {"EUR": "1200.00"}}])  # fmt: skip
    tickets = pd.DataFrame({"ticket_id": ["T-9"], "resolved_at": [pd.Timestamp("2026-11-02T10:00Z")]})
    assert milestones_due(tickets, CUSTOMERS, rules, "2026-10").empty  # done in November, not October
    due = milestones_due(tickets, CUSTOMERS, rules, "2026-11")
    assert due[["key", "amount_minor", "quantity_centi", "unit_price_minor"]].values.tolist() == [
        ["milestone:m1", 120000, 100, 120000]
    ]


def test_a_ticket_type_with_a_fixed_price_is_billed_as_one_line_per_ticket() -> None:
    rules = rules_with(ticket_fees=[{"id": "reset", "customer": "GLOBEX", "ticket_type": "password_reset",
                                     "amount": {"EUR": "25.00"}}])  # fmt: skip
    frame = worklogs(("GLOBEX", "remote_support", "2026-10-07T08:00Z", 40),
                     ("GLOBEX", "remote_support", "2026-10-07T09:00Z", 70),
                     ("GLOBEX", "remote_support", "2026-10-08T09:00Z", 30),
                     ("ACME", "remote_support", "2026-10-08T09:00Z", 30))  # fmt: skip
    frame["ticket_id"] = ["T-1", "T-1", "T-2", "T-3"]
    tickets = pd.DataFrame({"ticket_id": ["T-1", "T-2", "T-3"], "ticket_type": ["password_reset", "incident",
                                                                                "password_reset"]})  # fmt: skip
    lines = price(frame, CUSTOMERS, rules, tickets).lines
    fee = lines[lines["object_type"] == "ticket_fee"]
    assert fee[["key", "amount_minor", "quantity_centi", "raw_seconds"]].values.tolist() == [
        ["ticket-fee:reset:T-1", 2500, 100, 110 * 60]  # 110 minutes, one flat price
    ]
    assert fee["item_keys"].iloc[0] == ("ticket-fee:reset:T-1", "t:1", "t:2")
    assert sorted(lines.loc[lines["object_type"] != "ticket_fee", "source_id"]) == ["WL-3", "WL-4"]  # ACME: no fee


def test_a_rate_in_another_currency_is_converted_at_the_exchange_rate_of_the_day() -> None:
    services = yaml.safe_load(DEMO_RULES.read_text())["services"]
    services["audit"] = {"name": "Security audit", "rates": {"USD": "200.00"}}  # priced in USD only
    services["translation"] = {"name": "Translation", "rates": {"JPY": "9000"}}  # no minor unit
    rules = rules_with(services=services, fx=[
        {"base": "USD", "quote": "EUR", "rate": "0.912345"},
        {"base": "USD", "quote": "EUR", "rate": "0.95", "from": "2026-10-15"},
        {"base": "JPY", "quote": "EUR", "rate": "0.006125"},
    ])  # fmt: skip
    frame = worklogs(("ACME", "audit", "2026-10-07T09:00Z", 60), ("ACME", "audit", "2026-10-20T09:00Z", 60),
                     ("ACME", "translation", "2026-10-07T10:00Z", 60),
                     ("NORTHWIND", "audit", "2026-10-07T14:00Z", 60))  # fmt: skip
    result = price(frame, CUSTOMERS, rules)
    got = result.lines.set_index("source_id")[["rate_minor", "amount_minor", "currency"]].to_dict("index")
    assert got["WL-1"] == {"rate_minor": 18247, "amount_minor": 18247, "currency": "EUR"}  # 182.469 → 182.47
    assert got["WL-2"] == {"rate_minor": 19000, "amount_minor": 19000, "currency": "EUR"}  # the rate from the 15th
    assert got["WL-3"] == {"rate_minor": 5512, "amount_minor": 5512, "currency": "EUR"}  # 55.125 → 55.12 half-even
    assert got["WL-4"]["rate_minor"] == 20000  # a USD customer needs no conversion
    assert "via fx USD/EUR" in str(line(result, "WL-1")["rate_source"])


def test_a_dated_service_default_never_beats_the_customers_own_rate() -> None:
    rules = rules_with(rates=[{"service": "remote_support", "currency": "EUR", "rate": "99.00", "from": "2026-10-15"}])
    frame = worklogs(("ACME", "remote_support", "2026-10-20T08:00Z", 60),  # ACME's own 89.50 stays
                     ("GLOBEX", "remote_support", "2026-10-07T08:00Z", 60),  # before the change: 95.00
                     ("GLOBEX", "remote_support", "2026-10-20T08:00Z", 60))  # fmt: skip
    got = price(frame, CUSTOMERS, rules).lines.set_index("source_id")["unit_price_minor"].to_dict()
    assert got == {"WL-1": 8950, "WL-2": 9500, "WL-3": 9900}


def test_work_is_held_until_its_ticket_is_resolved_but_non_billable_work_is_settled() -> None:
    rules = rules_with(hold=[{"id": "resolved-only", "when": {"ticket_resolved": False}}])
    frame = worklogs(("ACME", "remote_support", "2026-10-07T08:00Z", 30),
                     ("ACME", "remote_support", "2026-10-07T09:00Z", 30),
                     ("ACME", "remote_support", "2026-10-07T10:00Z", 30, False),
                     ("ACME", "remote_support", "2026-10-07T11:00Z", 30))  # fmt: skip
    frame["ticket_id"] = ["T-1", "T-2", "T-2", None]
    tickets = pd.DataFrame({"ticket_id": ["T-1", "T-2"],
                            "resolved_at": [pd.Timestamp("2026-10-09T00:00Z"), pd.NaT]})  # fmt: skip
    result = price(frame, CUSTOMERS, rules, tickets)
    assert result.held.values.tolist() == [["t:2", "held by resolved-only: waiting"]]
    assert result.non_billable["key"].tolist() == ["t:3"]  # not billable whatever its ticket does
    assert sorted(result.lines["source_id"]) == ["WL-1", "WL-4"]  # resolved, and no ticket to wait for


def test_a_milestone_resolved_before_the_period_is_not_due_in_it_but_found_as_earlier() -> None:
    rules = rules_with(milestones=[{"id": "m1", "customer": "GLOBEX", "ticket": "T-9", "description": "Go-live",
                                    "amount": {"EUR": "1200.00"}}])  # fmt: skip
    tickets = pd.DataFrame({"ticket_id": ["T-9"], "resolved_at": [pd.Timestamp("2026-09-12T10:00Z")]})
    assert milestones_due(tickets, CUSTOMERS, rules, "2026-10").empty  # September's, not swept into October
    assert milestones_due(tickets, CUSTOMERS, rules, "2026-10", earlier=True)["key"].tolist() == ["milestone:m1"]
    assert milestones_due(tickets, CUSTOMERS, rules, "2026-09", earlier=True).empty
