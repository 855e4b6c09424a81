"""`ticket-to-invoice price` shows exactly what `run` then posts: the same drafts, lines and totals, with fees,
milestones, usage, supplementary versions and reruns."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billing.ledger import Ledger
from billing.settings import Settings
from flows.ticket_to_invoice import ticket_to_invoice
from tasks.price import preview
from tests.conftest import DEMO_RULES, SAMPLE
from tests.test_flow import USAGE_CSV

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

AGREEMENTS = DEMO_RULES.with_name("agreements.yaml")
MANAGED = DEMO_RULES.with_name("managed-services.yaml")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(SAMPLE, folder)
    return folder


@pytest.fixture
def price_then_run(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Preview, then run on the same ledger: the run's new postings must be the preview's drafts."""
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))

    def price_then_run(export: Path, rules: Path) -> dict[str, Any]:
        settings = Settings(home=home, input_dir=export, rules_file=rules)
        shown = preview(settings, "2026-10")
        before = {p.draft_key for p in Ledger(settings.resolved_ledger_url).postings()}
        result = ticket_to_invoice(input_dir=str(export), rules=str(rules), erp="files", period="2026-10")
        posted = [i for i in result["invoices"] if i["status"] == "posted" and i["key"] not in before]
        assert [(d["key"], d["total_minor"], d["tax_minor"], d["gross_minor"]) for d in shown["drafts"]] == [
            (i["key"], i["total_minor"], i["tax_minor"], i["gross_minor"]) for i in posted
        ]
        for invoice in posted:
            assert [(li["source_id"], li["description"], li["amount_minor"]) for li in shown["lines"]
                    if li["draft"] == invoice["key"]] == [
                (li["source_id"], li["description"], li["amount_minor"]) for li in invoice["lines"]
            ]  # fmt: skip
        assert result["new_postings"] == len(shown["drafts"])
        return shown

    return price_then_run


def test_the_demo_month_then_a_rerun_with_nothing_new(price_then_run: Callable[..., dict[str, Any]],
                                                       export: Path) -> None:  # fmt: skip
    first = price_then_run(export, DEMO_RULES)
    assert len(first["drafts"]) == 4
    again = price_then_run(export, DEMO_RULES)
    assert again["drafts"] == [] and again["lines"] == []


def test_late_work_shows_as_the_supplementary_invoice_the_run_posts(
    price_then_run: Callable[..., dict[str, Any]], export: Path, home: Path
) -> None:
    price_then_run(export, DEMO_RULES)
    worklogs = export / "worklogs.csv"
    worklogs.write_text(worklogs.read_text() + "WL-09001,T-1004,ACME,anna.schmidt,remote_support,"
                        "2026-10-30T10:00:00Z,50,true,Late entry\n")  # fmt: skip
    late = price_then_run(export, DEMO_RULES)
    assert [(d["key"], d["version"], d["lines"]) for d in late["drafts"]] == [("t2i:ACME:default:2026-10:EUR:v2", 2, 1)]
    assert [li["source_id"] for li in late["lines"]] == ["WL-09001"]


def test_agreements_fees_milestones_caps_and_discounts(price_then_run: Callable[..., dict[str, Any]],
                                                       export: Path) -> None:  # fmt: skip
    shown = price_then_run(export, AGREEMENTS)
    descriptions = [li["description"] for li in shown["lines"]]
    assert any(d.startswith("Monthly fee") for d in descriptions)
    assert any(d.startswith("Milestone initech-sso-rollout") for d in descriptions)
    assert price_then_run(export, AGREEMENTS)["drafts"] == []  # fees and milestones are billed once


def test_usage_prepaid_hours_and_ticket_fees(price_then_run: Callable[..., dict[str, Any]], export: Path) -> None:
    (export / "usage.csv").write_text(USAGE_CSV)
    shown = price_then_run(export, MANAGED)
    assert any(li["description"].startswith("Cloud backup") for li in shown["lines"])
    assert price_then_run(export, MANAGED)["drafts"] == []


def test_a_month_of_fees_and_usage_without_work_logs(price_then_run: Callable[..., dict[str, Any]],
                                                      export: Path) -> None:  # fmt: skip
    """No work logs at all (a header only), yet fees and usage are due: price shows them, run bills them."""
    worklogs = export / "worklogs.csv"
    worklogs.write_text(worklogs.read_text().splitlines()[0] + "\n")
    (export / "usage.csv").write_text(USAGE_CSV)
    shown = price_then_run(export, MANAGED)
    kinds = {li["description"].split(",")[0].split(" (")[0] for li in shown["lines"]}
    assert "Monthly fee" in kinds and "Cloud backup" in kinds
    assert price_then_run(export, MANAGED)["drafts"] == []


def test_a_milestone_resolved_before_the_period_is_named_not_swept_in(
    price_then_run: Callable[..., dict[str, Any]], export: Path, home: Path
) -> None:
    """November on a fresh ledger: October's milestone is not put on November's invoice; the run says
    which period bills it, and a run of that period does."""
    (export / "manifest.json").write_text('{"instance": "sample-export", "period": "2026-11"}')
    november = preview(Settings(home=home, input_dir=export, rules_file=AGREEMENTS), "2026-11")
    assert not any(li["description"].startswith("Milestone") for li in november["lines"])
    assert any("milestone initech-sso-rollout" in n and "a run of 2026-10 bills it" in n for n in november["notes"])
    october = price_then_run(export, AGREEMENTS)
    assert any(li["description"].startswith("Milestone initech-sso-rollout") for li in october["lines"])
    november = preview(Settings(home=home, input_dir=export, rules_file=AGREEMENTS), "2026-11")
    assert not any("milestone" in n for n in november["notes"])  # billed now: nothing to say


def test_an_export_with_no_rows_at_all_is_a_clean_run(price_then_run: Callable[..., dict[str, Any]],
                                                       export: Path) -> None:  # fmt: skip
    for name in ("tickets.csv", "worklogs.csv"):
        (export / name).write_text((export / name).read_text().splitlines()[0] + "\n")
    (export / "customers.json").write_text("[]")  # a JSON table with no rows, as a CSV of a header only
    shown = price_then_run(export, DEMO_RULES)
    assert shown["drafts"] == [] and shown["quarantined"] == []
