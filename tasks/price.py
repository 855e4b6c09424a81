"""Price and draft: charge lines from the rules, then one invoice draft per customer × agreement × period
× currency, versioned so that a period already invoiced gets a supplementary invoice, never a second one."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from billing.ledger import Ledger, WorkState
from billing.models import ChargeLine, InvoiceDraft, WorkBatch
from billing.settings import Settings
from rules.engine import explain, price, quantity
from rules.schema import load_rules


def price_work(settings: Settings, batch: WorkBatch, valid: pd.DataFrame) -> pd.DataFrame:
    """Charge lines for the valid work logs; non-billable and unpriceable ones are settled in the ledger."""
    rules = load_rules(settings.rules_file)
    result = price(valid, batch.customers, rules)
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.set_state(
        result.non_billable["key"].tolist(),
        WorkState.NON_BILLABLE,
        actor="price",
        reasons=result.non_billable["rule"].tolist(),
    )
    ledger.set_state(
        result.unpriceable["key"].tolist(),
        WorkState.QUARANTINED,
        actor="price",
        reasons=result.unpriceable["reason"].tolist(),
    )
    ledger.set_state(result.lines["key"].tolist(), WorkState.PRICED, actor="price")
    return result.lines


def build_drafts(settings: Settings, batch: WorkBatch, lines: pd.DataFrame) -> list[InvoiceDraft]:
    """Group charge lines into drafts and make them the period's unposted drafts in the ledger."""
    rules = load_rules(settings.rules_file)
    ledger = Ledger(settings.resolved_ledger_url)
    posted = ledger.posted_versions(batch.period)
    customers = batch.customers_by_id
    drafts = []
    ordered = lines.sort_values(["customer_id", "currency", "started_at", "source_id"])
    for (customer_id, currency), group in ordered.groupby(["customer_id", "currency"], sort=True):
        customer = customers[customer_id]
        charge_lines = tuple(
            ChargeLine(
                work_item_key=row["key"], source_id=row["source_id"], customer_id=customer_id, period=batch.period,
                currency=currency, service_type=row["service_type"],
                description=_description(row, rules.services[row["service_type"]].name),
                quantity_raw=_hours(int(row["raw_seconds"])),
                quantity_billed=quantity(int(row["quantity_centi"])),
                unit_price_minor=int(row["unit_price_minor"]), amount_minor=int(row["amount_minor"]),
                trace=_trace(row, rules.name, explain(row, rules.services[row["service_type"]].name, rules)),
            )
            for row in group.to_dict("records")
        )  # fmt: skip
        version = posted.get((customer_id, "default", currency), 0) + 1
        tax = rules.taxes.for_country(customer.country)
        drafts.append(InvoiceDraft(
            customer_id=customer_id, period=batch.period, currency=currency, version=version, lines=charge_lines,
            customer_name=customer.name, customer_erp_ref=customer.erp_ref, customer_country=customer.country,
            money_rounding=rules.money_rounding(currency), tax_id=tax.id, tax_rate=tax.rate,
            tax_rounding=rules.taxes.rounding, tax_base=rules.taxes.base,
        ))  # fmt: skip
    ledger.save_drafts(batch.period, drafts, actor="draft")
    return drafts


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
    if _present(row["note"]):
        parts.append(str(row["note"]))
    return " · ".join(parts)


def _trace(row: dict[str, Any], rule_set: str, explanation: str) -> dict[str, Any]:
    """Compact and enough to re-derive the amount: rate, its source, multiplier, rounding."""
    return {
        "rules": rule_set,
        "rate_minor": int(row["rate_minor"]),
        "rate_source": row["rate_source"],
        "modifier": row["modifier"] or None,
        "multiplier_bp": int(row["multiplier_bp"]),
        "raw_seconds": int(row["raw_seconds"]),
        "billed_seconds": int(row["billed_seconds"]),
        "money_rounding": row["money_rounding"],
        "explanation": explanation,
    }


price_stage = task(price_work, name="price", cache_policy=NO_CACHE)
draft = task(build_drafts, name="draft", cache_policy=NO_CACHE)
