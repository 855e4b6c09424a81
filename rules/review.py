"""The review queue: drafts that look wrong go to a human, each with reasons in plain words and numbers.

A draft is flagged (``approval.review`` in the rules file) when

- its total, billed hours or effective rate stand out from the customer's own history: the robust z-score
  ``|x − median| / spread`` over the months with posted invoices (per currency) in the trailing window exceeds
  ``deviation``, where ``spread = max(1.4826 × MAD, min_relative_spread × |median|)``. Needs ``min_history``
  such months; a supplementary invoice is compared as the month's total (what is already posted for its
  period plus the draft);
- it is the customer's first invoice (nothing posted before);
- a line bills a service never billed to the customer before (not asked on a first invoice: all are new);
- a line was made by a rule listed in ``unusual_rules``.

Plain functions over data: ``review_flags`` takes the drafts and the history (``billing.ledger.history``);
``review`` reads that history from the ledger first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
import pandas as pd

from billing.ledger import Ledger
from billing.ledger.history import customer_history, effective_rate, is_time_line, services_billed, shift_period
from billing.models import ChargeLine, InvoiceDraft
from billing.money import format_money
from rules.schema import ReviewRules

MAD_TO_SIGMA = 1.4826  # the MAD of normally distributed values times this is their standard deviation
METRIC_NAMES = {"total": "total", "hours": "hours", "effective_rate": "effective rate"}


@dataclass(frozen=True)
class ReviewFlag:
    """Why a draft needs a human. ``code``: ``unusual_total``, ``unusual_hours``, ``unusual_effective_rate``,
    ``first_invoice``, ``new_service`` or ``unusual_rule``; ``message``: the reason in words, with numbers."""

    code: str
    message: str


def draft_hours(draft: InvoiceDraft) -> Decimal:
    """Billed hours of the draft's time lines (as ``customer_history`` counts them)."""
    return sum((line.quantity_billed for line in draft.lines if is_time_line(line.trace)), Decimal(0))


def line_rule_ids(line: ChargeLine) -> list[str]:
    """The rule ids a line's trace names: the cap or discount that made it (``rule``), its modifier
    (``after_hours``, ``weekend``, ``holiday``, ``priority``), its rate source (``customer_rates[0]``,
    ``ticket_fees[reset]``) and the id inside a source that names one (``reset``)."""
    ids = [str(line.trace[k]) for k in ("rule", "modifier", "rate_source") if line.trace.get(k)]
    source = str(line.trace.get("rate_source") or "")
    if source.endswith("]") and "[" in source:
        inner = source[source.index("[") + 1 : -1]
        if inner and not inner.isdigit():
            ids.append(inner)
    return list(dict.fromkeys(ids))


def review_flags(
    drafts: Sequence[InvoiceDraft],
    history: pd.DataFrame,
    services: Mapping[str, set[str]],
    settings: ReviewRules,
) -> dict[str, list[ReviewFlag]]:
    """Draft key → its flags (an empty list: nothing stands out). Every draft's key is in the answer.

    ``history``: ``customer_history`` rows covering the trailing months before each draft's period (rows of
    other months are ignored; a row of the draft's own period is what is already posted for it).
    ``services``: ``services_billed`` through the drafts' periods; a customer missing from it was never
    invoiced.
    """
    flags: dict[str, list[ReviewFlag]] = {d.key: [] for d in drafts}
    if not settings.enabled or not drafts:
        return flags
    for draft in drafts:
        if settings.first_invoice and draft.customer_id not in services:
            flags[draft.key].append(ReviewFlag("first_invoice", "first invoice for this customer"))
    for key, flag in _deviations(drafts, history, settings):
        flags[key].append(flag)
    for draft in drafts:
        known = services.get(draft.customer_id)
        if settings.new_services and known is not None:
            for service in dict.fromkeys(line.service_type for line in draft.lines):
                if service not in known:
                    flags[draft.key].append(ReviewFlag(
                        "new_service", f"service '{service}' was never billed to this customer before"
                    ))  # fmt: skip
        unusual = set(settings.unusual_rules)
        for number, line in enumerate(draft.lines, start=1):
            for rule in line_rule_ids(line):
                if rule in unusual:
                    flags[draft.key].append(ReviewFlag(
                        "unusual_rule",
                        f"line {number} uses rule '{rule}' (approval.review.unusual_rules): {line.description}",
                    ))  # fmt: skip
    return flags


def review(
    ledger: Ledger, drafts: Sequence[InvoiceDraft] | pd.DataFrame, settings: ReviewRules
) -> dict[str, list[ReviewFlag]]:
    """``review_flags`` with the customers' history read from the ledger (three queries for all drafts).

    ``drafts``: the drafts, or their headers (``Ledger.draft_headers``); the lines of headers are read only
    when a check needs them (a customer with history, or ``unusual_rules``), so a period of first invoices
    is reviewed without reading its lines."""
    headers = drafts if isinstance(drafts, pd.DataFrame) else None
    keys = list(headers["key"]) if headers is not None else [d.key for d in drafts]  # type: ignore[union-attr]
    if not settings.enabled or not keys:
        return {key: [] for key in keys}
    if headers is not None:
        periods, customers = sorted(set(headers["period"])), set(headers["customer_id"])
    else:
        periods = sorted({d.period for d in drafts})  # type: ignore[union-attr]
        customers = {d.customer_id for d in drafts}  # type: ignore[union-attr]
    through = shift_period(periods[-1], 1)  # the drafts' own periods included: what is already posted for them
    first = shift_period(periods[0], -settings.trailing_months)
    year, month = map(int, first.split("-"))
    end_year, end_month = map(int, through.split("-"))
    months = (end_year - year) * 12 + end_month - month
    history = customer_history(ledger, customers, through, months)
    services = services_billed(ledger, customers, through)
    if headers is not None:
        lines_matter = (bool(settings.unusual_rules) or (bool(settings.metrics) and not history.empty)
                        or (settings.new_services and not customers.isdisjoint(services)))  # fmt: skip
        if not lines_matter:  # only the first-invoice check can flag these drafts
            return {key: [ReviewFlag("first_invoice", "first invoice for this customer")]
                    if settings.first_invoice and customer not in services else []
                    for key, customer in zip(headers["key"], headers["customer_id"], strict=True)}  # fmt: skip
        drafts = ledger.drafts(keys=keys)
    return review_flags(drafts, history, services, settings)  # type: ignore[arg-type]


def explain(flags: Sequence[ReviewFlag]) -> str:
    """The reasons as a Markdown list, for an approval form."""
    return "\n".join(f"- {flag.message}" for flag in flags)


# -- deviations from the customer's history ---------------------------------------------------------------------


def _deviations(
    drafts: Sequence[InvoiceDraft], history: pd.DataFrame, settings: ReviewRules
) -> list[tuple[str, ReviewFlag]]:
    metrics = list(dict.fromkeys(settings.metrics))
    if not metrics or history.empty:
        return []
    exact = pd.DataFrame([
        {"key": d.key, "customer_id": d.customer_id, "currency": d.currency, "period": d.period,
         "start": shift_period(d.period, -settings.trailing_months), "own_total": d.total_minor,
         "own_hours": draft_hours(d)}
        for d in drafts
    ])  # fmt: skip
    rows = exact[["key", "customer_id", "currency", "period", "start"]].merge(
        history, on=["customer_id", "currency"], suffixes=("", "_h")
    )
    # A month is judged whole, as the history counts it: the drafts of the same customer, currency and period
    # (several agreements) together, with what is already posted for it (a supplementary invoice).
    month = ["customer_id", "currency", "period"]
    batch = exact.groupby(month).agg(
        batch_total=("own_total", "sum"), batch_hours=("own_hours", _sum), drafts=("key", "size")
    )
    same = rows[rows["period_h"] == rows["period"]].groupby("key")
    posted = same.agg(posted_total=("total_minor", "sum"), posted_hours=("hours", _sum), posted=("invoices", "sum"))
    exact = exact.join(batch, on=month).join(posted, on="key")
    exact["posted_total"] = exact["posted_total"].fillna(0).astype("int64")
    exact["posted"] = exact["posted"].fillna(0).astype("int64")
    exact["posted_hours"] = [h if isinstance(h, Decimal) else Decimal(0) for h in exact["posted_hours"]]
    exact["others_total"] = exact["batch_total"] - exact["own_total"]
    exact["others_hours"] = [b - o for b, o in zip(exact["batch_hours"], exact["own_hours"], strict=True)]
    exact["others"] = exact["drafts"] - 1
    exact["total"] = exact["batch_total"] + exact["posted_total"]
    exact["hours"] = [b + p for b, p in zip(exact["batch_hours"], exact["posted_hours"], strict=True)]
    exact["effective_rate"] = [effective_rate(t, h) for t, h in zip(exact["total"], exact["hours"], strict=True)]

    window = rows[(rows["period_h"] >= rows["start"]) & (rows["period_h"] < rows["period"])]
    past = window[["key", "period_h"]].assign(
        total=window["total_minor"].astype("float64"),
        hours=[float(h) for h in window["hours"]],
        effective_rate=window["effective_rate_minor"].astype("Float64").to_numpy(dtype="float64", na_value=np.nan),
    )
    long = past.melt(id_vars=["key", "period_h"], value_vars=metrics, var_name="metric").dropna(subset=["value"])
    if long.empty:
        return []
    groups = long.groupby(["key", "metric"])
    long["median"] = groups["value"].transform("median")
    long["distance"] = (long["value"] - long["median"]).abs()
    stats = long.groupby(["key", "metric"]).agg(
        months=("value", "size"), first=("period_h", "min"), last=("period_h", "max"),
        median=("median", "first"), mad=("distance", "median"),
    ).reset_index()  # fmt: skip
    stats = stats[stats["months"] >= settings.min_history]
    values = exact.set_index("key")
    stats["x"] = [_as_float(values.at[k, m]) for k, m in zip(stats["key"], stats["metric"], strict=True)]
    stats = stats[stats["x"].notna()]
    stats["spread"] = np.maximum(
        MAD_TO_SIGMA * stats["mad"], float(settings.min_relative_spread) * stats["median"].abs()
    )
    gap = (stats["x"] - stats["median"]).abs()
    with np.errstate(divide="ignore", invalid="ignore"):
        stats["z"] = np.where(stats["spread"] > 0, gap / stats["spread"], np.where(gap > 0, np.inf, 0.0))
    flagged = stats[stats["z"] > float(settings.deviation)]
    order = {m: n for n, m in enumerate(metrics)}
    flagged = flagged.assign(_order=flagged["metric"].map(order)).sort_values(["key", "_order"])
    return [
        (row.key, ReviewFlag(f"unusual_{row.metric}", _message(row, values.loc[row.key], settings)))
        for row in flagged.itertuples()
    ]


def _sum(values: pd.Series) -> Decimal:
    return sum(values, Decimal(0))


def _as_float(value: Any) -> float:
    return float("nan") if value is None or value is pd.NA else float(value)


def _minor(value: float) -> int:
    """A median of minor units (an integer, or halfway between two) as whole minor units, half to even."""
    return int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _show(metric: str, value: float | int | Decimal, currency: str) -> str:
    if metric == "hours":
        return f"{Decimal(value).quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN)} h"
    money = format_money(_minor(float(value)), currency)
    return f"{money}/h" if metric == "effective_rate" else money


def _message(row: Any, draft: pd.Series, settings: ReviewRules) -> str:
    metric, currency = row.metric, draft["currency"]
    what = f"{METRIC_NAMES[metric]} {_show(metric, draft[metric], currency)}"
    if draft["others"] or draft["posted"]:
        if metric in ("total", "hours"):
            parts = [f"this draft {_show(metric, draft[f'own_{metric}'], currency)}"]
            if draft["others"]:
                other = "other draft" if draft["others"] == 1 else "other drafts"
                parts.append(f"{_show(metric, draft[f'others_{metric}'], currency)} in {draft['others']} {other}")
            if draft["posted"]:
                parts.append(f"{_show(metric, draft[f'posted_{metric}'], currency)} already posted")
            what += f" for {draft['period']} ({' + '.join(parts)})"
        else:
            what += f" for {draft['period']} (this draft, other drafts and posted invoices of the month together)"
    median = _show(metric, row.median, currency)
    if row.months == settings.trailing_months:
        span = f"over the last {settings.trailing_months} months ({row.first} … {row.last})"
    else:
        span = (f"over {row.months} months with invoices in the last {settings.trailing_months} "
                f"({row.first} … {row.last})")  # fmt: skip
    direction = "above" if row.x > row.median else "below"
    if not np.isfinite(row.z):
        return f"{what} is {direction} this customer's median of {median} {span}, which most months matched exactly"
    return (
        f"{what} is {row.z:.1f}× the usual spread {direction} this customer's median of {median} {span} "
        f"(spread {_show(metric, row.spread, currency)}; flagged beyond {settings.deviation}×)"
    )
