"""Approve: a policy approves small drafts; the rest wait for a human in the Prefect UI (or the CLI).

The human answers a form on the waiting run with one decision per invoice draft (approve, reject, or decide
later) and a note for each. Every decision, automatic or not, is recorded in the ledger with who, when and why;
only approved drafts are posted, and a rejected one stays rejected until its work changes or someone approves
it (``ticket-to-invoice approve --draft KEY``).

How a run waits depends on where it runs:

- **A deployment run** (worker, UI, schedule, event) *suspends*: its process ends and the worker is free. On
  "Resume" Prefect starts the flow again from the top; the stages before approval come back from their
  persisted results (``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true`` on the worker) or, without them, are computed
  again, which changes nothing (the ledger keeps unchanged drafts as they are). The wait has no Prefect
  timeout, so the run never flips to Failed: the automation ``ticket-to-invoice: approval timed out`` (made by
  ``make serve``) ends a run that waited too long as Cancelled "Approval timed out", and its drafts stay
  pending for a later run or the CLI.
- **A run in this process** (``ticket-to-invoice run --approve manual``) pauses here, and after
  ``approval_timeout_seconds`` goes on without the undecided drafts (they stay pending).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.input.run_input import keyset_from_paused_state, run_input_subclass_from_type
from prefect.states import Paused, Running
from prefect.utilities.engine import propose_state_sync
from pydantic import Field, create_model

from billing.ledger import Ledger
from billing.models import ApprovalDecision, DraftState, InvoiceDraft
from billing.money import format_money, to_minor
from billing.settings import Settings
from rules.review import review
from rules.schema import load_rules
from tasks.stage import plural, stage

POLICY = "policy"
PAUSE_KEY = "approval"  # one wait per run: a resumed run finds its answer under this key
Decision = Literal["approve", "reject", "decide later"]


@dataclass(frozen=True)
class Held:
    """A draft the policy did not approve by itself, and why (each reason in words and numbers)."""

    draft: InvoiceDraft
    reasons: tuple[str, ...]
    content_hash: str = ""  # the draft's as the policy saw it: a decision on a draft changed since is not applied


def split_by_policy(
    settings: Settings, draft_keys: Iterable[str], now: datetime | None = None
) -> tuple[list[ApprovalDecision], list[Held]]:
    """Decisions the policy takes by itself, and the drafts held for a human with the reasons.

    ``approve=auto`` (the demo default) approves every draft; ``approve=manual`` approves a draft by itself
    only when its total is below the rules' ``approval.auto_approve_below`` for its currency. Either way, a
    draft the review queue flags (``approval.review``: unusual against the customer's history, a first
    invoice, a new service, an unusual rule) is held for a human. Drafts already decided (approved, rejected,
    or posted) in the ledger are left as they are. The drafts are read from the ledger by key: their totals,
    and their lines only where the review needs them or a human is asked.
    """
    now = now or datetime.now(UTC)
    ledger = Ledger(settings.resolved_ledger_url)
    headers = ledger.draft_headers(keys=draft_keys)
    undecided = headers[headers["state"] == DraftState.DRAFTED.value]
    approval = load_rules(settings.rules_file).approval
    flags = review(ledger, undecided, approval.review)
    auto: list[ApprovalDecision] = []
    held: dict[str, tuple[str, ...]] = {}
    for draft in undecided.itertuples():
        reasons = [flag.message for flag in flags[draft.key]]
        limit = approval.auto_approve_below.get(draft.currency)
        total = format_money(draft.total_minor, draft.currency)
        if settings.approve == "auto":
            why_approved = "approved automatically (--approve auto)"
        elif limit is not None and draft.total_minor < to_minor(limit, draft.currency):
            why_approved = f"total {total} is below {limit} {draft.currency}"
        else:
            why_approved = ""
            reasons.insert(0, f"total {total} is at or above the auto-approval threshold of {limit} {draft.currency}"
                           if limit is not None else f"no auto-approval threshold for {draft.currency} "
                           "(approval.auto_approve_below)")  # fmt: skip
        if reasons:
            held[draft.key] = tuple(reasons)
        else:
            approver = f"{POLICY}:auto" if settings.approve == "auto" else f"{POLICY}:threshold"
            auto.append(ApprovalDecision(draft_key=draft.key, approved=True, approver=approver, note=why_approved,
                                         decided_at=now))  # fmt: skip
    hashes = dict(zip(undecided["key"], undecided["content_hash"], strict=True))
    return auto, [Held(d, held[d.key], hashes[d.key])
                  for d in ledger.drafts(keys=held, rules=load_rules(settings.rules_file))]  # fmt: skip


def record(settings: Settings, decisions: Sequence[ApprovalDecision]) -> None:
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else None  # none in tests and the CLI
    Ledger(settings.resolved_ledger_url).record_decisions(decisions, flow_run_id=run_id)


# -- the form -------------------------------------------------------------------------------------------


def field_of(draft_key: str) -> str:
    """The form field of a draft: its key as an identifier (``t2i:ACME:default:2026-10:EUR:v1`` →
    ``acme_default_2026_10_eur_v1``), the same every time the form is built."""
    return re.sub(r"[^0-9a-z]+", "_", draft_key.removeprefix("t2i:").lower()).strip("_")


def headline(draft: InvoiceDraft) -> str:
    return (f"{draft.customer_name or draft.customer_id} · {draft.period} · "
            f"{format_money(draft.gross_minor, draft.currency)}")  # fmt: skip


def explain(draft: InvoiceDraft, biggest: int = 3) -> str:
    """Lines, untaxed, tax, and the biggest lines (numbered, each once) with the sentence that explains each."""
    top = list(dict.fromkeys(
        f"{format_money(line.amount_minor, draft.currency)}: {line.trace.get('explanation') or line.description}"
        for line in sorted(draft.lines, key=lambda line: -line.amount_minor)
    ))[:biggest]  # fmt: skip
    said = " ".join(f"({n}) {text}" for n, text in enumerate(top, start=1))
    return (f"{len(draft.lines)} lines, untaxed {format_money(draft.total_minor, draft.currency)} + tax "
            f"{format_money(draft.tax_minor, draft.currency)}. Biggest: {said}. Key {draft.key}")  # fmt: skip


def decision_form(held: Sequence[Held]) -> type[RunInput]:
    """The form: who decides, then per draft a decision (titled customer · period · total with tax, so the
    totals show without scrolling; described by why it is held, then its lines) and a note."""
    fields: dict[str, Any] = {
        "approver": (str, Field(title="Approver", description="Your name or e-mail: recorded with every decision.")),
    }
    for draft, reasons in ((h.draft, h.reasons) for h in held):
        name = field_of(draft.key)
        why = f"Held because: {'; '.join(reasons)}. " if reasons else ""
        fields[name] = (Decision, Field(default="decide later", title=headline(draft),
                                        description=why + explain(draft)))  # fmt: skip
        fields[f"{name}_note"] = (str, Field(default="", title=f"Note on {draft.customer_name or draft.customer_id}",
                                             description="Why: recorded with an approve or a reject."))  # fmt: skip
    return create_model("InvoiceDecisions", __base__=RunInput, **fields)


def describe(held: Sequence[Held]) -> str:
    rows = "\n".join(f"| {h.draft.customer_name or h.draft.customer_id} | {h.draft.period} | {len(h.draft.lines)} | "
                     f"{format_money(h.draft.gross_minor, h.draft.currency)} | {'; '.join(h.reasons)} |"
                     for h in held)  # fmt: skip
    return (
        f"### {len(held)} invoice draft(s) wait for your decision\n\n| customer | period | lines | total with tax "
        f"| held because |\n|---|---|---:|---:|---|\n{rows}\n\nDecide each below (approve, reject, or decide "
        "later); only approved invoices are posted. Or: `ticket-to-invoice approve --draft KEY --approver NAME`."
    )


def decisions_of(answer: RunInput, drafts: Sequence[InvoiceDraft], now: datetime) -> list[ApprovalDecision]:
    """The approver's decisions, one per draft they decided ("decide later" leaves a draft pending)."""
    given = answer.model_dump()
    decisions = []
    for draft in drafts:
        choice = given.get(field_of(draft.key), "decide later")
        if choice in ("approve", "reject"):
            decisions.append(ApprovalDecision(draft_key=draft.key, approved=choice == "approve",
                                              approver=str(given["approver"]), decided_at=now,
                                              note=str(given.get(f"{field_of(draft.key)}_note") or "")))  # fmt: skip
    return decisions


# -- waiting ---------------------------------------------------------------------------------------------


def in_a_deployment() -> bool:
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def wait_here(form: type[RunInput], timeout: float, poll_seconds: float = 2.0) -> RunInput | None:
    """Pause this run (its process waits) until it is resumed with an answer, or ``timeout`` passes.

    Like ``prefect.pause_flow_run``, but the pause has no server-side expiry, so a timeout never flips the
    run to Failed: after it, the run goes on (Running, with a message) and the undecided drafts stay pending."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run_id = context.flow_run.id
    paused = Paused(pause_key=PAUSE_KEY, message="waiting for a human to decide invoice drafts")
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    form = run_input_subclass_from_type(form)
    with get_client(sync_client=True) as client:
        state = propose_state_sync(client, paused, flow_run_id=run_id)
        if state.is_paused():
            form.save(keyset)
        deadline = time.monotonic() + timeout
        while state.is_paused() and time.monotonic() < deadline:
            time.sleep(poll_seconds)
            state = client.read_flow_run(run_id).state or state
        if state.is_running():
            return form.load(keyset)
        client.set_flow_run_state(run_id, Running(message=f"nobody decided within {timeout:.0f} s: the drafts "
                                                  "stay pending approval"), force=True)  # fmt: skip
    return None


def ask_a_human(settings: Settings, held: Sequence[Held]) -> list[ApprovalDecision]:
    """Wait for a person's decisions on ``drafts`` and record them (called from the flow: a task cannot wait).

    A decision about a draft that changed while the run waited (another run re-drafted it) is not applied."""
    if not held:
        return []
    drafts = [h.draft for h in held]
    logger = get_run_logger()
    form = decision_form(held).with_initial_data(description=describe(held))  # the approver's name is required
    for h in held:
        logger.info("waits for a human: %s, because %s", headline(h.draft), "; ".join(h.reasons))
    if in_a_deployment():  # the worker is released; "Resume" runs the flow again and lands here with the answer
        answer = suspend_flow_run(wait_for_input=form, key=PAUSE_KEY)
    else:
        timeout = min(load_rules(settings.rules_file).approval.timeout_seconds, settings.approval_timeout_seconds)
        answer = wait_here(form, timeout)
    if answer is None:
        logger.warning("nobody decided within the timeout: %d draft(s) stay pending approval", len(drafts))
        return []
    headers = Ledger(settings.resolved_ledger_url).draft_headers(keys=[d.key for d in drafts])
    current = dict(zip(headers["key"], headers["content_hash"], strict=True))
    decisions = decisions_of(answer, drafts, datetime.now(UTC))
    shown = {h.draft.key: h.content_hash for h in held}
    stale = [d.draft_key for d in decisions if current.get(d.draft_key) != shown[d.draft_key]]
    if stale:
        logger.warning("not applied, the draft changed while waiting (decide it again): %s", ", ".join(stale))
    decisions = [d for d in decisions if d.draft_key not in stale]
    record(settings, decisions)
    said = ", ".join(f"{d.draft_key} {'approved' if d.approved else 'rejected'}" for d in decisions) or "nothing"
    logger.info("%s decided: %s; %d left for later", answer.model_dump().get("approver"), said,
                len(drafts) - len(decisions) - len(stale))  # fmt: skip
    return decisions


def decide_by_policy(settings: Settings, drafts: pd.DataFrame) -> list[Held]:
    """Record the policy's own decisions on the drafts (their headers, as the draft stage returns them);
    return the drafts held for a human, with the reasons."""
    auto, human = split_by_policy(settings, drafts["key"])
    record(settings, auto)
    return human


# A resumed run gets the drafts it showed back from its persisted result, not recomputed (see tasks.stage).
approval_policy = stage(decide_by_policy, name="approval-policy", resume=True,
                        says=lambda human: f"{plural(len(human), 'draft')} wait for a human; the policy decided "
                        "the others")  # fmt: skip
