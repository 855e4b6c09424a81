"""Post: approved drafts into the ERP, exactly once. The ERP connector finds a draft already posted by its
key (a crash between posting and recording it) and answers with that invoice instead of a second one."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit
from uuid import UUID, uuid4

from prefect import get_run_logger
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from pydantic import SecretStr

from billing.errors import ConfigurationError, RunInProgress
from billing.ledger import Ledger
from billing.models import DraftState, PostingFailure, PostingReceipt
from billing.secrets import prefect_server_configured, required_secret
from billing.settings import Settings
from connectors.base import ErpConnector
from connectors.file_erp import FileErp
from connectors.tryton import TrytonErp
from connectors.tryton_rpc import TrytonRpc
from rules.quality import validate_draft_book
from rules.schema import load_rules
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
        approved = ledger.book(period, states=[DraftState.APPROVED])
        # The drafts suite (rules/suites/drafts.json) is the last gate: a bad draft stays approved and unposted,
        # reported as a failed posting with its reason, and is checked again on the next run.
        # Unless the ERP may create customers (it does, by code, by default), a customer must be mapped already.
        mapped = None if settings.erp_creates_customers else set(ledger.erp_mappings(erp.name, "party"))
        problems, _ = validate_draft_book(approved, mapped_customers=mapped)
        refused = {p.key: p.reason for p in problems}
        to_post = approved.only([k for k in approved.keys if k not in refused])
        if isinstance(erp, FileErp):  # posts the frames as they are
            receipts, failures = erp.post_book(to_post)
        else:
            receipts, failures = erp.post(to_post.drafts(load_rules(settings.rules_file)))
        ledger.record_postings(receipts, actor=f"post:{erp.name}")
    failures += [PostingFailure(draft_key=k, erp=erp.name, error=f"not posted: {r}") for k, r in refused.items()]
    return receipts, failures


# -- one Prefect concurrency limit per ERP ------------------------------------------------------------------

LEASE_SECONDS = 60.0  # the server's shortest: renewed every 45 s; a holder that dies unseen frees its slot soonest
SLOT_RECORD = "prefect-slot:"  # ledger leases naming each held slot's Prefect lease: ``prefect-slot:<limit>:<id>``
ASKING = "asking-"  # ``prefect-slot:<limit>:asking-<uuid>``: noted before asking Prefect, until the lease id is noted


def erp_limit_name(settings: Settings) -> str:
    """The Prefect global concurrency limit a posting into this ERP instance holds a slot of (``erp_limit``, else
    ``erp:tryton:<host:port>:<database>`` or ``erp:files:<hash of the folder>``): two homes with files ERPs of
    their own, or two Tryton servers, never wait for each other."""
    if settings.erp_limit:
        return settings.erp_limit
    if settings.erp == "files":
        return f"erp:files:{hashlib.sha1(str(settings.erp_files_dir.resolve()).encode()).hexdigest()[:10]}"
    where = urlsplit(settings.tryton_url or "").netloc or "embedded"
    return re.sub(r"[/%&<>]", "_", f"erp:{settings.erp}:{where}:{settings.tryton_database}")


def ensure_erp_limit(name: str, slots: int, *, set_slots: bool = False) -> GlobalConcurrencyLimitResponse:
    """The limit ``name``, made with ``slots`` when it does not exist. ``set_slots``: also set an existing limit to
    ``slots`` (the service's start); otherwise one someone changed in the UI stays as it is.

    Prefect 3.8 never makes a limit on first use: taking a slot of a missing one is skipped with a warning
    (``strict=False``) or refused (``strict=True``), so without this nothing would be limited."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another poster made it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            return client.read_global_concurrency_limit_by_name(name)
        if set_slots and existing.limit != slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            return client.read_global_concurrency_limit_by_name(name)
        return existing


def give_back_abandoned_slots(ledger: Ledger, limit: str, say: Callable[[str], None]) -> None:
    """Release the slots of ``limit`` that posters of this ledger held when they died (kill -9, a reboot).

    Prefect frees a dead holder's slot only when its lease expires, and only on a server running its
    repossessor service (not on a temporary one): the ledger knows at once that the holder is gone.

    A poster that died while asking (its ``asking-`` record, no lease id noted) may or may not have been
    granted a slot; one slot is given back without a lease id when any is taken. On a server with a repossessor
    the unknown lease also expires later and frees a slot again, so for about a minute one posting more than the
    limit may run into this ERP, and only from another ledger: posters of one ledger take turns anyway."""
    from prefect.client.orchestration import get_client

    from billing.ledger.locks import describe

    for record in ledger.abandoned_leases(f"{SLOT_RECORD}{limit}:"):
        lease = record.name.rsplit(":", 1)[1]
        with get_client(sync_client=True) as client:  # a lease the server no longer has is ignored
            if not lease.startswith(ASKING):
                client.release_concurrency_slots_with_lease(UUID(lease))
            elif client.read_global_concurrency_limit_by_name(limit).active_slots > 0:
                # how long it was held is unknown; the server only averages it into the limit's statistics
                client.release_concurrency_slots([limit], slots=1, occupancy_seconds=1.0)
        ledger.remove_lease(record)
        say(f"gave back the slot of {limit} that {describe(record)} held: its process is gone")


@contextmanager
def erp_slot(settings: Settings, say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold a slot of the ERP's Prefect global concurrency limit (``erp_limit_name``; made when missing, with
    ``erp_concurrency_slots``) while the block runs, waiting for one up to ``lock_wait_seconds``.

    The ledger's ``posting:<target>`` lease serializes the posters of one ledger into one ERP; this limit
    holds across ledgers, workers and machines sharing the Prefect server, and shows in its UI (Concurrency).
    Without a configured server (``PREFECT_API_URL``: a CLI run on its own temporary server) there is nobody
    to share it with, and that server would keep a killed run's slot for ever: the ledger's lease is enough.

    A slot left by a poster of this ledger that died is given back before waiting; one whose holder dies while
    this one waits is freed by the server when its lease expires (about a minute)."""
    if not prefect_server_configured():
        yield
        return
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.context import ConcurrencyContext
    from prefect.concurrency.sync import concurrency
    from prefect.context import TaskRunContext

    name = erp_limit_name(settings)
    ledger = Ledger(settings.resolved_ledger_url)
    give_back_abandoned_slots(ledger, name, say)
    limit = ensure_erp_limit(name, settings.erp_concurrency_slots)
    if limit.active and limit.active_slots >= limit.limit:
        say(f"waiting for a slot of {name} ({plural(limit.limit, 'slot')}, all taken by other postings into "
            f"{settings.erp}), at most {settings.lock_wait_seconds} s")  # fmt: skip
    task_run = TaskRunContext.get()
    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id) if task_run else None
    # Exits in this order: the Prefect lease is released first, then the ledger's record of it goes, so a
    # process dying in between leaves a record of a lease already released (harmless), never the reverse.
    purpose = f"a posting into {settings.erp}"
    with ExitStack() as record, ConcurrencyContext() as granted, ExitStack() as slot:
        # Noted before asking, so a process killed after Prefect granted the slot but before its lease id was
        # noted leaves a record for the next poster to give the slot back by.
        asking = record.enter_context(ExitStack())
        asking.enter_context(ledger.lock(f"{SLOT_RECORD}{name}:{ASKING}{uuid4().hex}", purpose=purpose))
        try:
            slot.enter_context(concurrency(
                name, occupy=1, timeout_seconds=max(1, settings.lock_wait_seconds), lease_duration=LEASE_SECONDS,
                strict=False, holder=holder,
                raise_on_lease_renewal_failure=False,  # a missed renewal must not stop a posting half-way
            ))  # fmt: skip
        except TimeoutError:
            raise RunInProgress(
                f"waited {settings.lock_wait_seconds} s for a slot of the Prefect concurrency limit {name} "
                f"({plural(limit.limit, 'slot')}, taken by other postings into {settings.erp}): nothing was posted",
                hint="raise TICKET_TO_INVOICE_LOCK_WAIT_SECONDS or the limit's slots (Prefect UI: Concurrency), or "
                "see to the runs holding them",
            ) from None
        # The id of the lease just granted (Prefect notes it in the current ConcurrencyContext); none when the
        # limit was deleted in between, and then nothing is held.
        for lease_id in granted.cleanup_lease_ids[-1:]:
            record.enter_context(ledger.lock(f"{SLOT_RECORD}{name}:{lease_id}", purpose=purpose))
        asking.close()
        yield


def post_holding_erp_slot(
    settings: Settings, period: str, say: Callable[[str], None] | None = None
) -> tuple[list[PostingReceipt], list[PostingFailure]]:
    """``post_approved`` while holding a slot of the ERP's Prefect concurrency limit (``erp_slot``). Nothing to
    do, and no slot taken, when the period has no approved draft (a rerun with nothing new) and no poster of this
    ledger died holding a slot or the posting lease (those are given back on the way in)."""
    ledger = Ledger(settings.resolved_ledger_url)
    left_behind = ledger.abandoned_leases(f"{SLOT_RECORD}{erp_limit_name(settings)}:") or ledger.abandoned_leases(
        f"posting:{erp_target(settings)}"
    )
    if not left_behind and ledger.draft_headers(period, states=[DraftState.APPROVED]).empty:
        return [], []
    with erp_slot(settings, say=say or get_run_logger().info):
        return post_approved(settings, period)


def _numbers(numbers: list[str], listed: int = 20) -> str:
    """Invoice numbers for a log line: all of a few, the first ones and how many more of many."""
    more = f" and {len(numbers) - listed} more (… {numbers[-1]})" if len(numbers) > listed else ""
    return ", ".join(numbers[:listed]) + more


def _posted(outcome: tuple[list[PostingReceipt], list[PostingFailure]]) -> str:
    receipts, failures = outcome
    new = [r.erp_number for r in receipts if not r.already_existed]
    said = [f"posted {plural(len(new), 'invoice')}" + (f": {_numbers(new)}" if new else "")]
    if found := [r.erp_number for r in receipts if r.already_existed]:
        said.append(f"found {plural(len(found), 'invoice')} posted before under its key: {_numbers(found)}")
    if failures:
        said.append(f"NOT posted {len(failures)}: " + "; ".join(f"{f.draft_key}: {f.error}" for f in failures))
    return "; ".join(said)


post = stage(post_holding_erp_slot, name="post", says=_posted, retries=2, retry_delay_seconds=10)
