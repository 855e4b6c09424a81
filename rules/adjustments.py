"""Adjustments of a whole invoice, as lines of their own: caps (not to exceed, per ticket, agreement or
period) first, then discounts (a percentage or volume tiers) on what remains. Each is 1 × a negative amount,
so every line still checks by hand and the total is still the sum of the lines.

Caps look back: what earlier posted invoices billed in a cap's scope (``prior_cap_use``) counts against it,
so a supplementary invoice, or next month's work on the same ticket, never bills past the cap."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from billing.models import ChargeLine, InvoiceDraft
from billing.money import Rounding, format_money, to_decimal, to_minor
from rules.schema import Cap, RuleSet

# (cap id, scope: the ticket, the agreement or the period) → net amount billed in it
CapUse = dict[tuple[str, str], int]


def _line(template: ChargeLine, amount: int, description: str, rule: str, scope: str | None = None) -> ChargeLine:
    trace = {"rule": rule, "explanation": description, "line_kind": "adjustment"} | ({"scope": scope} if scope else {})
    return ChargeLine(
        work_item_keys=(), source_id="", customer_id=template.customer_id, agreement_id=template.agreement_id,
        period=template.period, currency=template.currency, service_type="adjustment", description=description,
        quantity_raw=Decimal(1), quantity_billed=Decimal("1.00"), unit_price_minor=amount, amount_minor=amount,
        trace=trace,
    )  # fmt: skip


def _is_work(line: ChargeLine) -> bool:
    """Time and materials, which caps limit (fees, milestones, usage and adjustments are not capped)."""
    return line.trace.get("line_kind", "work") == "work"


def _scope(cap: Cap, line: ChargeLine, ticket: str | None) -> str | None:
    """The cap's scope a work line falls in, or None when the cap does not apply to it."""
    if cap.per == "ticket":
        return ticket
    if cap.per == "agreement":
        return cap.agreement if line.trace.get("agreement") == cap.agreement else None
    return line.period


def _applies(cap: Cap, customer: str, currency: str) -> bool:
    return cap.customer in (None, customer) and currency in cap.amount


def prior_cap_use(posted: Iterable[InvoiceDraft], customer: str, currency: str, period: str, rules: RuleSet) -> CapUse:
    """What earlier posted invoices of the customer in the currency billed per cap scope, net of the cap
    lines they carried. A period cap looks at the period's invoices only."""
    used: CapUse = defaultdict(int)
    caps = [c for c in rules.caps if _applies(c, customer, currency)]
    for draft in posted:
        if draft.customer_id != customer or draft.currency != currency:
            continue
        for line in draft.lines:
            for cap in caps:
                if cap.per == "period" and draft.period != period:
                    continue
                if line.trace.get("rule") == cap.id and line.trace.get("scope"):
                    used[(cap.id, line.trace["scope"])] += line.amount_minor
                elif _is_work(line) and (scope := _scope(cap, line, line.trace.get("ticket"))):
                    used[(cap.id, scope)] += line.amount_minor
    return dict(used)


def adjust(
    lines: list[ChargeLine],
    tickets: dict[str, str | None],
    rules: RuleSet,
    rounding: Rounding,
    prior: CapUse | None = None,
) -> list[ChargeLine]:
    """The adjustment lines for one invoice's ``lines`` (``tickets``: work item key → ticket id; ``prior``:
    what earlier invoices billed per cap scope)."""
    if not lines or not (rules.caps or rules.discounts):
        return []
    prior = prior or {}
    customer, currency = lines[0].customer_id, lines[0].currency
    out: list[ChargeLine] = []
    for cap in rules.caps:
        if not _applies(cap, customer, currency):
            continue
        limit = to_minor(cap.amount[currency], currency)
        spent: dict[str, int] = defaultdict(int)
        for line in filter(_is_work, lines):
            ticket = next((tickets.get(k) for k in line.work_item_keys if tickets.get(k)), None)
            if scope := _scope(cap, line, ticket):
                spent[scope] += line.amount_minor
        for scope, amount in sorted(spent.items()):
            before = prior.get((cap.id, scope), 0)
            excess = before + amount - max(limit, before)  # never more than this invoice's own work
            if excess > 0:
                what = {"ticket": f"ticket {scope}", "agreement": f"agreement {scope}", "period": f"period {scope}"}
                earlier = f", {format_money(before, currency)} billed before" if before else ""
                out.append(_line(
                    lines[0], -excess,
                    f"Cap {cap.id}: {what[cap.per]} not to exceed {format_money(limit, currency)} "
                    f"(work {format_money(amount, currency)}{earlier})", cap.id, scope,
                ))  # fmt: skip
    subtotal = sum(line.amount_minor for line in lines) + sum(line.amount_minor for line in out)
    for discount in rules.discounts:
        if discount.customer not in (None, customer) or subtotal <= 0:
            continue
        percent = discount.percent_for(to_decimal(subtotal, currency), currency)
        if percent is None:
            continue
        off = int((Decimal(subtotal) * percent / 100).quantize(Decimal(1), rounding=rounding.decimal_mode))
        tier = " (volume tier)" if discount.tiers else ""
        if off:
            out.append(_line(
                lines[0], -off,
                f"Discount {discount.id}: {percent.normalize()} % of {format_money(subtotal, currency)}{tier}",
                discount.id,
            ))  # fmt: skip
    return out

