"""Adjustments of a whole invoice, as lines of their own: caps (not to exceed, per ticket) first, then
percentage discounts on what remains. Each is 1 × a negative amount, so every line still checks by hand and
the total is still the sum of the lines."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from billing.models import ChargeLine
from billing.money import Rounding, format_money, to_minor
from rules.schema import RuleSet


def _line(template: ChargeLine, amount: int, description: str, rule: str) -> ChargeLine:
    return ChargeLine(
        work_item_keys=(), source_id="", customer_id=template.customer_id, agreement_id=template.agreement_id,
        period=template.period, currency=template.currency, service_type="adjustment", description=description,
        quantity_raw=Decimal(1), quantity_billed=Decimal("1.00"), unit_price_minor=amount, amount_minor=amount,
        trace={"rule": rule, "explanation": description},
    )  # fmt: skip


def adjust(
    lines: list[ChargeLine], tickets: dict[str, str | None], rules: RuleSet, rounding: Rounding
) -> list[ChargeLine]:
    """The adjustment lines for one invoice's ``lines`` (``tickets``: work item key → ticket id)."""
    if not lines or not (rules.caps or rules.discounts):
        return []
    customer, currency = lines[0].customer_id, lines[0].currency
    out: list[ChargeLine] = []
    for cap in rules.caps:
        if cap.customer not in (None, customer) or currency not in cap.amount:
            continue
        limit = to_minor(cap.amount[currency], currency)
        per_ticket: dict[str, int] = defaultdict(int)
        for line in lines:
            ticket = next((tickets.get(k) for k in line.work_item_keys if tickets.get(k)), None)
            if ticket:
                per_ticket[ticket] += line.amount_minor
        for ticket, spent in sorted(per_ticket.items()):
            if spent > limit:
                out.append(
                    _line(
                        lines[0],
                        limit - spent,
                        f"Cap {cap.id}: ticket {ticket} not to exceed "
                        f"{format_money(limit, currency)} (work {format_money(spent, currency)})",
                        cap.id,
                    )
                )
    subtotal = sum(line.amount_minor for line in lines) + sum(line.amount_minor for line in out)
    for discount in rules.discounts:
        if discount.customer not in (None, customer) or subtotal <= 0:
            continue
        off = int((Decimal(subtotal) * discount.percent / 100).quantize(Decimal(1), rounding=rounding.decimal_mode))
        if off:
            out.append(
                _line(
                    lines[0],
                    -off,
                    f"Discount {discount.id}: {discount.percent.normalize()} % of {format_money(subtotal, currency)}",
                    discount.id,
                )
            )
    return out
