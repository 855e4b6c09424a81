"""Overlapping runs of one period (a schedule, a person pressing "Run", an event) never bill twice."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flows.ticket_to_invoice as flow_module
from billing.errors import RunInProgress
from billing.ledger import Ledger
from billing.ledger.store import ClaimConflict
from flows.ticket_to_invoice import ticket_to_invoice
from tests.conftest import DEMO_RULES, SAMPLE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def run(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))

    def run(**parameters: Any) -> dict[str, Any]:
        parameters = {"input_dir": str(SAMPLE), "erp": "files", "rules": str(DEMO_RULES)} | parameters
        return ticket_to_invoice(**parameters)

    return run


def in_thread(name: str, target: Callable[[], dict[str, Any]], results: dict[str, Any]) -> threading.Thread:
    def go() -> None:
        try:
            results[name] = target()
        except Exception as exc:  # the test looks at what each run ended with
            results[name] = exc

    thread = threading.Thread(target=go, name=name)
    thread.start()
    return thread


def billed_source_ids(home: Path) -> Counter[str]:
    """How often each work log stands on an invoice in the ERP's own documents."""
    documents = [json.loads(p.read_text()) for p in (home / "erp-files").glob("*/*.json")]
    return Counter(line["source_id"] for d in documents for line in d["lines"] if line.get("source_id"))


def assert_billed_once(home: Path, expected_invoices: int = 4) -> None:
    assert len(list((home / "erp-files").glob("*/*.json"))) == expected_invoices
    assert max(billed_source_ids(home).values()) == 1
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    assert (ledger.work_items("2026-10")["state"] != "drafted").all()


def test_a_second_run_waits_for_the_first_and_finds_nothing_new(run: Callable[..., dict[str, Any]],
                                                                  home: Path) -> None:  # fmt: skip
    results: dict[str, Any] = {}
    first = in_thread("run-a", run, results)
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    while first.is_alive() and not _held(ledger):
        threading.Event().wait(0.05)
    second = in_thread("run-b", run, results)
    first.join(timeout=300)
    second.join(timeout=300)
    assert results["run-a"]["new_postings"] == 4, results
    assert results["run-b"]["new_postings"] == 0, results
    assert results["run-b"]["reconcile"]["duplicates"] == []
    assert_billed_once(home)


def test_a_run_asked_not_to_wait_stops_cleanly_and_writes_nothing(run: Callable[..., dict[str, Any]],
                                                                   home: Path) -> None:  # fmt: skip
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    with (
        ledger.lock("billing:2026-10:files", "a billing run of 2026-10 into files"),
        pytest.raises(RunInProgress, match="is in progress: nothing was done"),
    ):
        run(wait=False)
    assert ledger.work_items("2026-10").empty
    assert not (home / "erp-files").exists()


def _held(ledger: Ledger) -> bool:
    from sqlalchemy import select

    from billing.ledger.schema import RunLock

    with ledger.engine.connect() as connection:
        return connection.scalar(select(RunLock.name)) is not None


def test_without_the_lock_the_draft_claim_alone_bills_nothing_twice(
    run: Callable[..., dict[str, Any]], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlap as it was reported, made certain: run B extracts before run A posts and drafts after it.
    Without any lock, B's drafts would bill everything again as v2; the claim refuses them."""
    monkeypatch.setattr(flow_module, "one_run_at_a_time", lambda *_: contextlib.nullcontext())
    b_extracted, a_posted = threading.Event(), threading.Event()
    register, posted_versions, record_postings = Ledger.register, Ledger.posted_versions, Ledger.record_postings

    def which() -> str:
        return threading.current_thread().name

    def register_then_signal(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        result = register(self, *args, **kwargs)
        if which() == "run-b":
            b_extracted.set()
        return result

    def draft_after_a_posted(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        if which() == "run-b":  # drafting starts by reading what is posted
            assert a_posted.wait(600)
        return posted_versions(self, *args, **kwargs)

    def post_after_b_extracted(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        if which() == "run-a":
            assert b_extracted.wait(600)
        result = record_postings(self, *args, **kwargs)
        if which() == "run-a":
            a_posted.set()
        return result

    monkeypatch.setattr(Ledger, "register", register_then_signal)
    monkeypatch.setattr(Ledger, "posted_versions", draft_after_a_posted)
    monkeypatch.setattr(Ledger, "record_postings", post_after_b_extracted)
    results: dict[str, Any] = {}
    threads = [in_thread("run-a", run, results), in_thread("run-b", run, results)]
    for thread in threads:
        thread.join(timeout=900)
    assert results["run-a"]["new_postings"] == 4, results
    assert isinstance(results["run-b"], ClaimConflict), results  # B saved no draft, posted nothing
    assert "another run of this period got there first" in str(results["run-b"])
    assert_billed_once(home)

    rerun = run()  # and the next run is clean
    assert rerun["new_postings"] == 0 and rerun["reconcile"]["duplicates"] == []


def test_reconcile_reports_a_work_item_on_two_live_invoices(run: Callable[..., dict[str, Any]], home: Path) -> None:
    run()
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    acme = next(d for d in ledger.drafts("2026-10") if d.customer_id == "ACME")
    twin = acme.model_copy(update={"version": 2, "lines": acme.lines[:1]})
    with _raw_insert(ledger) as insert_draft:  # what an older version of this program could leave behind
        insert_draft(twin)
    report = run()["reconcile"]
    item = acme.lines[0].work_item_keys[0]
    assert {"work_item": item, "keys": [acme.key, twin.key], "erp_numbers": [None, None]} in [
        d | {"erp_numbers": [None, None]} for d in report["duplicates"] if "work_item" in d
    ]


@contextlib.contextmanager
def _raw_insert(ledger: Ledger) -> Iterator[Callable[[Any], None]]:
    from sqlalchemy import update

    from billing.ledger.schema import InvoiceDraftRow
    from billing.models import DraftState

    with ledger.session() as session:

        def insert_draft(draft: Any) -> None:
            ledger._insert_draft(session, draft.period, draft, actor="test")
            session.execute(update(InvoiceDraftRow).where(InvoiceDraftRow.key == draft.key)
                            .values(state=DraftState.POSTED.value))  # fmt: skip

        yield insert_draft
