"""The service as users run it: `ticket-to-invoice serve`, then deployments run through the real worker."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bench.bench_events import signed
from tests.service_fixture import BIN, FINAL, STARTED_BESIDE, WEBHOOK_SECRET, logs_of, run_deployment, wait_for

pytestmark = pytest.mark.integration


def test_service_deploys_everything_and_creates_the_automations(service: tuple[str, dict[str, str]]) -> None:
    api, _ = service
    names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={"limit": 50}).json()}
    assert {"monthly", "on-demand", "poll-source", "reconcile", "bill-on-event"} <= names
    automations = {a["name"] for a in httpx.post(f"{api}/automations/filter", json={"limit": 50}).json()}
    assert {"ticket-to-invoice: billing run failed", "ticket-to-invoice: approval timed out"} <= automations
    assert any(name.startswith("bill-on-event") for name in automations)  # its trigger, from prefect.yaml


def test_a_resolved_ticket_is_invoiced_through_the_receiver_and_a_forged_one_is_refused(
    service: tuple[str, dict[str, str]],
) -> None:
    api, env = service
    body = json.dumps({"event": "helpdesk.ticket.resolved", "source": "files", "instance": "sample-export",
                       "ticket": "T-1001", "customer": "ACME"}).encode()  # fmt: skip
    forged = signed(body, "not-the-secret")
    assert httpx.post(f"{env['RECEIVER']}/hooks/generic", content=body, headers=forged, timeout=30).status_code == 401
    genuine = signed(body, WEBHOOK_SECRET)
    answer = httpx.post(f"{env['RECEIVER']}/hooks/generic", content=body, headers=genuine, timeout=30)
    assert answer.status_code == 202, answer.text
    home = Path(env["TICKET_TO_INVOICE_HOME"])
    for _ in range(120):
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"like_": "ticket T-1001"}}},
                          timeout=30).json()  # fmt: skip
        if runs and runs[0]["state"]["type"] in FINAL:
            break
        time.sleep(1)
    assert len(runs) == 1, "one run for the event; the forged request started none"
    assert (runs[0]["name"], runs[0]["state"]["type"]) == ("ticket T-1001 · 2026-10", "COMPLETED")
    [invoice] = [json.loads(p.read_text()) for p in (home / "erp-files").glob("*/*.json")]
    assert invoice["customer"]["id"] == "ACME"  # its resolved tickets, now; its open ones wait for the month
    assert runs[0]["id"] in (home / "service-logs" / "warm.log").read_text()  # started from the warm server


def test_a_manual_approval_waits_without_a_process_then_posts_what_was_approved(
    service: tuple[str, dict[str, str]],
) -> None:
    api, env = service
    run = run_deployment(api, "monthly", {"period": "2026-10"})  # approve: manual, from prefect.yaml
    assert (run["state"]["type"], run["state"]["name"]) == ("PAUSED", "Suspended")
    assert run["name"] == "2026-10 monthly" and "period:2026-10" in run["tags"]
    time.sleep(3)
    assert processes_of_run(run["id"]) == [], "a suspended run keeps no process of the worker"
    STARTED_BESIDE.append(restart_the_worker(int(env["SERVE_PID"])))  # the approval outlives its worker
    approve_and_check_the_postings(api, env, run)


def processes_of_run(run_id: str) -> list[int]:
    """The processes running a flow run (its starter, its engine): they carry its id in their environment."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def restart_the_worker(serve_pid: int) -> subprocess.Popen[bytes]:
    """Stop the service's worker and start another like it (same command, same environment)."""
    [pid] = subprocess.run(["pgrep", "-P", str(serve_pid), "-f", "worker start"], capture_output=True,
                           text=True).stdout.split()  # fmt: skip
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    environment = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if item)
    os.kill(int(pid), 15)
    for _ in range(60):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(1)
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip


def approve_and_check_the_postings(api: str, env: dict[str, str], run: dict[str, Any]) -> None:
    approved = subprocess.run([str(BIN / "ticket-to-invoice"), "approve", "--approver", "kim", "--note", "ok"],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "resumed flow run 2026-10 monthly" in approved.stdout
    done = wait_for(api, run["id"], leave=("PAUSED",))
    assert done["state"]["type"] == "COMPLETED", done["state"]
    said = logs_of(api, run["id"], final="Completed")
    assert sum("Cached" in m for m in said) == 5  # extract, validate, price, draft, policy: not computed twice
    assert any(m.startswith("posted 4 invoices: ") for m in said)
    home = Path(env["TICKET_TO_INVOICE_HOME"])
    assert len(list((home / "erp-files").glob("*/*.json"))) == 5  # and ACME's invoice billed on resolution

    # The same period again: nothing new, nothing twice.
    again = run_deployment(api, "on-demand", {"period": "2026-10"})
    assert again["state"]["type"] == "COMPLETED"
    assert any(m.startswith("posted 0 invoices") for m in logs_of(api, again["id"], final="Completed"))


def test_the_poller_and_the_reconciliation_run_through_the_worker_too(service: tuple[str, dict[str, str]]) -> None:
    api, _ = service
    reconciled = run_deployment(api, "reconcile", {"period": "2026-10"})  # after the month was posted above
    assert (reconciled["name"], reconciled["state"]["type"]) == ("reconcile 2026-10", "COMPLETED")
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["reconcile-202610"]}}},
                           timeout=30).json()  # fmt: skip
    assert artifacts and "0 mismatches, 0 duplicates" in artifacts[0]["description"]

    polled = run_deployment(api, "poll-source", {"source": "files"})
    assert polled["state"]["type"] == "COMPLETED", polled["state"]
    assert any("export(s) ready" in m or "nothing new" in m for m in logs_of(api, polled["id"], final="Completed"))


def test_a_bad_parameter_fails_the_run_with_one_message(service: tuple[str, dict[str, str]]) -> None:
    api, env = service
    run = run_deployment(api, "on-demand", {"period": "Oct 2026"})
    assert run["state"]["type"] == "FAILED"
    assert "--period: 'Oct 2026' is not valid: a billing period is a month written YYYY-MM" in run["state"]["message"]
    alerts = Path(env["TICKET_TO_INVOICE_HOME"]) / "notifications.jsonl"
    for _ in range(60):  # the automation calls the receiver's /notifications
        if alerts.exists() and run["id"] in alerts.read_text():
            break
        time.sleep(1)
    assert alerts.exists() and run["id"] in alerts.read_text(), "no alert for the failed run"
    assert any("Oct 2026" in json.dumps(json.loads(line)) for line in alerts.read_text().splitlines())
    # Read after the alert: by then the run's process has exited and flushed every log line it had.
    said = logs_of(api, run["id"], final="Failed")
    assert any("Finished in state Failed" in m and "Oct 2026" in m for m in said)
    assert not any("Traceback" in m for m in said), "a user's mistake is one message, not a traceback"
