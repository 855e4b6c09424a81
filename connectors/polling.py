"""What a source poller reads: changes since a cursor, as billing events, and the next cursor (data, kept in the
ledger under ``poll:<source>:<instance>``).

A cursor is plain JSON: ``{"since": "<ISO UTC>", "seen": [...]}`` for a source with timestamps (each poll
re-reads a lag window before ``since`` and skips what ``seen`` lists), or whatever else a source needs to tell
"changed" from "the same" (a file drop keeps a fingerprint).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from billing.events import BillingEvent

DEFAULT_LOOKBACK = timedelta(days=1)  # a first poll reports the last day, never a source's whole history


@dataclass(frozen=True)
class Changes:
    """The events of one poll, the cursor to save once they are emitted, and where the poll started reading."""

    events: list[BillingEvent]
    cursor: dict[str, Any]
    since: datetime | None  # None: no history to speak of (a first look at a file drop)

    def count(self, event: str) -> int:
        return Counter(item.event for item in self.events)[event]


@runtime_checkable
class PollableSource(Protocol):
    """A source that can say what changed since a cursor (Redmine, a file drop)."""

    system: str
    instance: str

    def changes_since(
        self, cursor: dict[str, Any] | None, now: datetime, initial_lookback: timedelta = DEFAULT_LOOKBACK
    ) -> Changes: ...


def utc_iso(moment: datetime) -> str:
    """Seconds and a Z, as Redmine writes and filters timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cursor_since(cursor: dict[str, Any] | None, now: datetime, initial_lookback: timedelta) -> datetime:
    """Where the window starts: the cursor's ``since``, or ``initial_lookback`` before now on a first poll."""
    if cursor and cursor.get("since"):
        return parse_utc(str(cursor["since"]))
    return now - initial_lookback
