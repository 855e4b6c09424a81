"""Deciding invoice drafts outside the UI form (``ticket-to-invoice approve``): only this project's runs.

A waiting billing run (Paused in this process, or Suspended in a deployment) shows a form with one field per
draft (``tasks.approve.decision_form``). This answers such forms, or records a decision about one draft in
the ledger directly, which also works after a run timed out (the next run posts an approved draft).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state

from billing.errors import ConfigurationError, UserFacingError
from billing.ledger import Ledger
from billing.models import ApprovalDecision, DraftState
from billing.settings import Settings
from tasks.approve import field_of

BILLING_FLOW = "ticket-to-invoice"


class NothingWaits(UserFacingError):
    exit_code = 1


def waiting_runs(client: SyncPrefectClient, run_id: str | None = None) -> list[FlowRun]:
    """Runs of the billing flow that wait for a human (never another flow's paused runs)."""
    runs = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    if run_id:
        try:
            runs.id = FlowRunFilterId(any_=[UUID(run_id)])
        except ValueError:
            raise ConfigurationError(f"--run-id {run_id!r} is not a flow run id (a UUID)") from None
    flows = FlowFilter(name=FlowFilterName(any_=[BILLING_FLOW]))
    return list(client.read_flow_runs(flow_filter=flows, flow_run_filter=runs, limit=200))


def form_fields(client: SyncPrefectClient, run: FlowRun) -> set[str]:
    """The decision fields of a waiting run's form (one per draft)."""
    try:
        schema = json.loads(client.read_flow_run_input(run.id, keyset_from_paused_state(run.state)["schema"]))
    except Exception:  # a run paused by something else, or its form not yet saved
        return set()
    return {name for name in schema.get("properties", {}) if name != "approver" and not name.endswith("_note")}


def decide(settings: Settings, approver: str, approved: bool, note: str, drafts: list[str],
           run_id: str | None = None) -> list[str]:  # fmt: skip
    """Decide ``drafts`` (or every draft waiting runs show); what was done, one line each."""
    word = "approve" if approved else "reject"
    ledger = Ledger(settings.resolved_ledger_url)
    said: list[str] = []
    with get_client(sync_client=True) as client:
        runs = waiting_runs(client, run_id)
        if run_id and not runs:
            raise NothingWaits(f"flow run {run_id} is not a billing run waiting for a decision")
        fields = {run.id: form_fields(client, run) for run in runs}
        if drafts:
            said += _record(ledger, approver, approved, note, drafts)
            states = {k: s for k, s in ledger.draft_states(_unposted_keys(ledger)).items()}
            for run in runs:  # a run whose every draft is now decided goes on and posts
                keys = {field_of(k): k for k in states if field_of(k) in fields[run.id]}
                if keys and all(states[k] != DraftState.DRAFTED for k in keys.values()):
                    answer = {f: ("approve" if states[k] == DraftState.APPROVED else "reject") for f, k in keys.items()}
                    _resume(run, answer | {"approver": approver}, said)
            return said
        if not any(fields.values()):
            raise NothingWaits("no billing run is waiting for a decision",
                               hint="see the runs in the Prefect UI, or decide one draft with --draft KEY")  # fmt: skip
        for run in runs:
            if fields[run.id]:
                answer = {"approver": approver} | {f: word for f in fields[run.id]}
                answer |= {f"{f}_note": note for f in fields[run.id]}
                _resume(run, answer, said)
    return said


def _unposted_keys(ledger: Ledger) -> list[str]:
    states = [DraftState.DRAFTED, DraftState.APPROVED, DraftState.REJECTED]
    return [d.key for d in ledger.drafts(states=states)]


def _record(ledger: Ledger, approver: str, approved: bool, note: str, keys: list[str]) -> list[str]:
    states = ledger.draft_states(keys)
    if unknown := [k for k in keys if k not in states]:
        raise ConfigurationError(f"--draft: no such invoice draft: {', '.join(unknown)}",
                                 hint="the keys are in the form of the waiting run and in `run --json`")  # fmt: skip
    if posted := [k for k in keys if states[k] == DraftState.POSTED]:
        raise ConfigurationError(f"--draft: already posted, cannot be decided again: {', '.join(posted)}")
    now = datetime.now(UTC)
    ledger.record_decisions([ApprovalDecision(draft_key=k, approved=approved, approver=approver, note=note,
                                              decided_at=now) for k in keys])  # fmt: skip
    return [f"{'approved' if approved else 'rejected'}: {k}" for k in keys]


def _resume(run: FlowRun, answer: dict[str, Any], said: list[str]) -> None:
    resume_flow_run(run.id, run_input=answer)
    said.append(f"resumed flow run {run.name} ({run.id})")
