"""Extract: read the source's work for a period and record every work item in the ledger."""

from __future__ import annotations

from dataclasses import replace

from prefect import task
from prefect.cache_policies import NO_CACHE

from billing.errors import ConfigurationError
from billing.ledger import Ledger
from billing.models import WorkBatch
from billing.settings import Settings
from connectors.base import SourceConnector
from connectors.filedrop import FileDropSource
from connectors.redmine import RedmineSource
from rules.schema import load_rules


def make_source(settings: Settings) -> SourceConnector:
    if settings.source == "files":
        return FileDropSource(settings.input_dir)
    if settings.source == "redmine":
        if not settings.redmine_url or settings.redmine_api_key is None:
            raise ConfigurationError("--source redmine needs TICKET_TO_INVOICE_REDMINE_URL and "
                                     "TICKET_TO_INVOICE_REDMINE_API_KEY")  # fmt: skip
        rules = load_rules(settings.rules_file)
        return RedmineSource(settings.redmine_url, settings.redmine_api_key.get_secret_value(), mapping=rules.redmine,
                             customers=rules.customers, defaults=rules.customer_defaults,
                             instance=settings.redmine_instance)  # fmt: skip
    raise ConfigurationError(f"unknown source {settings.source!r}")


def resolve_period(settings: Settings) -> str:
    return settings.period or make_source(settings).default_period()


def extract_work(settings: Settings, period: str) -> WorkBatch:
    """The period's work logs, less those already billed; all of them are remembered in the ledger."""
    batch = make_source(settings).extract(period)
    ledger = Ledger(settings.resolved_ledger_url)
    # One work item per natural key: a repeated id is one item (quarantined by validation as a duplicate).
    seen = ledger.register(batch.worklogs.drop_duplicates("key"), actor=f"extract:{batch.source_system}")
    todo = set(seen.loc[seen["process"], "key"])
    already = int((~seen["process"]).sum())
    changed = int(seen["changed_after_billing"].sum())
    notes = list(batch.notes)
    if already:
        notes.append(f"{already} work log(s) already billed: skipped")
    if changed:
        notes.append(f"{changed} work log(s) changed after they were billed: reported for correction")
    worklogs = batch.worklogs[batch.worklogs["key"].isin(todo)].reset_index(drop=True)
    usage = batch.usage
    if len(usage):  # usage records are work items too: billed once, whatever the reruns
        seen_usage = ledger.register(usage.drop_duplicates("key"), actor=f"extract:{batch.source_system}")
        todo |= set(seen_usage.loc[seen_usage["process"], "key"])
        if billed := int((~seen_usage["process"]).sum()):
            notes.append(f"{billed} usage record(s) already billed: skipped")
        usage = usage[usage["key"].isin(todo)].reset_index(drop=True)
    issues = batch.issues[batch.issues["key"].isin(todo)].reset_index(drop=True)
    return replace(batch, worklogs=worklogs, issues=issues, notes=notes, usage=usage)


extract = task(extract_work, name="extract", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
