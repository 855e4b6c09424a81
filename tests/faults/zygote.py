"""A fork server for kill trials: pays for the imports and the warm-up of a ``ticket-to-invoice`` process once,
then forks a child per request that runs the real command line (``billing.cli.main()``) in a fresh state.

A new ``ticket-to-invoice`` process spends about 8 s importing (Prefect, Great Expectations, pandas) and its
first run about 5 s more warming Great Expectations (lazy imports, renderers); a forked child starts warm and
bills the sample export in about 3 s. Start it with ``PREFECT_API_URL`` (one Prefect server for every child,
none started per run), ``PREFECT_HOME`` and ``GX_ANALYTICS_ENABLED=false`` in its environment::

    python -m tests.faults.zygote          # speaks JSON lines: requests on stdin, answers on stdout

Before it forks, the zygote starts no thread and opens no ledger or other database (checked at start-up and
reported: ``threads``, ``open_files``); the warm-up prices the sample export against an empty home, which
reads no ledger (``tasks.price.preview``), and writes Data Docs into a temporary folder.

Requests (one JSON object a line) and answers:

- ``{"op": "spawn", "id": 1, "argv": [...], "env": {...}, "stdout": PATH, "stderr": PATH, "cwd": PATH}`` →
  ``{"id": 1, "pid": 123, "forked_at": <time.time()>}``. The child puts ``env`` into its environment (a ``null``
  value removes the variable), writes its stdout and stderr to the files, and exits with the exit code of
  ``billing.cli.main()`` as the program ``ticket-to-invoice`` would (a traceback and 1 on an exception).
  It leads a process group of its own, so that whatever it started can be found after it is killed.
- ``{"op": "kill", "id": 2, "pid": 123, "signal": 9}`` → ``{"id": 2, "sent": true}``; ``sent`` is false when the
  child had already exited. Only the zygote kills its children: it is their parent, so a pid it has not
  reaped yet cannot belong to another process.
- ``{"op": "quit"}`` ends the zygote (after killing children still running).

Unasked, once per child: ``{"event": "exit", "pid": 123, "exit_code": 0, "signal": null, "exited_at": ...,
"left_behind": [pids]}`` (``signal`` is 9 for a killed child; ``left_behind`` lists processes of its group
still running when it was reaped: a server it started that did not die with it).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import select
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def warm_up() -> dict[str, Any]:
    """Import what a run imports and run the pure part of a run once (no ledger, no Prefect API call)."""
    started = time.perf_counter()
    import great_expectations  # noqa: F401

    import billing.cli  # noqa: F401
    import flows.reconcile
    import flows.ticket_to_invoice  # noqa: F401
    from billing.settings import Settings
    from rules.quality import write_data_docs
    from rules.schema import load_rules
    from tasks.extract import make_source
    from tasks.price import preview
    from tasks.validate import check_batch

    imported = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="zygote-warm-up-") as folder:
        home = Path(folder) / "home"  # never created: the preview reads no ledger when there is none
        settings = Settings(home=home, input_dir=ROOT / "examples" / "sample-export", erp="files",
                            rules_file=ROOT / "rules" / "examples" / "demo.yaml")  # fmt: skip
        source = make_source(settings)
        period = source.default_period()
        checked = check_batch(source.extract(period), load_rules(settings.rules_file))
        write_data_docs(checked.all, Path(folder) / "docs")
        preview(settings, period)
        assert not home.exists(), "the warm-up must not create a home (a ledger)"
    stop_tqdm_monitor()
    return {"import_seconds": round(imported, 2), "warm_up_seconds": round(time.perf_counter() - started, 2)}


def stop_tqdm_monitor() -> None:
    """GX's progress bars start tqdm's monitor thread: stop it (a child starts its own when it needs one)."""
    for thread in threading.enumerate():
        if type(thread).__name__ == "TMonitor":
            thread.exit()  # type: ignore[attr-defined]
            thread.tqdm_cls.monitor = None  # type: ignore[attr-defined]


def open_files() -> list[str]:
    """What this process has open besides its standard streams and pipes (a database would show here)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if int(fd) > 2 and target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            found.append(target)
    return found


def child(request: dict[str, Any], protocol: int) -> None:
    """In the forked child: become ``ticket-to-invoice <argv>`` and never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.close(protocol)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stream
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        # SIGUSR1 writes every thread's stack to stderr: what a run that never finishes was waiting for.
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        for name, value in (request.get("env") or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = str(value)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        import random

        random.seed()  # a new process draws its own random numbers (Prefect's run names), not the zygote's
        sys.argv = ["ticket-to-invoice", *request["argv"]]
        from billing.cli import main

        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
        except BaseException:  # as the interpreter does: the traceback, exit code 1
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()  # what the interpreter does at exit (Prefect flushes its logs there)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def left_in_group(pgid: int) -> list[int]:
    """Processes of the process group ``pgid`` still running (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def serve() -> None:
    protocol = os.dup(1)  # answers go here; anything printed by imported code goes to stderr instead
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(message: dict[str, Any]) -> None:
        os.write(protocol, (json.dumps(message) + "\n").encode())

    report = warm_up()
    threads = threading.active_count()
    report.update(ready=True, pid=os.getpid(), threads=threads, open_files=open_files())
    answer(report)
    if threads != 1:
        raise SystemExit(f"zygote: {threads} threads before forking: {threading.enumerate()}")

    running: set[int] = set()
    pending = b""
    stdin = sys.stdin.fileno()
    quitting = False
    while not quitting:
        readable, _, _ = select.select([stdin], [], [], 0.02)
        if readable:
            chunk = os.read(stdin, 65536)
            quitting = not chunk  # the driver is gone
            pending += chunk
        while b"\n" in pending and not quitting:
            line, pending = pending.split(b"\n", 1)
            if not line.strip():
                continue
            request = json.loads(line)
            if request["op"] == "spawn":
                pid = os.fork()
                if pid == 0:
                    child(request, protocol)
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)  # also here: the group exists before anyone may kill it
                running.add(pid)
                answer({"id": request["id"], "pid": pid, "forked_at": time.time()})
            elif request["op"] == "kill":
                sent = request["pid"] in running
                if sent:
                    os.kill(request["pid"], int(request.get("signal", signal.SIGKILL)))
                answer({"id": request["id"], "sent": sent, "at": time.time()})
            elif request["op"] == "quit":
                quitting = True
            else:
                answer({"id": request.get("id"), "error": f"unknown op {request['op']!r}"})
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            running.discard(pid)
            answer({
                "event": "exit", "pid": pid, "exited_at": time.time(),
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "left_behind": left_in_group(pid),
            })  # fmt: skip
    for pid in running:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
