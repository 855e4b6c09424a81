"""File-drop source: a folder of CSV or JSON exports from a helpdesk.

The folder holds ``customers``, ``tickets`` and ``worklogs``, each as ``.csv`` (UTF-8, header row) or
``.json`` (an array of objects, or JSON Lines as ``.jsonl``), and optionally ``manifest.json`` with
``{"instance": ..., "period": "YYYY-MM"}``. The columns are documented in README.md ("The file-drop
export"). A file that cannot be read at all is an ``InputError`` naming the file, row and field; a row
with a bad value is kept and reported in ``WorkBatch.issues`` so the validate stage quarantines it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from billing.errors import ConfigurationError, InputError
from billing.events import EXPORT_READY, BillingEvent
from billing.ledger.schema import WorkItem
from billing.models import (
    ISSUE_COLUMNS,
    PERIOD_RE,
    USAGE_COLUMNS,
    WORKLOG_COLUMNS,
    Customer,
    WorkBatch,
    content_hash,
    empty_usage,
    hex_digests,
    previous_month,
)
from connectors.polling import DEFAULT_LOOKBACK, Changes, parse_utc, utc_iso

SYSTEM = "files"


@dataclass(frozen=True)
class EntitySchema:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


CUSTOMERS = EntitySchema("customers", ("customer_id", "name", "currency"), ("timezone", "erp_ref", "country"))
TICKETS = EntitySchema(
    "tickets",
    ("ticket_id", "customer_id"),
    ("subject", "ticket_type", "priority", "status", "created_at", "resolved_at"),
)
WORKLOGS = EntitySchema(
    "worklogs",
    ("worklog_id", "customer_id", "service_type", "started_at", "duration_minutes"),
    ("ticket_id", "user", "billable", "note"),
)
USAGE = EntitySchema("usage", ("record_id", "customer_id", "metric", "quantity", "occurred_on"), ("subscription_id",))
TRUE_WORDS = {"true", "yes", "y", "1", ""}  # an empty "billable" means billable
FALSE_WORDS = {"false", "no", "n", "0"}
# The longest id the ledger keeps (billing/ledger/schema.py: work_items.source_id, customer_id, ticket_id).
LEDGER_LENGTHS = {
    "worklog_id": WorkItem.__table__.c.source_id.type.length,
    "customer_id": WorkItem.__table__.c.customer_id.type.length,
    "ticket_id": WorkItem.__table__.c.ticket_id.type.length,
}
HEADER_CHARS = 1_000_000  # a header row is read from this many characters of its file at most
MAX_MINUTES = 10**9  # beyond any real duration; keeps seconds well inside int64


def _first_non_utf8_line(path: Path) -> tuple[int, int]:
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return number, line[exc.start]
    return 0, 0


def _find(folder: Path, entity: EntitySchema) -> Path:
    candidates = [folder / f"{entity.name}{ext}" for ext in (".csv", ".json", ".jsonl")]
    found = [p for p in candidates if p.exists()]
    if not found:
        raise InputError(folder, f"no {entity.name} file: expected one of " + ", ".join(p.name for p in candidates))
    if len(found) > 1:
        raise InputError(folder, f"both {found[0].name} and {found[1].name} exist: keep one")
    return found[0]


def _read_json_records(path: Path, text: str, entity: EntitySchema) -> tuple[list[dict[str, Any]], list[int]]:
    """The records, and the row each is on: its line in JSON Lines, its place in the array in JSON."""
    if path.suffix == ".jsonl":
        records, lines = [], []
        # Only "\n" ends a record: str.splitlines() would also split inside a string at U+2028, U+0085, \x1c ...,
        # which JSON writes unescaped (ensure_ascii=False), and refuse the whole file.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", row=number) from None
                lines.append(number)
        data: Any = records
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        if isinstance(data, dict) and isinstance(data.get(entity.name), list):
            data = data[entity.name]
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON array of {entity.name} objects, found {type(data).__name__}")
    rows = lines if path.suffix == ".jsonl" else list(range(1, len(data) + 1))
    for number, item in zip(rows, data, strict=True):
        if not isinstance(item, dict):
            raise InputError(path, f"expected an object, found {type(item).__name__}", row=number)
    return data, rows


def _refuse_rows_with_extra_values(path: Path, text: str, width: int) -> None:
    """A row longer than the header is refused when the extra fields hold data (it would be lost);
    empty extra fields, as from a trailing comma, are harmless."""
    for number, row in enumerate(csv.reader(StringIO(text, newline="")), start=1):
        if len(row) > width and any(value.strip() for value in row[width:]):
            raise InputError(path, f"{len(row)} values where the header names {width} columns", row=number)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _text_of(path: Path, entity: EntitySchema) -> str:
    """The file's text; an empty file or one that is not UTF-8 is refused."""
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(path, "the file is empty", hint=f"export the {entity.name} again")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        line, byte = _first_non_utf8_line(path)
        raise InputError(path, f"not UTF-8 text (byte 0x{byte:02x}); save the export as UTF-8", line=line) from None


def _csv_header(path: Path, text: str) -> list[str]:
    """The CSV's column names; a malformed header or a column named twice is refused."""
    try:
        # The first record, from the file's beginning only: StringIO copies the text it is given.
        header = [c.strip() for c in next(csv.reader(StringIO(text[:HEADER_CHARS], newline="")), [])]
    except csv.Error as exc:
        raise InputError(path, f"not a well-formed CSV file: {exc}") from None
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise InputError(path, f"column(s) {', '.join(repeated)} appear more than once in the header", line=1)
    return header


def _require_columns(path: Path, entity: EntitySchema, columns: Sequence[str]) -> None:
    missing = [c for c in entity.required if c not in columns]
    if missing:
        raise InputError(
            path,
            f"missing column(s) {', '.join(missing)}",
            hint=f"{entity.name} needs the columns: {', '.join(entity.required)} "
            f"(optional: {', '.join(entity.optional)})",
        )


def check_table(path: Path, entity: EntitySchema) -> None:
    """What ``read_table`` refuses that a glance finds, without parsing a CSV's rows (a large month's are read
    once, by the run): an empty file, not UTF-8, a header without the required columns or with one twice. A
    JSON file is read whole. A malformed row further down still stops the run, with the same message."""
    if path.suffix != ".csv":
        read_table(path, entity)
        return
    text = _text_of(path, entity)
    _require_columns(path, entity, _csv_header(path, text))


# skip_blank_lines=False: pandas would skip a blank line, and every row after it would be reported one row too
# early; blank rows are left out after numbering. index_col=False: a trailing comma on every row must not turn
# the first column into the index.
CSV_OPTIONS: dict[str, Any] = {"dtype": str, "keep_default_na": False, "skipinitialspace": True,
                               "index_col": False, "skip_blank_lines": False}  # fmt: skip


def _read_csv(text: str) -> pd.DataFrame | None:
    """The rows as pandas reads them, or None when pandas finds a row longer than the header (or anything
    else amiss): then ``_read_csv_with_extra_fields`` reads the file as it may be read, or says why not.
    A well-formed export, however large, is parsed once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a longer first row: columns would shift
            return pd.read_csv(StringIO(text), **CSV_OPTIONS)
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError):
        return None


def _read_csv_with_extra_fields(path: Path, text: str, header: list[str]) -> pd.DataFrame:
    """A CSV with rows longer than its header: their extra fields must be empty (a trailing comma), else the
    file is refused naming the row (the values would be lost)."""
    try:
        _refuse_rows_with_extra_values(path, text, len(header))
    except csv.Error as exc:
        raise InputError(path, f"not a well-formed CSV file: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # extra empty fields: checked above
            # usecols: a trailing comma on some rows only must not stop the file either.
            return pd.read_csv(StringIO(text), usecols=range(len(header)), **CSV_OPTIONS)
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(path, f"not a well-formed CSV file: {exc}".replace("\n", " ")) from None


def read_table(path: Path, entity: EntitySchema) -> tuple[pd.DataFrame, list[str]]:
    """The file as a table of strings, with a ``source_row`` column; and notes about ignored columns."""
    text = _text_of(path, entity)
    if path.suffix == ".csv":
        header = _csv_header(path, text)
        frame = _read_csv(text)
        if frame is None:
            frame = _read_csv_with_extra_fields(path, text, header)
        frame.columns = [str(c).strip() for c in frame.columns]
        rows = np.arange(2, 2 + len(frame))  # spreadsheet numbering: the header is row 1
    else:
        records, json_rows = _read_json_records(path, text, entity)
        rows = np.array(json_rows, dtype=np.int64)
        # Every value as text, as from a CSV, for one coercion path; null and a missing key are both empty.
        # ``[]`` is a table with no rows (a helpdesk with nothing this month), as a CSV of a header only is.
        columns = dict.fromkeys(key for record in records for key in record) if records else entity.columns
        frame = pd.DataFrame({column: [_as_text(record.get(column)) for record in records] for column in columns})
    if frame.empty and len(frame.columns) == 0:
        raise InputError(path, "the file has no rows")

    _require_columns(path, entity, list(frame.columns))
    extra = [c for c in frame.columns if c not in entity.columns]
    notes = [f"{path.name}: ignored unknown column(s) {', '.join(extra)}"] if extra else []
    for column in entity.optional:
        if column not in frame.columns:
            frame[column] = ""
    frame = frame[list(entity.columns)].apply(lambda col: col.fillna("").str.strip())
    frame["source_row"] = rows
    # A row without a single value (a blank line, ",,,,", {}) is no row: nothing to bill or to quarantine.
    blank = (frame[list(entity.columns)] == "").all(axis=1)
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
    return frame, notes


def _issues(mask: pd.Series, frame: pd.DataFrame, field: str, problem: str, path: Path) -> pd.DataFrame:
    bad = frame.loc[mask]
    return pd.DataFrame({
        "key": bad["key"], "source_file": path.name, "source_row": bad["source_row"],
        "field": field, "value": bad[field], "problem": problem,
    })  # fmt: skip


# A start with a time and a zone: Z or an offset after the time (a date alone, or a local time, names no instant).
ZONED = r"(?:T|\s)\d{2}(?::?\d{2}){0,2}(?:[.,]\d+)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)"
YEARS = range(1970, 2200)  # beyond, a timestamp is a typo (and past 2262 it overflows pandas' nanoseconds)


def _timestamps(text: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """The instants (UTC, NaT where not usable) and which values are unreadable, without a zone, or implausible."""
    parsed = pd.to_datetime(text.replace("", None), utc=True, errors="coerce", format="ISO8601")
    unreadable = parsed.isna() & (text != "")
    no_zone = parsed.notna() & ~text.str.fullmatch(rf".*\d{ZONED}")
    years = parsed.dt.year
    implausible = parsed.notna() & ~no_zone & ((years < YEARS.start) | (years >= YEARS.stop))
    usable = parsed.where(~(no_zone | implausible))
    return usable.astype("datetime64[ns, UTC]"), unreadable, no_zone, implausible


def _local_period(started_at: pd.Series, timezones: pd.Series) -> pd.Series:
    """YYYY-MM of each timestamp in its own timezone (vectorized per distinct zone)."""
    period = pd.Series(pd.NA, index=started_at.index, dtype="object")
    for zone, index in timezones.groupby(timezones).groups.items():
        local = started_at.loc[index].dt.tz_convert(str(zone))
        period.loc[index] = local.dt.strftime("%Y-%m")
    return period


class FileDropSource:
    """Reads a file-drop export folder into a ``WorkBatch``."""

    system = SYSTEM

    def __init__(self, folder: Path | str, instance: str | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigurationError(
                f"input folder {self.folder} does not exist",
                hint="pass --input DIR with a folder of customers, tickets and worklogs files",
            )
        self.manifest = self._read_manifest()
        self.instance = instance or self.manifest.get("instance") or self.folder.name

    def _read_manifest(self) -> dict[str, Any]:
        path = self.folder / "manifest.json"
        if not path.exists():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise InputError(path, "expected a JSON object")
        return manifest

    def default_period(self) -> str:
        """The manifest's period, else last calendar month (what a monthly schedule bills)."""
        period = self.manifest.get("period")
        if not period:
            return previous_month()
        if not isinstance(period, str) or not PERIOD_RE.match(period):
            raise InputError(self.folder / "manifest.json", f"period {period!r} is not YYYY-MM", field="period")
        return period

    def period_of(self, moment: datetime) -> str:
        """An export holds one period: its manifest's; without one, the month of ``moment``."""
        return self.default_period() if self.manifest.get("period") else f"{moment:%Y-%m}"

    def check(self) -> None:
        """Look at every file (``check_table``), so a missing, empty, undecodable or wrongly headed one is
        reported before a run starts."""
        for entity in (CUSTOMERS, TICKETS, WORKLOGS):
            check_table(_find(self.folder, entity), entity)
        if self._has_usage():
            check_table(_find(self.folder, USAGE), USAGE)

    def _has_usage(self) -> bool:
        return any((self.folder / f"usage{ext}").exists() for ext in (".csv", ".json", ".jsonl"))

    def extract(self, period: str | None = None) -> WorkBatch:
        period = period or self.default_period()
        notes: list[str] = []
        customers, customer_problems = self._customers(notes)
        tickets_path = _find(self.folder, TICKETS)
        tickets, more = read_table(tickets_path, TICKETS)
        notes += more
        tickets["source_file"] = tickets_path.name  # so a ticket's reason names its file
        for column in ("created_at", "resolved_at"):
            parsed = pd.to_datetime(tickets[column].replace("", None), utc=True, errors="coerce", format="ISO8601")
            years = parsed.dt.year  # year 9999 at -14:00 is past any datetime: it must not reach a timezone
            tickets[column] = parsed.where((years >= YEARS.start) & (years < YEARS.stop)).astype("datetime64[ns, UTC]")
        worklogs, issues, outside = self._worklogs(period, customers, notes)
        usage, usage_issues = self._usage(period, notes)
        return WorkBatch(
            source_system=SYSTEM, instance=self.instance, period=period, customers=customers,
            tickets=tickets, worklogs=worklogs, issues=pd.concat([issues, usage_issues], ignore_index=True),
            customer_problems=customer_problems, notes=notes, outside_period=outside, usage=usage,
        )  # fmt: skip

    def _usage(self, period: str, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The optional usage file (subscription quantities a billing-support system exports), this period's
        rows; a quantity that is no number (up to 3 decimals) or a day that is no date is an issue."""
        if not self._has_usage():
            return empty_usage(), pd.DataFrame(columns=list(ISSUE_COLUMNS))
        path = _find(self.folder, USAGE)
        frame, more = read_table(path, USAGE)
        notes += more
        ids = frame["record_id"]
        prefix = f"{SYSTEM}:{self.instance}:usage:"
        frame["key"] = np.where(ids != "", prefix + ids, f"{prefix}@{path.name}:" + frame["source_row"].astype(str))
        day = pd.to_datetime(frame["occurred_on"].replace("", None), errors="coerce", format="ISO8601")
        quantity = frame["quantity"].str.strip()
        problems = [
            _issues(ids == "", frame, "record_id", "record_id is empty", path),
            _issues(day.isna(), frame, "occurred_on", "occurred_on is not a date (YYYY-MM-DD)", path),
            _issues(~quantity.str.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,3})?"), frame, "quantity",
                    "quantity is not a number of units (at most 3 decimals, not negative)", path),
        ]  # fmt: skip
        in_period = (day.dt.strftime("%Y-%m") == period) | day.isna()
        frame, day = frame.loc[in_period], day[in_period]
        usage = pd.DataFrame({
            "key": frame["key"], "source_system": SYSTEM, "instance": self.instance, "object_type": "usage",
            "source_id": frame["record_id"], "customer_id": frame["customer_id"].replace("", None),
            "metric": frame["metric"].replace("", None), "quantity": frame["quantity"].str.strip(),
            "occurred_on": day.dt.date, "subscription_id": frame["subscription_id"].replace("", None),
            "period": period, "source_file": path.name, "source_row": frame["source_row"],
        })  # fmt: skip
        usage["content_hash"] = hex_digests(
            pd.util.hash_pandas_object(
                usage[["source_id", "customer_id", "metric", "quantity", "occurred_on"]].astype(str), index=False
            )
        )
        issues = pd.concat(problems, ignore_index=True)
        issues = issues[issues["key"].isin(usage["key"])].reset_index(drop=True)[list(ISSUE_COLUMNS)]
        return usage[list(USAGE_COLUMNS)].reset_index(drop=True), issues

    def _customers(self, notes: list[str]) -> tuple[list[Customer], dict[str, str]]:
        path = _find(self.folder, CUSTOMERS)
        frame, more = read_table(path, CUSTOMERS)
        notes += more
        customers, problems = [], {}
        for row in frame.to_dict("records"):  # tens of customers: a loop is clear and cheap here
            values = {k: v for k, v in row.items() if k != "source_row" and v != ""}
            values.setdefault("timezone", "UTC")
            try:
                customers.append(Customer(**values))
            except ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(p) for p in error["loc"])
                problems[row["customer_id"]] = (
                    f"customer {row['customer_id']!r} is unusable: {field}: "
                    f"{error['msg']} ({path.name} row {row['source_row']})"
                )
        return customers, problems

    def _worklogs(
        self, period: str, customers: list[Customer], notes: list[str]
    ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
        path = _find(self.folder, WORKLOGS)
        frame, more = read_table(path, WORKLOGS)
        notes += more
        ids = frame["worklog_id"]
        # What the ledger cannot hold (PostgreSQL refuses a value longer than its column, and the whole run
        # with it) is an issue of the row, and left out of the row.
        too_long = {column: frame[column].str.len() > LEDGER_LENGTHS[column] for column in LEDGER_LENGTHS}
        # A row without a usable id still gets a key of its own (file and row), so it is tracked and quarantined.
        frame["key"] = np.where(
            (ids != "") & ~too_long["worklog_id"],
            f"{SYSTEM}:{self.instance}:worklog:" + ids,
            f"{SYSTEM}:{self.instance}:worklog:@{path.name}:" + frame["source_row"].astype(str),
        )
        problems = [_issues(ids == "", frame, "worklog_id", "worklog_id is empty", path)]
        for column, mask in too_long.items():
            problems.append(_issues(mask, frame, column, f"{column} is longer than {LEDGER_LENGTHS[column]} "
                                                         "characters", path))  # fmt: skip
            frame.loc[mask, column] = ""

        started, unreadable, no_zone, implausible = _timestamps(frame["started_at"])
        problems += [
            _issues(unreadable, frame, "started_at", "started_at is not an ISO 8601 timestamp", path),
            _issues(no_zone, frame, "started_at",
                    "started_at has no timezone (write Z or an offset, e.g. 2026-10-05T14:30:00+02:00)", path),
            _issues(implausible, frame, "started_at", f"started_at is not in the years {YEARS.start}–{YEARS.stop - 1}",
                    path),
        ]  # fmt: skip
        minutes = pd.to_numeric(frame["duration_minutes"].replace("", None), errors="coerce")
        problems.append(
            _issues(
                minutes.isna() & (frame["duration_minutes"] != ""),
                frame,
                "duration_minutes",
                "duration_minutes is not a number of minutes",
                path,
            )
        )
        # inf, 1e300 ...: a number, but no duration; it must not overflow the seconds below.
        absurd = minutes.notna() & ~minutes.abs().lt(MAX_MINUTES)
        problems.append(_issues(absurd, frame, "duration_minutes", "duration_minutes is out of range", path))
        minutes = minutes.mask(absurd)
        billable_text = frame["billable"].str.lower()
        problems.append(
            _issues(
                ~billable_text.isin(TRUE_WORDS | FALSE_WORDS),
                frame,
                "billable",
                "billable is not true or false",
                path,
            )
        )

        zone_of = {c.customer_id: c.timezone for c in customers}
        zones = frame["customer_id"].map(zone_of).fillna("UTC")
        local_period = _local_period(started, zones).fillna(period)  # an unreadable date stays in this run
        in_period = local_period == period
        frame = frame.loc[in_period]
        started, minutes, billable_text = started[in_period], minutes[in_period], billable_text[in_period]

        worklogs = pd.DataFrame({
            "key": frame["key"],
            "source_system": SYSTEM,
            "instance": self.instance,
            "object_type": "worklog",
            "source_id": frame["worklog_id"],
            "ticket_id": frame["ticket_id"].replace("", None),
            # Few distinct values in many rows: categoricals factorize for free downstream.
            "customer_id": frame["customer_id"].replace("", None).astype("category"),
            "user": frame["user"].replace("", None),
            "service_type": frame["service_type"].replace("", None).astype("category"),
            "started_at": started,
            # Whole seconds; durations are not money, and minutes → seconds is exact for real inputs.
            "raw_seconds": np.rint(minutes * 60).astype("Int64"),
            "billable": ~billable_text.isin(FALSE_WORDS),
            "note": frame["note"],
            "period": period,
            "source_file": path.name,
            "source_row": frame["source_row"],
        })  # fmt: skip
        worklogs["content_hash"] = content_hash(worklogs)
        worklogs = worklogs[list(WORKLOG_COLUMNS)].reset_index(drop=True)
        issues = pd.concat(problems, ignore_index=True)
        issues = issues[issues["key"].isin(worklogs["key"])].reset_index(drop=True)[list(ISSUE_COLUMNS)]
        return worklogs, issues, int((~in_period).sum())

    def fingerprint(self, period: str) -> str:
        """A SHA-256 of the export's files (names and bytes), its instance and ``period``: equal only for the
        same data (a file touched but unchanged hashes the same)."""
        digest = hashlib.sha256(f"{SYSTEM}\n{self.instance}\n{period}\n".encode())
        for path in self._export_files():
            digest.update(f"{path.name}\n{path.stat().st_size}\n".encode())
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        return digest.hexdigest()

    # -- changes, for the poller -----------------------------------------------------------------

    def _export_files(self) -> list[Path]:
        """The files an export consists of (a temporary or unrelated file beside them changes nothing)."""
        names = {f"{entity.name}{ext}" for entity in (CUSTOMERS, TICKETS, WORKLOGS, USAGE)
                 for ext in (".csv", ".json", ".jsonl")} | {"manifest.json"}  # fmt: skip
        return sorted(p for p in self.folder.iterdir() if p.name in names and p.is_file())

    def changes_since(
        self,
        cursor: dict[str, Any] | None,
        now: datetime,
        initial_lookback: timedelta = DEFAULT_LOOKBACK,  # a folder has no history: its first look reports it
        settle: timedelta = timedelta(seconds=10),
    ) -> Changes:
        """One ``export.ready`` whenever the export's content fingerprint (names, sizes and modification times of
        its files) differs from the cursor's. A file modified less than ``settle`` ago may still be being
        written: the export is left for the next poll."""
        files = self._export_files()
        since = parse_utc(cursor["since"]) if cursor and cursor.get("since") else None
        if any(datetime.fromtimestamp(p.stat().st_mtime, UTC) > now - settle for p in files):
            return Changes([], dict(cursor or {}), since)
        listing = "\n".join(f"{p.name}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files)
        fingerprint = hashlib.sha256(listing.encode()).hexdigest()[:32]
        events = []
        if files and fingerprint != (cursor or {}).get("fingerprint"):
            events.append(BillingEvent(event=EXPORT_READY, source=SYSTEM, instance=self.instance, payload={
                "path": str(self.folder), "period": self.default_period(), "fingerprint": fingerprint}))  # fmt: skip
        return Changes(events, {"since": utc_iso(now), "fingerprint": fingerprint}, since)
