"""`make bench`: run the benchmarks and write bench-results.json in the project root.

Each entry: ``{name, rows, seconds, peak_mb, references: {name: seconds}}`` plus what the benchmark adds.
``python -m tests.bench.run tryton`` runs only the named ones; the file keeps the other entries.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from billing.settings import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench-results.json"


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def median_of_three(work: Any) -> tuple[float, Any]:
    """The median of three timed runs after one untimed warm-up run, and the last result: the first runs over
    a million rows pay for fresh memory from the system (page faults) and cold caches, in both the code
    measured and its references, and say little about either."""
    work()
    times, result = [], None
    for _ in range(3):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return sorted(times)[1], result


def main(names: list[str]) -> None:
    from tests.bench import bench_end_to_end, bench_events, bench_faults, bench_pricing, bench_tryton, bench_validation

    benchmarks: dict[str, Callable[[], dict[str, Any]]] = {
        "pricing": bench_pricing.run,
        "tryton_posting": bench_tryton.run,
        "validation": bench_validation.run,
        "fault_trials": bench_faults.run,
        "event_to_invoice": bench_events.run,
        "end_to_end": bench_end_to_end.run,  # also end_to_end_rerun and price_stage
    }
    chosen = names or list(benchmarks)
    unknown = sorted(set(chosen) - set(benchmarks))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(benchmarks)}")
    if len(chosen) > 1:  # one process each, so each entry's peak memory is its own
        for name in chosen:
            subprocess.run([sys.executable, "-m", "tests.bench.run", name], check=True, cwd=PROJECT_ROOT)
        return
    entries = {e["name"]: e for e in json.loads(RESULTS.read_text())} if RESULTS.exists() else {}
    for name in chosen:
        print(f"bench {name} …", flush=True)
        made = benchmarks[name]()
        for entry in made.values() if "name" not in made else [made]:  # a benchmark may make several entries
            entries[entry["name"]] = entry
            print(json.dumps(entry, indent=2), flush=True)
    RESULTS.write_text(json.dumps(list(entries.values()), indent=2) + "\n")
    print(f"wrote {Path(RESULTS).relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
