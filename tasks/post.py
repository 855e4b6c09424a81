"""Post: approved drafts into the ERP, exactly once. The ERP connector finds a draft already posted by its
key (a crash between posting and recording it) and answers with that invoice instead of a second one."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from billing.ledger import Ledger
from billing.models import DraftState, PostingFailure, PostingReceipt
from billing.settings import Settings
from connectors.base import ErpConnector
from connectors.file_erp import FileErp


def make_erp(settings: Settings) -> ErpConnector:
    if settings.erp == "files":
        return FileErp(settings.erp_files_dir)
    raise ValueError(f"unknown ERP {settings.erp!r}")


def post_approved(settings: Settings, period: str) -> tuple[list[PostingReceipt], list[PostingFailure]]:
    """Post every approved, unposted draft of the period (including ones a failed run left behind)."""
    ledger = Ledger(settings.resolved_ledger_url)
    erp = make_erp(settings)
    approved = ledger.drafts(period, states=[DraftState.APPROVED])
    receipts, failures = erp.post(approved)
    ledger.record_postings(receipts, actor=f"post:{erp.name}")
    return receipts, failures


post = task(post_approved, name="post", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
