"""Billing a live Redmine (Debian's package, started by the tests) into the embedded Tryton: every billable
time entry of the period exactly once, invoice numbers written back, other periods untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.reconcile import reconcile_erp
from flows.ticket_to_invoice import ticket_to_invoice
from tests.conftest import DEMO_RULES
from tests.system.redmine import SeedSummary, new_tag, seed

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
PERIOD = "2026-10"


@pytest.fixture
def seeded(redmine: Any, tryton: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeedSummary:
    """Fresh projects in the shared Redmine, and settings that bill only them into the shared Tryton."""
    summary = seed(redmine, new_tag())
    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["redmine"]["projects"] = summary.customers
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    env = {
        "TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_SOURCE": "redmine",
        "TICKET_TO_INVOICE_REDMINE_URL": redmine.url, "TICKET_TO_INVOICE_REDMINE_API_KEY": redmine.api_key,
        "TICKET_TO_INVOICE_RULES_FILE": str(rules_file), "TICKET_TO_INVOICE_ERP": "tryton",
        "TICKET_TO_INVOICE_TRYTON_URL": tryton.url, "TICKET_TO_INVOICE_TRYTON_DATABASE": tryton.database,
        "TICKET_TO_INVOICE_TRYTON_USER": tryton.user, "TICKET_TO_INVOICE_TRYTON_PASSWORD": tryton.password,
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return summary


def invoice_numbers(redmine: Any, entry_ids: list[int]) -> dict[int, str]:
    field = redmine.custom_fields["time_entry:Invoice number"]
    numbers = {}
    with redmine.client() as client:
        for entry_id in entry_ids:
            entry = client.get(f"/time_entries/{entry_id}.json").json()["time_entry"]
            numbers[entry_id] = next((f.get("value") or "" for f in entry["custom_fields"] if f["id"] == field), "")
    return numbers


def test_every_billable_entry_is_billed_once_and_numbered_back(redmine: Any, seeded: SeedSummary) -> None:
    october = seeded.month(PERIOD)
    assert len(october) > 100  # more than one page of the API
    first = ticket_to_invoice(period=PERIOD)

    billed = {line["source_id"]: inv["erp_number"] for inv in first["invoices"] for line in inv["lines"]}
    internal = {e.id for e in october if e.activity == "Internal"}
    billable = {e.id for e in october if e.billable and e.id not in internal}
    assert set(map(int, billed)) == billable  # each on exactly one line (dict keys are unique per line below)
    assert sum(len(inv["lines"]) for inv in first["invoices"]) == len(billable)
    assert {int(n["source_id"]) for n in first["non_billable"]} == {e.id for e in october} - billable
    assert seeded.without_issue & billable and seeded.without_issue & billable <= set(map(int, billed))
    assert first["quarantined"] == [] and first["posting_failures"] == []
    assert first["reconcile"]["mismatches"] == [] and first["write_back"] == {"written": len(billable), "failed": {}}
    # Customers are the top-level projects: the subproject's time is on its parent's invoice.
    assert {inv["customer"] for inv in first["invoices"]} == set(seeded.customers)

    # The invoice numbers are in Redmine now, on the entries and as a note on their issues.
    numbers = invoice_numbers(redmine, sorted(billable))
    assert numbers == {e: billed[str(e)] for e in billable}
    others = [e.id for e in seeded.time_entries.values() if e.spent_on.strftime("%Y-%m") != PERIOD]
    assert set(invoice_numbers(redmine, others).values()) == {""}  # other periods untouched
    with redmine.client() as client:
        issue = next(e.issue_id for e in october if e.id in billable and e.issue_id)
        journals = client.get(f"/issues/{issue}.json", params={"include": "journals"}).json()["issue"]["journals"]
    assert any("Billed on invoice INV" in (j.get("notes") or "") for j in journals)

    second = ticket_to_invoice(period=PERIOD)
    assert second["new_postings"] == 0
    assert second["counts"] == first["counts"]
    assert second["write_back"] == {"written": 0, "failed": {}}


def test_an_edit_or_deletion_after_billing_is_reported_at_reconcile(redmine: Any, seeded: SeedSummary) -> None:
    first = ticket_to_invoice(period=PERIOD)
    lines = [line for inv in first["invoices"] for line in inv["lines"]]
    edited, deleted = int(lines[0]["source_id"]), int(lines[1]["source_id"])
    with redmine.client() as client:
        assert client.put(f"/time_entries/{edited}.json", json={"time_entry": {"hours": 9.5}}).status_code == 204
        assert client.delete(f"/time_entries/{deleted}.json").status_code == 204

    report = reconcile_erp(period=PERIOD)
    instance = redmine.url.split("//", 1)[1]
    assert report["changed_after_billing"] == [f"redmine:{instance}:time_entry:{edited}"]
    assert report["deleted_after_billing"] == [f"redmine:{instance}:time_entry:{deleted}"]
    assert report["mismatches"] == []  # the invoices themselves are as posted

    again = ticket_to_invoice(period=PERIOD)  # the edit is not billed a second time
    assert again["new_postings"] == 0


def test_a_bad_api_key_is_a_clear_error(redmine: Any, tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "ticket-to-invoice")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKET_TO_INVOICE_", "PREFECT_"))}
    env |= {"TICKET_TO_INVOICE_HOME": str(tmp_path), "TICKET_TO_INVOICE_REDMINE_URL": redmine.url,
            "TICKET_TO_INVOICE_REDMINE_API_KEY": "wrong0key", "TICKET_TO_INVOICE_ERP": "files"}  # fmt: skip
    result = subprocess.run([cli, "run", "--source", "redmine", "--period", PERIOD], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "rejected the API key" in result.stderr and "Traceback" not in result.stderr
