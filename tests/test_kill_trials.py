"""kill -9 at random points of a run, each followed by a rerun in the same home: exactly one live invoice per
draft key, every work item in exactly one final state, reconcile clean, nothing lost (tests/faults/kill_trials.py
says how). The seed is printed; ``KILL_SEED=<seed>`` replays a series' plan, ``KILL_ONLY=<n,...>`` some of its
trials. Run with ``-s`` to watch the trials go by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.kill_trials import (
    ROOT,
    SAMPLE,
    FilesErpReader,
    Series,
    SeriesResult,
    TrytonReader,
    Zygote,
    as_json,
    small_export,
    zygote_environment,
)

pytestmark = [pytest.mark.integration]

FILES_TRIALS = 50
TRYTON_TRIALS = 10
FILES_KINDS = {"uniform": 0.5, "post": 0.15, "erp-write": 0.2, "new-ledger": 0.15}
TRYTON_KINDS = {"uniform": 0.6, "post": 0.4}
PARALLEL = 2  # both cores; Tryton series one at a time (see there)


@pytest.fixture(scope="module")
def zygote(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("zygote")
    with Zygote(zygote_environment(str(PREFECT_API_URL.value()), folder / "prefect"), folder / "zygote.log") as z:
        print(f"fork server ready: {z.ready}")
        yield z


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's JSON without what differs from run to run (times, flow-run names, paths)."""
    invoices = [{k: v for k, v in i.items() if k not in ("posted_at", "invoice_date")} for i in summary["invoices"]]
    kept = ("period", "counts", "work_items_total", "new_postings", "quarantined", "non_billable", "posting_failures")
    report = summary["reconcile"]
    return {
        **{k: summary[k] for k in kept},
        "invoices": invoices,
        "reconcile": {k: report[k] for k in ("mismatches", "duplicates", "unbilled")},
    }


def test_a_forked_child_is_the_command_line(zygote: Zygote, tmp_path: Path) -> None:
    """What a trial runs is `ticket-to-invoice run --json` itself: the same exit code, the same JSON on stdout
    and Prefect's log on stderr as a new process of the command gives (on the same Prefect server)."""
    env = {k: v for k, v in zygote.env.items()}
    env.update(TICKET_TO_INVOICE_HOME=str(tmp_path / "process-home"), TICKET_TO_INVOICE_ERP="files")
    process = subprocess.run([sys.executable, "-m", "billing.cli", "run", "--json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]

    child = zygote.spawn(["run", "--json"], {"TICKET_TO_INVOICE_HOME": str(tmp_path / "child-home"),
                                             "TICKET_TO_INVOICE_ERP": "files"},
                         tmp_path / "child.out", tmp_path / "child.err")  # fmt: skip
    ended = zygote.wait(child, 180)
    errors = (tmp_path / "child.err").read_text()
    assert ended is not None and ended["exit_code"] == 0 and ended["signal"] is None, errors[-3000:]
    assert not ended["left_behind"]
    forked = json.loads((tmp_path / "child.out").read_text())
    assert comparable(forked) == comparable(json.loads(process.stdout))
    assert forked["counts"]["billed"] > 0 and forked["new_postings"] == 4 and forked["work_items_total"] == 503
    for log in (errors, process.stderr):
        assert "Beginning flow run" in log and "Task run 'post-" in log and "Finished in state Completed()" in log
    # a child's exit code is the command's: a bad option is exit 2 with the message, as from the process
    bad = zygote.spawn(["run", "--period", "October"], {"TICKET_TO_INVOICE_HOME": str(tmp_path / "bad")},
                       tmp_path / "bad.out", tmp_path / "bad.err")  # fmt: skip
    assert (zygote.wait(bad, 60) or {}).get("exit_code") == 2
    assert "YYYY-MM" in (tmp_path / "bad.err").read_text()
    assert zygote.ready["threads"] == 1 and zygote.ready["open_files"] == []


def report(result: SeriesResult, tmp_path: Path) -> dict[str, Any]:
    summary = result.summary()
    print(json.dumps(summary, indent=1))
    (tmp_path / f"{result.series}-trials.json").write_text(json.dumps(as_json(result), indent=1))
    return summary


@pytest.mark.timeout(1200)
def test_kill_9_at_random_points_with_the_files_erp_then_a_rerun_bills_everything_once(
    zygote: Zygote, tmp_path: Path
) -> None:
    series = Series("files", zygote, FilesErpReader(), tmp_path, lambda folder, tag: (SAMPLE, []))
    result = series.run(FILES_TRIALS, FILES_KINDS, parallel=PARALLEL)
    summary = report(result, tmp_path)
    replay = f"replay with KILL_SEED={result.seed} (KILL_ONLY=<trial> for one); evidence under {tmp_path}"
    assert not result.problems, "\n".join([*result.problems, replay])
    assert summary["trials"] == FILES_TRIALS or os.environ.get("KILL_ONLY")
    assert summary["duplicates"] == 0 and summary["items_lost"] == 0, replay
    if not os.environ.get("KILL_ONLY"):  # the trials did kill, and some of them while posting
        assert summary["kills"] >= 0.9 * FILES_TRIALS, summary
        assert summary["kills_in_posting"] >= 1, summary


@pytest.mark.timeout(900)
def test_kill_9_at_random_points_with_tryton_then_a_rerun_posts_every_invoice_once(
    zygote: Zygote, tryton: Any, tmp_path: Path
) -> None:
    # One trial at a time: each trial has a ledger of its own, so nothing serializes two trials' posts into
    # the one Tryton (and Tryton on SQLite numbers invoices twice under concurrent posts).
    erp = TrytonReader(tryton.url, tryton.database, tryton.user, tryton.password)
    series = Series("tryton", zygote, erp, tmp_path, small_export)
    result = series.run(TRYTON_TRIALS, TRYTON_KINDS, parallel=1)
    summary = report(result, tmp_path)
    replay = f"replay with KILL_SEED={result.seed} (KILL_ONLY=<trial> for one); evidence under {tmp_path}"
    assert not result.problems, "\n".join([*result.problems, replay])
    assert summary["duplicates"] == 0 and summary["items_lost"] == 0, replay
    if not os.environ.get("KILL_ONLY"):
        assert summary["kills"] >= 0.6 * TRYTON_TRIALS, summary  # a run faster than the calibration may end first


KILLED_WHILE_MIGRATING = """
import os, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

made = 0


@event.listens_for(Engine, "after_cursor_execute")
def die_after_the_third_table(connection, cursor, statement, *_):
    global made
    if statement.lstrip().upper().startswith("CREATE TABLE"):
        made += 1
        if made == 3:
            os._exit(9)  # what kill -9 does at this point: nothing more runs


from billing.ledger import Ledger

Ledger(f"sqlite:///{sys.argv[1]}")
"""


def test_a_run_killed_while_it_creates_the_ledger_leaves_a_ledger_the_next_run_can_open(tmp_path: Path) -> None:
    """The kill point the trials' ``new-ledger`` kind aims at, made exact: the first run of a home dies after
    the third CREATE TABLE of the ledger's first migration. The next run must open (and finish) the ledger."""
    database = tmp_path / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKET_TO_INVOICE_")} | {"PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_MIGRATING, str(database)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert killed.returncode == 9, killed.stderr[-2000:]
    again = subprocess.run([sys.executable, "-c", f"from billing.ledger import Ledger; Ledger('sqlite:///{database}')"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    error = [line for line in again.stderr.splitlines() if "Error:" in line][-1:]
    assert again.returncode == 0, f"the next run cannot open the ledger: {error}"
