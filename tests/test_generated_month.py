"""The benchmark month generator (tests/bench/generated_month.py) read back by the project's own file-drop reader
and validate stage: what ``MonthFacts`` says was written is what the pipeline finds, so a benchmark built on it
measures the month it claims to."""

from __future__ import annotations

import csv
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from billing.models import WorkBatch
from connectors.filedrop import FileDropSource
from tasks.validate import Checked
from tests.bench.generated_month import (
    AFTER_HOURS,
    CURRENCIES,
    NON_BILLABLE,
    TIMEZONES,
    WEEKEND,
    MonthFacts,
    write_month,
)

ROWS = 2_000
NOW = datetime(2026, 11, 1, 2, tzinfo=UTC)  # the manifest's exported_at: nothing may be in the future of it
FILES = ("manifest.json", "customers.json", "tickets.csv", "worklogs.csv")
BAD_REASONS = (  # what the validate stage says of each kind of bad row the generator writes
    "duration_minutes=-30",
    "duration_minutes=2000",
    "unknown customer",
    "unknown service type",
    "started_at is not an ISO 8601 timestamp",
    "duration_minutes is not a number",
    "customer_id is empty",
)


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> MonthFacts:
    return write_month(tmp_path_factory.mktemp("generated") / "export", ROWS)


@pytest.fixture(scope="module")
def batch(month: MonthFacts) -> WorkBatch:
    return FileDropSource(month.folder).extract()


@pytest.fixture(scope="module")
def checked(batch: WorkBatch) -> Checked:
    from rules.schema import load_rules
    from tasks.validate import check_batch
    from tests.conftest import DEMO_RULES

    return check_batch(batch, load_rules(DEMO_RULES), NOW)


def _written(month: MonthFacts) -> list[dict[str, str]]:
    with (month.folder / "worklogs.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_batch_has_the_generated_customers_and_tickets(month: MonthFacts, batch: WorkBatch) -> None:
    assert (batch.instance, batch.period) == (f"generated-{ROWS}", "2026-10")
    assert month.customers == ROWS // 200 and month.tickets == ROWS // 5 and month.worklogs == ROWS
    assert len(batch.customers) == month.customers and not batch.customer_problems and not batch.notes
    assert [c.customer_id for c in batch.customers] == [f"C{n:05d}" for n in range(1, month.customers + 1)]
    per_currency = {c: sum(1 for x in batch.customers if x.currency == c) for c in CURRENCIES}
    assert per_currency == month.customers_per_currency
    assert sum(month.customers_per_currency.values()) == month.customers
    assert all(c.timezone == TIMEZONES[CURRENCIES.index(c.currency)] for c in batch.customers)

    tickets = batch.tickets
    assert tickets["ticket_id"].tolist() == [f"T{n:07d}" for n in range(1, month.tickets + 1)]
    assert set(tickets["customer_id"]) <= {c.customer_id for c in batch.customers}
    assert tickets["created_at"].is_monotonic_increasing  # numbered in creation order
    assert tickets["created_at"].notna().all() and (tickets["created_at"] < pd.Timestamp(NOW)).all()
    closed = tickets["status"].isin(["closed", "resolved"])
    assert closed.mean() > 0.75 and tickets.loc[closed, "resolved_at"].notna().all()
    assert tickets.loc[~closed, "resolved_at"].isna().all()
    resolved = tickets.loc[closed, "resolved_at"]
    assert (resolved.dt.strftime("%Y-%m") == "2026-10").mean() > 0.95 and (resolved <= pd.Timestamp(NOW)).all()


def test_every_written_row_is_kept_and_only_the_unreadable_are_issues(month: MonthFacts, batch: WorkBatch) -> None:
    written = _written(month)
    assert len(written) == month.worklogs
    assert batch.outside_period == 0  # every start is a day away from the month's edges in any timezone
    assert len(batch.worklogs) + batch.outside_period == month.worklogs
    assert batch.worklogs["source_id"].tolist() == [row["worklog_id"] for row in written]
    assert set(batch.issues["key"]) <= set(batch.worklogs["key"])
    unreadable = {row["worklog_id"] for row in written
                  if "3x" in row["started_at"] or row["duration_minutes"] == "1h30"}  # fmt: skip
    assert unreadable and set(batch.issues["key"].str.rsplit(":", n=1).str[-1]) == unreadable


def test_validation_quarantines_exactly_the_bad_rows(month: MonthFacts, checked: Checked) -> None:
    assert month.bad_rows == round(ROWS * 0.005)
    assert checked.customers.quarantined.empty and checked.tickets.quarantined.empty
    quarantined = checked.worklogs.quarantined
    assert len(quarantined) == month.bad_rows
    # The bad rows have the ids after the good ones.
    assert sorted(quarantined["source_id"]) == [f"W{n:08d}" for n in range(month.good_rows + 1, ROWS + 1)]
    reasons = " | ".join(quarantined["reason"])
    assert [says for says in BAD_REASONS if says not in reasons] == []
    valid = checked.worklogs.valid
    assert len(valid) == month.good_rows
    assert int((~valid["billable"]).sum()) == month.non_billable
    assert int(valid["billable"].sum()) == month.billable
    assert abs(month.non_billable / month.good_rows - NON_BILLABLE) < 0.005
    assert int(valid["ticket_id"].isna().sum()) == month.without_ticket
    assert 0.01 < month.without_ticket / month.good_rows < 0.05


def test_after_hours_and_weekend_work_in_the_customers_local_time(month: MonthFacts, checked: Checked) -> None:
    valid = checked.worklogs.valid
    zone_of = {f"C{n:05d}": TIMEZONES[(n - 1) % 3] for n in range(1, month.customers + 1)}
    zones = valid["customer_id"].astype(str).map(zone_of)
    weekday = pd.Series(0, index=valid.index)
    start = pd.Series(0, index=valid.index)
    for zone, rows in zones.groupby(zones).groups.items():
        local = valid.loc[rows, "started_at"].dt.tz_convert(str(zone))
        assert (local.dt.strftime("%Y-%m") == "2026-10").all()
        assert local.dt.day.between(2, 30).all()  # a day away from the month's edges
        weekday[rows] = local.dt.weekday
        start[rows] = local.dt.hour * 60 + local.dt.minute
    end = start + valid["raw_seconds"].astype("int64") // 60
    weekend = (weekday >= 5).to_numpy()
    after = ~weekend & ((start < 8 * 60) | (start >= 18 * 60)).to_numpy()
    business = ~weekend & ~after
    assert int(weekend.sum()) == month.weekend and int(after.sum()) == month.after_hours
    assert abs(weekend.mean() - WEEKEND) < 0.005 and abs(after.mean() - AFTER_HOURS) < 0.005
    assert (end[business] <= 18 * 60).all()  # business work ends by 18:00: the modifiers see one kind of row
    minutes = valid["raw_seconds"].astype("int64") // 60
    assert minutes.between(5, 240).all() and (valid["raw_seconds"] % 60 == 0).all()


def _contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_the_same_arguments_write_the_same_bytes(tmp_path: Path, month: MonthFacts) -> None:
    again = write_month(tmp_path / "again", ROWS)
    assert _contents(again.folder) == _contents(month.folder)
    assert again == replace(month, folder=again.folder)
    other = write_month(tmp_path / "other", ROWS, seed=7)
    assert _contents(other.folder)["worklogs.csv"] != _contents(month.folder)["worklogs.csv"]


def test_twenty_thousand_rows_are_deterministic_and_sized(tmp_path: Path) -> None:
    first = write_month(tmp_path / "a", 20_000, period="2027-03")
    second = write_month(tmp_path / "b", 20_000, period="2027-03")
    assert _contents(first.folder) == _contents(second.folder)
    assert (first.customers, first.tickets, first.bad_rows) == (100, 4_000, 100)
    lines = _contents(first.folder)["worklogs.csv"].decode("utf-8").splitlines()
    assert len(lines) == 20_001  # no note spans lines
    frame = pd.read_csv(first.folder / "worklogs.csv", dtype=str, keep_default_na=False)
    assert frame["worklog_id"].is_unique and len(frame) == first.worklogs
    # A spring with a DST change (2027-03-28 in Europe, 03-14 in the US): every start still in March, local time.
    started = pd.to_datetime(frame["started_at"], utc=True, errors="coerce", format="ISO8601")
    assert started.isna().sum() == sum(1 for text in frame["started_at"] if "3x" in text)
    assert (started.dropna().dt.tz_convert("America/New_York").dt.month == 3).all()
    assert np.array_equal(
        np.bincount(pd.read_json(first.folder / "customers.json")["currency"].map(CURRENCIES.index), minlength=3),
        [first.customers_per_currency[c] for c in CURRENCIES],
    )


def test_the_bench_rules_price_every_billable_row_of_the_month(month: MonthFacts, batch: WorkBatch,
                                                                checked: Checked) -> None:
    """tests/bench/generated-rules.yaml gives the GBP third its rates: every valid billable row becomes a line,
    the non-billable ones are named by the rule, nothing is left unpriced."""
    from rules.engine import price
    from rules.schema import load_rules

    rules = load_rules(Path(__file__).parent / "bench" / "generated-rules.yaml")
    result = price(checked.worklogs.valid, batch.customers, rules, batch.tickets)
    assert result.unpriceable.empty, result.unpriceable.head()
    assert len(result.lines) == month.billable and len(result.non_billable) == month.non_billable
    assert set(result.lines["currency"].astype(str)) == {"EUR", "USD", "GBP"}
