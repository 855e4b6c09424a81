"""Prepaid hours (retainers): an agreement's block of hours, drawn down by its hourly work in time order.

The balance of a period is what the grants still alive hold after earlier draws, oldest grant first (so
hours that roll over are used before they expire). Earlier draws are read from the invoices already posted,
so reruns and supplementary invoices draw each hour once. A line the block covers entirely is shown at 0; the
line that crosses the end of the balance is split in two (drawn, and overage); overage is billed at the
block's overage rate when it has one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd

from billing.models import InvoiceDraft
from billing.money import div_round, to_minor
from rules.schema import AgreementSpec, RuleSet

BASIS = 10_000
CENTI_HOURS = 100


def _months(first: str, last: str) -> list[str]:
    (y, m), (y2, m2) = map(int, first.split("-")), map(int, last.split("-"))
    count = (y2 - y) * 12 + (m2 - m) + 1
    return [f"{y + (m - 1 + n) // 12:04d}-{(m - 1 + n) % 12 + 1:02d}" for n in range(max(count, 0))]


def balance(spec: AgreementSpec, period: str, drawn: dict[str, int]) -> int:
    """Hundredths of an hour left for ``period``: grants alive in it, less every draw up to and including
    the period's own posted invoices (``drawn``: period → hundredths drawn), oldest grant first."""
    prepaid = spec.prepaid
    assert prepaid is not None and spec.starts is not None
    first, last = f"{spec.starts:%Y-%m}", f"{spec.ends:%Y-%m}" if spec.ends else period
    grant = int(prepaid.hours * CENTI_HOURS)
    alive: list[list[int | None]] = []  # [index of the last month it may be used in, hundredths left]
    for index, month in enumerate(_months(first, period)):
        if index == 0 or (prepaid.refill == "monthly" and month <= last):
            expires = None if prepaid.rollover_months is None else index + prepaid.rollover_months
            alive.append([expires, grant])
        alive = [g for g in alive if g[0] is None or g[0] >= index]
        need = drawn.get(month, 0)
        for g in alive:
            take = min(int(g[1] or 0), need)
            g[1], need = int(g[1] or 0) - take, need - take
    return sum(int(g[1] or 0) for g in alive)


def drawn_before(posted: Iterable[InvoiceDraft]) -> dict[str, dict[str, int]]:
    """Agreement → period → hundredths of an hour drawn by posted invoices (from their lines' traces)."""
    drawn: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for draft in posted:
        for line in draft.lines:
            if prepaid := line.trace.get("prepaid"):
                drawn[prepaid["agreement"]][draft.period] += int(prepaid["drawn_centi"])
    return drawn


def balances(rules: RuleSet, period: str, posted: Iterable[InvoiceDraft]) -> dict[str, int]:
    """Each prepaid agreement's balance in ``period``, in hundredths of an hour."""
    drawn = drawn_before(posted)
    return {
        spec.id: balance(spec, period, drawn.get(spec.id, {}))
        for spec in rules.agreements
        if spec.prepaid is not None and spec.starts is not None and f"{spec.starts:%Y-%m}" <= period
    }


def draw_down(lines: pd.DataFrame, rules: RuleSet, available: dict[str, int]) -> pd.DataFrame:
    """Lines with the prepaid hours drawn: covered lines at 0, the crossing line split, overage repriced.

    Adds ``prepaid_agreement``, ``drawn_centi``, ``prepaid_left_centi`` (after the line) and ``overage``."""
    if lines.empty or not available or "agreement_id" not in lines:
        return lines
    lines = lines.reset_index(drop=True).assign(prepaid_agreement=None, drawn_centi=0, prepaid_left_centi=0,
                                                overage=False)  # fmt: skip
    extra = []
    for number, spec in enumerate(rules.agreements):
        if spec.id not in available or spec.prepaid is None:
            continue
        # From the lines as the agreements before this one left them (they drop the rows they repriced).
        eligible = (lines["rate_kind"].astype(str) == "hourly").to_numpy(copy=True)
        if "object_type" in lines:
            eligible &= lines["object_type"].isna().to_numpy()
        eligible &= lines["agreement_id"].astype(object).to_numpy() == spec.id
        if spec.prepaid.services:
            eligible &= lines["service_type"].isin(spec.prepaid.services).to_numpy()
        rows = lines.index[eligible]
        if not len(rows):
            continue
        rows = lines.loc[rows].sort_values(["started_at", "key"]).index.to_numpy()
        quantity = lines.loc[rows, "quantity_centi"].to_numpy(dtype="int64")
        used_after = np.cumsum(quantity)
        covered = np.clip(available[spec.id] - (used_after - quantity), 0, quantity)
        left = np.maximum(available[spec.id] - used_after, 0)
        crossing = (covered > 0) & (covered < quantity)
        # The crossing line's overage part becomes a line of its own.
        over = lines.loc[rows[crossing]].copy()
        over["quantity_centi"] = quantity[crossing] - covered[crossing]
        over["raw_seconds"], over["billed_seconds"] = 0, 0
        drawn_rows = rows[covered > 0]
        lines.loc[drawn_rows, "quantity_centi"] = covered[covered > 0]
        lines.loc[drawn_rows, ["unit_price_minor", "amount_minor"]] = 0
        lines.loc[drawn_rows, "prepaid_agreement"] = spec.id
        lines.loc[drawn_rows, "drawn_centi"] = covered[covered > 0]
        lines.loc[drawn_rows, "prepaid_left_centi"] = left[covered > 0]
        overage = pd.concat([lines.loc[rows[covered == 0]], over])
        overage["overage"] = True
        overage["prepaid_agreement"] = spec.id
        overage = _reprice(overage, spec, number, rules)
        lines = lines.drop(index=rows[covered == 0])
        extra.append(overage)
    return pd.concat([lines, *extra], ignore_index=True) if extra else lines


def _reprice(overage: pd.DataFrame, spec: AgreementSpec, number: int, rules: RuleSet) -> pd.DataFrame:
    """Overage at the block's overage rate in the line's currency (else its normal unit price)."""
    assert spec.prepaid is not None
    quantity = overage["quantity_centi"].to_numpy(dtype="int64")
    unit = overage["unit_price_minor"].to_numpy(dtype="int64").copy()
    rate = overage["rate_minor"].to_numpy(dtype="int64").copy()
    source = overage["rate_source"].astype(str).to_numpy(dtype=object)
    currency = overage["currency"].astype(str).to_numpy()
    for code, value in spec.prepaid.overage_rate.items():
        mask = currency == code
        rate[mask] = to_minor(value, code)
        unit[mask] = div_round(rate[mask] * overage["multiplier_bp"].to_numpy(dtype="int64")[mask], BASIS,
                               rules.money_rounding(code))  # fmt: skip
        source[mask] = f"agreements[{number}].prepaid.overage_rate"
    amount = np.zeros(len(overage), dtype="int64")
    for code in set(currency):
        mask = currency == code
        amount[mask] = div_round(quantity[mask] * unit[mask], CENTI_HOURS, rules.money_rounding(code))
    return overage.assign(rate_minor=rate, unit_price_minor=unit, amount_minor=amount, rate_source=source)
