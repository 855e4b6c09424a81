"""The Redmine connector's parts against recorded REST answers (respx); the live tests are in
test_redmine.py."""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest
import respx

from billing.errors import ConfigurationError
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
