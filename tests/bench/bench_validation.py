"""The work-log suite (rules/suites/worklogs.json, run by Great Expectations) over 1,000,000 generated work
logs with a small share of bad rows of every kind, against the same checks hand-written in pandas, measured
in the same run on the same data. Both must fail exactly the same rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rules.quality import MAX_SECONDS, billing_window, load_suite, run_suite
from tests.bench.run import median_of_three, peak_mb, timed

ROWS = 1_000_000
CUSTOMERS = 5_000
TICKETS = 50_000
SERVICES = ["remote_support", "onsite_support", "consulting", "project_work", "internal"]
PERIOD = "2026-10"
NOW = pd.Timestamp("2026-11-23T00:00:00Z")
BAD = {  # rows of each kind of mistake
    "unknown_customer": 500, "no_customer": 300, "unknown_service": 500, "no_service": 200, "unknown_ticket": 400,
    "negative_duration": 300, "too_long": 300, "no_duration": 200, "future": 200, "before_period": 200,
    "no_start": 100, "repeated_id": 300,
}  # fmt: skip


def generate(seed: int = 11) -> tuple[pd.DataFrame, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    customers = np.array([f"C{n:05d}" for n in range(CUSTOMERS)], dtype=object)
    tickets = np.array([f"T-{n}" for n in range(TICKETS)], dtype=object)
    customer = customers[rng.integers(0, CUSTOMERS, ROWS)]
    service = np.array(SERVICES, dtype=object)[rng.choice(5, ROWS, p=[0.6, 0.1, 0.1, 0.15, 0.05])]
    ticket = tickets[rng.integers(0, TICKETS, ROWS)]
    ticket[rng.random(ROWS) < 0.1] = None  # work without a ticket is fine
    start = pd.Timestamp(f"{PERIOD}-01T00:00:00Z").value // 10**9
    started = (start + rng.integers(0, 30 * 86400 // 300, ROWS) * 300).astype("float64")
    seconds = (rng.integers(1, 240, ROWS) * 60 + rng.integers(0, 60, ROWS)).astype("float64")
    ids = np.array([f"WL-{n}" for n in range(ROWS)], dtype=object)
    rows = iter(rng.permutation(ROWS))  # every bad row is bad in one way only

    def pick(kind: str) -> np.ndarray:
        return np.fromiter(rows, dtype=np.int64, count=BAD[kind])

    customer[pick("unknown_customer")] = "HOOLI"
    customer[pick("no_customer")] = None
    service[pick("unknown_service")] = "gardening"
    service[pick("no_service")] = None
    ticket[pick("unknown_ticket")] = "T-NOPE"
    seconds[pick("negative_duration")] = -1800
    seconds[pick("too_long")] = 2000 * 60
    seconds[pick("no_duration")] = np.nan
    started[pick("future")] = NOW.value // 10**9 + 86400
    started[pick("before_period")] = start - 20 * 86400
    started[pick("no_start")] = np.nan
    repeated = pick("repeated_id")
    twins = pick("repeated_id")
    ids[repeated] = ids[twins]  # both rows of a repeated id fail
    frame = pd.DataFrame({
        "key": "filedrop:bench:worklog:" + pd.Series(ids, dtype=object),
        "source_id": ids,
        "ticket_id": ticket,
        "customer_id": pd.Categorical(customer),  # categorical, as the sources hand them over
        "service_type": pd.Categorical(service),
        "started_at": pd.to_datetime(started, unit="s", utc=True),
        "raw_seconds": pd.array(seconds, dtype="Float64").astype("Int64"),
    })  # fmt: skip
    window_start, window_end = billing_window(PERIOD)
    parameters = {"known_customers": list(customers), "known_services": SERVICES, "known_tickets": list(tickets),
                  "now": NOW, "window_start": window_start, "window_end": window_end}  # fmt: skip
    return frame, parameters


def by_hand(frame: pd.DataFrame, p: dict[str, Any]) -> np.ndarray:
    """The same eleven checks written directly in pandas: the row positions failing any of them."""
    started, seconds = frame["started_at"], frame["raw_seconds"]
    bad = (
        frame["key"].duplicated(keep=False)
        | frame["customer_id"].isna()
        | (frame["customer_id"].notna() & ~frame["customer_id"].isin(p["known_customers"]))
        | frame["service_type"].isna()
        | (frame["service_type"].notna() & ~frame["service_type"].isin(p["known_services"]))
        | (frame["ticket_id"].notna() & ~frame["ticket_id"].isin(p["known_tickets"]))
        | started.isna()
        | (started > p["now"])
        | (started < p["window_start"])
        | (started >= p["window_end"])
        | seconds.isna()
        | ~seconds.between(1, MAX_SECONDS).fillna(True)
    )
    return np.flatnonzero(bad.to_numpy())


def plain_gx(frame: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
    """The straightforward way, for comparison: the suite file as it is (value sets as parameters) on the frame
    as it is, COMPLETE results with the row number as index column."""
    import great_expectations as gx

    from rules.quality import _context

    suite = load_suite("worklogs")
    gx_suite = gx.ExpectationSuite(name="worklogs-plain", expectations=[c.config for c in suite.checks])
    source = _context().data_sources.add_or_update_pandas("bench-plain")
    definition = source.add_dataframe_asset("worklogs").add_batch_definition_whole_dataframe("all")
    batch = definition.get_batch(batch_parameters={"dataframe": frame.assign(_row=np.arange(len(frame)))})
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]}
    result = batch.validate(gx_suite, expectation_parameters=parameters, result_format=result_format)
    rows = {int(item["_row"]) for r in result.results for item in r.result.get("unexpected_index_list") or []}
    return np.array(sorted(rows), dtype=np.int64)


def run() -> dict[str, Any]:
    frame, parameters = generate()
    suite = load_suite("worklogs")
    run_suite(suite, frame.head(1000), parameters)  # GX's first batch pays for imports and registries
    gx_seconds, suite_run = median_of_three(lambda: run_suite(suite, frame, parameters))
    pandas_seconds, reference = median_of_three(lambda: by_hand(frame, parameters))
    plain_seconds, plain = timed(lambda: plain_gx(frame, parameters))  # once: it is slow
    failing = suite_run.failing_rows()
    same = bool(np.array_equal(failing, reference))
    assert same, f"GX and pandas disagree: {len(failing)} against {len(reference)} failing rows"
    expected = sum(BAD.values()) + BAD["repeated_id"]  # a repeated id fails on both of its rows
    assert len(failing) == expected, f"{len(failing)} failing rows, {expected} made bad"
    return {
        "name": "validation",
        "rows": ROWS,
        "seconds": round(gx_seconds, 3),
        "peak_mb": peak_mb(),
        "references": {"pandas": round(pandas_seconds, 3)},
        "timing": "median of 3 runs each after a warm-up run (and one GX run on 1,000 rows for its imports)",
        "x_pandas": round(gx_seconds / pandas_seconds, 2),
        "expectations": len(suite.checks),
        "failing_rows": len(failing),
        "same_failures": same,
        "gx_plain_seconds": round(plain_seconds, 3),  # the suite file run as it is, one run
        "gx_plain_same_failures": bool(np.array_equal(plain, reference)),
        "failed_per_expectation": {c.says: len(r) for c, r in zip(suite.checks, suite_run.failed, strict=True)},
        "targets": {"seconds": 1.5, "x_pandas": 5.0},
    }
