"""Validate: the data-quality gate. Failing rows are quarantined with their reasons; the rest go on."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from billing.ledger import Ledger, WorkState
from billing.models import WorkBatch
from billing.settings import Settings
from rules.quality import Outcome, validate_worklogs
from rules.schema import RuleSet, load_rules


def check_worklogs(batch: WorkBatch, rules: RuleSet, now: datetime | None = None) -> Outcome:
    """Run the work-log suite on a batch against what it and the rules know (writes nothing)."""
    usable = [c.customer_id for c in batch.customers if c.customer_id not in batch.customer_problems]
    return validate_worklogs(
        batch.worklogs,
        batch.issues,
        known_customers=usable,
        customer_problems=batch.customer_problems,
        known_services=list(rules.services),
        known_tickets=batch.tickets["ticket_id"].tolist(),
        now=now or datetime.now(UTC),
    )


def validate_work(settings: Settings, batch: WorkBatch, now: datetime | None = None) -> pd.DataFrame:
    """The valid work logs of the batch; invalid ones are quarantined in the ledger."""
    outcome = check_worklogs(batch, load_rules(settings.rules_file), now)
    Ledger(settings.resolved_ledger_url).set_state(
        outcome.quarantined["key"].tolist(),
        WorkState.QUARANTINED,
        actor="validate",
        reasons=outcome.quarantined["reason"].tolist(),
        details=[{"failed": d} for d in outcome.quarantined["details"]],
    )
    return outcome.valid


validate = task(validate_work, name="validate", cache_policy=NO_CACHE)
