"""A real Redmine 5.0 (Debian's packages, SQLite, puma) for the integration tests, and seed data over its REST API.

`redmine_server()` runs `redmine-setup.sh` (once per process) on a pristine database of the tests' own (never
Debian's default instance's, which may hold anybody's projects), serves a fresh copy of it with puma as www-data on
a free 127.0.0.1 port, and stops puma and removes the copy at exit. So every server starts with no projects; within
one, every `seed()` call creates its own projects (identifiers end with its tag), and tests scope their queries to
the projects of their own seed.
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from billing.processes import free_port

REDMINE_DIR = Path("/usr/share/redmine")
SETUP_SCRIPT = Path(__file__).with_name("redmine-setup.sh")
# The pristine database: migrated, default data, REST API on, the API key, custom fields, activities; no projects.
# Set up once per machine (about 30 s), checked once per process (a few seconds); each server serves a copy.
PRISTINE_DATABASE = Path(
    os.environ.get("T2I_REDMINE_PRISTINE_DB", "/var/cache/ticket-to-invoice/redmine/pristine.sqlite3")
)
# The lock redmine-setup.sh holds while it writes: a copy is taken under it, never half-written.
SETUP_LOCK = Path(os.environ.get("TMPDIR") or "/tmp") / "t2i-redmine-setup.lock"
# Redmine ignores API keys that are not letters and digits only (and a token is 40 characters at most).
DEFAULT_API_KEY = "t2itestapikey000000000000000000000000000"
# Seeded months and their number of time entries: the billed month needs more than one page (limit caps at 100).
DEFAULT_MONTHS: Mapping[str, int] = {"2026-09": 6, "2026-10": 130, "2026-11": 6}
SEED_ACTIVITIES = ("Remote support", "On-site support", "Consulting", "Project work", "Internal")
SEED_USERS = ("t2i-alice", "t2i-bob")

_setup_lock = threading.Lock()
_setup_done: dict[str, Any] = {}  # api_key, custom_fields


@dataclass(frozen=True)
class RedmineInstance:
    url: str
    api_key: str
    # "time_entry:Billable", "time_entry:Invoice number", "issue:Invoice number" -> custom field id
    custom_fields: dict[str, int]
    database: Path | None = None  # the SQLite file this server serves (a copy of the pristine one)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Redmine-API-Key": self.api_key}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)


@dataclass(frozen=True)
class SeededTimeEntry:
    id: int
    project: str  # project identifier
    issue_id: int | None
    user_id: int
    activity: str
    hours: float
    spent_on: date
    billable: bool
    comments: str


@dataclass(frozen=True)
class SeedSummary:
    tag: str
    projects: dict[str, int]  # identifier -> id, customers and subprojects
    customers: list[str]  # top-level project identifiers
    parents: dict[str, str]  # subproject identifier -> parent identifier
    issues: dict[str, list[int]]  # project identifier -> issue ids
    closed_issues: set[int]
    users: dict[str, int]  # login -> id (admin included)
    activities: dict[str, int]  # time entry activity name -> id
    time_entries: dict[int, SeededTimeEntry] = field(repr=False)

    def month(self, month: str) -> list[SeededTimeEntry]:
        """The seeded time entries spent in a month ("2026-10")."""
        return [entry for entry in self.time_entries.values() if entry.spent_on.strftime("%Y-%m") == month]

    @property
    def time_entries_by_month(self) -> dict[str, list[int]]:
        months: dict[str, list[int]] = {}
        for entry in self.time_entries.values():
            months.setdefault(entry.spent_on.strftime("%Y-%m"), []).append(entry.id)
        return months

    @property
    def non_billable(self) -> set[int]:
        return {entry.id for entry in self.time_entries.values() if not entry.billable}

    @property
    def without_issue(self) -> set[int]:
        return {entry.id for entry in self.time_entries.values() if entry.issue_id is None}


def month_range(month: str) -> tuple[date, date]:
    """First and last day of "YYYY-MM"."""
    year, number = (int(part) for part in month.split("-"))
    return date(year, number, 1), date(year, number, calendar.monthrange(year, number)[1])


def new_tag() -> str:
    """A tag for `seed()`: lowercase letters and digits, unique per call."""
    return f"t{int(time.time()):x}{secrets.token_hex(3)}"


def setup_redmine(api_key: str = DEFAULT_API_KEY) -> dict[str, int]:
    """Run redmine-setup.sh (install, configure the pristine database) once per process; return the custom field
    ids. The admin user has one API key: setting up with another key replaces it (and runs the script again).
    """
    with _setup_lock:
        if _setup_done.get("api_key") != api_key:
            result = subprocess.run(
                ["bash", str(SETUP_SCRIPT), api_key, str(PRISTINE_DATABASE)],
                capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(f"{SETUP_SCRIPT.name} failed ({result.returncode}):\n{result.stderr[-4000:]}")
            fields = json.loads(result.stdout.strip().splitlines()[-1])
            _setup_done.clear()
            _setup_done.update(api_key=api_key, custom_fields={str(k): int(v) for k, v in fields.items()})
        return dict(_setup_done["custom_fields"])


def _copy_pristine(folder: Path) -> Path:
    """A copy of the pristine database in ``folder`` (created), which www-data can write (journal files included)."""
    folder.mkdir(mode=0o700)
    copy = folder / "redmine.sqlite3"
    with SETUP_LOCK.open("a") as lock:
        with suppress(PermissionError):
            SETUP_LOCK.chmod(0o666)  # as the script leaves it: anyone may take it
        fcntl.flock(lock, fcntl.LOCK_EX)  # not while redmine-setup.sh writes it
        source = sqlite3.connect(f"file:{PRISTINE_DATABASE}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)  # consistent whatever the journal mode
        finally:
            target.close()
            source.close()
    if os.geteuid() == 0:
        www = pwd.getpwnam("www-data")
        for path in (folder, copy):
            os.chown(path, www.pw_uid, www.pw_gid)
    else:  # puma runs as www-data through sudo: let it write here
        folder.chmod(0o777)
        copy.chmod(0o666)
    return copy



def _start_puma(port: int, log: Path, database: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(log.parent),
        "LANG": "C.UTF-8",
        "RAILS_ENV": "production",
        "REDMINE_INSTANCE": "default",  # its secret key, log and cache folders; the database is ours:
        "DATABASE_URL": f"sqlite3:{database}",  # Rails takes it over the instance's database.yml
    }
    command = ["rackup", "-E", "production", "-o", "127.0.0.1", "-p", str(port), "-O", "Threads=1:1", "config.ru"]
    with log.open("ab") as out:
        if os.geteuid() == 0:
            return subprocess.Popen(
                command, cwd=REDMINE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                user="www-data", group="www-data", extra_groups=[], start_new_session=True,
            )  # fmt: skip
        env_args = [f"{key}={value}" for key, value in env.items()]
        return subprocess.Popen(
            ["sudo", "-n", "-u", "www-data", "env", "-i", *env_args, *command], cwd=REDMINE_DIR,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # sudo without root: sudo relays the signal to puma
            process.send_signal(sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    if os.geteuid() == 0:  # leftovers of the session, if puma forked anything
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _wait_ready(process: subprocess.Popen[bytes], url: str, api_key: str, timeout: float) -> bool:
    """True when /users/current.json answers 200 with the key; False when the server exited first."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"X-Redmine-API-Key": api_key}, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                response = client.get("/users/current.json")
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code == 200:
                return True
            if response.status_code == 401:
                raise RuntimeError(f"Redmine at {url} refuses the API key (401): was redmine-setup.sh run with it?")
            time.sleep(0.2)
    raise TimeoutError(f"Redmine at {url} did not answer within {timeout:.0f} s")


@contextmanager
def redmine_server(api_key: str = DEFAULT_API_KEY, startup_timeout: float = 120.0) -> Iterator[RedmineInstance]:
    """Set Redmine up (once per process), serve a fresh copy of the pristine database with one puma thread on a
    free port, stop it and remove the copy at exit.

    puma runs as www-data in its own session and is stopped by process group (SIGTERM, then SIGKILL). Each server
    starts with no projects at all, whatever Debian's default instance or an earlier session holds.
    """
    custom_fields = setup_redmine(api_key)
    workdir = Path(tempfile.mkdtemp(prefix="t2i-redmine-"))
    workdir.chmod(0o755)  # puma's HOME (www-data)
    log = workdir / "puma.log"
    database = _copy_pristine(workdir / "db")
    for _attempt in range(3):  # the free port can be taken before puma binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = _start_puma(port, log, database)
        try:
            ready = _wait_ready(process, url, api_key, startup_timeout)
        except BaseException:
            _stop(process)
            raise
        if ready:
            break
        _stop(process)
        if "Address already in use" not in log.read_text(errors="replace"):
            break
    else:
        ready = False
    if not ready:
        raise RuntimeError(f"Redmine (puma) exited at start-up; {log}:\n{log.read_text(errors='replace')[-4000:]}")
    try:
        yield RedmineInstance(url=url, api_key=api_key, custom_fields=custom_fields, database=database)
    finally:
        _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


# --- seed data ---------------------------------------------------------------------------------------------------


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        request = response.request
        raise RuntimeError(f"{request.method} {request.url} -> {response.status_code}: {response.text[:2000]}")
    return response


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _check(client.post(path, json=body)).json()
    return result


def _by_name(client: httpx.Client, path: str, key: str) -> dict[str, int]:
    return {str(item["name"]): int(item["id"]) for item in _check(client.get(path)).json()[key]}


def _user(client: httpx.Client, login: str) -> int:
    """Find or create a user (shared by all seeds; created once per database)."""
    for _attempt in range(2):
        users = _check(client.get("/users.json", params={"name": login, "status": ""})).json()["users"]
        for user in users:
            if user["login"] == login:
                return int(user["id"])
        first = login.removeprefix("t2i-").capitalize()
        response = client.post(
            "/users.json",
            json={
                "user": {
                    "login": login, "firstname": first, "lastname": "Tester", "mail": f"{login}@example.invalid",
                    "password": secrets.token_hex(12), "mail_notification": "none",
                }
            },
        )  # fmt: skip
        if response.status_code == 201:
            return int(response.json()["user"]["id"])
        if response.status_code != 422:  # 422: created meanwhile by another process, look it up again
            _check(response)
    raise RuntimeError(f"cannot find or create the Redmine user {login}")


def seed(instance: RedmineInstance, tag: str, months: Mapping[str, int] | None = None) -> SeedSummary:
    """Create fresh projects, issues and time entries over the REST API; `tag` makes the identifiers unique.

    Customers `acme-<tag>` (with the subproject `acme-ops-<tag>`), `globex-<tag>` and `initech-<tag>`; issues of
    every tracker and several priorities in each project (every third one closed after its time was logged);
    `months` maps "YYYY-MM" to a number of time entries (default: 6 in 2026-09, 130 in 2026-10, 6 in 2026-11).
    Time entries cycle through the projects (acme gets most), the users (admin, t2i-alice, t2i-bob), the
    activities in SEED_ACTIVITIES and hours with decimals; every 7th has no issue, every 5th is not billable.
    About 8 s for the default months.
    """
    if not tag.isascii() or not tag.isalnum() or tag != tag.lower():
        raise ValueError(f"tag must be lowercase letters and digits: {tag!r}")
    months = DEFAULT_MONTHS if months is None else months
    billable_field = instance.custom_fields["time_entry:Billable"]
    with instance.client() as client:
        trackers = _by_name(client, "/trackers.json", "trackers")
        priorities = _by_name(client, "/enumerations/issue_priorities.json", "issue_priorities")
        activities = _by_name(client, "/enumerations/time_entry_activities.json", "time_entry_activities")
        statuses = _check(client.get("/issue_statuses.json")).json()["issue_statuses"]
        closed_status = next(int(s["id"]) for s in statuses if s.get("is_closed"))
        roles = _by_name(client, "/roles.json", "roles")
        missing = [name for name in SEED_ACTIVITIES if name not in activities]
        if missing or "Developer" not in roles:
            raise RuntimeError(f"Redmine lacks activities {missing} or the Developer role: run redmine-setup.sh")

        users = {"admin": int(_check(client.get("/users/current.json")).json()["user"]["id"])}
        users.update({login: _user(client, login) for login in SEED_USERS})

        layout = [  # identifier, name, parent, number of issues
            (f"acme-{tag}", f"Acme {tag}", None, 6),
            (f"acme-ops-{tag}", f"Acme operations {tag}", f"acme-{tag}", 3),
            (f"globex-{tag}", f"Globex {tag}", None, 4),
            (f"initech-{tag}", f"Initech {tag}", None, 4),
        ]
        projects: dict[str, int] = {}
        parents: dict[str, str] = {}
        for identifier, name, parent, _ in layout:
            body: dict[str, Any] = {
                "name": name, "identifier": identifier, "is_public": False,
                "enabled_module_names": ["issue_tracking", "time_tracking"], "tracker_ids": list(trackers.values()),
            }  # fmt: skip
            if parent:
                body["parent_id"] = projects[parent]
                parents[identifier] = parent
            projects[identifier] = int(_post(client, "/projects.json", {"project": body})["project"]["id"])
            for login in SEED_USERS:  # time can be logged for members with the log_time permission only
                membership = {"membership": {"user_id": users[login], "role_ids": [roles["Developer"]]}}
                _post(client, f"/projects/{identifier}/memberships.json", membership)

        tracker_cycle = [trackers[name] for name in ("Support", "Bug", "Feature") if name in trackers]
        priority_cycle = list(priorities.values())
        issues: dict[str, list[int]] = {}
        to_close: list[int] = []
        number = 0
        for identifier, name, _, count in layout:
            issues[identifier] = []
            for index in range(count):
                tracker = tracker_cycle[number % len(tracker_cycle)]
                issue = {
                    "project_id": projects[identifier], "tracker_id": tracker,
                    "priority_id": priority_cycle[number % len(priority_cycle)],
                    "subject": f"{name}: ticket {index + 1}", "description": f"Seeded by tests ({tag}).",
                }  # fmt: skip
                issue_id = int(_post(client, "/issues.json", {"issue": issue})["issue"]["id"])
                issues[identifier].append(issue_id)
                if index % 3 == 2:
                    to_close.append(issue_id)
                number += 1

        share = {f"acme-{tag}": 4, f"acme-ops-{tag}": 2}  # of 8: globex and initech 1 each
        weights = [identifier for identifier, *_ in layout for _ in range(share.get(identifier, 1))]
        hours_cycle = (0.25, 1.5, 0.75, 2.0, 1.0, 0.5, 3.25, 1.25, 4.0, 0.75, 2.5)  # 11: no pattern with the others
        logins = ["admin", *SEED_USERS]
        entries: dict[int, SeededTimeEntry] = {}
        serial = 0
        for month, count in months.items():
            first, last = month_range(month)
            for index in range(count):
                identifier = weights[serial % len(weights)]
                spent_on = first.replace(day=1 + (index * 3 + serial) % last.day)
                issue_id = None if serial % 7 == 3 else issues[identifier][serial % len(issues[identifier])]
                billable = serial % 5 != 4
                login = logins[serial % len(logins)]
                activity = SEED_ACTIVITIES[serial % len(SEED_ACTIVITIES)]
                hours = hours_cycle[serial % len(hours_cycle)]
                comments = f"{tag} {month} #{index + 1}: {activity.lower()}"
                body = {
                    "spent_on": spent_on.isoformat(), "hours": hours, "activity_id": activities[activity],
                    "user_id": users[login], "comments": comments,
                    "custom_fields": [{"id": billable_field, "value": "1" if billable else "0"}],
                }  # fmt: skip
                if issue_id is None:
                    body["project_id"] = projects[identifier]
                else:
                    body["issue_id"] = issue_id
                entry_id = int(_post(client, "/time_entries.json", {"time_entry": body})["time_entry"]["id"])
                entries[entry_id] = SeededTimeEntry(
                    id=entry_id, project=identifier, issue_id=issue_id, user_id=users[login], activity=activity,
                    hours=hours, spent_on=spent_on, billable=billable, comments=comments,
                )  # fmt: skip
                serial += 1

        for issue_id in to_close:
            _check(client.put(f"/issues/{issue_id}.json", json={"issue": {"status_id": closed_status}}))

    return SeedSummary(
        tag=tag, projects=projects, customers=[i for i, _, parent, _ in layout if parent is None], parents=parents,
        issues=issues, closed_issues=set(to_close), users=users, activities=activities, time_entries=entries,
    )  # fmt: skip
