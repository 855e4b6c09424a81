"""The source poller: Redmine's changes since a cursor (against a real Redmine 5.0), a file drop's new exports, the
cursor kept in the ledger, and one run of the flow that puts its event on a Prefect server."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.events import EXPORT_READY, TICKET_RESOLVED, WORKLOG_CHANGED, BillingEvent
from billing.ledger import Ledger
from billing.settings import Settings
from connectors.filedrop import FileDropSource
from connectors.polling import Changes, parse_utc
from connectors.redmine import RedmineSource
from flows.poll import poll, poll_source
from rules.schema import RedmineMapping
from tests.conftest import DEMO_RULES, SAMPLE
from tests.system.redmine import RedmineInstance, SeedSummary, new_tag, seed

INSTANCE = "redmine-test"  # a stable instance name: resource ids do not carry the test server's port


# --- Redmine ------------------------------------------------------------------------------------------------------


@pytest.fixture
def seeded(redmine: RedmineInstance) -> SeedSummary:
    """Fresh projects whose whole history (issues closed, time logged) lies three days back: older than a first poll
    looks, so only what a test does afterwards is new."""
    summary = seed(redmine, new_tag(), months={"2026-11": 4})
    backdate(redmine, summary, datetime.now(UTC) - timedelta(days=3))
    return summary


@pytest.fixture
def source(redmine: RedmineInstance, seeded: SeedSummary) -> Iterator[RedmineSource]:
    mapping = RedmineMapping(projects=seeded.customers)  # this test's projects only (the Redmine is shared)
    redmine_source = RedmineSource(redmine.url, redmine.api_key, mapping=mapping, instance=INSTANCE)
    yield redmine_source
    redmine_source.http.close()


def _sql(redmine: RedmineInstance, statement: str, *args: Any) -> None:
    """Write Redmine's own database: the only way to set a timestamp (tests only; puma reads it fresh per request)."""
    assert redmine.database is not None
    with sqlite3.connect(redmine.database, timeout=30) as db:
        db.execute(statement, args)
    db.close()


def _db_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.000000")


def backdate(redmine: RedmineInstance, summary: SeedSummary, moment: datetime) -> None:
    projects = ",".join(str(pid) for pid in summary.projects.values())
    at = _db_time(moment)
    _sql(redmine, f"UPDATE issues SET created_on = ?, updated_on = ?, closed_on = CASE WHEN closed_on IS NULL "
                  f"THEN NULL ELSE ? END WHERE project_id IN ({projects})", at, at, at)  # fmt: skip
    _sql(redmine, f"UPDATE time_entries SET created_on = ?, updated_on = ? WHERE project_id IN ({projects})", at, at)


def _closed_status(redmine: RedmineInstance) -> int:
    with redmine.client() as client:
        statuses = client.get("/issue_statuses.json").json()["issue_statuses"]
    return next(int(s["id"]) for s in statuses if s.get("is_closed"))


def close(redmine: RedmineInstance, issue_id: int) -> None:
    with redmine.client() as client:
        response = client.put(f"/issues/{issue_id}.json", json={"issue": {"status_id": _closed_status(redmine)}})
        assert response.status_code == 204, response.text


def open_issues(seeded: SeedSummary, project: str) -> list[int]:
    return [i for i in seeded.issues[project] if i not in seeded.closed_issues]


def log_time(redmine: RedmineInstance, seeded: SeedSummary, issue_id: int, hours: float = 1.5) -> dict[str, Any]:
    body = {"issue_id": issue_id, "hours": hours, "activity_id": seeded.activities["Consulting"],
            "spent_on": datetime.now(UTC).date().isoformat(), "comments": "logged after the first poll"}  # fmt: skip
    with redmine.client() as client:
        response = client.post("/time_entries.json", json={"time_entry": body})
        assert response.status_code == 201, response.text
        entry: dict[str, Any] = response.json()["time_entry"]
        return entry


def edit_time(redmine: RedmineInstance, entry_id: int, hours: float) -> None:
    time.sleep(1.1)  # updated_on has whole seconds: make the edit a new one
    with redmine.client() as client:
        response = client.put(f"/time_entries/{entry_id}.json", json={"time_entry": {"hours": hours}})
        assert response.status_code == 204, response.text


def changes(source: RedmineSource, cursor: dict[str, Any] | None) -> Changes:
    return source.changes_since(cursor, datetime.now(UTC))


def names(result: Changes) -> list[tuple[str, str]]:
    return sorted((e.event, e.worklog or e.ticket) for e in result.events)


@pytest.mark.integration
def test_first_poll_emits_only_what_changed_in_its_lookback(
    redmine: RedmineInstance, seeded: SeedSummary, source: RedmineSource
) -> None:
    issue = open_issues(seeded, seeded.customers[0])[0]
    close(redmine, issue)
    entry = log_time(redmine, seeded, open_issues(seeded, seeded.customers[1])[0])

    first = changes(source, None)

    # Not the seeded history (closed issues, 4 time entries, three days old): only today's two changes.
    assert names(first) == sorted([(TICKET_RESOLVED, str(issue)), (WORKLOG_CHANGED, str(entry["id"]))])
    assert first.since is not None and datetime.now(UTC) - first.since < timedelta(days=1, minutes=1)
    assert set(first.cursor) == {"since", "seen"}
    assert f"issue:{issue}@" in " ".join(first.cursor["seen"])  # closed in the lag window: remembered


@pytest.mark.integration
def test_closing_an_issue_emits_one_ticket_resolved(
    redmine: RedmineInstance, seeded: SeedSummary, source: RedmineSource
) -> None:
    cursor = changes(source, None).cursor
    acme, ops = seeded.customers[0], next(iter(seeded.parents))  # ops is a subproject of acme: billed to acme
    issue = open_issues(seeded, ops)[0]
    close(redmine, issue)

    result = changes(source, cursor)

    assert len(result.events) == 1
    event = result.events[0]
    assert event.event == TICKET_RESOLVED
    assert event.resource() == {
        "prefect.resource.id": f"t2i.ticket.redmine.{INSTANCE}.{issue}", "t2i.source": "redmine",
        "t2i.instance": INSTANCE, "t2i.ticket": str(issue), "t2i.customer": acme,
    }  # fmt: skip
    assert event.payload["project"] == ops and event.payload["status"] == "Closed"
    assert parse_utc(event.payload["closed_on"]) > datetime.now(UTC) - timedelta(minutes=1)

    # A note on a closed issue (what the write-back adds after invoicing) bumps its updated_on, not closed_on:
    # the ticket is not resolved a second time, and nothing new is nothing emitted.
    with redmine.client() as client:
        client.put(f"/issues/{issue}.json", json={"issue": {"notes": "Billed on invoice INV-1"}}).raise_for_status()
    assert changes(source, result.cursor).events == []


@pytest.mark.integration
def test_adding_and_editing_time_emits_worklog_changed(
    redmine: RedmineInstance, seeded: SeedSummary, source: RedmineSource
) -> None:
    cursor = changes(source, None).cursor
    issue = open_issues(seeded, seeded.customers[2])[0]

    entry = log_time(redmine, seeded, issue)
    added = changes(source, cursor)
    assert [(e.event, e.worklog, e.ticket, e.payload["change"]) for e in added.events] == [
        (WORKLOG_CHANGED, str(entry["id"]), str(issue), "added")
    ]
    assert added.events[0].resource_id == f"t2i.worklog.redmine.{INSTANCE}.{entry['id']}"
    assert added.events[0].customer == seeded.customers[2]

    old = min(seeded.time_entries)  # logged three days ago, spent this month
    edit_time(redmine, entry["id"], 2.25)
    edit_time(redmine, old, 0.5)
    edited = changes(source, added.cursor)
    assert sorted((e.worklog, e.payload["change"]) for e in edited.events) == sorted(
        [(str(entry["id"]), "edited"), (str(old), "edited")]
    )
    assert {e.payload["hours"] for e in edited.events} == {2.25, 0.5}

    assert changes(source, edited.cursor).events == []  # nothing new: nothing emitted


@pytest.mark.integration
def test_the_boundary_second_is_neither_lost_nor_emitted_twice(
    redmine: RedmineInstance, seeded: SeedSummary, source: RedmineSource
) -> None:
    first, second, late = open_issues(seeded, seeded.customers[0])[:3]
    close(redmine, first)
    with redmine.client() as client:
        closed_on = parse_utc(client.get(f"/issues/{first}.json").json()["issue"]["closed_on"])
    poll_at = closed_on + timedelta(milliseconds=500)  # the poll runs in the very second the issue was closed
    cursor = source.changes_since(None, poll_at).cursor
    assert cursor["since"] == closed_on.strftime("%Y-%m-%dT%H:%M:%SZ")

    # Committed in that same second after the poll read, and (clock skew) one a minute "before" the cursor.
    close(redmine, second)
    close(redmine, late)
    _sql(redmine, "UPDATE issues SET closed_on = ? WHERE id = ?", _db_time(closed_on), second)
    _sql(redmine, "UPDATE issues SET closed_on = ? WHERE id = ?", _db_time(closed_on - timedelta(minutes=1)), late)

    result = source.changes_since(cursor, closed_on + timedelta(seconds=5))
    assert names(result) == sorted([(TICKET_RESOLVED, str(second)), (TICKET_RESOLVED, str(late))])

    again = source.changes_since(result.cursor, closed_on + timedelta(seconds=10))
    assert again.events == []
    later = source.changes_since(again.cursor, closed_on + timedelta(minutes=10))  # past the lag window
    assert later.events == [] and later.cursor["seen"] == []


# --- file drop ----------------------------------------------------------------------------------------------------


@pytest.fixture
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(SAMPLE, folder)  # copy2: the files keep their old modification times
    return folder


def later() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=1)  # past the settle time of any file written just now


def touch(path: Path, moment: datetime) -> None:
    os.utime(path, (moment.timestamp(), moment.timestamp()))


def test_file_drop_emits_export_ready_once_per_new_export(export: Path) -> None:
    files = FileDropSource(export)
    first = files.changes_since(None, later())
    assert len(first.events) == 1
    event = first.events[0]
    assert event.event == EXPORT_READY and event.resource_id == f"t2i.export.files.{files.instance}"
    assert event.payload == {"path": str(export), "period": files.default_period(),
                             "fingerprint": first.cursor["fingerprint"]}  # fmt: skip

    assert files.changes_since(first.cursor, later()).events == []

    (export / "notes.txt").write_text("not part of the export")  # nor is anything else beside it
    assert files.changes_since(first.cursor, later()).events == []

    touch(export / "worklogs.csv", datetime.now(UTC) - timedelta(minutes=5))
    again = files.changes_since(first.cursor, later())
    assert [e.event for e in again.events] == [EXPORT_READY]
    assert again.cursor["fingerprint"] != first.cursor["fingerprint"]


def test_file_drop_waits_for_an_export_still_being_written(export: Path) -> None:
    files = FileDropSource(export)
    first = files.changes_since(None, later())
    now = datetime.now(UTC)
    touch(export / "tickets.csv", now)
    writing = files.changes_since(first.cursor, now + timedelta(seconds=2))
    assert writing.events == [] and writing.cursor == first.cursor  # looked at again next time
    assert len(files.changes_since(writing.cursor, now + timedelta(seconds=30)).events) == 1


# --- poll(): the cursor in the ledger -----------------------------------------------------------------------------


@pytest.fixture
def file_settings(home: Path, export: Path) -> Settings:
    return Settings(home=home, input_dir=export, rules_file=DEMO_RULES, source="files")


def test_poll_saves_the_cursor_only_after_the_events_were_emitted(file_settings: Settings) -> None:
    sent: list[BillingEvent] = []

    def failing(events: list[BillingEvent]) -> None:
        raise ConnectionError("the Prefect server is down")

    with pytest.raises(ConnectionError):
        poll(file_settings, failing, now=later())
    ledger = Ledger(file_settings.resolved_ledger_url)
    assert ledger.cursor("poll:files:sample-export") is None  # nothing saved: the next poll reads it again

    report = poll(file_settings, sent.extend, now=later())
    assert [e.event for e in sent] == [EXPORT_READY]
    assert ledger.cursor("poll:files:sample-export") == report.changes.cursor
    assert report.as_dict()["exports_ready"] == 1 and report.summary().startswith("1 export(s) ready")

    again = poll(file_settings, sent.extend, now=later())
    assert len(sent) == 1 and again.as_dict()["emitted"] == 0
    assert again.summary().startswith("nothing new since ")


@pytest.mark.integration
def test_poll_reads_redmine_from_the_cursor_in_the_ledger(
    redmine: RedmineInstance, seeded: SeedSummary, home: Path, tmp_path: Path
) -> None:
    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["redmine"]["projects"] = seeded.customers
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    settings = Settings(home=home, rules_file=rules_file, source="redmine", redmine_url=redmine.url,
                        redmine_api_key=redmine.api_key, redmine_instance=INSTANCE)  # fmt: skip
    sent: list[BillingEvent] = []
    assert poll(settings, sent.extend).as_dict()["emitted"] == 0  # three-day-old history: before the lookback

    issue = open_issues(seeded, seeded.customers[1])[0]
    close(redmine, issue)
    report = poll(settings, sent.extend)
    assert [(e.event, e.ticket) for e in sent] == [(TICKET_RESOLVED, str(issue))]
    assert report.summary().startswith("1 ticket(s) resolved since ")
    cursor = Ledger(settings.resolved_ledger_url).cursor(f"poll:redmine:{INSTANCE}")
    assert cursor == report.changes.cursor

    assert poll(settings, sent.extend).as_dict()["emitted"] == 0 and len(sent) == 1


# --- the flow, on a Prefect server --------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_flow_puts_its_event_on_the_prefect_server(
    prefect_server: None, home: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))
    monkeypatch.setenv("TICKET_TO_INVOICE_INPUT_DIR", str(export))
    started = datetime.now(UTC)
    state = poll_source(source="files", return_state=True)
    result = state.result()
    assert result["emitted"] == 1 and result["cursor"] == "poll:files:sample-export"
    fingerprint = Ledger(f"sqlite:///{home / 'ledger.db'}").cursor("poll:files:sample-export")["fingerprint"]

    body = {"filter": {"occurred": {"since": (started - timedelta(seconds=5)).isoformat()},
                       "event": {"name": [EXPORT_READY]},
                       "resource": {"id": ["t2i.export.files.sample-export"]}}, "limit": 10}  # fmt: skip
    found: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        assert flow_run.name == "poll files"
        for _ in range(60):  # the server writes events in batches
            response = client.request("POST", "/events/filter", json=body)
            found = [e for e in response.json()["events"] if e["payload"].get("fingerprint") == fingerprint]
            if found:
                break
            time.sleep(0.5)
    assert len(found) == 1
    assert found[0]["resource"]["t2i.source"] == "files" and found[0]["payload"]["path"] == str(export)
