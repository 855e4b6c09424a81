"""How a billing run looks in the Prefect UI: its name, its tags, and a final state that tells the truth.

A run is named by what it bills (``2026-10 monthly``, ``ticket 4711``) and tagged ``period:2026-10``. A user's
mistake (a bad option, folder or rules file) and a refused posting end the run **Failed** with one plain
message, never Completed and never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import State
from prefect.context import FlowRunContext
from prefect.states import Failed

from billing.errors import UserFacingError


def name_of_run() -> str:
    """The name a run starts with (``flow_run_name``): the period asked for and the deployment, until the
    period is known (``label_run``)."""
    from prefect.runtime import deployment, flow_run

    asked = flow_run.parameters.get("period") or "latest period"
    return f"{asked} {deployment.name or 'run'}"


def label_run(period: str, name: str | None = None) -> None:
    """Rename the current run after what it bills and tag it with the period (no-op outside a run)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    run = context.flow_run
    name = name or f"{period} {deployment.name or 'run'}"
    tags = sorted({*run.tags, f"period:{period}"})
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, name=name, tags=tags)


class PostingsFailed(UserFacingError):
    """Some invoices were not posted (the ERP refused them, or the drafts suite did); the others stand."""

    exit_code = 1

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        failures = summary["posting_failures"]
        posted = summary["new_postings"]
        names = {i["key"]: i["customer_name"] or i["customer"] for i in summary["invoices"]}
        each = "; ".join(f"{f['draft_key']} ({names.get(f['draft_key'], '?')}): {f['error']}" for f in failures)
        super().__init__(f"{len(failures)} invoice(s) of {summary['period']} not posted: {each}. "
                         f"{posted} other(s) posted.")  # fmt: skip

    def __reduce__(self) -> tuple[Any, ...]:  # persisted with the run's state: rebuild from the summary
        return (type(self), (self.summary,))


def refused(error: UserFacingError) -> State[Any]:
    """The run's final state for a user's mistake: Failed with the message (and hint), no traceback."""
    message = f"{error} ({error.hint})" if error.hint else str(error)
    return Failed(message=message, data=error)


class QuietUserErrors(logging.Filter):
    """Drop the engine's "exited with unexpected exception" traceback when the exception is a user's mistake.

    A deployment run's engine re-raises the Failed state's exception and logs it with its traceback; the run's
    own "Finished in state Failed(...)" line already says the one message, so the traceback is only noise.
    A bug (any other exception) keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, UserFacingError)


def quiet_user_errors_in_run_logs() -> None:
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, QuietUserErrors) for f in logger.filters):
        logger.addFilter(QuietUserErrors())


quiet_user_errors_in_run_logs()


def summary_of(state: State[Any]) -> dict[str, Any]:
    """The run's summary from its final state (``return_state=True``); raises what stopped the run."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, PostingsFailed):
        return result.summary
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]
