"""The flow run of ``bench_end_to_end``, in a process of its own: ``python -m tests.bench.end_to_end_child EXPORT
RULES PERIOD OUT.json`` with ``PREFECT_API_URL`` and ``TICKET_TO_INVOICE_HOME`` set. Imports first (as the
service's warm worker has them), then the period billed, then billed again with nothing new."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def main(export: str, rules: str, period: str, out: str) -> None:
    started = time.perf_counter()
    from flows.warm import warm_up

    warm_up()
    from flows.ticket_to_invoice import ticket_to_invoice
    from rules.quality import load_suite
    from tasks.stage import SECONDS_IN

    for suite in ("worklogs", "usage", "customers", "drafts"):  # Great Expectations' first use, as a worker has had
        load_suite(suite)
    imports = time.perf_counter() - started

    def once() -> dict[str, Any]:
        SECONDS_IN.clear()
        began = time.perf_counter()
        summary = ticket_to_invoice(period=period, input_dir=export, erp="files", rules=rules, approve="auto")
        wall = time.perf_counter() - began
        if not isinstance(summary, dict):
            raise SystemExit(f"the run did not complete: {summary}")
        ours = sum(SECONDS_IN.values())
        totals: dict[str, int] = {}
        for invoice in summary["invoices"]:
            totals[invoice["currency"]] = totals.get(invoice["currency"], 0) + int(invoice["gross_minor"])
        reconcile = summary["reconcile"]
        return {
            "seconds": round(wall, 2),
            "stages": {name: round(seconds, 2) for name, seconds in SECONDS_IN.items()},
            "prefect_share": round(max(wall - ours, 0.0) / wall, 3),
            "counts": summary["counts"],
            "new_postings": summary["new_postings"],
            "invoices": {"count": len(summary["invoices"]), "gross_minor_by_currency": totals},
            "reconcile_problems": len(reconcile["mismatches"])
            + len(reconcile["duplicates"])
            + len(reconcile["unbilled"]),
            "summary_bytes": len(json.dumps(summary, default=str)),
        }

    first = once()
    rerun = once()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"imports_seconds": round(imports, 2), "peak_mb": round(peak, 1),
                                     "first": first, "rerun": rerun}))  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:5])
