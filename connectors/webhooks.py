"""Helpdesk webhooks → billing events: signature schemes, delivery ids and payload mapping, per sender.

Plain functions (no Prefect, no web framework): the receiver in ``flows/webhook_receiver.py`` calls
``read_delivery`` with the raw body and headers and turns a ``WebhookRefused`` into an HTTP answer.

Senders, and the documentation each one follows (fixtures in ``tests/fixtures/webhooks/<sender>/``):

``generic``
    Our own scheme, for any system that can sign a request: ``X-T2I-Timestamp`` (unix seconds),
    ``X-T2I-Delivery`` (unique id), ``X-T2I-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``.
    Body: ``{"event": "helpdesk.ticket.resolved", "source": ..., "instance": ..., "ticket": ..., "customer": ...,
    "worklog": ...}``.
``zendesk``
    https://developer.zendesk.com/documentation/webhooks/verifying/ : ``X-Zendesk-Webhook-Signature`` =
    base64(HMAC-SHA256(secret, timestamp + body)), ``X-Zendesk-Webhook-Signature-Timestamp`` (ISO-8601).
    Delivery id: ``X-Zendesk-Webhook-Invocation-Id`` (documented in "Anatomy of a webhook request"), else the
    event's ``id``, else a hash of timestamp and body. Payloads: Zendesk ticket events
    (``zen:event-type:ticket.status_changed``, https://developer.zendesk.com/api-reference/webhooks/event-types/
    ticket-events/); a trigger or automation webhook, whose body the admin writes, may send the generic body.
    Zendesk's time tracking lives in account-specific custom fields, so it is not mapped (no documented field).
``jira``
    https://developer.atlassian.com/cloud/jira/platform/webhooks/ (secure admin webhooks):
    ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>``; delivery id ``X-Atlassian-Webhook-Identifier``
    (the same on retries). Jira signs no timestamp header: the body's ``timestamp`` (ms, inside the signed body)
    is checked for staleness, so a retry later than the tolerance is refused as stale.
``connectwise``
    ConnectWise PSA callbacks (developer.connectwise.com, "PSA Callbacks"): body ``{"MessageId", "FromUrl",
    "CompanyId", "Action", "Type", "ID", "Entity" (a JSON string), "Metadata": {"key_url"}, ...}``; header
    ``x-content-signature`` = base64(HMAC-SHA256(key=SHA-256(signing key), body)). ConnectWise publishes the
    signing key at ``Metadata.key_url``; fetching a key from a URL named by the request itself would let anyone
    choose the key, so this receiver verifies with a **configured** secret instead (the ``signing_key`` fetched
    once from your callback's key URL). ConnectWise sends no timestamp: staleness is not checked, replays are
    refused by ``MessageId`` alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from billing.events import EVENT_NAMES, TICKET_RESOLVED, WORKLOG_CHANGED, BillingEvent

MAX_BODY_BYTES = 1_000_000  # a helpdesk event is a few kB; anything near this is not one


# -- refusals ------------------------------------------------------------------------------------


class WebhookRefused(Exception):
    """A delivery the receiver will not turn into events; ``status`` is the HTTP answer, ``reason`` is plain."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadSignature(WebhookRefused):
    status = 401


class StaleDelivery(WebhookRefused):
    status = 400


class ReplayedDelivery(WebhookRefused):
    status = 409


class UnknownSource(WebhookRefused):
    status = 404


class MalformedPayload(WebhookRefused):
    status = 422


class PayloadTooLarge(WebhookRefused):
    status = 413


# -- what a delivery becomes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: who sent it, its id for the replay log, when it was signed, the events it means."""

    source: str
    delivery_id: str
    sent_at: datetime | None  # None: the sender signs no time (ConnectWise)
    events: list[BillingEvent]


Headers = Mapping[str, str]  # lower-case names (see ``_lower``)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _same(expected: str, given: str) -> bool:
    # constant time, so response timing tells a prober nothing about how much of a forgery was right
    return hmac.compare_digest(expected.encode(), given.strip().encode())


def _require(headers: Headers, name: str) -> str:
    value = headers.get(name.lower(), "").strip()
    if not value:
        raise BadSignature(f"the header {name} is missing")
    return value


def _body_hash(*parts: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"".join(parts)).hexdigest()


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _host(url: Any) -> str:
    """The site a Jira ``self`` link points at: the instance when no ``?instance=`` names one."""
    if not isinstance(url, str):
        return ""
    return urlsplit(url).hostname or ""


# -- generic (our own scheme) -----------------------------------------------------------------------


def generic_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-T2I-Signature`` value a sender computes (also used by the tests and the README recipe)."""
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _generic_verify(headers: Headers, body: bytes, secret: str) -> None:
    timestamp = _require(headers, "X-T2I-Timestamp")
    if not _same(generic_signature(secret, timestamp, body), _require(headers, "X-T2I-Signature")):
        raise BadSignature("the X-T2I-Signature does not match the body and timestamp")


def _generic_delivery(headers: Headers, body: bytes, payload: Any) -> str:
    delivery = headers.get("x-t2i-delivery", "").strip()
    if not delivery:
        raise WebhookRefused("the header X-T2I-Delivery is missing: without it a replay cannot be told apart")
    return delivery


def _generic_sent_at(headers: Headers, payload: Any) -> datetime:
    raw = headers.get("x-t2i-timestamp", "")
    try:
        return datetime.fromtimestamp(int(raw), UTC)
    except (ValueError, OverflowError, OSError):
        raise BadSignature(f"X-T2I-Timestamp {raw!r} is not unix seconds") from None


def generic_events(payload: Any, instance: str | None, delivery_id: str, sender: str = "generic") -> list[BillingEvent]:
    """Our documented body, one event per delivery; an event name outside the vocabulary is ignored."""
    if not isinstance(payload, dict):
        raise MalformedPayload("the body is not a JSON object")
    name = payload.get("event")
    if name not in EVENT_NAMES:
        return []
    source, where = _str(payload.get("source")) or sender, instance or _str(payload.get("instance"))
    ticket, worklog = _str(payload.get("ticket")), _str(payload.get("worklog"))
    if not where:
        raise MalformedPayload('the body names no instance (give "instance" or ?instance=)')
    if name == TICKET_RESOLVED and not ticket:
        raise MalformedPayload(f'a {name} event needs "ticket"')
    if name == WORKLOG_CHANGED and not (worklog or ticket):
        raise MalformedPayload(f'a {name} event needs "worklog" (or "ticket")')
    extra = payload.get("payload") if isinstance(payload.get("payload"), dict) else {}
    return [
        BillingEvent(
            name,
            source,
            where,
            ticket=ticket,
            customer=_str(payload.get("customer")),
            worklog=worklog,
            payload={**extra, "delivery": delivery_id, "sender": sender},
        )
    ]


# -- Zendesk --------------------------------------------------------------------------------------

ZENDESK_RESOLVED = {"solved", "closed"}


def zendesk_signature(secret: str, timestamp: str, body: bytes) -> str:
    return base64.b64encode(_hmac_sha256(secret.encode(), timestamp.encode() + body)).decode()


def _zendesk_verify(headers: Headers, body: bytes, secret: str) -> None:
    timestamp = _require(headers, "X-Zendesk-Webhook-Signature-Timestamp")
    if not _same(zendesk_signature(secret, timestamp, body), _require(headers, "X-Zendesk-Webhook-Signature")):
        raise BadSignature("the X-Zendesk-Webhook-Signature does not match the body and timestamp")


def _zendesk_delivery(headers: Headers, body: bytes, payload: Any) -> str:
    invocation = headers.get("x-zendesk-webhook-invocation-id", "").strip()
    if invocation:
        return invocation
    if isinstance(payload, dict) and payload.get("id") and str(payload.get("type", "")).startswith("zen:"):
        return f"event:{payload['id']}"  # an event webhook's own id, the same on every retry
    return _body_hash(headers.get("x-zendesk-webhook-signature-timestamp", "").encode(), body)


def _iso(raw: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadSignature(f"{what} {raw!r} is not an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _zendesk_sent_at(headers: Headers, payload: Any) -> datetime:
    raw = headers.get("x-zendesk-webhook-signature-timestamp", "")
    return _iso(raw, "X-Zendesk-Webhook-Signature-Timestamp")


def zendesk_events(payload: Any, instance: str | None, delivery_id: str) -> list[BillingEvent]:
    """A ticket event whose status became solved or closed; a trigger body in the generic shape; else nothing."""
    if not isinstance(payload, dict):
        raise MalformedPayload("the body is not a JSON object")
    kind = payload.get("type")
    if not isinstance(kind, str):  # a trigger/automation webhook: its body is whatever the admin wrote
        return generic_events(payload, instance, delivery_id, sender="zendesk") if "event" in payload else []
    if kind != "zen:event-type:ticket.status_changed":
        return []
    detail, change = payload.get("detail"), payload.get("event")
    if not isinstance(detail, dict) or not isinstance(change, dict) or not detail.get("id"):
        raise MalformedPayload("a ticket.status_changed event without detail.id or event.current")
    status = _str(change.get("current")).lower()
    if status not in ZENDESK_RESOLVED:
        return []
    where = instance or _str(payload.get("account_id"))
    organization = _str(detail.get("organization_id"))
    return [
        BillingEvent(
            TICKET_RESOLVED,
            "zendesk",
            where,
            ticket=_str(detail["id"]),
            customer="" if organization in ("", "0") else organization,
            payload={
                "delivery": delivery_id,
                "status": status,
                "previous": _str(change.get("previous")),
                "at": _str(payload.get("time")),
                "sender": "zendesk",
            },
        )
    ]


# -- Jira Cloud -----------------------------------------------------------------------------------

JIRA_WORKLOG_EVENTS = {"worklog_created": "created", "worklog_updated": "updated", "worklog_deleted": "deleted"}


def jira_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _jira_verify(headers: Headers, body: bytes, secret: str) -> None:
    if not _same(jira_signature(secret, body), _require(headers, "X-Hub-Signature")):
        raise BadSignature("the X-Hub-Signature does not match the body")


def _jira_delivery(headers: Headers, body: bytes, payload: Any) -> str:
    return headers.get("x-atlassian-webhook-identifier", "").strip() or _body_hash(body)


def _jira_sent_at(headers: Headers, payload: Any) -> datetime:
    stamp = payload.get("timestamp") if isinstance(payload, dict) else None
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        raise MalformedPayload('a Jira body without a numeric "timestamp" (ms) cannot be checked for staleness')
    return datetime.fromtimestamp(stamp / 1000, UTC)


def _jira_resolved(payload: dict[str, Any]) -> bool:
    """Moved into a status of the Done category, or given a resolution, by this very change."""
    items = (payload.get("changelog") or {}).get("items") or []
    fields = ((payload.get("issue") or {}).get("fields")) or {}
    category = ((fields.get("status") or {}).get("statusCategory") or {}).get("key")
    status_moved = any(isinstance(i, dict) and i.get("field") == "status" for i in items)
    resolution_set = any(isinstance(i, dict) and i.get("field") == "resolution" and i.get("to") for i in items)
    return (status_moved and category == "done") or resolution_set


def jira_events(payload: Any, instance: str | None, delivery_id: str) -> list[BillingEvent]:
    if not isinstance(payload, dict):
        raise MalformedPayload("the body is not a JSON object")
    kind = payload.get("webhookEvent")
    common = {"delivery": delivery_id, "sender": "jira", "at": payload.get("timestamp")}
    if kind == "jira:issue_updated" and _jira_resolved(payload):
        issue = payload.get("issue") or {}
        if not issue.get("key"):
            raise MalformedPayload("a jira:issue_updated body without issue.key")
        fields = issue.get("fields") or {}
        return [
            BillingEvent(
                TICKET_RESOLVED,
                "jira",
                instance or _host(issue.get("self")),
                ticket=str(issue["key"]),
                payload={
                    **common,
                    "status": _str((fields.get("status") or {}).get("name")),
                    "project": _str((fields.get("project") or {}).get("key")),
                },
            )
        ]
    if kind in JIRA_WORKLOG_EVENTS:
        worklog = payload.get("worklog") or {}
        if not isinstance(worklog, dict) or not worklog.get("id"):
            raise MalformedPayload(f"a {kind} body without worklog.id")
        return [
            BillingEvent(
                WORKLOG_CHANGED,
                "jira",
                instance or _host(worklog.get("self")),
                ticket=_str(worklog.get("issueId")),
                worklog=str(worklog["id"]),
                payload={
                    **common,
                    "action": JIRA_WORKLOG_EVENTS[kind],
                    "time_spent_seconds": worklog.get("timeSpentSeconds"),
                },
            )
        ]
    return []


# -- ConnectWise PSA ------------------------------------------------------------------------------

CONNECTWISE_TICKET_CHARGES = {"ServiceTicket", "ProjectTicket"}


def connectwise_signature(secret: str, body: bytes) -> str:
    # as documented: the HMAC key is the SHA-256 digest of the signing key, not the key itself
    return base64.b64encode(_hmac_sha256(hashlib.sha256(secret.encode()).digest(), body)).decode()


def _connectwise_verify(headers: Headers, body: bytes, secret: str) -> None:
    if not _same(connectwise_signature(secret, body), _require(headers, "x-content-signature")):
        raise BadSignature("the x-content-signature does not match the body")


def _connectwise_delivery(headers: Headers, body: bytes, payload: Any) -> str:
    message = payload.get("MessageId") if isinstance(payload, dict) else None
    return _str(message) or _body_hash(body)


def _connectwise_sent_at(headers: Headers, payload: Any) -> None:
    return None  # no time in a callback; replays are refused by MessageId


def _connectwise_entity(payload: dict[str, Any]) -> dict[str, Any]:
    """``Entity`` is the record as a JSON *string* (null on a deletion)."""
    entity = payload.get("Entity")
    if isinstance(entity, str) and entity.strip():
        try:
            entity = json.loads(entity)
        except json.JSONDecodeError:
            raise MalformedPayload("the callback's Entity is not JSON") from None
    return entity if isinstance(entity, dict) else {}


def connectwise_events(payload: Any, instance: str | None, delivery_id: str) -> list[BillingEvent]:
    if not isinstance(payload, dict):
        raise MalformedPayload("the body is not a JSON object")
    kind, action = _str(payload.get("Type")).lower(), _str(payload.get("Action")).lower()
    if kind not in ("ticket", "time"):
        return []
    if payload.get("ID") in (None, ""):
        raise MalformedPayload(f"a {kind} callback without ID")
    entity = _connectwise_entity(payload)
    where = instance or _str(payload.get("CompanyId"))
    customer = _str((entity.get("company") or {}).get("identifier"))
    common = {"delivery": delivery_id, "sender": "connectwise", "action": action}
    if kind == "ticket":
        if action == "deleted" or entity.get("closedFlag") is not True:
            return []
        status = _str((entity.get("status") or {}).get("name"))
        return [
            BillingEvent(
                TICKET_RESOLVED,
                "connectwise",
                where,
                ticket=_str(payload["ID"]),
                customer=customer,
                payload={**common, "status": status},
            )
        ]
    ticket = _str(entity.get("chargeToId")) if entity.get("chargeToType") in CONNECTWISE_TICKET_CHARGES else ""
    return [
        BillingEvent(
            WORKLOG_CHANGED,
            "connectwise",
            where,
            ticket=ticket,
            customer=customer,
            worklog=_str(payload["ID"]),
            payload={**common, "hours": entity.get("actualHours")},
        )
    ]


# -- the senders, and one delivery read from end to end ---------------------------------------------


@dataclass(frozen=True)
class Sender:
    verify: Callable[[Headers, bytes, str], None]
    delivery_id: Callable[[Headers, bytes, Any], str]
    sent_at: Callable[[Headers, Any], datetime | None]
    events: Callable[[Any, str | None, str], list[BillingEvent]]


SENDERS: dict[str, Sender] = {
    "generic": Sender(_generic_verify, _generic_delivery, _generic_sent_at, generic_events),
    "zendesk": Sender(_zendesk_verify, _zendesk_delivery, _zendesk_sent_at, zendesk_events),
    "jira": Sender(_jira_verify, _jira_delivery, _jira_sent_at, jira_events),
    "connectwise": Sender(_connectwise_verify, _connectwise_delivery, _connectwise_sent_at, connectwise_events),
}


def sender(source: str) -> Sender:
    if source not in SENDERS:
        raise UnknownSource(f"no webhook source {source!r} (known: {', '.join(SENDERS)})")
    return SENDERS[source]


def parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedPayload(f"the body is not JSON: {exc}") from None


def check_fresh(sent_at: datetime | None, now: datetime, tolerance_seconds: float) -> None:
    if sent_at is not None and abs((now - sent_at).total_seconds()) > tolerance_seconds:
        raise StaleDelivery(
            f"signed at {sent_at.isoformat()}, more than {tolerance_seconds:g} s from now: refused as stale"
        )


def read_delivery(
    source: str,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    tolerance_seconds: float,
    now: datetime | None = None,
    instance: str | None = None,
) -> Delivery:
    """Verify, then parse, then check the time, then map: a body is never read before its signature holds."""
    chosen = sender(source)
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body has {len(body)} bytes, more than {MAX_BODY_BYTES}")
    lower = _lower(headers)
    chosen.verify(lower, body, secret)
    payload = parse(body)
    sent_at = chosen.sent_at(lower, payload)
    check_fresh(sent_at, now or datetime.now(UTC), tolerance_seconds)
    delivery_id = chosen.delivery_id(lower, body, payload)
    return Delivery(source, delivery_id, sent_at, chosen.events(payload, instance, delivery_id))
