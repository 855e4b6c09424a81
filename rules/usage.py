"""Usage-based pricing: usage records summed per customer and metric for the period, then priced by tiers
(graduated or volume) with a minimum commitment. Quantities are summed exactly in thousandths of a unit;
each line shows its quantity in hundredths (half-up, as hours are) and its amount is computed from that."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd

from billing.models import Customer
from billing.money import Rounding, div_round, to_minor
from rules.schema import RuleSet

MILLI = 1000  # quantities in thousandths of a unit
CENTI = 100  # displayed quantities in hundredths


def _milli(values: pd.Series) -> np.ndarray:
    """Decimal text ("12.5", "-3", "0.125") as integer thousandths, exactly and by column (no float, no loop)."""
    text = values.astype(str).str.strip()
    negative = text.str.startswith("-").to_numpy()
    parts = text.str.lstrip("-").str.split(".", n=1, expand=True).reindex(columns=[0, 1])
    fraction = parts[1].fillna("")
    if (fraction.str.len() > 3).any():
        raise ValueError("usage quantities have at most 3 decimals")
    whole = parts[0].astype("int64").to_numpy()
    thousandths = fraction.str.ljust(3, "0").astype("int64").to_numpy()
    return np.where(negative, -1, 1) * (whole * MILLI + thousandths)


def price_usage(usage: pd.DataFrame, customers: list[Customer], rules: RuleSet) -> pd.DataFrame:
    """Charge lines for usage records (``record_id, customer_id, metric, quantity``): one line per tier used
    (graduated) or per metric (volume), plus a top-up line when a minimum commitment is not reached.

    Columns: customer_id, metric, currency, description, quantity (Decimal), unit_price_minor, amount_minor,
    record_ids. Per group the amounts are computed from the displayed quantity and unit price."""
    columns = ["customer_id", "metric", "currency", "description", "quantity", "unit_price_minor", "amount_minor",
               "record_ids", "record_keys", "source"]  # fmt: skip
    if usage.empty:
        return pd.DataFrame(columns=columns)
    currency_of = {c.customer_id: c.currency for c in customers}
    frame = usage.assign(milli=_milli(usage["quantity"]), currency=usage["customer_id"].astype(object).map(currency_of))
    if "record_id" not in frame:  # canonical usage records (USAGE_COLUMNS) name it source_id
        frame["record_id"] = frame["source_id"]
    if "key" not in frame:
        frame["key"] = frame["record_id"]
    frame = frame[frame["metric"].isin(list(rules.usage)) & frame["currency"].notna()]
    totals = frame.groupby(["customer_id", "metric", "currency"], observed=True).agg(
        milli=("milli", "sum"), record_ids=("record_id", list), record_keys=("key", list)).reset_index()  # fmt: skip
    lines = []
    for (metric, currency), group in totals.groupby(["metric", "currency"]):  # metrics × currencies: few
        spec = rules.usage[metric]
        rounding = rules.money_rounding(currency)
        total = group["milli"].to_numpy()
        spent = np.zeros(len(group), dtype="int64")
        lower = 0
        bounds = [int(t.up_to * MILLI) if t.up_to is not None else None for t in spec.tiers]
        for number, (tier, upper) in enumerate(zip(spec.tiers, bounds, strict=True)):
            unit = to_minor(tier.unit_price[currency], currency)
            if spec.mode == "graduated":
                in_tier = np.clip(total - lower, 0, None if upper is None else upper - lower)
            else:  # volume: every unit at the price of the tier the total falls in
                falls_here = (total > lower) & ((total <= upper) if upper is not None else True)
                in_tier = np.where(falls_here, total, 0)
            shown = div_round(in_tier, MILLI // CENTI, Rounding.HALF_UP)  # hundredths, as displayed
            amount = div_round(shown * unit, CENTI, rounding)
            spent += amount
            for row, q, a in zip(group.itertuples(), shown, amount, strict=True):
                if q:
                    where = f"tier {number + 1}" if spec.mode == "graduated" else "volume tier"
                    lines.append({"customer_id": row.customer_id, "metric": metric, "currency": currency,
                                  "description": f"{spec.name}, {where}", "quantity": Decimal(int(q)) / CENTI,
                                  "unit_price_minor": unit, "amount_minor": int(a), "record_ids": row.record_ids,
                                  "record_keys": row.record_keys,
                                  "source": f"usage.{metric}.tiers[{number}]"})  # fmt: skip
            if upper is not None:
                lower = upper
        minimum = spec.minimum_commitment.get(currency)
        if minimum is not None:
            floor = to_minor(minimum, currency)
            for row, paid in zip(group.itertuples(), spent, strict=True):
                if paid < floor:
                    lines.append({"customer_id": row.customer_id, "metric": metric, "currency": currency,
                                  "description": f"{spec.name}, minimum commitment", "quantity": Decimal(1),
                                  "unit_price_minor": floor - int(paid), "amount_minor": floor - int(paid),
                                  "record_ids": [], "record_keys": row.record_keys,
                                  "source": f"usage.{metric}.minimum_commitment"})  # fmt: skip
    return pd.DataFrame(lines, columns=columns)


def usage_lines(usage: pd.DataFrame, customers: list[Customer], rules: RuleSet, period: str) -> pd.DataFrame:
    """The usage charge lines in the engine's line format (1 line per tier used, quantity in hundredths),
    ready to be drafted with the work's lines; each bills the usage records it sums (``item_keys``)."""
    priced = price_usage(usage, customers, rules)
    if priced.empty:
        return pd.DataFrame()
    first = pd.Timestamp(f"{period}-01", tz="UTC")
    quantity_centi = [int(q * CENTI) for q in priced["quantity"]]
    return pd.DataFrame({
        "key": [keys[0] for keys in priced["record_keys"]], "item_keys": priced["record_keys"].map(tuple),
        "source_id": priced["record_ids"].map(", ".join), "ticket_id": None, "customer_id": priced["customer_id"],
        "user": None, "service_type": "usage:" + priced["metric"], "started_at": first, "raw_seconds": 0,
        "note": "", "currency": priced["currency"], "rate_minor": priced["unit_price_minor"],
        "rate_source": priced["source"], "local_date": first.tz_localize(None).to_datetime64(),
        "multiplier_bp": 10_000, "modifier": "", "rate_kind": "fixed", "billed_seconds": 0,
        "quantity_centi": quantity_centi, "unit_price_minor": priced["unit_price_minor"],
        "amount_minor": priced["amount_minor"],
        "money_rounding": [rules.money_rounding(c).value for c in priced["currency"]],
        "description": priced["description"] + f", {period}", "object_type": "usage",
    })  # fmt: skip
