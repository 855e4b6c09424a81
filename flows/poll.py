"""The source poller: read what changed in a source since the cursor kept in the ledger, emit it as Prefect
events, and move the cursor on. Deployed on an interval; deployments with ``triggers:`` consume the events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from billing import events
from billing.errors import ConfigurationError
from billing.events import EXPORT_READY, TICKET_RESOLVED, WORKLOG_CHANGED, BillingEvent
from billing.ledger import Ledger
from billing.settings import Settings, check_home, load_settings
from connectors.polling import Changes, PollableSource
from tasks.extract import make_source

Emit = Callable[[list[BillingEvent]], object]
WHAT = {TICKET_RESOLVED: "ticket(s) resolved", WORKLOG_CHANGED: "work log(s) changed", EXPORT_READY: "export(s) ready"}
COUNT_KEY = {TICKET_RESOLVED: "tickets_resolved", WORKLOG_CHANGED: "worklogs_changed", EXPORT_READY: "exports_ready"}


@dataclass(frozen=True)
class PollReport:
    cursor_name: str
    changes: Changes

    def as_dict(self) -> dict[str, Any]:
        counts = {COUNT_KEY[name]: self.changes.count(name) for name in WHAT}
        since = self.changes.since.isoformat() if self.changes.since else None
        return {"cursor": self.cursor_name, "since": since, "emitted": len(self.changes.events), **counts}

    def summary(self) -> str:
        """In business terms: "3 ticket(s) resolved, 5 work log(s) changed since 2026-11-30 10:00 UTC; emitted 8"."""
        found = ", ".join(f"{self.changes.count(name)} {what}" for name, what in WHAT.items()
                          if self.changes.count(name)) or "nothing new"  # fmt: skip
        since = f"since {self.changes.since:%Y-%m-%d %H:%M} UTC" if self.changes.since else "on a first look"
        return f"{found} {since}; emitted {len(self.changes.events)} event(s)"


def cursor_name(source: PollableSource) -> str:
    return f"poll:{source.system}:{source.instance}"


def poll(
    settings: Settings, emit: Emit = events.emit, now: datetime | None = None,
    lookback: timedelta = timedelta(days=1),
) -> PollReport:  # fmt: skip
    """One poll of the settings' source. The cursor is saved only once ``emit`` returned: a failed emit
    re-reads the same changes next time (consumers take an event twice without harm)."""
    source = make_source(settings)
    if not isinstance(source, PollableSource):
        raise ConfigurationError(f"the source {settings.source!r} cannot be polled for changes")
    check_home(settings)  # the default ledger lives there
    ledger = Ledger(settings.resolved_ledger_url)
    name = cursor_name(source)
    changes = source.changes_since(ledger.cursor(name), now or datetime.now(UTC), initial_lookback=lookback)
    if changes.events:
        emit(changes.events)
    ledger.save_cursor(name, changes.cursor)
    return PollReport(name, changes)


def _run_name() -> str:
    return f"poll {flow_run.parameters.get('source') or load_settings().source}"


@flow(name="poll-source", flow_run_name=_run_name, log_prints=True)
def poll_source(source: str | None = None, lookback_minutes: int = 1440) -> dict[str, Any]:
    """Emit a source's changes since the last poll as events (tickets resolved, work logs changed, an export ready).

    Args:
        source: The source to poll: redmine or files; empty for the configured one (TICKET_TO_INVOICE_SOURCE).
        lookback_minutes: How far back the very first poll of a source looks (later polls start where the
            last one ended); its whole history is never emitted.
    """
    settings = load_settings(source=source)
    report = poll(settings, events.emit, lookback=timedelta(minutes=lookback_minutes))
    get_run_logger().info(report.summary())
    return report.as_dict()
