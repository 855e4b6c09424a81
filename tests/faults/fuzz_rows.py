"""A file-drop export of many good rows and at least 10,000 fuzzed bad ones, with what should become of each.

``write_export(folder, seed, now)`` writes ``customers``, ``tickets``, ``worklogs`` and ``usage`` (each as CSV,
JSON or JSON Lines, chosen by the seed), a ``manifest.json`` and a rules file, and returns an ``Expected``:
every work item's key with its expected outcome (billed, non-billable, or quarantined naming a file, a row and
the fields that are wrong) and the rows that belong to another period. Everything is drawn from one
``random.Random(seed)``: the same seed and the same day give the same export.

Bad rows are of the kinds a real export has: wrong types, empty required fields, unknown customer, service or
ticket, durations negative, zero, huge, non-numeric or with units, timestamps malformed, without timezone, in
the future, ids repeated, unicode junk, very long strings, CSV injection, control characters, quoted
newlines, extra columns, a BOM, numbers with commas, odd booleans. Good rows carry the harmless oddities
(odd but valid booleans and offsets, junk in the free-text columns) so that a false quarantine shows too.

Run it by hand: ``python -m tests.faults.fuzz_rows FOLDER [SEED]``.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO_RULES = ROOT / "rules" / "examples" / "demo.yaml"
INSTANCE = "fuzz"
SERVICES = ["remote_support", "onsite_support", "consulting", "project_work"]
NON_BILLABLE_SERVICE = "internal"
METRICS = ["backup_gb", "m365_seats"]
ZONES = ["UTC", "Europe/Berlin", "Europe/Amsterdam", "America/New_York", "America/Chicago", "Asia/Tokyo",
         "Asia/Kolkata", "Asia/Kathmandu", "Australia/Sydney", "Pacific/Pago_Pago"]  # fmt: skip
REQUIRED = ("worklog_id", "customer_id", "service_type", "started_at", "duration_minutes")
BLANK, CUT = "__blank__", "__cut__"  # markers of a row written as a blank line, and of one cut short
MAX_ID = 200  # the longest work-log id the ledger keeps (work_items.source_id)
LATE_ZONE = "Pacific/Pago_Pago"  # UTC-11: its month ends last, so a start in the future can still be in it

# Text a helpdesk lets people type: harmless in free-text columns, wrong in ids and codes.
INJECTION = ["=cmd|' /C calc'!A0", "=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1:A9)",
             "=1+1", "\t=1+1", "\r=1+1"]  # fmt: skip
UNICODE = ["Zoë Müller", "日本語のメモ", "emoji 🙂🔥", "\u202eRTL override", "zero\u200bwidth", "combining e\u0301",
           "\ufeffbom inside", "nbsp\u00a0here", "line\u2028separator", "para\u2029graph", "next\u0085line",
           "surrogate-free 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ｆｕｌｌｗｉｄｔｈ"]  # fmt: skip
CONTROL = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\n\r") + "\x7f"  # no NUL


@dataclass(frozen=True)
class Bad:
    """A row that must be quarantined: its reason must name the file, the row and each of ``fields``."""

    key: str
    file: str
    row: int
    fields: tuple[str, ...]
    kind: str


@dataclass
class Expected:
    seed: int
    period: str
    formats: dict[str, str]
    good: dict[str, str] = field(default_factory=dict)  # key → "billed" | "non_billable"
    bad: dict[str, Bad] = field(default_factory=dict)
    outside: set[str] = field(default_factory=set)  # keys of rows of another period (not work items here)
    rules: Path | None = None
    kinds: dict[str, int] = field(default_factory=dict)  # bad rows per kind

    def add_bad(self, bad: Bad) -> None:
        self.good.pop(bad.key, None)
        if bad.key in self.bad:  # a second fault on one key (a repeated id): every field counts
            old = self.bad[bad.key]
            bad = Bad(bad.key, bad.file, old.row, tuple(dict.fromkeys(old.fields + bad.fields)), old.kind)
        self.bad[bad.key] = bad
        self.kinds[bad.kind] = self.kinds.get(bad.kind, 0) + 1


def choose_period(now: datetime) -> str:
    """This month (so a start can be in the future and still inside the period) unless it has just begun."""
    if now.day >= 3:
        return f"{now:%Y-%m}"
    first = now.replace(day=1)
    return f"{first - timedelta(days=1):%Y-%m}"


def _month(period: str, zone: str) -> tuple[datetime, datetime]:
    """The period's first and last instant (exclusive) in ``zone``, as UTC datetimes."""
    year, month = map(int, period.split("-"))
    tz = ZoneInfo(zone)
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


class Fuzzer:
    def __init__(self, seed: int, now: datetime, period: str) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.period = period
        self.serial = 0

    def pick(self, values: list[Any]) -> Any:
        return self.rng.choice(values)

    def serial_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial:06d}"

    def junk(self) -> str:
        """Text that is no id, code or number of ours."""
        return self.pick([
            lambda: self.pick(INJECTION),
            lambda: self.pick(UNICODE),
            lambda: "".join(self.rng.choice(CONTROL) for _ in range(self.rng.randint(1, 5))),
            lambda: "x" * self.rng.randint(300, 5_000),
            lambda: "line one\nline two",
            lambda: 'quote " inside, and a comma',
            lambda: "null",
            lambda: "None",
            lambda: "NaN",
            lambda: "\\N",
            lambda: "[]",
        ])()  # fmt: skip

    def free_text(self) -> str:
        """What a technician writes in a note: mostly plain, sometimes anything."""
        if self.rng.random() < 0.9:
            return self.pick(["Checked backup logs", "Replaced toner", "Called user, fixed VPN", "Patched server",
                              "Reset password, see ticket", ""])  # fmt: skip
        return self.junk()

    # -- instants --------------------------------------------------------------------------------------------

    def instant_in_period(self, zone: str) -> datetime:
        start, end = _month(self.period, zone)
        end = min(end, self.now - timedelta(minutes=30))
        seconds = int((end - start).total_seconds())
        return start + timedelta(seconds=self.rng.randrange(max(seconds, 1)))

    def future_instant(self) -> datetime | None:
        """A start after now, still inside the period in the LATE_ZONE customer's month; None if none can be."""
        _, end = _month(self.period, LATE_ZONE)
        low = self.now + timedelta(hours=3)
        if end - low < timedelta(minutes=10):
            return None
        return low + timedelta(seconds=self.rng.randrange(int((end - low).total_seconds()) - 60))

    def instant_outside(self) -> datetime:
        start, end = _month(self.period, "UTC")
        if self.rng.random() < 0.5 or end > self.now - timedelta(days=1):
            return start - timedelta(days=self.rng.randint(2, 400), seconds=self.rng.randrange(86400))
        return end + timedelta(days=self.rng.randint(2, 20))

    def written(self, instant: datetime, zone: str) -> str:
        """An instant as an export writes it: UTC with Z, or the customer's offset, in the forms ISO allows."""
        form = self.rng.random()
        if form < 0.5:
            return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        local = instant.astimezone(ZoneInfo(zone))
        if form < 0.7:
            return local.isoformat(timespec="seconds")
        if form < 0.8:
            return local.strftime("%Y-%m-%dT%H:%M:%S%z")  # +0200
        if form < 0.9:
            return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"  # microseconds
        return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


# -- customers, tickets ---------------------------------------------------------------------------------------


def _customers(fz: Fuzzer, n_good: int) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """Rows, the good customers with their zones, and the ids of bad customers (their work is quarantined)."""
    rows, good, bad = [], {}, []
    for number in range(n_good):
        zone = LATE_ZONE if number == 0 else fz.pick(ZONES)
        cid = f"C{number:03d}"
        rows.append({"customer_id": cid, "name": fz.pick(["Acme GmbH", "Zoë & Söhne", "Globex, Inc.", "=Evil Co"]),
                     "currency": fz.pick(["EUR", "USD"]), "timezone": zone, "erp_ref": "",
                     "country": fz.pick(["DE", "NL", "US", "JP", ""])})  # fmt: skip
        good[cid] = zone
    faults = [("currency", "EURO"), ("currency", "eur"), ("currency", ""), ("timezone", "Mars/Olympus"),
              ("timezone", "CET+1"), ("name", ""), ("name", "   ")]  # fmt: skip
    for number, (column, value) in enumerate(faults):
        cid = f"BADC{number:02d}"
        rows.append({"customer_id": cid, "name": "Broken customer", "currency": "EUR", "timezone": "UTC",
                     "erp_ref": "", "country": "DE"} | {column: value})  # fmt: skip
        bad.append(cid)
    # A repeated customer id: both rows fail, and so does all its work.
    rows += [{"customer_id": "DUPC", "name": n, "currency": "EUR", "timezone": "UTC", "erp_ref": "", "country": "DE"}
             for n in ("Twin one", "Twin two")]  # fmt: skip
    bad.append("DUPC")
    fz.rng.shuffle(rows)
    return rows, good, bad


def _tickets(fz: Fuzzer, customers: dict[str, str], n_good: int) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    rows, good, bad = [], [], []
    period_start, _ = _month(fz.period, "UTC")
    for _ in range(n_good):
        tid = fz.serial_id("T")
        created = period_start - timedelta(days=fz.rng.randint(0, 40), seconds=fz.rng.randrange(86400))
        rows.append({"ticket_id": tid, "customer_id": fz.pick(list(customers)), "subject": fz.free_text(),
                     "ticket_type": fz.pick(["incident", "change", "service_request"]),
                     "priority": fz.pick(["low", "normal", "high"]), "status": fz.pick(["open", "closed"]),
                     "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"), "resolved_at": ""})  # fmt: skip
        if fz.rng.random() < 0.02:  # a date nobody checks the form of: no reason to refuse the ticket, nor to crash
            rows[-1][fz.pick(["created_at", "resolved_at"])] = fz.pick([*MALFORMED_TIMES, "2026-10-05 10:00"])
        good.append(tid)
    future = (fz.now + timedelta(days=fz.rng.randint(1, 300))).strftime("%Y-%m-%dT%H:%M:%SZ")
    for number in range(n_good // 25):
        tid = f"BADT-{number:04d}"
        row = dict(fz.pick(rows[:n_good])) | {"ticket_id": tid}
        fault = number % 4
        if fault == 0:
            row["customer_id"] = fz.pick(["NOPE", "c000", fz.junk()])
        elif fault == 1:
            row["created_at"] = future
        elif fault == 2:
            row["resolved_at"] = future
        else:  # repeated: both rows fail
            rows.append(dict(row))
        rows.append(row)
        bad.append(tid)
    rows.append({"ticket_id": "", "customer_id": fz.pick(list(customers))})  # no id: fails, nobody refers to it
    fz.rng.shuffle(rows)
    return rows, good, bad


# -- work logs ------------------------------------------------------------------------------------------------

NOT_NUMBERS = ["abc", "1h30", "90 min", "45m", "1,5", "1,000", "NaN", "nan", "0x10", "1_000", "４５", "١٢", "true",
               "--5", "5-", "1.2.3", "½", "45 minutes", "PT45M", "[]", "{}", "None", "∞", "1e", "e5"]  # fmt: skip
BAD_BOOLEANS = ["maybe", "ja", "nein", "2", "-1", "on", "off", "t", "f", "truee", "wahr", "✓", "null"]
GOOD_BOOLEANS = {"true": True, "TRUE": True, "True": True, "yes": True, "YES": True, "y": True, "Y": True, "1": True,
                 "": True, " ": True, "false": False, "FALSE": False, "no": False, "No": False, "n": False,
                 "0": False}  # fmt: skip
MALFORMED_TIMES = ["2026-13-01T00:00:00Z", "2026-10-32T10:00:00Z", "2026-02-30T10:00:00Z", "2026-10-05T24:00:00Z",
                   "31/10/2026 10:00", "10/31/2026", "Oct 5 2026 10:00", "1791234567", "yesterday", "2026-10-3xT10:00Z",
                   "2026-10-05T10:00:00+25:00", "2026-W41-1T10:00Z", "٢٠٢٦-10-05T10:00:00Z", "0000-00-00T00:00:00Z",
                   "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z", "2262-04-12T00:00:00Z", "10000-01-01T00:00Z",
                   "2026-10-05T10:00:00ZZ", "T10:00:00Z", "2026-10-05 T 10:00"]  # fmt: skip


KINDS = ["id_empty", "id_too_long", "id_repeated", "customer_empty", "customer_unknown", "customer_bad",
         "service_empty", "service_unknown", "ticket_unknown", "ticket_bad", "start_empty", "start_malformed",
         "start_naive", "start_date_only", "start_future", "duration_empty", "duration_negative", "duration_zero",
         "duration_huge", "duration_not_a_number", "duration_tiny", "billable_odd"]  # fmt: skip


class Worklogs:
    """Work-log rows with what must become of each."""

    def __init__(self, fz: Fuzzer, expected: Expected, customers: dict[str, str], bad_customers: list[str],
                 tickets: list[str], bad_tickets: list[str], file: str, header: list[str] | None) -> None:  # fmt: skip
        self.fz, self.expected, self.file, self.header = fz, expected, file, header  # header: of a CSV file
        self.customers, self.bad_customers = customers, bad_customers
        self.tickets, self.bad_tickets = tickets, bad_tickets
        self.rows: list[dict[str, Any]] = []
        self.faults: list[tuple[str, ...] | None] = []  # per row: the fields at fault (None: good or outside)
        self.kinds: list[str] = []
        self.good_ids: list[str] = []

    def good_row(self) -> dict[str, Any]:
        fz = self.fz
        cid = fz.pick(list(self.customers))
        billable = fz.pick(list(GOOD_BOOLEANS)) if fz.rng.random() < 0.3 else "true"
        row = {
            "worklog_id": fz.serial_id("WL"),
            "ticket_id": fz.pick(self.tickets) if fz.rng.random() < 0.8 else "",
            "customer_id": cid,
            "user": fz.pick(["anna", "ben", "chen", "zoë", "=cmd|' /C calc'!A0", ""]),
            "service_type": NON_BILLABLE_SERVICE if fz.rng.random() < 0.03 else fz.pick(SERVICES),
            "started_at": fz.written(fz.instant_in_period(self.customers[cid]), self.customers[cid]),
            "duration_minutes": fz.pick(["45", "30", "15", "90", "120", " 60 ", "7.5", "480", "1440", "0.5", "+20"]),
            "billable": billable,
            "note": fz.free_text(),
        }  # fmt: skip
        return row

    def key(self, row: dict[str, Any], number: int) -> str:
        wid = str(row.get("worklog_id", "")).strip()
        usable = wid and len(wid) <= MAX_ID  # else the row is known by its file and row
        return f"files:{INSTANCE}:worklog:" + (wid if usable else f"@{self.file}:{number}")

    def add_good(self) -> None:
        self.rows.append(self.good_row())
        self.good_ids.append(self.rows[-1]["worklog_id"])
        self.faults.append(None)
        self.kinds.append("good")

    def add_blank(self) -> None:
        """A blank line, a row of empty values or {}: no row (and the rows after it keep their numbers)."""
        self.rows.append({BLANK: True})
        self.faults.append(None)
        self.kinds.append("blank")

    def add_outside(self) -> None:
        row = self.good_row()
        row["started_at"] = self.fz.written(self.fz.instant_outside(), "UTC")
        self.rows.append(row)
        self.faults.append(None)
        self.kinds.append("outside")

    def add_bad(self, faults: int = 1) -> None:
        row = self.good_row()
        fields: list[str] = []
        kinds: list[str] = []
        while len(kinds) < faults:
            kind, field_ = self.spoil(row, avoid=kinds if faults == 1 else [*kinds, "start_future", "row_cut_short"])
            fields += field_.split(",")
            kinds.append(kind)
        if row["customer_id"] not in self.customers and "started_at" not in fields:
            # The connector reads the month of a start in the customer's zone, UTC for a customer it does not
            # know: keep the start inside the period there, so the row is this period's work.
            row["started_at"] = self.fz.written(self.fz.instant_in_period("UTC"), "UTC")
        self.rows.append(row)
        self.faults.append(tuple(dict.fromkeys(fields)))
        self.kinds.append("+".join(kinds))

    def spoil(self, row: dict[str, Any], avoid: list[str]) -> tuple[str, str]:
        fz = self.fz
        kinds = KINDS + (["row_cut_short"] if self.header else [])
        kind = fz.pick([k for k in kinds if k not in avoid])
        return self._spoil(row, kind)

    def _spoil(self, row: dict[str, Any], kind: str) -> tuple[str, str]:
        fz = self.fz
        if kind == "id_empty":
            row["worklog_id"] = fz.pick(["", "  ", "\t"])
            return kind, "worklog_id"
        if kind == "row_cut_short":  # a CSV line that ends early: the columns after it are empty
            assert self.header is not None
            header = self.header
            last_required = max(n for n, h in enumerate(header) if h in REQUIRED)
            ks = [k for k in range(1, last_required + 1) if any(str(row.get(h, "x")).strip() for h in header[:k])]
            if not ks:
                return self._spoil(row, "service_empty")
            cut = fz.pick(ks)
            row[CUT] = cut
            for column in header[cut:]:
                if column in row:
                    row[column] = ""
            return kind, ",".join(h for h in header[cut:] if h in REQUIRED)
        if kind == "id_too_long":  # more than the ledger's column holds
            row["worklog_id"] = "WL-" + fz.pick(["9", "x", "é"]) * fz.rng.randint(MAX_ID, 3 * MAX_ID)
            return kind, "worklog_id"
        if kind == "id_repeated":
            row["worklog_id"] = fz.pick(self.good_ids) if self.good_ids else ""
            return kind, "worklog_id"
        if kind == "customer_empty":
            row["customer_id"] = fz.pick(["", " "])
            return kind, "customer_id"
        if kind == "customer_unknown":
            cid = fz.pick(list(self.customers))
            row["customer_id"] = fz.pick(["HOOLI", cid.lower(), cid + "\u200b", "\ufeff" + cid, cid + "\x01",
                                          fz.junk(), "C" + "0" * 500])  # fmt: skip
            if not str(row["customer_id"]).strip() or str(row["customer_id"]).strip() in self.customers:
                row["customer_id"] = "HOOLI"
            return kind, "customer_id"
        if kind == "customer_bad":
            row["customer_id"] = fz.pick(self.bad_customers)
            return kind, "customer_id"
        if kind == "service_empty":
            row["service_type"] = ""
            return kind, "service_type"
        if kind == "service_unknown":
            row["service_type"] = fz.pick(["Consulting", "remote support", "remote_support\u200b", "travel",
                                           fz.junk()])  # fmt: skip
            if not str(row["service_type"]).strip() or row["service_type"] in SERVICES:
                row["service_type"] = "travel"
            return kind, "service_type"
        if kind == "ticket_unknown":
            row["ticket_id"] = fz.pick(["T-999999", "t-000001", fz.junk()])
            if not str(row["ticket_id"]).strip() or row["ticket_id"] in self.tickets:
                row["ticket_id"] = "T-999999"
            return kind, "ticket_id"
        if kind == "ticket_bad":
            row["ticket_id"] = fz.pick(self.bad_tickets)
            return kind, "ticket_id"
        if kind == "start_empty":
            row["started_at"] = fz.pick(["", " "])
            return kind, "started_at"
        if kind == "start_malformed":
            row["started_at"] = fz.pick(MALFORMED_TIMES)
            return kind, "started_at"
        if kind == "start_naive":  # a local time with no offset: which zone? Not guessed.
            instant = fz.instant_in_period("UTC")
            row["started_at"] = instant.strftime(fz.pick(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"]))
            return kind, "started_at"
        if kind == "start_date_only":
            row["started_at"] = fz.instant_in_period("UTC").strftime("%Y-%m-%d")
            return kind, "started_at"
        if kind == "start_future":
            instant = fz.future_instant()
            if instant is None:  # this period is over: use a malformed time instead
                row["started_at"] = fz.pick(MALFORMED_TIMES)
                return "start_malformed", "started_at"
            row["customer_id"] = next(c for c, z in self.customers.items() if z == LATE_ZONE)
            row["started_at"] = fz.written(instant, LATE_ZONE)
            return kind, "started_at"
        if kind == "duration_empty":
            row["duration_minutes"] = fz.pick(["", " "])
            return kind, "duration_minutes"
        if kind == "duration_negative":
            row["duration_minutes"] = fz.pick(["-5", "-0.5", "-1440", "-1e3", "=-5"])
            return kind, "duration_minutes"
        if kind == "duration_zero":
            row["duration_minutes"] = fz.pick(["0", "0.0", "-0", "00"])
            return kind, "duration_minutes"
        if kind == "duration_huge":
            row["duration_minutes"] = fz.pick(["1441", "100000", "1e9", "1e300", "1e400", "inf", "-inf",
                                               "99999999999999999999999"])  # fmt: skip
            return kind, "duration_minutes"
        if kind == "duration_not_a_number":
            row["duration_minutes"] = fz.pick(NOT_NUMBERS)
            return kind, "duration_minutes"
        if kind == "duration_tiny":  # rounds to 0 seconds
            row["duration_minutes"] = fz.pick(["0.001", "0.0001"])
            return kind, "duration_minutes"
        row["billable"] = fz.pick(BAD_BOOLEANS)
        return "billable_odd", "billable"

    def settle(self, first_row: int) -> None:
        """Record what must become of each row, now that every row (and every repeated id) is known."""
        keys = [self.key(r, first_row + i) for i, r in enumerate(self.rows)]
        count: dict[str, int] = {}
        for key, kind in zip(keys, self.kinds, strict=True):
            if kind not in ("blank", "outside"):  # a row of another period is no repeat in this one
                count[key] = count.get(key, 0) + 1
        for number, (row, key, faults, kind) in enumerate(zip(self.rows, keys, self.faults, self.kinds,
                                                               strict=True), start=first_row):  # fmt: skip
            if kind == "blank":
                continue
            if kind == "outside":
                self.expected.outside.add(key)
            elif count[key] > 1:  # every row of a repeated id fails: the id is no identity any more
                self.expected.add_bad(Bad(key, self.file, number, ("worklog_id", *(faults or ())), "id_repeated"))
            elif faults:
                self.expected.add_bad(Bad(key, self.file, number, faults, kind))
            else:
                billed = GOOD_BOOLEANS[row["billable"]] and row["service_type"] != NON_BILLABLE_SERVICE
                self.expected.good[key] = "billed" if billed else "non_billable"


# -- usage ----------------------------------------------------------------------------------------------------


USAGE_KINDS = ["id_empty", "id_repeated", "customer_unknown", "customer_bad", "metric_unknown", "metric_empty",
               "quantity_bad", "quantity_empty", "day_bad", "day_empty", "outside"]  # fmt: skip


def _usage(fz: Fuzzer, expected: Expected, customers: dict[str, str], bad_customers: list[str], n_good: int,
           n_bad: int, file: str, first_row: int) -> list[dict[str, Any]]:  # fmt: skip
    rows: list[dict[str, Any]] = []
    plan: list[tuple[str, tuple[str, ...]]] = []
    year, month = map(int, fz.period.split("-"))
    last = min(fz.now.date() - timedelta(days=1), date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1))
    days = [date(year, month, d).isoformat() for d in range(1, last.day + 1)] if last.month == month else []
    days = days or [f"{fz.period}-01"]
    for number in range(n_good + n_bad):
        row = {"record_id": fz.serial_id("U"), "customer_id": fz.pick(list(customers)), "metric": fz.pick(METRICS),
               "quantity": fz.pick(["1", "12.5", "1250.125", "0", "60"]), "occurred_on": fz.pick(days),
               "subscription_id": fz.pick(["SUB-1", "", fz.junk()])}  # fmt: skip
        if number < n_good:
            rows.append(row)
            plan.append(("good", ()))
            continue
        kind = fz.pick(USAGE_KINDS)
        field_ = {"id_empty": "record_id", "id_repeated": "record_id", "customer_unknown": "customer_id",
                  "customer_bad": "customer_id", "metric_unknown": "metric", "metric_empty": "metric",
                  "quantity_bad": "quantity", "quantity_empty": "quantity", "day_bad": "occurred_on",
                  "day_empty": "occurred_on", "outside": ""}[kind]  # fmt: skip
        if kind == "id_empty":
            row["record_id"] = ""
        elif kind == "id_repeated":
            row["record_id"] = fz.pick(rows[: max(n_good, 1)])["record_id"]
        elif kind == "customer_unknown":
            row["customer_id"] = fz.pick(["HOOLI", "c000", fz.junk()])
            if not str(row["customer_id"]).strip():
                row["customer_id"] = "HOOLI"
        elif kind == "customer_bad":
            row["customer_id"] = fz.pick(bad_customers)
        elif kind == "metric_unknown":
            row["metric"] = fz.pick(["Backup_GB", "seats", fz.junk()])
            if not str(row["metric"]).strip():
                row["metric"] = "seats"
        elif kind == "metric_empty":
            row["metric"] = ""
        elif kind == "quantity_bad":
            row["quantity"] = fz.pick(["-1", "1,250.5", "1.2345", "1e3", "abc", "12 GB", "NaN", "inf", "١٢",
                                       "0x1F", " 5 5"])  # fmt: skip
        elif kind == "quantity_empty":
            row["quantity"] = ""
        elif kind == "day_bad":
            row["occurred_on"] = fz.pick(["2026-02-30", "31.10.2026", "yesterday", "20261005x", "10/05/2026"])
        elif kind == "day_empty":
            row["occurred_on"] = ""
        else:
            row["occurred_on"] = (date(year, month, 1) - timedelta(days=fz.rng.randint(1, 90))).isoformat()
        rows.append(row)
        plan.append((kind, (field_,)))
    keys = [f"files:{INSTANCE}:usage:" + (str(r["record_id"]).strip() or f"@{file}:{first_row + i}")
            for i, r in enumerate(rows)]  # fmt: skip
    count: dict[str, int] = {}
    for key, (kind, _) in zip(keys, plan, strict=True):
        if kind != "outside":
            count[key] = count.get(key, 0) + 1
    for number, (key, (kind, fields)) in enumerate(zip(keys, plan, strict=True), start=first_row):
        if kind == "outside":
            if count.get(key, 0) == 0:
                expected.outside.add(key)
        elif count[key] > 1:
            expected.add_bad(Bad(key, file, number, ("record_id", *fields), "usage_id_repeated"))
        elif kind != "good":
            expected.add_bad(Bad(key, file, number, fields, f"usage_{kind}"))
        else:
            expected.good[key] = "billed"
    return rows


# -- files ----------------------------------------------------------------------------------------------------


def _csv_header(columns: list[str], fz: Fuzzer) -> list[str]:
    """The columns in an order of the exporter's, sometimes with one nobody asked for."""
    header = [*columns, "exported_by"] if fz.rng.random() < 0.5 else list(columns)
    fz.rng.shuffle(header)
    return header


def _write(folder: Path, name: str, fmt: str, rows: list[dict[str, Any]], columns: list[str], fz: Fuzzer,
           header: list[str] | None = None) -> str:  # fmt: skip
    """``rows`` as ``name.fmt``, with the oddities real exports have in that format; the file's name."""
    path = folder / f"{name}.{fmt}"
    if fmt == "csv":
        header = header or _csv_header(columns, fz)
        buffer = StringIO()
        # csv quotes a value holding a character of its line terminator only: with "\n" a bare "\r" in a
        # value would end the record for every reader. Such exporters quote every value.
        if fz.rng.random() < 0.5:
            writer = csv.writer(buffer, lineterminator="\r\n")
        else:
            writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow([f" {h} " if fz.rng.random() < 0.1 else h for h in header])
        for row in rows:
            if BLANK in row:
                writer.writerow(fz.pick([[], [""] * len(header)]))
                continue
            values = [str(row.get(h, "system")) for h in header][: row.get(CUT)]
            if fz.rng.random() < 0.01:
                values.append("")  # a trailing comma: an empty extra value is harmless
            writer.writerow(values)
        text = buffer.getvalue()
        path.write_text(("\ufeff" if fz.rng.random() < 0.5 else "") + text, encoding="utf-8", newline="")
    elif fmt == "json":
        data: Any = [{k: v for k, v in r.items() if k in columns} for r in rows]  # a blank row: {}
        if fz.rng.random() < 0.3:
            data = {name: data}
        path.write_text(json.dumps(data, ensure_ascii=fz.rng.random() < 0.5, indent=fz.pick([None, 1])),
                        encoding="utf-8")  # fmt: skip
    else:
        ascii_only = fz.rng.random() < 0.3
        lines = ["" if BLANK in r else json.dumps({k: v for k, v in r.items() if k in columns}, ensure_ascii=ascii_only)
                 for r in rows]  # fmt: skip
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path.name


def _typed(row: dict[str, Any], fz: Fuzzer) -> dict[str, Any]:
    """A JSON export's types: numbers as numbers, booleans as booleans, sometimes null for empty."""
    out = dict(row)
    duration = str(row.get("duration_minutes", "")).strip()
    if duration and fz.rng.random() < 0.5:
        try:
            number = float(duration)
        except ValueError:
            pass
        else:
            if re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", duration):  # ASCII only: float() reads "４５" too
                out["duration_minutes"] = int(number) if number.is_integer() else number
    if row.get("billable") in ("true", "false") and fz.rng.random() < 0.5:
        out["billable"] = row["billable"] == "true"
    for column, value in row.items():
        if value == "" and fz.rng.random() < 0.3:
            if fz.rng.random() < 0.5:
                out[column] = None
            else:
                del out[column]
    return out


WORKLOG_COLUMNS = ["worklog_id", "ticket_id", "customer_id", "user", "service_type", "started_at", "duration_minutes",
                   "billable", "note"]  # fmt: skip


def write_export(folder: Path, seed: int, now: datetime | None = None, good: int = 50_000, bad: int = 10_500,
                 formats: dict[str, str] | None = None) -> Expected:  # fmt: skip
    """Write the export into ``folder`` (created) and say what must become of every row."""
    now = now or datetime.now(UTC)
    period = choose_period(now)
    fz = Fuzzer(seed, now, period)
    chosen = {
        "customers": fz.pick(["csv", "json", "jsonl"]),
        "tickets": fz.pick(["csv", "json", "jsonl"]),
        "worklogs": fz.pick(["csv", "csv", "json", "jsonl"]),
        "usage": fz.pick(["csv", "json", "jsonl"]),
    } | (formats or {})
    expected = Expected(seed=seed, period=period, formats=chosen)
    folder.mkdir(parents=True, exist_ok=True)

    customer_rows, customers, bad_customers = _customers(fz, 40)
    _write(folder, "customers", chosen["customers"], customer_rows,
           ["customer_id", "name", "currency", "timezone", "erp_ref", "country"], fz)  # fmt: skip
    ticket_rows, tickets, bad_tickets = _tickets(fz, customers, 2000)
    _write(folder, "tickets", chosen["tickets"], ticket_rows,
           ["ticket_id", "customer_id", "subject", "ticket_type", "priority", "status", "created_at", "resolved_at"],
           fz)  # fmt: skip

    fmt = chosen["worklogs"]
    header = _csv_header(WORKLOG_COLUMNS, fz) if fmt == "csv" else None
    worklogs = Worklogs(fz, expected, customers, bad_customers, tickets, bad_tickets, f"worklogs.{fmt}", header)
    plan = ["good"] * good + ["bad"] * bad + ["outside"] * (good // 100) + ["blank"] * (good // 1000)
    fz.rng.shuffle(plan)
    for what in plan:
        if what == "good":
            worklogs.add_good()
        elif what == "outside":
            worklogs.add_outside()
        elif what == "blank":
            worklogs.add_blank()
        else:
            worklogs.add_bad(1 if fz.rng.random() < 0.85 else 2)
    worklogs.settle(first_row=2 if fmt == "csv" else 1)
    rows = worklogs.rows if fmt == "csv" else [r if BLANK in r else _typed(r, fz) for r in worklogs.rows]
    _write(folder, "worklogs", fmt, rows, WORKLOG_COLUMNS, fz, header)

    fmt = chosen["usage"]
    usage_rows = _usage(fz, expected, customers, bad_customers, 2000, 200, f"usage.{fmt}", 2 if fmt == "csv" else 1)
    _write(folder, "usage", fmt, usage_rows,
           ["record_id", "customer_id", "metric", "quantity", "occurred_on", "subscription_id"], fz)  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps({"instance": INSTANCE, "period": period}))

    rules = yaml.safe_load(DEMO_RULES.read_text(encoding="utf-8"))
    rules["usage"] = {
        "backup_gb": {"name": "Cloud backup (GB)", "mode": "graduated", "tiers": [
            {"up_to": "100", "unit_price": {"EUR": "0.10", "USD": "0.12"}},
            {"unit_price": {"EUR": "0.05", "USD": "0.06"}}]},
        "m365_seats": {"name": "Microsoft 365 seats", "mode": "volume",
                       "tiers": [{"unit_price": {"EUR": "11.00", "USD": "12.50"}}]},
    }  # fmt: skip
    expected.rules = folder.parent / f"{folder.name}-rules.yaml"
    expected.rules.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    return expected


def _names_row(reason: str, file: str, row: int) -> bool:
    """The reason says ``file row N`` or ``file rows A and N``."""
    return re.search(rf"{re.escape(file)} rows? (?:\d+ and )*{row}\b", reason) is not None


def mismatches(expected: Expected, items: pd.DataFrame, final: dict[str, set[str]] | None = None) -> list[str]:
    """What differs between ``expected`` and the work items (``key, state, reason``): an empty list if nothing.

    ``final``: the states a good row may end in, per expected outcome (default: exactly the outcome)."""
    final = final or {"billed": {"posted", "reconciled"}, "non_billable": {"non_billable"}}
    by_key = items.set_index("key")
    problems: list[str] = []
    for key, bad in expected.bad.items():
        if key not in by_key.index:
            problems.append(f"bad row not a work item: {bad}")
            continue
        state, reason = by_key.at[key, "state"], str(by_key.at[key, "reason"])
        if state != "quarantined":
            problems.append(f"bad row {state}: {bad}")
        elif not _names_row(reason, bad.file, bad.row) or not all(f in reason for f in bad.fields):
            problems.append(f"reason does not name {bad.file} row {bad.row} and {bad.fields}: {reason[:300]!r} "
                            f"({bad.kind})")  # fmt: skip
    for key, outcome in expected.good.items():
        if key not in by_key.index:
            problems.append(f"good row not a work item: {key}")
        elif by_key.at[key, "state"] not in final[outcome]:
            problems.append(f"good row {key} is {by_key.at[key, 'state']} (expected {outcome}): "
                            f"{str(by_key.at[key, 'reason'])[:300]!r}")  # fmt: skip
    problems += [f"row of another period is a work item: {key}" for key in expected.outside & set(by_key.index)]
    unexpected = set(by_key.index) - set(expected.good) - set(expected.bad)
    problems += [f"work item nobody expected: {key}" for key in sorted(unexpected)]
    return problems


if __name__ == "__main__":
    target = Path(sys.argv[1])
    seed_ = int(sys.argv[2]) if len(sys.argv) > 2 else random.SystemRandom().randrange(2**32)
    result = write_export(target, seed_)
    print(f"seed={seed_} period={result.period} formats={result.formats} good={len(result.good)} "
          f"bad={len(result.bad)} outside={len(result.outside)}")  # fmt: skip
