"""No orphans: the servers a run starts (the embedded trytond, Prefect's temporary API server) stop when the run
is killed with ``kill -9``, and the next run on the same home works.

The first tests check :mod:`billing.processes` with ``sleep`` children (a second each); the last one kills real
``ticket-to-invoice run`` processes: once during the embedded Tryton's first set-up, once with both servers
up, then lets a third run finish and post.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from billing.processes import alive, command_line, descendants, reap_orphans, record_child, start_time

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "ticket-to-invoice")
T = TypeVar("T")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TICKET_TO_INVOICE_"))}
    return env | {"PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)} | extra


def _wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def _gone(pids: list[int], timeout: float = 10.0) -> float:
    """Seconds until none of ``pids`` runs any more (zombies count as gone: only their entry is left)."""
    started = time.monotonic()
    _wait_for(lambda: not [pid for pid in pids if alive(pid)], timeout, f"processes {pids} still running")
    return time.monotonic() - started


class Parent:
    """A Python process that starts a child as ``code`` says and prints the child's pid."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=_env(**(env or {})), cwd=ROOT
        )
        assert self.process.stdout is not None
        printed = []
        while not (line := self.process.stdout.readline()).strip().isdigit():  # anything else is a log line
            assert line, f"the parent ended without a pid: {printed}"
            printed.append(line)
        self.child = int(line)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> Parent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()
        if alive(self.child):
            os.kill(self.child, signal.SIGKILL)


FROM_A_THREAD = """
import subprocess, sys, threading, time
from billing.processes import die_with_parent, popen_tied
box = {}
def start():
    if sys.argv[1] == "tied":
        box["child"] = popen_tied(["sleep", "600"])
    else:  # the death signal set directly, in the thread that forks
        box["child"] = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
thread = threading.Thread(target=start)
thread.start()
thread.join()  # the thread that forked the child is gone now
print(box["child"].pid, flush=True)
time.sleep(600)
"""


def test_the_death_signal_follows_the_thread_that_forked() -> None:
    """Why popen_tied does not fork on the caller's thread: the kernel's "parent" is the forking *thread*, so a
    child forked on a short-lived thread (a task's, a log shipper's) gets its death signal when that thread ends,
    while the process still needs it."""
    with Parent(FROM_A_THREAD, "direct") as parent:
        _gone([parent.child], timeout=5)
        assert parent.process.poll() is None


def test_a_tied_child_lives_as_long_as_its_process_and_no_longer() -> None:
    with Parent(FROM_A_THREAD, "tied") as parent:
        time.sleep(1.0)
        assert alive(parent.child), "the child died with the short-lived thread that asked for it"
        parent.kill()  # SIGKILL: no Python runs any more in the parent
        print(f"child gone {_gone([parent.child], timeout=5):.2f} s after the kill")


UNTIED_AND_RECORDED = """
import subprocess, sys, time
from pathlib import Path
from billing.processes import record_child
child = subprocess.Popen(["sleep", "600"], start_new_session=True)  # no death signal: an older version's server
record_child(Path(sys.argv[1]), child, "sleep")
print(child.pid, flush=True)
time.sleep(600)
"""


def test_reap_orphans_stops_a_recorded_child_only_once_its_starter_is_gone(tmp_path: Path) -> None:
    record = tmp_path / "sleep.pid.json"
    with Parent(UNTIED_AND_RECORDED, str(record)) as parent:
        assert json.loads(record.read_text())["parent"] == parent.process.pid
        assert reap_orphans([record]) == []  # its starter runs: someone's server, left alone
        assert alive(parent.child) and record.exists()
        parent.kill()
        time.sleep(0.5)
        assert alive(parent.child), "without a death signal the child outlives its starter"
        assert reap_orphans([record]) == [parent.child]
        assert not alive(parent.child) and not record.exists()


def test_reap_orphans_never_kills_a_reused_pid(tmp_path: Path) -> None:
    record = tmp_path / "reused.pid.json"
    with subprocess.Popen(["sleep", "600"]) as bystander:
        started = start_time(bystander.pid)
        assert started is not None
        # a record naming the bystander's pid, but another start time: the recorded child is gone, the pid reused
        record.write_text(json.dumps({"pid": bystander.pid, "started": started - 1, "parent": 2**22 + 1}))
        assert reap_orphans([record]) == []
        assert alive(bystander.pid) and not record.exists()
        record_child(record, bystander)  # the same child, recorded by a live parent (this test): left alone too
        assert reap_orphans([record]) == [] and alive(bystander.pid)
        bystander.kill()


PREFECT_SERVER_FROM_A_THREAD = """
import sys, threading, time
from pathlib import Path
from billing.processes import tie_prefect_server_to_this_process
tie_prefect_server_to_this_process(Path(sys.argv[1]))
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
thread = threading.Thread(target=server.start)  # as Prefect may: from whichever thread first needs the API
thread.start()
thread.join()
print(server.server_process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.integration
def test_prefect_temporary_server_lives_while_its_process_does_and_dies_with_it(tmp_path: Path) -> None:
    """The hook for Prefect's SubprocessASGIServer, started from a short-lived thread: the server outlives the
    thread, dies with the process, and its record lets the next run stop one that had no death signal."""
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    with Parent(PREFECT_SERVER_FROM_A_THREAD, str(tmp_path / "prefect"), env=env) as parent:
        server = parent.child
        port = int(command_line(server)[command_line(server).index("--port") + 1])
        time.sleep(1.0)
        assert alive(server) and _listening(port), "the server died with the thread that started it"
        assert [p.name for p in (tmp_path / "prefect").glob("ephemeral-server-*.json")] == [
            f"ephemeral-server-{server}.json"
        ]
        parent.kill()
        print(f"Prefect server gone {_gone([server]):.2f} s after the kill")
        assert not _listening(port)


# -- real runs ------------------------------------------------------------------------------------------------------


def _servers(cli: int) -> dict[str, int]:
    """The run's trytond-admin, trytond and Prefect server among its descendants, by kind."""
    found: dict[str, int] = {}
    for pid in descendants(cli):
        words = " ".join(command_line(pid))
        if "trytond-admin" in words:
            found["trytond-admin"] = pid
        elif re.search(r"/trytond\b", words):
            found["trytond"] = pid
        elif "uvicorn" in words and "prefect.server.api.server" in words:
            found["prefect"] = pid
    return found


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _ports(servers: dict[str, int], home: Path) -> dict[str, int]:
    ports = {}
    if "prefect" in servers:
        words = command_line(servers["prefect"])
        ports["prefect"] = int(words[words.index("--port") + 1])
    if "trytond" in servers:
        conf = (home / "tryton" / "trytond.conf").read_text()
        ports["trytond"] = int(re.search(r"listen = 127\.0\.0\.1:(\d+)", conf).group(1))  # type: ignore[union-attr]
    return ports


def _ours(home: Path) -> list[int]:
    """Every process on the machine that names this home in its arguments (trytond and trytond-admin do)."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(home) in " ".join(command_line(int(p.name)))
    ]


class Run:
    """``ticket-to-invoice run --json`` on a home, in the background, its output in files."""

    def __init__(self, home: Path, name: str) -> None:
        self.out, self.err = home.parent / f"{name}.out", home.parent / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [CLI, "run", "--json"], stdout=out, stderr=err, env=_env(TICKET_TO_INVOICE_HOME=str(home)), cwd=ROOT
            )
        self.started = time.monotonic()

    def log(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def servers_when(self, ready: Callable[[dict[str, int]], bool], timeout: float) -> dict[str, int]:
        def check() -> dict[str, int] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended ({self.process.returncode}) too early:\n{self.log()[-3000:]}")
            servers = _servers(self.process.pid)
            return servers if ready(servers) else None

        return _wait_for(check, timeout, "the run's servers", interval=0.1)

    def kill_9(self, servers: dict[str, int], home: Path) -> dict[str, Any]:
        ports = _ports(servers, home)
        assert all(_listening(port) for port in ports.values()), ports
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        seconds = _gone(list(servers.values()))
        assert not [name for name, port in ports.items() if _listening(port)], ports
        assert _ours(home) == []
        return {"after": time.monotonic() - self.started, "servers_gone_in": seconds, "ports": ports}


@pytest.mark.integration
def test_kill_9_of_a_run_leaves_no_server_and_the_next_run_posts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    timings: dict[str, Any] = {}

    # 1. killed during the embedded Tryton's first set-up (trytond-admin installing modules)
    first = Run(home, "first")
    servers = first.servers_when(lambda s: {"prefect", "trytond-admin"} <= s.keys(), timeout=600)
    time.sleep(2.0)  # well inside the ~30 s of trytond-admin: a half-made database
    timings["killed in set-up"] = first.kill_9(servers, home)
    assert not (home / "tryton" / "ready.json").exists()

    # 2. the next run does not trust that database: it makes a new one; killed once trytond serves it
    second = Run(home, "second")
    ready = home / "tryton" / "ready.json"  # written once the set-up is complete, while trytond still serves
    servers = second.servers_when(lambda s: {"prefect", "trytond"} <= s.keys() and ready.exists(), timeout=900)
    timings["killed while serving"] = second.kill_9(servers, home)
    assert "creating a new database" in second.log()

    # 3. a run to the end on the same home: the database is reused, every invoice is posted exactly once
    started = time.monotonic()
    third = subprocess.run(
        [CLI, "run", "--json"], env=_env(TICKET_TO_INVOICE_HOME=str(home)), cwd=ROOT,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    timings["third run"] = round(time.monotonic() - started, 1)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "reusing the database" in third.stderr
    summary = json.loads(third.stdout)
    invoices = summary["invoices"]
    assert invoices and all(inv["status"] == "posted" and inv["erp_number"] for inv in invoices), invoices
    assert len({inv["erp_number"] for inv in invoices}) == len(invoices)
    assert not summary["posting_failures"]
    assert _ours(home) == []
    print(json.dumps(timings, default=str))
