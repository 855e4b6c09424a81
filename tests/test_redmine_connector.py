"""The Redmine connector's parts against recorded REST answers (respx); the live tests are in
test_redmine.py."""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest
import respx

from billing.errors import ConfigurationError, SystemUnavailable
from billing.models import ISSUE_COLUMNS, WORKLOG_COLUMNS
from connectors.http import OffsetPaginator, QuotaGuard, RetryableError, make_client
from connectors.redmine import RedmineSource
from rules.schema import CustomerDefaults, CustomerSpec, RedmineMapping

URL = "http://redmine.test"
PROJECTS = [
    {"id": 1, "name": "Acme", "identifier": "acme"},
    {"id": 2, "name": "Acme web shop", "identifier": "acme-shop", "parent": {"id": 1, "name": "Acme"}},
    {"id": 3, "name": "Globex", "identifier": "globex"},
]
FIELDS = [
    {"id": 7, "name": "Billable", "customized_type": "time_entry"},
    {"id": 8, "name": "Invoice number", "customized_type": "time_entry"},
    {"id": 9, "name": "Invoice number", "customized_type": "issue"},
]


def entry(id: int, project: int, hours: float, spent_on: str = "2026-10-05", issue: int | None = None,
          activity: str = "Remote support", billable: str = "1") -> dict[str, Any]:  # fmt: skip
    e: dict[str, Any] = {
        "id": id, "project": {"id": project, "name": "x"}, "user": {"id": 1, "name": "Anna Schmidt"},
        "activity": {"id": 1, "name": activity}, "hours": hours, "comments": f"entry {id}", "spent_on": spent_on,
        "custom_fields": [{"id": 7, "name": "Billable", "value": billable}],
    }  # fmt: skip
    if issue is not None:
        e["issue"] = {"id": issue}
    return e


def paged(key: str, items: list[dict[str, Any]]) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        return httpx.Response(200, json={key: items[offset : offset + limit], "total_count": len(items),
                                         "offset": offset, "limit": limit})  # fmt: skip

    return answer


def source(**mapping: Any) -> RedmineSource:
    return RedmineSource(URL, "key", mapping=RedmineMapping(**mapping),
                         customers={"acme": CustomerSpec(name="Acme Logistics GmbH", currency="EUR", country="DE",
                                                         timezone="Europe/Berlin")},
                         defaults=CustomerDefaults(currency="USD", timezone="America/New_York"))  # fmt: skip


@respx.mock
def test_entries_are_read_across_pages_and_mapped_to_work_logs() -> None:
    entries = [entry(i, project=1 + i % 3, hours=0.25 * (i % 7 + 1), issue=100 + i % 4 if i % 5 else None)
               for i in range(1, 231)]  # fmt: skip
    entries[0] = entry(1, project=2, hours=1.5, spent_on="2026-10-10", issue=100, activity="On-site support",
                       billable="0")  # fmt: skip
    respx.get(f"{URL}/projects.json").mock(side_effect=paged("projects", PROJECTS))
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    times = respx.get(f"{URL}/time_entries.json").mock(side_effect=paged("time_entries", entries))
    issues = [{"id": 100 + n, "project": {"id": 1}, "subject": f"Issue {n}", "tracker": {"name": "Support"},
               "priority": {"name": "Normal"}, "status": {"name": "Closed"}, "created_on": "2026-10-01T08:00:00Z",
               "closed_on": "2026-10-20T08:00:00Z"} for n in range(4)]  # fmt: skip
    respx.get(f"{URL}/issues.json").mock(side_effect=paged("issues", issues))

    batch = source(activities={"On-site support": "onsite_support"}).extract("2026-10")

    assert times.call_count == 3  # 100 + 100 + 30
    first_call = times.calls[0].request.url.params
    assert (first_call["from"], first_call["to"], first_call["cf_8"]) == ("2026-10-01", "2026-10-31", "!*")
    assert len(batch.worklogs) == 230 and batch.worklogs["key"].is_unique
    one = batch.worklogs.set_index("source_id").loc["1"]
    assert one["customer_id"] == "acme"  # a subproject rolls up to its parent's customer
    assert (one["service_type"], one["raw_seconds"], one["billable"], one["ticket_id"]) == (
        "onsite_support",
        5400,
        False,
        "100",
    )
    assert one["started_at"] == pd.Timestamp("2026-10-10T10:00:00Z")  # noon in Berlin (CEST)
    assert batch.worklogs["ticket_id"].isna().sum() == 46  # entries without an issue are billed too
    assert batch.worklogs.set_index("source_id").loc["5", "service_type"] == "remote_support"
    customers = batch.customers_by_id
    assert customers["acme"].name == "Acme Logistics GmbH" and customers["globex"].currency == "USD"
    assert batch.tickets.set_index("ticket_id").loc["100", "ticket_type"] == "Support"


@respx.mock
def test_without_rollup_a_subproject_is_its_own_customer() -> None:
    respx.get(f"{URL}/projects.json").mock(side_effect=paged("projects", PROJECTS))
    mapped = source(rollup_subprojects=False, project_customers={"globex": "GLOBEX-BV"}).customer_of_projects(
        source().projects()
    )
    assert mapped == {1: "acme", 2: "acme-shop", 3: "GLOBEX-BV"}


@respx.mock
def test_a_bad_api_key_is_a_clear_error_not_an_empty_helpdesk() -> None:
    respx.get(f"{URL}/users/current.json").mock(return_value=httpx.Response(401))
    with pytest.raises(ConfigurationError, match="rejected the API key"):
        source().check()


@respx.mock
def test_429_and_5xx_are_retried_and_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("time.sleep", waits.append)
    route = respx.get(f"{URL}/projects.json").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(503),
        httpx.Response(200, json={"projects": PROJECTS, "total_count": 3}),
    ])  # fmt: skip
    assert len(OffsetPaginator(make_client(URL), "/projects.json", "projects").all()) == 3
    assert route.call_count == 3
    assert waits[0] >= 7  # Retry-After, not the shorter backoff


@respx.mock
def test_a_4xx_is_fatal_and_not_retried() -> None:
    route = respx.get(f"{URL}/projects.json").mock(return_value=httpx.Response(422, json={"errors": ["bad"]}))
    with pytest.raises(Exception, match="HTTP 422") as error:
        OffsetPaginator(make_client(URL), "/projects.json", "projects").all()
    assert not isinstance(error.value, RetryableError) and route.call_count == 1


def test_the_quota_guard_slows_down_before_the_server_says_no() -> None:
    slept: list[float] = []
    guard = QuotaGuard(reserve=2, sleep=slept.append)
    request = httpx.Request("GET", URL)
    guard(httpx.Response(200, headers={"X-RateLimit-Remaining": "50", "X-RateLimit-Reset": "30"}, request=request))
    guard(httpx.Response(200, headers={"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "12"}, request=request))
    assert slept == [12.0]


@respx.mock
def test_write_back_sets_the_field_and_notes_the_issue_once_per_invoice() -> None:
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    entries = respx.put(url__regex=rf"{URL}/time_entries/\d+\.json").mock(return_value=httpx.Response(204))
    issue = respx.put(f"{URL}/issues/100.json").mock(return_value=httpx.Response(204))
    billed = pd.DataFrame({"key": ["k1", "k2", "k3"], "source_id": ["1", "2", "3"], "ticket_id": ["100", "100", None],
                           "erp_number": ["INV2026-0001"] * 3})  # fmt: skip
    result = source().write_back(billed)
    assert sorted(result.written) == ["k1", "k2", "k3"] and result.failed == {}
    assert entries.call_count == 3
    assert issue.call_count == 1
    body = issue.calls[0].request.content.decode()
    assert "INV2026-0001" in body and "#1, #2" in body and '"id": 9' in body.replace('"id":9', '"id": 9')


@respx.mock
def test_a_failed_write_back_is_reported_for_the_next_run() -> None:
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    respx.put(f"{URL}/time_entries/1.json").mock(return_value=httpx.Response(204))
    respx.put(f"{URL}/time_entries/2.json").mock(return_value=httpx.Response(422, json={"errors": ["locked"]}))
    billed = pd.DataFrame({"key": ["k1", "k2"], "source_id": ["1", "2"], "ticket_id": [None, None],
                           "erp_number": ["INV2026-0001"] * 2})  # fmt: skip
    result = source().write_back(billed)
    assert result.written == ["k1"]
    assert list(result.failed) == ["k2"] and "HTTP 422" in result.failed["k2"]


# -- nothing to bill ------------------------------------------------------------------------------


def _mock_extraction(entries: list[dict[str, Any]], issues: list[dict[str, Any]] | None = None) -> respx.Route:
    respx.get(f"{URL}/projects.json").mock(side_effect=paged("projects", PROJECTS))
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    respx.get(f"{URL}/time_entries.json").mock(side_effect=paged("time_entries", entries))
    return respx.get(f"{URL}/issues.json").mock(side_effect=paged("issues", issues or []))


def kinds(dtypes: pd.Series) -> dict[str, str]:
    """Column → dtype name ("category" whatever the categories)."""
    return dtypes.astype(str).to_dict()


def _one_issue(id: int = 100) -> dict[str, Any]:
    return {"id": id, "project": {"id": 1}, "subject": "Issue", "tracker": {"name": "Support"},
            "priority": {"name": "Normal"}, "status": {"name": "New"}, "created_on": "2026-10-01T08:00:00Z",
            "closed_on": None}  # fmt: skip


@respx.mock
def test_a_period_with_nothing_unbilled_is_an_empty_batch_with_the_canonical_columns_and_dtypes() -> None:
    _mock_extraction([entry(1, 1, 1.5, issue=100), entry(2, 3, 0.25)], [_one_issue()])
    full = source().extract("2026-10")
    respx.clear()
    issues = _mock_extraction([])  # every entry of the month has its invoice number: the filter finds none

    empty = source().extract("2026-10")

    assert issues.call_count == 0  # no issue ids to ask for
    assert empty.worklogs.empty and list(empty.worklogs.columns) == list(WORKLOG_COLUMNS)
    assert empty.worklogs.dtypes.pipe(kinds) == full.worklogs.dtypes.pipe(kinds)
    assert empty.tickets.empty and empty.tickets.dtypes.pipe(kinds) == full.tickets.dtypes.pipe(kinds)
    assert list(empty.issues.columns) == list(ISSUE_COLUMNS) and empty.issues.empty
    assert {c.customer_id for c in empty.customers} == {"acme", "globex"}  # the customers are still known
    assert (empty.period, empty.source_system) == ("2026-10", "redmine")
    assert empty.worklogs[empty.worklogs["billable"]].empty  # a mask on an empty frame is still a bool mask


@respx.mock
def test_entries_without_any_issue_give_typed_empty_tickets() -> None:
    _mock_extraction([entry(1, 1, 1.5, issue=100)], [_one_issue()])
    with_issue = source().extract("2026-10")
    respx.clear()
    issues = _mock_extraction([entry(2, 3, 2.0), entry(3, 1, 0.5)])  # time on projects, none on an issue

    batch = source().extract("2026-10")

    assert issues.call_count == 0
    assert len(batch.worklogs) == 2 and batch.worklogs["ticket_id"].isna().all()
    assert batch.tickets.empty and batch.tickets.dtypes.pipe(kinds) == with_issue.tickets.dtypes.pipe(kinds)
    assert batch.worklogs.dtypes.pipe(kinds) == with_issue.worklogs.dtypes.pipe(kinds)


@respx.mock
def test_write_back_of_nothing_asks_redmine_nothing() -> None:
    billed = pd.DataFrame({"key": [], "source_id": [], "ticket_id": [], "erp_number": []}, dtype=object)
    result = source().write_back(billed)
    assert result.written == [] and result.failed == {}
    assert not respx.calls


# -- an outage is not a mistake: retried, then SystemUnavailable ---------------------------------------


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr("time.sleep", waits.append)
    return waits


@respx.mock
def test_the_login_check_is_retried_after_a_503(no_sleep: list[float]) -> None:
    route = respx.get(f"{URL}/users/current.json").mock(side_effect=[
        httpx.Response(503), httpx.Response(200, json={"user": {"id": 1, "login": "admin"}}),
    ])  # fmt: skip
    source().check()
    assert route.call_count == 2 and len(no_sleep) == 1


@respx.mock
def test_a_login_check_that_keeps_failing_is_system_unavailable(no_sleep: list[float]) -> None:
    route = respx.get(f"{URL}/users/current.json").mock(return_value=httpx.Response(503))
    with pytest.raises(SystemUnavailable, match=f"Redmine at {URL}") as error:
        source().check()
    assert route.call_count == 5  # retried with backoff first
    assert error.value.exit_code == 1 and "TICKET_TO_INVOICE_REDMINE_URL" in (error.value.hint or "")


@respx.mock
def test_a_refused_connection_is_system_unavailable(no_sleep: list[float]) -> None:
    route = respx.get(f"{URL}/users/current.json").mock(
        side_effect=httpx.ConnectError("[Errno 111] Connection refused")
    )
    with pytest.raises(SystemUnavailable, match=rf"Redmine at {URL} cannot be reached: .*Connection refused"):
        source().check()
    assert route.call_count == 5


def test_a_refused_connection_on_a_real_socket_is_system_unavailable(no_sleep: list[float]) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(SystemUnavailable, match=f"Redmine at {url}"):
        RedmineSource(url, "key").check()


@respx.mock
def test_a_rejected_key_stays_a_configuration_error_and_is_not_retried(no_sleep: list[float]) -> None:
    route = respx.get(f"{URL}/users/current.json").mock(return_value=httpx.Response(401))
    with pytest.raises(ConfigurationError, match="rejected the API key") as error:
        source().check()
    assert route.call_count == 1 and error.value.exit_code == 2 and no_sleep == []


@respx.mock
def test_a_url_that_is_no_redmine_is_a_configuration_error() -> None:
    respx.get(f"{URL}/users/current.json").mock(return_value=httpx.Response(404, text="<html>Not found</html>"))
    with pytest.raises(ConfigurationError, match="is this Redmine's address"):
        source().check()


@respx.mock
def test_reads_that_keep_failing_are_system_unavailable(no_sleep: list[float]) -> None:
    respx.get(f"{URL}/projects.json").mock(side_effect=paged("projects", PROJECTS))
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    route = respx.get(f"{URL}/time_entries.json").mock(return_value=httpx.Response(502))
    with pytest.raises(
        SystemUnavailable,
        match=rf"Redmine at {URL} keeps failing: .*HTTP 502 \(trying to read the time entries of 2026-10",
    ):
        source().extract("2026-10")
    assert route.call_count == 5


@respx.mock
def test_an_unknown_project_in_the_rules_is_a_configuration_error() -> None:
    respx.get(f"{URL}/projects.json").mock(side_effect=paged("projects", PROJECTS))
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    respx.get(f"{URL}/time_entries.json").mock(return_value=httpx.Response(404))
    with pytest.raises(ConfigurationError, match="refused to read the time entries"):
        source(projects=["nosuchproject"]).extract("2026-10")


@respx.mock
def test_write_back_retries_a_503_and_reports_an_outage_without_raising(no_sleep: list[float]) -> None:
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    first = respx.put(f"{URL}/time_entries/1.json").mock(side_effect=[httpx.Response(503), httpx.Response(204)])
    down = respx.put(f"{URL}/time_entries/2.json").mock(return_value=httpx.Response(503))
    after = respx.put(f"{URL}/time_entries/3.json").mock(return_value=httpx.Response(204))
    billed = pd.DataFrame({"key": ["k1", "k2", "k3"], "source_id": ["1", "2", "3"], "ticket_id": [None] * 3,
                           "erp_number": ["INV2026-0001"] * 3})  # fmt: skip

    result = source().write_back(billed)

    assert result.written == ["k1"] and first.call_count == 2
    assert down.call_count == 5 and after.call_count == 0  # Redmine is down: the rest waits for the next run
    assert set(result.failed) == {"k2", "k3"}
    assert all(f"Redmine at {URL} unavailable after retries" in e for e in result.failed.values())


@respx.mock
def test_an_issue_note_whose_answer_was_lost_is_not_sent_twice(no_sleep: list[float]) -> None:
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(200, json={"custom_fields": FIELDS}))
    respx.put(f"{URL}/time_entries/1.json").mock(return_value=httpx.Response(204))
    note = respx.put(f"{URL}/issues/100.json").mock(side_effect=httpx.ReadTimeout("timed out"))
    billed = pd.DataFrame({"key": ["k1"], "source_id": ["1"], "ticket_id": ["100"], "erp_number": ["INV2026-0001"]})

    result = source().write_back(billed)

    assert note.call_count == 1 and result.written == []
    assert "may have been written" in result.failed["k1"]


@respx.mock
def test_a_key_without_administrator_rights_is_told_so() -> None:
    """Redmine lists custom fields to administrators only (403 otherwise): a configuration error, not a traceback."""
    respx.get(f"{URL}/projects.json").mock(side_effect=paged("projects", PROJECTS))
    respx.get(f"{URL}/custom_fields.json").mock(return_value=httpx.Response(403))
    with pytest.raises(ConfigurationError, match="does not list its custom fields") as error:
        source().extract("2026-10")
    assert "administrator" in (error.value.hint or "")
