"""The parts `serve` starts (flows/service.py ``process``): stopped with it, whichever way it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from billing.processes import alive
from billing.settings import PROJECT_ROOT


def test_a_part_stops_when_serve_is_killed_with_sigkill(tmp_path: Path) -> None:
    """kill -9 of `serve` leaves no part behind holding its port (each is in a session of its own, so a signal to
    serve's process group never reaches it)."""
    serve = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from flows.service import process\n"
        f"with process(['sleep', '300'], {{}}, Path({str(tmp_path / 'part.log')!r})) as part:\n"
        "    print(part.pid, flush=True)\n"
        "    time.sleep(300)\n"
    )], cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=subprocess.PIPE,
        text=True)  # fmt: skip
    assert serve.stdout is not None
    part = int(serve.stdout.readline())
    assert alive(part)
    os.kill(serve.pid, signal.SIGKILL)
    serve.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(part) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(part), f"part {part} outlived serve"
