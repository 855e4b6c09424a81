"""Kill trials: ``kill -9`` a ``ticket-to-invoice run`` at a random point, run it again in the same home, and
check that nothing was billed twice and nothing was lost. Shared by tests/test_kill_trials.py and
``make bench`` (tests/bench/bench_faults.py).

Every process is a child of one fork server (tests/faults/zygote.py) that imported and warmed up a run once,
and every run uses one Prefect server (``PREFECT_API_URL``): a trial costs a killed run and a rerun, not two
process start-ups and two temporary Prefect servers.

A series starts with one run that is not killed (the *calibration*): its duration ``T`` and the moments its
stages finished (from Prefect's log lines) set the kill points, and its result is the *reference* every trial
must end with: the same invoices (key, untaxed, tax, gross), the same billed work items, the same counts.
Then each trial, in a home of its own:

1. starts a run and kills it with SIGKILL, at one of four kinds of moments drawn from ``random.Random(seed)``:
   ``uniform``: ``U(0, T)`` after the fork; ``post``: ``U(0, W)`` after the log says the approval stage
   finished (``W``: how long the calibration's post stage took), so inside the post stage; ``erp-write``
   (files ERP): ``U(0, 40 ms)`` after the first invoice file appears, so between the ERP write and the ledger
   record; ``new-ledger``: ``U(0, 300 ms)`` after the home's ledger file appears, so while the first run of a
   home creates the ledger's tables;
2. notes what the killed run left: the last stage its log reached, and invoices in the ERP that the ledger does
   not record as posted yet (``erp_ahead``: the kill fell between the ERP write and the ledger record);
3. runs again (not killed) in the same home, and checks: exit 0 and no traceback; exactly one ERP invoice per
   posted draft key and none the ledger does not know; no work log on two invoices; every work item of the
   ledger in a final state (posted or reconciled, non-billable, quarantined, held); no lease left behind;
   reconcile without mismatches or duplicates; the reference's invoices, billed work items and counts.

The seed is printed; ``KILL_SEED=<seed>`` replays the same plan (kinds and delays), ``KILL_ONLY=3,17`` runs
only those trials of it. A replay repeats the delays, not the machine's timing: under other load the same
delay may fall into another stage, so a failure's report also names the stage its kill reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-export"
DEMO_RULES = ROOT / "rules" / "examples" / "demo.yaml"
PERIOD = "2026-10"
FINAL_STATES = {"posted", "reconciled", "non_billable", "quarantined", "held"}
BILLED_STATES = {"posted", "reconciled"}
RUN_TIMEOUT = 180.0  # a rerun that takes longer did not finish: a failure, not a wait
TASK_FINISHED = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+ +\| Task run '(.+)-[0-9a-f]{3}' - Finished in state")
FLOW_STARTED = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+ +\| Flow run '.*' - Beginning flow run")


def zygote_environment(prefect_api_url: str, prefect_home: Path) -> dict[str, str]:
    """The environment of the fork server (and so of every run): one Prefect server, no settings of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKET_TO_INVOICE_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=prefect_api_url,
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        # the log lines this module reads stages from (Prefect's default console format, without colours)
        PREFECT_LOGGING_COLORS="false",
    )
    return env


# -- the fork server ---------------------------------------------------------------------------------------------


@dataclass
class Child:
    pid: int
    forked_at: float
    done: threading.Event = field(default_factory=threading.Event)
    exit: dict[str, Any] = field(default_factory=dict)


class Zygote:
    """The driver's side of tests/faults/zygote.py: spawn, kill and wait, from any thread."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.ready: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ids = 0
        self._answers: dict[int, Future[dict[str, Any]]] = {}
        self._children: dict[int, Child] = {}
        self._exits: dict[int, dict[str, Any]] = {}

    def start(self, timeout: float = 300.0) -> Zygote:
        started = time.perf_counter()
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.zygote"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self._process.stdout is not None
        first: Future[dict[str, Any]] = Future()
        self._answers[0] = first
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()
        try:
            self.ready = first.result(timeout=timeout)
        except Exception:
            self.close()
            raise RuntimeError(f"the fork server did not start; see {self.log}") from None
        self.ready["start_seconds"] = round(time.perf_counter() - started, 2)
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            message = json.loads(raw)
            if message.get("event") == "exit":
                with self._lock:
                    self._exits[message["pid"]] = message
                    child = self._children.get(message["pid"])
                if child is not None:
                    child.exit = message
                    child.done.set()
            elif message.get("ready"):
                self._answers.pop(0).set_result(message)
            else:
                with self._lock:
                    answer = self._answers.pop(message["id"], None)
                if answer is not None:
                    answer.set_result(message)
        with self._lock:  # the fork server ended: nobody waits for an answer that cannot come
            for answer in self._answers.values():
                answer.set_exception(RuntimeError(f"the fork server ended; see {self.log}"))
            self._answers.clear()

    def _ask(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None
        answer: Future[dict[str, Any]] = Future()
        with self._lock:
            self._ids += 1
            request["id"] = self._ids
            self._answers[self._ids] = answer
            self._process.stdin.write((json.dumps(request) + "\n").encode())
            self._process.stdin.flush()
        return answer.result(timeout=timeout)

    def spawn(self, argv: list[str], env: dict[str, str | None], stdout: Path, stderr: Path) -> Child:
        answer = self._ask({"op": "spawn", "argv": argv, "env": env, "stdout": str(stdout), "stderr": str(stderr)})
        child = Child(pid=answer["pid"], forked_at=answer["forked_at"])
        with self._lock:
            self._children[child.pid] = child
            early = self._exits.get(child.pid)
        if early is not None:
            child.exit = early
            child.done.set()
        return child

    def kill(self, child: Child, sig: int = signal.SIGKILL) -> bool:
        """``sig`` (SIGKILL), sent by the zygote (the parent): False if the child had exited already."""
        return bool(self._ask({"op": "kill", "pid": child.pid, "signal": int(sig)})["sent"])

    def wait(self, child: Child, timeout: float) -> dict[str, Any] | None:
        return child.exit if child.done.wait(timeout) else None

    def close(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self._process.stdin is not None
            self._process.stdin.write(b'{"op": "quit"}\n')
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Zygote:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()


# -- exports and ERPs --------------------------------------------------------------------------------------------


def tagged_export(
    folder: Path, tag: str, customers: tuple[str, ...] = ("GLOBEX",), worklogs: int | None = None
) -> tuple[Path, list[str]]:
    """Some customers of the sample export, renamed ``<id>-<tag>``: every export bills invoices of its own in a
    shared ERP. ``worklogs``: keep only the first so many work-log rows (a smaller invoice posts faster)."""
    folder.mkdir(parents=True)
    shutil.copy(SAMPLE / "manifest.json", folder / "manifest.json")
    chosen = [c for c in json.loads((SAMPLE / "customers.json").read_text()) if c["customer_id"] in customers]
    for customer in chosen:
        customer["customer_id"] = f"{customer['customer_id']}-{tag}"
    (folder / "customers.json").write_text(json.dumps(chosen, indent=1))
    for name in ("tickets.csv", "worklogs.csv"):
        header, *rows = (SAMPLE / name).read_text().splitlines()
        kept = [row.replace(f",{c},", f",{c}-{tag},") for row in rows for c in customers if f",{c}," in row]
        if name == "worklogs.csv" and worklogs is not None:
            kept = kept[:worklogs]
        (folder / name).write_text("\n".join([header, *kept]) + "\n")
    return folder, [c["customer_id"] for c in chosen]


SMALL_EXPORT_WORKLOGS = 15  # one invoice of about a dozen lines: Tryton posts it in seconds, not twenty


def small_export(folder: Path, tag: str) -> tuple[Path, list[str]]:
    """The export of the Tryton series: GLOBEX, tagged, its first work logs only."""
    return tagged_export(folder, tag, worklogs=SMALL_EXPORT_WORKLOGS)


@dataclass
class ErpInvoice:
    key: str
    number: str
    state: str
    untaxed_minor: int
    tax_minor: int
    gross_minor: int
    work_logs: list[str] = field(default_factory=list)  # source ids on its lines, where the ERP keeps them


def _minor(value: Any) -> int:
    return int(Decimal(str(value)).scaleb(2).to_integral_value())


class FilesErpReader:
    """The files ERP of one home, read from its files."""

    name = "files"

    def env(self) -> dict[str, str | None]:
        return {"TICKET_TO_INVOICE_ERP": "files"}

    def invoices(self, home: Path, customers: list[str]) -> list[ErpInvoice]:
        found = []
        for path in sorted((home / "erp-files" / PERIOD).glob("*.json")):
            doc = json.loads(path.read_text())
            found.append(
                ErpInvoice(
                    key=doc["external_reference"],
                    number=doc["number"],
                    state="posted",
                    untaxed_minor=doc["untaxed_minor"],
                    tax_minor=doc["tax"]["amount_minor"],
                    gross_minor=doc["gross_minor"],
                    work_logs=[li["source_id"] for li in doc["lines"] if li["source_id"]],
                )
            )
        return found

    def parties(self, customers: list[str]) -> Counter[str]:
        return Counter()

    def written(self, home: Path) -> bool:
        """Whether an invoice file exists yet (the ERP write began)."""
        folder = home / "erp-files" / PERIOD
        return folder.is_dir() and any(entry.name.endswith(".json") for entry in os.scandir(folder))


class TrytonReader:
    """A shared Tryton, read directly over JSON-RPC (never through a run)."""

    name = "tryton"

    def __init__(self, url: str, database: str, user: str, password: str) -> None:
        self.url, self.database, self.user, self.password = url, database, user, password
        self._rpc: Any = None

    def env(self) -> dict[str, str | None]:
        return {
            "TICKET_TO_INVOICE_ERP": "tryton",
            "TICKET_TO_INVOICE_TRYTON_URL": self.url,
            "TICKET_TO_INVOICE_TRYTON_DATABASE": self.database,
            "TICKET_TO_INVOICE_TRYTON_USER": self.user,
            "TICKET_TO_INVOICE_TRYTON_PASSWORD": self.password,
        }

    def rpc(self) -> Any:
        if self._rpc is None:
            from connectors.tryton_rpc import TrytonRpc

            self._rpc = TrytonRpc(self.url, self.database, self.user, self.password)
            self._rpc.login()
        return self._rpc

    def _search_read(self, model: str, domain: list[Any], fields: list[str]) -> list[dict[str, Any]]:
        return self.rpc().model(model, "search_read", domain, 0, None, None, fields)

    def invoices(self, home: Path, customers: list[str]) -> list[ErpInvoice]:
        rows = self._search_read(
            "account.invoice",
            [["party.code", "in", customers]],
            ["reference", "number", "state", "untaxed_amount", "tax_amount", "total_amount"],
        )
        return [
            ErpInvoice(
                key=r["reference"],
                number=r["number"] or "",
                state=r["state"],
                untaxed_minor=_minor(r["untaxed_amount"]),
                tax_minor=_minor(r["tax_amount"]),
                gross_minor=_minor(r["total_amount"]),
            )
            for r in rows
        ]

    def parties(self, customers: list[str]) -> Counter[str]:
        return Counter(p["code"] for p in self._search_read("party.party", [["code", "in", customers]], ["code"]))

    def written(self, home: Path) -> bool:  # pragma: no cover - not used as a trigger (an RPC per poll)
        return False


# -- the ledger, read with sqlite3 -------------------------------------------------------------------------------


@contextlib.contextmanager
def ledger_copy(home: Path) -> Iterator[sqlite3.Connection | None]:
    """The ledger of a home as a killed run left it, read from a copy (with its journal, if any): reading
    the file itself would roll back a hot journal, which is the next run's business."""
    database = home / "ledger.db"
    if not database.exists():
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="kt-ledger-") as folder:
        for suffix in ("", "-journal", "-wal", "-shm"):
            source = Path(f"{database}{suffix}")
            if source.exists():
                shutil.copy(source, Path(folder) / f"ledger.db{suffix}")
        connection = sqlite3.connect(Path(folder) / "ledger.db")
        try:
            yield connection
        finally:
            connection.close()


def _rows(connection: sqlite3.Connection, query: str) -> list[tuple[Any, ...]]:
    try:
        return connection.execute(query).fetchall()
    except sqlite3.OperationalError:  # a table not made yet: the run was killed before migrations finished
        return []


@dataclass
class LedgerView:
    states: dict[str, str]  # work item key → state
    drafts: dict[str, str]  # draft key → state
    postings: dict[str, tuple[str, int, int, int]]  # draft key → erp number, untaxed, tax, gross
    items_on_drafts: dict[str, list[str]]  # work item key → posted drafts whose lines carry it
    leases: list[str]
    schema: str = "none"  # no ledger file; "empty"; "half-made": tables but no schema version; else its version

    @classmethod
    def read(cls, home: Path) -> LedgerView:
        with ledger_copy(home) as connection:
            if connection is None:
                return cls({}, {}, {}, {}, [])
            tables = {n for (n,) in _rows(connection, "SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = _rows(connection, "SELECT version_num FROM alembic_version")
            schema = version[0][0] if version else "half-made" if tables - {"alembic_version"} else "empty"
            on: dict[str, list[str]] = {}
            for item, draft in _rows(
                connection,
                "SELECT l.work_item_key, l.draft_key FROM invoice_lines l "
                "JOIN invoice_drafts d ON d.key = l.draft_key WHERE d.state = 'posted'",
            ):
                on.setdefault(item, []).append(draft)
            return cls(
                states=dict(_rows(connection, f"SELECT key, state FROM work_item_states WHERE period = '{PERIOD}'")),
                drafts=dict(_rows(connection, "SELECT key, state FROM invoice_drafts")),
                postings={
                    k: (n, t, x, g)
                    for k, n, t, x, g in _rows(
                        connection, "SELECT draft_key, erp_number, total_minor, tax_minor, gross_minor FROM postings"
                    )
                },
                items_on_drafts=on,
                leases=[
                    f"{name} held by {holder}"
                    for name, holder in _rows(connection, "SELECT name, holder FROM run_locks")
                ],
                schema=schema,
            )

    @property
    def billed(self) -> set[str]:
        return {k for k, s in self.states.items() if s in BILLED_STATES}


# -- series and trials -------------------------------------------------------------------------------------------


def stages(log: Path, since: float) -> list[tuple[str, float]]:
    """The stages a run's log says finished, with seconds since ``since`` (the fork), in order."""
    day = datetime.fromtimestamp(since).date()
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if match := TASK_FINISHED.match(line):
            at, name = match.group(1), match.group(2)
        elif match := FLOW_STARTED.match(line):
            at, name = match.group(1), "flow-started"
        else:
            continue
        moment = datetime.combine(day, datetime.strptime(at, "%H:%M:%S.%f").time()).timestamp()
        found.append((name, round((moment - since) % 86400, 3)))
    return found


@dataclass
class Reference:
    seconds: float
    stages: list[tuple[str, float]]
    invoices: dict[str, tuple[int, int, int]]  # key (tag replaced by {tag}) → untaxed, tax, gross
    counts: dict[str, int]
    billed: set[str]
    work_items: int

    def window(self, start: str, end: str) -> float:
        at = dict(self.stages)
        return max(0.05, at[end] - at[start]) if start in at and end in at else 0.5


@dataclass
class TrialResult:
    series: str
    number: int
    kind: str
    delay: float
    killed: bool
    stage: str  # the last stage the killed run's log reached
    erp_ahead: int  # invoices in the ERP the ledger did not record as posted when the run was killed
    ledger_left: str  # the killed run's ledger: none, empty, half-made (tables, no version) or its version
    exit_code: int | None
    seconds: float
    killed_run_seconds: float
    rerun_seconds: float
    duplicates: int = 0
    items_lost: int = 0
    problems: list[str] = field(default_factory=list)
    home: str = ""

    @property
    def in_posting(self) -> bool:
        return self.killed and (self.stage == "approval-policy" or self.erp_ahead > 0)


@dataclass
class SeriesResult:
    series: str
    seed: int
    parallel: int
    calibration_seconds: float
    trials: list[TrialResult]
    seconds: float
    zygote: dict[str, Any]

    @property
    def problems(self) -> list[str]:
        return [
            f"trial {t.number} ({t.kind}, delay {t.delay:.3f} s, killed after {t.stage}): {p}"
            for t in self.trials
            for p in t.problems
        ]

    def summary(self) -> dict[str, Any]:
        kinds = Counter(t.kind for t in self.trials)
        reached = Counter(t.stage for t in self.trials if t.killed)
        times = sorted(t.seconds for t in self.trials)
        return {
            "series": self.series,
            "seed": self.seed,
            "trials": len(self.trials),
            "kills": sum(t.killed for t in self.trials),
            "kinds": dict(kinds),
            "stages_reached": dict(reached),
            "kills_in_posting": sum(t.in_posting for t in self.trials),
            "kills_erp_ahead_of_ledger": sum(t.erp_ahead > 0 for t in self.trials),
            "kills_leaving_a_half_made_ledger": sum(t.ledger_left == "half-made" for t in self.trials),
            "duplicates": sum(t.duplicates for t in self.trials),
            "items_lost": sum(t.items_lost for t in self.trials),
            "failed_trials": sum(bool(t.problems) for t in self.trials),
            "parallel": self.parallel,
            "calibration_seconds": self.calibration_seconds,
            "seconds": round(self.seconds, 1),
            "trial_seconds_median": times[len(times) // 2] if times else None,
            "trial_seconds_max": times[-1] if times else None,
            "zygote_start_seconds": self.zygote.get("start_seconds"),
        }


def kill_seed() -> int:
    return int(os.environ["KILL_SEED"]) if os.environ.get("KILL_SEED") else random.randrange(2**32)


class Series:
    """Trials of one kind of run (an export, an ERP) on one fork server."""

    def __init__(
        self,
        name: str,
        zygote: Zygote,
        erp: FilesErpReader | TrytonReader,
        workdir: Path,
        export: Callable[[Path, str], tuple[Path, list[str]]],
        say: Callable[[str], None] = print,
    ) -> None:
        self.name, self.zygote, self.erp, self.workdir, self.export, self.say = name, zygote, erp, workdir, export, say

    # one run --------------------------------------------------------------------------------------------------

    def _start(self, folder: Path, home: Path, export: Path, name: str) -> Child:
        env = {
            "TICKET_TO_INVOICE_HOME": str(home),
            "TICKET_TO_INVOICE_INPUT_DIR": str(export),
            "TICKET_TO_INVOICE_RULES_FILE": str(DEMO_RULES),
            **self.erp.env(),
        }
        return self.zygote.spawn(["run", "--json"], env, folder / f"{name}.out", folder / f"{name}.err")

    def _finish(self, child: Child) -> dict[str, Any] | None:
        ended = self.zygote.wait(child, RUN_TIMEOUT)
        if ended is None:
            self.zygote.kill(child, signal.SIGUSR1)  # its threads' stacks, into its stderr: where it hangs
            time.sleep(2)
            self.zygote.kill(child)
            self.zygote.wait(child, 30)
        return ended

    def calibrate(self) -> Reference:
        """The reference run, after one untimed run: the first posting against a fresh Prefect server pays for the
        server's own first use of its concurrency API (about 2.5 s), which no trial pays, and a calibration that
        long would draw most kill moments after the trials' runs have ended."""
        self._calibration_run("warm-up", "WARM")
        return self._calibration_run("calibration", "CAL")

    def _calibration_run(self, what: str, tag: str) -> Reference:
        folder = self.workdir / f"{self.name}-{what}"
        folder.mkdir(parents=True)
        export, _ = self.export(folder / "export", tag)
        home = folder / "home"
        child = self._start(folder, home, export, "run")
        ended = self._finish(child)
        if ended is None or ended["exit_code"] != 0:
            raise RuntimeError(f"the calibration run failed ({ended}); see {folder}/run.err")
        summary = json.loads((folder / "run.out").read_text())
        ledger = LedgerView.read(home)
        seconds = round(ended["exited_at"] - child.forked_at, 3)
        reference = Reference(
            seconds=seconds,
            stages=stages(folder / "run.err", child.forked_at),
            invoices={
                i["key"].replace(tag, "{tag}"): (i["total_minor"], i["tax_minor"], i["gross_minor"])
                for i in summary["invoices"]
            },
            counts=summary["counts"],
            billed={k.replace(tag, "{tag}") for k in ledger.billed},
            work_items=len(ledger.states),
        )
        self.say(
            f"{self.name}: calibration run {seconds:.2f} s, stages {reference.stages}, "
            f"{len(reference.invoices)} invoices, counts {reference.counts}"
        )
        return reference

    # one trial ------------------------------------------------------------------------------------------------

    def trial(self, number: int, kind: str, draw: float, reference: Reference) -> TrialResult:
        started = time.perf_counter()
        folder = self.workdir / f"{self.name}-trial-{number:03d}"
        folder.mkdir(parents=True)
        tag = f"K{number:03d}{random.Random(draw).randrange(16**4):04X}"
        export, customers = self.export(folder / "export", tag)
        home = folder / "home"

        child = self._start(folder, home, export, "killed")
        delay = self._kill_at(kind, draw, child, home, folder / "killed.err", reference)
        killed = self.zygote.kill(child)
        ended = self.zygote.wait(child, 60) or {}
        killed = killed and ended.get("signal") == signal.SIGKILL
        killed_run = round(ended.get("exited_at", time.time()) - child.forked_at, 3)
        reached = stages(folder / "killed.err", child.forked_at)
        stage = reached[-1][0] if reached else "before-flow"
        before = LedgerView.read(home)
        in_erp = self.erp.invoices(home, customers)
        erp_ahead = sum(i.key not in before.postings for i in in_erp)
        problems = []
        if ended.get("left_behind"):
            problems.append(f"processes of the killed run still running: {ended['left_behind']}")

        rerun_started = time.perf_counter()
        rerun = self._start(folder, home, export, "rerun")
        finished = self._finish(rerun)
        rerun_seconds = round(time.perf_counter() - rerun_started, 3)
        result = TrialResult(
            series=self.name,
            number=number,
            kind=kind,
            delay=round(delay, 3),
            killed=killed,
            stage=stage,
            erp_ahead=erp_ahead,
            ledger_left=before.schema,
            exit_code=(finished or {}).get("exit_code"),
            seconds=0.0,
            killed_run_seconds=killed_run,
            rerun_seconds=rerun_seconds,
            problems=problems,
            home=str(home),
        )
        self._check(result, folder, home, tag, customers, finished, reference)
        result.seconds = round(time.perf_counter() - started, 3)
        line = (
            f"{self.name} trial {number:3d}: {kind:9s} delay {result.delay:6.3f} s, "
            f"{'killed after ' + stage if killed else 'finished before the kill'}"
            f"{f', {erp_ahead} invoice(s) in the ERP ahead of the ledger' if erp_ahead else ''}"
            f"{', the ledger half-made' if before.schema == 'half-made' else ''}; "
            f"rerun exit {result.exit_code} in {rerun_seconds:.1f} s; "
            f"{'OK' if not result.problems else 'FAILED: ' + '; '.join(result.problems)}"
        )
        self.say(line)
        if not result.problems:  # Data Docs are megabytes per run: a passed trial keeps its logs and ledger only
            shutil.rmtree(home / "data-docs", ignore_errors=True)
        return result

    def _kill_at(self, kind: str, draw: float, child: Child, home: Path, log: Path, reference: Reference) -> float:
        """Wait for the kill point of this trial; the delay since the fork, in seconds."""
        if kind == "uniform":
            target = child.forked_at + draw * reference.seconds
        elif kind == "post":
            window = reference.window("approval-policy", "post")
            after = self._wait_for(child, lambda: any(s == "approval-policy" for s, _ in stages(log, child.forked_at)))
            target = after + draw * window
        elif kind == "erp-write":
            after = self._wait_for(child, lambda: self.erp.written(home), poll=0.002)
            target = after + draw * 0.04
        elif kind == "new-ledger":
            after = self._wait_for(child, (home / "ledger.db").exists, poll=0.002)
            target = after + draw * 0.3
        else:
            raise ValueError(kind)
        time.sleep(max(0.0, target - time.time()))
        return time.time() - child.forked_at

    def _wait_for(self, child: Child, condition: Callable[[], bool], poll: float = 0.01) -> float:
        """When ``condition`` became true (or the run ended first: then now)."""
        while not child.done.is_set():
            if condition():
                return time.time()
            time.sleep(poll)
        return time.time()

    def _check(
        self,
        result: TrialResult,
        folder: Path,
        home: Path,
        tag: str,
        customers: list[str],
        finished: dict[str, Any] | None,
        reference: Reference,
    ) -> None:
        problems = result.problems
        if finished is None:
            problems.append(f"the rerun did not finish in {RUN_TIMEOUT:.0f} s (its threads' stacks: rerun.err)")
            return
        errors = (folder / "rerun.err").read_text(errors="replace")
        if finished["exit_code"] != 0:
            problems.append(f"the rerun exited {finished['exit_code']}: {errors[-2000:]}")
        if "Traceback (most recent call last)" in errors:
            problems.append(f"the rerun printed a traceback: {errors[errors.index('Traceback') :][:2000]}")
        if finished.get("left_behind"):
            problems.append(f"processes of the rerun still running: {finished['left_behind']}")
        try:
            summary = json.loads((folder / "rerun.out").read_text())
        except ValueError:
            problems.append("the rerun printed no JSON summary")
            summary = {}

        ledger = LedgerView.read(home)
        invoices = self.erp.invoices(home, customers)
        per_key = Counter(i.key for i in invoices)
        twice = {k: n for k, n in per_key.items() if n > 1}
        result.duplicates += sum(n - 1 for n in twice.values())
        if twice:
            problems.append(f"ERP invoices sharing a key: {twice}")
        posted = {k for k, s in ledger.drafts.items() if s == "posted"}
        if unposted := {k: s for k, s in ledger.drafts.items() if s != "posted"}:
            problems.append(f"drafts not posted: {unposted}")
        if missing := posted - set(per_key):
            problems.append(f"posted drafts without an ERP invoice: {sorted(missing)}")
        if unknown := set(per_key) - set(ledger.postings):
            problems.append(f"ERP invoices the ledger has no posting for: {sorted(unknown)}")
        if not_posted := {i.key: i.state for i in invoices if i.state != "posted"}:
            problems.append(f"ERP invoices left in another state than posted: {not_posted}")
        for invoice in invoices:
            mine = ledger.postings.get(invoice.key)
            if mine and mine[1:] != (invoice.untaxed_minor, invoice.tax_minor, invoice.gross_minor):
                problems.append(
                    f"{invoice.key}: ledger {mine[1:]} but ERP "
                    f"{(invoice.untaxed_minor, invoice.tax_minor, invoice.gross_minor)}"
                )
        logs = Counter(w for i in invoices for w in i.work_logs)
        on_two_invoices = {w: n for w, n in logs.items() if n > 1}
        on_two_drafts = {k: d for k, d in ledger.items_on_drafts.items() if len(d) > 1}
        result.duplicates += len(on_two_invoices) + len(on_two_drafts)
        if on_two_invoices or on_two_drafts:
            problems.append(f"work billed on two invoices: ERP {on_two_invoices}, ledger {on_two_drafts}")
        parties = self.erp.parties(customers)
        if twins := {c: n for c, n in parties.items() if n > 1}:
            problems.append(f"twin parties in the ERP: {twins}")

        not_final = {k: s for k, s in ledger.states.items() if s not in FINAL_STATES}
        if not_final:
            problems.append(f"{len(not_final)} work items in no final state: {dict(Counter(not_final.values()))}")
        if ledger.leases:
            problems.append(f"leases left behind after the rerun: {ledger.leases}")
        billed = {k.replace(tag, "{tag}") for k in ledger.billed}
        lost = reference.billed - billed
        result.items_lost = len(lost) + len(not_final)
        if lost:
            problems.append(f"{len(lost)} work items the reference billed are not billed: {sorted(lost)[:5]}")
        if extra := billed - reference.billed:
            problems.append(f"{len(extra)} work items billed the reference did not bill: {sorted(extra)[:5]}")
        if len(ledger.states) != reference.work_items:
            problems.append(f"{len(ledger.states)} work items in the ledger, the reference has {reference.work_items}")
        totals = {k.replace(tag, "{tag}"): v[1:] for k, v in ledger.postings.items()}
        if totals != reference.invoices:
            problems.append(f"invoices {totals} differ from the reference's {reference.invoices}")
        if summary:
            if summary.get("counts") != reference.counts:
                problems.append(f"counts {summary.get('counts')} differ from the reference's {reference.counts}")
            report = summary.get("reconcile") or {}
            if report.get("mismatches") or report.get("duplicates"):
                problems.append(
                    f"reconcile: mismatches {report.get('mismatches')}, duplicates {report.get('duplicates')}"
                )
                result.duplicates += len(report.get("duplicates") or [])

    # a series -------------------------------------------------------------------------------------------------

    def plan(self, trials: int, seed: int, kinds: dict[str, float]) -> list[tuple[int, str, float]]:
        """(number, kind, draw in [0, 1)) per trial, all drawn from the seed before anything runs."""
        rng = random.Random(seed)
        names, weights = zip(*kinds.items(), strict=True)
        return [(n, rng.choices(names, weights)[0], rng.random()) for n in range(1, trials + 1)]

    def run(self, trials: int, kinds: dict[str, float], parallel: int = 2, seed: int | None = None) -> SeriesResult:
        seed = kill_seed() if seed is None else seed
        started = time.perf_counter()
        self.say(
            f"{self.name}: {trials} kill trials, seed {seed} (replay with KILL_SEED={seed}), "
            f"{parallel} at a time, kinds {kinds}"
        )
        reference = self.calibrate()
        plan = self.plan(trials, seed, kinds)
        if only := os.environ.get("KILL_ONLY"):
            chosen = {int(n) for n in only.split(",")}
            plan = [p for p in plan if p[0] in chosen]
        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"{self.name}-trial")
        try:
            futures = [pool.submit(self.trial, n, kind, draw, reference) for n, kind, draw in plan]
            results = [f.result() for f in futures]
        finally:  # interrupted (Ctrl-C, a timeout): the trials not started yet are not started
            pool.shutdown(wait=True, cancel_futures=True)
        return SeriesResult(
            series=self.name,
            seed=seed,
            parallel=parallel,
            calibration_seconds=reference.seconds,
            trials=results,
            seconds=time.perf_counter() - started,
            zygote=self.zygote.ready,
        )


def as_json(result: SeriesResult) -> dict[str, Any]:
    return {**result.summary(), "trial_results": [asdict(t) for t in result.trials]}
