"""The command as a user runs it: a real process, its own Prefect home, and a real Prefect server over it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from billing.processes import free_port
from tests.conftest import SAMPLE

BIN = Path(sys.executable).parent
CLI = str(BIN / "ticket-to-invoice")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TICKET_TO_INVOICE_"))}
    return env | {"TICKET_TO_INVOICE_HOME": str(home), "COLUMNS": "200"} | extra


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=cli_env(home, **env), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """`ticket-to-invoice run --json` twice, as `make run` does it (defaults only: the embedded Tryton)."""
    home = tmp_path_factory.mktemp("cli") / "var"
    first, second = cli(home, "run", "--json"), cli(home, "run", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    yield home, json.loads(first.stdout), json.loads(second.stdout)


@pytest.mark.integration
def test_run_json_is_the_documented_object(demo_home: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    _, first, second = demo_home
    assert {"invoices", "quarantined", "counts", "work_items_total", "new_postings"} <= first.keys()
    assert set(first["counts"]) >= {"billed", "non_billable", "quarantined", "pending_approval"}
    assert sum(first["counts"].values()) == first["work_items_total"]
    for invoice in first["invoices"]:  # posted into the embedded Tryton, which numbered them
        assert {"customer", "period", "currency", "total_minor", "erp_number", "lines"} <= invoice.keys()
        assert invoice["erp_number"].startswith("INV2026-")
        assert invoice["total_minor"] == sum(line["amount_minor"] for line in invoice["lines"])
    reconciled = {i["key"]: i for i in first["reconcile"]["invoices"]}
    assert first["reconcile"]["mismatches"] == [] and first["reconcile"]["duplicates"] == []
    for invoice in first["invoices"]:  # Tryton's own untaxed, tax and total equal ours to the cent
        erp = reconciled[invoice["key"]]
        assert (erp["erp_total_minor"], erp["erp_tax_minor"], erp["erp_gross_minor"]) == (
            invoice["total_minor"],
            invoice["tax_minor"],
            invoice["gross_minor"],
        )
    assert next(i for i in first["invoices"] if i["customer"] == "ACME")["tax_minor"] > 0  # German VAT
    assert {i["currency"] for i in first["invoices"]} == {"EUR", "USD"}
    assert first["new_postings"] == 4 and second["new_postings"] == 0
    assert all(q["source_id"] and q["reason"] for q in first["quarantined"])


@pytest.fixture(scope="module")
def ui(demo_home: tuple[Path, dict[str, Any], dict[str, Any]]) -> Iterator[tuple[str, dict[str, str]]]:
    """`make ui`: a Prefect server over the Prefect home the CLI runs were kept in."""
    home = demo_home[0]
    port = free_port()
    env = cli_env(home, PREFECT_HOME=str(home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "prefect server exited"
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not start in 120 s")
        yield url, env | {"PREFECT_API_URL": f"{url}/api"}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.integration
def test_reconcile_command_reads_tryton_back(demo_home: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    home, first, _ = demo_home
    result = cli(home, "reconcile", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["mismatches"] == [] and report["duplicates"] == [] and report["unbilled"] == []
    assert sorted(i["erp_number"] for i in report["invoices"]) == sorted(i["erp_number"] for i in first["invoices"])
    assert all(i["total_minor"] == i["erp_total_minor"] and i["status"] == "ok" for i in report["invoices"])


@pytest.mark.integration
def test_the_ui_shows_the_runs_their_tasks_and_the_invoice_artifact(ui: tuple[str, dict[str, str]]) -> None:
    url, _ = ui
    runs = httpx.post(f"{url}/api/flow_runs/filter", json={"limit": 50}).json()
    assert len(runs) == 3 and {r["state_type"] for r in runs} == {"COMPLETED"}  # run, run, reconcile
    flows = {httpx.get(f"{url}/api/flows/{r['flow_id']}").json()["name"] for r in runs}
    assert flows == {"ticket-to-invoice", "reconcile"}
    tasks = httpx.post(f"{url}/api/task_runs/filter", json={"limit": 200}).json()
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} >= {
        "extract",
        "validate",
        "price",
        "draft",
        "post",
        "reconcile",
    }
    assert {t["state_type"] for t in tasks} == {"COMPLETED"}
    artifacts = httpx.post(f"{url}/api/artifacts/filter", json={"limit": 50}).json()
    assert {"invoices-202610", "run-summary-202610"} <= {a["key"] for a in artifacts}
    table = next(a for a in artifacts if a["key"] == "invoices-202610" and a["type"] == "table")
    assert "Acme Logistics GmbH" in json.dumps(table["data"])
    assert "<html" in httpx.get(url).text.lower()  # the UI itself is served


@pytest.mark.integration
def test_prefect_yaml_deploys_monthly_and_on_demand(ui: tuple[str, dict[str, str]]) -> None:
    url, env = ui
    root = Path(__file__).parents[1]
    prefect = str(BIN / "prefect")
    env = env | {"PREFECT_CLI_PROMPT": "false"}
    created = subprocess.run(
        [prefect, "work-pool", "create", "local-process", "--type", "process"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    deployments = {d["name"]: d for d in httpx.post(f"{url}/api/deployments/filter", json={}).json()}
    assert {"monthly", "on-demand", "poll-source", "reconcile"} <= set(deployments)
    assert deployments["monthly"]["schedules"][0]["schedule"]["cron"] == "0 6 1 * *"
    assert deployments["monthly"]["parameters"] == {"approve": "manual"}
    assert deployments["on-demand"]["schedules"] == []


def test_bad_input_is_one_clear_message_without_a_traceback(tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    (export / "tickets.csv").write_bytes(b"ticket_id,customer_id\nT-1,ACME\nT-2,GLOB\xe9X\n")
    result = cli(tmp_path / "var", "run", "--input", str(export))
    assert result.returncode == 2
    assert "tickets.csv, line 3: not UTF-8 text (byte 0xe9)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "name: x\nservices:\n  remote: {name: Remote, rates: {EUR: '95.00'}}\ncustomer_rates:\n"
        "  - {customer: ACME, service: remot, rate: '1.00'}\n"
    )
    result = cli(tmp_path / "var", "run", "--rules", str(rules))
    assert result.returncode == 2
    assert "rules.yaml" in result.stderr and "unknown service 'remot'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "ledger.db").exists()  # nothing was started, nothing written


def test_help_teaches_with_examples() -> None:
    result = subprocess.run([CLI, "run", "--help"], capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    assert result.returncode == 0
    assert "ticket-to-invoice run --period 2026-10" in result.stdout
    assert "--approve" in result.stdout and "--json" in result.stdout


def test_price_previews_without_writing_anything(tmp_path: Path) -> None:
    home = tmp_path / "var"
    result = cli(home, "price", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    preview = json.loads(result.stdout)
    assert not home.exists()  # no ledger, no ERP, no Prefect home
    assert {"source_id", "customer", "quantity_raw", "quantity_billed", "unit_price_minor", "amount_minor",
            "currency", "explanation"} <= preview["lines"][0].keys()  # fmt: skip
    assert len(preview["lines"]) == 455 and len(preview["non_billable"]) == 40 and len(preview["quarantined"]) == 8
    for draft in preview["drafts"]:
        lines = [li for li in preview["lines"] if li["customer"] == draft["customer"]]
        assert draft["total_minor"] == sum(li["amount_minor"] for li in lines)
    first = preview["lines"][0]
    assert first["explanation"].startswith(f"{first['quantity_billed']} h × ")


def test_bad_input_after_a_good_run_leaves_the_ledger_as_it_was(tmp_path: Path) -> None:
    from billing.ledger import Ledger

    export, home = tmp_path / "export", tmp_path / "var"
    shutil.copytree(SAMPLE, export)
    assert cli(home, "run", "--input", str(export), "--erp", "files", "--json").returncode == 0
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")

    def snapshot() -> tuple[Any, ...]:
        items = ledger.work_items().sort_values("key").reset_index(drop=True)
        return items, [d.model_dump() for d in ledger.drafts()], len(ledger.audit_log())

    before = snapshot()
    good_worklogs = (export / "worklogs.csv").read_bytes()
    breakages = [
        ("worklogs.csv", b"worklog_id,customer_id\nWL-1,ACME\n"),  # required columns missing
        ("tickets.csv", b""),  # an empty file
        ("customers.json", b'[{"customer_id": "ACME", "name": "Acme", '),  # malformed JSON
        # a row with a value beyond the header, at the end: found by the run's extract, not the glance before it
        ("worklogs.csv", good_worklogs + b"WL-99999,T-1001,ACME,ann,remote_support,2026-10-05T10:00:00Z,30,true,n,X\n"),
    ]
    for name, content in breakages:
        original = (export / name).read_bytes()
        (export / name).write_bytes(content)
        result = cli(home, "run", "--input", str(export), "--erp", "files")
        (export / name).write_bytes(original)
        assert result.returncode == 2 and name in result.stderr and "Traceback" not in result.stderr
        items, drafts, audit = snapshot()  # nothing already in the ledger lost or changed
        pd.testing.assert_frame_equal(items, before[0])
        assert (drafts, audit) == before[1:]


def test_a_bad_option_or_setting_is_named_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "var"
    cases = [
        (("run", "--period", "2026-13"), {}, "--period: '2026-13' is not valid: a billing period is a month"),
        (("price", "--period", "Oct 2026"), {}, "--period: 'Oct 2026' is not valid"),
        (("run",), {"TICKET_TO_INVOICE_MAX_FAILURE_RATE": "3"}, "TICKET_TO_INVOICE_MAX_FAILURE_RATE (or"),
        (("run",), {"TICKET_TO_INVOICE_PERIOD": "2026-1"}, "TICKET_TO_INVOICE_PERIOD (or 'period' in"),
    ]
    for args, env, says in cases:
        result = cli(home, *args, **env)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert says in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert not home.exists()


def test_run_json_lines_on_request(tmp_path: Path) -> None:
    """`--no-lines` answers with invoices and counts only (a large month's answer stays kilobytes); `--lines`
    adds every invoice's lines, which sum to its total."""
    home = tmp_path / "var"
    without = cli(home, "run", "--erp", "files", "--json", "--no-lines")
    assert without.returncode == 0, without.stderr[-3000:]
    short = json.loads(without.stdout)
    assert short["invoices"] and all("lines" not in invoice for invoice in short["invoices"])
    assert all(invoice["line_count"] > 0 for invoice in short["invoices"])
    with_lines = cli(home, "run", "--erp", "files", "--json", "--lines")
    assert with_lines.returncode == 0, with_lines.stderr[-3000:]
    full = json.loads(with_lines.stdout)
    assert [i["key"] for i in full["invoices"]] == [i["key"] for i in short["invoices"]]
    for invoice in full["invoices"]:
        assert len(invoice["lines"]) == invoice["line_count"]
        assert sum(line["amount_minor"] for line in invoice["lines"]) == invoice["total_minor"]
    assert full["counts"] == short["counts"] and full["new_postings"] == 0
