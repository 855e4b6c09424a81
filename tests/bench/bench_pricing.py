"""The pricing engine on 1,000,000 generated work logs of 5,000 customers, against two references computed
in the same run on the same data: the same arithmetic as one DuckDB SQL query, and a plain row-at-a-time
Python implementation. All three must agree to the cent."""

from __future__ import annotations

import time
from datetime import date
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import yaml

from billing.models import Customer
from rules.engine import BASIS, price
from rules.schema import RuleSet
from tests.bench.run import median_of_three, peak_mb
from tests.conftest import DEMO_RULES

ROWS = 1_000_000
CUSTOMERS = 5_000
ZONES = ["Europe/Berlin", "Europe/Amsterdam", "America/New_York", "America/Chicago", "Asia/Tokyo", "UTC"]
SERVICES = ["remote_support", "onsite_support", "consulting", "project_work", "internal"]


def generate(seed: int = 7) -> tuple[pd.DataFrame, list[Customer], RuleSet]:
    rng = np.random.default_rng(seed)
    customers = [Customer(customer_id=f"C{n:05d}", name=f"Customer {n}", currency="EUR" if n % 3 else "USD",
                          timezone=ZONES[n % len(ZONES)]) for n in range(CUSTOMERS)]  # fmt: skip
    data = yaml.safe_load(DEMO_RULES.read_text())
    own = rng.choice(CUSTOMERS, size=CUSTOMERS // 5, replace=False)  # a fifth have their own remote rate
    data["customer_rates"] = [{"customer": f"C{n:05d}", "service": "remote_support", "rate": f"{80 + n % 40}.50"}
                              for n in sorted(own)]  # fmt: skip
    # A tenth have an agreement with their own remote-support rate and a price rise mid-month; consulting's
    # default rate rises mid-month too: dated rates at two precedence levels.
    agreed = range(0, CUSTOMERS, 10)
    data["agreements"] = [{"id": f"A{n:05d}", "customer": f"C{n:05d}", "starts": "2026-01-01"} for n in agreed]
    data["rates"] = [
        *({"service": "remote_support", "agreement": f"A{n:05d}", "rate": f"{70 + n % 30}.25"} for n in agreed),
        *({"service": "remote_support", "agreement": f"A{n:05d}", "rate": f"{75 + n % 30}.75", "from": "2026-10-15"}
          for n in agreed),
        {"service": "consulting", "currency": "EUR", "rate": "160.00", "from": "2026-10-15"},
        {"service": "consulting", "currency": "USD", "rate": "185.00", "from": "2026-10-15"},
    ]  # fmt: skip
    rules = RuleSet.model_validate(data)
    start = pd.Timestamp("2026-10-01T00:00:00Z").value // 10**9
    frame = pd.DataFrame({
        "key": [f"bench:{n}" for n in range(ROWS)],
        "source_id": [f"WL-{n}" for n in range(ROWS)],
        "ticket_id": None,
        # categorical, as the sources hand them over
        "customer_id": pd.Categorical(np.array([c.customer_id for c in customers])[rng.integers(0, CUSTOMERS, ROWS)]),
        "user": "u",
        "service_type": pd.Categorical(np.array(SERVICES)[rng.choice(5, ROWS, p=[0.6, 0.1, 0.1, 0.15, 0.05])]),
        "started_at": pd.to_datetime(start + rng.integers(0, 30 * 86400 // 300, ROWS) * 300, unit="s", utc=True),
        "raw_seconds": pd.array(rng.integers(1, 240, ROWS) * 60 + rng.integers(0, 60, ROWS), dtype="Int64"),
        "billable": rng.random(ROWS) > 0.08,
        "note": "",
    })  # fmt: skip
    return frame, customers, rules


def per_row(frame: pd.DataFrame, customers: list[Customer], rules: RuleSet) -> dict[str, int]:
    """What a straightforward implementation does: one work log at a time, Decimal arithmetic."""
    by_id = {c.customer_id: c for c in customers}
    own = {(r.customer, r.service): r.rate for r in rules.customer_rates}
    agreement_of = {a.customer: a for a in rules.agreements}
    dated: dict[tuple[str | None, str, str | None], list[tuple[date, Decimal]]] = {}  # (agreement, service, cur)
    for r in rules.rates:
        dated.setdefault((r.agreement, r.service, r.currency), []).append((r.effective_from or date.min, r.rate))

    def in_force(key: tuple[str | None, str, str | None], day: date) -> Decimal | None:
        found = [(since, rate) for since, rate in dated.get(key, []) if since <= day]
        return max(found)[1] if found else None
    start, end = rules.modifiers.after_hours.business_hours.minutes() if rules.modifiers.after_hours else (0, 1440)
    after = rules.modifiers.after_hours.multiplier if rules.modifiers.after_hours else Decimal(1)
    weekend = rules.modifiers.weekend.multiplier if rules.modifiers.weekend else Decimal(1)
    step, minimum = rules.rounding.increment_minutes * 60, rules.rounding.minimum_minutes * 60
    amounts = {}
    for row in frame.itertuples(index=False):
        if not row.billable or not rules.services[row.service_type].billable:
            continue
        customer = by_id[row.customer_id]
        local = row.started_at.to_pydatetime().astimezone(ZoneInfo(customer.timezone))
        agreement = agreement_of.get(row.customer_id)
        running = agreement is not None and agreement.starts is not None and agreement.starts <= local.date()
        rate = (  # most specific first
            (in_force((agreement.id, row.service_type, None), local.date()) if running else None)  # type: ignore[union-attr]
            or own.get((row.customer_id, row.service_type))
            or in_force((None, row.service_type, customer.currency), local.date())
            or rules.services[row.service_type].rates[customer.currency]
        )
        minute = local.hour * 60 + local.minute
        multiplier = Decimal(1)
        if not start <= minute < end:
            multiplier = max(multiplier, after)
        if local.weekday() >= 5:
            multiplier = max(multiplier, weekend)
        mode = ROUND_HALF_EVEN if rules.money_rounding(customer.currency).value == "half_even" else ROUND_HALF_UP
        unit = (rate * multiplier).quantize(Decimal("0.01"), rounding=mode)
        billed = max(int((Decimal(int(row.raw_seconds)) / step).to_integral_value(ROUND_CEILING)) * step, minimum)
        quantity = (Decimal(billed) / 3600).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        amounts[row.key] = int((quantity * unit * 100).quantize(Decimal(1), rounding=mode))
    return amounts


def duckdb_reference(frame: pd.DataFrame, customers: list[Customer], rules: RuleSet) -> pd.DataFrame:
    """The same rate join, rounding and modifiers as one SQL query (DuckDB over the same DataFrame)."""
    import duckdb

    customers_frame = pd.DataFrame({"customer_id": [c.customer_id for c in customers],
                                    "currency": [c.currency for c in customers],
                                    "tz": [c.timezone for c in customers]})  # fmt: skip
    defaults = pd.DataFrame([{"service_type": s, "currency": c, "rate_minor": int(r * 100)}
                             for s, spec in rules.services.items() for c, r in spec.rates.items()])  # fmt: skip
    own = pd.DataFrame([{"customer_id": r.customer, "service_type": r.service, "own_minor": int(r.rate * 100)}
                        for r in rules.customer_rates])  # fmt: skip
    billable_services = pd.DataFrame({"service_type": [s for s, spec in rules.services.items() if spec.billable]})
    customer_of = {a.id: a.customer for a in rules.agreements}
    agreed = pd.DataFrame([{"customer_id": customer_of[r.agreement], "service_type": r.service,
                            "since": r.effective_from or date(1900, 1, 1), "agreed_minor": int(r.rate * 100)}
                           for r in rules.rates if r.agreement])  # fmt: skip
    dated = pd.DataFrame([{"service_type": r.service, "currency": r.currency, "since": r.effective_from,
                           "dated_minor": int(r.rate * 100)} for r in rules.rates if r.level == 0])  # fmt: skip
    start, end = rules.modifiers.after_hours.business_hours.minutes()  # type: ignore[union-attr]
    after_bp = int(rules.modifiers.after_hours.multiplier * BASIS)  # type: ignore[union-attr]
    weekend_bp = int(rules.modifiers.weekend.multiplier * BASIS)  # type: ignore[union-attr]
    step, minimum = rules.rounding.increment_minutes * 60, rules.rounding.minimum_minutes * 60
    work = frame[["key", "customer_id", "service_type", "started_at", "raw_seconds", "billable"]]
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    for name, table in {"work": work, "customers": customers_frame, "defaults": defaults, "own": own,
                        "billable_services": billable_services, "agreed": agreed, "dated": dated}.items():  # fmt: skip
        connection.register(name, table)
    # half-even division of non-negative integers: q + (2r > d or (2r = d and q odd))
    return connection.execute(f"""
        WITH located AS (
            SELECT w.*, c.currency, timezone(c.tz, w.started_at) AS local,
                   CAST(timezone(c.tz, w.started_at) AS DATE) AS day
            FROM work w JOIN customers c USING (customer_id) JOIN billable_services USING (service_type)
            WHERE w.billable
        ), base AS (
            SELECT l.key, l.currency, l.local,
                   coalesce(a.agreed_minor, o.own_minor, t.dated_minor, d.rate_minor) AS rate_minor,
                   greatest(ceil(l.raw_seconds / {step})::BIGINT * {step}, {minimum}) AS billed
            FROM located l
            ASOF LEFT JOIN agreed a ON a.customer_id = l.customer_id AND a.service_type = l.service_type
                                   AND l.day >= a.since
            LEFT JOIN own o ON o.customer_id = l.customer_id AND o.service_type = l.service_type
            ASOF LEFT JOIN dated t ON t.service_type = l.service_type AND t.currency = l.currency AND l.day >= t.since
            JOIN defaults d ON d.service_type = l.service_type AND d.currency = l.currency
        ), modified AS (
            SELECT *, greatest({BASIS},
                CASE WHEN hour(local) * 60 + minute(local) < {start} OR hour(local) * 60 + minute(local) >= {end}
                     THEN {after_bp} ELSE {BASIS} END,
                CASE WHEN isodow(local) >= 6 THEN {weekend_bp} ELSE {BASIS} END) AS bp,
                (billed * 100 + 1800) // 3600 AS qty
            FROM base
        ), unit AS (
            SELECT *, rate_minor * bp // {BASIS} AS uq, rate_minor * bp % {BASIS} AS ur FROM modified
        ), priced AS (
            SELECT key, qty, uq + CASE WHEN 2 * ur > {BASIS} OR (2 * ur = {BASIS} AND uq % 2 = 1) THEN 1 ELSE 0 END
                   AS unit_minor FROM unit
        )
        SELECT key, qty * unit_minor // 100 + CASE WHEN 2 * (qty * unit_minor % 100) > 100
               OR (2 * (qty * unit_minor % 100) = 100 AND (qty * unit_minor // 100) % 2 = 1) THEN 1 ELSE 0 END
               AS amount_minor
        FROM priced
    """).df()


def run() -> dict[str, Any]:
    frame, customers, rules = generate()
    assert {rules.money_rounding(c).value for c in ("EUR", "USD")} == {"half_even"}  # the SQL rounds half-even
    engine_seconds, engine = median_of_three(lambda: price(frame, customers, rules).lines)
    duckdb_seconds, sql = median_of_three(lambda: duckdb_reference(frame, customers, rules))

    started = time.perf_counter()
    slow = per_row(frame, customers, rules)
    per_row_seconds = time.perf_counter() - started

    ours = dict(zip(engine["key"], engine["amount_minor"].astype(int), strict=True))
    theirs = dict(zip(sql["key"], sql["amount_minor"].astype(int), strict=True))
    assert ours == theirs, "the engine and the DuckDB reference disagree"
    assert ours == slow, "the engine and the per-row reference disagree"
    return {
        "name": "pricing",
        "rows": ROWS,
        "seconds": round(engine_seconds, 3),
        "peak_mb": peak_mb(),
        "references": {"duckdb": round(duckdb_seconds, 3), "per_row": round(per_row_seconds, 3)},
        "timing": "engine and duckdb: median of 3 runs after a warm-up run; per_row: one run",
        "lines": len(engine),
        "customers": CUSTOMERS,
        "total_minor": int(engine["amount_minor"].sum()),
        "targets": {"seconds": 1.0, "x_duckdb": 2.0, "x_faster_than_per_row": 20, "peak_mb": 1536},
    }
