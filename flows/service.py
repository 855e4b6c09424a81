"""The service on one machine (``make serve``): a Prefect server with its UI, a process work pool and a worker,
every deployment of ``prefect.yaml``, the automations, and the webhook receiver, all on 127.0.0.1.

Ctrl-C (or SIGTERM) stops all of it. Each part runs in its own process group, so stopping one never leaves
another behind, and the worker gets the environment a production worker needs too:

- ``TICKET_TO_INVOICE_HOME`` (ledger, ERP files, Data Docs) and any other ``TICKET_TO_INVOICE_*`` setting;
- ``TICKET_TO_INVOICE_PROJECT``: this checkout, where ``prefect.yaml``'s pull step finds the flows;
- ``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true``: a run resumed after an approval reuses its earlier stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from billing.processes import die_with_parent
from billing.settings import PROJECT_ROOT, Settings
from flows.postgres_cluster import prefect_database

WORK_POOL = "local-process"
BIN = Path(sys.executable).parent
ALERTS_BLOCK = "ticket-to-invoice-alerts"
FAILED_RUNS = "ticket-to-invoice: billing run failed"
APPROVAL_TIMED_OUT = "ticket-to-invoice: approval timed out"


@dataclass
class Service:
    """Where the parts of a running service are."""

    api_url: str
    ui_url: str
    receiver_url: str
    home: Path
    deployments: list[str] = field(default_factory=list)
    automations: list[str] = field(default_factory=list)
    erp: str = ""
    concurrency_limits: list[str] = field(default_factory=list)
    prefect_database: str = ""

    def describe(self) -> str:
        return "\n".join([
            f"Prefect UI         {self.ui_url}",
            f"Prefect API        {self.api_url}",
            f"webhook receiver   {self.receiver_url}/hooks/<source>   (alerts: {self.receiver_url}/notifications)",
            f"work pool          {WORK_POOL} (one process worker; runs start warm)",
            f"deployments        {', '.join(self.deployments)}",
            f"automations        {', '.join(self.automations)}",
            f"ERP                {self.erp}",
            f"Prefect database   {self.prefect_database}",
            f"concurrency limits {', '.join(self.concurrency_limits)}   (postings into an ERP at once)",
            f"home               {self.home}",
            "Ctrl-C stops everything.",
        ])  # fmt: skip


def warm_socket(settings: Settings) -> Path:
    """The warm server's socket: short (a Unix socket path has at most 107 bytes), one per home."""
    digest = hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"t2i-warm-{digest}.sock"


def service_environment(settings: Settings, api_url: str) -> dict[str, str]:
    return os.environ | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        # A triggered run waits for the worker's next poll (Prefect's default: 10 s); five times a second is cheap on
        # one worker and PostgreSQL.
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "0.2"),
        "TICKET_TO_INVOICE_HOME": str(settings.home),
        "TICKET_TO_INVOICE_PROJECT": str(PROJECT_ROOT),
        "TICKET_TO_INVOICE_RECEIVER_PORT": str(settings.receiver_port),
        "GX_ANALYTICS_ENABLED": "false",
        "TICKET_TO_INVOICE_WARM_SOCKET": str(warm_socket(settings)),
    }


def described(database_url: str | None, settings: Settings) -> str:
    """The Prefect server's database, without a password."""
    if not database_url:
        return f"SQLite ({settings.prefect_home / 'prefect.db'})"
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", database_url)


def _child_setup(death_signal: Callable[[], None] | None) -> None:
    """Runs in each part before it starts. SIGINT back to its default: a child of a background shell inherits
    it ignored, and the worker turns SIGTERM into SIGINT, so it would never stop. SIGTERM when `serve` dies, even
    by kill -9 (Linux): a part left running would keep its port, and the next `serve` could not start."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if death_signal is not None:
        death_signal()


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session (a worker started in the background ignores SIGINT otherwise), stopped with
    its whole process group."""
    death_signal = die_with_parent()  # on serve's main thread, which lives as long as serve
    with log.open("ab") as out:
        child = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=lambda: _child_setup(death_signal))  # fmt: skip
    try:
        yield child
    finally:
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            if child.poll() is not None:
                break
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                break
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue


def wait_until(ready: Callable[[], bool], what: str, seconds: float, alive: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            raise RuntimeError(f"{what} stopped (exit {alive.returncode}); its log: {log}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not start within {seconds:.0f} s; its log: {log}")


def warm_pool_template(path: Path) -> Path:
    """The process pool's job template with the warm starter as its command (``flows.warm``): a run starts
    from the warm server when it is there, as ``python -m prefect.engine`` when it is not."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = f"{sys.executable} -m flows.warm"
    path.write_text(json.dumps(template, indent=2))
    return path


def deploy(env: dict[str, str], log: Path) -> None:
    """Every deployment in prefect.yaml, to the work pool (made, or its job template updated, first)."""
    template = warm_pool_template(log.parent / "work-pool-template.json")
    with log.open("ab") as out:
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", WORK_POOL, "--type", "process",
                        "--base-job-template", str(template), "--overwrite"], env=env, cwd=PROJECT_ROOT, stdout=out,
                       stderr=subprocess.STDOUT, timeout=300)  # fmt: skip
        done = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env=env, cwd=PROJECT_ROOT,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed; its log: {log}")


def create_automations(settings: Settings, receiver_url: str) -> list[str]:
    """Alert on Failed or Crashed billing runs (a webhook to the receiver's /notifications, which a test or a
    chat relay can read), and end a run that waited too long for an approval as Cancelled "Approval timed out"
    (its drafts stay pending). Made again on every start: the same names replace the old ones."""
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import CallWebhook, ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    alerts = Webhook(url=f"{receiver_url}/notifications", method="POST")
    alerts.save(ALERTS_BLOCK, overwrite=True)
    billing_flow = ResourceSpecification({"prefect.resource.role": "flow",
                                          "prefect.resource.name": ["ticket-to-invoice", "bill-on-event"]})  # fmt: skip
    wanted = [
        Automation(
            name=FAILED_RUNS,
            description="Tell someone when a billing run ends Failed or Crashed (a refused posting, an outage).",
            trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                                 match_related=billing_flow, posture=Posture.Reactive, threshold=1),
            actions=[CallWebhook(block_document_id=alerts._block_document_id, payload=(
                '{"alert": "billing run {{ flow_run.name }} ended {{ flow_run.state.name }}", '
                '"flow_run_id": "{{ flow_run.id }}", "message": {{ flow_run.state.message | tojson }}}'))],
        ),
        Automation(
            name=APPROVAL_TIMED_OUT,
            description="A billing run waiting for a human longer than TICKET_TO_INVOICE_APPROVAL_TIMEOUT_SECONDS "
            "ends Cancelled; its drafts stay pending for the next run or `ticket-to-invoice approve`.",
            trigger=EventTrigger(after={"prefect.flow-run.Suspended"}, expect={"prefect.flow-run.*"},
                                 match_related=billing_flow, for_each={"prefect.resource.id"},
                                 posture=Posture.Proactive, threshold=1,
                                 within=settings.approval_timeout_seconds),
            actions=[ChangeFlowRunState(state=StateType.CANCELLED, name="Approval timed out", message=(
                "nobody decided within the approval timeout: the drafts stay pending approval (decide them in a "
                "later run or with `ticket-to-invoice approve --draft KEY`)"))],
        ),
    ]
    for automation in wanted:
        with contextlib.suppress(ValueError):  # not made yet
            Automation.read(name=automation.name).delete()
        automation.create()
    return [a.name for a in wanted]


def create_erp_limit(settings: Settings) -> str:
    """The global concurrency limit of the service's ERP (``erp_limit_name``) that postings hold a slot of,
    with ``TICKET_TO_INVOICE_ERP_CONCURRENCY_SLOTS`` slots: made before the first run so the UI shows it, and set
    again on every start, as the automations are (the setting is what the service runs with)."""
    from tasks.post import ensure_erp_limit, erp_limit_name

    name = erp_limit_name(settings)
    ensure_erp_limit(name, settings.erp_concurrency_slots, set_slots=True)
    return f"{name}: {settings.erp_concurrency_slots}"


@contextmanager
def running_service(settings: Settings, port: int = 4200, say: Callable[[str], None] = print) -> Iterator[Service]:
    """Start every part, yield where they are, stop them all on exit."""
    logs = settings.home / "service-logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = service_environment(settings, api_url) | {"PREFECT_UI_API_URL": api_url}
    os.environ["PREFECT_API_URL"] = api_url  # before this process imports prefect: its settings are read once
    receiver_url = f"http://127.0.0.1:{settings.receiver_port}"
    prefect = str(BIN / "prefect")
    with ExitStack() as stack:
        if database := stack.enter_context(prefect_database(settings, say)):
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
        say(f"starting the Prefect server on 127.0.0.1:{port} (logs under {logs})")
        server = stack.enter_context(process([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                                              str(port)], env, logs / "server.log"))  # fmt: skip
        wait_until(lambda: httpx.get(f"{api_url}/health", timeout=2).status_code == 200, "the Prefect server", 240,
                   server, logs / "server.log")  # fmt: skip
        say("starting the webhook receiver")
        receiver = stack.enter_context(process([sys.executable, "-m", "flows.webhook_receiver"], env,
                                               logs / "receiver.log"))  # fmt: skip
        wait_until(lambda: httpx.get(f"{receiver_url}/healthz", timeout=2).status_code == 200, "the webhook receiver",
                   120, receiver, logs / "receiver.log")  # fmt: skip
        say("deploying every deployment of prefect.yaml")
        deploy(env, logs / "deploy.log")
        automations = create_automations(settings, receiver_url)
        if settings.erp == "tryton" and not settings.tryton_url:  # one Tryton for every run, not one per run
            from connectors.tryton_embedded import EmbeddedTryton

            say("starting the embedded Tryton (set up under the home on first use: about a minute)")
            tryton = stack.enter_context(EmbeddedTryton(settings.home, progress=say))
            env |= {"TICKET_TO_INVOICE_TRYTON_URL": tryton.url, "TICKET_TO_INVOICE_TRYTON_DATABASE": tryton.database,
                    "TICKET_TO_INVOICE_TRYTON_USER": tryton.user, "TICKET_TO_INVOICE_TRYTON_PASSWORD": tryton.password}
        erp = env.get("TICKET_TO_INVOICE_TRYTON_URL", "") if settings.erp == "tryton" else str(settings.erp_files_dir)
        posting_into = settings.model_copy(update={"tryton_url": env.get("TICKET_TO_INVOICE_TRYTON_URL"),
                                                   "tryton_database": env.get("TICKET_TO_INVOICE_TRYTON_DATABASE",
                                                                              settings.tryton_database)})  # fmt: skip
        concurrency_limits = [create_erp_limit(posting_into)]
        say("starting the warm server (flows, pandas and Great Expectations loaded once, a fork per run)")
        socket_path = warm_socket(settings)
        socket_path.unlink(missing_ok=True)  # one left by a service that was killed
        warm = stack.enter_context(process([sys.executable, "-m", "flows.warm", "server", "--socket",
                                            str(socket_path)], env, logs / "warm.log"))  # fmt: skip
        wait_until(socket_path.exists, "the warm server", 180, warm, logs / "warm.log")
        say("starting a process worker")
        stack.enter_context(process([prefect, "worker", "start", "--pool", WORK_POOL, "--name", "local-worker"], env,
                                    logs / "worker.log"))  # fmt: skip
        deployments = sorted(d["name"] for d in httpx.post(f"{api_url}/deployments/filter", json={"limit": 200},
                                                           timeout=30).json())  # fmt: skip
        yield Service(api_url=api_url, ui_url=f"http://127.0.0.1:{port}", receiver_url=receiver_url,
                      home=settings.home, deployments=deployments, automations=automations,
                      erp=f"{settings.erp} ({erp or 'TICKET_TO_INVOICE_TRYTON_URL'})",
                      concurrency_limits=concurrency_limits,
                      prefect_database=described(env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL"),
                                                 settings))  # fmt: skip
