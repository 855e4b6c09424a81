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

    Every agreement at once: the eligible lines sorted by agreement and time, a running total per agreement,
    and each line's share of its agreement's balance by column. Adds ``prepaid_agreement``, ``drawn_centi``,
    ``prepaid_left_centi`` (after the line) and ``overage``."""
    blocks = [(n, a) for n, a in enumerate(rules.agreements) if a.prepaid is not None and a.id in available]
    if lines.empty or not blocks or "agreement_id" not in lines:
        return lines
    lines = lines.reset_index(drop=True).assign(prepaid_agreement=None, drawn_centi=0, prepaid_left_centi=0,
                                                overage=False)  # fmt: skip
    # Which (agreement, service) pairs draw: an agreement's services, or all of them.
    pairs = pd.DataFrame([{"agreement_id": a.id, "service_type": s, "balance": available[a.id], "block": n}
                          for n, a in blocks for s in (a.prepaid.services or [None])])  # type: ignore[union-attr]  # fmt: skip
    hourly = (lines["rate_kind"].astype(str) == "hourly").to_numpy()
    if "object_type" in lines:
        hourly = hourly & lines["object_type"].isna().to_numpy()
    work = lines.loc[hourly, ["agreement_id", "service_type", "started_at", "key", "quantity_centi"]].astype(
        {"agreement_id": object, "service_type": object})  # fmt: skip
    named = work.reset_index().merge(pairs.dropna(subset=["service_type"]), on=["agreement_id", "service_type"])
    anyservice = work.reset_index().merge(pairs[pairs["service_type"].isna()].drop(columns="service_type"),
                                          on="agreement_id")  # fmt: skip
    eligible = pd.concat([named, anyservice]).sort_values(["block", "started_at", "key"])
    if eligible.empty:
        return lines
    rows = eligible["index"].to_numpy()
    quantity = eligible["quantity_centi"].to_numpy(dtype="int64")
    used_after = eligible.groupby("block", sort=False)["quantity_centi"].cumsum().to_numpy(dtype="int64")
    balance = eligible["balance"].to_numpy(dtype="int64")
    covered = np.clip(balance - (used_after - quantity), 0, quantity)
    left = np.maximum(balance - used_after, 0)
    agreement = eligible["agreement_id"].to_numpy(dtype=object)
    crossing = (covered > 0) & (covered < quantity)
    over = lines.loc[rows[crossing]].copy()  # the crossing line's overage part: a line of its own
    over["quantity_centi"] = quantity[crossing] - covered[crossing]
    over["raw_seconds"], over["billed_seconds"] = 0, 0
    drawn = covered > 0
    lines.loc[rows[drawn], "quantity_centi"] = covered[drawn]
    lines.loc[rows[drawn], ["unit_price_minor", "amount_minor"]] = 0
    lines.loc[rows[drawn], "prepaid_agreement"] = agreement[drawn]
    lines.loc[rows[drawn], "drawn_centi"] = covered[drawn]
    lines.loc[rows[drawn], "prepaid_left_centi"] = left[drawn]
    overage = pd.concat([lines.loc[rows[~drawn]].assign(prepaid_agreement=agreement[~drawn]),
                         over.assign(prepaid_agreement=agreement[crossing])]).assign(overage=True)  # fmt: skip
    return pd.concat([lines.drop(index=rows[~drawn]), _reprice(overage, rules)], ignore_index=True)


def _reprice(overage: pd.DataFrame, rules: RuleSet) -> pd.DataFrame:
    """Overage at its block's overage rate in the line's currency (else its normal unit price)."""
    rates = pd.DataFrame([{"prepaid_agreement": a.id, "currency": code, "over_minor": to_minor(value, code),
                           "over_source": f"agreements[{n}].prepaid.overage_rate"}
                          for n, a in enumerate(rules.agreements) if a.prepaid is not None
                          for code, value in a.prepaid.overage_rate.items()],
                         columns=["prepaid_agreement", "currency", "over_minor", "over_source"])  # fmt: skip
    found = overage[["prepaid_agreement", "currency"]].astype(object).merge(rates, how="left")
    repriced = found["over_minor"].notna().to_numpy()
    rate = np.where(repriced, found["over_minor"].fillna(0).to_numpy(), overage["rate_minor"].to_numpy())
    rate = rate.astype("int64")
    source = np.where(repriced, found["over_source"].to_numpy(dtype=object),
                      overage["rate_source"].astype(str).to_numpy(dtype=object))  # fmt: skip
    unit = overage["unit_price_minor"].to_numpy(dtype="int64").copy()
    quantity = overage["quantity_centi"].to_numpy(dtype="int64")
    currency = overage["currency"].astype(str).to_numpy()
    amount = np.zeros(len(overage), dtype="int64")
    for code in set(currency):  # currencies: few
        mask, mode = currency == code, rules.money_rounding(code)
        again = mask & repriced
        unit[again] = div_round(rate[again] * overage["multiplier_bp"].to_numpy(dtype="int64")[again], BASIS, mode)
        amount[mask] = div_round(quantity[mask] * unit[mask], CENTI_HOURS, mode)
    return overage.assign(rate_minor=rate, unit_price_minor=unit, amount_minor=amount, rate_source=source)
