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

import calendar
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from billing.models import Customer
from billing.money import Rounding, div_round, exponent, format_money, to_minor
from rules.schema import RuleSet

BASIS = 10_000  # multipliers as integer basis points: 1.5 → 15000
CENTI_HOURS = 100  # quantities in hundredths of an hour


@dataclass
class PricingResult:
    lines: pd.DataFrame  # one row per billable work log
    non_billable: pd.DataFrame  # key, rule
    unpriceable: pd.DataFrame  # key, reason (no rate, unknown customer ...): quarantined by the caller
    held: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"key": [], "rule": []}))  # key, rule


def _rate_tables(
    rules: RuleSet, customers: list[Customer | None], services: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rate (minor units, -1 where none) and rate source (an index into the returned names) for every
    (customer, service) pair seen: customer × service is small, so per-row lookups become array indexing.
    The customer's own rate for a service wins over the service's default in the customer's currency."""
    names: list[str] = []
    currencies = sorted({c.currency for c in customers if c is not None})
    default_rate = np.full((len(currencies) + 1, len(services)), -1, dtype="int64")  # last row: no customer
    default_source = np.full((len(currencies) + 1, len(services)), -1, dtype="int64")
    pairs = {(f.base, f.quote) for f in rules.fx}
    for row, currency in enumerate(currencies):
        for col, code in enumerate(services):
            spec = rules.services.get(code)
            if spec is not None and currency in spec.rates:
                default_rate[row, col] = to_minor(spec.rates[currency], currency)
                default_source[row, col] = _name(names, f"services.{code}.rates.{currency}")
            elif spec is not None and (base := next((c for c in spec.rates if (c, currency) in pairs), None)):
                # In the base currency's minor units until the day's exchange rate converts it (_convert).
                default_rate[row, col] = to_minor(spec.rates[base], base)
                default_source[row, col] = _name(names, f"services.{code}.rates.{base} via fx {base}/{currency}")
    currency_row = np.array([currencies.index(c.currency) if c else len(currencies) for c in customers], dtype="int64")
    rate, source = default_rate[currency_row], default_source[currency_row]
    row_of = {c.customer_id: n for n, c in enumerate(customers) if c is not None}
    service_col = {s: n for n, s in enumerate(services)}
    for number, own in enumerate(rules.customer_rates):
        if own.customer in row_of and own.service in service_col:
            row, col = row_of[own.customer], service_col[own.service]
            rate[row, col] = to_minor(own.rate, customers[row].currency)  # type: ignore[union-attr]
            source[row, col] = _name(names, f"customer_rates[{number}]")
    return rate, source, names


def _convert(frame: pd.DataFrame, rules: RuleSet) -> None:
    """Rates taken in another currency (``... via fx BASE/QUOTE``) converted at the exchange rate in force on
    the day of the work: rate × fx, rounded to the customer's minor unit by its currency's mode."""
    sources = frame["rate_source"].cat
    codes = sources.codes.to_numpy()
    rate = frame["rate_minor"].to_numpy(dtype="int64", copy=True)
    day = frame["local_date"].to_numpy().astype("datetime64[D]")
    for code, name in enumerate(sources.categories):
        if " via fx " not in name:
            continue
        base, quote = name.rsplit(" via fx ", 1)[1].split("/")
        mask = codes == code
        table = sorted((f for f in rules.fx if (f.base, f.quote) == (base, quote)), key=lambda f: f.effective_from)
        starts = np.array([f.effective_from for f in table], dtype="datetime64[D]")
        micro = np.array([int(f.rate * 1_000_000) for f in table], dtype="int64")
        # Before the first rate's date, the first rate applies (a table usually starts in the past).
        index = np.clip(np.searchsorted(starts, day[mask], side="right") - 1, 0, None)
        shift = exponent(quote) - exponent(base)
        numerator = rate[mask] * micro[index] * 10 ** max(shift, 0)
        rate[mask] = div_round(numerator, 1_000_000 * 10 ** max(-shift, 0), rules.money_rounding(quote))
    frame["rate_minor"] = rate


def _name(names: list[str], name: str) -> int:
    names.append(name)
    return len(names) - 1


def _local_times(started_at: pd.Series, zone_codes: np.ndarray, zones: list[str]) -> tuple[np.ndarray, ...]:
    """Weekday (0=Mon), minute of the day and date of each timestamp in its customer's timezone.

    One tz_convert per distinct zone, then integer arithmetic on local wall-clock nanoseconds."""
    wall = np.zeros(len(started_at), dtype="int64")
    utc = started_at.to_numpy(dtype="datetime64[ns]").view("int64")
    for code, zone in enumerate(zones):
        mask = zone_codes == code
        if mask.any():
            local = pd.DatetimeIndex(utc[mask].view("datetime64[ns]"), tz="UTC").tz_convert(zone).tz_localize(None)
            wall[mask] = local.asi8
    minutes = wall // 60_000_000_000
    days = minutes // 1440
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    return weekday, minutes % 1440, days.astype("datetime64[D]")


def _round_time(raw_seconds: np.ndarray, rules: RuleSet) -> np.ndarray:
    policy = rules.rounding
    step = policy.increment_minutes * 60
    mode = {"up": Rounding.CEILING, "nearest": Rounding.HALF_UP, "down": Rounding.FLOOR}[policy.mode]
    billed = div_round(raw_seconds, step, mode) * step
    return np.maximum(billed, policy.minimum_minutes * 60)


def non_billable_rule(
    worklogs: pd.DataFrame, rules: RuleSet, service_codes: np.ndarray | None = None, services: Any = None
) -> tuple[np.ndarray, list[str]]:
    """For each work log, the index of the first non-billable rule it matches (-1: none), and the rule ids.
    Service conditions compare factorized codes when given (cheaper than 1M string comparisons)."""
    if service_codes is None:
        service_codes, services = pd.factorize(worklogs["service_type"])
    code_of = {name: n for n, name in enumerate(services)}

    def service_is(wanted: str | list[str]) -> np.ndarray:
        wanted_codes = [code_of[w] for w in ([wanted] if isinstance(wanted, str) else wanted) if w in code_of]
        return np.isin(service_codes, wanted_codes)

    rule, names = first_match(worklogs, rules.non_billable, service_is)
    for code, service in rules.services.items():
        if not service.billable:
            names.append(f"services.{code}.billable=false")
            rule[service_is(code) & (rule < 0)] = len(names) - 1
    return rule, names


def first_match(worklogs: pd.DataFrame, specs: Any, service_is: Any) -> tuple[np.ndarray, list[str]]:
    """For each work log, the index of the first rule in ``specs`` whose ``when`` it matches (-1: none)."""
    names = [spec.id for spec in specs]
    rule = np.full(len(worklogs), -1, dtype="int64")
    for number, spec in enumerate(specs):
        mask = np.ones(len(worklogs), dtype=bool)
        for column, wanted in spec.when.items():
            if column == "service_type":
                mask &= service_is(wanted)  # type: ignore[arg-type]
            else:
                values = worklogs[column]
                mask &= (values.isin(wanted) if isinstance(wanted, list) else values == wanted).to_numpy(dtype=bool)
        rule[mask & (rule < 0)] = number
    return rule, names


def agreement_running(customer_codes: np.ndarray, customer_ids: Any, day: np.ndarray, rules: RuleSet) -> pd.Categorical:
    """For each row, the customer's agreement running on the day (the first of the customer's that does).

    ``customer_codes`` index ``customer_ids`` (-1: none). Per customer code, the k-th agreement of the customer
    is a small table; one pass per k (customers rarely have more than one or two) indexes it by column."""
    ids = [spec.id for spec in rules.agreements]
    found = np.full(len(customer_codes), -1, dtype="int64")
    if not ids:
        return pd.Categorical.from_codes(found, categories=[])
    of_customer: dict[str, list[int]] = defaultdict(list)
    for number, spec in enumerate(rules.agreements):
        of_customer[spec.customer].append(number)
    # One more entry, for code -1 (masked out by ``candidate >= 0`` below).
    starts = np.array([np.datetime64(a.starts or "1900-01-01", "ns") for a in rules.agreements] + ["1900-01-01"],
                      dtype="datetime64[ns]")  # fmt: skip
    ends = np.array([np.datetime64(a.ends or "2200-01-01", "ns") for a in rules.agreements] + ["1900-01-01"],
                    dtype="datetime64[ns]")  # fmt: skip
    for k in range(max(len(v) for v in of_customer.values())):
        kth = np.array([of_customer[c][k] if len(of_customer.get(c, [])) > k else -1 for c in customer_ids] + [-1])
        candidate = kth[customer_codes]  # code -1 takes the appended -1
        running = (candidate >= 0) & (found < 0) & (day >= starts[candidate]) & (day <= ends[candidate])
        found[running] = candidate[running]
    return pd.Categorical.from_codes(found, categories=ids)


DAY_BITS = 20  # days since 1900 fit in 20 bits until 4770: a row's key is (composite key << DAY_BITS) | day
EPOCH = date(1900, 1, 1)


def _days(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[D]").astype("int64") - np.datetime64(EPOCH, "D").astype("int64")


def _apply_rates(frame: pd.DataFrame, rules: RuleSet, customer_currency: dict[str, str]) -> np.ndarray:
    """Override the table rates with the general ``rates:`` (precedence levels, effective dates).

    Level by level, least specific first, the rate in force (the latest ``from`` on or before the day of the
    work) is found for each row's keys with one ``searchsorted`` over integer keys (composite key, day); a
    match at a higher level wins. Returns a boolean array: the rows billed at a fixed amount."""
    fixed = np.zeros(len(frame), dtype=bool)
    if not rules.rates or frame.empty:
        return fixed
    day = _days(frame["local_date"].to_numpy())
    columns = {"service_type": frame["service_type"], "currency": frame["currency"],
               "customer_id": frame["customer_id"], "agreement_id": frame["agreement_id"]}  # fmt: skip
    if any(spec.role for spec in rules.rates):
        columns["role"] = frame["user"].map(rules.roles)
    codes, code_of = {}, {}
    for name, column in columns.items():
        codes[name], uniques = pd.factorize(column)
        code_of[name] = {value: n for n, value in enumerate(uniques)}
    keys_of_level = {0: ["service_type", "currency"], 1: ["customer_id", "service_type", "currency"],
                     2: ["agreement_id", "service_type", "currency"],
                     3: ["agreement_id", "role", "service_type", "currency"]}  # fmt: skip
    rate = frame["rate_minor"].to_numpy(dtype="int64", copy=True)
    sources = frame["rate_source"].cat
    names = list(sources.categories) + [f"rates[{n}]" for n in range(len(rules.rates))]
    source = sources.codes.to_numpy().astype("int64")
    own = np.isin(source, [n for n, name in enumerate(sources.categories) if name.startswith("customer_rates")])
    currencies = sorted(code_of["currency"])
    for level, keys in keys_of_level.items():
        entries = []  # (composite key, from day, rate, fixed, source name index)
        for number, spec in enumerate(rules.rates):
            if spec.level != level:
                continue
            for currency in [spec.currency] if spec.currency else currencies:
                if spec.customer and customer_currency.get(spec.customer, currency) != currency:
                    continue
                wanted = {"service_type": spec.service, "currency": currency, "customer_id": spec.customer,
                          "agreement_id": spec.agreement, "role": spec.role}  # fmt: skip
                parts = [code_of[k].get(wanted[k], -1) for k in keys]
                if min(parts) < 0:  # no work with these keys
                    continue
                composite = 0
                for k, part in zip(keys, parts, strict=True):
                    composite = composite * (len(code_of[k]) + 1) + part
                since = ((spec.effective_from or EPOCH) - EPOCH).days
                entries.append(((composite << DAY_BITS) | since, to_minor(spec.rate, currency), spec.kind == "fixed",
                                len(sources.categories) + number))  # fmt: skip
        if not entries:
            continue
        entries.sort()
        table_key = np.array([e[0] for e in entries], dtype="int64")
        composite = np.zeros(len(frame), dtype="int64")
        valid = np.ones(len(frame), dtype=bool)
        for k in keys:
            composite = composite * (len(code_of[k]) + 1) + codes[k]
            valid &= codes[k] >= 0
        if level == 0:  # a service default never overrides the customer's own rate (customer_rates)
            valid &= ~own
        at = np.searchsorted(table_key, (composite << DAY_BITS) | day, side="right") - 1
        hit = valid & (at >= 0) & ((table_key[np.maximum(at, 0)] >> DAY_BITS) == composite)
        chosen = at[hit]
        rate[hit] = np.array([e[1] for e in entries], dtype="int64")[chosen]
        fixed[hit] = np.array([e[2] for e in entries], dtype=bool)[chosen]
        source[hit] = np.array([e[3] for e in entries], dtype="int64")[chosen]
    frame["rate_minor"] = rate
    frame["rate_source"] = pd.Categorical.from_codes(source, categories=names)  # unused names cost nothing
    return fixed


def _together(frame: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Work logs billed alike (same customer, service, rate, multiplier) summed per ticket, day or line;
    a work log without a ticket stays on its own at ticket scope. ``item_keys`` lists what a line bills."""
    alike = ["customer_id", "agreement_id", "currency", "service_type", "rate_minor", "rate_source", "rate_kind",
             "multiplier_bp", "modifier"]  # fmt: skip
    group = {"ticket": frame["ticket_id"].fillna(frame["key"]), "day": frame["local_date"],
             "line": pd.Series(0, index=frame.index)}[scope]  # fmt: skip
    ordered = frame.assign(_group=group.to_numpy()).sort_values(["started_at", "key"])
    lines = ordered.groupby([*alike, "_group"], observed=True, sort=False, dropna=False).agg(
        key=("key", "first"), item_keys=("key", tuple), source_id=("source_id", ", ".join),
        ticket_id=("ticket_id", "first"), user=("user", "first"), started_at=("started_at", "min"),
        local_date=("local_date", "min"), raw_seconds=("raw_seconds", "sum"),
        note=("note", lambda notes: "; ".join(n for n in notes if n)),
    ).reset_index().drop(columns="_group")  # fmt: skip
    lines["raw_seconds"] = lines["raw_seconds"].astype("int64")
    return lines


MODIFIERS = ["", "after_hours", "weekend", "holiday", "priority"]
TICKET_FIELDS = {"priority": "ticket_priority", "status": "ticket_status", "ticket_type": "ticket_type"}


def _with_ticket_fields(worklogs: pd.DataFrame, tickets: pd.DataFrame | None, rules: RuleSet) -> pd.DataFrame:
    """Add the ticket's priority, status and type to each work log, only when a rule asks for them."""
    needed = bool(rules.modifiers.priority or rules.ticket_fees) or any(
        c in ("ticket_status", "ticket_type", "ticket_resolved")
        for spec in [*rules.non_billable, *rules.hold] for c in spec.when
    )
    if not needed:
        return worklogs
    worklogs = worklogs.copy()
    known = tickets is not None and len(tickets) > 0
    index = pd.Index(tickets["ticket_id"]) if known else pd.Index([])  # type: ignore[index]
    position = index.get_indexer(worklogs["ticket_id"])
    for column, name in TICKET_FIELDS.items():
        values = tickets[column].to_numpy(dtype=object) if known and column in tickets else np.array([], object)  # type: ignore[index]
        worklogs[name] = np.where(position >= 0, np.append(values, None)[position], None) if len(values) else None
    resolved = np.zeros(len(index), dtype=bool)  # a source that gives no resolved date: nothing is resolved
    if known and "resolved_at" in tickets:  # type: ignore[operator]
        resolved = tickets["resolved_at"].notna().to_numpy()  # type: ignore[index]
    # Work without a ticket (or on an unknown one) has nothing to wait for.
    worklogs["ticket_resolved"] = np.where(position >= 0, np.append(resolved, True)[position], True)
    return worklogs


# What a charge line keeps of its work log (the rest stays in the ledger).
CARRIED_COLUMNS = ("key", "source_id", "ticket_id", "customer_id", "user", "service_type", "started_at",
                   "raw_seconds", "note", "ticket_priority", "ticket_type")  # fmt: skip


def price(
    worklogs: pd.DataFrame, customers: list[Customer], rules: RuleSet, tickets: pd.DataFrame | None = None
) -> PricingResult:
    """Price whole columns: factorize customers and services once, then index small lookup tables.
    Text columns of the result are categoricals built from codes: no per-row Python objects.
    ``tickets`` (ticket_id, priority, status, ticket_type) feed priority surcharges and ticket conditions."""
    worklogs = _with_ticket_fields(worklogs, tickets, rules)
    customer_codes, customer_ids = pd.factorize(worklogs["customer_id"])
    service_codes, service_ids = pd.factorize(worklogs["service_type"])
    by_id = {c.customer_id: c for c in customers}
    known = [by_id.get(c) for c in customer_ids]
    keys = worklogs["key"].to_numpy()

    rule, rule_names = non_billable_rule(worklogs, rules, service_codes, service_ids)
    settled = rule >= 0
    non_billable = pd.DataFrame({"key": keys[settled], "rule": np.array(rule_names, dtype=object)[rule[settled]]})
    held = pd.DataFrame({"key": [], "rule": []})
    if rules.hold:
        code_of = {name: n for n, name in enumerate(service_ids)}
        hold, _ = first_match(worklogs, rules.hold, lambda wanted: np.isin(
            service_codes, [code_of[w] for w in ([wanted] if isinstance(wanted, str) else wanted) if w in code_of]))
        waits = (hold >= 0) & ~settled
        reasons = np.array([f"held by {h.id}: {h.description or 'waiting'}" for h in rules.hold], dtype=object)
        held = pd.DataFrame({"key": keys[waits], "rule": reasons[hold[waits]]})
        settled = settled | waits

    is_known = np.array([c is not None for c in known] + [False], dtype=bool)[customer_codes]  # -1: no customer
    unknown = ~settled & ~is_known
    reason = "unknown customer " + worklogs["customer_id"][unknown].astype(str)
    problems = [pd.DataFrame({"key": keys[unknown], "reason": reason})]

    rates, sources, source_names = _rate_tables(rules, known, list(service_ids))
    candidate = ~settled & is_known
    rate = np.where(candidate & (service_codes >= 0), rates[customer_codes, service_codes], -1)
    currencies = sorted({c.currency for c in known if c is not None})
    currency_code = np.array([currencies.index(c.currency) if c else -1 for c in known] + [-1])[customer_codes]
    no_rate = candidate & (rate < 0)
    problems.append(pd.DataFrame({
        "key": keys[no_rate],
        "reason": [f"no rate for service {s} in {currencies[c]}" for s, c in
                   zip(worklogs["service_type"].to_numpy()[no_rate], currency_code[no_rate], strict=True)],
    }))  # fmt: skip
    take = np.flatnonzero(candidate & (rate >= 0))
    codes, currency_code, rate = customer_codes[take], currency_code[take], rate[take]
    carried = [c for c in CARRIED_COLUMNS if c in worklogs.columns]
    frame = worklogs[carried].iloc[take].reset_index(drop=True)
    frame["currency"] = pd.Categorical.from_codes(currency_code, categories=currencies)
    frame["rate_minor"] = rate
    frame["rate_source"] = pd.Categorical.from_codes(sources[codes, service_codes[take]], categories=source_names)

    # When the work was done, in the customer's timezone.
    zone_codes, zones = pd.factorize(np.array([c.timezone if c else "UTC" for c in known], dtype=object))
    weekday, minute, day = _local_times(frame["started_at"], zone_codes[codes], list(zones))
    frame["local_date"] = day
    if rules.fx:
        _convert(frame, rules)
    multiplier = np.full(len(frame), BASIS, dtype="int64")
    modifier = np.zeros(len(frame), dtype="int8")  # an index into MODIFIERS
    after = rules.modifiers.after_hours
    if after is not None:
        start, end = after.business_hours.minutes()
        bp = int(after.multiplier * BASIS)
        hit = ((minute < start) | (minute >= end)) & (bp > multiplier)
        multiplier[hit], modifier[hit] = bp, MODIFIERS.index("after_hours")
    weekend = rules.modifiers.weekend
    if weekend is not None:
        bp = int(weekend.multiplier * BASIS)
        hit = (weekday >= 5) & (bp > multiplier)
        multiplier[hit], modifier[hit] = bp, MODIFIERS.index("weekend")
    holidays = rules.modifiers.holidays
    if holidays is not None and holidays.calendars:
        country_of = np.array([c.country if c else None for c in known] + [None], dtype=object)[codes]
        bp = int(holidays.multiplier * BASIS)
        on_holiday = np.zeros(len(frame), dtype=bool)
        for country, days in holidays.calendars.items():
            on_holiday |= (country_of == country) & np.isin(day, np.array(days, dtype="datetime64[D]"))
        hit = on_holiday & (bp > multiplier)
        multiplier[hit], modifier[hit] = bp, MODIFIERS.index("holiday")
    if rules.modifiers.priority:
        priority = frame["ticket_priority"].to_numpy(dtype=object)
        for name, factor in rules.modifiers.priority.items():
            bp = int(factor * BASIS)
            hit = (priority == name) & (bp > multiplier)
            multiplier[hit], modifier[hit] = bp, MODIFIERS.index("priority")
    day_ns = frame["local_date"].to_numpy().astype("datetime64[ns]")
    frame["agreement_id"] = agreement_running(codes, customer_ids, day_ns, rules)
    fixed = _apply_rates(frame, rules, {c.customer_id: c.currency for c in known if c is not None})
    rate = frame["rate_minor"].to_numpy()
    multiplier[fixed], modifier[fixed] = BASIS, 0  # a fixed amount is what was agreed, whenever the work
    frame["multiplier_bp"] = multiplier
    frame["modifier"] = pd.Categorical.from_codes(modifier, categories=MODIFIERS)
    frame["rate_kind"] = pd.Categorical.from_codes(fixed.astype("int8"), categories=["hourly", "fixed"])

    if rules.rounding.scope != "worklog":  # round several work logs together, as one line
        frame = _together(frame, rules.rounding.scope)
        fixed = (frame["rate_kind"] == "fixed").to_numpy()
        rate, multiplier = frame["rate_minor"].to_numpy(), frame["multiplier_bp"].to_numpy()
        currency_code = frame["currency"].cat.codes.to_numpy()
    billed = _round_time(frame["raw_seconds"].to_numpy(dtype="int64"), rules)
    quantity_centi = div_round(billed * CENTI_HOURS, 3600, Rounding.HALF_UP)
    quantity_centi[fixed] = CENTI_HOURS  # one unit of the fixed price
    billed[fixed] = frame["raw_seconds"].to_numpy(dtype="int64")[fixed]
    unit = np.zeros(len(frame), dtype="int64")
    amount = np.zeros(len(frame), dtype="int64")
    modes = [rules.money_rounding(c) for c in currencies]
    for code, mode in enumerate(modes):
        mask = currency_code == code
        unit[mask] = div_round(rate[mask] * multiplier[mask], BASIS, mode)
        amount[mask] = div_round(quantity_centi[mask] * unit[mask], CENTI_HOURS, mode)
    frame["billed_seconds"] = billed
    frame["quantity_centi"] = quantity_centi
    frame["unit_price_minor"] = unit
    frame["amount_minor"] = amount
    rounding_names = sorted({m.value for m in modes})
    frame["money_rounding"] = pd.Categorical.from_codes(
        np.array([rounding_names.index(m.value) for m in modes] + [0], dtype="int64")[currency_code],
        categories=rounding_names or ["half_up"],
    )
    if rules.ticket_fees and "ticket_type" in frame:
        frame = _ticket_fees(frame, rules)
    return PricingResult(lines=frame, non_billable=non_billable, unpriceable=pd.concat(problems, ignore_index=True),
                         held=held)


def _ticket_fees(frame: pd.DataFrame, rules: RuleSet) -> pd.DataFrame:
    """The work of a ticket with a fixed price per type, as one line at that price per ticket (its key
    ``ticket-fee:<rule>:<ticket>`` lets the caller bill it once, whatever the periods the work spans)."""
    rule = np.full(len(frame), -1, dtype="int64")
    ticket_type = frame["ticket_type"].to_numpy(dtype=object)
    customer, currency = frame["customer_id"].to_numpy(dtype=object), frame["currency"].astype(str).to_numpy()
    for number, spec in enumerate(rules.ticket_fees):
        hit = (ticket_type == spec.ticket_type) & (rule < 0) & np.isin(currency, list(spec.amount))
        if spec.customer:
            hit &= customer == spec.customer
        rule[hit] = number
    if not (rule >= 0).any():
        return frame
    covered = frame[rule >= 0].assign(fee_rule=rule[rule >= 0])
    keys = covered["key"] if "item_keys" not in covered else covered["item_keys"]
    covered = covered.assign(_items=[k if isinstance(k, tuple) else (k,) for k in keys])
    fees = covered.sort_values(["started_at", "key"]).groupby(["fee_rule", "ticket_id"], sort=True).agg(
        customer_id=("customer_id", "first"), currency=("currency", "first"), user=("user", "first"),
        started_at=("started_at", "min"), local_date=("local_date", "min"), raw_seconds=("raw_seconds", "sum"),
        item_keys=("_items", lambda items: tuple(k for group in items for k in group)),
        source_id=("source_id", ", ".join), ticket_type=("ticket_type", "first"),
    ).reset_index()  # fmt: skip
    rows = []
    for fee in fees.itertuples():  # one per ticket: few
        spec = rules.ticket_fees[fee.fee_rule]
        amount = to_minor(spec.amount[fee.currency], fee.currency)
        rows.append({
            "key": (key := f"ticket-fee:{spec.id}:{fee.ticket_id}"), "item_keys": (key, *fee.item_keys),
            "source_id": fee.source_id,
            "ticket_id": fee.ticket_id, "customer_id": fee.customer_id, "user": fee.user,
            "service_type": "ticket_fee", "started_at": fee.started_at, "raw_seconds": int(fee.raw_seconds),
            "note": "", "currency": fee.currency, "rate_minor": amount, "rate_source": f"ticket_fees[{fee.fee_rule}]",
            "local_date": fee.local_date, "multiplier_bp": BASIS, "modifier": "", "rate_kind": "fixed",
            "billed_seconds": int(fee.raw_seconds), "quantity_centi": CENTI_HOURS, "unit_price_minor": amount,
            "amount_minor": amount, "money_rounding": rules.money_rounding(fee.currency).value,
            "description": f"{fee.ticket_id} · fixed price per {spec.ticket_type} ticket ({spec.id})",
            "object_type": "ticket_fee",
        })  # fmt: skip
    rest = frame[rule < 0]
    for column in ("currency", "rate_source", "modifier", "rate_kind", "money_rounding", "agreement_id"):
        if column in rest and isinstance(rest[column].dtype, pd.CategoricalDtype):
            rest = rest.assign(**{column: rest[column].astype(object)})
    return pd.concat([rest, pd.DataFrame(rows)], ignore_index=True)


def agreement_fees(customers: list[Customer], rules: RuleSet, period: str) -> pd.DataFrame:
    """A line per agreement with a monthly fee running in the period, prorated by the days it runs
    (amount = fee × days / days of the month, rounded by the currency's mode; shown as 1 × that amount)."""
    year, month = map(int, period.split("-"))
    first, days = date(year, month, 1), calendar.monthrange(year, month)[1]
    last = first + timedelta(days=days - 1)
    by_id = {c.customer_id: c for c in customers}
    rows = []
    for number, spec in enumerate(rules.agreements):
        customer = by_id.get(spec.customer)
        if customer is None or customer.currency not in spec.monthly_fee:
            continue
        start, end = max(first, spec.starts or first), min(last, spec.ends or last)
        covered = (end - start).days + 1
        if covered <= 0:
            continue
        fee = spec.monthly_fee[customer.currency]
        full = to_minor(fee, customer.currency)
        mode = rules.money_rounding(customer.currency)
        amount = to_minor(fee * covered / days, customer.currency, mode)
        prorated = f" ({covered}/{days} days)" if covered < days else ""
        rows.append(_fixed_line(
            key=f"fee:{spec.id}:{period}", source_id=f"{spec.id} {period}", customer=customer, day=first,
            service_type="monthly_fee", full=full, amount=amount, source=f"agreements[{number}].monthly_fee",
            rounding=mode, description=f"Monthly fee, agreement {spec.id}, {period}{prorated}", object_type="fee",
        ))  # fmt: skip
    return pd.DataFrame(rows)


def _fixed_line(*, key: str, source_id: str, customer: Customer, day: date, service_type: str, full: int,
                amount: int, source: str, rounding: Rounding, description: str, object_type: str,
                ticket_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A charge line that rules make (not a work log): a fee, a milestone; 1 × its amount."""
    return {
        "key": key, "source_id": source_id, "ticket_id": ticket_id, "customer_id": customer.customer_id,
        "user": None, "service_type": service_type, "started_at": pd.Timestamp(day, tz="UTC"), "raw_seconds": 0,
        "note": "", "ticket_priority": None, "currency": customer.currency, "rate_minor": full,
        "rate_source": source, "local_date": np.datetime64(day, "D"), "multiplier_bp": BASIS, "modifier": "",
        "rate_kind": "fixed", "billed_seconds": 0, "quantity_centi": CENTI_HOURS, "unit_price_minor": amount,
        "amount_minor": amount, "money_rounding": rounding.value, "description": description,
        "object_type": object_type,
    }  # fmt: skip


def milestones_due(tickets: pd.DataFrame, customers: list[Customer], rules: RuleSet, period: str,
                   earlier: bool = False) -> pd.DataFrame:  # fmt: skip
    """A line per milestone whose ticket was resolved or closed in the period, in the customer's timezone
    (billed once: the ledger skips it on later runs). ``earlier``: those resolved before the period instead."""
    by_id = {c.customer_id: c for c in customers}
    resolved: dict[str, pd.Timestamp] = {}
    if len(tickets) and "resolved_at" in tickets:
        done = tickets[tickets["resolved_at"].notna()]
        resolved = dict(zip(done["ticket_id"], done["resolved_at"], strict=True))
    rows = []
    for number, spec in enumerate(rules.milestones):
        customer = by_id.get(spec.customer)
        if customer is None or customer.currency not in spec.amount or spec.ticket not in resolved:
            continue
        at = pd.Timestamp(resolved[spec.ticket])
        day = (at if at.tzinfo else at.tz_localize("UTC")).tz_convert(customer.timezone).date()
        month = f"{day:%Y-%m}"
        if (month >= period) if earlier else (month != period):
            continue
        amount = to_minor(spec.amount[customer.currency], customer.currency)
        rows.append(_fixed_line(
            key=f"milestone:{spec.id}", source_id=spec.id, customer=customer,
            day=day, service_type="milestone", full=amount, amount=amount,
            source=f"milestones[{number}]", rounding=rules.money_rounding(customer.currency),
            description=f"Milestone {spec.id}: {spec.description} (ticket {spec.ticket} done)",
            object_type="milestone", ticket_id=spec.ticket,
        ))  # fmt: skip
    return pd.DataFrame(rows)


def quantity(centi: int) -> Decimal:
    """Hundredths of an hour as the displayed Decimal (125 → Decimal('1.25'))."""
    return Decimal(int(centi)).scaleb(-2)


def explain(line: dict[str, object], service_name: str, rules: RuleSet) -> str:
    """One sentence an approver can check by hand."""
    cur = str(line["currency"])
    policy = rules.rounding
    if line.get("rate_kind") == "fixed":
        return (
            f"fixed {format_money(int(line['unit_price_minor']), cur)} per work log from {line['rate_source']} "
            f"({int(line['raw_seconds']) // 60} min worked)"
        )
    drawn = int(line.get("drawn_centi") or 0)  # type: ignore[call-overload]
    if drawn:
        parts = [f"{quantity(drawn)} h {service_name} drawn from the prepaid hours of agreement "
                 f"{line['prepaid_agreement']} ({quantity(int(line['prepaid_left_centi']))} h left after it)"]  # type: ignore[call-overload]  # fmt: skip
    else:
        parts = [
            f"{quantity(int(line['quantity_centi']))} h × {format_money(int(line['unit_price_minor']), cur)}",
            f"{service_name} at {format_money(int(line['rate_minor']), cur)}/h from {line['rate_source']}",
        ]
    if line.get("overage") is True:
        parts.append(f"overage beyond the prepaid hours of agreement {line['prepaid_agreement']}")
    if line["modifier"]:
        parts.append(f"{str(line['modifier']).replace('_', '-')} ×{Decimal(int(line['multiplier_bp'])) / BASIS}")
    worked = int(line["raw_seconds"]) // 60
    parts.append(
        f"{worked} min worked, billed {int(line['billed_seconds']) // 60} min "
        f"({policy.increment_minutes}-min increments {policy.mode}, minimum {policy.minimum_minutes})"
    )
    return "; ".join(parts)
