"""The webhook receiver: each sender's signature and payloads, refusals, replays, and one real Prefect server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from billing.events import TICKET_RESOLVED, WORKLOG_CHANGED, BillingEvent
from billing.ledger import Ledger
from billing.settings import Settings
from connectors import webhooks
from connectors.webhooks import (
    BadSignature,
    MalformedPayload,
    StaleDelivery,
    UnknownSource,
    connectwise_signature,
    generic_signature,
    jira_signature,
    read_delivery,
    zendesk_signature,
)
from flows.webhook_receiver import create_app

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRETS = {
    "generic": "g-secret",
    "zendesk": "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==",
    "jira": "j-secret",
    "connectwise": "cw-signing-key",
}


class Recorder:
    """A fake ``emit``: remembers the events, can be told to fail or to take its time."""

    def __init__(self) -> None:
        self.events: list[BillingEvent] = []
        self.fail = False
        self.silent = False  # like Prefect's emit_event when it cannot queue: no error, no id
        self.delay = 0.0
        self.lock = threading.Lock()

    def __call__(self, events: list[BillingEvent]) -> list[str]:
        time.sleep(self.delay)
        if self.fail:
            raise ConnectionError("Prefect server unreachable")
        if self.silent:
            return []
        with self.lock:
            self.events.extend(events)
        return [str(uuid.uuid4()) for _ in events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def wh_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", webhook_secrets=SECRETS)  # type: ignore[arg-type]


@pytest.fixture
def client(wh_settings: Settings, recorder: Recorder) -> TestClient:
    return TestClient(create_app(wh_settings, emit=recorder))


def fixture(sender: str, name: str) -> bytes:
    return (FIXTURES / sender / name).read_bytes()


def now_ts() -> str:
    return str(int(time.time()))


def signed(
    sender: str, body: bytes, *, delivery: str | None = None, at: datetime | None = None, secret: str | None = None
) -> dict[str, str]:
    """The headers the sender would send with ``body``."""
    key, delivery, at = secret or SECRETS[sender], delivery or str(uuid.uuid4()), at or datetime.now(UTC)
    if sender == "generic":
        ts = str(int(at.timestamp()))
        return {"X-T2I-Timestamp": ts, "X-T2I-Delivery": delivery, "X-T2I-Signature": generic_signature(key, ts, body)}
    if sender == "zendesk":
        ts = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "X-Zendesk-Webhook-Signature-Timestamp": ts,
            "X-Zendesk-Webhook-Invocation-Id": delivery,
            "X-Zendesk-Webhook-Signature": zendesk_signature(key, ts, body),
        }
    if sender == "jira":
        return {"X-Hub-Signature": jira_signature(key, body), "X-Atlassian-Webhook-Identifier": delivery}
    return {"x-content-signature": connectwise_signature(key, body)}


def jira_body(name: str, at: datetime | None = None) -> bytes:
    """A Jira fixture as Jira would send it now: its signed ``timestamp`` (ms) is the time of sending."""
    payload = json.loads(fixture("jira", name))
    payload["timestamp"] = int((at or datetime.now(UTC)).timestamp() * 1000)
    return json.dumps(payload).encode()


def connectwise_body(name: str) -> bytes:
    payload = json.loads(fixture("connectwise", name))
    payload["MessageId"] = str(uuid.uuid4())  # ConnectWise's delivery id lives in the body
    return json.dumps(payload).encode()


def post(client: TestClient, sender: str, body: bytes, headers: dict[str, str], query: str = "") -> Any:
    return client.post(f"/hooks/{sender}{query}", content=body, headers={**headers, "Content-Type": "application/json"})


# -- each sender with its documented payloads ------------------------------------------------------


def test_generic_ticket_resolved(client: TestClient, recorder: Recorder) -> None:
    body = fixture("generic", "ticket_resolved.json")
    answer = post(client, "generic", body, signed("generic", body, delivery="d-1"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["events"] == 1 and len(answer.json()["ids"]) == 1
    (event,) = recorder.events
    assert event.event == TICKET_RESOLVED
    assert event.resource_id == "t2i.ticket.redmine.redmine_example_com.4711"
    assert event.resource()["t2i.customer"] == "acme" and event.resource()["t2i.source"] == "redmine"
    assert event.payload["delivery"] == "d-1" and event.payload["status"] == "Closed"


def test_generic_worklog_changed_with_instance_from_the_query(client: TestClient, recorder: Recorder) -> None:
    body = fixture("generic", "worklog_changed.json")
    assert post(client, "generic", body, signed("generic", body), "?instance=rm-prod").status_code == 202
    (event,) = recorder.events
    assert (event.event, event.resource_id) == (WORKLOG_CHANGED, "t2i.worklog.redmine.rm-prod.9001")
    assert event.resource()["t2i.ticket"] == "4711"


def test_zendesk_ticket_solved(client: TestClient, recorder: Recorder) -> None:
    body = fixture("zendesk", "ticket_status_changed_solved.json")
    answer = post(client, "zendesk", body, signed("zendesk", body), "?instance=acme-help")
    assert answer.status_code == 202, answer.text
    (event,) = recorder.events
    assert event.event == TICKET_RESOLVED
    assert event.resource_id == "t2i.ticket.zendesk.acme-help.5158"
    assert event.resource()["t2i.customer"] == "361234567"  # the ticket's organization
    assert event.payload["status"] == "solved" and event.payload["previous"] == "OPEN"


def test_zendesk_instance_defaults_to_the_account(client: TestClient, recorder: Recorder) -> None:
    body = fixture("zendesk", "ticket_status_changed_solved.json")
    assert post(client, "zendesk", body, signed("zendesk", body)).status_code == 202
    assert recorder.events[0].resource_id == "t2i.ticket.zendesk.22129848.5158"


def test_zendesk_secret_is_used_as_its_text() -> None:
    """Zendesk's older verifying page ("event-connectors", formula body then timestamp) gives a worked example;
    its numbers pin that the key is the secret's text, not its base64 decoding. The current page documents
    timestamp + body, which ``zendesk_signature`` follows (the order differs from the old example)."""
    body, ts, secret = b'{"say": "hello"}', b"2021-07-25T10:00:00Z", "HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA="
    old_order = base64.b64encode(hmac.new(secret.encode(), body + ts, hashlib.sha256).digest()).decode()
    assert old_order == "tRDSF7URY8BLCDlaBcQ7FHu051Zk+aAB0NKMP53teMw="
    current = base64.b64encode(hmac.new(secret.encode(), ts + body, hashlib.sha256).digest()).decode()
    assert zendesk_signature(secret, ts.decode(), body) == current


def test_jira_issue_done(client: TestClient, recorder: Recorder) -> None:
    body = jira_body("issue_updated_done.json")
    answer = post(client, "jira", body, signed("jira", body))
    assert answer.status_code == 202, answer.text
    (event,) = recorder.events
    assert event.resource_id == "t2i.ticket.jira.acme-support_atlassian_net.SUP-42"
    assert event.payload["project"] == "SUP" and event.payload["status"] == "Done"


def test_jira_worklog_created(client: TestClient, recorder: Recorder) -> None:
    body = jira_body("worklog_created.json")
    assert post(client, "jira", body, signed("jira", body), "?instance=acme").status_code == 202
    (event,) = recorder.events
    assert (event.event, event.resource_id) == (WORKLOG_CHANGED, "t2i.worklog.jira.acme.10000")
    assert event.ticket == "10027" and event.payload["time_spent_seconds"] == 5400


def test_connectwise_ticket_closed_and_time_entries(client: TestClient, recorder: Recorder) -> None:
    for name in ("ticket_closed.json", "time_added.json", "time_deleted.json"):
        body = connectwise_body(name)
        answer = post(client, "connectwise", body, signed("connectwise", body))
        assert answer.status_code == 202, (name, answer.text)
    closed, added, deleted = recorder.events
    assert (closed.event, closed.resource_id) == (TICKET_RESOLVED, "t2i.ticket.connectwise.acmemsp.311")
    assert closed.resource()["t2i.customer"] == "Globex" and closed.payload["status"] == ">Closed"
    assert (added.event, added.resource_id) == (WORKLOG_CHANGED, "t2i.worklog.connectwise.acmemsp.5021")
    assert added.ticket == "311" and added.customer == "Globex" and added.payload["hours"] == 1.5
    assert deleted.resource_id == "t2i.worklog.connectwise.acmemsp.5022" and deleted.payload["action"] == "deleted"


def test_connectwise_replay_is_told_by_message_id(client: TestClient, recorder: Recorder) -> None:
    body = fixture("connectwise", "ticket_closed.json")  # the same MessageId both times
    assert post(client, "connectwise", body, signed("connectwise", body)).status_code == 202
    assert post(client, "connectwise", body, signed("connectwise", body)).status_code == 409
    assert len(recorder.events) == 1


@pytest.mark.parametrize(
    ("sender", "name"),
    [
        ("generic", "other_event.json"),
        ("zendesk", "ticket_status_changed_pending.json"),
        ("zendesk", "user_active_changed.json"),
        ("jira", "issue_updated_summary.json"),
        ("connectwise", "ticket_updated_open.json"),
        ("connectwise", "contact_updated.json"),
    ],
)
def test_non_billing_deliveries_are_ignored(client: TestClient, recorder: Recorder, sender: str, name: str) -> None:
    body = jira_body(name) if sender == "jira" else fixture(sender, name)
    answer = post(client, sender, body, signed(sender, body))
    assert answer.status_code == 200, answer.text
    assert answer.json()["events"] == 0 and "ignored" in answer.json()
    assert recorder.events == []


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["generic", "zendesk", "jira", "connectwise"])
def test_forged_signature_is_refused_and_nothing_emitted(
    client: TestClient, recorder: Recorder, sender: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = {
        "generic": lambda: fixture("generic", "ticket_resolved.json"),
        "zendesk": lambda: fixture("zendesk", "ticket_status_changed_solved.json"),
        "jira": lambda: jira_body("issue_updated_done.json"),
        "connectwise": lambda: connectwise_body("ticket_closed.json"),
    }[sender]()
    with caplog.at_level(logging.WARNING, logger="ticket_to_invoice.webhooks"):
        forged = post(client, sender, body, signed(sender, body, secret="not-the-secret"))
        tampered = post(client, sender, body.replace(b"}", b" }", 1), signed(sender, body))
    for answer in (forged, tampered):
        assert answer.status_code == 401
        assert "does not match" in answer.json()["error"]
        assert "Traceback" not in answer.text
    assert recorder.events == []
    refusals = [r for r in caplog.records if r.name == "ticket_to_invoice.webhooks"]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)
    assert f"source={sender}" in refusals[0].getMessage() and "remote=testclient" in refusals[0].getMessage()


def test_missing_signature_header_is_refused(client: TestClient, recorder: Recorder) -> None:
    body = fixture("zendesk", "ticket_status_changed_solved.json")
    answer = post(client, "zendesk", body, {})
    assert answer.status_code == 401 and "X-Zendesk-Webhook-Signature" in answer.json()["error"]


@pytest.mark.parametrize("sender", ["generic", "zendesk", "jira"])
def test_stale_deliveries_are_refused(client: TestClient, recorder: Recorder, sender: str) -> None:
    old = datetime.now(UTC) - timedelta(minutes=10)  # the tolerance is 300 s
    body = (
        jira_body("issue_updated_done.json", at=old)
        if sender == "jira"
        else fixture(
            sender, {"generic": "ticket_resolved.json", "zendesk": "ticket_status_changed_solved.json"}[sender]
        )
    )
    answer = post(client, sender, body, signed(sender, body, at=old))
    assert answer.status_code == 400 and "stale" in answer.json()["error"]
    assert recorder.events == []


def test_a_delivery_from_the_future_is_stale_too() -> None:
    body = fixture("generic", "ticket_resolved.json")
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(StaleDelivery):
        read_delivery("generic", signed("generic", body, at=later), body, SECRETS["generic"], tolerance_seconds=300)


def test_same_delivery_twice_is_emitted_once(client: TestClient, recorder: Recorder) -> None:
    body = fixture("generic", "ticket_resolved.json")
    first = post(client, "generic", body, signed("generic", body, delivery="same"))
    second = post(client, "generic", body, signed("generic", body, delivery="same"))
    assert (first.status_code, second.status_code) == (202, 409)
    assert "accepted before" in second.json()["error"]
    assert len(recorder.events) == 1


def test_identical_deliveries_at_once_are_emitted_once(client: TestClient, recorder: Recorder) -> None:
    recorder.delay = 0.3  # both requests are in flight while the first one emits
    body = jira_body("worklog_created.json")
    headers = signed("jira", body, delivery="concurrent-1")
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(post(client, "jira", body, headers).status_code))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202, 409, 409, 409]
    assert len(recorder.events) == 1


def test_unknown_source(client: TestClient) -> None:
    answer = client.post("/hooks/freshdesk", content=b"{}")
    assert answer.status_code == 404 and "freshdesk" in answer.json()["error"]


def test_malformed_json(client: TestClient, recorder: Recorder) -> None:
    body = b'{"event": "helpdesk.ticket.resolved", '
    answer = post(client, "generic", body, signed("generic", body))
    assert answer.status_code == 422 and "not JSON" in answer.json()["error"]


def test_a_body_missing_what_its_event_needs(client: TestClient, recorder: Recorder) -> None:
    body = json.dumps({"event": "helpdesk.ticket.resolved", "source": "redmine", "instance": "x"}).encode()
    answer = post(client, "generic", body, signed("generic", body))
    assert answer.status_code == 422 and "ticket" in answer.json()["error"]


def test_no_secret_configured(tmp_path: Path, recorder: Recorder) -> None:
    app = create_app(Settings(home=tmp_path / "home"), emit=recorder)  # no webhook_secrets, no Prefect API
    body = fixture("jira", "worklog_created.json")
    answer = TestClient(app).post("/hooks/jira", content=body, headers=signed("jira", body))
    assert answer.status_code == 401
    assert "TICKET_TO_INVOICE_WEBHOOK_SECRETS" in answer.json()["error"]
    assert "ticket-to-invoice-webhook-jira" in answer.json()["error"]
    assert recorder.events == []


def test_emit_failure_is_503_and_the_retry_is_accepted(
    client: TestClient, recorder: Recorder, wh_settings: Settings
) -> None:
    body = fixture("zendesk", "ticket_status_changed_solved.json")
    recorder.fail = True
    failed = post(client, "zendesk", body, signed("zendesk", body, delivery="inv-7"))
    assert failed.status_code == 503 and "send the delivery again" in failed.json()["error"]
    recorder.fail = False
    retried = post(client, "zendesk", body, signed("zendesk", body, delivery="inv-7"))
    assert retried.status_code == 202
    assert len(recorder.events) == 1
    # the ledger remembers the delivery and the Prefect event ids it became
    assert not Ledger(wh_settings.resolved_ledger_url).accept_delivery("zendesk", "inv-7")


def test_events_emitted_without_ids_count_as_not_sent(client: TestClient, recorder: Recorder) -> None:
    body = jira_body("worklog_created.json")
    headers = signed("jira", body, delivery="jira-9")
    recorder.silent = True
    assert post(client, "jira", body, headers).status_code == 503
    recorder.silent = False
    assert post(client, "jira", body, headers).status_code == 202
    assert len(recorder.events) == 1


def test_healthz_and_notifications(client: TestClient, wh_settings: Settings) -> None:
    assert client.get("/healthz").status_code == 200
    alert = {"flow_run": "monthly-billing", "state": "Failed"}
    assert client.post("/notifications", json=alert).status_code == 204
    assert client.post("/notifications", content=b"plain text").status_code == 204
    lines = [json.loads(line) for line in (wh_settings.home / "notifications.jsonl").read_text().splitlines()]
    assert lines[0]["state"] == "Failed" and "received_at" in lines[0]
    assert lines[1]["body"] == "plain text"


def test_refusal_types_carry_their_status() -> None:
    statuses = {
        cls: cls("x").status
        for cls in (BadSignature, StaleDelivery, webhooks.ReplayedDelivery, UnknownSource, MalformedPayload)
    }
    assert list(statuses.values()) == [401, 400, 409, 404, 422]
    assert all(issubclass(cls, webhooks.WebhookRefused) for cls in statuses)


# -- one real Prefect server -----------------------------------------------------------------------


@pytest.mark.integration
def test_an_event_reaches_a_real_prefect_server(prefect_server: None, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    import billing.events

    def emit_and_flush(events: list[BillingEvent]) -> list[str]:
        ids = billing.events.emit(events)
        EventsWorker.drain_all()  # the events client sends in the background: wait for it
        return ids

    ticket = f"T{uuid.uuid4().hex[:8]}"
    settings = Settings(home=tmp_path / "home", webhook_secrets=SECRETS)  # type: ignore[arg-type]
    client = TestClient(create_app(settings, emit=emit_and_flush))
    body = json.dumps(
        {"event": TICKET_RESOLVED, "source": "generic", "instance": "it", "ticket": ticket, "customer": "acme"}
    ).encode()
    answer = post(client, "generic", body, signed("generic", body))
    assert answer.status_code == 202, answer.text
    resource_id = f"t2i.ticket.generic.it.{ticket}"
    wanted = EventFilter(event=EventNameFilter(name=[TICKET_RESOLVED]), resource=EventResourceFilter(id=[resource_id]))
    found: list[Any] = []
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as prefect:
        while not found and time.monotonic() < deadline:
            found = prefect.read_events(filter=wanted, limit=50).events  # the server allows 50 at most
            time.sleep(0.5) if not found else None
    assert found, f"no {TICKET_RESOLVED} event for {resource_id} on the Prefect server"
    assert str(found[0].id) in answer.json()["ids"]
    assert found[0].resource["t2i.customer"] == "acme"
