"""The events ticket-to-invoice reads and writes on the Prefect server: their names and resource ids.

Producers (the webhook receiver, the source poller) emit them; deployments with ``triggers:`` in
``prefect.yaml`` consume them. A resource id names the source system, its instance and the object, so a
trigger can match one system or one customer (``match: {"t2i.customer": "acme"}``):

=========================  =========================================================  ========================
event                      resource id                                                 means
=========================  =========================================================  ========================
helpdesk.ticket.resolved   ``t2i.ticket.<source>.<instance>.<ticket>``                 a ticket was resolved or
                                                                                      closed: its work is final
helpdesk.worklog.changed   ``t2i.worklog.<source>.<instance>.<worklog>``               a work log was added,
                                                                                      edited or deleted
export.ready               ``t2i.export.<source>.<instance>``                          a new export (file drop)
                                                                                      is complete
=========================  =========================================================  ========================

Every resource also carries the labels ``t2i.source``, ``t2i.instance``, ``t2i.ticket`` and ``t2i.customer``
(empty when unknown); the payload carries what the producer knew (``delivery``, ``status``, ``at`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

TICKET_RESOLVED: Final = "helpdesk.ticket.resolved"
WORKLOG_CHANGED: Final = "helpdesk.worklog.changed"
EXPORT_READY: Final = "export.ready"
EVENT_NAMES: Final = (TICKET_RESOLVED, WORKLOG_CHANGED, EXPORT_READY)
EventName = Literal["helpdesk.ticket.resolved", "helpdesk.worklog.changed", "export.ready"]


def _part(value: str) -> str:
    """A resource id is dot-separated: keep a part from adding levels."""
    return str(value).replace(".", "_") or "-"


@dataclass(frozen=True)
class BillingEvent:
    """One event in the vocabulary above, ready for ``prefect.events.emit_event(**event.emit_kwargs())``."""

    event: EventName
    source: str  # source system: redmine, zendesk, jira, connectwise, files, generic ...
    instance: str  # which one of them (host name, tenant, subdomain)
    ticket: str = ""
    customer: str = ""
    worklog: str = ""
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def resource_id(self) -> str:
        base = f"{_part(self.source)}.{_part(self.instance)}"
        if self.event == TICKET_RESOLVED:
            return f"t2i.ticket.{base}.{_part(self.ticket)}"
        if self.event == WORKLOG_CHANGED:
            return f"t2i.worklog.{base}.{_part(self.worklog or self.ticket)}"
        return f"t2i.export.{base}"

    def resource(self) -> dict[str, str]:
        return {
            "prefect.resource.id": self.resource_id,
            "t2i.source": self.source,
            "t2i.instance": self.instance,
            "t2i.ticket": self.ticket,
            "t2i.customer": self.customer,
        }

    def emit_kwargs(self) -> dict[str, Any]:
        return {"event": self.event, "resource": self.resource(), "payload": dict(self.payload)}


def emit(events: list[BillingEvent]) -> list[str]:
    """Send events to the Prefect server of the current settings, in one request; their ids.

    A plain ``POST /api/events`` rather than ``prefect.events.emit_event``, which only queues and logs a
    failed send: here a failure raises, so a webhook sender is told to retry and a poller keeps its cursor."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    built = [Event(**item.emit_kwargs()) for item in events]
    if built:
        with get_client(sync_client=True) as client:
            client.request("POST", "/events", json=[e.model_dump(mode="json") for e in built]).raise_for_status()
    return [str(e.id) for e in built]
