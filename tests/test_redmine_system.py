"""Against a real Redmine 5.0 (Debian's packages, puma, SQLite): the REST API behaviour the connector relies on,
and runs of the flow (into the file ERP) that find nothing to bill.

One server and one seed for the module (about 10 s to start, 7 s to seed); the projects are new on every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from billing.models import WORKLOG_COLUMNS
from connectors.redmine import RedmineSource
from tests.conftest import DEMO_RULES
from tests.system.redmine import RedmineInstance, SeedSummary, month_range, new_tag, redmine_server, seed

pytestmark = pytest.mark.integration

BILLED_MONTH = "2026-10"


@pytest.fixture(scope="module")
def redmine() -> Iterator[RedmineInstance]:
    with redmine_server() as instance:
        yield instance


@pytest.fixture(scope="module")
def seeded(redmine: RedmineInstance) -> SeedSummary:
    return seed(redmine, new_tag())


@pytest.fixture
def client(redmine: RedmineInstance) -> Iterator[httpx.Client]:
    with redmine.client() as http:
        yield http


Params = list[tuple[str, str | int]]


def _filter(name: str, operator: str, *values: str | int) -> Params:
    """One filter in the query-builder syntax. With any `f[]`, the short forms (`cf_1=0`) are silently ignored."""
    return [("f[]", name), (f"op[{name}]", operator), *((f"v[{name}][]", value) for value in values)]


def _month_params(month: str, project_ids: list[int]) -> Params:
    """Spent in the month, in any of the projects (ids, not identifiers; subprojects are not included)."""
    first, last = month_range(month)
    return _filter("spent_on", "><", first.isoformat(), last.isoformat()) + _filter("project_id", "=", *project_ids)


def _all_pages(
    client: httpx.Client, path: str, params: Params, limit: int = 100
) -> tuple[list[dict[str, Any]], int, int]:
    """(items, total_count, pages) by offset/limit."""
    items: list[dict[str, Any]] = []
    pages = 0
    while True:
        response = client.get(path, params=[*params, ("offset", len(items)), ("limit", limit)])
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        items += body["time_entries"]
        if not body["time_entries"] or len(items) >= body["total_count"]:
            return items, int(body["total_count"]), pages


def test_api_key_is_checked_on_users_current(redmine: RedmineInstance) -> None:
    response = httpx.get(f"{redmine.url}/users/current.json", headers=redmine.headers)
    assert response.status_code == 200
    assert response.json()["user"]["login"] == "admin"
    wrong = httpx.get(f"{redmine.url}/users/current.json", headers={"X-Redmine-API-Key": "0" * 40})
    assert wrong.status_code == 401
    # A wrong key is not an error elsewhere: the request is anonymous and the list empty.
    anonymous = httpx.get(f"{redmine.url}/time_entries.json", headers={"X-Redmine-API-Key": "0" * 40})
    assert anonymous.status_code == 200
    assert anonymous.json()["time_entries"] == []


def test_every_server_starts_from_a_pristine_database_of_its_own(redmine: RedmineInstance) -> None:
    """Whatever an earlier session, another server or Debian's default instance holds, a server starts empty."""
    leftover = {"name": "Left over", "identifier": f"leftover-{new_tag()}", "enabled_module_names": ["time_tracking"]}
    with redmine.client() as client:
        assert client.post("/projects.json", json={"project": leftover}).status_code == 201

    with redmine_server() as fresh, fresh.client() as client:
        assert fresh.database is not None and fresh.database != redmine.database
        assert client.get("/projects.json").json()["total_count"] == 0
        assert client.get("/users/current.json").json()["user"]["login"] == "admin"
        assert fresh.custom_fields == redmine.custom_fields
    assert not fresh.database.exists()  # removed with the server


def test_billed_month_comes_back_over_several_pages(client: httpx.Client, seeded: SeedSummary) -> None:
    expected = {entry.id: entry for entry in seeded.month(BILLED_MONTH)}
    assert len(expected) > 100

    items, total, pages = _all_pages(
        client, "/time_entries.json", _month_params(BILLED_MONTH, [*seeded.projects.values()])
    )

    assert pages > 1
    assert total == len(expected)
    assert sorted(item["id"] for item in items) == sorted(expected)
    for item in items:
        entry = expected[item["id"]]
        assert item["project"]["id"] == seeded.projects[entry.project]
        assert item["user"]["id"] == entry.user_id
        assert item["activity"]["name"] == entry.activity
        assert item["hours"] == pytest.approx(entry.hours)
        assert item["spent_on"] == entry.spent_on.isoformat()
        assert item.get("issue", {}).get("id") == entry.issue_id


def test_limit_is_capped_at_100(client: httpx.Client, seeded: SeedSummary) -> None:
    params = [*_month_params(BILLED_MONTH, [*seeded.projects.values()]), ("limit", 500)]
    body = client.get("/time_entries.json", params=params).json()
    assert body["limit"] == 100
    assert len(body["time_entries"]) == 100


def test_from_to_and_project_scope_the_list(client: httpx.Client, seeded: SeedSummary) -> None:
    """The simple syntax: from/to on spent_on, a project identifier includes its subprojects."""
    customer = seeded.customers[0]
    family = {customer} | {child for child, parent in seeded.parents.items() if parent == customer}
    first, last = month_range("2026-09")
    expected = sorted(entry.id for entry in seeded.month("2026-09") if entry.project in family)
    params: Params = [("project_id", customer), ("from", first.isoformat()), ("to", last.isoformat())]
    items, total, _ = _all_pages(client, "/time_entries.json", params)
    assert total == len(expected)
    assert sorted(item["id"] for item in items) == expected


def test_billable_custom_field_is_seeded_and_filterable(
    client: httpx.Client, redmine: RedmineInstance, seeded: SeedSummary
) -> None:
    billable = redmine.custom_fields["time_entry:Billable"]
    params = [*_month_params(BILLED_MONTH, [*seeded.projects.values()]), *_filter(f"cf_{billable}", "=", "0")]
    items, total, _ = _all_pages(client, "/time_entries.json", params)
    expected = {entry.id for entry in seeded.month(BILLED_MONTH) if not entry.billable}
    assert expected
    assert total == len(expected)
    assert {item["id"] for item in items} == expected
    for item in items:
        assert {"id": billable, "name": "Billable", "value": "0"} in item["custom_fields"]
    # The trap: next to any f[] filter, a short one is silently ignored and everything comes back.
    mixed = [*_month_params(BILLED_MONTH, [*seeded.projects.values()]), (f"cf_{billable}", "0"), ("limit", 1)]
    assert client.get("/time_entries.json", params=mixed).json()["total_count"] == len(seeded.month(BILLED_MONTH))


def test_invoice_number_on_a_time_entry_is_written_and_read_back(
    client: httpx.Client, redmine: RedmineInstance, seeded: SeedSummary
) -> None:
    invoice_field = redmine.custom_fields["time_entry:Invoice number"]
    entry = next(e for e in seeded.month(BILLED_MONTH) if e.billable and e.issue_id is not None)
    number = f"INV-{seeded.tag}-1"

    response = client.put(
        f"/time_entries/{entry.id}.json",
        json={"time_entry": {"custom_fields": [{"id": invoice_field, "value": number}]}},
    )

    assert response.status_code == 204
    read = client.get(f"/time_entries/{entry.id}.json").json()["time_entry"]
    assert {"id": invoice_field, "name": "Invoice number", "value": number} in read["custom_fields"]
    assert read["hours"] == pytest.approx(entry.hours)  # the rest is untouched


def test_invoice_number_on_an_issue_is_written_and_read_back(
    client: httpx.Client, redmine: RedmineInstance, seeded: SeedSummary
) -> None:
    invoice_field = redmine.custom_fields["issue:Invoice number"]
    issue_id = seeded.issues[seeded.customers[0]][0]
    number = f"INV-{seeded.tag}-issue"

    response = client.put(
        f"/issues/{issue_id}.json", json={"issue": {"custom_fields": [{"id": invoice_field, "value": number}]}}
    )

    assert response.status_code == 204
    read = client.get(f"/issues/{issue_id}.json").json()["issue"]
    assert {"id": invoice_field, "name": "Invoice number", "value": number} in read["custom_fields"]


def test_empty_invoice_number_filter_leaves_out_an_invoiced_entry(
    client: httpx.Client, redmine: RedmineInstance, seeded: SeedSummary
) -> None:
    invoice_field = redmine.custom_fields["time_entry:Invoice number"]
    project = seeded.customers[1]
    entries = [e.id for e in seeded.month(BILLED_MONTH) if e.project == project]
    invoiced, other = entries[0], entries[1:]
    response = client.put(
        f"/time_entries/{invoiced}.json",
        json={"time_entry": {"custom_fields": [{"id": invoice_field, "value": f"INV-{seeded.tag}-2"}]}},
    )
    assert response.status_code == 204

    params = [*_month_params(BILLED_MONTH, [seeded.projects[project]]), *_filter(f"cf_{invoice_field}", "!*")]
    items, total, _ = _all_pages(client, "/time_entries.json", params)

    assert sorted(item["id"] for item in items) == sorted(other)
    assert total == len(other)
    done = [*_month_params(BILLED_MONTH, [seeded.projects[project]]), *_filter(f"cf_{invoice_field}", "*")]
    assert [item["id"] for item in _all_pages(client, "/time_entries.json", done)[0]] == [invoiced]
    # The same in the short syntax: project identifier, from/to, cf_N=!*.
    first, last = month_range(BILLED_MONTH)
    short: Params = [
        ("project_id", project), ("from", first.isoformat()), ("to", last.isoformat()), (f"cf_{invoice_field}", "!*"),
    ]  # fmt: skip
    items, total, _ = _all_pages(client, "/time_entries.json", short)
    assert sorted(item["id"] for item in items) == sorted(other)


def test_time_entry_without_issue_is_listed_with_its_project(client: httpx.Client, seeded: SeedSummary) -> None:
    entry = next(e for e in seeded.month(BILLED_MONTH) if e.id in seeded.without_issue)
    project_id = seeded.projects[entry.project]
    items, _, _ = _all_pages(client, "/time_entries.json", _month_params(BILLED_MONTH, [project_id]))

    listed = next(item for item in items if item["id"] == entry.id)
    assert "issue" not in listed
    assert listed["project"] == {"id": project_id, "name": listed["project"]["name"]}
    assert listed["comments"] == entry.comments
    assert any("issue" in item for item in items)  # alongside entries on issues of the same project


def test_seeded_issues_include_closed_ones(client: httpx.Client, seeded: SeedSummary) -> None:
    project = seeded.customers[0]
    params = {"project_id": project, "status_id": "*", "limit": 100}
    issues = client.get("/issues.json", params=params).json()["issues"]
    open_only = client.get("/issues.json", params={"project_id": project, "limit": 100}).json()["issues"]

    family = [project, *(child for child, parent in seeded.parents.items() if parent == project)]
    seeded_ids = {i for identifier in family for i in seeded.issues[identifier]}
    assert {issue["id"] for issue in issues} == seeded_ids  # subprojects included
    assert seeded.closed_issues & seeded_ids
    assert {issue["id"] for issue in open_only} == seeded_ids - seeded.closed_issues
    assert {issue["tracker"]["name"] for issue in issues} == {"Support", "Bug", "Feature"}


# -- runs of the flow with nothing to bill --------------------------------------------------------------------


@pytest.fixture
def billable_only(redmine: RedmineInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeedSummary:
    """Projects of their own with four billable time entries in 2026-10 (none in other months), and settings
    that bill only them into the file ERP."""
    summary = seed(redmine, new_tag(), months={BILLED_MONTH: 4})
    assert all(e.billable and e.activity != "Internal" for e in summary.time_entries.values())
    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["redmine"]["projects"] = summary.customers
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    env = {
        "TICKET_TO_INVOICE_HOME": str(tmp_path / "home"), "TICKET_TO_INVOICE_SOURCE": "redmine",
        "TICKET_TO_INVOICE_REDMINE_URL": redmine.url, "TICKET_TO_INVOICE_REDMINE_API_KEY": redmine.api_key,
        "TICKET_TO_INVOICE_RULES_FILE": str(rules_file), "TICKET_TO_INVOICE_ERP": "files",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return summary


def _source(redmine: RedmineInstance, seeded: SeedSummary) -> RedmineSource:
    from rules.schema import RedmineMapping

    return RedmineSource(redmine.url, redmine.api_key, mapping=RedmineMapping(projects=seeded.customers))


@pytest.mark.usefixtures("prefect_server")
def test_a_rerun_after_every_entry_was_billed_is_clean_and_posts_nothing(
    redmine: RedmineInstance, billable_only: SeedSummary
) -> None:
    from flows.ticket_to_invoice import ticket_to_invoice

    first = ticket_to_invoice(period=BILLED_MONTH)
    assert first["new_postings"] >= 1 and first["posting_failures"] == []
    assert first["write_back"] == {"written": 4, "failed": {}}
    # Every entry of the month carries its invoice number now: the "not yet billed" query finds none.
    nothing = _source(redmine, billable_only).extract(BILLED_MONTH)
    assert nothing.worklogs.empty and list(nothing.worklogs.columns) == list(WORKLOG_COLUMNS)

    second = ticket_to_invoice(period=BILLED_MONTH)

    assert second["new_postings"] == 0 and second["posting_failures"] == []
    assert second["counts"] == first["counts"]
    assert second["invoices"] == first["invoices"]  # the same invoices, nothing new
    assert second["write_back"] == {"written": 0, "failed": {}}
    assert second["reconcile"]["mismatches"] == [] and second["reconcile"]["unbilled"] == []
    assert second["quarantined"] == []


@pytest.mark.usefixtures("prefect_server")
def test_a_period_without_any_time_entries_is_a_clean_run_with_nothing_posted(
    redmine: RedmineInstance, billable_only: SeedSummary
) -> None:
    from flows.ticket_to_invoice import ticket_to_invoice

    batch = _source(redmine, billable_only).extract("2026-11")
    assert batch.worklogs.empty and batch.tickets.empty and batch.customers  # the projects are there, no time

    summary = ticket_to_invoice(period="2026-11")

    assert summary["new_postings"] == 0 and summary["invoices"] == [] and summary["posting_failures"] == []
    assert summary["work_items_total"] == 0 and summary["quarantined"] == []
    assert summary["write_back"] == {"written": 0, "failed": {}}
    assert summary["reconcile"]["mismatches"] == []


def test_a_redmine_that_is_down_is_exit_1_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    """The login check is retried with backoff (about 10 s), then the CLI names Redmine and what to check."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nothing listens on: Redmine stopped
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKET_TO_INVOICE_", "PREFECT_"))}
    env |= {"TICKET_TO_INVOICE_HOME": str(tmp_path), "TICKET_TO_INVOICE_REDMINE_URL": url,
            "TICKET_TO_INVOICE_REDMINE_API_KEY": "somekey", "TICKET_TO_INVOICE_ERP": "files"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "billing.cli", "run", "--source", "redmine", "--period",
                             BILLED_MONTH], env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"Redmine at {url}" in result.stderr and "Traceback" not in result.stderr
    assert "TICKET_TO_INVOICE_REDMINE_URL" in result.stderr  # the hint: what to check
