"""One large, deterministic billing month in the file-drop export layout (connectors/filedrop.py, README.md
"The file-drop export"), for benchmarks that need 10k to 1M work logs, which the hand-made sample export
(examples/sample-export/, 508 rows) cannot give.

``write_month(folder, worklogs)`` writes ``manifest.json``, ``customers.json``, ``tickets.csv`` and
``worklogs.csv`` and returns the counts the output was built to have (``MonthFacts``), so a benchmark or a
test can check what the pipeline made of it without reading the files again.

What the month contains (proportions are exact counts, rounded):

* one customer per 200 work logs (``C00001`` ...), currencies rotating EUR / USD / GBP with the timezones
  Europe/Berlin / America/New_York / Europe/London and countries DE / US / GB. The demo rules
  (rules/examples/demo.yaml) have no GBP rates: a run that prices with them leaves the GBP work unpriced;
  give the benchmark rules a GBP rate per service to price everything.
* one ticket per 5 work logs (``T0000001`` ..., numbered in creation order), each of one customer, its work
  within about six days, created shortly before its first work log (a tenth up to a week earlier, so some
  in the previous month); 88 % are closed or resolved minutes to a day after their last work log (before
  the export), the rest are in progress, and the few tickets no work log drew are new.
* work logs ``W00000001`` ... in ``started_at`` order: 3 % without a ticket, services of the demo rules
  (remote_support, onsite_support, consulting, project_work), 5 to 240 minutes, 8 % ``billable=false``,
  notes from a pool with commas, quotes and non-ASCII text so the CSV quoting is exercised. In the
  customer's local time 91 % start and end in business hours (Mon-Fri 08:00-18:00), 5 % are after hours
  on a weekday and 4 % on a Saturday or Sunday (the demo rules' after_hours and weekend modifiers, which
  look at the start). Every start is on a local day from the 2nd to the second-to-last of the month, so no
  timezone moves a row into another month.
* 0.5 % bad rows, with the ids after the good ones, scattered through the file; each is bad in one way
  only, one of the kinds the validate stage quarantines (as in examples/generate_sample_export.py):
  negative duration, more than 24 h, unknown customer (no ticket), unknown service type, unparsable
  ``started_at``, non-numeric duration, empty customer.

Everything comes from one ``numpy.random.Generator`` seeded with ``seed``, and nothing depends on the date,
the machine or the chunking of the write: the same arguments give byte-identical files. Work logs are drawn
as numbers (about 30 bytes a row) and turned into text 100,000 rows at a time, so memory stays small at 1M.
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CURRENCIES = ("EUR", "USD", "GBP")
TIMEZONES = ("Europe/Berlin", "America/New_York", "Europe/London")
COUNTRIES = ("DE", "US", "GB")
LEGAL_FORMS = ("GmbH", "Inc.", "Ltd")
NAME_WORDS = ("Acme", "Globex", "Initech", "Northwind", "Umbrella", "Stark", "Wayne", "Soylent", "Hooli",
              "Vandelay", "Tyrell", "Cyberdyne", "Wonka", "Oscorp", "Pied Piper", "Aperture")  # fmt: skip
NAME_TRADES = ("Logistics", "Dental", "Engineering", "Software", "Legal", "Retail", "Foods", "Architects")

SERVICES = ("remote_support", "onsite_support", "consulting", "project_work")
SERVICE_SHARES = (0.62, 0.12, 0.08, 0.18)
USERS = ("anna.schmidt", "ben.carter", "chen.li", "dana.oconnor", "emil.novak", "fatima.haddad",
         "gus.miller", "hana.sato", "ivan.petrov", "julia.rossi", "kofi.mensah", "lena.berg")  # fmt: skip
NOTES = (
    "Reset password and re-enrolled MFA",
    "Checked backup logs, fixed service credentials",
    'User reports "printer offline" again',
    "Patched VPN gateway; rebooted after hours window",
    'Replaced toner, cleaned rollers, tested "duplex" mode',
    "Migrated mailbox to new tenant",
    "Call with IT lead, agreed next steps",
    "Installed updates on FS01, FS02 and DC01",
    "Laptop setup for new hire (M. Müller)",
    'Firewall rule "allow-rdp" removed, documented',
    "Reviewed licences, ordered 5 seats",
    "Network switch cutover prep",
    "Café Wi-Fi guest portal fixed",
    "Quarterly review: capacity, risks, roadmap",
)  # fmt: skip
SUBJECTS = (
    "UPS beeping in server room",
    "Outlook keeps asking for password",
    "Laptop stolen, wipe and replace",
    'Printer "HR-2" offline',
    "New employee onboarding",
    "Backup job failed on FS01",
    "VPN drops every 10 minutes",
    "Upgrade firewall firmware",
    "Shared drive permissions, finance team",
    "Migrate to new phone system",
)  # fmt: skip
TICKET_TYPES = ("incident", "service_request", "change", "problem")
TICKET_TYPE_SHARES = (0.5, 0.3, 0.15, 0.05)
PRIORITIES = ("low", "normal", "high", "urgent")
PRIORITY_SHARES = (0.15, 0.6, 0.2, 0.05)

WORKLOGS_PER_CUSTOMER = 200
WORKLOGS_PER_TICKET = 5
WITHOUT_TICKET = 0.03
NON_BILLABLE = 0.08
AFTER_HOURS = 0.05  # weekday, local 18:00-08:00
WEEKEND = 0.04  # local Saturday or Sunday
BAD = 0.005
TICKET_SPAN = 0.2  # of the month: a ticket's work logs are spread over about six days
BUSINESS_START, BUSINESS_END = 8 * 60, 18 * 60  # minutes of the local day (demo.yaml business_hours)
MIN_MINUTES, MAX_MINUTES = 5, 240
# The kinds of bad row, in turn; each overrides one field (two for the unknown customer, whose ticket
# would name another customer). Values as in examples/generate_sample_export.py.
BAD_KINDS = ("negative_duration", "over_24_hours", "unknown_customer", "unknown_service",
             "unparsable_started_at", "non_numeric_duration", "empty_customer")  # fmt: skip
UNKNOWN_CUSTOMER = "HOOLI-XX"
UNKNOWN_SERVICE = "gardening"
CHUNK = 100_000
NS_PER_MINUTE = 60 * 10**9


@dataclass(frozen=True)
class MonthFacts:
    """What ``write_month`` wrote. ``worklogs`` counts every row of worklogs.csv, the bad ones included;
    ``non_billable``, ``billable``, ``after_hours`` and ``weekend`` count good rows only."""

    folder: Path
    period: str
    customers: int
    tickets: int
    worklogs: int
    bad_rows: int
    non_billable: int
    billable: int
    after_hours: int
    weekend: int
    without_ticket: int
    customers_per_currency: dict[str, int]

    @property
    def good_rows(self) -> int:
        return self.worklogs - self.bad_rows


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """``prefix`` + zero-padded numbers, as an object array (what pandas writes)."""
    return np.array([f"{prefix}{n:0{width}d}" for n in numbers.tolist()], dtype=object)


def _utc_text(ns: np.ndarray) -> np.ndarray:
    """Nanoseconds since the epoch as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[s]"), unit="s", timezone="UTC")


def _local_to_utc(local_ns: np.ndarray, zone_of_row: np.ndarray) -> np.ndarray:
    """Local wall-clock times (ns, naive) in each row's zone (an index into TIMEZONES) → UTC ns.

    An hour that happens twice (the autumn DST change) is read as standard time; one that does not exist
    (spring) moves forward to the first valid instant: both only at night, so after-hours stays after-hours."""
    utc = np.empty_like(local_ns)
    for code, zone in enumerate(TIMEZONES):
        rows = np.flatnonzero(zone_of_row == code)
        if not len(rows):
            continue
        local = pd.DatetimeIndex(local_ns[rows].astype("datetime64[ns]"))
        zoned = local.tz_localize(zone, ambiguous=np.zeros(len(rows), dtype=bool), nonexistent="shift_forward")
        utc[rows] = zoned.tz_convert("UTC").asi8
    return utc


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _customers(count: int) -> list[dict[str, str]]:
    records = []
    for index in range(count):
        code = index % len(CURRENCIES)
        word = NAME_WORDS[index % len(NAME_WORDS)]
        trade = NAME_TRADES[(index // len(NAME_WORDS)) % len(NAME_TRADES)]
        records.append({
            "customer_id": f"C{index + 1:05d}", "name": f"{word} {trade} {index + 1} {LEGAL_FORMS[code]}",
            "currency": CURRENCIES[code], "timezone": TIMEZONES[code], "erp_ref": f"C-{10000 + index + 1}",
            "country": COUNTRIES[code],
        })  # fmt: skip
    return records


def _start_minutes(rng: np.random.Generator, category: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    """Local minute of the day each row starts, so that the whole work log stays in its category:
    business rows start and end within 08:00-18:00, after-hours rows end by 08:00 or start at 18:00 or
    later (and end by midnight), weekend rows run in the day."""
    n = len(category)
    u = rng.random(n)
    business_latest = BUSINESS_END - minutes
    start = BUSINESS_START + np.floor(u * (business_latest - BUSINESS_START + 1)).astype(np.int64)
    evening_latest = np.minimum(22 * 60, 24 * 60 - minutes)
    evening = BUSINESS_END + np.floor(u * (evening_latest - BUSINESS_END + 1)).astype(np.int64)
    morning_latest = BUSINESS_START - minutes  # ends by 08:00, starts at most two hours before that
    morning = np.maximum(0, morning_latest - np.floor(u * 121).astype(np.int64))
    weekend_latest = np.minimum(20 * 60, 24 * 60 - minutes)
    weekend = 9 * 60 + np.floor(u * (weekend_latest - 9 * 60 + 1)).astype(np.int64)
    in_morning = rng.random(n) < 0.3
    start = np.where(category == 1, np.where(in_morning, morning, evening), start)
    return np.where(category == 2, weekend, start)


def write_month(folder: Path, worklogs: int, period: str = "2026-10", seed: int = 20261201) -> MonthFacts:
    """Write one month of ``worklogs`` work-log rows (0.5 % of them bad) into ``folder`` (created if missing;
    the four files are overwritten) and return what was written."""
    if worklogs < 1:
        raise ValueError("worklogs must be at least 1")
    year, month = (int(part) for part in period.split("-"))
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    n_customers = max(1, worklogs // WORKLOGS_PER_CUSTOMER)
    n_tickets = max(1, worklogs // WORKLOGS_PER_TICKET)
    n_bad = int(worklogs * BAD + 0.5)
    n_good = worklogs - n_bad
    n_weekend, n_after = int(n_good * WEEKEND + 0.5), int(n_good * AFTER_HOURS + 0.5)

    # Local days the work may start on: the 2nd to the second-to-last, split into weekdays and weekends.
    days_in_month = calendar.monthrange(year, month)[1]
    days = np.arange(f"{year:04d}-{month:02d}-02", f"{year:04d}-{month:02d}-{days_in_month:02d}", dtype="datetime64[D]")
    weekday_of = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    weekdays, weekend_days = days[weekday_of < 5], days[weekday_of >= 5]

    # -- work logs, as numbers; rows [0, n_good) are good, [n_good, worklogs) become the bad rows ------------
    ticket_customer = rng.integers(0, n_customers, n_tickets, dtype=np.int32)
    ticket = rng.integers(0, n_tickets, worklogs, dtype=np.int32)
    no_ticket = rng.random(worklogs) < WITHOUT_TICKET
    ticket[no_ticket] = -1
    customer = np.where(no_ticket, rng.integers(0, n_customers, worklogs, dtype=np.int32), ticket_customer[ticket])
    customer = customer.astype(np.int32)
    zone = (customer % len(TIMEZONES)).astype(np.int8)
    user = rng.integers(0, len(USERS), worklogs, dtype=np.int8)
    service = rng.choice(len(SERVICES), worklogs, p=SERVICE_SHARES).astype(np.int8)
    minutes = np.clip(np.rint(np.exp(rng.normal(np.log(40), 0.8, worklogs))), MIN_MINUTES, MAX_MINUTES)
    minutes = minutes.astype(np.int64)
    note = rng.integers(0, len(NOTES), worklogs, dtype=np.int16)

    category = np.zeros(worklogs, dtype=np.int8)  # 0 business, 1 after hours, 2 weekend
    shuffled = rng.permutation(n_good)
    category[shuffled[:n_weekend]] = 2
    category[shuffled[n_weekend : n_weekend + n_after]] = 1
    billable = np.ones(worklogs, dtype=bool)
    billable[rng.choice(n_good, int(n_good * NON_BILLABLE + 0.5), replace=False)] = False

    # A ticket's work falls within about six days from its anchor (a place in the month); work without a ticket
    # anywhere. The same place picks a weekday or a weekend day by the row's category.
    anchor = rng.random(n_tickets) * (1 - TICKET_SPAN)
    place = np.where(ticket >= 0, anchor[np.maximum(ticket, 0)], rng.random(worklogs) * (1 - TICKET_SPAN))
    place += rng.random(worklogs) * TICKET_SPAN
    day = np.where(category == 2, weekend_days[(place * len(weekend_days)).astype(np.int64)],
                   weekdays[(place * len(weekdays)).astype(np.int64)])  # fmt: skip
    del place
    local_ns = day.astype("datetime64[ns]").astype(np.int64) + _start_minutes(rng, category, minutes) * NS_PER_MINUTE
    del day
    started = _local_to_utc(local_ns, zone)
    del local_ns

    bad_kind = np.full(worklogs, -1, dtype=np.int8)
    bad_kind[n_good:] = np.arange(n_bad) % len(BAD_KINDS)
    ticket[bad_kind == BAD_KINDS.index("unknown_customer")] = -1

    # -- tickets: created before their first work log, closed after their last ----------------------------------
    exported = np.datetime64(f"{year + month // 12:04d}-{month % 12 + 1:02d}-01T02:00:00", "s")
    exported_at = exported.astype("datetime64[ns]").astype(np.int64)
    on_ticket = ticket >= 0
    worked = np.bincount(ticket[on_ticket], minlength=n_tickets) > 0
    first = np.full(n_tickets, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n_tickets, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, ticket[on_ticket], started[on_ticket])
    np.maximum.at(last, ticket[on_ticket], started[on_ticket] + minutes[on_ticket] * NS_PER_MINUTE)
    lead = rng.integers(3, 12 * 60, n_tickets) + np.where(rng.random(n_tickets) < 0.1,
                                                          rng.integers(1, 8, n_tickets) * 1440, 0)  # fmt: skip
    unworked_created = np.datetime64(f"{year:04d}-{month:02d}-01", "ns").astype(np.int64) + rng.integers(
        0, (days_in_month - 1) * 1440, n_tickets) * NS_PER_MINUTE  # fmt: skip
    created = np.where(worked, first - lead * NS_PER_MINUTE, unworked_created)
    done = rng.random(n_tickets)
    status_code = np.where(~worked, 0, np.where(done < 0.8, 3, np.where(done < 0.88, 2, 1)))
    status_names = np.array(["new", "in_progress", "resolved", "closed"], dtype=object)
    gap = rng.choice(np.array([3, 8, 15, 30, 45, 90, 180, 600, 1500]), n_tickets) + rng.integers(0, 5, n_tickets)
    resolved = np.minimum(last + gap * NS_PER_MINUTE, exported_at - 5 * NS_PER_MINUTE)
    subject = rng.integers(0, len(SUBJECTS), n_tickets)
    ticket_type = rng.choice(len(TICKET_TYPES), n_tickets, p=TICKET_TYPE_SHARES)
    priority = rng.choice(len(PRIORITIES), n_tickets, p=PRIORITY_SHARES)

    creation_order = np.argsort(created, kind="stable")
    ticket_number = np.empty(n_tickets, dtype=np.int64)
    ticket_number[creation_order] = np.arange(1, n_tickets + 1)
    ticket_ids = _ids("T", np.arange(1, n_tickets + 1), 7)
    customer_ids = np.array([f"C{n:05d}" for n in range(1, n_customers + 1)], dtype=object)
    has_resolution = status_code >= 2
    resolved_text = np.where(has_resolution, _utc_text(resolved), "").astype(object)
    tickets_frame = pd.DataFrame({
        "ticket_id": ticket_ids,
        "customer_id": customer_ids[ticket_customer[creation_order]],
        "subject": np.array(SUBJECTS, dtype=object)[subject[creation_order]],
        "ticket_type": np.array(TICKET_TYPES, dtype=object)[ticket_type[creation_order]],
        "priority": np.array(PRIORITIES, dtype=object)[priority[creation_order]],
        "status": status_names[status_code[creation_order]],
        "created_at": _utc_text(created[creation_order]).astype(object),
        "resolved_at": resolved_text[creation_order],
    })  # fmt: skip
    tickets_frame.to_csv(folder / "tickets.csv", index=False, lineterminator="\n")
    del tickets_frame, resolved_text, ticket_ids

    # -- the file: good rows in started_at order numbered 1.., bad rows after them, scattered -------------------
    good_order = np.argsort(started[:n_good], kind="stable")
    number = np.empty(worklogs, dtype=np.int64)
    number[good_order] = np.arange(1, n_good + 1)
    number[n_good:] = np.arange(n_good + 1, worklogs + 1)
    is_bad_position = np.zeros(worklogs, dtype=bool)
    is_bad_position[rng.choice(worklogs, n_bad, replace=False)] = True
    order = np.empty(worklogs, dtype=np.int64)
    order[~is_bad_position] = good_order
    order[is_bad_position] = np.arange(n_good, worklogs)

    ticket_number_of_row = np.where(ticket >= 0, ticket_number[np.maximum(ticket, 0)], 0)
    names = {column: np.array(values, dtype=object) for column, values in
             (("user", USERS), ("service_type", SERVICES), ("note", NOTES))}  # fmt: skip
    path = folder / "worklogs.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        for offset in range(0, worklogs, CHUNK):
            rows = order[offset : offset + CHUNK]
            ticket_text = _ids("T", ticket_number_of_row[rows], 7)
            ticket_text[ticket_number_of_row[rows] == 0] = ""
            chunk = pd.DataFrame({
                "worklog_id": _ids("W", number[rows], 8),
                "ticket_id": ticket_text,
                "customer_id": customer_ids[customer[rows]],
                "user": names["user"][user[rows]],
                "service_type": names["service_type"][service[rows]],
                "started_at": _utc_text(started[rows]).astype(object),
                "duration_minutes": minutes[rows].astype(str).astype(object),
                "billable": np.where(billable[rows], "true", "false").astype(object),
                "note": names["note"][note[rows]],
            })  # fmt: skip
            _spoil(chunk, bad_kind[rows])
            chunk.to_csv(handle, index=False, header=offset == 0, lineterminator="\n")

    _write_json(folder / "customers.json", _customers(n_customers))
    _write_json(folder / "manifest.json", {
        "source": "files", "instance": f"generated-{worklogs}", "period": period,
        "exported_at": f"{exported}Z",
    })  # fmt: skip

    good = bad_kind < 0
    codes = np.arange(n_customers) % len(CURRENCIES)
    non_billable = int((~billable[good]).sum())
    return MonthFacts(
        folder=folder, period=period, customers=n_customers, tickets=n_tickets, worklogs=worklogs,
        bad_rows=n_bad, non_billable=non_billable, billable=n_good - non_billable, after_hours=n_after,
        weekend=n_weekend, without_ticket=int((ticket[good] < 0).sum()),
        customers_per_currency={c: int((codes == i).sum()) for i, c in enumerate(CURRENCIES)},
    )  # fmt: skip


def _spoil(chunk: pd.DataFrame, kind: np.ndarray) -> None:
    """Turn the rows of ``chunk`` with a bad kind (index into BAD_KINDS, -1 for none) into that bad row."""
    for code, name in enumerate(BAD_KINDS):
        rows = np.flatnonzero(kind == code)
        if not len(rows):
            continue
        if name == "negative_duration":
            chunk.iloc[rows, chunk.columns.get_loc("duration_minutes")] = "-30"
        elif name == "over_24_hours":
            chunk.iloc[rows, chunk.columns.get_loc("duration_minutes")] = "2000"
        elif name == "unknown_customer":
            chunk.iloc[rows, chunk.columns.get_loc("customer_id")] = UNKNOWN_CUSTOMER  # its ticket is already ""
        elif name == "unknown_service":
            chunk.iloc[rows, chunk.columns.get_loc("service_type")] = UNKNOWN_SERVICE
        elif name == "unparsable_started_at":
            column = chunk.columns.get_loc("started_at")
            chunk.iloc[rows, column] = [f"{text[:8]}3x{text[10:]}" for text in chunk.iloc[rows, column]]
        elif name == "non_numeric_duration":
            chunk.iloc[rows, chunk.columns.get_loc("duration_minutes")] = "1h30"
        elif name == "empty_customer":
            chunk.iloc[rows, chunk.columns.get_loc("customer_id")] = ""
