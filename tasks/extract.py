"""Extract: read the source's work for a period and record every work item in the ledger."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import pandas as pd

from billing.errors import ConfigurationError
from billing.ledger import Ledger
from billing.models import ISSUE_COLUMNS, WORKLOG_COLUMNS, Scope, WorkBatch, empty_usage
from billing.secrets import block_name, required_secret
from billing.settings import Settings
from connectors.base import FingerprintedSource, SourceConnector
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


def drafting_fingerprint(settings: Settings, source: SourceConnector, period: str, ledger: Ledger) -> str | None:
    """A hash of everything drafting the period reads: the source's data (when it can hash it without an
    extraction: a file drop), the rules, the ERP, this program's version and the postings of earlier periods
    (prepaid hours and caps carry over). None for a source that cannot say: its work is compared item by item."""
    if not isinstance(source, FingerprintedSource):
        return None
    try:
        program = version("ticket-to-invoice")
    except PackageNotFoundError:  # run from a checkout without installing it
        program = "unknown"
    parts = (source.fingerprint(period), load_rules(settings.rules_file).content_hash, settings.erp, program,
             str(ledger.last_posting_before(period)))  # fmt: skip
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def extract_work(settings: Settings, period: str, skip_if_settled: bool = False) -> WorkBatch:
    """The period's work logs and usage records, less those already billed; all of them are remembered in
    the ledger. ``skip_if_settled`` (a period's run): when the source, rules and history hash as when the
    period's drafts were made (``drafting_fingerprint``), nothing is read or registered, and the batch says
    ``settled``: its drafts stand (a rerun of an unchanged month in about a second)."""
    source = make_source(settings)
    ledger = Ledger(settings.resolved_ledger_url)
    fingerprint = drafting_fingerprint(settings, source, period, ledger)
    standing = ledger.drafted_from(period)
    if skip_if_settled and fingerprint is not None and standing and standing.get("fingerprint") == fingerprint:
        return _settled(source, period, fingerprint, standing)
    ledger.forget_drafted_from(period)  # items change below: until this run's drafts are saved, nothing stands
    batch = source.extract(period)
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
    timeless = _nothing_after(batch, datetime.now(UTC))
    return replace(only_unbilled(batch, billed), notes=notes, fingerprint=fingerprint if timeless else None)


def _settled(source: SourceConnector, period: str, fingerprint: str, standing: dict[str, object]) -> WorkBatch:
    """A batch without work that says so: the period's drafts of ``standing["at"]`` stand (with their notes)."""
    earlier = standing.get("notes")
    notes = [*(earlier if isinstance(earlier, list) else []),
             f"nothing new since this period's drafts of {standing.get('at')}: the same data, rules and earlier "
             "invoices (nothing was read or priced again)"]  # fmt: skip
    return WorkBatch(
        source_system=source.system, instance=str(getattr(source, "instance", "")), period=period, customers=[],
        tickets=pd.DataFrame(), worklogs=pd.DataFrame(columns=list(WORKLOG_COLUMNS)),
        issues=pd.DataFrame(columns=list(ISSUE_COLUMNS)), notes=notes, fingerprint=fingerprint, settled=True,
    )  # fmt: skip


def _nothing_after(batch: WorkBatch, now: datetime) -> bool:
    """No work, ticket date or usage day of the batch is later than ``now``: what validation judged against the
    clock (work in the future is quarantined) cannot judge differently later, so the fingerprint may stand."""
    moments = [batch.worklogs.get("started_at"), batch.tickets.get("created_at"), batch.tickets.get("resolved_at")]
    latest = [m.max() for m in moments if m is not None and len(m) and pd.api.types.is_datetime64_any_dtype(m)]
    days = pd.to_datetime(batch.usage["occurred_on"], errors="coerce") if len(batch.usage) else None
    if days is not None and days.notna().any() and days.max().date() >= now.date():
        return False
    return all(pd.isna(m) or m <= pd.Timestamp(now) for m in latest)


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
    if batch.settled:
        return (f"nothing new to bill for {batch.period} from {batch.source_system} ({batch.instance}): its data, "
                "the rules and earlier periods' invoices are as when its drafts were made")  # fmt: skip
    usage = f", {plural(len(batch.usage), 'usage record')}" if len(batch.usage) else ""
    problems = f"; {plural(len(batch.issues), 'row problem')}" if len(batch.issues) else ""
    notes = "".join(f"; {note}" for note in batch.notes)
    return (f"read {plural(len(batch.worklogs), 'work log')}{usage} to bill for {batch.period} from "
            f"{batch.source_system} ({batch.instance}): {plural(len(batch.customers), 'customer')}, "
            f"{plural(len(batch.tickets), 'ticket')}{problems}{notes}")  # fmt: skip


extract = stage(extract_work, name="extract", says=_extracted, retries=2, resume=True)
