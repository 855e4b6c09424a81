"""The whole flow on a file-drop export of 50,000 good work logs and over 10,000 fuzzed bad ones (plus bad usage,
tickets and customers), then an unchanged rerun (issue 10, item 6).

No traceback; every bad row quarantined with a reason naming its file, row and field; every good row billed or
non-billable; the counts add up; the rerun posts nothing and passes the failure-rate gate.

The export is drawn from one seed (tests/faults/fuzz_rows.py), printed with the result: replay a failure with
``FUZZ_SEED=<seed>`` (and ``FUZZ_GOOD`` / ``FUZZ_BAD`` for a smaller export while debugging). The period is
this month (last month on its first two days), so the same seed on another day draws other instants.

Wall time on this 2-core machine: 2 to 4 minutes, by the load of the other workers (first run 73–123 s: draft
10–40 s, the approval-policy task 24–41 s of which 4 s is the policy and the ledger, the rest Prefect handling
the task's 40 drafts of 44,000 lines; rerun 33–47 s).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billing.ledger import Ledger
from billing.settings import Settings
from flows.ticket_to_invoice import ticket_to_invoice
from tests.faults.fuzz_rows import Expected, mismatches, write_export

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
GOOD = int(os.environ.get("FUZZ_GOOD") or 50_000)
BAD = int(os.environ.get("FUZZ_BAD") or 10_500)


def _shown(problems: list[str], limit: int = 30) -> str:
    return "\n".join(problems[:limit]) + (f"\n... and {len(problems) - limit} more" if len(problems) > limit else "")


@pytest.fixture
def fuzzed(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Expected, Callable[[], Any]]:
    monkeypatch.setenv("TICKET_TO_INVOICE_HOME", str(home))
    print(f"\nfuzzed export: FUZZ_SEED={SEED} FUZZ_GOOD={GOOD} FUZZ_BAD={BAD}")
    started = time.perf_counter()
    expected = write_export(tmp_path / "export", SEED, good=GOOD, bad=BAD)
    faults: Counter[str] = Counter()
    for kinds, n in expected.kinds.items():
        faults.update({kind: n for kind in kinds.split("+")})
    two = sum(n for kinds, n in expected.kinds.items() if "+" in kinds)
    print(f"generated in {time.perf_counter() - started:.1f} s: period {expected.period}, files {expected.formats}, "
          f"{len(expected.good)} good and {len(expected.bad)} bad work items ({two} with two faults), "
          f"{len(expected.outside)} of other periods; faults: {dict(sorted(faults.items()))}")  # fmt: skip

    def run() -> dict[str, Any]:
        return ticket_to_invoice(period=expected.period, input_dir=str(tmp_path / "export"), erp="files",
                                 rules=str(expected.rules))  # fmt: skip

    return expected, run


def test_fuzzed_rows_are_quarantined_with_file_row_and_field_and_a_rerun_posts_nothing(
    fuzzed: tuple[Expected, Callable[[], dict[str, Any]]], home: Path
) -> None:
    expected, run = fuzzed
    bad_worklogs = sum(1 for b in expected.bad.values() if b.file.startswith("worklogs"))
    assert bad_worklogs >= min(10_000, BAD), "the export must hold at least 10,000 bad work logs"

    started = time.perf_counter()
    first = run()
    print(f"first run: {time.perf_counter() - started:.1f} s, counts {first['counts']}, "
          f"{first['new_postings']} invoices posted")  # fmt: skip

    ledger = Ledger(Settings(home=home).resolved_ledger_url)
    items = ledger.work_items(expected.period)
    problems = mismatches(expected, items)
    assert not problems, f"seed {SEED}: {len(problems)} rows not as expected:\n{_shown(problems)}"
    # Counts add up: every work item is counted once, in one final state.
    assert sum(first["counts"].values()) == first["work_items_total"] == len(items)
    assert len(items) == len(expected.good) + len(expected.bad)
    assert first["counts"]["quarantined"] == len(expected.bad)
    assert first["counts"]["billed"] + first["counts"]["non_billable"] == len(expected.good)
    assert first["counts"]["pending_approval"] == first["counts"]["pending_posting"] == 0
    # Thousands of quarantined rows: the answer lists the first 100 and counts the rest (the ledger has them all).
    assert len(first["quarantined"]) == 100 and all(q["reason"] for q in first["quarantined"])
    assert len(first["quarantined"]) + first["omitted"]["quarantined"] == len(expected.bad)
    assert first["new_postings"] == len(first["invoices"]) > 0 and not first["posting_failures"]

    # The same export again: nothing new is posted, the gate (judging the period's rows) lets it through.
    # Until the gate judges the period's rows rather than those still to do, this rerun stops there: the 10,700
    # quarantined rows it retries are 60 % of its worklogs suite and all of its usage suite.
    started = time.perf_counter()
    second = run()
    print(f"rerun: {time.perf_counter() - started:.1f} s, counts {second['counts']}")
    assert second["new_postings"] == 0
    assert second["counts"] == first["counts"]
    assert mismatches(expected, ledger.work_items(expected.period)) == []
    assert [(i["key"], i["erp_number"], i["total_minor"]) for i in second["invoices"]] == [
        (i["key"], i["erp_number"], i["total_minor"]) for i in first["invoices"]
    ]
    assert second["reconcile"]["mismatches"] == [] and second["reconcile"]["duplicates"] == []
