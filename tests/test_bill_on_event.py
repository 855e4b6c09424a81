"""Billing on a resolved ticket (``bill-on-event``), under a Prefect test server, on a small export whose
amounts are computed by hand below (demo rules: ACME's remote support 89.50 EUR/h, on-site 120.00,
consulting 150.00; German VAT 19 % on the invoice; GLOBEX pays 95.00 remote, no VAT)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billing.ledger import Ledger
from billing.settings import Settings
from flows.bill_on_event import bill_on_event, wait_for_the_burst
from flows.run_state import summary_of
from flows.ticket_to_invoice import ticket_to_invoice
from tests.conftest import DEMO_RULES, SAMPLE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

TICKETS = """ticket_id,customer_id,subject,ticket_type,priority,status,created_at,resolved_at
T-1,ACME,Printer offline,incident,normal,closed,2026-10-05T08:00:00Z,2026-10-10T12:00:00Z
T-2,ACME,New laptop,service_request,normal,open,2026-10-05T08:00:00Z,
T-3,ACME,Firewall review,change,normal,resolved,2026-10-05T08:00:00Z,2026-10-12T12:00:00Z
T-4,GLOBEX,VPN down,incident,normal,closed,2026-10-05T08:00:00Z,2026-10-09T12:00:00Z
"""
# Weekdays, 11:00 in Berlin and Amsterdam (09:00 UTC): inside business hours, no surcharge.
WORKLOGS = """worklog_id,ticket_id,customer_id,user,service_type,started_at,duration_minutes,billable,note
WL-1,T-1,ACME,anna,remote_support,2026-10-06T09:00:00Z,120,true,
WL-2,T-1,ACME,anna,onsite_support,2026-10-07T09:00:00Z,30,true,
WL-3,T-2,ACME,ben,remote_support,2026-10-08T09:00:00Z,30,true,
WL-4,T-3,ACME,ben,consulting,2026-10-09T09:00:00Z,60,true,
WL-5,T-4,GLOBEX,anna,remote_support,2026-10-06T09:00:00Z,60,true,
"""
# By hand: T-1 = 2 h × 89.50 + 0.5 h × 120.00 = 239.00; T-3 = 1 h × 150.00 = 150.00; T-2 = 0.5 h × 89.50 = 44.75.
T1, T2, T3 = 23900, 4475, 15000


@pytest.fixture
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "manifest.json").write_text((SAMPLE / "manifest.json").read_text())
    customers = [
        c for c in json.loads((SAMPLE / "customers.json").read_text()) if c["customer_id"] in {"ACME", "GLOBEX"}
    ]
    (folder / "customers.json").write_text(json.dumps(customers))
    (folder / "tickets.csv").write_text(TICKETS)
    (folder / "worklogs.csv").write_text(WORKLOGS)
    return folder


def rules_where_acme_bills_on(tmp_path: Path, bill_on: str) -> str:
    rules = tmp_path / f"rules-{bill_on}.yaml"
    rules.write_text(f"extends: {DEMO_RULES}\nname: events\ncustomers:\n  ACME: {{bill_on: {bill_on}}}\n")
    return str(rules)


@pytest.fixture
def on_event(home: Path, export: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))

    def on_event(**parameters: Any) -> dict[str, Any]:
        parameters = {"input_dir": str(export), "erp": "files", "approve": "auto"} | parameters
        return summary_of(bill_on_event(**parameters, return_state=True))

    return on_event


def posted_documents(home: Path) -> dict[str, dict[str, Any]]:
    return {
        d["external_reference"]: d for d in (json.loads(p.read_text()) for p in (home / "erp-files").glob("*/*.json"))
    }


def test_a_resolution_bills_the_customers_resolved_tickets_at_once_and_only_once(
    on_event: Callable[..., dict[str, Any]], home: Path, export: Path, tmp_path: Path, settings: Settings
) -> None:
    rules = rules_where_acme_bills_on(tmp_path, "resolution")
    first = on_event(ticket="T-1", customer="ACME", occurred="2026-10-10T12:00:00Z", event="e-1", rules=rules)
    assert first["period"] == "2026-10" and first["tickets"] == ["T-1", "T-3"]  # T-3 resolved too; T-2 open
    [invoice] = first["invoices"]
    document = posted_documents(home)[invoice["key"]]
    assert document["untaxed_minor"] == T1 + T3 == 38900
    assert document["tax"]["amount_minor"] == 7391  # 389.00 × 19 % = 73.91
    assert document["gross_minor"] == invoice["gross_minor"] == 46291

    # The same event again (a retry, a second delivery): nothing twice.
    again = on_event(ticket="T-1", customer="ACME", occurred="2026-10-10T12:00:00Z", event="e-1", rules=rules)
    assert again["new_postings"] == 0 and again["invoices"] == []
    assert len(posted_documents(home)) == 1

    # The monthly run bills what is left: T-2's work for ACME, GLOBEX's month; never T-1's or T-3's again.
    monthly = summary_of(ticket_to_invoice(input_dir=str(export), erp="files", rules=rules, approve="auto",
                                           period="2026-10", return_state=True))  # fmt: skip
    documents = posted_documents(home)
    assert len(documents) == 3
    acme = sorted((d for d in documents.values() if d["customer"]["id"] == "ACME"), key=lambda d: d["number"])
    assert [d["untaxed_minor"] for d in acme] == [T1 + T3, T2]
    assert acme[1]["tax"]["amount_minor"] == 850  # 44.75 × 19 % = 8.5025 → 8.50
    globex = next(d for d in documents.values() if d["customer"]["id"] == "GLOBEX")
    assert (globex["untaxed_minor"], globex["tax"]["amount_minor"]) == (9500, 0)
    assert monthly["new_postings"] == 2
    assert Ledger(settings.resolved_ledger_url).counts("2026-10")["billed"] == 5  # every work log, once


def test_one_invoice_per_ticket_when_the_rules_say_so(
    on_event: Callable[..., dict[str, Any]], home: Path, tmp_path: Path
) -> None:
    rules = rules_where_acme_bills_on(tmp_path, "each_resolution")
    summary = on_event(ticket="T-3", customer="", occurred="2026-10-12T12:00:00Z", event="e-2", rules=rules)
    assert summary["customer"] == "ACME"  # looked up from the ticket: the event did not say
    documents = posted_documents(home)
    by_ticket = sorted((d["untaxed_minor"], d["tax"]["amount_minor"]) for d in documents.values())
    assert by_ticket == [(T3, 2850), (T1, 4541)]  # 150.00 × 19 % = 28.50; 239.00 × 19 % = 45.41
    assert sorted(i["key"][-2:] for i in summary["invoices"]) == ["v1", "v2"]


def test_a_customer_billed_at_period_end_is_left_to_the_monthly_run(
    on_event: Callable[..., dict[str, Any]], home: Path, tmp_path: Path
) -> None:
    rules = rules_where_acme_bills_on(tmp_path, "resolution")
    for customer in ("GLOBEX", ""):  # said by the event, or found from the ticket
        summary = on_event(ticket="T-4", customer=customer, occurred="2026-10-09T12:00:00Z", rules=rules)
        assert (summary["bill_on"], summary["new_postings"]) == ("period_end", 0)
    assert not (home / "erp-files").exists() or posted_documents(home) == {}


def test_a_run_reads_the_source_only_after_the_burst_window() -> None:
    said: list[str] = []
    started = time.monotonic()
    wait_for_the_burst(datetime.now(UTC) - timedelta(seconds=0.2), 0.7, said.append)  # 0.5 s of the window left
    assert 0.4 <= time.monotonic() - started < 2 and said and said[0].startswith("waiting 0.5 s")
    said.clear()
    wait_for_the_burst(datetime.now(UTC) - timedelta(seconds=5), 1, said.append)  # the usual case: already over
    assert said == []
