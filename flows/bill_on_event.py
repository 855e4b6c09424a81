"""Bill on an event: a ticket was resolved, so its customer's resolved work is invoiced now, not at month end.

Triggered by ``helpdesk.ticket.resolved`` (``prefect.yaml``: deployment ``bill-on-event``), for customers whose
rules say ``bill_on: resolution`` (one invoice for a burst of resolutions) or ``each_resolution`` (one per
ticket); for the others (``period_end``, the default) it bills nothing and says so. Same stages and ledger as
the period's run: the same event twice bills nothing twice, and the period's run never bills this work again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from prefect import State, flow, get_run_logger
from prefect.states import Failed

from billing.errors import ConfigurationError, UserFacingError
from billing.models import PostingFailure, PostingReceipt
from billing.settings import load_settings
from flows.run_state import PostingsFailed, label_run, refused
from flows.ticket_to_invoice import one_run_at_a_time, preflight
from rules.schema import load_rules
from tasks.approve import approval_policy, ask_a_human
from tasks.extract import extract, make_source, resolved_work, ticket_customer
from tasks.post import erp_session, post
from tasks.price import draft, price_stage
from tasks.reconcile import write_back
from tasks.validate import validate_stage


def name_of_event_run() -> str:
    from prefect.runtime import flow_run

    asked = flow_run.parameters
    return f"ticket {asked['ticket']}" if asked.get("ticket") else f"{asked.get('customer') or '?'} resolutions"


@flow(name="bill-on-event", flow_run_name=name_of_event_run, log_prints=True)
def bill_on_event(
    ticket: str = "",
    customer: str = "",
    occurred: str = "",
    event: str = "",
    window_seconds: float = 0,
    source: Literal["files", "redmine"] | None = None,
    input_dir: str | None = None,
    erp: Literal["tryton", "files"] | None = None,
    rules: str | None = None,
    approve: Literal["auto", "manual"] | None = None,
) -> dict[str, Any] | State[Any]:
    """Invoice a customer's resolved tickets now (``bill_on: resolution`` or ``each_resolution`` in the rules).

    Args:
        ticket: The resolved ticket (the event's ``t2i.ticket``).
        customer: Its customer (``t2i.customer``); empty: looked up from the ticket in the source.
        occurred: When it was resolved (ISO 8601, the event's time): picks the period billed.
        event: The event's id, for the logs.
        window_seconds: The burst window (the trigger's ``within``): the run reads the source no sooner than this
            long after ``occurred``, so every resolution the trigger folded into this run is billed by it.
        source: Where the work comes from (files or redmine). Empty: TICKET_TO_INVOICE_SOURCE, else files.
        input_dir: The file-drop export folder on the worker's machine. Empty: the bundled sample export.
        erp: Where invoices go (tryton or files). Empty: TICKET_TO_INVOICE_ERP.
        rules: The rules file on the worker's machine. Empty: the demo rules.
        approve: auto or manual, as for the period's run. Empty: TICKET_TO_INVOICE_APPROVE.
    """
    say = get_run_logger().info
    try:
        settings = load_settings(source=source, input_dir=input_dir, erp=erp, rules_file=rules, approve=approve,
                                 wait=True)  # fmt: skip
        preflight(settings)
        rule_set = load_rules(settings.rules_file)
        if customer and rule_set.bill_on(customer) == "period_end":
            return billed_at_period_end(customer, ticket)
        period = make_source(settings).period_of(moment(occurred))
        label_run(period, name=f"ticket {ticket} · {period}" if ticket else f"{customer} resolutions · {period}")
        say(f"event {event or '(none)'}: ticket {ticket or '(none)'} of {customer or '(customer unknown)'} resolved")

        wait_for_the_burst(moment(occurred), window_seconds, say)
        with one_run_at_a_time(settings, period, say):  # waits for a period's run or another event's
            batch = extract(settings, period)
            customer = customer or ticket_customer(batch, ticket) or ""
            if not customer:
                raise ConfigurationError(f"ticket {ticket!r} is not in {settings.source}'s work of {period} and "
                                         "the event names no customer: nothing billed")  # fmt: skip
            if (mode := rule_set.bill_on(customer)) == "period_end":
                return billed_at_period_end(customer, ticket)
            batch = resolved_work(batch, customer, ticket, per_ticket=mode == "each_resolution")
            validated = validate_stage(settings, batch)
            lines = price_stage(settings, batch, validated.worklogs, validated.usage)
            drafts = draft(settings, batch, lines)
            ask_a_human(settings, approval_policy(settings, drafts))
            with erp_session(settings, {int(period[:4])}, say=say) as settings:
                receipts, failures = post(settings, period)
                write_back(settings, period)
    except UserFacingError as exc:
        return refused(exc)

    summary = event_summary(period, customer, batch.scope.tickets if batch.scope else (), drafts, receipts, failures)
    if failures:
        failed = PostingsFailed(summary)
        return Failed(message=str(failed), data=failed)
    return summary


def moment(occurred: str) -> datetime:
    """The event's time (ISO 8601; a trailing Z accepted), else now."""
    if not occurred:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(occurred.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(f"occurred: {occurred!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def wait_for_the_burst(occurred: datetime, window_seconds: float, say: Callable[[str], None]) -> None:
    """Sleep until the burst window after the first resolution has passed (usually it has: a run starts a few
    seconds after its event)."""
    left = (occurred - datetime.now(UTC)).total_seconds() + window_seconds
    if left > 0:
        say(f"waiting {left:.1f} s for the rest of the burst (window {window_seconds:g} s)")
        time.sleep(left)


def billed_at_period_end(customer: str, ticket: str) -> dict[str, Any]:
    get_run_logger().info(f"{customer} is billed at period end (bill_on: period_end in the rules): nothing to do "
                          f"for ticket {ticket or '(none)'}")  # fmt: skip
    return {"customer": customer, "ticket": ticket, "bill_on": "period_end", "new_postings": 0, "invoices": []}


def event_summary(period: str, customer: str, tickets: tuple[str, ...], drafts: pd.DataFrame,
                  receipts: list[PostingReceipt], failures: list[PostingFailure]) -> dict[str, Any]:  # fmt: skip
    """What the run billed: this customer's invoices of the run (others it posted are counted, not listed)."""
    numbers = {r.draft_key: r.erp_number for r in receipts}
    return {
        "period": period,
        "customer": customer,
        "tickets": list(tickets),
        "invoices": [
            {
                "key": d.key,
                "customer": d.customer_id,
                "customer_name": d.customer_name,
                "gross_minor": int(d.gross_minor),
                "currency": d.currency,
                "erp_number": numbers.get(d.key),
            }
            for d in drafts.itertuples()
        ],
        "new_postings": sum(not r.already_existed for r in receipts),
        "posting_failures": [f.model_dump() for f in failures],
    }
