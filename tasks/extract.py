"""Extract: read the source's work for a period and record every work item in the ledger."""

from __future__ import annotations

from dataclasses import replace

from billing.errors import ConfigurationError
from billing.ledger import Ledger
from billing.models import Scope, WorkBatch, empty_usage
from billing.secrets import block_name, required_secret
from billing.settings import Settings
from connectors.base import SourceConnector
from connectors.filedrop import FileDropSource
from connectors.redmine import RedmineSource
from rules.schema import load_rules
from tasks.stage import plural, stage


def make_source(settings: Settings) -> SourceConnector:
    if settings.source == "files":
        return FileDropSource(settings.input_dir)
    if settings.source == "redmine":
        if not settings.redmine_url:
            raise ConfigurationError("--source redmine needs TICKET_TO_INVOICE_REDMINE_URL (and the API key: "
                                     "TICKET_TO_INVOICE_REDMINE_API_KEY or the Prefect Secret block "
                                     f"{block_name('redmine-api-key')!r})")  # fmt: skip
        api_key = required_secret(settings.redmine_api_key, "redmine-api-key",
                                  variable="TICKET_TO_INVOICE_REDMINE_API_KEY",
                                  needed_for=f"the Redmine at {settings.redmine_url}")  # fmt: skip
        rules = load_rules(settings.rules_file)
        return RedmineSource(settings.redmine_url, api_key, mapping=rules.redmine,
                             customers=rules.customers, defaults=rules.customer_defaults,
                             instance=settings.redmine_instance)  # fmt: skip
    raise ConfigurationError(f"unknown source {settings.source!r}")


def resolve_period(settings: Settings) -> str:
    return settings.period or make_source(settings).default_period()


def extract_work(settings: Settings, period: str) -> WorkBatch:
    """The period's work logs and usage records, less those already billed; all of them are remembered in
    the ledger."""
    batch = make_source(settings).extract(period)
    ledger = Ledger(settings.resolved_ledger_url)
    notes = list(batch.notes)
    billed: set[str] = set()
    # One work item per natural key: a repeated id is one item (quarantined by validation as a duplicate).
    for frame, what in ((batch.worklogs, "work log"), (batch.usage, "usage record")):
        if frame.empty:
            continue
        seen = ledger.register(frame.drop_duplicates("key"), actor=f"extract:{batch.source_system}")
        billed |= set(seen.loc[~seen["process"], "key"])
        if already := int((~seen["process"]).sum()):
            notes.append(f"{already} {what}(s) already billed: skipped")
        if changed := int(seen["changed_after_billing"].sum()):
            notes.append(f"{changed} {what}(s) changed after they were billed: reported for correction")
    return replace(only_unbilled(batch, billed), notes=notes)


def only_unbilled(batch: WorkBatch, billed: set[str]) -> WorkBatch:
    """The batch less the work logs and usage records billed before (and their row problems)."""
    if not billed:
        return batch
    keep = [frame[~frame["key"].isin(billed)].reset_index(drop=True)
            for frame in (batch.worklogs, batch.usage, batch.issues)]  # fmt: skip
    return replace(batch, worklogs=keep[0], usage=keep[1], issues=keep[2])


RESOLVED_STATUSES = frozenset({"resolved", "closed", "done", "solved", "completed"})


def ticket_customer(batch: WorkBatch, ticket: str) -> str | None:
    """The customer of a ticket of the batch, or None when the batch does not know it."""
    found = batch.tickets.loc[batch.tickets["ticket_id"].astype(str) == str(ticket), "customer_id"]
    return str(found.iloc[0]) if len(found) else None


def resolved_work(batch: WorkBatch, customer: str, ticket: str = "", per_ticket: bool = False) -> WorkBatch:
    """The part of ``batch`` a run on a resolution bills: the customer's resolved tickets (``ticket``, which an
    event says is resolved, and every other one the source shows resolved or closed) and their work logs.
    Usage records and work without a ticket wait for the period's run."""
    tickets = batch.tickets
    ids = tickets["ticket_id"].astype(str)
    status = tickets["status"].astype(str).str.strip().str.lower() if "status" in tickets else ""
    resolved = tickets["resolved_at"].notna() if "resolved_at" in tickets else False
    chosen = tickets[(tickets["customer_id"].astype(str) == customer) & (resolved | status.isin(RESOLVED_STATUSES)
                                                                          | (ids == str(ticket)))]  # fmt: skip
    chosen_ids = set(chosen["ticket_id"].astype(str))
    worklogs = batch.worklogs[batch.worklogs["ticket_id"].astype(str).isin(chosen_ids)].reset_index(drop=True)
    issues = batch.issues[batch.issues["key"].isin(worklogs["key"])].reset_index(drop=True)
    return replace(batch, tickets=chosen.reset_index(drop=True), worklogs=worklogs, issues=issues,
                   usage=empty_usage(), customers=[c for c in batch.customers if c.customer_id == customer],
                   scope=Scope(customer, tuple(sorted(chosen_ids)), per_ticket))  # fmt: skip


def _extracted(batch: WorkBatch) -> str:
    usage = f", {plural(len(batch.usage), 'usage record')}" if len(batch.usage) else ""
    problems = f"; {plural(len(batch.issues), 'row problem')}" if len(batch.issues) else ""
    notes = "".join(f"; {note}" for note in batch.notes)
    return (f"read {plural(len(batch.worklogs), 'work log')}{usage} to bill for {batch.period} from "
            f"{batch.source_system} ({batch.instance}): {plural(len(batch.customers), 'customer')}, "
            f"{plural(len(batch.tickets), 'ticket')}{problems}{notes}")  # fmt: skip


extract = stage(extract_work, name="extract", says=_extracted, retries=2, resume=True)
