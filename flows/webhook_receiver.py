"""The webhook receiver: helpdesk webhooks in, Prefect events out (``helpdesk.ticket.resolved`` ...).

``POST /hooks/{source}`` (generic, zendesk, jira, connectwise; ``?instance=`` names the instance when the body
does not) verifies the sender's signature, refuses stale and replayed deliveries, and emits the events the body
means; deployments with ``triggers:`` take it from there. ``POST /notifications`` is a target for a Prefect
automation's "call a webhook" action (it appends what it gets to ``<home>/notifications.jsonl``);
``GET /healthz`` answers 200.

Run it with ``python -m flows.webhook_receiver`` (127.0.0.1:``TICKET_TO_INVOICE_RECEIVER_PORT``, 4280). Put a
reverse proxy with TLS in front of it for senders on the internet, and expose only ``/hooks/``.

Exactly once, in this order: the delivery id is *claimed* in the ledger first (its primary key lets one of two
identical concurrent deliveries through), then the events are emitted; if emitting fails, the claim is
released and the sender is answered 503, so its retry of the same id is accepted rather than refused as a replay.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import billing.events
from billing.events import BillingEvent
from billing.ledger import Ledger
from billing.secrets import block_name, prefect_server_configured, secret
from billing.settings import Settings, load_settings
from connectors.webhooks import BadSignature, Delivery, ReplayedDelivery, WebhookRefused, read_delivery, sender

log = logging.getLogger("ticket_to_invoice.webhooks")

Emit = Callable[[list[BillingEvent]], list[str]]


class EmitFailed(WebhookRefused):
    """The events could not be sent: nothing was recorded, the sender should retry the delivery."""

    status = 503


def _secret_of(settings: Settings, source: str) -> str:
    """The source's shared secret from settings or its Secret block; refused (401) when neither has one."""
    found = secret(settings.webhook_secrets.get(source), f"webhook-{source}")
    if found is None or not found.get_secret_value():
        raise BadSignature(
            f"no secret is configured for webhook source {source!r}: set TICKET_TO_INVOICE_WEBHOOK_SECRETS "
            f'(JSON, e.g. {{"{source}": "..."}}) or create the Prefect Secret block {block_name(f"webhook-{source}")}'
        )
    return found.get_secret_value()


def accept(
    settings: Settings,
    ledger: Ledger,
    emit: Emit,
    source: str,
    headers: Mapping[str, str],
    body: bytes,
    instance: str | None,
) -> tuple[int, dict[str, Any]]:
    """One delivery from end to end (blocking: it runs in a worker thread). Raises ``WebhookRefused``."""
    sender(source)  # an unknown source is a 404 before any secret is looked up
    delivery: Delivery = read_delivery(
        source,
        headers,
        body,
        _secret_of(settings, source),
        tolerance_seconds=settings.webhook_tolerance_seconds,
        instance=instance,
    )
    if not delivery.events:
        # nothing to bill: not recorded either, so the replay log holds only deliveries that did something
        return 200, {"events": 0, "ids": [], "ignored": f"no billing event in this {source} delivery"}
    if not ledger.accept_delivery(source, delivery.delivery_id):
        raise ReplayedDelivery(f"delivery {delivery.delivery_id!r} from {source} was accepted before")
    try:
        ids = emit(delivery.events)
        if len(ids) < len(delivery.events):
            # Prefect's emit_event logs its own failures and returns None instead of raising: a missing id is
            # an event that was not queued, and the sender must send the delivery again
            raise RuntimeError(f"{len(delivery.events) - len(ids)} of {len(delivery.events)} events were not sent")
    except Exception as exc:
        ledger.forget_delivery(source, delivery.delivery_id)  # the sender's retry must not look like a replay
        log.warning("webhook %s delivery %s: emitting failed: %s", source, delivery.delivery_id, exc)
        raise EmitFailed("the events could not be sent to the Prefect server; send the delivery again") from None
    ledger.record_delivery_events(source, delivery.delivery_id, ids)
    return 202, {"events": len(delivery.events), "ids": ids}


def _append_notification(path: Any, lock: threading.Lock, received: Any) -> None:
    line = received if isinstance(received, dict) else {"body": received}
    line = {**line, "received_at": datetime.now(UTC).isoformat()}
    with lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")


def create_app(settings: Settings | None = None, emit: Emit = billing.events.emit) -> FastAPI:
    """The receiver's app; ``emit`` is replaceable so that tests record events instead of sending them."""
    settings = settings or load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.resolved_ledger_url)
    notifications, lock = settings.home / "notifications.jsonl", threading.Lock()
    app = FastAPI(title="ticket-to-invoice webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(WebhookRefused)
    async def _refused(request: Request, exc: WebhookRefused) -> JSONResponse:
        remote = request.client.host if request.client else "?"
        log.warning(
            "webhook refused: source=%s status=%d reason=%s remote=%s",
            request.path_params.get("source", "?"),
            exc.status,
            exc.reason,
            remote,
        )
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        # logged here with its traceback; the sender gets a plain sentence, never the traceback
        log.error("webhook receiver failed on %s: %s", request.url.path, exc, exc_info=exc)
        return JSONResponse({"error": "internal error; send the delivery again later"}, status_code=500)

    @app.post("/hooks/{source}")
    async def hook(source: str, request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: signatures are over them, never over re-serialised JSON
        instance = request.query_params.get("instance") or None
        status, answer = await run_in_threadpool(
            accept, settings, ledger, emit, source, dict(request.headers), body, instance
        )
        return JSONResponse(answer, status_code=status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/notifications", status_code=204)
    async def notification(request: Request) -> Response:
        raw = await request.body()
        try:
            received: Any = json.loads(raw) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            received = raw.decode("utf-8", "replace")  # keep what an automation sent, even if it is not JSON
        await run_in_threadpool(_append_notification, notifications, lock, received)
        return Response(status_code=204)

    return app


def serve(settings: Settings | None = None) -> None:
    """Run the receiver on 127.0.0.1 (a proxy in front of it faces the internet)."""
    import uvicorn

    settings = settings or load_settings()
    if not prefect_server_configured():
        log.warning("PREFECT_API_URL is not set: events cannot be sent, and deliveries will be answered 503")
    uvicorn.run(create_app(settings), host="127.0.0.1", port=settings.receiver_port, log_level="info")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve()


if __name__ == "__main__":
    main()
