"""Kill trials (tests/faults/kill_trials.py, the same code as tests/test_kill_trials.py): ``kill -9`` a run at
random points, then a rerun, on the sample export into the files ERP and on a small tagged export into an
embedded Tryton; counts what a kill must never cause (duplicates, work items lost) and what the trials did.

A third series puts tests/faults/proxy.py between the runs and Tryton, failing about 30 % of the requests
(503, dropped connections, answers lost after Tryton acted) while runs are killed too: ``faults_injected``
counts what it did. ``KILL_SEED`` replays the plan (and seeds the proxy), as in the test."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.run import peak_mb
from tests.faults.kill_trials import (
    SAMPLE,
    FilesErpReader,
    Series,
    TrytonReader,
    Zygote,
    kill_seed,
    small_export,
    zygote_environment,
)
from tests.faults.proxy import FAULTS, FaultProxy

FILES_TRIALS = 50
TRYTON_TRIALS = 10
PROXIED_TRIALS = 5
FAULT_RATE = 0.3
FILES_KINDS = {"uniform": 0.5, "post": 0.15, "erp-write": 0.2, "new-ledger": 0.15}
TRYTON_KINDS = {"uniform": 0.6, "post": 0.4}


class ProxiedTrytonReader(TrytonReader):
    """Runs talk to Tryton through the fault proxy; the checks read Tryton itself."""

    def __init__(self, proxy_url: str, database: str, user: str, password: str, tryton_url: str) -> None:
        super().__init__(tryton_url, database, user, password)
        self.proxy_url = proxy_url

    def env(self) -> dict[str, str | None]:
        return super().env() | {"TICKET_TO_INVOICE_TRYTON_URL": self.proxy_url}


def run() -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from connectors.tryton_embedded import EmbeddedTryton

    seed = kill_seed()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-faults-") as folder,
        prefect_test_harness(server_startup_timeout=120),
    ):
        work = Path(folder)
        env = zygote_environment(str(PREFECT_API_URL.value()), work / "prefect")
        with Zygote(env, work / "zygote.log") as zygote:
            files = Series("files", zygote, FilesErpReader(), work, lambda f, tag: (SAMPLE, []))
            results = [files.run(FILES_TRIALS, FILES_KINDS, parallel=2, seed=seed)]
            with EmbeddedTryton(work / "tryton", years=[2026]) as tryton:
                reader = TrytonReader(tryton.url, tryton.database, tryton.user, tryton.password)
                series = Series("tryton", zygote, reader, work, small_export)
                results.append(series.run(TRYTON_TRIALS, TRYTON_KINDS, parallel=1, seed=seed))
                with FaultProxy(tryton.url, fault_rate=FAULT_RATE, seed=seed) as proxy:
                    proxied = ProxiedTrytonReader(proxy.url, tryton.database, tryton.user, tryton.password, tryton.url)
                    series = Series("tryton-proxied", zygote, proxied, work, small_export)
                    results.append(series.run(PROXIED_TRIALS, TRYTON_KINDS, parallel=1, seed=seed))
                    faults = {k: v for k, v in proxy.counts.items() if k in FAULTS}
    seconds = time.perf_counter() - started
    summaries = [r.summary() for r in results]
    problems = [p for r in results for p in r.problems]
    return {
        "name": "fault_trials",
        "rows": sum(s["trials"] for s in summaries),
        "seconds": round(seconds, 1),
        "peak_mb": peak_mb(),
        "references": {},
        "seed": seed,
        "trials": sum(s["trials"] for s in summaries),
        "kills": sum(s["kills"] for s in summaries),
        "kills_in_posting": sum(s["kills_in_posting"] for s in summaries),
        "kills_erp_ahead_of_ledger": sum(s["kills_erp_ahead_of_ledger"] for s in summaries),
        "faults_injected": sum(faults.values()),
        "faults": faults,
        "duplicates": sum(s["duplicates"] for s in summaries),
        "items_lost": sum(s["items_lost"] for s in summaries),
        "failed_trials": sum(s["failed_trials"] for s in summaries),
        "problems": problems[:20],
        "series": summaries,
    }
