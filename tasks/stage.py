"""A stage of a flow: a Prefect task around a plain function that says what it did in business terms.

Prefect's own log line ("Finished in state Completed()") tells nobody what happened; each stage's ``says``
turns its result into one line for the run's logs (work items in, quarantined, lines, drafts with totals,
invoice numbers, failures).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.settings import get_current_settings

from tasks.retrying import worth_retrying

# Seconds this process spent in each stage's own function (not in Prefect around it): what the end-to-end
# benchmark reports per stage, and subtracts from a run's wall time to find Prefect's share.
SECONDS_IN: dict[str, float] = {}

P = ParamSpec("P")
R = TypeVar("R")


def resume_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The same stage of the same flow run: what a resumed (or retried) run finds in its persisted results."""
    return f"{context.task.name}:{context.task_run.flow_run_id}"


def resumable() -> dict[str, Any]:
    """Task options that make a stage come back Cached when its flow run starts again (resumed after an
    approval, or retried), where results persist by default (``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true``, as
    on the service's worker); elsewhere the stage simply runs again, which the ledger makes harmless."""
    if get_current_settings().results.persist_by_default:
        return {"cache_key_fn": resume_key}
    return {"cache_policy": NO_CACHE}


def stage(fn: Callable[P, R], *, name: str, says: Callable[[R], str], retries: int = 0,
          retry_delay_seconds: int = 5, resume: bool = False) -> Task[P, R]:  # fmt: skip
    """``fn`` as a task named ``name`` that logs ``says(result)``; retried ``retries`` times when worth it.
    ``resume``: a stage before the approval, whose result a resumed run reuses (``resumable``)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        SECONDS_IN[name] = SECONDS_IN.get(name, 0.0) + time.perf_counter() - started
        get_run_logger().info(says(result))
        return result

    options: dict[str, Any] = {"retries": retries, "retry_delay_seconds": retry_delay_seconds} if retries else {}
    options |= resumable() if resume else {"cache_policy": NO_CACHE}
    return task(run, name=name, retry_condition_fn=worth_retrying, **options)


def plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"
