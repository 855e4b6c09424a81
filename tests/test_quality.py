"""The work-log suite (Great Expectations) decides the quarantine, with reasons a user can act on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.errors import ConfigurationError
from billing.models import ChargeLine, InvoiceDraft, empty_usage
from connectors.filedrop import FileDropSource
from rules.quality import (
    SUITES,
    load_suite,
    validate_customers,
    validate_drafts,
    validate_tickets,
    validate_usage,
    validate_worklogs,
)
from tests.conftest import SAMPLE

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def outcome_for(worklogs: pd.DataFrame | None = None):  # type: ignore[no-untyped-def]
    batch = FileDropSource(SAMPLE).extract()
    frame = batch.worklogs if worklogs is None else worklogs
    return validate_worklogs(frame, batch.issues, [c.customer_id for c in batch.customers], {},
                             ["remote_support", "onsite_support", "consulting", "project_work", "internal"],
                             batch.tickets["ticket_id"].tolist(), now=NOW)  # fmt: skip


def test_the_sample_bad_rows_are_quarantined_with_their_reasons() -> None:
    outcome = outcome_for()
    reasons = dict(zip(outcome.quarantined["source_id"], outcome.quarantined["reason"], strict=True))
    assert reasons == {
        "WL-00501": "duration must be more than 0 and at most 24 hours: duration_minutes=-30 (worklogs.csv row 47)",
        "WL-00502": "duration must be more than 0 and at most 24 hours: duration_minutes=2000 (worklogs.csv row 113)",
        "WL-00123": "the work log id appears more than once: worklog_id='WL-00123' (worklogs.csv rows 126 and 346)",
        "WL-00503": "unknown customer: customer_id='HOOLI' (worklogs.csv row 179)",
        "WL-00504": "unknown service type (not in the rules file): service_type='gardening' (worklogs.csv row 245)",
        "WL-00505": "started_at is not an ISO 8601 timestamp: '2026-10-3xT10:00:00Z' (worklogs.csv row 311)",
        "WL-00506": "duration_minutes is not a number of minutes: '1h30' (worklogs.csv row 378)",
        "WL-00507": "customer_id is empty: customer_id=(empty) (worklogs.csv row 444)",
    }
    assert len(outcome.valid) + 7 + 2 == 504  # 504 rows in the period: 7 bad ones and both WL-00123 rows leave
    assert not outcome.valid["key"].isin(outcome.quarantined["key"]).any()
    details = outcome.quarantined.set_index("source_id").loc["WL-00503", "details"]
    assert details == [{"field": "customer_id", "value": "HOOLI", "check": "expect_column_values_to_be_in_set"}]


def test_every_failed_check_of_a_row_is_named_and_future_dates_fail() -> None:
    batch = FileDropSource(SAMPLE).extract()
    frame = batch.worklogs.head(3).copy()
    frame.loc[0, "started_at"] = pd.Timestamp("2026-12-01", tz="UTC")
    frame.loc[1, ["raw_seconds", "service_type"]] = [0, "gardening"]
    outcome = outcome_for(frame)
    reasons = dict(zip(outcome.quarantined["source_id"], outcome.quarantined["reason"], strict=True))
    assert reasons[frame.loc[0, "source_id"]].startswith("started_at is in the future: started_at=")
    assert reasons[frame.loc[1, "source_id"]].split("; ")[0].startswith("unknown service type")
    assert "duration must be more than 0" in reasons[frame.loc[1, "source_id"]]
    assert len(outcome.valid) == 1
    assert outcome.failed_per_check["started_at is in the future"] == 1


def test_a_source_of_days_only_counts_todays_work_as_done_at_any_hour_of_today() -> None:
    """Redmine keeps the day of the work, stood for by noon there: at 00:30 in Berlin (23:30 UTC the day before)
    today's entries are billable, tomorrow's are still in the future; a timestamped source judges the instant."""
    batch = FileDropSource(SAMPLE).extract()
    frame = batch.worklogs.head(4).copy()
    customer = str(frame.loc[0, "customer_id"])
    frame["customer_id"] = frame["customer_id"].astype(object)
    frame.loc[:, "customer_id"] = customer
    noon = [pd.Timestamp(f"2026-12-{day} 12:00", tz="Europe/Berlin").tz_convert("UTC") for day in ("01", "01", "02")]
    frame.loc[0:2, "started_at"] = noon
    # A day whose midnight Chile's DST skips (clocks go from 00:00 to 01:00 on 2026-09-06): it begins at 01:00.
    frame.loc[3, "started_at"] = pd.Timestamp("2026-09-06 12:00", tz="America/Santiago").tz_convert("UTC")
    frame.loc[3, "customer_id"] = "CHILE"
    now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)  # 00:30 on 1 December in Berlin

    def quarantined(day_zones: dict[str, str] | None, at: datetime, period: str) -> dict[str, str]:
        outcome = validate_worklogs(frame, batch.issues, [customer, "CHILE"], {}, list(frame["service_type"].unique()),
                                    frame["ticket_id"].dropna().tolist(), now=at, period=period, day_zones=day_zones)
        return dict(zip(outcome.quarantined["source_id"], outcome.quarantined["reason"], strict=True))

    ids = frame["source_id"].tolist()
    zones = {customer: "Europe/Berlin", "CHILE": "America/Santiago"}
    as_days = quarantined(zones, now, "2026-12")
    assert set(as_days) == {ids[2], ids[3]}  # tomorrow's; and Chile's September is outside December
    assert as_days[ids[2]].startswith("started_at is in the future: started_at='2026-12-02T11:00:00+00:00'")
    as_instants = quarantined(None, now, "2026-12")
    assert {ids[0], ids[1], ids[2]} <= set(as_instants)  # noon has not come: all "in the future"
    # Chile's 6 September begins at 01:00 -03 (04:00 UTC): 04:30 UTC is that day, 03:30 UTC still the 5th.
    assert ids[3] not in quarantined(zones, datetime(2026, 9, 6, 4, 30, tzinfo=UTC), "2026-09")
    assert ids[3] in quarantined(zones, datetime(2026, 9, 6, 3, 30, tzinfo=UTC), "2026-09")


# -- the suites as files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["worklogs", "customers", "tickets", "usage", "drafts"])
def test_every_suite_file_loads_and_says_what_each_expectation_means(name: str) -> None:
    suite = load_suite(name)
    assert suite.path == SUITES / f"{name}.json" and suite.checks
    assert all(check.says for check in suite.checks)


def test_a_broken_suite_file_is_named_with_the_expectation(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(
        json.dumps(
            {
                "name": "bad",
                "expectations": [
                    {
                        "type": "expect_column_values_to_be_between",
                        "kwargs": {"column": "x", "min_value": 1},
                        "meta": {},
                    }
                ],
            }
        )
    )
    with pytest.raises(ConfigurationError, match=r"bad.json: expectation 0 .*meta.says is missing"):
        load_suite("bad", tmp_path)
    (tmp_path / "typo.json").write_text(
        json.dumps(
            {
                "name": "typo",
                "expectations": [
                    {"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "x"}, "meta": {"says": "x"}}
                ],
            }
        )
    )
    with pytest.raises(ConfigurationError, match=r"typo.json: expectation 0 .*not a valid expectation"):
        load_suite("typo", tmp_path)


# -- work logs: every expectation, its sentence and the offending value ------------------------------------


@pytest.mark.parametrize(("change", "reason", "value"), [
    ({"ticket_id": "T-NOPE"}, "unknown ticket: ticket_id='T-NOPE'", "T-NOPE"),
    ({"service_type": None}, "service_type is empty: service_type=(empty)", None),
    ({"started_at": pd.Timestamp("2026-09-10T12:00:00Z")},
     "started_at is outside the billing period: started_at='2026-09-10T12:00:00+00:00'",
     "2026-09-10T12:00:00+00:00"),
    ({"raw_seconds": 86401}, "duration must be more than 0 and at most 24 hours: duration_minutes=1440.02", 86401),
])  # fmt: skip
def test_each_worklog_expectation_names_its_field_and_value(change: dict, reason: str, value: object) -> None:
    batch = FileDropSource(SAMPLE).extract()
    frame = batch.worklogs.head(3).copy()
    for column, new in change.items():
        frame[column] = frame[column].astype(object) if column == "service_type" else frame[column]
        frame.loc[1, column] = new
    outcome = outcome_for(frame)
    assert list(outcome.quarantined["source_id"]) == [frame.loc[1, "source_id"]]
    assert outcome.quarantined["reason"][0].startswith(reason)
    assert outcome.quarantined["reason"][0].endswith(f"(worklogs.csv row {frame.loc[1, 'source_row']})")
    assert outcome.quarantined["details"][0][0]["value"] == value
    assert outcome.checked == 3 and outcome.failed_rows == 1 and len(outcome.valid) == 2


def test_customer_and_ticket_problems_become_the_reason_of_their_work_logs() -> None:
    from rules.schema import load_rules
    from tasks.validate import check_batch
    from tests.conftest import DEMO_RULES

    batch = FileDropSource(SAMPLE).extract()
    batch.customers = [c.model_copy(update={"name": " "}) if c.customer_id == "GLOBEX" else c for c in batch.customers]
    batch.tickets.loc[batch.tickets["ticket_id"] == "T-1004", "created_at"] = pd.Timestamp("2027-01-01", tz="UTC")
    checked = check_batch(batch, load_rules(DEMO_RULES), NOW)

    assert list(checked.customers.quarantined["key"]) == ["GLOBEX"]
    assert list(checked.tickets.quarantined["key"]) == ["T-1004"]
    reasons = dict(zip(checked.worklogs.quarantined["source_id"], checked.worklogs.quarantined["reason"], strict=True))
    globex = batch.worklogs.loc[batch.worklogs["customer_id"] == "GLOBEX", "source_id"]
    assert reasons[globex.iloc[0]].startswith("customer 'GLOBEX' is unusable: name is empty: name=' '")
    worklogs = batch.worklogs
    on_ticket = worklogs.loc[(worklogs["ticket_id"] == "T-1004") & (worklogs["customer_id"] == "ACME")]
    assert reasons[on_ticket["source_id"].iloc[0]].startswith(
        "ticket 'T-1004' is unusable: created_at is in the future: created_at="
    )
    assert not checked.worklogs.valid["customer_id"].astype(object).eq("GLOBEX").any()


# -- customers, tickets, usage, drafts -----------------------------------------------------------------


def test_customer_suite() -> None:
    frame = pd.DataFrame({
        "customer_id": ["A", "B", "B", "C", "D"], "name": ["Acme", "Beta", "Beta 2", "", "Delta"],
        "currency": ["EUR", "USD", "USD", "EUR", "EURO"], "timezone": ["UTC", "UTC", "UTC", "Mars/Olympus", "UTC"],
        "erp_ref": None, "country": None,
    })  # fmt: skip
    outcome = validate_customers(frame)
    reasons = dict(zip(outcome.quarantined["key"], outcome.quarantined["reason"], strict=True))
    assert reasons == {
        "B": "the customer id appears more than once: customer_id='B'",
        "C": "name is empty: name=''; unknown timezone (expected an IANA name such as Europe/Berlin): "
             "timezone='Mars/Olympus'",
        "D": "currency is not an ISO 4217 code we bill in: currency='EURO'",
    }  # fmt: skip
    assert list(outcome.valid["customer_id"]) == ["A"] and outcome.failed_rows == 4


def test_ticket_suite() -> None:
    tickets = pd.DataFrame({
        "ticket_id": ["T-1", "T-2", "T-2", "T-3", "T-4"], "customer_id": ["A", "A", "A", "ZED", "A"],
        "created_at": ["2026-10-01T10:00:00Z", "2026-10-01T10:00:00Z", None, "2026-10-02T10:00:00Z",
                       "2026-12-24T10:00:00Z"],
        "resolved_at": [None, None, None, None, "2026-12-25T10:00:00Z"], "source_row": [2, 3, 4, 5, 6],
    })  # fmt: skip
    outcome = validate_tickets(tickets, ["A"], NOW)
    reasons = dict(zip(outcome.quarantined["key"], outcome.quarantined["reason"], strict=True))
    assert reasons["T-2"] == "the ticket id appears more than once: ticket_id='T-2' (tickets rows 3 and 4)"
    assert reasons["T-3"] == "unknown customer: customer_id='ZED' (tickets row 5)"
    assert reasons["T-4"].startswith("created_at is in the future: created_at='2026-12-24T10:00:00+00:00'")
    assert "resolved_at is in the future" in reasons["T-4"]
    assert list(outcome.valid["ticket_id"]) == ["T-1"]


def usage_rows(**changes: list[object]) -> pd.DataFrame:
    rows = 3
    frame = empty_usage().reindex(range(rows))
    base = {"key": [f"u:{n}" for n in range(rows)], "source_system": "filedrop", "instance": "x",
            "object_type": "usage", "source_id": [f"U-{n}" for n in range(rows)], "customer_id": "ACME",
            "metric": "storage_gb", "quantity": "12.5", "occurred_on": "2026-10-05", "period": "2026-10",
            "content_hash": "h", "source_file": "usage.csv", "source_row": [2, 3, 4]}  # fmt: skip
    for column, values in (base | changes).items():
        frame[column] = values
    return frame


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("customer_id", "HOOLI", "unknown customer: customer_id='HOOLI'"),
    ("customer_id", None, "customer_id is empty: customer_id=(empty)"),
    ("metric", "coffee", "unknown metric (not in the rules' usage): metric='coffee'"),
    ("quantity", "-3", "quantity is not a non-negative number with at most 3 decimals: quantity='-3'"),
    ("quantity", "1.2345", "quantity is not a non-negative number with at most 3 decimals: quantity='1.2345'"),
    ("quantity", "lots", "quantity is not a non-negative number with at most 3 decimals: quantity='lots'"),
    ("quantity", "", "quantity is empty: quantity=(empty)"),
    ("occurred_on", "2026-02-30", "occurred_on is not a date (YYYY-MM-DD): occurred_on='2026-02-30'"),
    ("occurred_on", "2026-09-30", "occurred_on is outside the billing period: occurred_on='2026-09-30'"),
    ("occurred_on", "2026-11-30", "occurred_on is in the future: occurred_on='2026-11-30'"),
    ("source_id", "U-0", "the usage record id appears more than once: record_id='U-0'"),
])  # fmt: skip
def test_usage_suite(column: str, value: object, reason: str) -> None:
    frame = usage_rows()
    frame.loc[1, column] = value
    if column == "source_id":
        frame.loc[1, "key"] = frame.loc[0, "key"]
    outcome = validate_usage(frame, ["ACME"], ["storage_gb"], "2026-10", NOW)
    assert outcome.quarantined["reason"].str.startswith(reason).any(), outcome.quarantined["reason"].tolist()
    bad = outcome.quarantined["key"].tolist()
    assert len(outcome.valid) == 3 - (2 if column == "source_id" else 1) and frame.loc[1, "key"] in bad
    if column != "source_id":
        assert outcome.quarantined["reason"][0].endswith("(usage.csv row 3)")
        assert outcome.quarantined["details"][0][0]["field"] == column


def test_usage_of_a_later_day_is_outside_the_period_and_no_usage_is_fine() -> None:
    frame = usage_rows(occurred_on=["2026-10-31", "2026-11-01", "2026-10-01"])
    outcome = validate_usage(frame, ["ACME"], ["storage_gb"], "2026-10", NOW)
    assert outcome.quarantined["source_id"].tolist() == ["U-1"]
    empty = validate_usage(empty_usage(), ["ACME"], ["storage_gb"], "2026-10", NOW)
    assert empty.checked == 0 and empty.quarantined.empty


def draft(customer: str, amounts: list[int], currency: str = "EUR", erp_ref: str | None = "C-1",
          credit: bool = False) -> InvoiceDraft:  # fmt: skip
    lines = tuple(ChargeLine(customer_id=customer, period="2026-10", currency=currency, service_type="x",
                             description="d", quantity_raw=Decimal(1), quantity_billed=Decimal(1),
                             unit_price_minor=a, amount_minor=a, trace={"credit": credit})
                  for a in amounts)  # fmt: skip
    return InvoiceDraft(customer_id=customer, period="2026-10", currency=currency, version=1, lines=lines,
                        customer_erp_ref=erp_ref)  # fmt: skip


def test_draft_suite_refuses_what_must_not_be_posted() -> None:
    drafts = [draft("OK", [100, 250]), draft("ZERO", [100, -100]), draft("MINUS", [-500]),
              draft("CREDIT", [-500], credit=True), draft("EURO", [100], currency="EURO"),
              draft("UNMAPPED", [100], erp_ref=None), draft("MAPPED", [100], erp_ref=None)]  # fmt: skip
    problems, outcome = validate_drafts(drafts, mapped_customers=["MAPPED"])
    reasons = {p.customer_id: p.reason for p in problems}
    assert reasons == {
        "ZERO": "the total is zero or negative and the draft is not a credit note: total_minor=0",
        "MINUS": "the total is zero or negative and the draft is not a credit note: total_minor=-500",
        "EURO": "currency is not an ISO 4217 code we bill in: currency='EURO'",
        "UNMAPPED": "the customer is not mapped to the ERP (no erp_ref and no ERP mapping): customer_id='UNMAPPED'",
    }
    assert outcome.checked == 7
    everyone, _ = validate_drafts([draft("UNMAPPED", [100], erp_ref=None)], mapped_customers=None)
    assert everyone == []  # an ERP that maps any customer itself


def test_set_checks_by_position_fail_the_same_rows_as_plain_isin() -> None:
    """The suite runs in-set checks as positions in the set: same answer as pandas, categorical or not."""
    from rules.quality import _positions

    values = pd.Series(["a", None, "z", "b", "a"])
    for series in (values, values.astype("category"), values.astype("string")):
        positions = _positions(series, ["b", "a"])
        assert np.isnan(positions[1])
        assert list(np.nan_to_num(positions, nan=99)) == [1, 99, -1, 0, 1]


# -- bad input of any kind: a quarantine with a reason, never a crash ----------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.dates().map(str),
    st.sampled_from(["ACME", "storage_gb", "2026-10-05", "1.5", ""]),
)


@settings(max_examples=60, deadline=None, database=None)
@given(rows=st.lists(st.fixed_dictionaries({column: ANY_VALUE for column in ("customer_id", "metric", "quantity",
                                                                              "occurred_on")}),
                     min_size=1, max_size=6))  # fmt: skip
def test_any_usage_rows_are_either_valid_or_quarantined_with_a_reason(rows: list[dict[str, object]]) -> None:
    frame = usage_rows().iloc[:0].reindex(range(len(rows)))
    for column in ("key", "source_id"):
        frame[column] = [f"{column}-{n}" for n in range(len(rows))]
    frame[["source_file", "source_row"]] = ["usage.csv", 2]
    for column in ("customer_id", "metric", "quantity", "occurred_on"):
        frame[column] = pd.Series([r[column] for r in rows], dtype=object)
    outcome = validate_usage(frame, ["ACME"], ["storage_gb"], "2026-10", NOW)

    assert sorted(outcome.valid["key"].tolist() + outcome.quarantined["key"].tolist()) == sorted(frame["key"])
    assert all(reason and "usage.csv row 2" in reason for reason in outcome.quarantined["reason"])
    valid = outcome.valid
    assert (valid["customer_id"] == "ACME").all() and (valid["metric"] == "storage_gb").all()


def test_a_draft_whose_line_is_not_quantity_times_unit_price_is_refused() -> None:
    good = draft("OK", [100, 250])
    wrong = ChargeLine(customer_id="WRONG", period="2026-10", currency="EUR", service_type="x", description="d",
                       quantity_raw=Decimal("1.5"), quantity_billed=Decimal("1.50"), unit_price_minor=1000,
                       amount_minor=1600)  # 1.50 × 10.00 = 15.00, not 16.00  # fmt: skip
    bad = InvoiceDraft(customer_id="WRONG", period="2026-10", currency="EUR", version=1, lines=(wrong,),
                       customer_erp_ref="C-2")  # fmt: skip
    prepaid_only = InvoiceDraft(customer_id="PREPAID", period="2026-10", currency="EUR", version=1,
                                customer_erp_ref="C-3", lines=(wrong.model_copy(update={
                                    "customer_id": "PREPAID", "unit_price_minor": 0, "amount_minor": 0,
                                    "trace": {"prepaid": {"agreement": "R", "drawn_centi": 150}}}),))  # fmt: skip
    problems, _ = validate_drafts([good, bad, prepaid_only])
    assert [(p.customer_id, p.reason) for p in problems] == [
        ("WRONG", "the total is not the sum of its lines' quantity × unit price: total_minor=1600")
    ]


# --- bugs the fuzzed export (tests/faults/fuzz_rows.py) found, fixed ---


def test_a_usage_record_without_an_id_is_quarantined_naming_record_id() -> None:
    # The connector's "record_id is empty" issue never reaches the usage suite: the row was billed under "@usage.csv:3".
    frame = usage_rows()
    frame.loc[1, ["source_id", "key"]] = ["", "files:x:usage:@usage.csv:3"]
    outcome = validate_usage(frame, ["ACME"], ["storage_gb"], "2026-10", NOW)
    assert outcome.quarantined["key"].tolist() == ["files:x:usage:@usage.csv:3"]
    assert outcome.quarantined["reason"][0] == "record_id is empty: record_id='' (usage.csv row 3)"


@pytest.mark.parametrize("quantity", ["١٢", "１２", "12.٥", "1234567890123"])
def test_a_usage_quantity_in_other_digits_or_too_long_is_quarantined(quantity: str) -> None:
    # The regex's \d matched any Unicode digit, and Decimal("١٢") is 12: such a quantity was billed.
    frame = usage_rows()
    frame.loc[1, "quantity"] = quantity
    outcome = validate_usage(frame, ["ACME"], ["storage_gb"], "2026-10", NOW)
    assert outcome.quarantined["reason"].tolist() == [
        f"quantity is not a non-negative number with at most 3 decimals: quantity={quantity!r} (usage.csv row 3)"]


def test_a_long_value_is_cut_short_in_the_reason_and_kept_whole_in_the_details() -> None:
    # A pasted document as the customer id made a reason (and the run summary) of 20,000 characters.
    frame = FileDropSource(SAMPLE).extract().worklogs.head(3).copy()
    frame["customer_id"] = frame["customer_id"].astype(object)
    frame.loc[1, "customer_id"] = "x" * 20_000
    outcome = outcome_for(frame)
    reason = outcome.quarantined["reason"][0]
    # row 5: the first row of October
    assert reason == f"unknown customer: customer_id={'x' * 80!r}… (20000 characters) (worklogs.csv row 5)"
    assert outcome.quarantined["details"][0][0]["value"] == "x" * 20_000
