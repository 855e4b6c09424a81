"""What every connector promises, so flows can swap a helpdesk or an ERP by name."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from billing.models import InvoiceDraft, PostingFailure, PostingReceipt, WorkBatch


class SourceConnector(Protocol):
    """A ticketing or service system we extract billable work from."""

    system: str

    def default_period(self) -> str: ...

    def period_of(self, moment: datetime) -> str:
        """The period that work done at ``moment`` (UTC) is billed in: what a run on an event bills."""
        ...

    def check(self) -> None:
        """Raise ``UserFacingError`` for input that cannot be read at all (before a flow run starts)."""
        ...

    def extract(self, period: str | None) -> WorkBatch: ...


@runtime_checkable
class FingerprintedSource(Protocol):
    """A source that can hash all it would extract for a period without extracting it (a file drop: its files'
    bytes), so that a rerun over the same data is known to find nothing new at once."""

    def fingerprint(self, period: str) -> str: ...


class ErpConnector(Protocol):
    """An ERP that receives invoices. ``post`` must be idempotent by the draft's key."""

    name: str

    def find(self, draft_key: str) -> PostingReceipt | None: ...

    def post(self, drafts: Sequence[InvoiceDraft]) -> tuple[list[PostingReceipt], list[PostingFailure]]: ...

    def read_back(self, draft_keys: Sequence[str]) -> dict[str, list[PostingReceipt]]:
        """Every ERP invoice carrying each key (more than one means a duplicate)."""
        ...
