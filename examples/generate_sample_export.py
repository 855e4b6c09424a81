"""Generate the deterministic sample helpdesk export in ``examples/sample-export/``.

The export is one month (period ``2026-10``) of a small managed-service provider's helpdesk, in the
layout the ``files`` source reads:

* ``manifest.json``  - source, instance, period and ``exported_at`` (2026-11-01T02:00:00Z).
* ``customers.json`` - 4 customers: ACME (EUR, Europe/Berlin), GLOBEX (EUR, Europe/Amsterdam, no ERP ref),
  NORTHWIND (USD, America/New_York), INITECH (USD, America/Chicago, no ERP ref).
* ``tickets.csv``    - 100 tickets ``T-1001`` ... ``T-1100`` (35/25/25/15 per customer), ids in creation
  order; a few were created in late September; ``resolved_at`` is empty for new/in_progress tickets.
* ``worklogs.csv``   - 508 rows: 500 good work logs ``WL-00001`` ... ``WL-00500`` (ids in ``started_at``
  order) plus 8 deliberately bad rows at scattered positions.

Re-run from the repository root (it overwrites the four files)::

    .venv/bin/python examples/generate_sample_export.py

The output is byte-identical on every run: everything comes from one ``random.Random(20261031)``, nothing
depends on the current date, and the files are written as UTF-8 with ``\\n`` line endings.

What the good work logs contain:

* ``started_at`` is UTC; "in the period" means October 2026 in the *customer's* time zone (converted with
  zoneinfo, so the EU DST change on 2026-10-25 is honoured; the US one is on 2026-11-01).
* Of the 496 in-period rows, 451 start in local business hours (Mon-Fri 08:00-18:00), 25 are after-hours
  (weekday, local 18:00-08:00) and 20 are on a local Saturday/Sunday.
* 15 rows have no ticket (e.g. "Monthly patch review"); 40 rows are ``billable=false`` (12 ``internal``,
  28 warranty/goodwill ``remote_support``); some notes contain commas, quotes or non-ASCII text.
* 4 good rows belong to other months (local time), two of them straddle the month edge in UTC:

  - WL-00001  ACME       2026-09-30 15:00 Europe/Berlin      (2026-09-30T13:00:00Z)
  - WL-00002  NORTHWIND  2026-09-30 20:30 America/New_York   (2026-10-01T00:30:00Z, UTC says October)
  - WL-00499  GLOBEX     2026-11-01 00:30 Europe/Amsterdam   (2026-10-31T23:30:00Z, UTC says October)
  - WL-00500  ACME       2026-11-01 01:30 Europe/Berlin      (2026-11-01T00:30:00Z)

Deliberately bad rows (otherwise normal, started_at inside October 2026 unless noted):

* WL-00501  duration_minutes = -30
* WL-00502  duration_minutes = 2000 (more than a day)
* WL-00503  customer_id = HOOLI (unknown customer), ticket_id empty
* WL-00504  service_type = gardening (unknown service type)
* WL-00505  started_at = 2026-10-3xT10:00:00Z (unparseable)
* WL-00506  duration_minutes = 1h30 (not a number)
* WL-00507  customer_id empty
* WL-00123  second occurrence, later in the file: same id as the good row WL-00123 but a different
  duration, so both rows with that id are duplicates.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

SEED = 20261031
PERIOD = "2026-10"
PERIOD_FIRST = date(2026, 10, 1)
PERIOD_LAST = date(2026, 10, 31)
EXPORTED_AT = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
LATEST_END = EXPORTED_AT - timedelta(minutes=15)  # no work may end after the export was taken
OUT_DIR = Path(__file__).resolve().parent / "sample-export"

N_TICKETED_IN_PERIOD = 488  # 481 good rows + 7 that become bad rows a-g
N_AFTER_HOURS = 25
N_WEEKEND = 20
N_TICKETED_INTERNAL = 4  # plus 8 internal rows without a ticket = 12
N_GOODWILL = 28
N_NEW, N_IN_PROGRESS = 6, 10  # among the non-fixed tickets
DUPLICATED_ID = "WL-00123"
FIRST_BAD_NUMBER = 501

BUSINESS, AFTER_HOURS, WEEKEND = "business", "after_hours", "weekend"
NEW, IN_PROGRESS, DONE = "new", "in_progress", "done"

TECHNICIANS = ("anna.schmidt", "ben.carter", "chen.li", "dana.oconnor", "emil.novak", "fatima.haddad")

WORKLOG_COLUMNS = (
    "worklog_id",
    "ticket_id",
    "customer_id",
    "user",
    "service_type",
    "started_at",
    "duration_minutes",
    "billable",
    "note",
)
TICKET_COLUMNS = (
    "ticket_id",
    "customer_id",
    "subject",
    "ticket_type",
    "priority",
    "status",
    "created_at",
    "resolved_at",
)


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    currency: str
    timezone: str
    erp_ref: str
    country: str
    n_tickets: int
    domain: str
    locations: tuple[str, ...]
    departments: tuple[str, ...]
    people: tuple[str, ...]
    apps: tuple[str, ...]
    tech_weights: tuple[float, ...]  # one weight per entry of TECHNICIANS

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def export(self) -> dict[str, str]:
        return {
            "customer_id": self.customer_id,
            "name": self.name,
            "currency": self.currency,
            "timezone": self.timezone,
            "erp_ref": self.erp_ref,
            "country": self.country,
        }


CUSTOMERS = (
    Customer(
        "ACME",
        "Acme Logistics GmbH",
        "EUR",
        "Europe/Berlin",
        "C-10001",
        "DE",
        35,
        "acme-logistics.de",
        ("Hamburg warehouse", "Bremen office", "dispatch office", "loading dock"),
        ("accounting", "dispatch", "warehouse", "HR"),
        ("J. Becker", "M. Schulz", "S. Wagner", "K. Müller", "T. Hoffmann"),
        ("SAP GUI", "DATEV", "Adobe Acrobat", "Microsoft Teams"),
        (6, 1, 1, 0.5, 3, 0.5),
    ),
    Customer(
        "GLOBEX",
        "Globex Engineering B.V.",
        "EUR",
        "Europe/Amsterdam",
        "",
        "NL",
        25,
        "globex-eng.nl",
        ("Eindhoven lab", "Rotterdam office", "meeting room Maas"),
        ("engineering", "finance", "sales"),
        ("P. de Vries", "L. Jansen", "R. Bakker", "S. van Dijk"),
        ("AutoCAD", "SolidWorks", "Exact Online", "Adobe Acrobat"),
        (1, 0.5, 4, 0.5, 4, 1),
    ),
    Customer(
        "NORTHWIND",
        "Northwind Dental LLC",
        "USD",
        "America/New_York",
        "C-10003",
        "US",
        25,
        "northwinddental.com",
        ("Main St clinic", "Elm Ave clinic", "front desk", "operatory 3"),
        ("front desk", "billing", "hygienists"),
        ("Dr. Patel", "M. Rivera", "T. Nguyen", "A. Brooks"),
        ("Dentrix", "QuickBooks", "Adobe Acrobat", "Zoom"),
        (0.5, 5, 0.5, 4, 0.5, 1),
    ),
    Customer(
        "INITECH",
        "Initech Software Inc.",
        "USD",
        "America/Chicago",
        "",
        "US",
        15,
        "initech.com",
        ("Austin office", "QA lab", "3rd floor"),
        ("QA", "finance", "support"),
        ("P. Gibbons", "J. Smith", "A. Garcia", "S. Lee"),
        ("Jira", "Visual Studio", "Slack", "Docker Desktop"),
        (0.5, 2, 1, 2, 0.5, 5),
    ),
)
CUSTOMER_BY_ID = {c.customer_id: c for c in CUSTOMERS}

# (subject template, topic, usual ticket type)
SUBJECTS: tuple[tuple[str, str, str], ...] = (
    ("VPN drops every {n} minutes", "network", "incident"),
    ("New laptop for {dept}", "hardware", "service_request"),
    ("Printer on {floor} floor offline", "printer", "incident"),
    ("Outlook keeps asking for password ({person})", "email", "incident"),
    ("Firewall rule for ERP vendor", "network", "change"),
    ("Wi-Fi slow in {loc}", "network", "incident"),
    ("Shared mailbox for {dept}", "email", "service_request"),
    ("Onboard new employee: {person}", "account", "service_request"),
    ("Offboard leaver: {person}", "account", "service_request"),
    ("MFA reset for {person}", "account", "service_request"),
    ("Backup job failed on {server}", "backup", "incident"),
    ("Restore deleted folder on {server}", "backup", "service_request"),
    ("Disk space low on {server}", "server", "incident"),
    ("Windows updates stuck on {pc}", "software", "incident"),
    ("Install {app} on {pc}", "software", "service_request"),
    ("{app} crashes on start", "software", "incident"),
    ("Phishing email reported by {person}", "security", "incident"),
    ("Suspicious sign-in alert for {person}", "security", "incident"),
    ("Replace failing SSD in {pc}", "hardware", "incident"),
    ("Docking station not detecting monitors ({person})", "hardware", "incident"),
    ("Scan to email not working in {loc}", "printer", "incident"),
    ("Paper jam and toner low, {floor} floor", "printer", "incident"),
    ("Desk phone has no dial tone ({loc})", "phone", "incident"),
    ("Teams calls choppy in {loc}", "network", "incident"),
    ("Renew SSL certificate for {domain}", "server", "change"),
    ("Migrate file shares to SharePoint", "project", "change"),
    ("Replace core switch in {loc}", "project", "change"),
    ("Upgrade {server} to Windows Server 2025", "project", "change"),
    ("Recurring account lockouts", "account", "problem"),
    ("Intermittent DNS resolution failures", "network", "problem"),
    ("Slow logons in {loc}", "server", "problem"),
    ("Calendar permissions for {dept}", "email", "service_request"),
    ("Mailbox full, cannot send ({person})", "email", "incident"),
    ("Guest Wi-Fi for {loc}", "network", "service_request"),
    ("Quote for {n} new monitors", "hardware", "service_request"),
    ("Access to {app} for {person}", "account", "service_request"),
    ("UPS beeping in server room", "hardware", "incident"),
    ("Laptop stolen, wipe and replace ({person})", "security", "incident"),
    ("Meeting room display not working ({loc})", "hardware", "incident"),
    ("Patch {app} vulnerability", "security", "change"),
    ("Printer driver rollout to {dept}", "printer", "change"),
    ("Antivirus alerts on {pc}", "security", "incident"),
)

TOPIC_NOTES: dict[str, tuple[str, ...]] = {
    "network": (
        "Checked VPN client logs, updated client to latest version",
        "Adjusted DPD timeout on firewall",
        "Rebooted access point, monitored for 15 min",
        "Replaced patch cable at desk",
        "Traced issue to ISP, opened carrier ticket",
        "Updated DNS forwarders",
        "Captured traffic, packet loss upstream of router",
        "Applied firewall rule and tested with vendor",
        'User reported "internet is down", cable was unplugged',
    ),
    "email": (
        "Reset MFA token",
        "Removed stale credentials from Credential Manager",
        "Rebuilt Outlook profile",
        "Increased mailbox quota",
        "Set up shared mailbox, granted access to 4 users",
        "Checked message trace, mail was delivered",
        "Adjusted calendar permissions",
    ),
    "hardware": (
        "Imaged new laptop, installed standard apps",
        "Replaced SSD, restored user data",
        "Updated dock firmware",
        "Ordered replacement, waiting for delivery",
        "Swapped UPS battery",
        "Handed over laptop, user signed receipt",
        "Collected quote from distributor",
    ),
    "printer": (
        "Replaced toner and cleared jam",
        "Reinstalled printer driver",
        "Reconfigured scan-to-email SMTP settings",
        "Cleared print spooler, restarted service",
        "Printer back online, test page OK",
    ),
    "account": (
        "Created AD and M365 accounts",
        "Disabled account, converted mailbox to shared",
        "Reset password, unlocked account",
        "Reset MFA token",
        "Granted access per manager approval",
        "Found stale mapped drive with old password, removed it",
    ),
    "security": (
        "Analysed headers, blocked sender domain",
        "Reset password, revoked sessions",
        "Ran full scan, no further detections",
        "Remote wipe issued via Intune",
        "Reviewed sign-in logs, no compromise found",
        "Applied vendor patch",
    ),
    "backup": (
        "Reran failed backup job, completed OK",
        "Restored folder from last night's snapshot",
        "Expanded backup repository",
        "Checked backup logs, fixed service credentials",
        "Test restore successful",
    ),
    "server": (
        "Cleaned up WinSxS and temp files, 40 GB freed",
        "Extended volume by 100 GB",
        "Renewed certificate, updated bindings",
        "Reviewed GPO processing times",
        "Rebooted after updates, services verified",
    ),
    "software": (
        "Installed and licensed",
        "Repaired installation",
        "Cleared update cache, reinstalled updates",
        "Updated to latest version",
        "Cleared app cache, issue resolved",
    ),
    "phone": (
        "Re-provisioned desk phone",
        "Replaced handset cable",
        "Checked SIP registration, re-registered phone",
        "Rebooted PoE switch port",
    ),
    "project": (
        "Migration planning with stakeholders",
        "Copied department shares, verified permissions",
        "Configured new switch stack",
        "Cutover and post-migration checks",
        "Updated network documentation",
        "Pilot group feedback session",
    ),
}
CONSULTING_NOTES = (
    "Call with customer to review options",
    "Prepared recommendation, sent quote",
    "Security review meeting",
    "Licensing review, true-up proposal",
    "Root cause analysis write-up",
)
PROJECT_NOTES = (
    "Project work: staging and configuration",
    "Project work: documentation and handover",
    "Project work: pilot rollout",
    "Project work: testing with key users",
)
TRIAGE_NOTES = (
    "Initial triage, called user",
    "Remote session, reproduced issue",
    "Triage: gathered logs and screenshots",
)
CLOSING_NOTES = (
    "Verified fix with user, closing",
    "Follow-up call, user confirmed OK",
)
INTERNAL_NOTES = (
    "Internal handover to second-level support",
    "Documented fix in knowledge base",
    "Peer review of change plan",
    "Escalation sync with team lead",
)
NON_ASCII_NOTES: dict[str, tuple[str, ...]] = {
    "ACME": (
        "Rückruf bei Frau Müller, Problem gelöst",
        "Café POS terminal rebooted, receipts print again",
        "Drucker im Büro Süd neu eingerichtet",
        "Zugang für Hr. Jäger freigeschaltet",
    ),
    "GLOBEX": (
        "Overleg met Jörg over VPN-instellingen",
        "Licentie verlengd – bevestiging naar financiën",
    ),
}

# Work without a ticket: (customer, note, service type, first day, last day of the window in October).
# "Monthly patch review" follows Patch Tuesday (2026-10-13).
NO_TICKET_WORK: tuple[tuple[str, str, str, int, int], ...] = (
    ("ACME", "Monthly patch review", "internal", 14, 16),
    ("GLOBEX", "Monthly patch review", "internal", 14, 16),
    ("NORTHWIND", "Monthly patch review", "internal", 14, 16),
    ("INITECH", "Monthly patch review", "internal", 14, 16),
    ("ACME", "Überprüfung der Backups", "remote_support", 1, 31),
    ("ACME", "Quarterly license review, Microsoft 365", "consulting", 1, 31),
    ("GLOBEX", "Backup restore test", "remote_support", 1, 31),
    ("NORTHWIND", "HIPAA security checklist walkthrough", "consulting", 1, 31),
    ("INITECH", "Monitoring alert triage", "remote_support", 1, 31),
    ("ACME", "Updated network documentation", "internal", 1, 31),
    ("NORTHWIND", "Asset inventory update", "internal", 1, 31),
    ("GLOBEX", "Internal handover notes", "internal", 1, 31),
    ("INITECH", "Reviewed firewall logs, nothing unusual", "remote_support", 1, 31),
    ("NORTHWIND", "Monthly patch review, 3 servers rebooted", "remote_support", 14, 16),
    ("ACME", "Renewal reminder: domain and SSL", "internal", 1, 31),
)

DURATIONS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "remote_support": (
        (5, 7, 10, 12, 15, 20, 25, 30, 35, 40, 45, 50, 60, 75, 90, 120, 150),
        (6, 8, 8, 9, 10, 10, 7, 9, 7, 4, 6, 5, 6, 3, 3, 2, 1),
    ),
    "onsite_support": (
        (30, 45, 60, 75, 90, 120, 150, 180, 240, 300, 360),
        (3, 5, 8, 5, 7, 7, 4, 4, 3, 2, 1),
    ),
    "consulting": ((15, 30, 45, 60, 90, 120, 180), (2, 6, 6, 8, 5, 3, 1)),
    "project_work": (
        (30, 60, 90, 120, 180, 240, 300, 360, 420, 480),
        (2, 4, 5, 7, 7, 6, 4, 3, 2, 2),
    ),
    "internal": ((5, 10, 15, 20, 30, 45, 60), (3, 5, 6, 5, 4, 2, 1)),
}


@dataclass
class Ticket:
    seq: int
    customer: Customer
    subject: str
    topic: str
    ticket_type: str
    priority: str
    state: str  # NEW, IN_PROGRESS or DONE
    planned_created: datetime
    span_days: int
    tech: str
    n_slots: int = 0
    created_at: datetime | None = None
    resolved_at: datetime | None = None
    status: str = ""
    ticket_id: str = ""

    def row(self) -> list[str]:
        assert self.created_at is not None
        return [
            self.ticket_id,
            self.customer.customer_id,
            self.subject,
            self.ticket_type,
            self.priority,
            self.status,
            iso(self.created_at),
            iso(self.resolved_at) if self.resolved_at else "",
        ]


@dataclass
class WorkLog:
    seq: int
    customer: Customer
    ticket: Ticket | None
    category: str
    service_type: str
    start: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    duration: int = 0
    user: str = ""
    billable: bool = True
    note: str = ""
    window: tuple[date, date] = (PERIOD_FIRST, PERIOD_LAST)
    fixed: bool = False  # hand-written out-of-period row, not to be altered
    worklog_id: str = ""
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.duration)

    def row(self) -> list[str]:
        values = {
            "worklog_id": self.worklog_id,
            "ticket_id": self.ticket.ticket_id if self.ticket else "",
            "customer_id": self.customer.customer_id,
            "user": self.user,
            "service_type": self.service_type,
            "started_at": iso(self.start),
            "duration_minutes": str(self.duration),
            "billable": "true" if self.billable else "false",
            "note": self.note,
        }
        values.update(self.overrides)
        return [values[column] for column in WORKLOG_COLUMNS]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_to_utc(day: date, minute_of_day: int, tz: ZoneInfo) -> datetime:
    local = datetime.combine(day, time(minute_of_day // 60, minute_of_day % 60), tzinfo=tz)
    return local.astimezone(UTC)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def weighted_sample(rng: random.Random, weights: Sequence[float], k: int) -> list[int]:
    """Indices of k items drawn without replacement, with probability proportional to weight."""
    keys = [rng.random() ** (1.0 / weight) for weight in weights]
    return sorted(sorted(range(len(weights)), key=lambda i: keys[i], reverse=True)[:k])


def pick_tech(rng: random.Random, customer: Customer) -> str:
    return rng.choices(TECHNICIANS, weights=customer.tech_weights)[0]


def pick_duration(rng: random.Random, service_type: str, category: str) -> int:
    values, weights = DURATIONS[service_type]
    while True:
        minutes = rng.choices(values, weights=weights)[0]
        if category != AFTER_HOURS or minutes <= 150:
            return minutes


def pick_minute_of_day(rng: random.Random, category: str, duration: int) -> int:
    if category == BUSINESS:  # starts 08:00-17:55 and, where possible, ends by 18:00
        return 5 * rng.randint(8 * 12, max(8 * 60, 18 * 60 - duration) // 5)
    if category == AFTER_HOURS:
        if rng.random() < 0.25:
            return 5 * rng.randint(6 * 12, 7 * 12 + 9)  # 06:00-07:45
        return 5 * rng.randint(18 * 12, 22 * 12 + 6)  # 18:00-22:30
    return 5 * rng.randint(8 * 12, max(8 * 60, 20 * 60 - duration) // 5)  # weekend daytime


def matching_days(first: date, last: date, category: str) -> list[date]:
    """Days of the window that suit the category, widening the window inside October if none do."""
    for lo, hi in ((first, last), (first, PERIOD_LAST), (PERIOD_FIRST, PERIOD_LAST)):
        days = [
            d
            for d in days_between(max(lo, PERIOD_FIRST), min(hi, PERIOD_LAST))
            if (d.weekday() >= 5) == (category == WEEKEND)
        ]
        if days:
            return days
    raise AssertionError("October always has weekdays and weekends")


def random_created(rng: random.Random, customer: Customer, first: date, last: date, *, office: bool) -> datetime:
    """A ticket creation time: mostly a weekday in office hours, sometimes any time (monitoring alerts)."""
    day = first + timedelta(days=rng.randint(0, (last - first).days))
    if office or rng.random() < 0.85:
        while day.weekday() >= 5:
            day += timedelta(days=1)
        return local_to_utc(day, rng.randint(7 * 60 + 30, 17 * 60 + 30), customer.tz)
    return local_to_utc(day, rng.randint(0, 24 * 60 - 1), customer.tz)


def service_type_for(rng: random.Random, ticket: Ticket) -> str:
    if ticket.topic == "project":
        weights = {"remote_support": 40, "onsite_support": 10, "consulting": 10, "project_work": 40}
    elif ticket.topic in ("hardware", "printer", "phone"):
        weights = {"remote_support": 65, "onsite_support": 32, "consulting": 3, "project_work": 0}
    elif ticket.topic in ("network", "server"):
        weights = {"remote_support": 80, "onsite_support": 8, "consulting": 6, "project_work": 6}
    else:
        weights = {"remote_support": 88, "onsite_support": 4, "consulting": 8, "project_work": 0}
    if ticket.ticket_type == "change":
        weights["project_work"] += 6
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def note_for(rng: random.Random, service_type: str, topic: str) -> str:
    if service_type == "consulting":
        return rng.choice(CONSULTING_NOTES)
    if service_type == "project_work":
        return rng.choice(TOPIC_NOTES["project"] if topic == "project" else PROJECT_NOTES)
    return rng.choice(TOPIC_NOTES[topic])


def make_tickets(rng: random.Random) -> list[Ticket]:
    tickets: list[Ticket] = []

    def add(
        customer: Customer,
        subject: str,
        topic: str,
        ticket_type: str,
        priority: str,
        state: str,
        created: datetime,
        span_days: int,
    ) -> Ticket:
        ticket = Ticket(
            len(tickets),
            customer,
            subject,
            topic,
            ticket_type,
            priority,
            state,
            created,
            span_days,
            pick_tech(rng, customer),
        )
        tickets.append(ticket)
        return ticket

    acme, globex, northwind = CUSTOMER_BY_ID["ACME"], CUSTOMER_BY_ID["GLOBEX"], CUSTOMER_BY_ID["NORTHWIND"]
    # Four fixed tickets that carry the out-of-period work logs.
    add(
        acme,
        "Backup job failed on ACME-FS01",
        "backup",
        "incident",
        "high",
        DONE,
        local_to_utc(date(2026, 9, 29), 9 * 60 + 12, acme.tz),
        3,
    )
    add(
        northwind,
        "VPN drops every 20 minutes",
        "network",
        "incident",
        "high",
        DONE,
        local_to_utc(date(2026, 9, 30), 16 * 60 + 40, northwind.tz),
        2,
    )
    add(
        globex,
        "Replace core switch in Rotterdam office",
        "project",
        "change",
        "normal",
        IN_PROGRESS,
        local_to_utc(date(2026, 10, 14), 10 * 60 + 3, globex.tz),
        0,
    )
    add(
        acme,
        "Upgrade ACME-APP02 to Windows Server 2025",
        "project",
        "change",
        "normal",
        IN_PROGRESS,
        local_to_utc(date(2026, 10, 19), 14 * 60 + 27, acme.tz),
        0,
    )
    n_fixed = {"ACME": 2, "GLOBEX": 1, "NORTHWIND": 1, "INITECH": 0}

    plans: list[tuple[Customer, tuple[str, str, str]]] = []
    for customer in CUSTOMERS:
        templates = list(SUBJECTS)
        rng.shuffle(templates)
        plans.extend((customer, templates[i]) for i in range(customer.n_tickets - n_fixed[customer.customer_id]))
    rng.shuffle(plans)
    states = [NEW] * N_NEW + [IN_PROGRESS] * N_IN_PROGRESS + [DONE] * (len(plans) - N_NEW - N_IN_PROGRESS)
    rng.shuffle(states)

    spans = {
        "incident": (0, 0, 1, 1, 2, 3, 5),
        "service_request": (0, 1, 2, 3, 5, 7),
        "change": (1, 3, 5, 7, 10, 14),
        "problem": (5, 7, 10, 14, 21),
    }
    for (customer, (template, topic, usual_type)), state in zip(plans, states, strict=True):
        server = rng.choice(("FS01", "DC01", "APP02", "SQL01"))
        subject = template.format(
            n=rng.choice((5, 10, 15, 20, 30)),
            dept=rng.choice(customer.departments),
            floor=rng.choice(("ground", "1st", "2nd", "3rd")),
            person=rng.choice(customer.people),
            loc=rng.choice(customer.locations),
            server=f"{customer.customer_id}-{server}",
            pc=f"{customer.customer_id}-LT{rng.randint(1, 120):03d}",
            app=rng.choice(customer.apps),
            domain=customer.domain,
        )
        ticket_type = usual_type
        if topic != "project" and rng.random() < 0.12:
            ticket_type = rng.choice(("incident", "service_request", "change", "problem"))
        priority = rng.choices(("low", "normal", "high", "urgent"), weights=(14, 60, 19, 7))[0]
        if state == NEW:
            created = random_created(rng, customer, date(2026, 10, 26), date(2026, 10, 30), office=True)
        elif state == IN_PROGRESS:
            created = random_created(rng, customer, date(2026, 10, 12), date(2026, 10, 30), office=False)
        elif rng.random() < 0.03:
            created = random_created(rng, customer, date(2026, 9, 24), date(2026, 9, 30), office=False)
        else:
            created = random_created(rng, customer, date(2026, 10, 1), date(2026, 10, 30), office=False)
        span = rng.choice((10, 14, 21, 28)) if topic == "project" else rng.choice(spans[ticket_type])
        add(customer, subject, topic, ticket_type, priority, state, created, span)
    return tickets


def ticket_window(ticket: Ticket) -> tuple[date, date]:
    """Local days (inside October) on which the ticket's work happens."""
    first = ticket.planned_created.astimezone(ticket.customer.tz).date()
    last = PERIOD_LAST if ticket.state == IN_PROGRESS else first + timedelta(days=ticket.span_days)
    return max(first, PERIOD_FIRST), max(min(last, PERIOD_LAST), PERIOD_FIRST)


def allocate_slots(rng: random.Random, tickets: list[Ticket]) -> None:
    """Give every ticket with work at least one work log and spread the rest by ticket size."""
    active = [t for t in tickets if t.state != NEW]
    type_weight = {"incident": 1.0, "service_request": 1.0, "change": 1.8, "problem": 2.0}
    weights = [
        type_weight[t.ticket_type]
        * (2.0 if t.topic == "project" else 1.0)
        * rng.choice((0.5, 1.0, 1.0, 1.0, 1.5, 2.0, 3.0))
        * min(1.0, ((ticket_window(t)[1] - ticket_window(t)[0]).days + 1) / (t.span_days + 1))
        for t in active
    ]
    for ticket in active:
        ticket.n_slots = 1
    for ticket in rng.choices(active, weights=weights, k=N_TICKETED_IN_PERIOD - len(active)):
        ticket.n_slots += 1


def fixed_out_of_period(tickets: list[Ticket]) -> list[WorkLog]:
    """The four good rows that belong to September or November in the customer's local time."""
    specs = (  # ticket seq, local day, local minute of day, user, service, minutes, note
        (
            0,
            date(2026, 9, 30),
            15 * 60,
            "anna.schmidt",
            "remote_support",
            45,
            "Checked backup logs, fixed service credentials",
        ),
        (1, date(2026, 9, 30), 20 * 60 + 30, "ben.carter", "remote_support", 35, "Adjusted DPD timeout on firewall"),
        (
            2,
            date(2026, 11, 1),
            30,
            "emil.novak",
            "project_work",
            60,
            "Maintenance window: switch cutover prep, config backup taken",
        ),
        (
            3,
            date(2026, 11, 1),
            90,
            "anna.schmidt",
            "project_work",
            45,
            "Maintenance window: in-place upgrade, snapshot taken",
        ),
    )
    rows = []
    for seq, day, minute, user, service_type, minutes, note in specs:
        ticket = tickets[seq]
        row = WorkLog(
            -1,
            ticket.customer,
            ticket,
            "",
            service_type,
            fixed=True,
            start=local_to_utc(day, minute, ticket.customer.tz),
            duration=minutes,
            user=user,
            note=note,
        )
        rows.append(row)
    return rows


def place(rng: random.Random, row: WorkLog, busy: dict[str, list[tuple[datetime, datetime]]]) -> None:
    """Choose user, day and time for a row so the technician is not booked twice at once."""
    preferred = row.ticket.tech if row.ticket else pick_tech(rng, row.customer)
    first, last = row.window
    widened = ((first, last), (first - timedelta(days=3), last + timedelta(days=3)), (PERIOD_FIRST, PERIOD_LAST))
    for attempt in range(300):  # a busy technician or a full day widens the window step by step
        days = matching_days(*widened[min(attempt // 100, 2)], row.category)
        user = preferred if attempt % 100 < 20 and rng.random() < 0.7 else pick_tech(rng, row.customer)
        start = local_to_utc(rng.choice(days), pick_minute_of_day(rng, row.category, row.duration), row.customer.tz)
        end = start + timedelta(minutes=row.duration)
        if end > LATEST_END or any(s < end and start < e for s, e in busy[user]):
            continue
        row.user, row.start = user, start
        busy[user].append((start, end))
        return
    raise RuntimeError(f"could not place work log {row.seq}")


def make_worklogs(rng: random.Random, tickets: list[Ticket]) -> list[WorkLog]:
    rows: list[WorkLog] = []
    for ticket in tickets:
        for _ in range(ticket.n_slots):
            service_type = service_type_for(rng, ticket)
            rows.append(WorkLog(len(rows), ticket.customer, ticket, BUSINESS, service_type))
    for customer_id, note, service_type, first, last in NO_TICKET_WORK:
        window = (date(2026, 10, first), date(2026, 10, last))
        rows.append(
            WorkLog(
                len(rows),
                CUSTOMER_BY_ID[customer_id],
                None,
                BUSINESS,
                service_type,
                billable=service_type != "internal",
                note=note,
                window=window,
            )
        )

    # After-hours work leans towards urgent tickets, weekend work towards changes and projects.
    after_weights = [{"urgent": 5.0, "high": 3.0}.get(r.ticket.priority, 1.0) if r.ticket else 1.0 for r in rows]
    for index in weighted_sample(rng, after_weights, N_AFTER_HOURS):
        rows[index].category = AFTER_HOURS
    weekend_weights = [
        0.001
        if r.category != BUSINESS
        else 4.0
        if r.ticket and (r.ticket.ticket_type == "change" or r.ticket.topic == "project")
        else 3.0
        if r.ticket and r.ticket.priority == "urgent"
        else 1.0
        for r in rows
    ]
    for index in weighted_sample(rng, weekend_weights, N_WEEKEND):
        rows[index].category = WEEKEND

    busy: dict[str, list[tuple[datetime, datetime]]] = {tech: [] for tech in TECHNICIANS}
    fixed = fixed_out_of_period(tickets)
    for row in fixed:
        busy[row.user].append((row.start, row.end))
    for row in rows:
        if row.ticket:
            row.window = ticket_window(row.ticket)
            row.note = note_for(rng, row.service_type, row.ticket.topic)
        row.duration = pick_duration(rng, row.service_type, row.category)
        place(rng, row, busy)
    for row in fixed:
        row.seq = len(rows)
        rows.append(row)
    return rows


def finish_tickets(rng: random.Random, tickets: list[Ticket], rows: list[WorkLog]) -> None:
    """Derive created_at/resolved_at/status from the work logs, add triage and closing notes, number."""
    by_ticket: dict[int, list[WorkLog]] = {t.seq: [] for t in tickets}
    for row in rows:
        if row.ticket:
            by_ticket[row.ticket.seq].append(row)
    for ticket in tickets:
        work = sorted(by_ticket[ticket.seq], key=lambda r: (r.start, r.seq))
        ticket.created_at = ticket.planned_created
        if work:
            first_start = work[0].start - timedelta(minutes=rng.randint(3, 90))
            ticket.created_at = min(ticket.planned_created, first_start)
            if not work[0].fixed and work[0].service_type == "remote_support" and rng.random() < 0.4:
                work[0].note = rng.choice(TRIAGE_NOTES)
        if ticket.state == DONE:
            last_end = max(r.end for r in work)
            gap = rng.choice((3, 8, 15, 30, 45, 90, 180, 600, 1500)) + rng.randint(0, 4)
            ticket.resolved_at = min(last_end + timedelta(minutes=gap), EXPORTED_AT - timedelta(minutes=2))
            closed_likely = ticket.resolved_at < datetime(2026, 10, 24, tzinfo=UTC)
            ticket.status = "closed" if (rng.random() < 0.85) == closed_likely else "resolved"
            if (
                len(work) >= 2
                and not work[-1].fixed
                and work[-1].service_type == "remote_support"
                and rng.random() < 0.5
            ):
                work[-1].note = rng.choice(CLOSING_NOTES)
        else:
            ticket.status = ticket.state
    for number, ticket in enumerate(sorted(tickets, key=lambda t: (t.created_at, t.seq)), start=1001):
        ticket.ticket_id = f"T-{number}"
    tickets.sort(key=lambda t: t.ticket_id)


def choose_bad_rows(rows: list[WorkLog]) -> list[WorkLog]:
    """Seven ordinary rows, spread through the file, that become bad rows a-g."""
    eligible = [
        i
        for i, r in enumerate(rows)
        if r.ticket and not r.fixed and r.category == BUSINESS and r.service_type != "internal"
    ]
    chosen: list[int] = []
    for fraction in (0.09, 0.22, 0.35, 0.48, 0.61, 0.74, 0.87):
        target = int(fraction * len(rows))
        chosen.append(min((i for i in eligible if i not in chosen), key=lambda i: (abs(i - target), i)))
    return [rows[i] for i in sorted(chosen)]


def make_bad(row: WorkLog, letter: str) -> None:
    row.overrides = {
        "a": {"duration_minutes": "-30"},
        "b": {"duration_minutes": "2000"},
        "c": {"customer_id": "HOOLI", "ticket_id": ""},
        "d": {"service_type": "gardening"},
        "e": {"started_at": "2026-10-3xT10:00:00Z"},
        "f": {"duration_minutes": "1h30"},
        "g": {"customer_id": ""},
    }[letter]


def adjust_good_rows(rng: random.Random, good: list[WorkLog]) -> None:
    """Mark internal and goodwill work as non-billable and give a few rows non-ASCII notes."""
    candidates = [r for r in good if r.ticket and not r.fixed]
    for index in sorted(rng.sample(range(len(candidates)), N_TICKETED_INTERNAL)):
        row = candidates[index]
        row.service_type, row.billable = "internal", False
        row.duration = min(row.duration, rng.choice((10, 15, 20, 30)))
        row.note = rng.choice(INTERNAL_NOTES)
    remote = [r for r in candidates if r.service_type == "remote_support"]
    for index in sorted(rng.sample(range(len(remote)), N_GOODWILL)):
        row = remote[index]
        row.billable = False
        row.note = rng.choice(
            (f"Goodwill: {row.note}", f"Warranty rework: {row.note}", f"{row.note} (no charge, goodwill)")
        )
    for customer_id, notes in NON_ASCII_NOTES.items():
        pool = [r for r in remote if r.billable and r.customer.customer_id == customer_id]
        for note, index in zip(notes, sorted(rng.sample(range(len(pool)), len(notes))), strict=True):
            pool[index].note = note


def write_csv(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    tickets = make_tickets(rng)
    allocate_slots(rng, tickets)
    rows = make_worklogs(rng, tickets)
    finish_tickets(rng, tickets, rows)

    rows.sort(key=lambda r: (r.start, r.seq))
    bad = choose_bad_rows(rows)
    bad_seqs = {r.seq for r in bad}
    good = [r for r in rows if r.seq not in bad_seqs]
    adjust_good_rows(rng, good)
    for number, row in enumerate(good, start=1):
        row.worklog_id = f"WL-{number:05d}"
    for number, (row, letter) in enumerate(zip(bad, "abcdefg", strict=True), start=FIRST_BAD_NUMBER):
        row.worklog_id = f"WL-{number:05d}"
        make_bad(row, letter)

    # h: the same id as an earlier good row, different duration, re-sent further down the file.
    original = next(r for r in good if r.worklog_id == DUPLICATED_ID)
    assert original.ticket and not original.fixed
    duplicate = WorkLog(**{**original.__dict__, "overrides": {}})
    duplicate.duration = original.duration + 25
    output = [r.row() for r in rows]
    output.insert(int(0.68 * len(output)), duplicate.row())

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_json(
        OUT_DIR / "manifest.json",
        {
            "source": "files",
            "instance": "sample-export",
            "period": PERIOD,
            "exported_at": iso(EXPORTED_AT),
        },
    )
    write_json(OUT_DIR / "customers.json", [c.export() for c in CUSTOMERS])
    write_csv(OUT_DIR / "tickets.csv", TICKET_COLUMNS, [t.row() for t in tickets])
    write_csv(OUT_DIR / "worklogs.csv", WORKLOG_COLUMNS, output)
    print(
        f"wrote {OUT_DIR}: {len(CUSTOMERS)} customers, {len(tickets)} tickets, "
        f"{len(output)} work log rows ({len(good)} good, {len(bad) + 1} bad)"
    )


if __name__ == "__main__":
    main()
