"""Validate: the data-quality gate. Every entity of a batch goes through its suite (rules/suites/); failing
work logs and usage records are quarantined in the ledger with their reasons and retried on the next run;
the rest go on. Each run leaves GX Data Docs under ``$HOME/data-docs/<run>/`` and a summary artifact."""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from billing.ledger import Ledger, WorkState
from billing.models import WorkBatch
from billing.settings import Settings
from rules.quality import (
    Outcome,
    gate,
    summary_markdown,
    summary_table,
    validate_customers,
    validate_tickets,
    validate_usage,
    validate_worklogs,
    write_data_docs,
)
from rules.schema import RuleSet, load_rules
from tasks.stage import plural, stage


@dataclass
class Checked:
    """Every suite's outcome for one batch (nothing written yet)."""

    customers: Outcome
    tickets: Outcome
    worklogs: Outcome
    usage: Outcome

    @property
    def all(self) -> list[Outcome]:
        return [self.customers, self.tickets, self.worklogs, self.usage]


def _customer_problems(batch: WorkBatch, customers: Outcome) -> dict[str, str]:
    """Why each unusable customer is unusable: what the connector found, then what the suite found."""
    found = _reasons(customers, "customer")
    return found | batch.customer_problems


def _reasons(outcome: Outcome, what: str) -> dict[str, str]:
    pairs = zip(outcome.quarantined["key"], outcome.quarantined["reason"], strict=True)
    return {key: f"{what} {key!r} is unusable: {reason}" for key, reason in pairs}


def check_batch(batch: WorkBatch, rules: RuleSet, now: datetime | None = None) -> Checked:
    """Run every suite on a batch against what it and the rules know (writes nothing)."""
    now = now or datetime.now(UTC)
    customers = validate_customers(batch.customers)
    problems = _customer_problems(batch, customers)
    usable = [c.customer_id for c in batch.customers if c.customer_id not in problems]
    # A ticket of an unusable customer is no broken ticket: its work logs carry the customer's problem.
    tickets = validate_tickets(batch.tickets, [c.customer_id for c in batch.customers] + list(problems), now)
    ticket_problems = _reasons(tickets, "ticket")
    worklogs = validate_worklogs(
        batch.worklogs,
        batch.issues,
        known_customers=usable,
        customer_problems=problems,
        known_services=list(rules.services),
        known_tickets=[t for t in batch.tickets["ticket_id"].tolist() if t not in ticket_problems],
        now=now,
        period=batch.period,
        ticket_problems=ticket_problems,
        day_zones={c.customer_id: c.timezone for c in batch.customers} if batch.days_only else None,
    )
    usage = validate_usage(batch.usage, usable, list(rules.usage), batch.period, now, customer_problems=problems)
    return Checked(customers=customers, tickets=tickets, worklogs=worklogs, usage=usage)


@dataclass
class Validated:
    """What passed the gate: the rows to price."""

    worklogs: pd.DataFrame
    usage: pd.DataFrame
    data_docs: Path | None = None
    outcomes: list[Outcome] = field(default_factory=list)


def _run_name(batch: WorkBatch, now: datetime) -> str:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    tag = context.flow_run.name if context and context.flow_run else uuid.uuid4().hex[:6]
    return f"{now:%Y%m%dT%H%M%SZ}-{batch.period}-{tag}"


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _publish(outcomes: list[Outcome], docs: Path | None, batch: WorkBatch) -> None:
    """Rows checked, failed per expectation and a few examples, as artifacts of the run in the Prefect UI: keyed
    by period, and by customer for an event run (so it never becomes the latest version of the period's)."""
    if not _in_prefect_run():  # outside a run an artifact would start a Prefect server of its own
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    slug, what = batch.period.replace("-", ""), batch.period
    if batch.scope is not None:
        slug += "-" + re.sub(r"[^a-z0-9]+", "-", batch.scope.customer_id.lower()).strip("-")
        what += f", {batch.scope.customer_id}'s resolved tickets"
    create_table_artifact(key=f"data-quality-{slug}", table=summary_table(outcomes),
                          description=f"Data quality of {what}: rows checked and failed per expectation")  # fmt: skip
    create_markdown_artifact(key=f"data-quality-examples-{slug}", markdown=summary_markdown(outcomes, docs),
                             description=f"Data quality of {what}: failing rows, examples, Data Docs")  # fmt: skip


def prune_data_docs(folder: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recent runs' Data Docs (about 4 MB each: GX copies its styles)."""
    runs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name) if folder.is_dir() else []
    removed = runs[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def validate_batch(settings: Settings, batch: WorkBatch, now: datetime | None = None) -> Validated:
    """Validate every entity; quarantine failing work logs and usage in the ledger (nothing is lost), write
    the Data Docs and the summary artifact, then stop the run if a suite failed more than
    ``max_failure_rate`` of its rows."""
    now = now or datetime.now(UTC)
    ledger = Ledger(settings.resolved_ledger_url)
    checked = check_batch(batch, load_rules(settings.rules_file), now)
    for outcome in (checked.worklogs, checked.usage):
        ledger.set_state(
            outcome.quarantined["key"].tolist(),
            WorkState.QUARANTINED,
            actor="validate",
            reasons=outcome.quarantined["reason"].tolist(),
            details=[{"failed": d, "suite": outcome.suite} for d in outcome.quarantined["details"]],
        )
    docs = None
    if batch.scope is None or any(len(o.quarantined) for o in checked.all):
        # An event run's clean ticket gets none: a site per ticket would cost a quarter second of its latency
        # and push the period runs' Data Docs out of the ``data_docs_keep`` most recent.
        docs = write_data_docs(checked.all, settings.home / "data-docs" / _run_name(batch, now))
        prune_data_docs(settings.home / "data-docs", settings.data_docs_keep)
    _publish(checked.all, docs, batch)
    # Judged against the whole period (earlier runs' rows too), not only what is left to do: see gate().
    period_rows = {
        outcome.suite: ledger.count_items(batch.period, batch.source_system, set(frame["object_type"]))
        for outcome, frame in ((checked.worklogs, batch.worklogs), (checked.usage, batch.usage))
    }
    gate(checked.all, settings.max_failure_rate, docs, settings.failure_rate_min_rows, period_rows)
    return Validated(worklogs=checked.worklogs.valid, usage=checked.usage.valid, data_docs=docs,
                     outcomes=checked.all)  # fmt: skip


def _validated(validated: Validated) -> str:
    quarantined = [f"{plural(len(o.quarantined), 'row')} of {o.suite}"
                   for o in validated.outcomes if len(o.quarantined)]  # fmt: skip
    where = f" (Data Docs: {validated.data_docs})" if validated.data_docs else " (no Data Docs: every row passed)"
    return (f"{plural(len(validated.worklogs), 'work log')} and {plural(len(validated.usage), 'usage record')} "
            f"passed their suites; quarantined: {', '.join(quarantined) or 'none'}{where}")  # fmt: skip


validate_stage = stage(validate_batch, name="validate", says=_validated, resume=True)
