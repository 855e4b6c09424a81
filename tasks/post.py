"""Post: approved drafts into the ERP, exactly once. The ERP connector finds a draft already posted by its
key (a crash between posting and recording it) and answers with that invoice instead of a second one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydantic import SecretStr

from billing.errors import ConfigurationError
from billing.ledger import Ledger
from billing.models import DraftState, PostingFailure, PostingReceipt
from billing.secrets import required_secret
from billing.settings import Settings
from connectors.base import ErpConnector
from connectors.file_erp import FileErp
from connectors.tryton import TrytonErp
from connectors.tryton_rpc import TrytonRpc
from rules.quality import validate_drafts
from tasks.stage import plural, stage


def make_erp(settings: Settings) -> ErpConnector:
    if settings.erp == "files":
        return FileErp(settings.erp_files_dir)
    if settings.erp == "tryton":
        if not settings.tryton_url:
            raise ConfigurationError("no Tryton to post to", hint="set TICKET_TO_INVOICE_TRYTON_URL, or run the "
                                     "flow inside erp_session() to use the embedded Tryton")  # fmt: skip
        password = required_secret(settings.tryton_password, "tryton-password",
                                   variable="TICKET_TO_INVOICE_TRYTON_PASSWORD",
                                   needed_for=f"the Tryton at {settings.tryton_url}")  # fmt: skip
        rpc = TrytonRpc(settings.tryton_url, settings.tryton_database, settings.tryton_user, password)
        return TrytonErp(rpc, mappings=Ledger(settings.resolved_ledger_url))
    raise ConfigurationError(f"unknown ERP {settings.erp!r}")


def erp_target(settings: Settings) -> str:
    """Which ERP instance posting writes to, as a lock name."""
    if settings.erp == "files":
        return f"files:{settings.erp_files_dir.resolve()}"
    return f"{settings.erp}:{settings.tryton_url}/{settings.tryton_database}"


@contextmanager
def erp_session(settings: Settings, years: set[int], say: Callable[[str], None] = print) -> Iterator[Settings]:
    """The settings to post with. With the default ERP and no Tryton URL configured, an embedded Tryton is
    set up under the home on first use (about a minute), started on 127.0.0.1 and stopped afterwards."""
    if settings.erp != "tryton" or settings.tryton_url:
        yield settings
        return
    from connectors.tryton_embedded import EmbeddedTryton

    with EmbeddedTryton(settings.home, years=sorted(years), progress=say) as tryton:
        yield settings.model_copy(update={
            "tryton_url": tryton.url, "tryton_database": tryton.database, "tryton_user": tryton.user,
            "tryton_password": SecretStr(tryton.password),
        })  # fmt: skip


def post_approved(settings: Settings, period: str) -> tuple[list[PostingReceipt], list[PostingFailure]]:
    """Post every approved, unposted draft of the period (including ones a failed run left behind)."""
    ledger = Ledger(settings.resolved_ledger_url)
    erp = make_erp(settings)
    # One poster per ERP at a time, across processes: check-then-create by key is only exact when serialized
    # (and Tryton on SQLite numbers invoices twice under concurrent posts). The approved drafts are read
    # under the lock, so a draft another run replaced meanwhile is not posted in its old form.
    target = erp_target(settings)
    with ledger.lock(f"posting:{target}", purpose=f"posting into {target}"):
        approved = ledger.drafts(period, states=[DraftState.APPROVED])
        # The drafts suite (rules/suites/drafts.json) is the last gate: a bad draft stays approved and unposted,
        # reported as a failed posting with its reason, and is checked again on the next run.
        # Unless the ERP may create customers (it does, by code, by default), a customer must be mapped already.
        mapped = None if settings.erp_creates_customers else set(ledger.erp_mappings(erp.name, "party"))
        problems, _ = validate_drafts(approved, mapped_customers=mapped)
        refused = {p.key: p.reason for p in problems}
        receipts, failures = erp.post([d for d in approved if d.key not in refused])
        ledger.record_postings(receipts, actor=f"post:{erp.name}")
    failures += [PostingFailure(draft_key=k, erp=erp.name, error=f"not posted: {r}") for k, r in refused.items()]
    return receipts, failures


def _posted(outcome: tuple[list[PostingReceipt], list[PostingFailure]]) -> str:
    receipts, failures = outcome
    new = [r for r in receipts if not r.already_existed]
    said = [f"posted {plural(len(new), 'invoice')}" + (": " + ", ".join(r.erp_number for r in new) if new else "")]
    if found := [r.erp_number for r in receipts if r.already_existed]:
        said.append(f"found {plural(len(found), 'invoice')} posted before under its key: {', '.join(found)}")
    if failures:
        said.append(f"NOT posted {len(failures)}: " + "; ".join(f"{f.draft_key}: {f.error}" for f in failures))
    return "; ".join(said)


post = stage(post_approved, name="post", says=_posted, retries=2, retry_delay_seconds=10)
