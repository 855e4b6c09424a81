"""``end_to_end``, ``end_to_end_rerun`` and ``price_stage`` (issue 12): a generated month (tests/bench/
generated_month.py: N/200 customers in EUR, USD and GBP, after-hours, weekend and non-billable work, 0.5 % bad
rows) billed by the ticket-to-invoice flow into the files ERP, against a running Prefect server.

The server is started first (its start-up reported apart, as ``make serve`` has it running); the flow runs in a
fresh process of its own (``end_to_end_child``) whose imports are done before the clock starts, as on the
service's warm worker, so its peak memory is the run's. Then the same period again, nothing new. Reported per
run: the wall time, each stage's own time (in our functions), Prefect's share (the rest of the wall time), the
counts, and the invoices' totals per currency, which must be the same at every size for the same month
(``same_month_checked``). ``T2I_BENCH_E2E_ROWS`` (default 1000000) sets the size; 100,000 is run as a reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from billing.processes import free_port
from billing.settings import PROJECT_ROOT
from tests.bench.run import median_of_three, peak_mb

RULES = PROJECT_ROOT / "tests" / "bench" / "generated-rules.yaml"
PERIOD = "2026-10"
BIN = Path(sys.executable).parent


@contextmanager
def prefect_server(root: Path) -> Iterator[tuple[str, float]]:
    """A Prefect server of its own on 127.0.0.1; its API URL and how long it took to answer."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false"}  # fmt: skip
    started = time.perf_counter()
    log = (root / "server.log").open("wb")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError((root / "server.log").read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        yield api, time.perf_counter() - started
    finally:
        os.killpg(server.pid, 2)
        server.wait(timeout=60)
        log.close()


def bill(api: str, export: Path, home: Path) -> dict[str, Any]:
    """The month billed twice by ``end_to_end_child`` in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TICKET_TO_INVOICE_"))}
    env |= {"PREFECT_API_URL": api, "TICKET_TO_INVOICE_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)}
    out = home.parent / f"{home.name}.json"
    subprocess.run([sys.executable, "-m", "tests.bench.end_to_end_child", str(export), str(RULES), PERIOD, str(out)],
                   env=env, check=True, cwd=PROJECT_ROOT)  # fmt: skip
    return json.loads(out.read_text())


def month(root: Path, rows: int) -> tuple[Path, Any]:
    from tests.bench.generated_month import write_month

    folder = root / f"month-{rows}"
    return folder, write_month(folder, rows, period=PERIOD)


def price_stage(export: Path) -> dict[str, Any]:
    """The engine, then the engine and drafting, on the month's valid work logs (no ledger: nothing posted)."""
    from billing.settings import load_settings
    from rules.engine import price
    from rules.schema import load_rules
    from tasks.extract import make_source
    from tasks.price import NoLedger, draft_book
    from tasks.validate import check_batch

    settings = load_settings(input_dir=str(export), rules_file=str(RULES))
    rules = load_rules(RULES)
    batch = make_source(settings).extract(PERIOD)
    valid = check_batch(batch, rules).worklogs.valid
    engine, _ = median_of_three(lambda: price(valid, batch.customers, rules, batch.tickets))

    def engine_and_drafting() -> Any:
        lines = price(valid, batch.customers, rules, batch.tickets).lines
        return draft_book(batch, lines, rules, NoLedger().posted_versions(PERIOD))

    seconds, book = median_of_three(engine_and_drafting)
    return {"seconds": seconds, "engine_seconds": engine, "rows": len(valid), "lines": len(book.lines),
            "drafts": len(book)}  # fmt: skip


def run() -> dict[str, dict[str, Any]]:
    rows = int(os.environ.get("T2I_BENCH_E2E_ROWS", "1000000"))
    root = Path(tempfile.mkdtemp(prefix="t2i-bench-e2e-"))
    try:
        sizes = sorted({100_000, rows})
        facts = {n: month(root, n) for n in sizes}
        with prefect_server(root) as (api, server_seconds):
            runs = {n: bill(api, facts[n][0], root / f"home-{n}") for n in sizes}
        priced = price_stage(facts[rows][0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    big = runs[rows]
    checked = {n: _checked(runs[n], facts[n][1]) for n in sizes}
    entries = {
        "end_to_end": {
            "name": "end_to_end",
            "rows": rows,
            "seconds": big["first"]["seconds"],
            "peak_mb": big["peak_mb"],
            "stages": big["first"]["stages"],
            "prefect_share": big["first"]["prefect_share"],
            "imports_seconds": big["imports_seconds"],
            "server_start_seconds": round(server_seconds, 2),
            "counts": big["first"]["counts"],
            "invoices": big["first"]["invoices"],
            "same_month_checked": checked,
            "references": {
                "engine_only": round(priced["engine_seconds"], 3),
                **{f"end_to_end_{n}": runs[n]["first"]["seconds"] for n in sizes if n != rows},
            },
            "by_size": {
                str(n): {
                    "seconds": runs[n]["first"]["seconds"],
                    "peak_mb": runs[n]["peak_mb"],
                    "rerun_seconds": runs[n]["rerun"]["seconds"],
                    "stages": runs[n]["first"]["stages"],
                }
                for n in sizes
            },
            "what": "a generated month into the files ERP, --approve auto, against a running Prefect server; the "
            "flow's wall time in a warm process (imports and the server's start-up apart); targets: <= 20 s and "
            "<= 2 GB at 1M, Prefect's share <= 15 %",
        },
        "end_to_end_rerun": {
            "name": "end_to_end_rerun",
            "rows": rows,
            "seconds": big["rerun"]["seconds"],
            "peak_mb": big["peak_mb"],
            "stages": big["rerun"]["stages"],
            "prefect_share": big["rerun"]["prefect_share"],
            "references": {"end_to_end": big["first"]["seconds"]},
            "what": "the same period again, nothing new; target <= 5 s at 1M",
        },
        "price_stage": {
            "name": "price_stage",
            "rows": priced["rows"],
            "seconds": round(priced["seconds"], 3),
            "peak_mb": peak_mb(),
            "lines": priced["lines"],
            "drafts": priced["drafts"],
            "references": {"engine_only": round(priced["engine_seconds"], 3)},
            "what": "the pricing engine and drafting (draft_book: lines, descriptions, taxes, totals) over the "
            "month's valid work logs, median of three; target <= 1.5 s at 1M",
        },
    }
    return entries


def _checked(run: dict[str, Any], facts: Any) -> dict[str, Any]:
    """The run's counts against what the generator wrote: every good row billed or non-billable, every bad
    one quarantined, nothing left pending, and reconcile clean."""
    counts = run["first"]["counts"]
    problems = []
    if counts["quarantined"] != facts.bad_rows:
        problems.append(f"quarantined {counts['quarantined']}, generated {facts.bad_rows} bad rows")
    if counts["non_billable"] != facts.non_billable:
        problems.append(f"non-billable {counts['non_billable']}, generated {facts.non_billable}")
    if counts["billed"] != facts.billable:
        problems.append(f"billed {counts['billed']}, generated {facts.billable} billable")
    if counts["pending_approval"] or counts["pending_posting"]:
        problems.append(f"left pending: {counts}")
    if run["first"]["reconcile_problems"]:
        problems.append(f"reconcile: {run['first']['reconcile_problems']}")
    if run["rerun"]["new_postings"]:
        problems.append(f"the rerun posted {run['rerun']['new_postings']} invoices")
    return {"ok": not problems, "problems": problems}
