"""The whole flow under a Prefect test server, on the sample export and copies of it."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.ledger import Ledger
from billing.settings import Settings
from flows.run_state import summary_of
from flows.ticket_to_invoice import ticket_to_invoice
from tests.conftest import DEMO_RULES, SAMPLE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

BAD_ROWS = {"WL-00501", "WL-00502", "WL-00503", "WL-00504", "WL-00505", "WL-00506", "WL-00507", "WL-00123"}


@pytest.fixture
def run(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))

    def run(**parameters: Any) -> dict[str, Any]:
        parameters.setdefault("input_dir", str(SAMPLE))
        parameters.setdefault("erp", "files")  # Tryton has its own tests (test_tryton.py)
        parameters.setdefault("rules", str(DEMO_RULES))
        return summary_of(ticket_to_invoice(**parameters, return_state=True))

    return run


def erp_documents(home: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((home / "erp-files").glob("*/*.json"))]


def test_sample_export_is_billed_once_with_exact_money(run: Callable[..., dict[str, Any]], home: Path) -> None:
    first = run()

    customers = {c["customer_id"] for c in json.loads((SAMPLE / "customers.json").read_text())}
    assert {i["customer"] for i in first["invoices"]} == customers
    assert all(i["status"] == "posted" and i["erp_number"] for i in first["invoices"])
    assert first["new_postings"] == len(customers)
    assert sum(first["counts"].values()) == first["work_items_total"] == 503  # 508 rows, 4 other months, 1 repeat
    assert first["counts"]["quarantined"] == len(BAD_ROWS)
    assert {q["source_id"] for q in first["quarantined"]} == BAD_ROWS
    assert all("worklogs.csv row" in q["reason"] for q in first["quarantined"])
    assert first["counts"]["non_billable"] == 40 and all(n["rule"] for n in first["non_billable"])

    # The ERP's documents and import file agree with the run's answer to the cent.
    documents = {d["external_reference"]: d for d in erp_documents(home)}
    for invoice in first["invoices"]:
        document = documents[invoice["key"]]
        assert document["number"] == invoice["erp_number"]
        assert document["untaxed_minor"] == invoice["total_minor"] == sum(li["amount_minor"] for li in invoice["lines"])
        assert sum(line["amount_minor"] for line in document["lines"]) == document["untaxed_minor"]
        assert document["tax"]["amount_minor"] == invoice["tax_minor"]
        assert document["gross_minor"] == invoice["gross_minor"] == invoice["total_minor"] + invoice["tax_minor"]
    with (home / "erp-files" / "2026-10" / "import.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    cents: Counter[str] = Counter()
    for row in rows:
        cents[row["external_reference"]] += int(row["line_amount"].replace(".", ""))
    assert cents == {i["key"]: i["total_minor"] for i in first["invoices"]}

    # A second run of the same period posts nothing and changes nothing.
    second = run()
    assert second["new_postings"] == 0
    assert [(i["key"], i["erp_number"], i["total_minor"]) for i in second["invoices"]] == [
        (i["key"], i["erp_number"], i["total_minor"]) for i in first["invoices"]
    ]
    assert second["counts"] == first["counts"] | {"billed": 0, "pending_approval": 0} | {
        "billed": first["counts"]["billed"]
    }
    assert len(erp_documents(home)) == len(customers)
    assert second["reconcile"]["mismatches"] == [] and second["reconcile"]["duplicates"] == []


def test_a_crash_after_posting_never_posts_twice(
    run: Callable[..., dict[str, Any]], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("killed between the ERP write and the ledger record")

    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "record_postings", crash)
        with pytest.raises(RuntimeError, match="killed"):
            run()
    assert len(erp_documents(home)) == 4  # the ERP has the invoices; the ledger does not know yet

    rerun = run()
    assert rerun["new_postings"] == 0
    assert all(i["status"] == "posted" for i in rerun["invoices"])
    assert len(erp_documents(home)) == 4
    assert sorted(i["erp_number"] for i in rerun["invoices"]) == sorted(d["number"] for d in erp_documents(home))


def test_a_row_fixed_at_the_source_is_billed_on_a_supplementary_invoice(
    run: Callable[..., dict[str, Any]], home: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    first = run(input_dir=str(export))
    worklogs = export / "worklogs.csv"
    worklogs.write_text(worklogs.read_text().replace(",1h30,", ",90,"))

    second = run(input_dir=str(export))
    assert "WL-00506" not in {q["source_id"] for q in second["quarantined"]}
    assert second["new_postings"] == 1
    supplementary = [i for i in second["invoices"] if i["version"] == 2]
    assert len(supplementary) == 1 and [li["source_id"] for li in supplementary[0]["lines"]] == ["WL-00506"]
    assert second["counts"]["billed"] == first["counts"]["billed"] + 1
    originals = {i["key"]: i["total_minor"] for i in first["invoices"]}
    assert {i["key"]: i["total_minor"] for i in second["invoices"] if i["version"] == 1} == originals


def form_answer(schema: dict[str, Any], approver: str, decide: Callable[[str], str], note: str = "") -> dict[str, Any]:
    """What a person fills in: ``decide(title)`` for each invoice (its title is customer · period · total)."""
    answer: dict[str, Any] = {"approver": approver}
    for name, field in schema["properties"].items():
        if name.endswith("_note"):
            answer[name] = note
        elif name != "approver":
            answer[name] = decide(field["title"])
    return answer


def _answer_when_paused(answer: dict[str, str], answered: list[str]) -> threading.Thread:
    """Play the human: wait for the paused run, read its form, then resume it with one decision per invoice
    (``answer["decision"]`` for all, unless ``answer["by_customer"]`` names one per customer name prefix)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_paused_state

    def decide(title: str) -> str:
        return next((d for prefix, d in answer.get("by_customer", {}).items() if title.startswith(prefix)),
                    answer["decision"])  # fmt: skip

    def human() -> None:
        paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        for _ in range(240):
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=paused, limit=5)
                try:  # saved just after the run paused
                    form = keyset_from_paused_state(runs[0].state)["schema"] if runs else ""
                    schema = json.loads(client.read_flow_run_input(runs[0].id, form)) if runs else None
                except Exception:
                    schema = None
            if runs and schema:
                resume_flow_run(runs[0].id, run_input=form_answer(schema, answer["approver"], decide, answer["note"]))
                answered.append(str(runs[0].id))
                return
            time.sleep(0.5)

    thread = threading.Thread(target=human, daemon=True)
    thread.start()
    return thread


def test_manual_approval_waits_for_a_human_and_records_the_decision(
    run: Callable[..., dict[str, Any]], settings: Settings, tmp_path: Path
) -> None:
    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["approval"]["auto_approve_below"] = {"EUR": "16000.00", "USD": "6000.00"}  # GLOBEX and INITECH pass
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))

    answered: list[str] = []
    human = _answer_when_paused({"approver": "maria@example.com", "decision": "approve", "note": "ok"}, answered)
    summary = run(rules=str(rules_file), approve="manual")
    human.join(timeout=5)

    assert answered, "the run never paused for approval"
    assert all(i["status"] == "posted" for i in summary["invoices"])
    ledger = Ledger(settings.resolved_ledger_url)
    approvers = {i["customer"]: ledger.approvals(i["key"])[-1].approver for i in summary["invoices"]}
    assert approvers == {
        "ACME": "maria@example.com",
        "NORTHWIND": "maria@example.com",
        "GLOBEX": "policy:threshold",
        "INITECH": "policy:threshold",
    }
    assert ledger.approvals(summary["invoices"][0]["key"])[-1].flow_run_id == answered[0]


def test_rejected_drafts_are_not_posted(run: Callable[..., dict[str, Any]]) -> None:
    answered: list[str] = []
    human = _answer_when_paused({"approver": "lee", "decision": "reject", "note": "wrong rates"}, answered)
    summary = run(approve="manual")  # every demo invoice is above the demo threshold
    human.join(timeout=5)

    assert answered
    assert summary["new_postings"] == 0
    assert {i["status"] for i in summary["invoices"]} == {"rejected"}
    assert summary["counts"]["billed"] == 0
    assert summary["counts"]["pending_approval"] == summary["work_items_total"] - 48  # 40 non-billable + 8 bad


def test_each_invoice_is_decided_on_its_own(run: Callable[..., dict[str, Any]], settings: Settings) -> None:
    answered: list[str] = []
    decisions = {"Acme": "approve", "Northwind": "reject"}  # Globex and Initech: "decide later"
    human = _answer_when_paused({"approver": "pat", "decision": "decide later", "note": "checked",
                                 "by_customer": decisions}, answered)  # fmt: skip
    summary = run(approve="manual")
    human.join(timeout=5)

    assert answered
    status = {i["customer"]: i["status"] for i in summary["invoices"]}
    assert status == {"ACME": "posted", "NORTHWIND": "rejected", "GLOBEX": "drafted", "INITECH": "drafted"}
    assert summary["new_postings"] == 1
    ledger = Ledger(settings.resolved_ledger_url)
    rejected = next(i for i in summary["invoices"] if i["customer"] == "NORTHWIND")
    decision = ledger.approvals(rejected["key"])[-1]
    assert (decision.approver, decision.decision, decision.note) == ("pat", "rejected", "checked")

    # A rejected draft stays rejected on the next run (its work did not change); a later decision posts it.
    again = run(approve="auto")
    assert {i["customer"]: i["status"] for i in again["invoices"]}["NORTHWIND"] == "rejected"
    from flows.approvals import decide

    said = decide(settings, approver="pat", approved=True, note="rates fixed with the customer",
                  drafts=[rejected["key"]])  # fmt: skip
    assert said == [f"approved: {rejected['key']}"]
    assert {i["customer"]: i["status"] for i in run(approve="auto")["invoices"]}["NORTHWIND"] == "posted"


def test_nobody_answers_and_the_drafts_stay_pending(
    run: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKET_TO_INVOICE_APPROVAL_TIMEOUT_SECONDS", "3")
    summary = run(approve="manual")
    assert summary["new_postings"] == 0
    assert {i["status"] for i in summary["invoices"]} == {"drafted"}
    assert summary["counts"]["pending_approval"] == summary["work_items_total"] - 48

    # The next run asks again, and an answer then bills them.
    answered: list[str] = []
    human = _answer_when_paused({"approver": "sam", "decision": "approve", "note": ""}, answered)
    monkeypatch.setenv("TICKET_TO_INVOICE_APPROVAL_TIMEOUT_SECONDS", "120")
    again = run(approve="manual")
    human.join(timeout=5)
    assert again["new_postings"] == 4 and {i["status"] for i in again["invoices"]} == {"posted"}


def test_the_approve_command_answers_a_paused_run(run: Callable[..., dict[str, Any]], settings: Settings) -> None:
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    cli = str(Path(sys.executable).parent / "ticket-to-invoice")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": os.environ["PREFECT_HOME"]}
    answers: list[subprocess.CompletedProcess[str]] = []

    def approver() -> None:  # a second process, as a person at another terminal
        for _ in range(60):
            result = subprocess.run([cli, "approve", "--approver", "kim@example.com", "--note", "ok by phone"],
                                    env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
            if result.returncode == 0:
                answers.append(result)
                return
            time.sleep(1)

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    summary = run(approve="manual")
    thread.join(timeout=10)

    assert answers and "resumed flow run" in answers[0].stdout
    assert {i["status"] for i in summary["invoices"]} == {"posted"}
    decision = Ledger(settings.resolved_ledger_url).approvals(summary["invoices"][0]["key"])[-1]
    assert (decision.approver, decision.decision, decision.note) == ("kim@example.com", "approved", "ok by phone")


def test_rounding_per_ticket_bills_every_work_log_once_on_fewer_lines(
    run: Callable[..., dict[str, Any]], settings: Settings, tmp_path: Path
) -> None:
    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["rounding"]["scope"] = "ticket"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    first = run(rules=str(rules_file))
    lines = sum(len(i["lines"]) for i in first["invoices"])
    assert first["counts"]["billed"] == 455 and lines < 455
    items = Ledger(settings.resolved_ledger_url).work_items("2026-10")
    billed = items[items["state"].isin(["posted", "reconciled"])]
    assert billed["line_id"].notna().all() and billed["line_id"].nunique() == lines
    assert run(rules=str(rules_file))["new_postings"] == 0


def test_agreement_fees_are_billed_once_and_prorated(run: Callable[..., dict[str, Any]]) -> None:
    rules = str(DEMO_RULES.with_name("agreements.yaml"))
    first = run(rules=rules)
    fees = {li["description"]: li["amount_minor"] for i in first["invoices"] for li in i["lines"]
            if li["description"].startswith("Monthly fee")}  # fmt: skip
    assert fees == {
        "Monthly fee, agreement ACME-MSA-2026, 2026-10": 50000,
        "Monthly fee, agreement GLOBEX-CARE, 2026-10 (17/31 days)": 17000,
    }  # 310 × 17 / 31
    for invoice in first["invoices"]:
        assert invoice["total_minor"] == sum(li["amount_minor"] for li in invoice["lines"])
    northwind = next(i for i in first["invoices"] if i["customer"] == "NORTHWIND")
    discount = [li for li in northwind["lines"] if li["description"].startswith("Discount")]
    work = sum(li["amount_minor"] for li in northwind["lines"] if li not in discount)
    assert len(discount) == 1 and discount[0]["amount_minor"] == -round(work * 3 / 100)  # no tie in these numbers
    assert any(li["description"].startswith("Cap ticket-nte") for i in first["invoices"] for li in i["lines"])
    initech = next(i for i in first["invoices"] if i["customer"] == "INITECH")
    milestones = [li for li in initech["lines"] if li["description"].startswith("Milestone")]
    assert [(li["description"], li["amount_minor"]) for li in milestones] == [
        ("Milestone initech-sso-rollout: Single sign-on rollout (ticket T-1012 done)", 240000)
    ]  # T-1082 is open
    second = run(rules=rules)
    assert second["new_postings"] == 0
    assert second["work_items_total"] == first["work_items_total"] == 503 + 3  # two fees and a milestone


USAGE_CSV = """record_id,customer_id,metric,quantity,occurred_on,subscription_id
U-1,ACME,backup_gb,1000.25,2026-10-31,SUB-7
U-2,ACME,backup_gb,250.25,2026-10-31,SUB-8
U-3,ACME,m365_seats,60,2026-10-31,SUB-9
U-4,INITECH,backup_gb,20,2026-10-31,SUB-10
U-5,INITECH,backup_gb,lots,2026-10-31,SUB-10
U-6,INITECH,teleport_minutes,5,2026-10-31,SUB-11
U-7,NOBODY,backup_gb,5,2026-10-31,SUB-12
U-8,ACME,backup_gb,999,2026-09-30,SUB-7
"""


def test_managed_services_usage_prepaid_hours_and_ticket_fees_are_billed_once(
    run: Callable[..., dict[str, Any]], settings: Settings, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    (export / "usage.csv").write_text(USAGE_CSV)
    rules = str(DEMO_RULES.with_name("managed-services.yaml"))
    first = run(input_dir=str(export), rules=rules)
    lines = {i["customer"]: i["lines"] for i in first["invoices"]}
    usage = {(c, li["description"]): li["amount_minor"] for c, ls in lines.items() for li in ls
             if li["description"].startswith(("Cloud backup", "Microsoft 365"))}  # fmt: skip
    assert usage == {
        ("ACME", "Cloud backup (GB), tier 1, 2026-10"): 1000,  # 100 × 0.10
        ("ACME", "Cloud backup (GB), tier 2, 2026-10"): 7200,  # 900 × 0.08
        ("ACME", "Cloud backup (GB), tier 3, 2026-10"): 1252,  # 250.50 × 0.05 = 12.525 → 12.52 (half-even)
        ("ACME", "Microsoft 365 seats, volume tier, 2026-10"): 57000,  # 60 × 9.50
        ("INITECH", "Cloud backup (GB), tier 1, 2026-10"): 240,  # 20 × 0.12
        ("INITECH", "Cloud backup (GB), minimum commitment, 2026-10"): 1560,  # 18.00 − 2.40
    }
    quarantined = {q["source_id"]: q["reason"] for q in first["quarantined"]}
    assert "quantity is not a non-negative number" in quarantined["U-5"]
    assert "unknown metric" in quarantined["U-6"] and "unknown customer" in quarantined["U-7"]
    assert "U-8" not in quarantined  # September's record is another period's

    globex = lines["GLOBEX"]
    (draft,) = [d for d in Ledger(settings.resolved_ledger_url).drafts("2026-10") if d.customer_id == "GLOBEX"]
    eligible = ("remote_support", "onsite_support")
    under = [li for li in draft.lines if li.trace.get("agreement") == "GLOBEX-RETAINER"
             and li.trace.get("rate_kind") == "hourly" and li.service_type in eligible]  # fmt: skip
    drawn = [li for li in under if "prepaid" in li.trace]
    over = [li for li in under if "overage" in li.trace]
    assert drawn and all(li.amount_minor == 0 and "prepaid" in li.description for li in drawn)
    # September's unused 10 h rolled over, October's 10 h added: 20 h, drawn in time order until gone.
    hours = sum(li.quantity_billed for li in under)
    assert sum(li.quantity_billed for li in drawn) == min(Decimal(20), hours)
    assert all(li.unit_price_minor in (11500, 17250, 23000) for li in over)  # 115.00 × 1, 1.5 or 2
    care = [li for li in draft.lines if li.trace.get("agreement") == "GLOBEX-CARE"]  # from 15 October, no block
    assert care and not any("prepaid" in li.trace or "overage" in li.trace for li in care)
    assert any("fixed price per service_request ticket" in li["description"] for li in globex)
    for invoice in first["invoices"]:
        assert invoice["total_minor"] == sum(li["amount_minor"] for li in invoice["lines"])
    billed, total = first["counts"]["billed"], first["work_items_total"]
    assert sum(first["counts"].values()) == total

    second = run(input_dir=str(export), rules=rules)
    assert second["new_postings"] == 0 and second["work_items_total"] == total
    assert second["counts"]["billed"] == billed


def test_work_on_unresolved_tickets_is_held_then_billed_once_resolved(
    run: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["hold"] = [{"id": "resolved-only", "description": "billed once its ticket is resolved",
                      "when": {"ticket_resolved": False}}]  # fmt: skip
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    first = run(input_dir=str(export), rules=str(rules_file))
    held = {h["source_id"] for h in first["held"]}
    assert held and first["counts"]["held"] == len(held)
    assert all(h["rule"] == "held by resolved-only: billed once its ticket is resolved" for h in first["held"])
    assert sum(first["counts"].values()) == first["work_items_total"] == 503

    # The tickets get resolved; the rerun of the period bills the held work on a supplementary invoice.
    with (export / "tickets.csv").open(newline="") as handle:
        tickets = list(csv.DictReader(handle))
    for ticket in tickets:
        ticket["resolved_at"] = ticket["resolved_at"] or "2026-11-03T10:00:00Z"
    with (export / "tickets.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(tickets[0]))
        writer.writeheader()
        writer.writerows(tickets)
    second = run(input_dir=str(export), rules=str(rules_file))
    assert second["counts"]["held"] == 0
    assert second["counts"]["billed"] == first["counts"]["billed"] + len(held)
    assert second["new_postings"] > 0 and all(i["status"] == "posted" for i in second["invoices"])
    assert run(input_dir=str(export), rules=str(rules_file))["new_postings"] == 0


def test_customers_unknown_to_the_erp_are_not_posted_when_it_may_not_create_them(
    run: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKET_TO_INVOICE_ERP_CREATES_CUSTOMERS", "false")
    state = ticket_to_invoice(input_dir=str(SAMPLE), erp="files", rules=str(DEMO_RULES), return_state=True)
    assert state.is_failed()  # never Completed (green) with invoices left unposted
    assert state.message.startswith("2 invoice(s) of 2026-10 not posted: t2i:")
    assert "(Globex" in state.message and "the customer is not mapped to the ERP" in state.message
    first = summary_of(state)
    posted = {i["customer"] for i in first["invoices"] if i["status"] == "posted"}
    assert posted == {"ACME", "NORTHWIND"}  # the two with an erp_ref
    refused = {f["draft_key"].split(":")[1]: f["error"] for f in first["posting_failures"]}
    assert refused.keys() == {"GLOBEX", "INITECH"}
    assert "not posted: the customer is not mapped to the ERP" in refused["GLOBEX"]


def test_a_rerun_of_an_unchanged_export_reads_and_prices_nothing_again(
    run: Callable[..., dict[str, Any]], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's bytes, the rules and earlier periods' invoices hash as when the period's drafts were made:
    the rerun answers as the first did without extracting (a large month's rerun in about a second). The same
    bytes touched again change nothing; a changed rules file or row is read and billed as before."""
    from connectors.filedrop import FileDropSource

    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    first = run(input_dir=str(export))
    with monkeypatch.context() as patch:
        patch.setattr(FileDropSource, "extract", lambda *_: pytest.fail("a settled rerun extracted"))
        second = run(input_dir=str(export))
        (export / "worklogs.csv").touch()  # a new modification time, the same data
        third = run(input_dir=str(export))
    for rerun in (second, third):
        assert rerun["new_postings"] == 0 and any(n.startswith("nothing new since") for n in rerun["notes"])
        assert rerun["invoices"] == first["invoices"] and rerun["counts"] == first["counts"]
        assert rerun["quarantined"] == first["quarantined"] and rerun["reconcile"]["mismatches"] == []

    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["approval"]["auto_approve_below"] = {"EUR": "12345.00"}  # prices nothing differently, but is new
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    read_again = run(input_dir=str(export), rules=str(tmp_path / "rules.yaml"))
    assert not any(n.startswith("nothing new since") for n in read_again["notes"])
    assert read_again["counts"] == first["counts"] and read_again["new_postings"] == 0

    worklogs = export / "worklogs.csv"
    worklogs.write_text(worklogs.read_text().replace(",1h30,", ",90,"))  # WL-00506 fixed at the source
    fixed = run(input_dir=str(export), rules=str(tmp_path / "rules.yaml"))
    assert fixed["new_postings"] == 1 and fixed["counts"]["billed"] == first["counts"]["billed"] + 1


def test_a_period_with_dates_after_its_run_is_always_read_again(
    run: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """Validation judged a date in the future against the clock: a later rerun may judge it otherwise, so no
    fingerprint stands for such a period."""
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    tickets = export / "tickets.csv"
    header, first_row, *rest = tickets.read_text().splitlines()
    created = header.split(",").index("created_at")
    cells = first_row.split(",")
    cells[created] = "2099-01-01T09:00:00Z"
    tickets.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    run(input_dir=str(export))
    again = run(input_dir=str(export))
    assert not any(n.startswith("nothing new since") for n in again["notes"])
