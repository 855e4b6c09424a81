"""The rule-file schema (pydantic) and its loader, whose errors name the file, the path and the line."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from billing.errors import InputError
from billing.money import Rounding, is_currency

HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_currency(code: str) -> str:
    if not is_currency(code):
        raise ValueError(f"unknown currency {code!r} (expected an ISO 4217 code such as EUR)")
    return code


# As a dict key, so an error points at the very entry ("services.consulting.rates.XYZ").
Currency = Annotated[str, AfterValidator(_known_currency)]


class CurrencyPolicy(Strict):
    rounding: Rounding = Field(Rounding.HALF_UP, description="How amounts in this currency are rounded.")


class TimeRounding(Strict):
    """How worked time becomes billed time. ``scope``: what is rounded as one — each work log, a ticket's
    work at one rate, a day's, or the whole invoice line (a service at one rate for the period)."""

    scope: Literal["worklog", "ticket", "day", "line"] = "worklog"
    increment_minutes: int = Field(15, ge=1, le=1440)
    minimum_minutes: int = Field(0, ge=0, le=1440)
    mode: Literal["up", "nearest", "down"] = "up"


class Service(Strict):
    name: str
    billable: bool = True
    tax_class: str | None = Field(None, description="product class for tax (taxes.rates[].product_classes)")
    rates: dict[Currency, Decimal] = Field(default_factory=dict, description="Hourly rate per currency.")

    @field_validator("rates")
    @classmethod
    def _non_negative(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for code, rate in value.items():
            if rate < 0:
                raise ValueError(f"rate for {code} is negative")
        return value


class CustomerRate(Strict):
    """A customer's own hourly rate for a service, in the customer's currency."""

    customer: str
    service: str
    rate: Decimal = Field(ge=0)


class Tier(Strict):
    up_to: Decimal | None = Field(None, gt=0, description="upper bound of the tier in units; none: no bound")
    unit_price: dict[Currency, Decimal]


class UsagePricing(Strict):
    """Usage records (GB stored, seats, API calls ...) priced per period and customer.

    ``graduated``: each tier's units at that tier's price (a line per tier used); ``volume``: all units at
    the price of the tier the total falls in. ``minimum_commitment``: a top-up line when usage costs less."""

    name: str
    mode: Literal["graduated", "volume"] = "graduated"
    tiers: list[Tier] = Field(min_length=1)
    minimum_commitment: dict[Currency, Decimal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ascending(self) -> UsagePricing:
        bounds = [t.up_to for t in self.tiers]
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last tier may be unbounded")
        finite = [b for b in bounds if b is not None]
        if finite != sorted(finite) or len(set(finite)) != len(finite):
            raise ValueError("tier bounds must ascend")
        return self


class DiscountTier(Strict):
    above: dict[Currency, Decimal] = Field(description="the tier applies when the subtotal is at least this")
    percent: Decimal = Field(gt=0, le=100)


class Discount(Strict):
    """Off a customer's invoice (every customer's, without ``customer``), after caps, as its own line: a
    ``percent``, or volume ``tiers`` — the whole subtotal at the percent of the highest tier it reaches."""

    id: str
    customer: str | None = None
    percent: Decimal | None = Field(None, gt=0, le=100)
    tiers: list[DiscountTier] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> Discount:
        if (self.percent is None) == (not self.tiers):
            raise ValueError("a discount has either percent or tiers")
        return self

    def percent_for(self, subtotal: Decimal, currency: str) -> Decimal | None:
        if self.percent is not None:
            return self.percent
        reached = [t for t in self.tiers if currency in t.above and subtotal >= t.above[currency]]
        return max(reached, key=lambda t: t.above[currency]).percent if reached else None


class Cap(Strict):
    """Not to exceed: the work billed for one ticket (``per: ticket``, across periods), one agreement
    (``per: agreement``, over its life) or one customer's period (``per: period``, across supplementary
    invoices) costs at most ``amount``; the excess is taken off as a line of its own, so the invoice still
    adds up. Fees, milestones and usage are not capped."""

    id: str
    per: Literal["ticket", "agreement", "period"] = "ticket"
    customer: str | None = None
    agreement: str | None = Field(None, description="for per: agreement")
    amount: dict[Currency, Decimal]

    @model_validator(mode="after")
    def _agreement_named(self) -> Cap:
        if (self.per == "agreement") != (self.agreement is not None):
            raise ValueError("a cap per agreement names its agreement (and only it does)")
        return self


class TicketFee(Strict):
    """A fixed price per ticket of a type (a password reset, a new-starter set-up): the ticket's work logs
    are billed together as one line at this amount, whatever the time, once per ticket."""

    id: str
    ticket_type: str
    customer: str | None = None
    amount: dict[Currency, Decimal]


class FxRate(Strict):
    """1 ``base`` = ``rate`` ``quote``, from a date. Converts a service's rate when it has none in the
    customer's currency (the latest rate on or before the day of the work applies)."""

    base: Currency
    quote: Currency
    rate: Decimal = Field(gt=0, decimal_places=6)
    effective_from: date = Field(date(1900, 1, 1), alias="from")


class Milestone(Strict):
    """A fixed amount billed once, in the period its ticket is resolved or closed."""

    id: str
    customer: str
    ticket: str
    description: str
    amount: dict[Currency, Decimal]


class Prepaid(Strict):
    """Prepaid hours (a retainer): a block granted every month the agreement runs (``refill: monthly``) or
    once in its first month, drawn down by the agreement's hourly work in time order. Unused hours roll over
    for ``rollover_months`` months, then expire (none: never). Work beyond the balance is overage, billed at
    ``overage_rate`` when given, else at its normal rate."""

    hours: Decimal = Field(gt=0, decimal_places=2)
    refill: Literal["monthly", "once"] = "monthly"
    rollover_months: int | None = Field(0, ge=0)
    services: list[str] = Field(default_factory=list, description="services that draw from it; empty: all")
    overage_rate: dict[Currency, Decimal] = Field(default_factory=dict, description="hourly rate beyond the block")


class AgreementSpec(Strict):
    """A contract with a customer; work done while it runs is billed under it."""

    id: str
    customer: str
    starts: date | None = None
    ends: date | None = None
    monthly_fee: dict[Currency, Decimal] = Field(
        default_factory=dict, description="a recurring fee per month, prorated by the days the agreement runs"
    )
    prepaid: Prepaid | None = None

    @model_validator(mode="after")
    def _prepaid_starts(self) -> AgreementSpec:
        if self.prepaid is not None and self.starts is None:
            raise ValueError("an agreement with prepaid hours needs its starts date")
        return self


class Rate(Strict):
    """A rate in its general form. Precedence, most specific first: agreement + service + role >
    agreement + service > customer + service > service default. Within one level the latest ``from`` on
    or before the day of the work applies (a rate change takes effect from its date)."""

    service: str
    customer: str | None = None
    agreement: str | None = None
    role: str | None = None
    currency: Currency | None = Field(None, description="for a service default; otherwise the customer's")
    rate: Decimal = Field(ge=0)
    effective_from: date | None = Field(None, alias="from")
    kind: Literal["hourly", "fixed"] = Field("hourly", description="fixed: the rate is the amount of a work log")

    @property
    def level(self) -> int:
        if self.agreement and self.role:
            return 3
        if self.agreement:
            return 2
        return 1 if self.customer else 0


class BusinessHours(Strict):
    start: str = "08:00"
    end: str = "18:00"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not HHMM.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM")
        return value

    def minutes(self) -> tuple[int, int]:
        (sh, sm), (eh, em) = (map(int, self.start.split(":")), map(int, self.end.split(":")))
        return sh * 60 + sm, eh * 60 + em


class Multiplier(Strict):
    multiplier: Decimal = Field(gt=0, le=10)


class AfterHours(Multiplier):
    business_hours: BusinessHours = BusinessHours()


class Holidays(Multiplier):
    """Public holidays per country (ISO 3166); work on one of them, in the customer's country, is surcharged."""

    calendars: dict[str, list[date]] = Field(default_factory=dict)


class Modifiers(Strict):
    """Surcharges by when the work was done (in the customer's timezone) and by the ticket's priority.
    The highest one applies; they never compound."""

    after_hours: AfterHours | None = None
    weekend: Multiplier | None = None
    holidays: Holidays | None = None
    priority: dict[str, Decimal] = Field(default_factory=dict, description="ticket priority → multiplier")

    @field_validator("priority")
    @classmethod
    def _positive(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, multiplier in value.items():
            if not 0 < multiplier <= 10:
                raise ValueError(f"multiplier for priority {name!r} must be above 0 and at most 10")
        return value


class NonBillableRule(Strict):
    id: str
    description: str = ""
    when: dict[Literal["billable", "service_type", "ticket_status", "ticket_type"], bool | str | list[str]]


class HoldRule(Strict):
    """Work held back, not lost: not billed while it matches (its ticket not resolved yet, say); billed by
    the run of its period after the condition clears. ``ticket_resolved``: the ticket has a resolved date
    (work without a ticket has nothing to wait for)."""

    id: str
    description: str = ""
    when: dict[
        Literal["billable", "service_type", "ticket_status", "ticket_type", "ticket_resolved"], bool | str | list[str]
    ]


class TaxRate(Strict):
    id: str
    rate: Decimal = Field(ge=0, le=1, description="0.19 for 19 %")
    countries: list[str] = Field(default_factory=list, description="ISO 3166 codes of the customers it applies to")
    product_classes: list[str] = Field(
        default_factory=list, description="only for services of these tax classes; empty: the country's standard"
    )


class Taxes(Strict):
    """Tax per customer country. ``document`` rounding rounds the invoice's tax once; ``line`` rounds each
    line's tax and adds them up. Amounts round by the currency's money rounding."""

    rounding: Literal["document", "line"] = "document"
    base: Literal["displayed", "unrounded"] = Field(
        "displayed",
        description="displayed: tax on the line amounts as shown; unrounded: on quantity × unit price before "
        "each line is rounded (what Tryton does; choose it when Tryton is the ERP, so both agree to the cent).",
    )
    computed_by: Literal["rules", "erp"] = Field(
        "rules",
        description="rules: drafts carry the tax computed here (and reconcile checks the ERP's against it); "
        "erp: drafts are untaxed, the ERP applies its own taxes (its product and party tax rules) and reconcile "
        "compares the untaxed totals and reports the ERP's tax.",
    )
    rates: list[TaxRate] = Field(default_factory=list)
    otherwise: TaxRate = TaxRate(id="no-tax", rate=Decimal(0))

    def for_country(self, country: str | None, tax_class: str | None = None) -> TaxRate:
        """The rate for the customer's country and the product's class: a rate for that class first, then
        the country's standard rate (one without classes)."""
        if tax_class is not None:
            special = next((t for t in self.rates if country in t.countries and tax_class in t.product_classes), None)
            if special is not None:
                return special
        return next((t for t in self.rates if country in t.countries and not t.product_classes), self.otherwise)


BillOn = Literal["period_end", "resolution", "each_resolution"]
BILL_ON_HELP = (
    "When the customer's work is invoiced. period_end: by the period's run (monthly). resolution: also as soon "
    "as tickets are resolved (helpdesk.ticket.resolved events), one invoice for the resolutions of a burst. "
    "each_resolution: as resolution, but one invoice per resolved ticket. Whatever is left is billed at period end."
)


class CustomerSpec(Strict):
    """What a source may not know about a customer (Redmine has projects, not currencies), and when it is billed."""

    name: str | None = None
    currency: Currency | None = None
    timezone: str | None = None
    country: str | None = None
    erp_ref: str | None = None
    bill_on: BillOn | None = Field(None, description=BILL_ON_HELP + " Empty: customer_defaults.bill_on.")


class CustomerDefaults(Strict):
    currency: Currency = "EUR"
    timezone: str = "UTC"
    country: str | None = None
    bill_on: BillOn = Field("period_end", description=BILL_ON_HELP)


class RedmineMapping(Strict):
    """How Redmine's objects map to the canonical model."""

    project_customers: dict[str, str] = Field(
        default_factory=dict, description="project identifier → customer id (default: the identifier itself)"
    )
    rollup_subprojects: bool = Field(True, description="a subproject bills to its parent project's customer")
    projects: list[str] = Field(
        default_factory=list, description="bill only these project identifiers (and their subprojects); empty: all"
    )
    activities: dict[str, str] = Field(
        default_factory=dict, description="activity name → service type (default: the name in snake_case)"
    )
    billable_field: str = Field("Billable", description="a yes/no time-entry custom field; empty means billable")
    invoice_number_field: str = Field("Invoice number", description="time-entry and issue field written back")


class ReviewRules(Strict):
    """Drafts that look wrong go to a human, even under auto-approve, with the reasons shown: a total, hours or
    effective rate far from the customer's own history, a first invoice, a service never billed to the
    customer before, or a line made by a rule listed in ``unusual_rules``.

    "Far" is a robust z-score over the customer's posted invoices (per currency) of the trailing months:
    ``|x − median| / spread`` with ``spread = max(1.4826 × MAD, min_relative_spread × |median|)``, flagged
    above ``deviation``. The MAD (median absolute deviation) ignores one odd month; the floor keeps a flat
    history (the same fee every month) from flagging a one-cent change."""

    enabled: bool = Field(True, description="false: no draft is held for review by these checks.")
    trailing_months: int = Field(
        6, ge=1, le=120, description="How many months before the draft's period make the customer's history."
    )
    min_history: int = Field(
        3,
        ge=1,
        description="Months with a posted invoice needed in that window before totals, hours and rates are "
        "compared; with fewer, only the first-invoice, new-service and unusual-rule checks apply.",
    )
    deviation: Decimal = Field(
        Decimal("3.5"), gt=0, description="Flag a metric whose robust z-score |x − median| / spread exceeds this."
    )
    min_relative_spread: Decimal = Field(
        Decimal("0.1"),
        ge=0,
        description="The spread is at least this fraction of the median (0.1: 10 %), so a flat history does "
        "not flag every cent.",
    )
    metrics: list[Literal["total", "hours", "effective_rate"]] = Field(
        default_factory=lambda: ["total", "hours", "effective_rate"],
        description="What is compared: total (untaxed, minor units), hours (billed hours of time lines), "
        "effective_rate (total / hours).",
    )
    first_invoice: bool = Field(True, description="A customer's first invoice (nothing posted before) is reviewed.")
    new_services: bool = Field(True, description="A line of a service never billed to the customer is reviewed.")
    unusual_rules: list[str] = Field(
        default_factory=list,
        description="Rule ids whose presence on a line always asks a human: a cap or discount id, a modifier "
        "(after_hours, weekend, holiday, priority), a rate source (customer_rates[0], rates[2], "
        "ticket_fees[reset]) or the id inside one (reset).",
    )


class Approval(Strict):
    auto_approve_below: dict[Currency, Decimal] = Field(
        default_factory=dict, description="Drafts with a total below this (per currency) approve themselves."
    )
    timeout_seconds: int = Field(3600, ge=1)
    review: ReviewRules = Field(
        ReviewRules(), description="Drafts that stand out from the customer's history go to a human."
    )


class RuleSet(Strict):
    version: Literal[1] = 1
    name: str
    currencies: dict[Currency, CurrencyPolicy] = Field(default_factory=dict)
    rounding: TimeRounding = TimeRounding()
    services: dict[str, Service]
    customer_rates: list[CustomerRate] = Field(default_factory=list)
    rates: list[Rate] = Field(default_factory=list, description="rates with precedence and effective dates")
    agreements: list[AgreementSpec] = Field(default_factory=list)
    usage: dict[str, UsagePricing] = Field(default_factory=dict, description="metric → pricing")
    caps: list[Cap] = Field(default_factory=list)
    ticket_fees: list[TicketFee] = Field(default_factory=list, description="a fixed price per ticket of a type")
    fx: list[FxRate] = Field(default_factory=list, description="exchange rates for rates in another currency")
    milestones: list[Milestone] = Field(default_factory=list)
    discounts: list[Discount] = Field(default_factory=list)
    roles: dict[str, str] = Field(default_factory=dict, description="user → role, for role rates")
    modifiers: Modifiers = Modifiers()
    non_billable: list[NonBillableRule] = Field(default_factory=list)
    hold: list[HoldRule] = Field(default_factory=list, description="work held until a condition clears")
    taxes: Taxes = Taxes()
    approval: Approval = Approval()
    customers: dict[str, CustomerSpec] = Field(default_factory=dict)
    customer_defaults: CustomerDefaults = CustomerDefaults()
    redmine: RedmineMapping = RedmineMapping()
    _content_hash: str = PrivateAttr(default="")

    @property
    def content_hash(self) -> str:
        """SHA-256 of the merged rules (the file and the bases it extends), recorded on every draft priced by
        them: which rules made an amount, even after the file changed."""
        if not self._content_hash:
            canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
            self._content_hash = hashlib.sha256(canonical.encode()).hexdigest()
        return self._content_hash

    def bill_on(self, customer_id: str) -> BillOn:
        """When the customer's work is invoiced (``customers.<id>.bill_on``, else ``customer_defaults``)."""
        spec = self.customers.get(customer_id)
        return spec.bill_on if spec is not None and spec.bill_on else self.customer_defaults.bill_on

    @model_validator(mode="after")
    def _services_exist(self) -> RuleSet:
        for number, rate in enumerate(self.customer_rates):
            if rate.service not in self.services:
                raise ValueError(
                    f"customer_rates.{number}.service: unknown service {rate.service!r} "
                    f"(known: {', '.join(sorted(self.services))})"
                )
        agreements = {a.id for a in self.agreements}
        for number, rate in enumerate(self.rates):
            if rate.service not in self.services:
                raise ValueError(f"rates.{number}.service: unknown service {rate.service!r}")
            if rate.agreement and rate.agreement not in agreements:
                raise ValueError(f"rates.{number}.agreement: unknown agreement {rate.agreement!r}")
            if rate.role and not rate.agreement:
                raise ValueError(f"rates.{number}.role: a role rate belongs to an agreement")
            if rate.level == 0 and rate.currency is None:
                raise ValueError(f"rates.{number}.currency: a service default needs its currency")
        for number, cap in enumerate(self.caps):
            if cap.agreement and cap.agreement not in agreements:
                raise ValueError(f"caps.{number}.agreement: unknown agreement {cap.agreement!r}")
        for number, spec in enumerate(self.agreements):
            for service in spec.prepaid.services if spec.prepaid else []:
                if service not in self.services:
                    raise ValueError(f"agreements.{number}.prepaid.services: unknown service {service!r}")
        return self

    def money_rounding(self, currency: str) -> Rounding:
        policy = self.currencies.get(currency)
        return policy.rounding if policy else Rounding.HALF_UP


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the entry at ``loc`` (of its key, in a mapping), as deep as the path goes."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


PATH_IN_MESSAGE = re.compile(r"^([a-z_]+(?:\.\w+)*): ")


def _describe(error: Any) -> tuple[tuple[Any, ...], str]:
    """The path and the words of one pydantic error, in the rule file's terms."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
        if len(loc) == 1:
            close = difflib.get_close_matches(str(loc[-1]), RuleSet.model_fields, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else ""
    elif error["type"] == "missing":
        message = f"{loc[-1]!r} is required"
    match = PATH_IN_MESSAGE.match(message)
    if not loc and match:  # a cross-field check names its own path ("customer_rates.1.service: ...")
        loc = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
        message = message[match.end() :]
    return loc, message


# libyaml's safe loader when PyYAML has it: the pure-Python one takes ~10 ms for the demo rules, every stage.
# An error is explained by the pure-Python one, which names the character (a tab) that libyaml leaves out.
_FastSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(text: str, loader_class: type[Any]) -> tuple[Any, yaml.Node | None]:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node]:
    """The file's data and its node tree (for line numbers), from one parse."""
    if not path.exists():
        raise InputError(path, "rules file not found", hint="pass --rules FILE (see rules/examples/)")
    try:
        text = path.read_text(encoding="utf-8")
        try:
            data, node = _parse(text, _FastSafeLoader)
        except yaml.YAMLError:
            data, node = _parse(text, yaml.SafeLoader)  # raises again, in its own words
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(
            path, f"not valid YAML: {getattr(exc, 'problem', exc)}", line=mark.line + 1 if mark else None
        ) from None
    if not isinstance(data, dict) or node is None:
        raise InputError(path, "expected a mapping at the top (name:, services:, ...)")
    return data, node


def merge(base: Any, override: Any) -> Any:
    """A rule file on top of its base: mappings merge key by key, lists are appended, other values replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in override.items()}}
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def _load_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any], yaml.Node]]:
    """The file and the bases it ``extends`` (a path relative to it), base first."""
    if path.resolve() in seen:
        raise InputError(path, "extends itself (a cycle through " + " → ".join(p.name for p in seen) + ")")
    data, node = _read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return [(path, data, node)]
    if not isinstance(base, str):
        raise InputError(path, "extends must be the path of a base rules file", line=_line_of(node, ("extends",)),
                         field="extends")  # fmt: skip
    return [*_load_layers((path.parent / base), (*seen, path.resolve())), (path, data, node)]


_LOADED: dict[Path, tuple[tuple[tuple[Path, bytes], ...], RuleSet]] = {}


def load_rules(path: Path | str) -> RuleSet:
    """A rule set from YAML, with the bases it ``extends`` merged underneath; errors name file, line and path.

    Parsed once per process while its files say the same (every stage of a run asks for it): the files are
    read again each time, and parsed again only when one of them changed."""
    path = Path(path)
    known = _LOADED.get(path.resolve())
    if known is not None and all(_digest(file) == digest for file, digest in known[0]):
        return known[1]
    layers = _load_layers(path)
    rules = _validated(layers)
    _LOADED[path.resolve()] = (tuple((file, _digest(file)) for file, _, _ in layers), rules)
    return rules


def _digest(file: Path) -> bytes:
    try:
        return hashlib.sha256(file.read_bytes()).digest()
    except OSError:
        return b""


def _validated(layers: list[tuple[Path, dict[str, Any], yaml.Node]]) -> RuleSet:
    data: dict[str, Any] = {}
    for _, layer, _ in layers:
        data = merge(data, layer)
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        # A typo'd key explains the "required" error it causes: report unknown keys first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        described = [_describe(e) for e in errors]

        def where(loc: tuple[Any, ...]) -> tuple[Path, int | None]:
            """The file that says it: the most specific layer whose YAML has the path."""
            for file, layer, node in reversed(layers):
                if loc and _has(layer, loc):
                    return file, _line_of(node, loc)
            return layers[-1][0], _line_of(layers[-1][2], loc)

        loc, message = described[0]
        others = []
        for lo, msg in described[1:5]:
            file, line = where(lo)
            others.append(f"{'.'.join(map(str, lo)) or '(top)'} ({file.name} line {line}): {msg}")
        if others:
            message += "; also " + "; ".join(others)
        if len(described) > 5:
            message += f"; and {len(described) - 5} more"
        file, line = where(loc)
        raise InputError(file, message, line=line, field=".".join(map(str, loc)) or "(top)") from None


def _has(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        in_mapping = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_mapping or in_list):
            return False
        data = data[part]
    return True


def json_schema() -> dict[str, Any]:
    """The JSON Schema of rule files, for editors (yaml-language-server) and reviews."""
    schema = RuleSet.model_json_schema()
    schema["properties"]["extends"] = {"type": "string", "description": "path of a base rules file to build on"}
    return schema
