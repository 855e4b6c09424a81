"""extract → validate → price → draft → await approval → post → reconcile, for one billing period."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any, Literal

from prefect import State, flow, get_run_logger
from prefect.states import Failed
from pydantic import Field

from billing.errors import UserFacingError
from billing.ledger import Ledger
from billing.settings import Settings, check_home, load_settings
from flows.run_state import PostingsFailed, label_run, name_of_run, refused
from rules.schema import load_rules
from tasks.approve import approval_policy, ask_a_human
from tasks.extract import extract, make_source, resolve_period
from tasks.post import erp_session, post
from tasks.price import draft, price_stage, standing_drafts
from tasks.reconcile import period_summary, publish, reconcile, write_back
from tasks.validate import validate_stage

# No pattern here: a bad period is refused by the flow's own first step with one clear message, not by pydantic.
Period = Annotated[str | None, Field(examples=["2026-10"])]


@flow(name="ticket-to-invoice", flow_run_name=name_of_run, log_prints=True)
def ticket_to_invoice(
    period: Period = None,
    source: Literal["files", "redmine"] | None = None,
    input_dir: str | None = None,
    erp: Literal["tryton", "files"] | None = None,
    rules: str | None = None,
    approve: Literal["auto", "manual"] | None = None,
    wait: bool | None = None,
    lines: bool | None = None,
) -> dict[str, Any] | State[Any]:
    """Bill one period's work: every work item ends billed, non-billable by a named rule, or quarantined.

    A run with a posting the ERP refused ends Failed, naming the invoice and the reason (the others stay
    posted). Parameters left empty come from settings (environment, config file, defaults).

    Args:
        period: The month to bill, YYYY-MM (e.g. 2026-10). Empty: the export's own period (file drop) or last
            month (Redmine).
        source: Where the work comes from: files (a file-drop export folder) or redmine. Empty:
            TICKET_TO_INVOICE_SOURCE, else files.
        input_dir: The file-drop export folder, on the worker's machine. Empty: the bundled sample export.
        erp: Where invoices go: tryton (TICKET_TO_INVOICE_TRYTON_URL, else an embedded Tryton) or files (JSON +
            CSV under the home).
        rules: The pricing and approval rules file (YAML), on the worker's machine. Empty: the demo rules.
        approve: auto approves every draft; manual sends drafts at or above the rules' threshold (and any the
            review queue flags) to a human in this UI.
        wait: When another run of this period and ERP is in progress: wait for it (true), or stop at once and
            bill nothing (false).
        lines: The run's result lists every invoice's lines and every quarantined, non-billable and held item
            (true), or not (false). Empty: only for a period with at most 2,000 of them.
    """
    try:
        settings = load_settings(period=period, source=source, input_dir=input_dir, erp=erp, rules_file=rules,
                                 approve=approve, wait=wait)  # fmt: skip
        preflight(settings)  # a bad option, folder or rules file stops here, before anything is written
        period = resolve_period(settings)
        label_run(period)
        say = get_run_logger().info

        with one_run_at_a_time(settings, period, say):  # per period and ERP, across processes: a second run waits
            batch = extract(settings, period, skip_if_settled=True)
            if batch.settled:  # its data, rules and history as when its drafts were made: they stand
                drafts = standing_drafts(settings, period)
            else:
                validated = validate_stage(settings, batch)  # .worklogs and .usage passed their suites
                priced = price_stage(settings, batch, validated.worklogs, validated.usage)
                drafts = draft(settings, batch, priced)  # claims its work items: never on two drafts
            for_a_human = approval_policy(settings, drafts)
            ask_a_human(settings, for_a_human)
            with erp_session(settings, {int(period[:4])}, say=say) as settings:
                receipts, failures = post(settings, period)
                written_back = write_back(settings, period)
                report = reconcile(settings, period)
    except UserFacingError as exc:
        return refused(exc)  # Failed, with the one clear message (no traceback in the run's logs)

    summary = period_summary(settings, period, sum(not r.already_existed for r in receipts), failures, lines=lines)
    summary["reconcile"] = report.as_dict()
    summary["write_back"] = written_back
    summary["notes"] = batch.notes
    publish(summary, report)
    if failures:
        failed = PostingsFailed(summary)
        return Failed(message=str(failed), data=failed)
    return summary


def one_run_at_a_time(settings: Settings, period: str, say: Callable[[str], None]) -> AbstractContextManager[Any]:
    """The lease on ``billing:<period>:<erp>`` in the ledger, held from extract to reconcile."""
    return Ledger(settings.resolved_ledger_url).lock(
        f"billing:{period}:{settings.erp}", purpose=f"a billing run of {period} into {settings.erp}",
        wait=settings.wait, timeout=settings.lock_wait_seconds, say=say,
    )  # fmt: skip


def preflight(settings: Settings) -> None:
    """Check the home, the rules and the source before a run, so mistakes are reported plainly."""
    check_home(settings)
    load_rules(settings.rules_file)
    make_source(settings).check()
