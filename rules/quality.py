"""Data-quality suites (Great Expectations 1.x) and the row-level quarantine they decide.

The suites are files in ``rules/suites/`` (one GX ``ExpectationSuite`` as JSON per entity): each expectation
carries, in its ``meta``, the sentence a user reads when a row fails it (``says``) and the column as the source
names it (``field``). Values known only at run time (known customers, the billing window, now) are suite
parameters (``{"$PARAMETER": "known_customers"}``). Rows failing any expectation are quarantined with every
expectation they failed and the offending values; the rest go on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd

from billing.draft_book import DraftBook, book_of
from billing.errors import ConfigurationError, UserFacingError
from billing.models import Customer, InvoiceDraft
from billing.money import CURRENCY_EXPONENTS, Rounding, div_round

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

SUITES = Path(__file__).resolve().parent / "suites"
MAX_SECONDS = 24 * 3600
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
NOT_NULL = "expect_column_values_to_not_be_null"
# A billing period is a month in the customer's timezone: UTC-12 to UTC+14 around the month in UTC.
WINDOW_SLACK = (timedelta(hours=14), timedelta(hours=12))
EXAMPLES = 5  # example rows per expectation in reports


class QualityGateError(UserFacingError):
    """Too many rows of one suite failed: the input is probably broken as a whole, not row by row."""


# -- suites as files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One expectation of a suite file, with what a user reads when a row fails it."""

    config: dict[str, Any]  # the expectation as in the file: type, kwargs, meta

    @property
    def type(self) -> str:
        return str(self.config["type"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.config["kwargs"])

    @property
    def column(self) -> str:
        kwargs = self.config["kwargs"]
        return str(kwargs.get("column") or kwargs.get("column_A"))

    @property
    def columns(self) -> list[str]:
        kwargs = self.config["kwargs"]
        return [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]

    @property
    def says(self) -> str:
        return str(self.config["meta"]["says"])

    @property
    def field(self) -> str:
        """The column as the user's source names it (``raw_seconds`` is ``duration_minutes`` in a file)."""
        return str(self.config["meta"].get("field", self.column))

    @property
    def set_parameter(self) -> str | None:
        """The suite parameter holding the value set of an in-set check, if it is one."""
        value_set = self.config["kwargs"].get("value_set")
        return value_set.get("$PARAMETER") if self.type == IN_SET and isinstance(value_set, dict) else None


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    checks: tuple[Check, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> set[str]:
        return set(re.findall(r'"\$PARAMETER": "([^"]+)"', json.dumps([c.config for c in self.checks])))


_GX = threading.RLock()
P = ParamSpec("P")
R = TypeVar("R")


def _gx_one_at_a_time(function: Callable[P, R]) -> Callable[P, R]:
    """GX is not thread-safe (its context, its expectation registry): flows run in threads of one process
    (tests, a runner) take turns in every function that touches it."""

    @functools.wraps(function)
    def serialized(*args: P.args, **kwargs: P.kwargs) -> R:
        with _GX:
            return function(*args, **kwargs)

    return serialized


@cache
@_gx_one_at_a_time
def load_suite(name: str, folder: Path = SUITES) -> Suite:
    """A suite file, checked expectation by expectation (GX would skip an invalid one with only a log line)."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    path = folder / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: cannot read the {name!r} suite: {exc}") from None
    checks = []
    for number, item in enumerate(data.get("expectations") or []):
        where = f"{path}: expectation {number} ({item.get('type', '?')})"
        if not isinstance(item.get("meta"), dict) or not item["meta"].get("says"):
            raise ConfigurationError(f"{where}: meta.says is missing (the sentence a user reads when a row fails)")
        try:
            ExpectationConfiguration(**item).to_domain_obj()
        except Exception as exc:  # GX raises several types for a bad configuration; all mean the same here
            raise ConfigurationError(f"{where}: not a valid expectation: {exc}") from None
        checks.append(Check(item))
    if not checks:
        raise ConfigurationError(f"{path}: the {name!r} suite has no expectations")
    return Suite(name=str(data.get("name", name)), path=path, checks=tuple(checks), meta=data.get("meta") or {})


# -- running a suite with GX --------------------------------------------------------------------


@cache
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):  # the latter says INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _positions(values: pd.Series, known: Iterable[Any]) -> np.ndarray:
    """Each value's position in ``known`` (-1 when unknown, NaN when empty), as float so GX compares by column.

    Why: an in-set expectation copies its value set on every one of the ~100 times GX reads its configuration,
    which costs seconds for thousands of known customers. The position carries the same answer."""
    index = pd.Index(pd.unique(np.asarray(list(known), dtype=object)))
    if isinstance(values.dtype, pd.CategoricalDtype):  # look up the few categories, not every row
        category_position = index.get_indexer(values.cat.categories).astype("float64")
        codes = values.cat.codes.to_numpy()
        return np.where(codes >= 0, category_position[codes] if len(category_position) else -1.0, np.nan)
    positions = index.get_indexer(values.to_numpy(dtype=object)).astype("float64")
    positions[values.isna().to_numpy()] = np.nan
    return positions


def _for_gx(values: pd.Series, check_type: str) -> pd.Series | np.ndarray:
    """A column in the dtype GX evaluates by column rather than value by value."""
    if check_type == UNIQUE and not pd.api.types.is_numeric_dtype(values.dtype):
        codes, _ = pd.factorize(values)  # integers hash and compare far faster than text
        return np.where(codes >= 0, codes, np.nan)
    if isinstance(values.dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")  # Int64/Float64: GX's between falls back to a Python call per value
    return values


@dataclass
class SuiteRun:
    """What a suite found: per check, the row positions that failed it."""

    suite: Suite
    rows: int
    failed: list[np.ndarray]
    result: Any = None  # the GX validation result, trimmed to what Data Docs show

    def failing_rows(self) -> np.ndarray:
        return np.unique(np.concatenate(self.failed)) if self.failed else np.array([], dtype=np.int64)


@_gx_one_at_a_time
def run_suite(suite: Suite, frame: pd.DataFrame, parameters: Mapping[str, Any]) -> SuiteRun:
    """Validate ``frame`` (one batch, every expectation at once) and say which rows failed which check."""
    import great_expectations as gx
    from great_expectations.validator.v1_validator import Validator as V1Validator

    if not frame.index.equals(pd.RangeIndex(len(frame))):  # row numbers are positions; copy only if not
        frame = frame.reset_index(drop=True)
    missing = sorted(suite.parameters - set(parameters))
    if missing:
        raise ValueError(f"suite {suite.name!r} needs the parameters {missing}")
    columns: dict[str, Any] = {}
    expectations = []
    # A column's position in a known set is empty exactly where the column is: its not-null check runs there
    # too, so GX's batch (filtered once per expectation) keeps fewer columns.
    coded_of: dict[str, str] = {}
    for c in suite.checks:
        if c.set_parameter:
            coded_of.setdefault(c.column, f"{c.column}@{c.set_parameter}")
    for number, check in enumerate(suite.checks):
        name = check.set_parameter
        meta = check.config["meta"] | {"check": number}  # results are matched to checks by this, not by order
        if check.type == NOT_NULL and check.column in coded_of:
            expectations.append(
                {"description": _described(check)}
                | check.config
                | {"kwargs": check.kwargs | {"column": coded_of[check.column]}, "meta": meta}
            )
            continue
        if name is None:
            for column in check.columns:
                columns.setdefault(column, _for_gx(frame[column], check.type))
            expectations.append({"description": _described(check)} | check.config | {"meta": meta})
            continue
        coded = f"{check.column}@{name}"
        columns[coded] = _positions(frame[check.column], parameters[name])
        expectations.append({
            "type": BETWEEN, "kwargs": {"column": coded, "min_value": 0}, "meta": meta,
            "description": f"`{check.column}` is one of `{name}` (checked by its position in that set, "
                           f"-1 when it is not there): {check.says} otherwise",
        })  # fmt: skip
    gx_suite = gx.ExpectationSuite(name=suite.name, expectations=expectations, meta=suite.meta)
    if len(gx_suite.expectations) != len(expectations):
        raise ConfigurationError(f"{suite.path}: GX refused an expectation of the {suite.name!r} suite")
    used = {k: v for k, v in parameters.items() if k in suite.parameters and k not in _set_parameters(suite)}

    source = _context().data_sources.add_or_update_pandas("ticket-to-invoice")
    asset = next((a for a in source.assets if a.name == suite.name), None) or source.add_dataframe_asset(suite.name)
    definition = next((d for d in asset.batch_definitions if d.name == "all"), None)
    definition = definition or asset.add_batch_definition_whole_dataframe("all")
    # COMPLETE for every failing row; row numbers, not per-row dicts; no pandas query text of every index.
    result_format = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
    # GX filters its whole batch for each expectation (dropping the rows where the column is empty): a batch
    # per column keeps that to the column's own values. GX's own validator, as Batch.validate makes it, minus
    # the batch Batch.validate would load and fingerprint (hash every value) a second time.
    by_columns: dict[tuple[str, ...], list[Any]] = defaultdict(list)
    for expectation in gx_suite.expectations:
        kwargs = expectation.configuration.kwargs
        by_columns[tuple(kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs)].append(expectation)
    result = None
    for names, group in by_columns.items():
        validator = V1Validator(batch_definition=definition, result_format=result_format, batch_parameters={
            "dataframe": pd.DataFrame({n: columns[n] for n in names}, index=frame.index)})  # fmt: skip
        part = validator.validate_expectation_suite(
            gx.ExpectationSuite(name=suite.name, expectations=group, meta=suite.meta), expectation_parameters=used
        )
        result = part if result is None else _merged(result, part)
    assert result is not None
    failed: list[np.ndarray] = [np.array([], dtype=np.int64)] * len(suite.checks)
    for outcome in result.results:
        number = outcome.expectation_config.meta["check"]
        check = suite.checks[number]
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            message = outcome.exception_info["exception_message"]
            raise RuntimeError(f"suite {suite.name!r}: check {check.says!r} could not run: {message}")
        rows = np.asarray(outcome.result.get("unexpected_index_list") or [], dtype=np.int64)
        failed[number] = rows
        _trim_for_docs(outcome.result, frame, check, rows)
    return SuiteRun(suite=suite, rows=len(frame), failed=failed, result=result)


def _merged(result: Any, part: Any) -> Any:
    """One suite's result from the results of its column batches (what Data Docs show as one run)."""
    result.results.extend(part.results)
    evaluated = len(result.results)
    successful = sum(bool(r.success) for r in result.results)
    result.success = successful == evaluated
    result.statistics.update(evaluated_expectations=evaluated, successful_expectations=successful,
                             unsuccessful_expectations=evaluated - successful,
                             success_percent=100 * successful / evaluated if evaluated else None)  # fmt: skip
    return result


def _described(check: Check) -> str:
    """What Data Docs show for an expectation: the user's sentence, then the rule itself."""
    rule = check.type.removeprefix("expect_").replace("_", " ")
    arguments = ", ".join(f"{k}={json.dumps(v)}" for k, v in check.kwargs.items() if k != "column")
    return f"{check.says} — `{check.column}`: {rule}" + (f" ({arguments})" if arguments else "")


def _set_parameters(suite: Suite) -> set[str]:
    return {c.set_parameter for c in suite.checks if c.set_parameter}


def _trim_for_docs(result: dict[str, Any], frame: pd.DataFrame, check: Check, rows: np.ndarray) -> None:
    """Keep Data Docs small and in the user's values (not positions): a few examples, no list of every row."""
    result.pop("unexpected_list", None)
    result.pop("unexpected_index_list", None)
    examples = rows[:20]
    if len(examples) and check.column in frame:  # .iloc: to_numpy() of a timestamp column costs seconds
        values = [_plain(v) for v in frame[check.column].iloc[examples]]
        result["partial_unexpected_list"] = values
        result["partial_unexpected_index_list"] = [int(r) for r in examples]
        counts: dict[str, int] = defaultdict(int)
        for value in values:
            counts[json.dumps(value, default=str)] += 1
        result["partial_unexpected_counts"] = [{"value": json.loads(k), "count": n} for k, n in counts.items()]


# -- from failing rows to quarantine reasons ------------------------------------------------------------


@dataclass
class Outcome:
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # key, source_id, reason, details (list of {field, value, check})
    failed_per_check: dict[str, int]
    suite: str = ""
    checked: int = 0  # rows checked
    failed_rows: int = 0  # rows that failed (more than ``len(quarantined)`` when an id repeats)
    run: SuiteRun | None = None

    @property
    def failure_rate(self) -> float:
        return self.failed_rows / self.checked if self.checked else 0.0


def _plain(value: Any) -> Any:
    if value is None or (not isinstance(value, str | list | dict) and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    return value


SHOWN_CHARACTERS = 80  # of a long value in a reason: enough to find the row, not a copy of a pasted document


def _text(value: Any) -> str:
    """``repr`` of a value, cut short when it is long (the details keep it whole)."""
    if isinstance(value, str) and len(value) > SHOWN_CHARACTERS:
        return f"{value[:SHOWN_CHARACTERS]!r}… ({len(value)} characters)"
    return repr(value)


def _shown(check: Check, value: Any) -> str:
    """A failing value as the user wrote it: durations in minutes, empty as (empty)."""
    value = _plain(value)
    if value is None:
        return "(empty)"
    if check.config["meta"].get("unit") == "minutes":
        return f"{value / 60:g}"
    return _text(value)


def _where(record: Mapping[str, Any]) -> str:
    if record.get("source_file") is None or pd.isna(record.get("source_row")):
        return ""
    return f" ({record['source_file']} row {record['source_row']})"


def quarantine(
    frame: pd.DataFrame,
    run: SuiteRun,
    problems: Mapping[tuple[str, Any], str] | None = None,
    issues: pd.DataFrame | None = None,
) -> Outcome:
    """Split ``frame`` (with ``key`` and ``source_id``) by a suite run into valid rows and quarantined keys.

    ``problems``: (column, value) → the reason to give instead of an in-set check's sentence, e.g. why a
    customer is unusable. ``issues``: problems the connector found while reading (ISSUE_COLUMNS)."""
    problems = problems or {}
    frame = frame.reset_index(drop=True)
    reasons: dict[str, list[str]] = defaultdict(list)
    details: dict[str, list[dict[str, Any]]] = defaultdict(list)
    parse_fields: set[tuple[str, str]] = set()
    for issue in (issues if issues is not None else pd.DataFrame()).to_dict("records"):  # few rows
        where = f"{issue['source_file']} row {issue['source_row']}"
        reasons[issue["key"]].append(f"{issue['problem']}: {_text(issue['value'])} ({where})")
        details[issue["key"]].append({"field": issue["field"], "value": issue["value"], "check": "parse"})
        parse_fields.add((issue["key"], issue["field"]))

    failed_per_check: dict[str, int] = defaultdict(int)
    rows_of_key: dict[str, list[Any]] = {}
    for check, rows in zip(run.suite.checks, run.failed, strict=True):
        if not len(rows):
            continue
        failed_per_check[check.says] += len(rows)
        shown_column = check.field if check.field in frame else check.column
        records = frame.iloc[rows]
        for record in records.to_dict("records"):  # failing rows only: few
            key, value = record["key"], record.get(shown_column)
            if (key, check.field) in parse_fields:  # already explained by the parse problem
                continue
            if check.type == UNIQUE:  # a repeated id: one reason naming the id's field and every row it is on
                value = record["source_id"]
                if not rows_of_key and "source_row" in frame:
                    rows_of_key = frame.groupby("key")["source_row"].agg(list).to_dict()
                where = (
                    f" ({record['source_file']} rows {' and '.join(map(str, rows_of_key[key]))})"
                    if key in rows_of_key and record.get("source_file") is not None
                    else ""
                )
                reasons[key].append(f"{check.says}: {check.field}={_text(record['source_id'])}{where}")
            else:
                says = problems.get((check.column, value), check.says) if check.set_parameter else check.says
                reasons[key].append(f"{says}: {check.field}={_shown(check, value)}{_where(record)}")
            details[key].append({"field": check.field, "value": _plain(value), "check": check.type})

    bad = frame["key"].isin(reasons.keys()).to_numpy()
    first = frame.loc[bad].drop_duplicates("key")
    quarantined = pd.DataFrame({
        "key": first["key"].to_numpy(),
        "source_id": first["source_id"].to_numpy(),
        "reason": ["; ".join(dict.fromkeys(reasons[k])) for k in first["key"]],
        "details": [details[k] for k in first["key"]],
    })  # fmt: skip
    return Outcome(valid=frame.loc[~bad], quarantined=quarantined, failed_per_check=dict(failed_per_check),
                   suite=run.suite.name, checked=run.rows, failed_rows=int(bad.sum()), run=run)  # fmt: skip


def billing_window(period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The UTC instants a period's work can start in, whatever the customer's timezone."""
    start = pd.Timestamp(f"{period}-01", tz="UTC")
    return start - WINDOW_SLACK[0], start + pd.offsets.MonthBegin(1) + WINDOW_SLACK[1]


def _utc(values: pd.Series) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values
    return pd.to_datetime(values, utc=True, errors="coerce")


def _start_of_local_day(started: pd.Series, customers: pd.Series, zones: Mapping[str, str]) -> pd.Series:
    """The first instant of each start's day in its customer's timezone (a customer without one keeps its start)."""
    day_start = started.copy()
    zone_of_row = customers.astype(object).map(zones)
    for zone, rows in zone_of_row.groupby(zone_of_row).groups.items():
        local_day = started.loc[rows].dt.tz_convert(str(zone)).dt.tz_localize(None).dt.normalize()
        # A midnight that a DST change skips or repeats: the day begins at the next or the first one.
        day_start.loc[rows] = local_day.dt.tz_localize(str(zone), nonexistent="shift_forward",
                                                       ambiguous=np.ones(len(rows), dtype=bool)).dt.tz_convert("UTC")
    return day_start


# -- the entities -----------------------------------------------------------------------------------


def validate_worklogs(
    worklogs: pd.DataFrame,
    issues: pd.DataFrame,
    known_customers: Sequence[str],
    customer_problems: dict[str, str],
    known_services: Sequence[str],
    known_tickets: Sequence[str],
    now: datetime,
    period: str | None = None,
    ticket_problems: dict[str, str] | None = None,
    day_zones: Mapping[str, str] | None = None,
) -> Outcome:
    """Split work logs into valid rows and quarantined ones, each with every reason it failed.

    ``period`` (default: the rows' own ``period``) sets the billing window the start must fall in.
    ``day_zones``: for a source that records only the day of the work, each customer's timezone; the suite then
    judges the start of that day there (work logged today is not in the future, whatever time it is)."""
    frame = worklogs.reset_index(drop=True)
    period = period or (str(frame["period"].iloc[0]) if len(frame) and "period" in frame else None)
    start, end = billing_window(period) if period else (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp(now))
    suite = load_suite("worklogs")
    started = _utc(frame["started_at"])
    checked = frame.assign(started_at=started if day_zones is None else
                           _start_of_local_day(started, frame["customer_id"], day_zones))  # fmt: skip
    run = run_suite(suite, checked, {
        "known_customers": known_customers, "known_services": known_services, "known_tickets": known_tickets,
        "now": pd.Timestamp(now), "window_start": start, "window_end": end,
    }) if len(frame) else SuiteRun(suite, 0, [np.array([], dtype=np.int64)] * len(suite.checks))  # fmt: skip
    problems = {("customer_id", c): p for c, p in customer_problems.items()}
    problems |= {("ticket_id", t): p for t, p in (ticket_problems or {}).items()}
    return quarantine(frame, run, problems, issues)


def _entity_outcome(name: str, frame: pd.DataFrame, parameters: Mapping[str, Any], **kwargs: Any) -> Outcome:
    suite = load_suite(name)
    if not len(frame):
        return quarantine(frame, SuiteRun(suite, 0, [np.array([], dtype=np.int64)] * len(suite.checks)))
    return quarantine(frame, run_suite(suite, frame, parameters), **kwargs)


def validate_customers(customers: Sequence[Customer] | pd.DataFrame) -> Outcome:
    """Customers: unique id, a name, a currency we bill in (ISO 4217), a known IANA timezone."""
    frame = customers if isinstance(customers, pd.DataFrame) else pd.DataFrame(
        [c.model_dump() for c in customers], columns=list(Customer.model_fields))  # fmt: skip
    frame = frame.assign(key=frame["customer_id"], source_id=frame["customer_id"])
    return _entity_outcome("customers", frame, {"known_currencies": sorted(CURRENCY_EXPONENTS),
                                                "known_timezones": sorted(zoneinfo.available_timezones())})  # fmt: skip


def validate_tickets(tickets: pd.DataFrame, known_customers: Collection[str], now: datetime) -> Outcome:
    """Tickets: unique id, a known customer, created and resolved not in the future."""
    frame = tickets.reset_index(drop=True).assign(key=tickets["ticket_id"].to_numpy(),
                                                  source_id=tickets["ticket_id"].to_numpy())  # fmt: skip
    if "source_file" not in frame:  # the file-drop reader numbers rows but leaves the file name to us
        frame["source_file"] = "tickets" if "source_row" in frame else None
    for column in ("created_at", "resolved_at"):
        frame[column] = (
            _utc(frame[column])
            if column in frame
            else pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
        )
    return _entity_outcome("tickets", frame, {"known_customers": list(known_customers), "now": pd.Timestamp(now)})


def validate_usage(
    usage: pd.DataFrame,
    known_customers: Sequence[str],
    known_metrics: Sequence[str],
    period: str,
    now: datetime,
    customer_problems: dict[str, str] | None = None,
) -> Outcome:
    """Usage records: unique id, known customer and metric, a non-negative decimal quantity, a date inside
    the billing period and not in the future."""
    frame = usage.reset_index(drop=True)
    text = frame["quantity"].map(lambda v: None if _plain(v) is None or str(v).strip() == "" else str(v).strip())
    day = frame["occurred_on"].map(lambda v: None if _plain(v) is None else str(_plain(v))[:10])
    occurred = pd.to_datetime(day, format="%Y-%m-%d", errors="coerce", utc=True)
    occurred = occurred.where(day.str.fullmatch(r"\d{4}-\d{2}-\d{2}").fillna(False).astype(bool))
    start = pd.Timestamp(f"{period}-01", tz="UTC")
    frame = frame.assign(quantity=text.astype(object), occurred_date=occurred)
    problems = {("customer_id", c): p for c, p in (customer_problems or {}).items()}
    return _entity_outcome("usage", frame, {
        "known_customers": list(known_customers), "known_metrics": list(known_metrics),
        "now": pd.Timestamp(now), "window_start": start, "window_end": start + pd.offsets.MonthBegin(1),
    }, problems=problems)  # fmt: skip


@dataclass(frozen=True)
class DraftProblem:
    key: str
    customer_id: str
    reason: str


def validate_drafts(
    drafts: Sequence[InvoiceDraft], mapped_customers: Collection[str] | None = None
) -> tuple[list[DraftProblem], Outcome]:
    """``validate_draft_book`` for drafts one by one."""
    return validate_draft_book(book_of(drafts), mapped_customers)


def validate_draft_book(
    book: DraftBook, mapped_customers: Collection[str] | None = None
) -> tuple[list[DraftProblem], Outcome]:
    """Invoice drafts before posting: total = sum of lines, a currency we bill in, the customer mapped to the
    ERP (``customer_erp_ref``, or in ``mapped_customers``; ``None``: the ERP maps any customer itself), and
    no zero or negative total unless a credit note (every line of it a ``credit`` line). By column: what a
    reader adds up (each line's quantity × unit price, rounded by the currency) per draft, by one grouping."""
    headers, lines = book.headers, book.lines
    quantity = lines["quantity_centi"].to_numpy(dtype="int64") * lines["unit_price_minor"].to_numpy(dtype="int64")
    shown = np.zeros(len(lines), dtype="int64")
    modes = lines["draft_key"].map(headers.set_index("key")["money_rounding"]).to_numpy(dtype=object)
    for mode in set(modes.tolist()):  # one or two roundings
        where = modes == mode
        shown[where] = div_round(quantity[where], 100, Rounding(mode))
    per_draft = pd.DataFrame({"key": lines["draft_key"].to_numpy(dtype=object), "shown": shown,
                              "credit": (lines["line_kind"] == "credit").to_numpy(dtype=bool),
                              "drawn": (lines["drawn_centi"].fillna(0).to_numpy(dtype="int64") > 0)})  # fmt: skip
    sums = per_draft.groupby("key").agg(shown=("shown", "sum"), credit=("credit", "all"), drawn=("drawn", "any"))
    sums = sums.reindex(headers["key"])
    total = headers["total_minor"].to_numpy(dtype="int64")
    credit = sums["credit"].fillna(False).to_numpy(dtype=bool) & (headers["line_count"].to_numpy() > 0)
    drawn_only = (total == 0) & sums["drawn"].fillna(False).to_numpy(dtype=bool)  # prepaid hours, nothing due: due
    frame = pd.DataFrame({
        "key": headers["key"].to_numpy(dtype=object),  # integer money columns: GX compares int64 by column
        "source_id": headers["key"].to_numpy(dtype=object),
        "customer_id": headers["customer_id"].to_numpy(dtype=object),
        "currency": headers["currency"].to_numpy(dtype=object),
        "total_minor": total,
        "lines_minor": sums["shown"].fillna(0).to_numpy(dtype="int64"),
        "amount_due_minor": np.where(drawn_only, 1, np.where(credit, -total, total)).astype("int64"),
    })  # fmt: skip
    mapped = set(frame["customer_id"]) if mapped_customers is None else set(mapped_customers)
    mapped |= set(headers.loc[headers["customer_erp_ref"].map(bool, na_action="ignore").fillna(False).astype(bool),
                              "customer_id"])  # fmt: skip
    outcome = _entity_outcome("drafts", frame, {"known_currencies": sorted(CURRENCY_EXPONENTS),
                                                "mapped_customers": sorted(mapped)})  # fmt: skip
    customer_of = dict(zip(frame["key"], frame["customer_id"], strict=True))
    problems = [
        DraftProblem(k, customer_of[k], r)
        for k, r in zip(outcome.quarantined["key"], outcome.quarantined["reason"], strict=True)
    ]
    return problems, outcome


# -- reports -------------------------------------------------------------------------------------------


@_gx_one_at_a_time
def write_data_docs(outcomes: Sequence[Outcome], folder: Path) -> Path:
    """GX Data Docs (HTML) of these suite runs under ``folder``; the path of their index page."""

    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    folder.mkdir(parents=True, exist_ok=True)
    context = _context()
    site = f"run-{folder.name}"
    context.add_data_docs_site(site_name=site, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })  # fmt: skip
    run_id = RunIdentifier(run_name=folder.name, run_time=datetime.now(UTC))
    keys = []
    for outcome in outcomes:
        if outcome.run is None or outcome.run.result is None:
            continue
        key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=outcome.suite),
                                         run_id=run_id, batch_identifier=outcome.suite)  # fmt: skip
        outcome.run.result.meta["run_id"] = run_id  # so the page names the run instead of "__none__"
        context.validation_results_store.set(key, outcome.run.result)
        keys.append(key)
    try:
        context.build_data_docs(site_names=[site])
    finally:  # the shared context keeps nothing of this run: the next run's site shows only its own results
        for key in keys:
            context.validation_results_store.remove_key(key)
        context.delete_data_docs_site(site)
    return folder / "index.html"


def summary_table(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Rows checked and failed per suite and expectation, for the Prefect artifact."""
    table = []
    for outcome in outcomes:
        table.append({"suite": outcome.suite, "expectation": "(rows)", "rows_checked": outcome.checked,
                      "rows_failed": outcome.failed_rows, "failure_rate": f"{outcome.failure_rate:.1%}"})  # fmt: skip
        table += [{"suite": outcome.suite, "expectation": says, "rows_checked": outcome.checked, "rows_failed": n,
                   "failure_rate": f"{n / outcome.checked:.1%}" if outcome.checked else "-"}
                  for says, n in outcome.failed_per_check.items()]  # fmt: skip
    return table


def summary_markdown(outcomes: Sequence[Outcome], docs: Path | None) -> str:
    lines = ["## Data quality", ""]
    if docs is not None:
        lines += [f"Data Docs: `{docs}`", ""]
    lines += ["| suite | rows checked | rows failed | rate |", "|---|---:|---:|---:|"]
    lines += [f"| {o.suite} | {o.checked} | {o.failed_rows} | {o.failure_rate:.1%} |" for o in outcomes]
    for outcome in outcomes:
        if outcome.failed_per_check:
            lines += ["", f"### {outcome.suite}: failed per expectation", ""]
            lines += [f"- {says}: {n}" for says, n in outcome.failed_per_check.items()]
            lines += ["", "Examples:", ""]
            lines += [
                f"- `{s}`: {r}"
                for s, r in zip(
                    outcome.quarantined["source_id"][:EXAMPLES], outcome.quarantined["reason"][:EXAMPLES], strict=True
                )
            ]
    return "\n".join(lines) + "\n"


def gate(
    outcomes: Sequence[Outcome],
    max_failure_rate: float,
    docs: Path | None,
    min_rows: int = 1,
    period_rows: Mapping[str, int] | None = None,
) -> None:
    """Refuse to go on when a suite's failing rows exceed the allowed share of its rows (for suites of at
    least ``min_rows`` rows: in a handful of rows a share says little).

    ``period_rows``: per suite, how many rows the whole period has (billed by earlier runs or read by this
    one). A rerun checks only what is left to do, yet is judged against the whole period, so a rerun of a
    billed period, a crashed run's recovery or late work never stops at rows that were fine before."""
    period_rows = period_rows or {}

    def rows(o: Outcome) -> int:
        return max(o.checked, period_rows.get(o.suite, 0))

    over = [o for o in outcomes if rows(o) >= min_rows and o.failed_rows / max(rows(o), 1) > max_failure_rate]
    if not over:
        return
    what = "; ".join(f"suite {o.suite!r}: {o.failed_rows} of {rows(o)} rows failed ({o.failed_rows / rows(o):.1%})"
                     for o in over)  # fmt: skip
    where = f"Data Docs: {docs}; " if docs is not None else ""
    raise QualityGateError(
        f"data quality: {what}, more than the {max_failure_rate:.0%} allowed. The failing rows are quarantined "
        f"with their reasons, nothing was priced. {where}every rejected row and its reason: "
        f"`ticket-to-invoice price --json` (quarantined), or the ledger's quarantined work items.",
        hint="fix the rows at the source and run again (they are retried), or raise "
        "TICKET_TO_INVOICE_MAX_FAILURE_RATE if this share of bad rows is expected",
    )
