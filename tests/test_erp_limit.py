"""One Prefect global concurrency limit per ERP (``erp:<erp>``), held while posting, against a real Prefect server:
postings into one ERP from different ledgers take turns, a dead holder's slot is given back, and the service
makes the limits with the configured slots."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.draft_book import DraftBook
from billing.errors import RunInProgress
from billing.ledger import Ledger
from billing.models import ApprovalDecision, ChargeLine, InvoiceDraft, PostingReceipt
from billing.settings import PROJECT_ROOT, Settings
from connectors.file_erp import FileErp
from tasks.post import ensure_erp_limit, erp_limit_name, erp_slot, post_holding_erp_slot

pytestmark = [pytest.mark.integration]
LIMIT = "erp:files"  # named in these tests' settings (erp_limit), so ledgers in different homes share it
POSTING_SECONDS = 1.5


def limit_slots() -> tuple[int, int] | None:
    """(limit, active slots) of ``erp:files`` on the server, or None when it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(LIMIT)
        except ObjectNotFound:
            return None
    return found.limit, found.active_slots


def delete_limit(name: str = LIMIT) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(name)


@pytest.fixture
def no_limit(prefect_server: None) -> Iterator[None]:
    """``erp:files`` does not exist when the test starts, and is gone afterwards (one server for the session)."""
    delete_limit()
    yield
    delete_limit()


def home_with_an_approved_draft(home: Path, period: str, slots: int = 1, **settings: Any) -> Settings:
    """A ledger of its own (another service, another tenant) holding one approved draft for ``period``."""
    line = ChargeLine(customer_id="ACME", period=period, currency="EUR", service_type="remote_support",
                      description="work", quantity_raw=Decimal(1), quantity_billed=Decimal(1),
                      unit_price_minor=12000, amount_minor=12000)  # fmt: skip
    draft = InvoiceDraft(customer_id="ACME", period=period, currency="EUR", version=1, lines=(line,),
                         customer_erp_ref="C-1")  # fmt: skip
    home.mkdir(parents=True)
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    ledger.save_drafts(period, [draft], actor="test")
    ledger.record_decisions([ApprovalDecision(draft_key=draft.key, approved=True, approver="t",
                                              decided_at=datetime.now(UTC))])  # fmt: skip
    return Settings(home=home, erp="files", erp_concurrency_slots=slots, erp_limit=LIMIT, **settings)


@pytest.fixture
def slow_erp(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The files ERP taking ``POSTING_SECONDS`` per posting; each posting notes when it ran and how many slots
    of the limit were taken meanwhile."""
    postings: list[dict[str, Any]] = []
    real_post = FileErp.post_book  # what the post stage calls on the files ERP

    def post(self: FileErp, book: DraftBook) -> Any:
        start = time.monotonic()
        time.sleep(POSTING_SECONDS / 2)
        taken = limit_slots()
        time.sleep(POSTING_SECONDS / 2)
        postings.append({"start": start, "end": time.monotonic(), "slots": taken})
        return real_post(self, book)

    monkeypatch.setattr(FileErp, "post_book", post)
    return postings


def post_at_once(*settings: tuple[Settings, str]) -> list[list[PostingReceipt]]:
    """Post each (settings, period) from its own thread, started together; the receipts of each."""
    receipts: list[list[PostingReceipt]] = [[] for _ in settings]
    errors: list[BaseException] = []
    said: list[str] = []

    def poster(i: int, s: Settings, period: str) -> None:
        try:
            receipts[i] = post_holding_erp_slot(s, period, say=said.append)[0]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=poster, args=(i, s, p)) for i, (s, p) in enumerate(settings)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return receipts


def overlap(postings: list[dict[str, Any]]) -> float:
    first, second = sorted(postings, key=lambda p: p["start"])
    return float(first["end"] - second["start"])


def test_two_postings_into_one_erp_take_turns_with_one_slot(
    no_limit: None, slow_erp: list[dict[str, Any]], tmp_path: Path
) -> None:
    october = home_with_an_approved_draft(tmp_path / "a", "2026-10")
    november = home_with_an_approved_draft(tmp_path / "b", "2026-11")  # another ledger: its own posting lease

    receipts = post_at_once((october, "2026-10"), (november, "2026-11"))

    assert [len(r) for r in receipts] == [1, 1]
    assert overlap(slow_erp) < 0, "the second posting began before the first one ended"
    assert [p["slots"] for p in slow_erp] == [(1, 1), (1, 1)]  # made on first use with the setting's 1 slot
    assert limit_slots() == (1, 0)  # both given back


def test_with_two_slots_they_post_at_the_same_time(
    no_limit: None, slow_erp: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The control: the same two postings overlap when the limit allows it, so the turns above are its doing."""
    october = home_with_an_approved_draft(tmp_path / "a", "2026-10", slots=2)
    november = home_with_an_approved_draft(tmp_path / "b", "2026-11", slots=2)

    post_at_once((october, "2026-10"), (november, "2026-11"))

    assert overlap(slow_erp) > POSTING_SECONDS / 2
    assert {p["slots"] for p in slow_erp} == {(2, 2)}


def test_a_poster_waits_at_most_lock_wait_seconds_for_a_slot(no_limit: None, tmp_path: Path) -> None:
    holding, release = threading.Event(), threading.Event()
    busy = home_with_an_approved_draft(tmp_path / "a", "2026-10")

    def hold() -> None:
        with erp_slot(busy, say=lambda _: None):
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        impatient = home_with_an_approved_draft(tmp_path / "b", "2026-11", lock_wait_seconds=2)
        started = time.monotonic()
        said: list[str] = []
        with pytest.raises(RunInProgress) as refused:
            post_holding_erp_slot(impatient, "2026-11", say=said.append)
        assert said == ["waiting for a slot of erp:files (1 slot, all taken by other postings into files), at most 2 s"]
        assert time.monotonic() - started < 30
    finally:
        release.set()
        holder.join(60)
    assert str(refused.value) == (
        "waited 2 s for a slot of the Prefect concurrency limit erp:files (1 slot, taken "
        "by other postings into files): nothing was posted"
    )
    assert not (tmp_path / "b" / "erp-files" / "2026-11").exists()  # nothing was posted


def killed_poster(settings: Settings, script: str) -> None:
    """Run ``script`` (which kills itself with SIGKILL) as a poster of ``settings``' home, into the files ERP."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(PROJECT_ROOT),
            "TICKET_TO_INVOICE_HOME": str(settings.home), "TICKET_TO_INVOICE_ERP": "files",
            "TICKET_TO_INVOICE_ERP_LIMIT": LIMIT}  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert limit_slots() == (1, 1)  # still held by the dead process


def the_next_poster_gives_the_slot_back(settings: Settings) -> None:
    said: list[str] = []
    started = time.monotonic()
    receipts, failures = post_holding_erp_slot(settings, "2026-10", say=said.append)
    assert time.monotonic() - started < 20  # not the lease's expiry, nor the wait for it
    assert len(receipts) == 1 and failures == []
    assert any(s.startswith("gave back the slot of erp:files that a posting into files (process ") for s in said)
    assert limit_slots() == (1, 0)
    assert Ledger(settings.resolved_ledger_url).abandoned_leases("prefect-slot:") == []


def test_the_slot_of_a_killed_poster_is_given_back_at_once(no_limit: None, tmp_path: Path) -> None:
    """kill -9 while holding the slot: Prefect would keep it until the lease expires, and a server without its
    repossessor service (a temporary one) for ever. The next poster of the ledger gives it back."""
    settings = home_with_an_approved_draft(tmp_path / "a", "2026-10", lock_wait_seconds=15)  # not an hour
    killed_poster(settings, (
        "import os, signal\n"
        "from billing.settings import load_settings\n"
        "from tasks.post import erp_slot\n"
        "with erp_slot(load_settings(), say=print):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    ))  # fmt: skip
    the_next_poster_gives_the_slot_back(settings)


def test_a_poster_killed_before_noting_its_lease_id_leaves_a_record_the_slot_is_given_back_by(
    no_limit: None, tmp_path: Path
) -> None:
    """kill -9 after Prefect granted the slot but before the ledger noted the lease's id (a kill trial found this
    window): the record noted before asking names no lease, and the next poster gives one slot back."""
    settings = home_with_an_approved_draft(tmp_path / "a", "2026-10", lock_wait_seconds=15)
    killed_poster(settings, (
        "import os, signal\n"
        "from billing.ledger.store import Ledger\n"
        "from billing.settings import load_settings\n"
        "from tasks.post import ASKING, erp_slot\n"
        "lock = Ledger.lock\n"
        "def lock_or_die(self, name, **kw):\n"
        "    if name.startswith('prefect-slot:') and ASKING not in name:  # granted, its id not noted yet\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return lock(self, name, **kw)\n"
        "Ledger.lock = lock_or_die\n"
        "with erp_slot(load_settings(), say=print):\n"
        "    pass\n"
    ))  # fmt: skip
    [asking] = Ledger(settings.resolved_ledger_url).abandoned_leases("prefect-slot:")
    assert asking.name.startswith(f"prefect-slot:{LIMIT}:asking-")
    the_next_poster_gives_the_slot_back(settings)


def test_without_a_prefect_server_the_ledger_lease_alone_serializes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI run on its own temporary server: no limit is read or made (that server would keep a killed run's
    slot for ever, and nobody else uses it); posting works as before."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def refuse(*_: Any, **__: Any) -> int:
        raise AssertionError("asked the Prefect API")

    monkeypatch.setattr("tasks.post.ensure_erp_limit", refuse)
    settings = home_with_an_approved_draft(tmp_path / "a", "2026-10")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        receipts, failures = post_holding_erp_slot(settings, "2026-10", say=print)
    assert len(receipts) == 1 and failures == []


def test_prefect_does_not_make_a_missing_limit_so_ensure_erp_limit_does(no_limit: None) -> None:
    from prefect.concurrency.sync import concurrency

    with concurrency(LIMIT, occupy=1, strict=False):  # Prefect 3.8: a warning, no limit, nothing held
        assert limit_slots() is None
    assert ensure_erp_limit(LIMIT, 1).limit == 1 and limit_slots() == (1, 0)

    # Someone gives it 3 slots in the UI: a posting leaves that alone, the service's start sets the setting again.
    assert ensure_erp_limit(LIMIT, 3, set_slots=True).limit == 3
    assert ensure_erp_limit(LIMIT, 1).limit == 3 and limit_slots() == (3, 0)
    assert ensure_erp_limit(LIMIT, 1, set_slots=True).limit == 1 and limit_slots() == (1, 0)


def test_the_service_makes_its_erps_limit_with_the_configured_slots(no_limit: None, tmp_path: Path) -> None:
    from flows.service import create_erp_limit

    assert create_erp_limit(Settings(home=tmp_path, erp="files", erp_limit=LIMIT, erp_concurrency_slots=2)) == (
        "erp:files: 2"
    )
    assert limit_slots() == (2, 0)


def test_each_erp_instance_has_a_limit_of_its_own(tmp_path: Path) -> None:
    one, other = Settings(home=tmp_path / "a", erp="files"), Settings(home=tmp_path / "b", erp="files")
    assert erp_limit_name(one).startswith("erp:files:") and erp_limit_name(one) != erp_limit_name(other)
    tryton = Settings(home=tmp_path, erp="tryton", tryton_url="http://127.0.0.1:8000/", tryton_database="acme")
    assert erp_limit_name(tryton) == "erp:tryton:127.0.0.1:8000:acme"  # no "/": Prefect refuses it in names
    assert erp_limit_name(one.model_copy(update={"erp_limit": "erp:shared"})) == "erp:shared"


def test_the_flow_posts_holding_the_limit(
    no_limit: None, slow_erp: list[dict[str, Any]], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's post stage holds the slot (the sample export, into the files ERP)."""
    from flows.run_state import summary_of
    from flows.ticket_to_invoice import ticket_to_invoice
    from tests.conftest import DEMO_RULES, SAMPLE

    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))
    monkeypatch.setenv("TICKET_TO_INVOICE_ERP_LIMIT", LIMIT)
    state = ticket_to_invoice(input_dir=str(SAMPLE), erp="files", rules=str(DEMO_RULES), return_state=True)
    first = summary_of(state)
    assert first["new_postings"] == 4
    assert [p["slots"] for p in slow_erp] == [(1, 1)]
