"""Usage-based pricing: usage records summed per customer and metric for the period, then priced by tiers
(graduated or volume) with a minimum commitment. Quantities are exact: integer thousandths of a unit."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd

from billing.models import Customer
from billing.money import div_round, to_minor
from rules.schema import RuleSet

MILLI = 1000  # quantities in thousandths of a unit


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
               "record_ids"]  # fmt: skip
    if usage.empty:
        return pd.DataFrame(columns=columns)
    currency_of = {c.customer_id: c.currency for c in customers}
    frame = usage.assign(milli=_milli(usage["quantity"]), currency=usage["customer_id"].map(currency_of))
    frame = frame[frame["metric"].isin(list(rules.usage)) & frame["currency"].notna()]
    totals = frame.groupby(["customer_id", "metric", "currency"], observed=True).agg(
        milli=("milli", "sum"), record_ids=("record_id", list)).reset_index()  # fmt: skip
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
            amount = div_round(in_tier * unit, MILLI, rounding)
            spent += amount
            for row, q, a in zip(group.itertuples(), in_tier, amount, strict=True):
                if q:
                    where = f"tier {number + 1}" if spec.mode == "graduated" else "volume tier"
                    lines.append({"customer_id": row.customer_id, "metric": metric, "currency": currency,
                                  "description": f"{spec.name}, {where}", "quantity": Decimal(int(q)) / MILLI,
                                  "unit_price_minor": unit, "amount_minor": int(a),
                                  "record_ids": row.record_ids})  # fmt: skip
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
                                  "record_ids": []})  # fmt: skip
    return pd.DataFrame(lines, columns=columns)
