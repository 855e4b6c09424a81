"""Child processes that do not outlive the process that started them.

A run starts servers as child processes (the embedded trytond, Prefect's temporary API server). When the run is
killed (``kill -9``, OOM killer) nothing of Python runs any more, so ``finally`` blocks and ``atexit`` handlers
cannot stop them. Two tools, used together:

- **Death signal** (Linux ``prctl(PR_SET_PDEATHSIG)``): the kernel sends the child a signal when its parent dies.
  The "parent" is the *thread* that forked the child, so :func:`popen_tied` forks from a thread that lives as
  long as the process: the main thread, or else one daemon thread kept for this purpose. Forking from a
  short-lived thread (a task's worker, a log-shipping thread) would kill the child when that thread ends.
- **Records** for the next run: :func:`record_child` writes the child's pid, start time and its parent's pid and
  start time to a small JSON file; :func:`reap_orphans` kills a recorded child whose parent is gone. This is the
  safety net where no death signal exists (other systems) or was never set (a server left by an older version).
  A pid is only trusted together with its start time, so a reused pid is never killed.

This module imports nothing of the project's upper layers; :func:`tie_prefect_server_to_this_process` imports
Prefect's server module when it is called.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LINUX = sys.platform.startswith("linux")


# -- the death signal -------------------------------------------------------------------------------------------------


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when the forking thread dies.

    ``None`` where the kernel has no such signal (not Linux). Prefer :func:`popen_tied`, which also makes sure
    the forking thread is one that lives as long as the process.
    """
    if not LINUX:
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    parent = os.getpid()

    def set_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died between fork and prctl: the signal will never come
            os.kill(os.getpid(), sig)

    return set_death_signal


_spawner: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] | None = None
_spawner_lock = threading.Lock()


def _spawner_loop(jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]) -> None:
    while True:
        job, future = jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)


def _on_a_lasting_thread(job: Callable[[], Any]) -> Any:
    """Run ``job`` on the main thread if that is where we are, else on one daemon thread that never ends (it
    stops with the process, after ``atexit``: a child's death signal fires when the process is gone)."""
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return job()
    with _spawner_lock:
        if _spawner is None:
            _spawner = queue.SimpleQueue()
            threading.Thread(target=_spawner_loop, args=(_spawner,), name="process-spawner", daemon=True).start()
        jobs = _spawner
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    jobs.put((job, future))
    return future.result()


def popen_tied(args: Any, *, death_signal: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen[Any]:
    """:class:`subprocess.Popen` whose child gets ``death_signal`` when this process dies, whichever thread
    calls it. Takes Popen's arguments; ``preexec_fn`` is this module's."""
    if "preexec_fn" in kwargs:
        raise TypeError("popen_tied sets preexec_fn itself")
    preexec = die_with_parent(death_signal)
    return _on_a_lasting_thread(lambda: subprocess.Popen(args, preexec_fn=preexec, **kwargs))  # type: ignore[arg-type]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a child server to listen on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes by pid -------------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: [state, ppid, …]; None if there is no such
    process. (The name is in parentheses and may hold spaces and parentheses itself.)"""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot, field 22 of /proc/<pid>/stat); None if it is gone.
    A pid with its start time names one process: pids are reused, the pair is not."""
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def alive(pid: int, started: int | None = None) -> bool:
    """Whether the process exists and is not a zombie (and started at ``started``, if given)."""
    if not LINUX:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None


def command_line(pid: int) -> list[str]:
    """The arguments of a process (empty if it is gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, … of a process, parents before their children."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop(0)):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def terminate(pid: int, started: int | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; its process group too if it leads one. True once it is gone.
    Does nothing to a process that did not start at ``started`` (its pid was reused)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not alive(pid, started):
            return True
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid, started):
                return True
            time.sleep(0.05)
    return not alive(pid, started)


# -- records for the next run ---------------------------------------------------------------------------------------


def record_child(path: Path, process: subprocess.Popen[Any] | int, what: str = "") -> None:
    """Write who the child is and who started it (this process), atomically, for :func:`reap_orphans`."""
    pid = process if isinstance(process, int) else process.pid
    record = {
        "pid": pid,
        "started": start_time(pid),
        "parent": os.getpid(),
        "parent_started": start_time(os.getpid()),
        "what": what,
        "command": command_line(pid)[:8],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def forget_child(path: Path, process: subprocess.Popen[Any] | int) -> None:
    """Remove the record if it is about this child (and not about a later one)."""
    pid = process if isinstance(process, int) else process.pid
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()


def reap_orphans(paths: Iterable[Path], timeout: float = 10.0) -> list[int]:
    """Stop every recorded child that is still running although the process that started it is gone; remove
    records of children that are gone. A child whose parent still runs is left alone (it is someone's server).
    Returns the pids stopped."""
    stopped = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
            pid, started = int(record["pid"]), record.get("started")
            parent, parent_started = int(record["parent"]), record.get("parent_started")
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: a half-written record of a child we cannot identify
            continue
        if started is None or not alive(pid, started):
            path.unlink(missing_ok=True)
        elif not alive(parent, parent_started) and terminate(pid, started, timeout):
            stopped.append(pid)
            path.unlink(missing_ok=True)
    return stopped


# -- Prefect's temporary API server -----------------------------------------------------------------------------------

PREFECT_SERVER_RECORDS = "ephemeral-server-*.json"


class _TiedSubprocess:
    """Stands in for the ``subprocess`` module inside ``prefect.server.api.server`` only: ``Popen`` there (the
    uvicorn command of ``SubprocessASGIServer``) becomes :func:`popen_tied` plus a record; the rest is
    ``subprocess`` itself."""

    def __init__(self, record_dir: Path) -> None:
        self.record_dir = record_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # the module's name
        process = popen_tied(*args, **kwargs)
        with contextlib.suppress(OSError):
            record_child(self.record_dir / f"ephemeral-server-{process.pid}.json", process, "prefect server")
        return process


def tie_prefect_server_to_this_process(record_dir: Path) -> None:
    """Make the temporary Prefect API server (Prefect 3's ``SubprocessASGIServer``, started on the first API
    call when no ``PREFECT_API_URL`` is set) stop when this process dies, and stop one that a killed earlier run
    left running (records under ``record_dir``, e.g. PREFECT_HOME).

    Narrow by design: it replaces the name ``subprocess`` in ``prefect.server.api.server`` with a stand-in whose
    ``Popen`` sets the death signal and records the child; nothing else of Prefect changes. Prefect still stops
    the server itself at a normal exit. Idempotent. Does nothing (and does not import Prefect's server, about
    7 s here) when ``PREFECT_API_URL`` is set: then there is no temporary server.
    """
    record_dir = Path(record_dir)
    with contextlib.suppress(OSError):
        reap_orphans(sorted(record_dir.glob(PREFECT_SERVER_RECORDS)))
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api import server as prefect_server

    if isinstance(prefect_server.subprocess, _TiedSubprocess):
        prefect_server.subprocess.record_dir = record_dir
        return
    if not hasattr(prefect_server.SubprocessASGIServer, "_run_uvicorn_command"):  # pragma: no cover
        raise RuntimeError("this Prefect has no SubprocessASGIServer._run_uvicorn_command; check the hook")
    prefect_server.subprocess = _TiedSubprocess(record_dir)  # type: ignore[assignment]
