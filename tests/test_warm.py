"""The warm starter and server (``flows.warm``) with a stand-in engine: output, exit codes and signals pass
through, a run never outlives its starter, and without a server the starter is the ordinary engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The server as make serve runs it, but with an engine that says what it got and then does as it is told.
SERVER = """
import os, sys, time
import flows.warm as warm
warm.warm_up = lambda: None
def engine(argv):
    import atexit  # as Prefect's log and event workers flush the run's last lines at exit
    atexit.register(lambda: open("flushed-at-exit", "w").close())
    print("engine in", os.getcwd(), "for run", os.environ["PREFECT__FLOW_RUN_ID"], flush=True)
    what = os.environ["WHAT"]
    if what == "sleep":
        time.sleep(60)
    sys.exit(int(what))
warm._run_engine = engine
warm.serve(sys.argv[1])
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "warm.sock")
    process = subprocess.Popen([sys.executable, "-c", SERVER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and "warm server ready" in process.stdout.readline()
        yield path
    finally:
        process.terminate()
        process.wait(timeout=10)


def starter(socket: str | None, what: str, cwd: Path) -> subprocess.Popen[str]:
    env = os.environ | {"PREFECT__FLOW_RUN_ID": "run-1", "WHAT": what}
    env.pop("TICKET_TO_INVOICE_WARM_SOCKET", None)
    if socket:
        env["TICKET_TO_INVOICE_WARM_SOCKET"] = socket
    return subprocess.Popen([sys.executable, "-m", "flows.warm"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_the_run_gets_the_starters_output_directory_and_environment_and_its_exit_code(
    server: str, tmp_path: Path
) -> None:
    for code in (0, 3):
        done = starter(server, str(code), tmp_path)
        out, _ = done.communicate(timeout=30)
        assert done.returncode == code
        assert out == f"engine in {tmp_path} for run run-1\n"
        assert (tmp_path / "flushed-at-exit").exists(), "the run's exit hooks did not run"
        (tmp_path / "flushed-at-exit").unlink()


def test_a_cancelled_starter_passes_the_signal_on_and_ends_like_the_engine(server: str, tmp_path: Path) -> None:
    running = starter(server, "sleep", tmp_path)
    assert running.stdout is not None and "engine in" in running.stdout.readline()
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=30) == -signal.SIGTERM


def test_a_killed_starter_takes_its_run_with_it(server: str, tmp_path: Path) -> None:
    running = starter(server, "sleep", tmp_path)
    assert running.stdout is not None and "engine in" in running.stdout.readline()
    engines = [p for p in subprocess.run(["pgrep", "-f", "warm.sock"], capture_output=True, text=True).stdout.split()]
    assert len(engines) == 2  # the server and the run it forked
    running.kill()  # SIGKILL: nothing relayed; the server sees the starter go
    running.wait(timeout=10)
    for _ in range(50):
        left = subprocess.run(["pgrep", "-f", "warm.sock"], capture_output=True, text=True).stdout.split()
        if len(left) == 1:
            break
        time.sleep(0.1)
    assert len(left) == 1, "the run outlived its starter"


def test_without_a_server_the_starter_is_the_ordinary_engine(tmp_path: Path) -> None:
    done = starter(None, "0", tmp_path)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 1 and "Invalid flow run id" in err  # python -m prefect.engine's own answer
    done = starter(str(tmp_path / "nobody-listens.sock"), "0", tmp_path)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 1 and "Invalid flow run id" in err
