"""Overlapping runs of one period (a schedule, a person pressing "Run", an event) never bill twice."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
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
    # B reads the export as if before A drafted it (else A's recorded drafts stand for B, which reads nothing).
    monkeypatch.setattr(Ledger, "drafted_from", lambda *_: None)
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

    from billing.draft_book import book_of, content_hashes
    from billing.ledger.schema import InvoiceDraftRow
    from billing.models import DraftState

    with ledger.session() as session:

        def insert_draft(draft: Any) -> None:
            book = book_of([draft])
            hashes = dict(zip(book.headers["key"], content_hashes(book), strict=True))
            ledger._write_rows(session, draft.period, book.headers, book.lines, hashes, None)  # no claim: a bug's
            session.execute(update(InvoiceDraftRow).where(InvoiceDraftRow.key == draft.key)
                            .values(state=DraftState.POSTED.value))  # fmt: skip

        yield insert_draft


# -- as users meet it: two `ticket-to-invoice run` processes on one home -----------------------------------


def start_cli(env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "billing.cli", "run", "--json"],
        env=os.environ | env, stdin=subprocess.DEVNULL,
        stdout=(out / "stdout.json").open("wb"), stderr=(out / "stderr.log").open("wb"),
    )  # fmt: skip


def two_runs(env: dict[str, str], tmp_path: Path, apart: float) -> list[dict[str, Any]]:
    """Two runs of one period on one home, the second started ``apart`` seconds after the first."""
    first = start_cli(env, tmp_path / "a")
    time.sleep(apart)
    second = start_cli(env, tmp_path / "b")
    answers = []
    for name, process in (("a", first), ("b", second)):
        assert process.wait(timeout=600) == 0, (tmp_path / name / "stderr.log").read_text()[-3000:]
        assert "Traceback" not in (tmp_path / name / "stderr.log").read_text()
        answers.append(json.loads((tmp_path / name / "stdout.json").read_text()))
    assert sum(a["new_postings"] for a in answers) == len(answers[0]["invoices"])
    assert all(a["reconcile"]["duplicates"] == [] and a["reconcile"]["mismatches"] == [] for a in answers)
    return answers


@pytest.mark.parametrize("apart", [0, 3])
def test_two_processes_on_a_new_home_post_each_invoice_once(tmp_path: Path, apart: float) -> None:
    """As the acceptance check does it: the files ERP, each process with its own temporary Prefect server on
    one new Prefect home (they used to race on its migrations and print a traceback)."""
    home = tmp_path / "home"
    env = {"TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_ERP": "files", "PREFECT_HOME": str(home / "p")}
    answers = two_runs(env, tmp_path, apart)
    assert len(answers[0]["invoices"]) == 4
    assert_billed_once(home)


@pytest.mark.parametrize("apart", [0, 3])
def test_two_processes_post_into_one_tryton_once(tryton: Any, tmp_path: Path, apart: float) -> None:
    from prefect.settings import PREFECT_API_URL

    from tests.test_tryton_faults import small_export

    export, customers = small_export(tmp_path / "export", uuid.uuid4().hex[:8])
    env = {
        "TICKET_TO_INVOICE_HOME": str(tmp_path / "home"), "TICKET_TO_INVOICE_INPUT_DIR": str(export),
        "TICKET_TO_INVOICE_ERP": "tryton", "TICKET_TO_INVOICE_TRYTON_URL": tryton.url,
        "TICKET_TO_INVOICE_TRYTON_DATABASE": tryton.database, "TICKET_TO_INVOICE_TRYTON_USER": tryton.user,
        "TICKET_TO_INVOICE_TRYTON_PASSWORD": tryton.password, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }  # fmt: skip
    answers = two_runs(env, tmp_path, apart)
    keys = [i["key"] for i in answers[0]["invoices"]]
    assert len(keys) == len(customers)
    found = tryton.rpc().model("account.invoice", "search_read", [["reference", "in", keys]], 0, None, None,
                               ["reference", "state"])  # fmt: skip
    assert sorted((f["reference"], f["state"]) for f in found) == sorted((k, "posted") for k in keys)
