"""`make serve` with its default ERP, the embedded Tryton: the on-demand deployment bills the sample into Tryton
through the worker and ends Completed; a run whose postings Tryton refuses ends Failed and names them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from billing.ledger import Ledger
from tests.service_fixture import logs_of, logs_until, run_deployment, running_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tryton_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    with running_service(tmp_path_factory.mktemp("tryton-service"), {"TICKET_TO_INVOICE_ERP": "tryton"}) as started:
        yield started


def test_on_demand_bills_the_sample_into_tryton_and_ends_completed(
    tryton_service: tuple[str, dict[str, str]],
) -> None:
    api, env = tryton_service
    run = run_deployment(api, "on-demand", {"period": "2026-10"})
    assert (run["name"], run["state"]["type"]) == ("2026-10 on-demand", "COMPLETED"), run["state"]

    postings = Ledger(f"sqlite:///{Path(env['TICKET_TO_INVOICE_HOME']) / 'ledger.db'}").postings("2026-10")
    customers = sorted(p.draft_key.split(":")[1] for p in postings)
    assert customers == ["ACME", "GLOBEX", "INITECH", "NORTHWIND"]  # the sample's four, each once
    assert all(p.erp == "tryton" and p.erp_number.startswith("INV") for p in postings)
    said = logs_until(api, run["id"], ["posted 4 invoices: ", "4 of 4 posted invoices agree with the ERP"])
    [posted] = [m for m in said if m.startswith("posted 4 invoices: ")]
    assert sorted(posted.removeprefix("posted 4 invoices: ").split(", ")) == sorted(p.erp_number for p in postings)
    # Tryton's own totals, read back, equal the ledger's to the cent (tasks/reconcile.py compares them).
    assert any(m.startswith("4 of 4 posted invoices agree with the ERP to the cent; 0 mismatched, 0 duplicated")
               for m in said), said  # fmt: skip

    again = run_deployment(api, "on-demand", {"period": "2026-10"})
    assert again["state"]["type"] == "COMPLETED"
    assert any(m.startswith("posted 0 invoices") for m in logs_of(api, again["id"], final="Completed"))


def test_postings_tryton_refuses_fail_the_run_naming_them(
    tryton_service: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The embedded Tryton has fiscal years for last year to next year: it refuses to post March two years ago,
    and the run says which invoice and why."""
    api, _ = tryton_service
    year = date.today().year - 2
    export = tmp_path / f"export-{year}-03"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"source": "files", "instance": "later", "period": f"{year}-03"}))
    (export / "customers.json").write_text(json.dumps([{"customer_id": "LATER", "name": "Later Ltd",
                                                        "currency": "EUR", "timezone": "Europe/Berlin",
                                                        "country": "DE"}]))  # fmt: skip
    (export / "tickets.csv").write_text("ticket_id,customer_id,subject,ticket_type,priority,status,created_at,"
                                        "resolved_at\nT-1,LATER,Mail down,incident,normal,closed,"
                                        f"{year}-03-07T08:00:00Z,{year}-03-08T12:00:00Z\n")  # fmt: skip
    (export / "worklogs.csv").write_text("worklog_id,ticket_id,customer_id,user,service_type,started_at,"
                                         "duration_minutes,billable,note\nWL-1,T-1,LATER,anna,remote_support,"
                                         f"{year}-03-07T09:00:00Z,60,true,\n")  # fmt: skip
    run = run_deployment(api, "on-demand", {"period": f"{year}-03", "input_dir": str(export)})
    assert run["state"]["type"] == "FAILED", (run["state"], logs_of(api, run["id"]))
    message = run["state"]["message"]
    assert message.startswith(f"1 invoice(s) of {year}-03 not posted: t2i:LATER:"), message
    assert "(Later Ltd" in message and "create a period for the date" in message, message
