"""The pricing engine: whole DataFrames in, charge lines out, integer money throughout.

For every billable work log::

    billed time   = raw time rounded to the increment (mode up/nearest/down), at least the minimum
    quantity      = billed hours at display precision (hundredths of an hour, rounded half-up)
    unit price    = rate × highest time-of-day multiplier, rounded to the minor unit (currency's mode)
    amount        = quantity × unit price, rounded to the minor unit (currency's mode)

so quantity × unit price = amount holds for every displayed line, and an invoice total is the sum of its
lines. Each line keeps the columns its explanation is rendered from (rate source, modifier, rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd

from billing.models import Customer
from billing.money import Rounding, div_round, format_money, to_minor
from rules.schema import RuleSet

BASIS = 10_000  # multipliers as integer basis points: 1.5 → 15000
CENTI_HOURS = 100  # quantities in hundredths of an hour


@dataclass
class PricingResult:
    lines: pd.DataFrame  # one row per billable work log
    non_billable: pd.DataFrame  # key, rule
    unpriceable: pd.DataFrame  # key, reason (no rate, unknown customer ...): quarantined by the caller


def _rate_table(rules: RuleSet) -> pd.DataFrame:
    rows = [
        {"customer_id": None, "service_type": code, "currency": cur, "rate_minor": to_minor(rate, cur),
         "rate_source": f"services.{code}.rates.{cur}"}
        for code, service in rules.services.items() for cur, rate in service.rates.items()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["customer_id", "service_type", "currency", "rate_minor", "rate_source"])


def _customer_rate_table(rules: RuleSet, currency_of: dict[str, str]) -> pd.DataFrame:
    rows = [
        {"customer_id": r.customer, "service_type": r.service, "rate_minor": to_minor(r.rate, currency_of[r.customer]),
         "rate_source": f"customer_rates[{n}]"}
        for n, r in enumerate(rules.customer_rates) if r.customer in currency_of
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["customer_id", "service_type", "rate_minor", "rate_source"])


def _local_times(started_at: pd.Series, zones: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Weekday (0=Mon), minute of the day and date of each timestamp in its customer's timezone."""
    weekday = pd.Series(0, index=started_at.index, dtype="int64")
    minute = pd.Series(0, index=started_at.index, dtype="int64")
    day = pd.Series("", index=started_at.index, dtype="object")
    for zone, index in zones.groupby(zones).groups.items():
        local = started_at.loc[index].dt.tz_convert(str(zone))
        weekday.loc[index] = local.dt.weekday.to_numpy()
        minute.loc[index] = (local.dt.hour * 60 + local.dt.minute).to_numpy()
        day.loc[index] = local.dt.strftime("%Y-%m-%d").to_numpy()
    return weekday, minute, day


def _round_time(raw_seconds: np.ndarray, rules: RuleSet) -> np.ndarray:
    policy = rules.rounding
    step = policy.increment_minutes * 60
    mode = {"up": Rounding.CEILING, "nearest": Rounding.HALF_UP, "down": Rounding.FLOOR}[policy.mode]
    billed = div_round(raw_seconds, step, mode) * step
    return np.maximum(billed, policy.minimum_minutes * 60)


def non_billable_rule(worklogs: pd.DataFrame, rules: RuleSet) -> pd.Series:
    """The id of the first non-billable rule each work log matches, or NA."""
    rule = pd.Series(pd.NA, index=worklogs.index, dtype="object")
    for spec in rules.non_billable:
        mask = pd.Series(True, index=worklogs.index)
        for column, wanted in spec.when.items():
            values = worklogs[column]
            mask &= values.isin(wanted) if isinstance(wanted, list) else values == wanted
        rule = rule.mask(rule.isna() & mask, spec.id)
    for code, service in rules.services.items():
        if not service.billable:
            rule = rule.mask(rule.isna() & (worklogs["service_type"] == code), f"services.{code}.billable=false")
    return rule


def price(worklogs: pd.DataFrame, customers: list[Customer], rules: RuleSet) -> PricingResult:
    frame = worklogs.copy()
    currency_of = {c.customer_id: c.currency for c in customers}
    zone_of = {c.customer_id: c.timezone for c in customers}
    frame["currency"] = frame["customer_id"].map(currency_of)

    rule = non_billable_rule(frame, rules)
    non_billable = pd.DataFrame({"key": frame.loc[rule.notna(), "key"], "rule": rule[rule.notna()]})
    frame = frame.loc[rule.isna()]

    unknown_customer = frame["currency"].isna()
    problems = [
        pd.DataFrame(
            {
                "key": frame.loc[unknown_customer, "key"],
                "reason": "unknown customer " + frame.loc[unknown_customer, "customer_id"].astype(str),
            }
        )
    ]
    frame = frame.loc[~unknown_customer]

    # Rate: the customer's own rate for the service wins over the service's default in that currency.
    own = _customer_rate_table(rules, currency_of)
    default = _rate_table(rules)
    frame = frame.merge(own, on=["customer_id", "service_type"], how="left")
    frame = frame.merge(
        default.drop(columns="customer_id"), on=["service_type", "currency"], how="left", suffixes=("", "_default")
    )
    frame["rate_source"] = frame["rate_source"].fillna(frame["rate_source_default"])
    frame["rate_minor"] = frame["rate_minor"].fillna(frame["rate_minor_default"])
    no_rate = frame["rate_minor"].isna()
    problems.append(pd.DataFrame({
        "key": frame.loc[no_rate, "key"],
        "reason": "no rate for service " + frame.loc[no_rate, "service_type"] + " in " + frame.loc[no_rate, "currency"],
    }))  # fmt: skip
    frame = frame.loc[~no_rate].drop(columns=["rate_source_default", "rate_minor_default"])
    frame["rate_minor"] = frame["rate_minor"].astype("int64")

    # When the work was done, in the customer's timezone.
    weekday, minute, day = _local_times(frame["started_at"], frame["customer_id"].map(zone_of))
    frame["local_date"] = day
    multiplier = np.full(len(frame), BASIS, dtype="int64")
    modifier = np.full(len(frame), "", dtype=object)
    after = rules.modifiers.after_hours
    if after is not None:
        start, end = after.business_hours.minutes()
        mask = ((minute < start) | (minute >= end)).to_numpy()
        bp = int(after.multiplier * BASIS)
        take = mask & (bp > multiplier)
        multiplier[take], modifier[take] = bp, "after_hours"
    weekend = rules.modifiers.weekend
    if weekend is not None:
        mask = (weekday >= 5).to_numpy()
        bp = int(weekend.multiplier * BASIS)
        take = mask & (bp > multiplier)
        multiplier[take], modifier[take] = bp, "weekend"
    frame["multiplier_bp"] = multiplier
    frame["modifier"] = modifier

    raw = frame["raw_seconds"].to_numpy(dtype="int64")
    frame["billed_seconds"] = _round_time(raw, rules)
    frame["quantity_centi"] = div_round(frame["billed_seconds"].to_numpy() * CENTI_HOURS, 3600, Rounding.HALF_UP)
    unit = np.zeros(len(frame), dtype="int64")
    amount = np.zeros(len(frame), dtype="int64")
    currencies = frame["currency"].to_numpy()
    for currency in pd.unique(currencies):
        mask = currencies == currency
        mode = rules.money_rounding(currency)
        unit[mask] = div_round(frame["rate_minor"].to_numpy()[mask] * multiplier[mask], BASIS, mode)
        amount[mask] = div_round(frame["quantity_centi"].to_numpy()[mask] * unit[mask], CENTI_HOURS, mode)
    frame["unit_price_minor"] = unit
    frame["amount_minor"] = amount
    frame["money_rounding"] = [rules.money_rounding(c).value for c in currencies] if len(frame) else []
    return PricingResult(
        lines=frame.reset_index(drop=True),
        non_billable=non_billable.reset_index(drop=True),
        unpriceable=pd.concat(problems, ignore_index=True),
    )


def quantity(centi: int) -> Decimal:
    """Hundredths of an hour as the displayed Decimal (125 → Decimal('1.25'))."""
    return Decimal(int(centi)).scaleb(-2)


def explain(line: dict[str, object], service_name: str, rules: RuleSet) -> str:
    """One sentence an approver can check by hand."""
    cur = str(line["currency"])
    policy = rules.rounding
    parts = [
        f"{quantity(int(line['quantity_centi']))} h × {format_money(int(line['unit_price_minor']), cur)}",
        f"{service_name} at {format_money(int(line['rate_minor']), cur)}/h from {line['rate_source']}",
    ]
    if line["modifier"]:
        parts.append(f"{str(line['modifier']).replace('_', '-')} ×{Decimal(int(line['multiplier_bp'])) / BASIS}")
    worked = int(line["raw_seconds"]) // 60
    parts.append(
        f"{worked} min worked, billed {int(line['billed_seconds']) // 60} min "
        f"({policy.increment_minutes}-min increments {policy.mode}, minimum {policy.minimum_minutes})"
    )
    return "; ".join(parts)
