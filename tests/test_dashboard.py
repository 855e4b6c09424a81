"""The period's dashboard artifact (``billing-<period>``): what a person reads in the Prefect UI, checked against
figures worked out by hand for the bundled sample export, and every total against the lines shown above it."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.settings import Settings
from tasks.reconcile import ReconcileReport, billing_dashboard, dashboard_key, quarantine_reason
from tests.conftest import DEMO_RULES, SAMPLE

# The sample's four invoices (tests/test_flow.py): untaxed is the sum of the invoice's lines; ACME is German
# (19 % VAT, taxed on the unrounded line amounts as Tryton does), the other three carry no tax.
ACME = ["Acme Logistics GmbH", "EUR", "20933.01", "3977.25", "24910.26"]
GLOBEX = ["Globex Engineering B.V.", "EUR", "15611.25", "0.00", "15611.25"]
INITECH = ["Initech Software Inc.", "USD", "5682.50", "0.00", "5682.50"]
NORTHWIND = ["Northwind Dental LLC", "USD", "14691.50", "0.00", "14691.50"]
# By hand: 20933.01 + 15611.25 = 36544.26 untaxed, 3977.25 + 0.00 tax, 24910.26 + 15611.25 = 40521.51 in EUR;
# 5682.50 + 14691.50 = 20374.00 in USD.
SAMPLE_POSTED = [
    ["INV-2026-00001", *ACME],
    ["INV-2026-00002", *GLOBEX],
    ["**total EUR** (2 invoices)", "", "EUR", "**36544.26**", "**3977.25**", "**40521.51**"],
    ["INV-2026-00003", *INITECH],
    ["INV-2026-00004", *NORTHWIND],
    ["**total USD** (2 invoices)", "", "USD", "**20374.00**", "**0.00**", "**20374.00**"],
]
# The sample's eight bad rows (examples/generate_sample_export.py puts them there), by what is wrong.
SAMPLE_QUARANTINED = [
    ["duration must be more than 0 and at most 24 hours", "2"],  # WL-00501 (-30 min), WL-00502 (2000 min)
    ["customer_id is empty", "1"],  # WL-00507
    ["duration_minutes is not a number of minutes", "1"],  # WL-00506 ("1h30")
    ["started_at is not an ISO 8601 timestamp", "1"],  # WL-00505
    ["the work log id appears more than once", "1"],  # WL-00123
    ["unknown customer", "1"],  # WL-00503 (HOOLI)
    ["unknown service type (not in the rules file)", "1"],  # WL-00504 (gardening)
    ["**total**", "**8**"],
]


def table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (without header and alignment) of the table under the ``## heading…`` line; [] for "none"."""
    parts = re.split(r"^## ", markdown, flags=re.MULTILINE)
    (text,) = [p for p in parts if p.startswith(heading)]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return cells[2:]


def heading(markdown: str, start: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"## {start}"))


def plain(cell: str) -> str:
    return cell.replace("**", "")


def assert_totals_are_the_sum_of_the_lines(rows: list[list[str]], money: range, currency_at: int) -> None:
    """Each ``total`` row equals the sum of the amounts shown in its currency's lines, to the last digit."""
    sums: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * len(money))
    for row in rows:
        currency = row[currency_at]
        if row[0].startswith("**total"):
            assert [Decimal(plain(row[m])) for m in money] == sums.pop(currency), row
        else:
            sums[currency] = [s + Decimal(row[m]) for s, m in zip(sums[currency], money, strict=True)]
    assert not sums, f"lines without a total row: {sorted(sums)}"


def read_dashboard(period: str) -> str:
    from prefect.artifacts import Artifact

    artifact = Artifact.get(dashboard_key(period))
    assert artifact is not None and artifact.type == "markdown"
    return str(artifact.data)


@pytest.fixture
def run(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))

    def run(**parameters: Any) -> Any:
        from flows.ticket_to_invoice import ticket_to_invoice

        parameters = {"input_dir": str(SAMPLE), "erp": "files", "rules": str(DEMO_RULES), **parameters}
        return ticket_to_invoice(**parameters, return_state=True)

    return run


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_the_sample_exports_dashboard_shows_what_was_worked_out_by_hand(run: Callable[..., Any], home: Path) -> None:
    assert run().is_completed()
    markdown = read_dashboard("2026-10")

    assert markdown.startswith("# Billing 2026-10\n")
    assert "503 work items: 455 billed, 0 pending approval, 0 approved and not posted, 40 non-billable, " in markdown
    assert heading(markdown, "Invoices posted") == "## Invoices posted: 4"
    posted = table(markdown, "Invoices posted")
    assert posted == SAMPLE_POSTED
    assert_totals_are_the_sum_of_the_lines(posted, range(3, 6), currency_at=2)
    # The ERP's own documents hold the same amounts (another way to the same figures).
    documents = {d["number"]: d for d in map(json.loads, map(Path.read_text, (home / "erp-files").glob("*/*.json")))}
    for row in (r for r in posted if r[0].startswith("INV")):
        document = documents[row[0]]
        assert [document["untaxed_minor"], document["tax"]["amount_minor"], document["gross_minor"]] == [
            int(Decimal(amount) * 100) for amount in row[3:6]
        ]

    for empty in ("Awaiting approval", "Rejected", "Posting failures", "Held until their hold clears"):
        assert heading(markdown, empty).endswith(": 0") and table(markdown, empty) == []
    assert heading(markdown, "Quarantined work items") == "## Quarantined work items: 8"
    assert table(markdown, "Quarantined work items") == SAMPLE_QUARANTINED
    assert heading(markdown, "Non-billable by rule") == "## Non-billable by rule: 40"
    assert table(markdown, "Non-billable by rule") == [["marked-non-billable", "40"], ["**total**", "**40**"]]
    assert heading(markdown, "Reconcile differences") == "## Reconcile differences: 0"
    assert "_none: 4 posted invoices agree with the ERP to the cent_" in markdown
    # 8 quarantined of 503 work items, no failed posting: 1.59… % → 1.6 %; drafted and posted in the same run.
    assert "**Exception rate**: 1.6 % (8 of 503: quarantined work items and failed postings)" in markdown
    assert "**Reconciliation backlog**: 0 difference(s) to look at." in markdown
    assert re.search(r"\*\*Posting latency\*\* \(drafted → posted\): median \d+ s, max \d+ s over 4 invoice\(s\)",
                     markdown), markdown[:800]  # fmt: skip
    assert not re.search(r"\d\.\d{3,}|e[+-]\d", markdown)  # no float renderings of money


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_waiting_rejected_and_refused_invoices_each_have_their_table(
    run: Callable[..., Any], settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GLOBEX is approved by the threshold but unknown to the ERP (not posted); ACME, INITECH and NORTHWIND wait
    for a human, who approves ACME and rejects NORTHWIND between two runs; INITECH is still waiting."""
    from flows.approvals import decide

    rules = yaml.safe_load(DEMO_RULES.read_text())
    rules["approval"]["auto_approve_below"] = {"EUR": "16000.00", "USD": "1000.00"}
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    monkeypatch.setenv("TICKET_TO_INVOICE_APPROVAL_TIMEOUT_SECONDS", "3")  # nobody answers in the run
    monkeypatch.setenv("TICKET_TO_INVOICE_ERP_CREATES_CUSTOMERS", "false")  # GLOBEX has no erp_ref

    assert run(rules=str(rules_file), approve="manual").is_failed()  # GLOBEX refused
    decide(settings, approver="pat", approved=True, note="ok", drafts=["t2i:ACME:default:2026-10:EUR:v1"])
    decide(settings, approver="pat", approved=False, note="wrong | rates",
           drafts=["t2i:NORTHWIND:default:2026-10:USD:v1"])  # fmt: skip
    assert run(rules=str(rules_file), approve="manual").is_failed()
    markdown = read_dashboard("2026-10")

    assert table(markdown, "Invoices posted") == [
        ["INV-2026-00001", *ACME],
        ["**total EUR** (1 invoice)", "", "EUR", "**20933.01**", "**3977.25**", "**24910.26**"],
    ]
    assert heading(markdown, "Awaiting approval") == "## Awaiting approval: 1"
    assert table(markdown, "Awaiting approval") == [
        ["Initech Software Inc.", "`t2i:INITECH:default:2026-10:USD:v1`", *INITECH[1:]],
        ["**total USD** (1 invoice)", "", "USD", "**5682.50**", "**0.00**", "**5682.50**"],
    ]
    assert table(markdown, "Rejected") == [
        ["Northwind Dental LLC", "`t2i:NORTHWIND:default:2026-10:USD:v1`", *NORTHWIND[1:], "pat", "wrong | rates"],
        ["**total USD** (1 invoice)", "", "USD", "**14691.50**", "**0.00**", "**14691.50**", "", ""],
    ]
    assert heading(markdown, "Posting failures") == "## Posting failures: 1"
    ((customer, draft, error),) = table(markdown, "Posting failures")
    assert (customer, draft) == ("Globex Engineering B.V.", "`t2i:GLOBEX:default:2026-10:EUR:v1`")
    assert error.startswith("not posted: the customer is not mapped to the ERP")
    # Work items: 455 billable of which ACME's 162 lines are billed; the others wait for a decision or a posting.
    assert "pending approval" in markdown and table(markdown, "Quarantined work items") == SAMPLE_QUARANTINED


# -- the markdown itself, without a server ---------------------------------------------------------------------


def invoice(key: str, currency: str, amounts: tuple[int, int], status: str = "posted", **more: Any) -> dict[str, Any]:
    untaxed, tax = amounts
    return {"key": key, "customer": key.upper(), "customer_name": more.pop("name", None), "currency": currency,
            "total_minor": untaxed, "tax_minor": tax, "gross_minor": untaxed + tax, "status": status,
            "erp_number": more.pop("number", None), "lines": [], **more}  # fmt: skip


def summary_of(invoices: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    counts = {"billed": 0, "non_billable": 0, "quarantined": 0, "pending_approval": 0, "pending_posting": 0, "held": 0}
    return {"period": "2026-10", "invoices": invoices, "counts": counts, "work_items_total": 0, "new_postings": 0,
            "posting_failures": [], "quarantined": [], "non_billable": [], "held": [], **more}  # fmt: skip


def test_amounts_are_exact_in_each_currency_and_totals_add_up() -> None:
    invoices = [
        invoice("a", "JPY", (120000, 0), number="INV-1"),  # no minor unit
        invoice("b", "JPY", (1, 0), number="INV-2"),
        invoice("c", "KWD", (1005, 51), number="INV-3"),  # three decimals
        invoice("d", "EUR", (-5000, -950), number="CN-1"),  # a credit note
        invoice("e", "EUR", (10, 2), number="INV-4"),
    ]
    rows = table(billing_dashboard(summary_of(invoices), ReconcileReport("2026-10")), "Invoices posted")
    assert rows == [
        ["CN-1", "D", "EUR", "-50.00", "-9.50", "-59.50"],
        ["INV-4", "E", "EUR", "0.10", "0.02", "0.12"],
        ["**total EUR** (2 invoices)", "", "EUR", "**-49.90**", "**-9.48**", "**-59.38**"],
        ["INV-1", "A", "JPY", "120000", "0", "120000"],
        ["INV-2", "B", "JPY", "1", "0", "1"],
        ["**total JPY** (2 invoices)", "", "JPY", "**120001**", "**0**", "**120001**"],
        ["INV-3", "C", "KWD", "1.005", "0.051", "1.056"],
        ["**total KWD** (1 invoice)", "", "KWD", "**1.005**", "**0.051**", "**1.056**"],
    ]
    assert_totals_are_the_sum_of_the_lines(rows, range(3, 6), currency_at=2)


def test_reconcile_differences_are_counted_and_the_amounts_shown() -> None:
    mismatch = {"key": "t2i:A:default:2026-10:EUR:v1", "erp_number": "INV-1", "currency": "EUR", "status": "mismatch",
                "total_minor": 10000, "erp_total_minor": 9999, "tax_minor": 1900, "erp_tax_minor": 1900,
                "gross_minor": 11900, "erp_gross_minor": 11899}  # fmt: skip
    missing = {**mismatch, "key": "t2i:B:default:2026-10:EUR:v1", "erp_number": "INV-2", "status": "missing_in_erp",
               "erp_total_minor": None, "erp_tax_minor": None, "erp_gross_minor": None}  # fmt: skip
    report = ReconcileReport(
        "2026-10", invoices=[mismatch, missing], mismatches=[mismatch, missing],
        duplicates=[{"key": "t2i:C:default:2026-10:EUR:v1", "erp_numbers": ["INV-3", "INV-4"]},
                    {"work_item": "w1", "keys": ["k1", "k2"], "erp_numbers": ["INV-5", "INV-6"]}],
        unbilled=["w2", "w3"], changed_after_billing=["w4"],
    )  # fmt: skip
    markdown = billing_dashboard(summary_of([]), report)
    assert heading(markdown, "Reconcile differences") == "## Reconcile differences: 7"
    rows = table(markdown, "Reconcile differences")  # the counts, then the amounts (after their header)
    assert rows[:7] == [
        ["amounts differ from the ERP's", "1"],
        ["missing in the ERP", "1"],
        ["several ERP invoices with one key", "1"],
        ["work item on two live invoices", "1"],
        ["work item not billed yet", "2"],
        ["changed at the source after billing", "1"],
        ["**total**", "**7**"],
    ]
    assert rows[9:] == [  # after the amounts table's header and alignment rows
        ["INV-1", "`t2i:A:default:2026-10:EUR:v1`", "EUR", "100.00 / 99.99", "19.00 / 19.00", "119.00 / 118.99"],
        ["INV-2", "`t2i:B:default:2026-10:EUR:v1`", "EUR", "100.00 / —", "19.00 / —", "119.00 / —"],
    ]


def test_a_quarantined_row_counts_once_under_what_its_reasons_say() -> None:
    assert quarantine_reason("unknown customer: customer_id='HOOLI' (worklogs.csv row 179)") == "unknown customer"
    assert quarantine_reason("no rate for service gardening in EUR") == "no rate for service gardening in EUR"
    two = (
        "customer_id is empty: customer_id=(empty) (worklogs.csv row 4); unknown service type (not in the "
        "rules file): service_type='x' (worklogs.csv row 4)"
    )
    assert quarantine_reason(two) == "customer_id is empty; unknown service type (not in the rules file)"
    values = "started_at is not an ISO 8601 timestamp: 'a; b' (worklogs.csv row 3)"
    assert quarantine_reason(values) == "started_at is not an ISO 8601 timestamp"

    summary = summary_of([], quarantined=[{"source_id": "1", "reason": two}, {"source_id": "2", "reason": values},
                                          {"source_id": "3", "reason": values}])  # fmt: skip
    rows = table(billing_dashboard(summary, ReconcileReport("2026-10")), "Quarantined work items")
    assert rows == [["started_at is not an ISO 8601 timestamp", "2"],
                    ["customer_id is empty; unknown service type (not in the rules file)", "1"],
                    ["**total**", "**3**"]]  # fmt: skip


def test_the_dashboards_key_is_a_valid_artifact_key() -> None:
    assert dashboard_key("2026-10") == "billing-2026-10"
    assert re.fullmatch(r"[a-z0-9-]+", dashboard_key("2026-10"))
