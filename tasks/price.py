"""Price and draft: charge lines from the rules, then one invoice draft per customer × agreement × period
× currency, versioned so that a period already invoiced gets a supplementary invoice, never a second one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from billing.ledger import Ledger, WorkState
from billing.models import ChargeLine, DraftState, InvoiceDraft, WorkBatch
from billing.money import format_money
from billing.settings import Settings
from rules.adjustments import adjust, prior_cap_use
from rules.engine import agreement_fees, explain, milestones_due, price, quantity
from rules.retainers import balances, draw_down
from rules.schema import RuleSet, load_rules
from rules.usage import usage_lines
from tasks.extract import make_source, only_unbilled
from tasks.stage import plural, stage
from tasks.validate import check_batch


class LedgerView(Protocol):
    """What pricing and drafting read from the ledger. The run passes the ledger; the preview passes the
    same ledger (or an empty view when there is none yet), so both decide alike."""

    def billed_keys(self, keys: Iterable[str]) -> set[str]: ...

    def posted_versions(self, period: str) -> dict[tuple[str, str, str], int]: ...

    def drafts(
        self,
        period: str | None = None,
        states: Iterable[DraftState] | None = None,
        keys: Iterable[str] | None = None,
        customers: Iterable[str] | None = None,
    ) -> list[InvoiceDraft]: ...


class NoLedger:
    """A ledger that does not exist yet: nothing billed, nothing posted."""

    def billed_keys(self, keys: Iterable[str]) -> set[str]:
        return set()

    def posted_versions(self, period: str) -> dict[tuple[str, str, str], int]:
        return {}

    def drafts(
        self,
        period: str | None = None,
        states: Iterable[DraftState] | None = None,
        keys: Iterable[str] | None = None,
        customers: Iterable[str] | None = None,
    ) -> list[InvoiceDraft]:
        return []


@dataclass
class Priced:
    """What pricing decided for a batch; nothing written yet."""

    lines: pd.DataFrame  # to draft: work, usage and rule-made lines not billed before
    non_billable: pd.DataFrame  # key, rule
    held: pd.DataFrame  # key, rule
    unpriceable: pd.DataFrame  # key, reason
    rule_items: list[pd.DataFrame]  # the work items of ticket fees, agreement fees and milestones
    covered: dict[str, str]  # later work on a ticket whose fixed price was billed before → why
    notes: list[str]


def price_period(batch: WorkBatch, valid: pd.DataFrame, usage: pd.DataFrame, rules: RuleSet,
                 ledger: LedgerView) -> Priced:  # fmt: skip
    """Charge lines for the valid work logs and usage records, plus the fees and milestones due, less what
    the ledger says was billed before."""
    result = price(valid, batch.customers, rules, batch.tickets)
    work, fee_items, covered = _ticket_fees_once(ledger, batch, rules, result.lines)
    metered = usage_lines(usage, batch.customers, rules, batch.period)
    made = rule_lines(batch, rules)
    made_items = _as_items(made, batch, rules)
    made = made[~made["key"].isin(ledger.billed_keys(made["key"]))] if len(made) else made
    parts = [p for p in (work, metered, made) if len(p)]
    lines = pd.concat(parts, ignore_index=True) if len(parts) > 1 else work if not parts else parts[0]
    return Priced(lines=lines, non_billable=result.non_billable, held=result.held, unpriceable=result.unpriceable,
                  rule_items=[fee_items, made_items], covered=covered,
                  notes=milestones_of_earlier_periods(batch, rules, ledger))  # fmt: skip


def price_work(
    settings: Settings, batch: WorkBatch, valid: pd.DataFrame, usage: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Charge lines for the valid work logs and usage records; non-billable, held and unpriceable work logs
    are settled in the ledger, the fees' and milestones' work items recorded."""
    rules = load_rules(settings.rules_file)
    ledger = Ledger(settings.resolved_ledger_url)
    priced = price_period(batch, valid, batch.usage.iloc[:0] if usage is None else usage, rules, ledger)
    ledger.set_state(priced.non_billable["key"].tolist(), WorkState.NON_BILLABLE, actor="price",
                     reasons=priced.non_billable["rule"].tolist())  # fmt: skip
    ledger.set_state(priced.unpriceable["key"].tolist(), WorkState.QUARANTINED, actor="price",
                     reasons=priced.unpriceable["reason"].tolist())  # fmt: skip
    ledger.set_state(priced.held["key"].tolist(), WorkState.HELD, actor="price", reasons=priced.held["rule"].tolist())
    for items in priced.rule_items:  # each is a work item of its own, billed once whatever the reruns
        if len(items):
            ledger.register(items, actor="price:rules")
    ledger.set_state(list(priced.covered), WorkState.NON_BILLABLE, actor="price:ticket-fees",
                     reasons=list(priced.covered.values()))  # fmt: skip
    ledger.set_state(line_items(priced.lines), WorkState.PRICED, actor="price")
    batch.notes.extend(priced.notes)
    return priced.lines


def _as_items(lines: pd.DataFrame, batch: WorkBatch, rules: RuleSet) -> pd.DataFrame:
    """Rule-made lines as the ledger's work items (``fee:<agreement>:<period>``, ``milestone:<id>``,
    ``ticket-fee:<rule>:<ticket>``)."""
    if lines.empty:
        return lines
    return lines.assign(source_system="rules", instance=rules.name, period=batch.period,
                        content_hash=lines["amount_minor"].astype(str))  # fmt: skip


def _ticket_fees_once(
    ledger: LedgerView, batch: WorkBatch, rules: RuleSet, lines: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """A ticket's fixed price is a work item of its own (``ticket-fee:<rule>:<ticket>``): billed with the
    first work on the ticket; later work on it is settled as non-billable, covered by that price.
    Returns the lines to bill, the fee items, and the covered work logs with their reason."""
    if "object_type" not in lines or not (fees := lines[lines["object_type"] == "ticket_fee"]).size:
        return lines, lines.iloc[:0], {}
    billed = fees[fees["key"].isin(ledger.billed_keys(fees["key"]))]
    covered: dict[str, str] = {}
    for source, keys in zip(billed["rate_source"], billed["item_keys"], strict=True):  # one per ticket
        covered |= dict.fromkeys(keys[1:], f"{source}: covered by the ticket's fixed price, billed before")
    return lines.drop(index=billed.index), _as_items(fees, batch, rules), covered


def line_items(lines: pd.DataFrame) -> list[str]:
    """The work items the lines bill: their ``item_keys`` when they bill several, else their own key."""
    if lines.empty:
        return []
    if "item_keys" not in lines:
        return lines["key"].tolist()
    several = lines["item_keys"].notna()
    return [*lines.loc[several, "item_keys"].explode().tolist(), *lines.loc[~several, "key"].tolist()]


def rule_lines(batch: WorkBatch, rules: RuleSet) -> pd.DataFrame:
    """Lines the rules make for the period rather than the work: agreement fees and milestones due (a run on
    an event bills the milestones of its tickets; the fees wait for the period's run)."""
    fees = agreement_fees(batch.customers, rules, batch.period) if batch.scope is None else pd.DataFrame()
    parts = [fees, milestones_due(batch.tickets, batch.customers, rules, batch.period)]
    made = [p for p in parts if len(p)]
    return pd.concat(made, ignore_index=True) if made else pd.DataFrame()


def milestones_of_earlier_periods(batch: WorkBatch, rules: RuleSet, ledger: LedgerView) -> list[str]:
    """A milestone bills in the period its ticket was resolved. One resolved before this period and never
    billed (its period was run before the milestone was in the rules, or before this ledger existed) is not
    swept onto this invoice: it is named, with the period whose run bills it."""
    earlier = milestones_due(batch.tickets, batch.customers, rules, batch.period, earlier=True)
    if earlier.empty:
        return []
    unbilled = earlier[~earlier["key"].isin(ledger.billed_keys(earlier["key"]))]
    return [f"milestone {row.source_id}: its ticket {row.ticket_id} was resolved in {str(row.started_at)[:7]}, "
            f"before {batch.period}; a run of {str(row.started_at)[:7]} bills it"
            for row in unbilled.itertuples()]  # fmt: skip


def build_drafts(settings: Settings, batch: WorkBatch, lines: pd.DataFrame) -> pd.DataFrame:
    """Group charge lines into drafts and make them the period's unposted drafts in the ledger. Returns the
    drafts' headers as the ledger holds them (``DRAFT_HEADER_COLUMNS``: totals and state, no lines): what the
    later stages are handed, so Prefect never walks a period's lines."""
    ledger = Ledger(settings.resolved_ledger_url)
    rules = load_rules(settings.rules_file)
    drafts = plan_drafts(batch, lines, rules, ledger)
    scoped = {batch.scope.customer_id} if batch.scope else None  # an event run leaves other customers' drafts be
    ledger.save_drafts(batch.period, drafts, actor="draft", customers=scoped, rules_hash=rules.content_hash)
    return ledger.draft_headers(keys=[d.key for d in drafts])


def plan_drafts(batch: WorkBatch, lines: pd.DataFrame, rules: RuleSet, ledger: LedgerView) -> list[InvoiceDraft]:
    """The drafts the lines make, numbered after the period's posted versions, with caps and prepaid hours
    looking back on the invoices posted so far (of the customers they apply to: no history is read for rules
    without caps and prepaid hours)."""
    looking_back = customers_looking_back(rules, set(lines["customer_id"]) if len(lines) else set())
    history = ledger.drafts(states=[DraftState.POSTED], customers=looking_back) if looking_back else []
    return group_drafts(batch, lines, rules, ledger.posted_versions(batch.period), history)


def customers_looking_back(rules: RuleSet, customers: set[str]) -> set[str]:
    """Which of these customers' posted invoices drafting must read: those a cap or a prepaid block applies to."""
    if any(cap.customer is None for cap in rules.caps):
        return customers
    named = {cap.customer for cap in rules.caps} | {a.customer for a in rules.agreements if a.prepaid is not None}
    return customers & named


def group_drafts(
    batch: WorkBatch,
    lines: pd.DataFrame,
    rules: RuleSet,
    posted: dict[tuple[str, str, str], int],
    history: Sequence[InvoiceDraft] = (),
) -> list[InvoiceDraft]:
    """One draft per customer × agreement × currency; ``posted`` versions make the next one supplementary.
    ``history``: the invoices posted so far, which caps look back on."""
    customers = batch.customers_by_id
    drafts = []
    lines = draw_down(lines, rules, balances(rules, batch.period, history))
    ordered = lines.sort_values(["customer_id", "currency", "started_at", "source_id"])
    per_ticket = batch.scope is not None and batch.scope.per_ticket  # one invoice per ticket: v1, v2 ...
    ordered = ordered.assign(_invoice=ordered["ticket_id"].astype(str) if per_ticket else "")
    numbered: dict[tuple[str, str], int] = {}
    for (customer_id, currency, _), group in ordered.groupby(["customer_id", "currency", "_invoice"], sort=True):
        customer = customers[customer_id]
        charge_lines = tuple(
            ChargeLine(
                work_item_keys=_items(row), source_id=row["source_id"], customer_id=customer_id, period=batch.period,
                currency=currency, service_type=row["service_type"], description=text[0],
                quantity_raw=_hours(int(row["raw_seconds"])),
                quantity_billed=quantity(int(row["quantity_centi"])),
                unit_price_minor=int(row["unit_price_minor"]), amount_minor=int(row["amount_minor"]),
                trace=_trace(row, rules.name, text[1]), **_own_tax(row, customer.country, rules),
            )
            for row in group.to_dict("records")
            for text in [_texts(row, rules)]
        )  # fmt: skip
        tickets = {k: t for k, t in zip(group["key"], group["ticket_id"], strict=True) if _present(t)}
        prior = prior_cap_use(history, customer_id, currency, batch.period, rules)
        charge_lines += tuple(adjust(list(charge_lines), tickets, rules, rules.money_rounding(currency), prior))
        numbered[customer_id, currency] = numbered.get((customer_id, currency), 0) + 1
        version = posted.get((customer_id, "default", currency), 0) + numbered[customer_id, currency]
        tax = rules.taxes.for_country(customer.country)
        drafts.append(InvoiceDraft(
            customer_id=customer_id, period=batch.period, currency=currency, version=version, lines=charge_lines,
            customer_name=customer.name, customer_erp_ref=customer.erp_ref, customer_country=customer.country,
            money_rounding=rules.money_rounding(currency), tax_id=tax.id, tax_rate=tax.rate,
            tax_rounding=rules.taxes.rounding, tax_base=rules.taxes.base, tax_by=rules.taxes.computed_by,
        ))  # fmt: skip
    return drafts


def _own_tax(row: dict[str, Any], country: str | None, rules: RuleSet) -> dict[str, Any]:
    """The line's own tax when its service's tax class has a rate other than the invoice's standard one."""
    service = rules.services.get(str(row["service_type"]))
    if service is None or service.tax_class is None:
        return {}
    own, standard = rules.taxes.for_country(country, service.tax_class), rules.taxes.for_country(country)
    return {} if own.id == standard.id else {"tax_id": own.id, "tax_rate": own.rate}


def _texts(row: dict[str, Any], rules: RuleSet) -> tuple[str, str]:
    """The line's description and the sentence that explains its amount."""
    if row.get("object_type") == "usage":
        q, unit = quantity(int(row["quantity_centi"])), format_money(int(row["unit_price_minor"]), str(row["currency"]))
        amount = format_money(int(row["amount_minor"]), str(row["currency"]))
        return str(row["description"]), f"{row['description']}: {q} × {unit} = {amount} ({row['rate_source']})"
    if _present(row.get("description")):  # a line the rules made (a fee, a milestone): its own words
        amount = format_money(int(row["amount_minor"]), str(row["currency"]))
        full = format_money(int(row["rate_minor"]), str(row["currency"]))
        of = f" of {full}" if int(row["rate_minor"]) != int(row["amount_minor"]) else ""
        return str(row["description"]), f"{row['description']}: {amount}{of} ({row['rate_source']})"
    service = rules.services[row["service_type"]].name
    return _description(row, service), explain(row, service, rules)


def _items(row: dict[str, Any]) -> tuple[str, ...]:
    """The work items a line bills: several when the rules round them together, else its own."""
    keys = row.get("item_keys")
    return tuple(keys) if isinstance(keys, tuple | list) else (row["key"],)


def _hours(seconds: int) -> Decimal:
    return (Decimal(seconds) / 3600).quantize(Decimal("0.0001"), ROUND_HALF_UP)


def _present(value: Any) -> bool:
    return (
        value is not None and not (isinstance(value, float) and value != value) and value is not pd.NA and value != ""
    )


def _description(row: dict[str, Any], service_name: str) -> str:
    parts = [str(row["local_date"])[:10], service_name]
    if _present(row["ticket_id"]):
        parts.insert(1, str(row["ticket_id"]))
    if _present(row["modifier"]):
        parts.append(str(row["modifier"]).replace("_", "-"))
    if int(row.get("drawn_centi") or 0) > 0:
        parts.append("prepaid")
    elif row.get("overage") is True:
        parts.append("overage")
    if _present(row["note"]):
        parts.append(str(row["note"]))
    return " · ".join(parts)


def _trace(row: dict[str, Any], rule_set: str, explanation: str) -> dict[str, Any]:
    """Compact and enough to re-derive the amount: rate, its source, multiplier, rounding."""
    return {
        "rules": rule_set,
        "rate_minor": int(row["rate_minor"]),
        "rate_source": row["rate_source"],
        "rate_kind": row.get("rate_kind", "hourly"),
        "modifier": row["modifier"] or None,
        "multiplier_bp": int(row["multiplier_bp"]),
        "raw_seconds": int(row["raw_seconds"]),
        "billed_seconds": int(row["billed_seconds"]),
        "money_rounding": row["money_rounding"],
        "line_kind": row.get("object_type") if _present(row.get("object_type")) else "work",
        "ticket": row["ticket_id"] if _present(row.get("ticket_id")) else None,
        "agreement": row["agreement_id"] if _present(row.get("agreement_id")) else None,
        "explanation": explanation,
    } | _prepaid(row)


def _prepaid(row: dict[str, Any]) -> dict[str, Any]:
    """What a line drew from prepaid hours, or that it is overage beyond them."""
    if int(row.get("drawn_centi") or 0) > 0:
        return {"prepaid": {"agreement": row["prepaid_agreement"], "drawn_centi": int(row["drawn_centi"]),
                            "left_centi": int(row["prepaid_left_centi"])}}  # fmt: skip
    return {"overage": row["prepaid_agreement"]} if row.get("overage") is True else {}


def _priced(lines: pd.DataFrame) -> str:
    if lines.empty:
        return "nothing new to bill: no charge lines"
    totals = lines.groupby("currency")["amount_minor"].sum()
    amounts = ", ".join(format_money(int(total), str(currency)) for currency, total in totals.items())
    return f"{plural(len(lines), 'charge line')} to bill, {amounts} before adjustments and tax"


def _drafted(drafts: pd.DataFrame, listed: int = 20) -> str:
    if drafts.empty:
        return "no invoice drafts: nothing new to bill"
    each = "; ".join(f"{d.customer_name or d.customer_id} {format_money(d.gross_minor, d.currency)} "
                     f"({plural(d.line_count, 'line')}, v{d.version})"
                     for d in drafts.head(listed).itertuples())  # fmt: skip
    more = f"; and {len(drafts) - listed} more" if len(drafts) > listed else ""
    totals = drafts.groupby("currency")["gross_minor"].sum()
    gross = ", ".join(format_money(int(total), str(currency)) for currency, total in totals.items())
    return f"{plural(len(drafts), 'invoice draft')} ({gross} with tax): {each}{more}"


price_stage = stage(price_work, name="price", says=_priced, resume=True)
draft = stage(build_drafts, name="draft", says=_drafted, resume=True)


def preview(settings: Settings, period: str, now: datetime | None = None) -> dict[str, Any]:
    """What ``run`` would bill now, without writing anything: the same plain functions over the same ledger
    (read only), minus every write. Lines, drafts (supplementary versions included), and the rows that
    would be quarantined, settled as non-billable or held, with their reasons."""
    rules = load_rules(settings.rules_file)
    ledger = _read_only_ledger(settings)
    batch = make_source(settings).extract(period)
    keys = pd.concat([batch.worklogs["key"], batch.usage["key"]], ignore_index=True)
    batch = only_unbilled(batch, ledger.billed_keys(keys))
    checked = check_batch(batch, rules, now)
    priced = price_period(batch, checked.worklogs.valid, checked.usage.valid, rules, ledger)
    drafts = plan_drafts(batch, priced.lines, rules, ledger)
    unpriceable = priced.unpriceable.merge(batch.worklogs[["key", "source_id"]], on="key", how="left")
    return {
        "period": period,
        "lines": [
            {"draft": draft.key, "source_id": line.source_id, "customer": line.customer_id,
             "description": line.description, "quantity_raw": str(line.quantity_raw),
             "quantity_billed": str(line.quantity_billed), "unit_price_minor": line.unit_price_minor,
             "amount_minor": line.amount_minor, "currency": line.currency, "explanation": line.trace["explanation"]}
            for draft in drafts for line in draft.lines
        ],
        "drafts": [{"key": d.key, "customer": d.customer_id, "currency": d.currency, "version": d.version,
                    "lines": len(d.lines), "total_minor": d.total_minor, "tax_minor": d.tax_minor,
                    "gross_minor": d.gross_minor} for d in drafts],
        "non_billable": [{"key": k, "rule": r} for k, r in zip(priced.non_billable["key"],
                                                                 priced.non_billable["rule"], strict=True)]
        + [{"key": k, "rule": r} for k, r in priced.covered.items()],
        "held": [{"key": k, "rule": r} for k, r in zip(priced.held["key"], priced.held["rule"], strict=True)],
        "quarantined": [{"source_id": s, "reason": r} for outcome in (checked.worklogs, checked.usage)
                        for s, r in zip(outcome.quarantined["source_id"], outcome.quarantined["reason"], strict=True)]
        + [{"source_id": s if isinstance(s, str) else k, "reason": r}
           for k, s, r in zip(unpriceable["key"], unpriceable["source_id"], unpriceable["reason"], strict=True)],
        "notes": [*batch.notes, *priced.notes],
    }  # fmt: skip


def _read_only_ledger(settings: Settings) -> LedgerView:
    """The ledger to read, or an empty view when it does not exist yet (the preview creates nothing)."""
    url = settings.resolved_ledger_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return NoLedger()
    return Ledger(url)
