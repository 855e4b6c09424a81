"""Approve: a policy approves small drafts; the rest wait for a human in the Prefect UI (or the CLI).

The human answers a RunInput form on the paused flow run: approver, decision, note. Every decision,
automatic or not, is recorded in the ledger with who, when and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from billing.ledger import Ledger
from billing.models import ApprovalDecision, DraftState, InvoiceDraft
from billing.money import format_money, to_minor
from billing.settings import Settings
from rules.schema import load_rules

POLICY = "policy"


class InvoiceApproval(RunInput):
    """Approve or reject the invoice drafts listed in the run's pause description."""

    approver: str = Field(description="Your name or e-mail: it is recorded with the decision.")
    decision: Literal["approve", "reject"] = Field(description="Applies to every draft waiting in this run.")
    note: str = Field(default="", description="Why (recorded in the ledger's approvals and audit log).")


def split_by_policy(
    settings: Settings, drafts: Sequence[InvoiceDraft], now: datetime | None = None
) -> tuple[list[ApprovalDecision], list[InvoiceDraft]]:
    """Decisions the policy takes by itself, and the drafts left for a human.

    ``approve=auto`` (the demo default) approves everything; ``approve=manual`` approves a draft by itself
    only when its total is below the rules' ``approval.auto_approve_below`` for its currency.
    Drafts already decided (approved, or posted) in the ledger are left as they are.
    """
    now = now or datetime.now(UTC)
    states = Ledger(settings.resolved_ledger_url).draft_states(d.key for d in drafts)
    undecided = [d for d in drafts if states.get(d.key) == DraftState.DRAFTED]
    if settings.approve == "auto":
        return [
            ApprovalDecision(
                draft_key=d.key,
                approved=True,
                approver=f"{POLICY}:auto",
                decided_at=now,
                note="approved automatically (--approve auto)",
            )
            for d in undecided
        ], []
    limits = load_rules(settings.rules_file).approval.auto_approve_below
    auto, human = [], []
    for draft in undecided:
        limit = limits.get(draft.currency)
        if limit is not None and draft.total_minor < to_minor(limit, draft.currency):
            note = f"total {format_money(draft.total_minor, draft.currency)} is below {limit} {draft.currency}"
            auto.append(
                ApprovalDecision(
                    draft_key=draft.key, approved=True, approver=f"{POLICY}:threshold", note=note, decided_at=now
                )
            )
        else:
            human.append(draft)
    return auto, human


def record(settings: Settings, decisions: Sequence[ApprovalDecision]) -> None:
    try:
        run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    except Exception:  # outside a flow (tests, CLI): no run to link
        run_id = None
    Ledger(settings.resolved_ledger_url).record_decisions(decisions, flow_run_id=run_id)


def describe(drafts: Sequence[InvoiceDraft]) -> str:
    rows = "\n".join(
        f"| `{d.key}` | {d.customer_name or d.customer_id} | {len(d.lines)} | "
        f"{format_money(d.total_minor, d.currency)} |"
        for d in drafts
    )
    return (
        "### Invoice drafts waiting for approval\n\n| key | customer | lines | total |\n|---|---|---:|---:|\n"
        f"{rows}\n\nApprove or reject them all with the form below, or run "
        "`ticket-to-invoice approve --approver NAME`."
    )


def ask_a_human(settings: Settings, drafts: Sequence[InvoiceDraft]) -> list[ApprovalDecision]:
    """Pause the flow run until someone answers the form; on timeout leave the drafts pending.

    Called from the flow itself (a task cannot pause its flow run).
    """
    if not drafts:
        return []
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    logger.info(describe(drafts))
    timeout = load_rules(settings.rules_file).approval.timeout_seconds
    try:
        answer = pause_flow_run(
            wait_for_input=InvoiceApproval.with_initial_data(description=describe(drafts), note=""),
            timeout=min(timeout, settings.approval_timeout_seconds),
            poll_interval=2,
        )
    except FlowPauseTimeout:
        logger.warning("nobody answered within the timeout: %d draft(s) stay pending approval", len(drafts))
        return []
    now = datetime.now(UTC)
    decisions = [
        ApprovalDecision(
            draft_key=d.key,
            approved=answer.decision == "approve",
            approver=answer.approver,
            note=answer.note,
            decided_at=now,
        )
        for d in drafts
    ]
    record(settings, decisions)
    return decisions


@task(name="approval-policy", cache_policy=NO_CACHE)
def approval_policy(settings: Settings, drafts: list[InvoiceDraft]) -> list[InvoiceDraft]:
    """Record the policy's own decisions; return the drafts that need a human."""
    auto, human = split_by_policy(settings, drafts)
    record(settings, auto)
    return human
