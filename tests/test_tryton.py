"""Posting into a real Tryton (trytond started by the tests), exactly once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.ledger import Ledger
from billing.models import ChargeLine, InvoiceDraft
from billing.money import Rounding
from connectors.tryton import TrytonErp
from connectors.tryton_rpc import TrytonRpc
from flows.ticket_to_invoice import ticket_to_invoice
from tests.conftest import DEMO_RULES, SAMPLE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def export_for_this_test(tmp_path: Path) -> tuple[Path, str]:
    """The sample export with customer ids made unique, so every test bills its own invoices in one Tryton."""
    tag = uuid.uuid4().hex[:6].upper()
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    for name in ("customers.json", "tickets.csv", "worklogs.csv"):
        path = export / name
        text = path.read_text()
        for customer in ("ACME", "GLOBEX", "NORTHWIND", "INITECH"):
            text = text.replace(f'"{customer}"', f'"{customer}-{tag}"').replace(f",{customer},", f",{customer}-{tag},")
        path.write_text(text)
    return export, tag


@pytest.fixture
def tryton_env(tryton: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_ERP": "tryton",
        "TICKET_TO_INVOICE_TRYTON_URL": tryton.url, "TICKET_TO_INVOICE_TRYTON_DATABASE": tryton.database,
        "TICKET_TO_INVOICE_TRYTON_USER": tryton.user, "TICKET_TO_INVOICE_TRYTON_PASSWORD": tryton.password,
        "TICKET_TO_INVOICE_RULES_FILE": str(DEMO_RULES),
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def rpc(tryton: Any) -> TrytonRpc:
    return tryton.rpc()


def invoices(rpc: TrytonRpc, keys: list[str]) -> list[dict[str, Any]]:
    return rpc.model("account.invoice", "search_read", [["reference", "in", keys]], 0, None, None,
                     ["reference", "state", "number", "untaxed_amount", "tax_amount", "total_amount"])  # fmt: skip


def test_the_sample_posts_into_tryton_once_with_its_tax(
    tryton_env: dict[str, str], rpc: TrytonRpc, home: Path, tmp_path: Path
) -> None:
    export, tag = export_for_this_test(tmp_path)
    first = ticket_to_invoice(input_dir=str(export))
    keys = [i["key"] for i in first["invoices"]]

    assert first["new_postings"] == 4 and first["posting_failures"] == []
    in_tryton = {i["reference"]: i for i in invoices(rpc, keys)}
    assert len(in_tryton) == 4 and {i["state"] for i in in_tryton.values()} == {"posted"}
    for invoice in first["invoices"]:
        erp = in_tryton[invoice["key"]]
        assert erp["number"] == invoice["erp_number"]
        # Tryton computed the tax itself; it equals ours to the cent.
        assert (erp["untaxed_amount"], erp["tax_amount"], erp["total_amount"]) == tuple(
            Decimal(invoice[k]).scaleb(-2) for k in ("total_minor", "tax_minor", "gross_minor")
        )
    acme = next(i for i in first["invoices"] if i["customer"] == f"ACME-{tag}")
    assert acme["tax_minor"] > 0  # German customer: 19 % VAT; the others none
    assert first["reconcile"]["mismatches"] == [] and first["reconcile"]["duplicates"] == []

    # Links made once are remembered: the rerun neither searches nor creates parties or products.
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    parties = ledger.erp_mappings("tryton", "party")
    assert {"C-10001", "C-10003", f"GLOBEX-{tag}", f"INITECH-{tag}"} <= parties.keys()
    second = ticket_to_invoice(input_dir=str(export))
    assert second["new_postings"] == 0
    assert len(invoices(rpc, keys)) == 4
    assert ledger.erp_mappings("tryton", "party") == parties
    codes = [p["code"] for p in rpc.model("party.party", "search_read", [["code", "in", list(parties)]], 0, None,
                                          None, ["code"])]  # fmt: skip
    assert sorted(codes) == sorted(parties)  # no twins


def test_a_process_killed_between_create_and_post_leaves_one_posted_invoice_per_draft(
    tryton_env: dict[str, str], rpc: TrytonRpc, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    export, _ = export_for_this_test(tmp_path)
    script = Path(__file__).with_name("crash_between_create_and_post.py")
    env = os.environ | tryton_env | {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    killed = subprocess.run([sys.executable, str(script), str(export)], env=env, capture_output=True, text=True,
                            timeout=600, cwd=Path(__file__).parents[1])  # fmt: skip
    assert killed.returncode == 9, killed.stderr[-3000:]
    ledger = Ledger(f"sqlite:///{Path(tryton_env['TICKET_TO_INVOICE_HOME']) / 'ledger.db'}")
    keys = [d.key for d in ledger.drafts("2026-10")]
    left = invoices(rpc, keys)
    assert len(left) == 4 and {i["state"] for i in left} == {"draft"}  # created, never posted

    rerun = ticket_to_invoice(input_dir=str(export))
    after = invoices(rpc, keys)
    assert len(after) == 4 and {i["state"] for i in after} == {"posted"}  # the drafts posted, none duplicated
    assert {i["id"] for i in after} == {i["id"] for i in left}
    assert rerun["new_postings"] == 4 and rerun["reconcile"]["duplicates"] == []


def draft(customer: str, period: str = "2026-10", lines: tuple[tuple[str, int], ...] = (("1.25", 9500),),
          rounding: Rounding = Rounding.HALF_EVEN) -> InvoiceDraft:  # fmt: skip
    return InvoiceDraft(
        customer_id=customer, period=period, currency="EUR", version=1, customer_name=customer,
        money_rounding=rounding, tax_rate=Decimal("0.19"), tax_base="unrounded",
        lines=tuple(
            ChargeLine(work_item_keys=(f"k:{customer}:{n}",), source_id=f"WL-{n}", customer_id=customer, period=period,
                       currency="EUR", service_type="remote_support", description="support",
                       quantity_raw=Decimal(q), quantity_billed=Decimal(q), unit_price_minor=price,
                       amount_minor=int((Decimal(q) * price).quantize(Decimal(1), rounding=rounding.decimal_mode)))
            for n, (q, price) in enumerate(lines)),
    )  # fmt: skip


def test_a_refused_invoice_is_reported_and_the_others_are_posted(rpc: TrytonRpc) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    good = [draft(f"GOOD1-{tag}"), draft(f"GOOD2-{tag}")]
    no_fiscal_year = draft(f"BAD-{tag}", period="2031-01")  # Tryton has no fiscal year for 2031: UserError
    receipts, failures = TrytonErp(rpc).post([good[0], no_fiscal_year, good[1]])

    assert sorted(r.draft_key for r in receipts) == sorted(d.key for d in good)
    assert all(r.erp_number and r.state == "posted" for r in receipts)
    assert [f.draft_key for f in failures] == [no_fiscal_year.key]
    assert failures[0].error.startswith("post refused: UserError: To continue, you must create a period for the date")


def test_a_draft_tryton_would_round_otherwise_is_not_posted(rpc: TrytonRpc) -> None:
    # 0.25 h × 89.50 = 22.375: our half-up says 22.38, Tryton's half-even says 22.38 too; 0.25 × 89.30 = 22.325
    # is where they part (22.33 against 22.32), and posting it would break "the total is the sum of its lines".
    tag = uuid.uuid4().hex[:6].upper()
    mismatched = draft(f"ROUND-{tag}", lines=(("0.25", 8930),), rounding=Rounding.HALF_UP)
    receipts, failures = TrytonErp(rpc).post([mismatched])
    assert receipts == []
    assert failures[0].error.startswith("line 1 (WL-0): Tryton computes 22.32, the draft says 22.33 EUR")
    assert invoices(rpc, [mismatched.key]) == []


def test_posting_the_same_drafts_twice_answers_with_the_same_invoices(rpc: TrytonRpc) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    drafts = [draft(f"TWICE-{tag}", lines=(("1.25", 9500), ("0.50", 12000)))]
    first, _ = TrytonErp(rpc).post(drafts)
    second, _ = TrytonErp(rpc).post(drafts)
    assert [r.erp_number for r in first] == [r.erp_number for r in second]
    assert [r.already_existed for r in first + second] == [False, True]
    assert len(invoices(rpc, [drafts[0].key])) == 1
    # untaxed 118.75 + 60.00; tax 19 % of 178.75 = 33.9625 → 33.96
    assert (second[0].total_minor, second[0].tax_minor, second[0].gross_minor) == (17875, 3396, 21271)
    assert drafts[0].tax_minor == 3396


def test_usage_ticket_fees_and_a_reduced_tax_class_post_and_reconcile_to_the_cent(
    tryton_env: dict[str, str], rpc: TrytonRpc, tmp_path: Path
) -> None:
    export, tag = export_for_this_test(tmp_path)
    (export / "usage.csv").write_text(
        "record_id,customer_id,metric,quantity,occurred_on\n"
        f"U-1,ACME-{tag},backup_gb,1250.5,2026-10-31\nU-2,ACME-{tag},m365_seats,60,2026-10-31\n"
        f"U-3,INITECH-{tag},backup_gb,20,2026-10-31\n"
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
extends: {DEMO_RULES.with_name("managed-services.yaml")}
name: tryton-tax-classes
services:
  project_work: {{tax_class: reduced}}
taxes:
  rates:
    - {{id: vat-de-7, rate: "0.07", countries: [DE], product_classes: [reduced]}}
ticket_fees:
  - {{id: any-change-flat, ticket_type: change, amount: {{EUR: "80.00", USD: "95.00"}}}}
""")
    first = ticket_to_invoice(input_dir=str(export), rules=str(rules))
    assert first["posting_failures"] == [] and first["reconcile"]["mismatches"] == []
    acme = next(i for i in first["invoices"] if i["customer"] == f"ACME-{tag}")
    descriptions = [li["description"] for li in acme["lines"]]
    assert "Microsoft 365 seats, volume tier, 2026-10" in descriptions
    assert any("fixed price per change ticket" in d for d in descriptions)
    ledger = Ledger(f"sqlite:///{Path(tryton_env['TICKET_TO_INVOICE_HOME']) / 'ledger.db'}")
    (draft,) = [d for d in ledger.drafts("2026-10") if d.customer_id == f"ACME-{tag}"]
    reduced = [li for li in draft.lines if li.tax_id == "vat-de-7"]
    assert reduced and all(li.service_type == "project_work" for li in reduced)
    # Tryton computed each line's tax itself (19 % and 7 %): the same as ours, to the cent.
    (erp,) = invoices(rpc, [draft.key])
    assert Decimal(erp["tax_amount"]).scaleb(2) == draft.tax_minor
    standard = sum(li.quantity_billed * li.unit_price_minor for li in draft.lines if li.tax_id is None)
    lower = sum(li.quantity_billed * li.unit_price_minor for li in reduced)
    assert draft.tax_minor == round(standard * Decimal("0.19")) + round(lower * Decimal("0.07"))


def test_tax_left_to_tryton_is_its_own_and_reconcile_compares_the_untaxed_totals(
    tryton_env: dict[str, str], rpc: TrytonRpc, tmp_path: Path
) -> None:
    export, _ = export_for_this_test(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"extends: {DEMO_RULES}\nname: tax-by-tryton\ntaxes: {{computed_by: erp}}\n")
    first = ticket_to_invoice(input_dir=str(export), rules=str(rules))
    assert first["posting_failures"] == [] and first["reconcile"]["mismatches"] == []
    in_tryton = {i["reference"]: i for i in invoices(rpc, [i["key"] for i in first["invoices"]])}
    for entry in first["reconcile"]["invoices"]:
        erp = in_tryton[entry["key"]]
        assert entry["status"] == "ok" and Decimal(erp["untaxed_amount"]).scaleb(2) == entry["total_minor"]
        # The tax is Tryton's (its product category's customer tax), reported as it computed it.
        assert entry["erp_tax_minor"] == Decimal(erp["tax_amount"]).scaleb(2)
        assert entry["erp_tax_minor"] == round(entry["total_minor"] * Decimal("0.19"))  # the category's 19 %
