"""Data-quality suites (Great Expectations 1.x) and the row-level quarantine they decide.

A suite is a list of ``Check``s: a GX expectation plus the sentence a user reads when a row fails it.
Rows that fail any check are quarantined with every check they failed and the offending values; the rest
go on to pricing.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

ROW = "_row"  # a unique row number, so failures map back to rows even when ids repeat
MAX_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Check:
    expectation: Any  # a great_expectations.expectations.Expectation
    column: str
    says: str  # what the rule means, in a user's words


@dataclass
class Outcome:
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # key, source_id, reason, details (dict)
    failed_per_check: dict[str, int]


@cache
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def worklog_suite(
    known_customers: Sequence[str], known_services: Sequence[str], known_tickets: Sequence[str], now: datetime
) -> list[Check]:
    import great_expectations.expectations as gxe

    return [
        Check(gxe.ExpectColumnValuesToBeUnique(column="key"), "source_id", "the work log id appears more than once"),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="customer_id"), "customer_id", "customer_id is empty"),
        Check(gxe.ExpectColumnValuesToBeInSet(column="customer_id", value_set=list(known_customers)), "customer_id",
              "unknown customer"),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="service_type"), "service_type", "service_type is empty"),
        Check(gxe.ExpectColumnValuesToBeInSet(column="service_type", value_set=list(known_services)), "service_type",
              "unknown service type (not in the rules file)"),
        Check(gxe.ExpectColumnValuesToBeInSet(column="ticket_id", value_set=list(known_tickets)), "ticket_id",
              "unknown ticket"),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="started_at"), "started_at", "started_at is empty"),
        Check(gxe.ExpectColumnValuesToBeBetween(column="started_at", max_value=pd.Timestamp(now)), "started_at",
              "started_at is in the future"),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="raw_seconds"), "raw_seconds", "duration is empty"),
        Check(gxe.ExpectColumnValuesToBeBetween(column="raw_seconds", min_value=1, max_value=MAX_SECONDS),
              "raw_seconds", "duration must be more than 0 and at most 24 hours"),
    ]  # fmt: skip


def run_suite(name: str, frame: pd.DataFrame, checks: Sequence[Check]) -> dict[int, list[tuple[Check, Any]]]:
    """Row number → the checks that row failed, with the offending value."""
    import great_expectations as gx

    context = _context()
    suite = gx.ExpectationSuite(name=name)
    for check in checks:
        suite.add_expectation(check.expectation)
    source = context.data_sources.add_or_update_pandas(name)
    asset = next((a for a in source.assets if a.name == name), None) or source.add_dataframe_asset(name)
    definition = next((d for d in asset.batch_definitions if d.name == "all"), None)
    definition = definition or asset.add_batch_definition_whole_dataframe("all")
    batch = definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]})
    failures: dict[int, list[tuple[Check, Any]]] = defaultdict(list)
    for check, outcome in zip(checks, result.results, strict=True):
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            raise RuntimeError(f"check {check.says!r} could not run: {outcome.exception_info['exception_message']}")
        for item in outcome.result.get("unexpected_index_list") or []:
            failures[int(item[ROW])].append((check, item.get(check.expectation.column)))
    return failures


def _plain(value: Any) -> Any:
    if value is None or (not isinstance(value, str | list | dict) and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return value


def _shown(column: str, value: Any) -> str:
    """A failing value as the user wrote it: durations in minutes, empty as (empty)."""
    value = _plain(value)
    if value is None:
        return "(empty)"
    if column == "raw_seconds":
        return f"{value / 60:g}"
    return repr(value)


def validate_worklogs(
    worklogs: pd.DataFrame,
    issues: pd.DataFrame,
    known_customers: Sequence[str],
    customer_problems: dict[str, str],
    known_services: Sequence[str],
    known_tickets: Sequence[str],
    now: datetime,
) -> Outcome:
    """Split work logs into valid rows and quarantined ones, each with every reason it failed."""
    frame = worklogs.reset_index(drop=True)
    frame[ROW] = np.arange(len(frame))
    checks = worklog_suite(known_customers, known_services, known_tickets, now)
    failures = run_suite("worklogs", frame, checks) if len(frame) else {}

    reasons: dict[str, list[str]] = defaultdict(list)
    details: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, issue in issues.iterrows():  # parse problems found by the connector: few rows
        where = f"{issue['source_file']} row {issue['source_row']}"
        reasons[issue["key"]].append(f"{issue['problem']}: {issue['value']!r} ({where})")
        details[issue["key"]].append({"field": issue["field"], "value": issue["value"], "check": "parse"})
    parse_fields = {(i["key"], i["field"]) for _, i in issues.iterrows()}
    failed_per_check: dict[str, int] = defaultdict(int)
    column_of_field = {"raw_seconds": "duration_minutes"}
    rows_of_key = frame.groupby("key")["source_row"].agg(list).to_dict() if len(frame) else {}
    for row, failed in failures.items():
        record = frame.iloc[row]
        key = record["key"]
        where = f"{record['source_file']} row {record['source_row']}"
        for check, value in failed:
            failed_per_check[check.says] += 1
            field = column_of_field.get(check.expectation.column, check.expectation.column)
            if (key, field) in parse_fields:  # already explained by the parse problem
                continue
            if check.column == "source_id":  # a repeated id: one reason naming every row it is on
                rows = " and ".join(str(r) for r in rows_of_key[key])
                reasons[key].append(f"{check.says}: {record['source_id']} ({record['source_file']} rows {rows})")
            else:
                says = customer_problems.get(value, check.says) if check.says == "unknown customer" else check.says
                reasons[key].append(f"{says}: {field}={_shown(check.expectation.column, value)} ({where})")
            details[key].append({"field": field, "value": _plain(value), "check": check.expectation.expectation_type})

    bad = frame["key"].isin(reasons.keys())
    first = frame.loc[bad].drop_duplicates("key")
    quarantined = pd.DataFrame({
        "key": first["key"].to_numpy(),
        "source_id": first["source_id"].to_numpy(),
        "reason": ["; ".join(dict.fromkeys(reasons[k])) for k in first["key"]],
        "details": [details[k] for k in first["key"]],
    })  # fmt: skip
    return Outcome(
        valid=frame.loc[~bad].drop(columns=ROW), quarantined=quarantined, failed_per_check=dict(failed_per_check)
    )
