"""Price and draft: charge lines from the rules, then one invoice draft per customer × agreement × period
× currency, versioned so that a period already invoiced gets a supplementary invoice, never a second one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from billing.draft_book import (
    HEADER_COLUMNS,
    LINE_COLUMNS,
    SEPARATOR,
    DraftBook,
    centi_text,
    charge_line,
    hours_text,
    present,
    row_of,
)
from billing.ledger import Ledger, WorkState
from billing.ledger.store import UNPOSTED_DRAFT_STATES
from billing.models import DraftState, InvoiceDraft, WorkBatch, draft_key
from billing.money import Rounding, format_money
from billing.settings import Settings
from rules.adjustments import adjust, prior_cap_use
from rules.engine import agreement_fees, milestones_due, price
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
    book = plan_book(batch, lines, rules, ledger)
    scoped = {batch.scope.customer_id} if batch.scope else None  # an event run leaves other customers' drafts be
    made_from = ({"fingerprint": batch.fingerprint, "notes": batch.notes, "at": datetime.now(UTC).isoformat()}
                 if batch.fingerprint and not batch.scope else None)  # fmt: skip
    ledger.save_drafts(batch.period, book, actor="draft", customers=scoped, rules_hash=rules.content_hash,
                       drafted_from=made_from)  # fmt: skip
    return ledger.draft_headers(keys=book.keys)


def standing_drafts(settings: Settings, period: str) -> pd.DataFrame:
    """The period's unposted drafts' headers: what ``build_drafts`` returns when nothing it reads has changed."""
    return Ledger(settings.resolved_ledger_url).draft_headers(period, states=UNPOSTED_DRAFT_STATES)


def plan_drafts(batch: WorkBatch, lines: pd.DataFrame, rules: RuleSet, ledger: LedgerView) -> list[InvoiceDraft]:
    """``plan_book``'s drafts as ``InvoiceDraft``s, each line with its explanation."""
    return plan_book(batch, lines, rules, ledger).drafts(rules)


def plan_book(batch: WorkBatch, lines: pd.DataFrame, rules: RuleSet, ledger: LedgerView) -> DraftBook:
    """The drafts the lines make, numbered after the period's posted versions, with caps and prepaid hours
    looking back on the invoices posted so far (of the customers they apply to: no history is read for rules
    without caps and prepaid hours)."""
    looking_back = customers_looking_back(rules, set(lines["customer_id"]) if len(lines) else set())
    history = ledger.drafts(states=[DraftState.POSTED], customers=looking_back) if looking_back else []
    return draft_book(batch, lines, rules, ledger.posted_versions(batch.period), history)


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
    """``draft_book``'s drafts as ``InvoiceDraft``s, each line with its explanation."""
    return draft_book(batch, lines, rules, posted, history).drafts(rules)


def draft_book(
    batch: WorkBatch,
    lines: pd.DataFrame,
    rules: RuleSet,
    posted: dict[tuple[str, str, str], int],
    history: Sequence[InvoiceDraft] = (),
) -> DraftBook:
    """One draft per customer × agreement × currency; ``posted`` versions make the next one supplementary.
    ``history``: the invoices posted so far, which caps and prepaid hours look back on.

    By column: the lines in draft order, their descriptions, quantities and taxes, the drafts' totals. Only
    caps and discounts go draft by draft, for the customers they apply to."""
    lines = draw_down(lines, rules, balances(rules, batch.period, history))
    if lines.empty:
        return DraftBook.empty()
    ordered = lines.sort_values(["customer_id", "currency", "started_at", "source_id"])
    per_ticket = batch.scope is not None and batch.scope.per_ticket  # one invoice per ticket: v1, v2 ...
    ordered = ordered.assign(_invoice=ordered["ticket_id"].astype(str) if per_ticket else "")
    ordered = ordered.astype({"customer_id": str, "currency": str, "service_type": str})
    ordered = ordered.sort_values(["customer_id", "currency", "_invoice"], kind="stable", ignore_index=True)
    groups = ordered.groupby(["customer_id", "currency", "_invoice"], sort=False)
    number = groups.ngroup().to_numpy()
    headers = groups.size().reset_index(name="_lines").drop(columns=["_invoice", "_lines"])
    nth = headers.groupby(["customer_id", "currency"]).cumcount() + 1  # several invoices of one customer: per ticket
    headers["agreement_id"] = "default"
    headers["period"] = batch.period
    headers["version"] = [posted.get((c, "default", cur), 0) + int(n) for c, cur, n in
                          zip(headers["customer_id"], headers["currency"], nth, strict=True)]  # fmt: skip
    headers["key"] = [draft_key(c, "default", batch.period, cur, v) for c, cur, v in
                      zip(headers["customer_id"], headers["currency"], headers["version"], strict=True)]  # fmt: skip
    book_lines = _line_columns(ordered, headers["key"].to_numpy(dtype=object)[number], batch, rules)
    book_lines = _with_adjustments(book_lines, ordered, rules, history, batch.period)
    return DraftBook(headers=_header_columns(headers, book_lines, batch.customers_by_id, rules), lines=book_lines)


def _line_columns(ordered: pd.DataFrame, keys: np.ndarray, batch: WorkBatch, rules: RuleSet) -> pd.DataFrame:
    """The priced lines, in draft order, as the line contract (``LINE_COLUMNS``)."""
    n = len(ordered)

    def column(name: str) -> np.ndarray:
        return (ordered[name].astype(object) if name in ordered else pd.Series([None] * n)).to_numpy(dtype=object)

    def text_or(name: str, default: Any) -> list[Any]:
        """A text column with ``default`` where it is missing or empty, by column."""
        if name not in ordered:
            return [default] * n
        values = ordered[name].astype(object)
        return values.where(values.notna() & (values != ""), default).tolist()

    def whole(name: str) -> list[int]:
        return ordered[name].fillna(0).astype("int64").tolist() if name in ordered else [0] * n

    kind = np.array(text_or("object_type", "work"), dtype=object)
    rate_kind = text_or("rate_kind", "hourly")
    drawn = whole("drawn_centi")
    overage = ordered["overage"].eq(True).fillna(False).astype(bool).tolist() if "overage" in ordered else [False] * n
    optional = {name: text_or(name, None) for name in ("ticket_id", "agreement_id", "modifier", "note", "description",
                                                        "prepaid_agreement")}  # fmt: skip
    frame = pd.DataFrame({
        "draft_key": keys,
        "line_no": pd.Series(keys).groupby(keys, sort=False).cumcount().to_numpy() + 1,
        "work_item_keys": [tuple(k) if isinstance(k, tuple | list) else (key,)
                           for k, key in zip(column("item_keys"), ordered["key"], strict=True)],
        "source_id": column("source_id"),
        "customer_id": column("customer_id"),
        "agreement_id": "default",
        "period": batch.period,
        "currency": column("currency"),
        "service_type": column("service_type"),
        "description": _descriptions(ordered, kind, optional, drawn, overage, rules),
        "quantity_raw": hours_text(ordered["raw_seconds"].to_numpy(dtype="int64")),
        "quantity_billed": centi_text(ordered["quantity_centi"].to_numpy(dtype="int64")),
        "quantity_centi": ordered["quantity_centi"].to_numpy(dtype="int64"),
        "unit_price_minor": ordered["unit_price_minor"].to_numpy(dtype="int64"),
        "amount_minor": ordered["amount_minor"].to_numpy(dtype="int64"),
        **_own_taxes(ordered, {c.customer_id: c.country for c in batch.customers}, rules),
        "line_kind": kind,
        "rules": rules.name,
        "rate_minor": ordered["rate_minor"].to_numpy(dtype="int64"),
        "rate_source": column("rate_source"),
        "rate_kind": rate_kind,
        "modifier": optional["modifier"],
        "multiplier_bp": ordered["multiplier_bp"].to_numpy(dtype="int64"),
        "raw_seconds": ordered["raw_seconds"].to_numpy(dtype="int64"),
        "billed_seconds": ordered["billed_seconds"].to_numpy(dtype="int64"),
        "money_rounding": column("money_rounding"),
        "ticket": optional["ticket_id"],
        "agreement": optional["agreement_id"],
        "prepaid_agreement": optional["prepaid_agreement"],
        "drawn_centi": drawn,
        "prepaid_left_centi": whole("prepaid_left_centi"),
        "overage": overage,
        "rule": None,
        "scope": None,
    })  # fmt: skip
    return frame[list(LINE_COLUMNS)]


def _descriptions(ordered: pd.DataFrame, kind: np.ndarray, optional: dict[str, list[Any]], drawn: list[int],
                  overage: list[bool], rules: RuleSet) -> list[str]:  # fmt: skip
    """What each line says: a line the rules made (a fee, a milestone, usage) in its own words; work as
    ``date · ticket · service · modifier · prepaid|overage · note``."""
    services = {code: service.name for code, service in rules.services.items()}
    dates = ordered["local_date"].astype(str).str[:10].tolist() if "local_date" in ordered else [""] * len(ordered)
    out: list[str] = []
    for n, service in enumerate(ordered["service_type"]):
        own = optional["description"][n]
        if kind[n] == "usage" or own is not None:
            out.append(str(own))
            continue
        parts = [dates[n]]
        if (ticket := optional["ticket_id"][n]) is not None:
            parts.append(str(ticket))
        parts.append(services[service])
        if (modifier := optional["modifier"][n]) is not None:
            parts.append(str(modifier).replace("_", "-"))
        if drawn[n] > 0:
            parts.append("prepaid")
        elif overage[n]:
            parts.append("overage")
        if (note := optional["note"][n]) is not None:
            parts.append(str(note))
        out.append(SEPARATOR.join(parts))
    return out


def _own_taxes(ordered: pd.DataFrame, country: dict[str, str | None], rules: RuleSet) -> dict[str, list[Any]]:
    """A line's own tax (id, rate as text) when its service's tax class has a rate other than the invoice's
    standard one in the customer's country; None otherwise. One lookup per service and country."""
    known: dict[tuple[str, str | None], tuple[str | None, str | None]] = {}
    ids: list[str | None] = []
    rates: list[str | None] = []
    for service, customer in zip(ordered["service_type"], ordered["customer_id"], strict=True):
        where = (service, country.get(customer))
        if where not in known:
            own = _own_tax({"service_type": service}, where[1], rules)
            known[where] = (own["tax_id"], str(own["tax_rate"])) if own else (None, None)
        ids.append(known[where][0])
        rates.append(known[where][1])
    return {"tax_id": ids, "tax_rate": rates}


def _own_tax(row: dict[str, Any], country: str | None, rules: RuleSet) -> dict[str, Any]:
    """The line's own tax when its service's tax class has a rate other than the invoice's standard one."""
    service = rules.services.get(str(row["service_type"]))
    if service is None or service.tax_class is None:
        return {}
    own, standard = rules.taxes.for_country(country, service.tax_class), rules.taxes.for_country(country)
    return {} if own.id == standard.id else {"tax_id": own.id, "tax_rate": own.rate}


def _with_adjustments(book_lines: pd.DataFrame, ordered: pd.DataFrame, rules: RuleSet,
                      history: Sequence[InvoiceDraft], period: str) -> pd.DataFrame:  # fmt: skip
    """Caps and discounts as lines of their own at the end of each draft they apply to (draft by draft)."""
    if not (rules.caps or rules.discounts):
        return book_lines
    tickets_of = dict(zip(ordered["key"], ordered["ticket_id"], strict=True))
    parts = []
    for key, draft_lines in book_lines.groupby("draft_key", sort=False):
        parts.append(draft_lines)
        charge_lines = [charge_line(row) for row in draft_lines.to_dict("records")]
        customer, currency = charge_lines[0].customer_id, charge_lines[0].currency
        tickets = {k: t for line in charge_lines for k in line.work_item_keys if present(t := tickets_of.get(k))}
        prior = prior_cap_use(history, customer, currency, period, rules)
        made = adjust(charge_lines, tickets, rules, rules.money_rounding(currency), prior)
        if made:
            rows = [row_of(line, str(key), len(draft_lines) + n) for n, line in enumerate(made, start=1)]
            parts.append(pd.DataFrame(rows, columns=list(LINE_COLUMNS)))
    return pd.concat(parts, ignore_index=True)


def _header_columns(headers: pd.DataFrame, lines: pd.DataFrame, customers: dict[str, Any],
                    rules: RuleSet) -> pd.DataFrame:  # fmt: skip
    """The drafts' own columns (customer, tax policy) and their totals, from their lines."""
    of = [customers[c] for c in headers["customer_id"]]
    tax = [rules.taxes.for_country(c.country) for c in of]
    headers = headers.assign(
        customer_name=[c.name for c in of], customer_erp_ref=[c.erp_ref for c in of],
        customer_country=[c.country for c in of],
        money_rounding=[rules.money_rounding(cur).value for cur in headers["currency"]],
        tax_id=[t.id for t in tax], tax_rate=[str(t.rate) for t in tax], tax_rounding=rules.taxes.rounding,
        tax_base=rules.taxes.base, tax_by=rules.taxes.computed_by,
    )  # fmt: skip
    sums = lines.groupby("draft_key", sort=False).agg(total_minor=("amount_minor", "sum"),
                                                      line_count=("amount_minor", "size"))  # fmt: skip
    headers = headers.join(sums, on="key")
    headers["tax_minor"] = draft_taxes(headers, lines)
    headers["gross_minor"] = headers["total_minor"] + headers["tax_minor"]
    return headers[list(HEADER_COLUMNS)].astype({"total_minor": "int64", "tax_minor": "int64",
                                                 "gross_minor": "int64", "line_count": "int64"})  # fmt: skip


def draft_taxes(headers: pd.DataFrame, lines: pd.DataFrame) -> list[int]:
    """Each draft's tax as ``InvoiceDraft.tax_minor`` computes it, by column: per rate (the line's own, else the
    draft's) the base summed (displayed amounts, or quantity × unit price unrounded) and rounded once for the
    document, or line by line; 0 where the ERP computes it."""
    policy = headers.set_index("key")[["tax_rate", "tax_base", "tax_rounding", "tax_by", "money_rounding"]]
    own = lines["tax_rate"].map(present).to_numpy(dtype=bool)
    rate = np.where(own, lines["tax_rate"].to_numpy(dtype=object), lines["draft_key"].map(policy["tax_rate"]))
    # Bases in hundredths of a minor unit, exact integers: quantity (centi) × unit price, or amount × 100.
    unrounded = (lines["draft_key"].map(policy["tax_base"]) == "unrounded").to_numpy(dtype=bool)
    quantity = lines["quantity_centi"].to_numpy(dtype="int64")
    base = np.where(unrounded, quantity * lines["unit_price_minor"].to_numpy(dtype="int64"),
                    lines["amount_minor"].to_numpy(dtype="int64") * 100)  # fmt: skip
    frame = pd.DataFrame({"key": lines["draft_key"].to_numpy(dtype=object), "rate": rate, "base": base})
    per_line = (frame["key"].map(policy["tax_rounding"]) == "line").to_numpy(dtype=bool)
    grouped = pd.concat([frame[~per_line].groupby(["key", "rate"], sort=False)["base"].sum().reset_index(),
                         frame[per_line]])  # fmt: skip
    tax: dict[str, int] = {}
    for key, rate_text, hundredths in zip(grouped["key"], grouped["rate"], grouped["base"], strict=True):
        mode = Rounding(policy.at[key, "money_rounding"]).decimal_mode
        amount = (Decimal(int(hundredths)) / 100 * Decimal(rate_text)).quantize(Decimal(1), rounding=mode)
        tax[key] = tax.get(key, 0) + int(amount)
    return [0 if policy.at[k, "tax_by"] == "erp" else tax.get(k, 0) for k in headers["key"]]


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
