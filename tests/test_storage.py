"""A read-only home and a disk that fills up half-way: one message naming the path (exit 2), no traceback,
and the next run, once there is room, finishes what was begun. The home is a small tmpfs of the test's own
(the tests run as root, in CI too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_cli(home: Path, prefect_home: Path) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_ERP": "files",
                        "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "billing.cli", "run", "--json"], env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip


def test_a_read_only_home_is_named_before_anything_is_done(small_disk: Path, tmp_path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run_cli(small_disk, tmp_path / "prefect")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert f"the home folder {small_disk} (TICKET_TO_INVOICE_HOME) cannot be written: Read-only file system" in said
    assert list(small_disk.iterdir()) == []


def test_a_full_disk_half_way_is_named_and_the_next_run_finishes(small_disk: Path, tmp_path: Path) -> None:
    full = run_cli(small_disk, tmp_path / "prefect")  # the ledger fits in 3 MB, the run's Data Docs do not
    assert full.returncode == 2, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    said = " ".join(full.stderr.split())
    assert "No space left on device" in said or "database or disk is full" in said
    assert str(small_disk) in said and "the next run goes on from here" in said

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    done = run_cli(small_disk, tmp_path / "prefect")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["new_postings"] == 4 and summary["reconcile"]["duplicates"] == []
    assert summary["counts"]["pending_approval"] == summary["counts"]["pending_posting"] == 0
    assert len(list((small_disk / "erp-files" / "2026-10").glob("*.json"))) == 4
