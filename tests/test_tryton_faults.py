"""Billing into a real Tryton through a proxy that fails about a third of the requests (503, a connection
dropped before Tryton saw the request, and one dropped after Tryton acted, its answer lost): runs finish on
their own, nothing is posted twice and nothing is lost. The proxy prints its seed; ``FAULT_SEED=<seed>``
replays the same faults."""

from __future__ import annotations

import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flows.ticket_to_invoice as flow_module
from billing.errors import ConfigurationError, SystemUnavailable
from billing.ledger import Ledger
from billing.models import DraftState
from connectors.tryton_rpc import TrytonRpc
from flows.run_state import PostingsFailed
from flows.ticket_to_invoice import ticket_to_invoice
from tasks.reconcile import UNBILLED_STATES
from tests.conftest import DEMO_RULES
from tests.faults.kill_trials import tagged_export
from tests.faults.proxy import FAULTS, FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

RUNS = 5
FAULT_RATE = 0.3
# One customer without an ERP reference (its party is made under faults): posting is what costs time here
# (seconds per call), and what a batch of many does under faults is in tests/test_tryton_rpc.py.
CUSTOMERS = ("GLOBEX",)


def small_export(folder: Path, tag: str) -> tuple[Path, list[str]]:
    """Customers of the sample export, renamed with ``tag`` so that every export bills its own invoices."""
    return tagged_export(folder, tag, CUSTOMERS)


def use_tryton_at(monkeypatch: pytest.MonkeyPatch, home: Path, url: str, tryton: Any) -> None:
    env = {
        "TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_ERP": "tryton", "TICKET_TO_INVOICE_TRYTON_URL": url,
        "TICKET_TO_INVOICE_TRYTON_DATABASE": tryton.database, "TICKET_TO_INVOICE_TRYTON_USER": tryton.user,
        "TICKET_TO_INVOICE_TRYTON_PASSWORD": tryton.password, "TICKET_TO_INVOICE_RULES_FILE": str(DEMO_RULES),
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def run(export: Path) -> tuple[str, Any]:
    """One billing run: ("clean", summary), ("failures", summary) or ("gave up", the exception)."""
    try:
        summary = ticket_to_invoice(input_dir=str(export))
    except PostingsFailed as failed:  # the run ended Failed, naming the invoices; the others stand
        return "failures", failed.summary
    except Exception as exc:  # what a user would meet: it must be one clear error, not a traceback of httpx
        assert isinstance(exc, SystemUnavailable), "".join(traceback.format_exception(exc))
        assert str(exc).startswith("Tryton at http://127.0.0.1:") and exc.hint, exc
        return "gave up", exc
    return ("failures" if summary["posting_failures"] else "clean"), summary


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same retries with shorter pauses (0.1 s doubling to 2 s; Prefect's task retries after 1 s), so the
    test is about what is retried, not about waiting."""
    monkeypatch.setattr(TrytonRpc, "wait_initial", 0.1)
    monkeypatch.setattr(TrytonRpc, "wait_max", 2.0)
    monkeypatch.setattr(flow_module, "post", flow_module.post.with_options(retry_delay_seconds=1))
    monkeypatch.setattr(flow_module, "reconcile", flow_module.reconcile.with_options(retry_delay_seconds=1))


def draft_states(home: Path) -> dict[str, DraftState]:
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    return ledger.draft_states(d.key for d in ledger.drafts())


def search_read(rpc: TrytonRpc, model: str, domain: list[Any], fields: list[str]) -> list[dict[str, Any]]:
    return rpc.model(model, "search_read", domain, 0, None, None, fields)


@pytest.mark.usefixtures("quick_retries")
def test_billing_through_a_tryton_that_fails_a_third_of_the_requests_posts_every_draft_once(
    tryton: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = tryton.rpc()  # the truth, read past the proxy
    homes: dict[Path, Path] = {}
    outcomes: list[str] = []
    with FaultProxy(tryton.url, fault_rate=FAULT_RATE) as proxy:
        for n in range(RUNS):
            export, _ = small_export(tmp_path / f"export-{n}", uuid.uuid4().hex[:6].upper())
            home = tmp_path / f"home-{n}"
            homes[home] = export
            use_tryton_at(monkeypatch, home, proxy.url, tryton)
            outcome, _ = run(export)
            outcomes.append(outcome)
        first = Counter(outcomes)
        print(f"first runs: {dict(first)}; {proxy.summary()}")
        # Runs that did not finish are run again (faults still on) until they do.
        for home, export in homes.items():
            for _ in range(3):
                if set(draft_states(home).values()) == {DraftState.POSTED}:
                    break
                use_tryton_at(monkeypatch, home, proxy.url, tryton)
                run(export)
        counts = dict(proxy.counts)
    print(f"{proxy.summary()}; slowest requests: {proxy.slowest(3)}")

    assert all(counts.get(fault, 0) > 0 for fault in FAULTS), counts  # every kind of fault was met
    # Most runs finish on their own, thanks to retries.
    assert first["clean"] >= 0.8 * RUNS, f"{dict(first)} (replay with FAULT_SEED={proxy.seed})"

    keys, codes = [], []
    for home in homes:
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        drafts = ledger.drafts()
        assert drafts and set(draft_states(home).values()) == {DraftState.POSTED}, f"not all posted in {home}"
        items = ledger.work_items("2026-10")
        assert not set(items["state"]) & {s.value for s in UNBILLED_STATES}, items["state"].value_counts()
        keys += [d.key for d in drafts]
        codes += [d.customer_erp_ref or d.customer_id for d in drafts]

    # In Tryton (read directly): one posted invoice per draft key, none for anything else, no twin party.
    invoices = search_read(direct, "account.invoice", [["party.code", "in", codes]], ["reference", "state"])
    per_key = Counter(i["reference"] for i in invoices)
    assert sorted(per_key) == sorted(keys) and set(per_key.values()) == {1}, per_key
    assert {i["state"] for i in invoices} == {"posted"}
    parties = Counter(p["code"] for p in search_read(direct, "party.party", [["code", "in", codes]], ["code"]))
    assert sorted(parties) == sorted(codes) and set(parties.values()) == {1}, parties
    products = search_read(direct, "product.product", [["code", "like", "T2I-%"]], ["code"])
    assert len(products) == len({p["code"] for p in products})


@pytest.mark.usefixtures("quick_retries")
def test_a_run_against_a_tryton_that_keeps_failing_gives_up_with_a_clear_error_and_the_next_run_finishes(
    tryton: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export, _ = small_export(tmp_path / "export", uuid.uuid4().hex[:6].upper())
    home = tmp_path / "home"
    with FaultProxy(tryton.url, fault_rate=1.0, faults={"503": 1, "drop_before": 1}) as proxy:
        use_tryton_at(monkeypatch, home, proxy.url, tryton)
        with pytest.raises(SystemUnavailable) as outage:
            ticket_to_invoice(input_dir=str(export))
        assert str(outage.value).startswith(f"Tryton at {proxy.url}, database 'tryton', is unavailable: ")
        assert "TICKET_TO_INVOICE_TRYTON_URL" in (outage.value.hint or "") and outage.value.exit_code == 1
        assert set(draft_states(home).values()) == {DraftState.APPROVED}  # kept for the next run

        proxy.fault_rate = 0.0  # Tryton is back
        summary = ticket_to_invoice(input_dir=str(export))
    assert summary["posting_failures"] == [] and summary["new_postings"] == len(CUSTOMERS)
    assert set(draft_states(home).values()) == {DraftState.POSTED}


def test_wrong_credentials_are_a_configuration_error_naming_what_to_check(
    tryton: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user that does not exist: Tryton 8.2 answers 401, as for a wrong password (a wrong password for the
    # real user would count towards its lock-out after five failures, [session] max_attempt).
    with pytest.raises(ConfigurationError) as refused:
        TrytonRpc(tryton.url, tryton.database, f"nobody-{uuid.uuid4().hex[:6]}", "wrong").login()
    assert f"Tryton at {tryton.url}, database 'tryton' refused the login of 'nobody-" in str(refused.value)
    assert "TICKET_TO_INVOICE_TRYTON_PASSWORD" in (refused.value.hint or "")
    with pytest.raises(ConfigurationError, match="database 'elsewhere': no such database"):
        TrytonRpc(tryton.url, "elsewhere", tryton.user, tryton.password).login()

    # In a run: the same error out of the flow, after one login attempt (neither the connector nor Prefect's
    # task retries try a refused login again).
    export, _ = small_export(tmp_path / "export", uuid.uuid4().hex[:6].upper())
    with FaultProxy(tryton.url, fault_rate=0.0) as proxy:
        use_tryton_at(monkeypatch, tmp_path / "home", proxy.url, tryton)
        monkeypatch.setenv("TICKET_TO_INVOICE_TRYTON_USER", f"nobody-{uuid.uuid4().hex[:6]}")
        with pytest.raises(ConfigurationError, match="refused the login of 'nobody-"):
            ticket_to_invoice(input_dir=str(export))
    assert proxy.counts["requests"] == 1
