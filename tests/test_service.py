"""The service as users run it: `ticket-to-invoice serve`, then deployments run through the real worker."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.service_fixture import BIN, logs_of, run_deployment, wait_for

pytestmark = pytest.mark.integration


def test_service_deploys_everything_and_creates_the_automations(service: tuple[str, dict[str, str]]) -> None:
    api, _ = service
    names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={"limit": 50}).json()}
    assert {"monthly", "on-demand", "poll-source", "reconcile"} <= names
    automations = {a["name"] for a in httpx.post(f"{api}/automations/filter", json={"limit": 50}).json()}
    assert {"ticket-to-invoice: billing run failed", "ticket-to-invoice: approval timed out"} <= automations


def test_a_manual_approval_waits_without_a_process_then_posts_what_was_approved(
    service: tuple[str, dict[str, str]],
) -> None:
    api, env = service
    run = run_deployment(api, "monthly", {"period": "2026-10"})  # approve: manual, from prefect.yaml
    assert (run["state"]["type"], run["state"]["name"]) == ("PAUSED", "Suspended")
    assert run["name"] == "2026-10 monthly" and "period:2026-10" in run["tags"]
    time.sleep(3)
    engines = subprocess.run(["pgrep", "-f", "prefect.engine"], capture_output=True, text=True).stdout.split()
    assert engines == [], "a suspended run keeps no process of the worker"

    approved = subprocess.run([str(BIN / "ticket-to-invoice"), "approve", "--approver", "kim", "--note", "ok"],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "resumed flow run 2026-10 monthly" in approved.stdout
    done = wait_for(api, run["id"], leave=("PAUSED",))
    assert done["state"]["type"] == "COMPLETED", done["state"]
    said = logs_of(api, run["id"])
    assert sum("Cached" in m for m in said) == 5  # extract, validate, price, draft, policy: not computed twice
    assert any(m.startswith("posted 4 invoices: ") for m in said)
    home = Path(env["TICKET_TO_INVOICE_HOME"])
    assert len(list((home / "erp-files").glob("*/*.json"))) == 4

    # The same period again: nothing new, nothing twice.
    again = run_deployment(api, "on-demand", {"period": "2026-10"})
    assert again["state"]["type"] == "COMPLETED"
    assert any(m.startswith("posted 0 invoices") for m in logs_of(api, again["id"]))


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
    said = logs_of(api, run["id"])
    assert any("Finished in state Failed" in m and "Oct 2026" in m for m in said)
    assert not any("Traceback" in m for m in said), "a user's mistake is one message, not a traceback"
