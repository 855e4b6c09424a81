"""The service as users run it (`ticket-to-invoice serve`), for tests that drive it through its API or its UI.

``running_service`` starts it on free ports in a home of its own; the ``service`` fixture in conftest.py wraps
it (one per test module: never two at a time on a small machine). The helpers run deployments and read runs
the way the UI does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.processes import free_port
from billing.settings import EXAMPLE_RULES, Settings
from flows.postgres_cluster import cluster_directory

BIN = Path(sys.executable).parent
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED", "PAUSED")
WEBHOOK_SECRET = "webhook-secret"  # the generic source's, for signed deliveries to the receiver
STARTED_BESIDE: list[subprocess.Popen[bytes]] = []  # processes a test started beside the service (a new worker)



@contextmanager
def running_service(base: Path, settings: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Start `ticket-to-invoice serve` with TICKET_TO_INVOICE_HOME=<base>/home, the file-export ERP, the demo
    rules with ACME billed on resolution (the others monthly) and a generic webhook secret, unless ``settings``
    (``TICKET_TO_INVOICE_*`` variables) say otherwise; yield the API URL (the UI is the same URL without
    ``/api``) and the environment that reaches it, plus ``RECEIVER`` (its URL) and ``SERVE_PID``. Ctrl-C on
    exit."""
    home = base / "home"
    port, receiver = free_port(), free_port()
    rules = base / "rules.yaml"
    rules.write_text(f"extends: {EXAMPLE_RULES}\nname: service\ncustomers:\n  ACME: {{bill_on: resolution}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TICKET_TO_INVOICE_"))}
    env |= {"TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_RECEIVER_PORT": str(receiver),
            "TICKET_TO_INVOICE_ERP": "files", "TICKET_TO_INVOICE_RULES_FILE": str(rules),
            "TICKET_TO_INVOICE_WEBHOOK_SECRETS": json.dumps({"generic": WEBHOOK_SECRET})}  # fmt: skip
    env |= settings or {}
    log = base / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([str(BIN / "ticket-to-invoice"), "serve", "--port", str(port)], env=env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        for _ in range(600):
            if "Ctrl-C stops everything" in log.read_text(errors="replace"):
                break
            assert serve.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the service did not start in 10 minutes: " + log.read_text(errors="replace")[-3000:])
        yield f"http://127.0.0.1:{port}/api", env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                                                     "RECEIVER": f"http://127.0.0.1:{receiver}",
                                                     "SERVE_PID": str(serve.pid)}  # fmt: skip
    finally:
        os.killpg(serve.pid, 2)  # Ctrl-C
        serve.wait(timeout=120)
        while STARTED_BESIDE:
            started = STARTED_BESIDE.pop()
            started.terminate()
            try:
                started.wait(timeout=30)
            except subprocess.TimeoutExpired:  # its server is gone: it may be retrying forever
                started.kill()
                started.wait(timeout=30)
        # root's clusters live outside the home (flows/postgres_cluster.py): a test's goes with its home
        shutil.rmtree(cluster_directory(Settings(home=home)), ignore_errors=True)
    assert "stopped" in log.read_text(errors="replace")


def run_deployment(api: str, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Create a run of a deployment as the UI's "Run" does, and wait for it to end or wait for a human."""
    deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={"limit": 50}).json()}
    answer = httpx.post(f"{api}/deployments/{deployments[name]['id']}/create_flow_run",
                        json={"parameters": parameters}, timeout=30)  # fmt: skip
    assert answer.is_success, f"create_flow_run of {name}: {answer.status_code} {answer.text[:2000]}"
    return wait_for(api, answer.json()["id"])


def wait_for(api: str, run_id: str, seconds: int = 600, leave: tuple[str, ...] = ()) -> dict[str, Any]:
    """The run once its state is final (or PAUSED) and not in ``leave``. A slow answer is asked again: Prefect's
    server on SQLite can stall for up to its 60 s busy timeout when the machine is loaded."""
    deadline, said = time.monotonic() + seconds, "no answer"
    while time.monotonic() < deadline:
        try:
            run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        except httpx.TransportError as exc:
            said = f"no answer from the API: {exc!r}"
            continue
        said = str(run["state"])
        if run["state"]["type"] in FINAL and run["state"]["type"] not in leave:
            return run  # type: ignore[no-any-return]
        time.sleep(2)
    pytest.fail(f"flow run {run_id} did not end in {seconds} s: {said}")


def logs_of(api: str, run_id: str, final: str | None = None) -> list[str]:
    """The run's log messages; with ``final``, once they have all arrived (the flow's last line is "Finished in
    state <final>...", which a resumed run also wrote when it was suspended, hence the state's name)."""
    for _ in range(60):
        logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
                          timeout=30).json()  # fmt: skip
        said = [entry["message"] for entry in logs]
        if final is None or any(e["message"].startswith(f"Finished in state {final}") and e["task_run_id"] is None
                                for e in logs):  # fmt: skip
            return said
        time.sleep(1)
    return said


def logs_until(api: str, run_id: str, beginnings: Sequence[str], seconds: float = 60) -> list[str]:
    """The run's log messages once one begins with each of ``beginnings`` (a finished run's process may still
    be shipping its last lines), or as they are after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        logs = logs_of(api, run_id)
        if all(any(m.startswith(b) for m in logs) for b in beginnings) or time.monotonic() > deadline:
            return logs
        time.sleep(1)
