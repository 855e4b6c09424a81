"""The validate stage against a real ledger: quarantine, usage, the failure-rate gate and Data Docs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from billing.ledger import Ledger, WorkState
from billing.settings import Settings
from rules.quality import QualityGateError
from tasks.extract import extract_work
from tasks.validate import validate_batch
from tests.conftest import DEMO_RULES, SAMPLE
from tests.test_quality import usage_rows

NOW = datetime(2026, 11, 23, tzinfo=UTC)
BAD_ROWS = {"WL-00501", "WL-00502", "WL-00503", "WL-00504", "WL-00505", "WL-00506", "WL-00507", "WL-00123"}


@pytest.fixture
def usage_rules(tmp_path: Path) -> Path:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data["usage"] = {"storage_gb": {"name": "Storage (GB)", "tiers": [{"unit_price": {"EUR": "0.10", "USD": "0.12"}}]}}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_failing_rows_are_quarantined_with_reasons_and_data_docs_are_written(settings: Settings) -> None:
    batch = extract_work(settings, "2026-10")
    validated = validate_batch(settings, batch, NOW)

    assert len(validated.worklogs) == 504 - 9
    items = Ledger(settings.resolved_ledger_url).work_items("2026-10")
    quarantined = items[items["state"] == "quarantined"]
    assert set(quarantined["source_id"]) == BAD_ROWS
    hooli = quarantined.set_index("source_id").loc["WL-00503"]
    assert hooli["reason"] == "unknown customer: customer_id='HOOLI' (worklogs.csv row 179)"
    assert hooli["details"] == {"suite": "worklogs", "failed": [
        {"field": "customer_id", "value": "HOOLI", "check": "expect_column_values_to_be_in_set"}]}  # fmt: skip

    docs = validated.data_docs
    assert docs is not None and docs.name == "index.html" and docs.parent.parent == settings.home / "data-docs"
    pages = {p.parent.parent.parent.name: p for p in docs.parent.glob("validations/*/*/*/*.html")}
    assert set(pages) == {"customers", "tickets", "worklogs"}  # no usage in this export: nothing to show
    worklogs_page = pages["worklogs"].read_text()
    assert "duration must be more than 0 and at most 24 hours" in worklogs_page and "HOOLI" in worklogs_page


def test_too_many_failures_stop_the_run_after_quarantining_them(settings: Settings) -> None:
    strict = settings.model_copy(update={"max_failure_rate": 0.01})
    batch = extract_work(strict, "2026-10")
    with pytest.raises(QualityGateError) as raised:
        validate_batch(strict, batch, NOW)

    message = str(raised.value)
    assert "suite 'worklogs': 9 of 504 rows failed (1.8%), more than the 1% allowed" in message
    docs = next((settings.home / "data-docs").glob("*/index.html"))
    assert f"Data Docs: {docs}" in message and "ticket-to-invoice price --json" in message
    assert "TICKET_TO_INVOICE_MAX_FAILURE_RATE" in (raised.value.hint or "")
    # Nothing is lost: every work item is in the ledger, the bad ones quarantined with their reasons.
    items = Ledger(settings.resolved_ledger_url).work_items("2026-10")
    assert len(items) == 503
    assert set(items.loc[items["state"] == "quarantined", "source_id"]) == BAD_ROWS
    assert items.loc[items["state"] == "quarantined", "reason"].str.contains("worklogs.csv row").all()
    assert set(items["state"]) == {"extracted", "quarantined"}  # the rest wait, unpriced, for the next run


def test_a_rerun_of_a_billed_period_is_judged_against_the_whole_period(settings: Settings) -> None:
    """Once the good rows are billed, a rerun checks only the 9 bad ones: 9 of 9 used to stop it (100 %)."""
    settings = settings.model_copy(update={"max_failure_rate": 0.05})
    validate_batch(settings, extract_work(settings, "2026-10"), NOW)  # 9 of 504: 1.8 %
    ledger = Ledger(settings.resolved_ledger_url)
    items = ledger.work_items("2026-10")
    ledger.set_state(items.loc[items["state"] != "quarantined", "key"].tolist(), WorkState.POSTED, actor="test")

    rerun = extract_work(settings, "2026-10")
    assert len(rerun.worklogs) == 9  # what is left to do: the bad rows (one of them twice)
    validated = validate_batch(settings, rerun, NOW)  # 9 failing of the period's 503 work items
    assert validated.worklogs.empty
    strict = settings.model_copy(update={"max_failure_rate": 0.01})
    with pytest.raises(QualityGateError, match="suite 'worklogs': 9 of 503 rows failed"):
        validate_batch(strict, extract_work(strict, "2026-10"), NOW)


def test_the_failure_rate_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKET_TO_INVOICE_MAX_FAILURE_RATE", "0.05")
    assert Settings().max_failure_rate == 0.05
    monkeypatch.setenv("TICKET_TO_INVOICE_MAX_FAILURE_RATE", "5")
    with pytest.raises(ValueError, match="max_failure_rate"):
        Settings()


def registered(settings: Settings, usage: pd.DataFrame) -> pd.DataFrame:
    """Usage records as extract leaves them: work items in the ledger."""
    Ledger(settings.resolved_ledger_url).register(usage, actor="extract:test")
    return usage


def test_usage_records_are_validated_and_bad_ones_quarantined(settings: Settings, usage_rules: Path) -> None:
    settings = settings.model_copy(update={"rules_file": usage_rules, "max_failure_rate": 0.5})
    batch = extract_work(settings, "2026-10")
    usage = pd.concat([usage_rows(), usage_rows(key=["u:3", "u:4", "u:5"], source_id=["U-3", "U-4", "U-5"],
                                                metric=["storage_gb", "coffee", "storage_gb"],
                                                customer_id=["ACME", "ACME", "HOOLI"])], ignore_index=True)  # fmt: skip
    validated = validate_batch(settings, replace(batch, usage=registered(settings, usage)), NOW)

    assert validated.usage["source_id"].tolist() == ["U-0", "U-1", "U-2", "U-3"]
    items = Ledger(settings.resolved_ledger_url).work_items("2026-10").set_index("source_id")
    assert items.loc["U-4", "state"] == "quarantined"
    assert items.loc["U-4", "reason"] == "unknown metric (not in the rules' usage): metric='coffee' (usage.csv row 3)"
    assert items.loc["U-5", "reason"] == "unknown customer: customer_id='HOOLI' (usage.csv row 4)"
    assert items.loc["U-0", "state"] == "extracted"

    # Fixed at the source, the record passes on the next run.
    fixed = usage.assign(metric="storage_gb", customer_id="ACME")
    again = validate_batch(settings, replace(extract_work(settings, "2026-10"), usage=registered(settings, fixed)), NOW)
    assert len(again.usage) == 6
    assert (Ledger(settings.resolved_ledger_url).work_items("2026-10").set_index("source_id")
            .loc[["U-4", "U-5"], "state"] == "extracted").all()  # fmt: skip


def test_sample_export_passes_with_its_eight_bad_rows(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", input_dir=SAMPLE, rules_file=DEMO_RULES)
    validated = validate_batch(settings, extract_work(settings, "2026-10"), NOW)
    rates = {o.suite: (o.checked, o.failed_rows) for o in validated.outcomes}
    assert rates == {"customers": (4, 0), "tickets": (100, 0), "worklogs": (504, 9), "usage": (0, 0)}


def test_a_draft_failing_its_suite_is_not_posted_and_says_why(settings: Settings) -> None:
    from billing.models import ApprovalDecision
    from tasks.post import post_approved
    from tests.test_quality import draft

    ledger = Ledger(settings.resolved_ledger_url)
    good, empty = draft("ACME", [100, 250]), draft("GLOBEX", [100, -100])
    ledger.save_drafts("2026-10", [good, empty], actor="test")
    ledger.record_decisions([ApprovalDecision(draft_key=d.key, approved=True, approver="t", decided_at=NOW)
                             for d in (good, empty)])  # fmt: skip
    receipts, failures = post_approved(settings.model_copy(update={"erp": "files"}), "2026-10")

    assert [r.draft_key for r in receipts] == [good.key]
    assert [(f.draft_key, f.error) for f in failures] == [
        (empty.key, "not posted: the total is zero or negative and the draft is not a credit note: total_minor=0")
    ]
    assert [p.name for p in (settings.erp_files_dir / "2026-10").glob("*.json")] == ["ACME-default-EUR-v1.json"]


def test_only_the_most_recent_runs_data_docs_are_kept(tmp_path: Path) -> None:
    from tasks.validate import prune_data_docs

    for name in ["20261101T000000Z-2026-10-a", "20261102T000000Z-2026-10-b", "20261103T000000Z-2026-10-c"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text("<html/>")
    removed = prune_data_docs(tmp_path, keep=2)
    assert [p.name for p in removed] == ["20261101T000000Z-2026-10-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261102T000000Z-2026-10-b", "20261103T000000Z-2026-10-c"]
    assert prune_data_docs(tmp_path / "none-yet", keep=2) == []


def test_an_event_runs_clean_ticket_writes_no_data_docs_and_a_failing_one_does(settings: Settings) -> None:
    """A site per resolved ticket would cost latency and push the period runs' Data Docs out of the kept ones."""
    from tasks.extract import resolved_work

    batch = extract_work(settings, "2026-10")
    worklogs = batch.worklogs.set_index("source_id")
    clean = worklogs.drop(index=list(BAD_ROWS), errors="ignore")
    customer, ticket = clean.iloc[0]["customer_id"], clean.iloc[0]["ticket_id"]
    scoped = resolved_work(batch, customer, ticket)
    assert scoped.scope is not None and not set(scoped.worklogs["source_id"]) & BAD_ROWS

    validated = validate_batch(settings, scoped, NOW)
    assert validated.data_docs is None and len(validated.worklogs) == len(scoped.worklogs) > 0
    assert not (settings.home / "data-docs").exists()

    bad = worklogs.loc["WL-00501"]  # -30 minutes
    failing = resolved_work(batch, bad["customer_id"], bad["ticket_id"])
    assert "WL-00501" in set(failing.worklogs["source_id"])
    docs = validate_batch(settings, failing, NOW).data_docs
    assert docs is not None and docs.exists()
