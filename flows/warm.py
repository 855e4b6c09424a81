"""A warm worker: flow runs start in milliseconds from a process that has already imported the flows, pandas
and Great Expectations and built the GX context, instead of paying those seconds on every run.

Two halves, both started for you by ``make serve``:

- **the warm server** (``python -m flows.warm server --socket PATH``) imports and warms everything once, then
  listens on a Unix socket. For each request it forks a child which becomes the flow run's engine
  (``python -m prefect.engine``) with the request's environment, working directory and output;
- **the starter** (``python -m flows.warm``), the work pool's command instead of ``python -m prefect.engine``.
  It imports only the standard library, hands its environment and its stdout/stderr to the server, relays
  signals (a cancellation) to the child and exits with the child's code. Without a server
  (``TICKET_TO_INVOICE_WARM_SOCKET`` unset or nobody listening) it *becomes* ``python -m prefect.engine``, so a
  worker configured this way always runs its flows, warm or cold.

The worker still owns each run: the starter is the process it watches and signals, and when the starter dies
(killed by the worker, or the worker is gone) the server kills the child, so no run outlives its worker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

SOCKET_ENV = "TICKET_TO_INVOICE_WARM_SOCKET"
_HEADER = struct.Struct("!I")


def _send(conn: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(conn, [_HEADER.pack(len(data)) + data], fds)
    else:
        conn.sendall(_HEADER.pack(len(data)) + data)


def _receive(conn: socket.socket, with_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (and up to ``with_fds`` file descriptors); ``None`` when the other side has gone."""
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, with_fds)
    else:
        head = conn.recv(_HEADER.size, socket.MSG_WAITALL)
    if len(head) < _HEADER.size:
        return None, fds
    (size,) = _HEADER.unpack(head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds


# -- the starter: what the worker runs for each flow run -------------------------------------------------------


def start() -> int:
    """Run this flow run's engine in a warm child of the server, or here (cold) when there is none."""
    path = os.environ.get(SOCKET_ENV)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise OSError("no warm server configured")
        conn.connect(path)
    except OSError:
        conn.close()
        os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[1:]])
    _send(conn, {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[1:]}, fds=[1, 2])
    started, _ = _receive(conn)
    if started is None or "pid" not in started:
        print(f"the warm server at {path} did not start the run: {started}", file=sys.stderr)
        return 1
    child = int(started["pid"])

    def relay(signum: int, _frame: Any) -> None:  # the worker cancels the run: tell the engine itself
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for relayed in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(relayed, relay)
    ended, _ = _receive(conn)
    if ended is None:
        return 1
    code = int(ended["exit"])
    if code < 0:  # killed by a signal: end the same way, as the worker expects of the engine
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


# -- the server: warm once, fork per run ------------------------------------------------------------------------


def warm_up() -> None:
    """Import what every run imports and run once what every run runs first (the GX suites and their Data
    Docs on the bundled sample), before any fork: a child starts where this left off."""
    import tempfile
    import threading
    from datetime import UTC, datetime
    from pathlib import Path

    import prefect.concurrency.services
    import prefect.concurrency.sync
    import prefect.deployments.steps  # the deployment's pull step
    import prefect.flow_engine
    import prefect.task_engine
    import prefect.utilities.visualization  # noqa: F401  (a flow call imports it, and graphviz with it)
    import tqdm

    import flows.bill_on_event
    import flows.ticket_to_invoice
    from billing.ledger.store import head_revision
    from billing.settings import EXAMPLE_RULES, SAMPLE_EXPORT, Settings
    from connectors.http import default_tls
    from rules.schema import load_rules
    from tasks.validate import check_batch, write_data_docs

    tqdm.tqdm.monitor_interval = 0  # no monitor thread for GX's progress bars (see the fork below)
    default_tls()  # the CA bundle, loaded once for every run's clients
    head_revision()  # the ledger's migrations, read once: a run only compares its ledger's version
    with tempfile.TemporaryDirectory(prefix="t2i-warm-up-") as scratch:
        settings = Settings(home=Path(scratch), input_dir=SAMPLE_EXPORT, rules_file=EXAMPLE_RULES)
        batch = flows.bill_on_event.make_source(settings).extract(None)
        checked = check_batch(batch, load_rules(settings.rules_file), datetime.now(UTC))
        write_data_docs(checked.all, Path(scratch) / "data-docs")
    if threading.active_count() > 1:  # a fork copies only this thread: another's locks could stay held
        raise RuntimeError(f"warming up started threads: {threading.enumerate()}")


def _adopt(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take the starter's output, environment, directory and default signal handling."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's own handlers are not the engine's
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in (stdin, *fds):
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # `kill -USR1 <pid>` writes every thread's stack to the run's output (the worker's log): a stuck run says
    # what it waits for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _run_engine(argv: list[str]) -> None:
    """What ``python -m prefect.engine ARGV`` does, in this (forked, warm) process."""
    import runpy
    import warnings

    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()  # the run's own settings (API, results), not the server's
    sys.argv = ["prefect.engine", *argv]
    # Imported already (warm), and run again as __main__ here, as `python -m` would: that is the point.
    warnings.filterwarnings("ignore", message="'prefect.engine' found in sys.modules", category=RuntimeWarning)
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


def serve(path: str) -> None:
    """Listen on ``path``; one forked engine per request; reap children and kill orphans."""
    import selectors

    warm_up()
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}  # child pid → its starter's connection
    print(f"warm server ready on {path}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    request, fds = _receive(conn, with_fds=2)
                    if request is None or len(fds) != 2:
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        listener.close()
                        for other in running.values():
                            other.close()
                        conn.close()
                        try:
                            _adopt(request, fds)
                            _run_engine(request["argv"])
                            code = 0
                        except SystemExit as exc:
                            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                        except BaseException:
                            import traceback

                            traceback.print_exc()
                            code = 1
                        _exit_like_an_interpreter(code)
                    for fd in fds:
                        os.close(fd)
                    run_id = request["env"].get("PREFECT__FLOW_RUN_ID", "?")
                    print(f"flow run {run_id}: engine forked as pid {pid}", flush=True)
                    _send(conn, {"pid": pid})
                    running[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, data=pid)
                else:  # a starter closed its end: it was killed; its run must not go on alone
                    pid = key.data
                    if pid in running:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
            _reap(running, selector)
    finally:
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        os.unlink(path)


def _exit_like_an_interpreter(code: int) -> None:
    """End the forked run as ``python -m prefect.engine`` ends: its exit hooks flush the run's last logs and
    events to the API (Prefect's log and event workers), then the process goes without unwinding into the
    server's loop (whose cleanup would signal the other runs)."""
    import atexit
    import logging

    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(running: dict[int, socket.socket], selector: Any) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        selector.unregister(conn)
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
        conn.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"]:
        if len(argv) != 3 or argv[1] != "--socket":
            print("usage: python -m flows.warm server --socket PATH", file=sys.stderr)
            return 2
        serve(argv[2])
        return 0
    return start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
