"""Data quality in the whole flow under a Prefect test server, and in the command a user runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billing.ledger import Ledger
from billing.settings import Settings
from flows.ticket_to_invoice import ticket_to_invoice
from rules.quality import QualityGateError
from tests.conftest import DEMO_RULES, SAMPLE

pytestmark = [pytest.mark.integration]


@pytest.fixture
def run(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))

    def run(**parameters: Any) -> dict[str, Any]:
        return ticket_to_invoice(input_dir=str(SAMPLE), erp="files", rules=str(DEMO_RULES), **parameters)

    return run


@pytest.mark.usefixtures("prefect_server")
def test_a_run_leaves_data_docs_and_a_quality_artifact(run: Callable[..., dict[str, Any]], home: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    summary = run()
    assert summary["counts"]["quarantined"] == 8

    (index,) = (home / "data-docs").glob("*/index.html")
    assert {p.stem for p in index.parent.glob("validations/*/*/*/*.html")} == {"customers", "tickets", "worklogs"}
    with get_client(sync_client=True) as client:  # the server is shared by the session: this run's are newest
        keys = ["data-quality-202610", "data-quality-examples-202610"]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                                          sort=ArtifactSort.CREATED_DESC)  # fmt: skip
    by_key: dict[str, Any] = {}
    for artifact in artifacts:
        by_key.setdefault(artifact.key, artifact)
    assert set(by_key) == set(keys)
    table = by_key["data-quality-202610"].data
    rows = table if isinstance(table, list) else json.loads(table)
    worklogs = next(r for r in rows if r["suite"] == "worklogs" and r["expectation"] == "(rows)")
    assert (worklogs["rows_checked"], worklogs["rows_failed"]) == (504, 9)
    assert {"suite": "worklogs", "expectation": "unknown customer", "rows_checked": 504, "rows_failed": 1,
            "failure_rate": "0.2%"} in rows  # fmt: skip
    markdown = by_key["data-quality-examples-202610"].data
    assert str(index) in markdown and "unknown customer: customer_id='HOOLI' (worklogs.csv row 179)" in markdown


@pytest.mark.usefixtures("prefect_server")
def test_too_many_bad_rows_fail_the_run_and_keep_the_rows(
    run: Callable[..., dict[str, Any]], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKET_TO_INVOICE_MAX_FAILURE_RATE", "0.01")
    with pytest.raises(QualityGateError, match=r"suite 'worklogs': 9 of 504 rows failed \(1\.8%\)"):
        run()
    items = Ledger(settings.resolved_ledger_url).work_items("2026-10")
    assert len(items) == 503 and (items["state"] == "quarantined").sum() == 8
    assert not settings.erp_files_dir.exists()  # nothing priced, nothing posted

    monkeypatch.setenv("TICKET_TO_INVOICE_MAX_FAILURE_RATE", "0.2")  # the next run bills the good rows
    assert run()["counts"]["billed"] == 455


def test_the_command_explains_a_failed_quality_gate_without_a_traceback(tmp_path: Path) -> None:
    from tests.test_cli import cli

    result = cli(tmp_path / "var", "run", "--erp", "files", "--input", str(SAMPLE),
                 TICKET_TO_INVOICE_MAX_FAILURE_RATE="0.01")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "suite 'worklogs': 9 of 504 rows failed (1.8%), more than the 1% allowed" in result.stderr
    assert "data-docs" in result.stderr and "TICKET_TO_INVOICE_MAX_FAILURE_RATE" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
