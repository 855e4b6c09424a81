"""The canonical model every connector maps into and every stage speaks.

Tables of many rows travel as DataFrames whose columns are the fields of these models
(see ``WORKLOG_COLUMNS`` etc.); single objects (drafts, receipts, settings of a customer)
travel as these pydantic models. Money is always integer minor units plus a currency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from billing.money import Rounding, is_currency

PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def previous_month(today: date | None = None) -> str:
    today = today or datetime.now(UTC).date()
    first = today.replace(day=1)
    last_month = date.fromordinal(first.toordinal() - 1)
    return f"{last_month:%Y-%m}"


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError(f"unknown currency {value!r} (expected an ISO 4217 code such as EUR or USD)")
    return value


class Money(Model):
    amount_minor: int
    currency: str

    _currency = field_validator("currency")(_check_currency)


class Customer(Model):
    customer_id: str
    name: str
    currency: str
    timezone: str = "UTC"
    erp_ref: str | None = None  # the customer's id in the ERP, when known
    country: str | None = None

    _currency = field_validator("currency")(_check_currency)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (expected an IANA name such as Europe/Berlin)") from None
        return value


class Agreement(Model):
    agreement_id: str
    customer_id: str
    name: str
    starts_on: date | None = None
    ends_on: date | None = None


class Product(Model):
    """A billable service; ``service_type`` is what work logs name, ``code`` what the ERP knows."""

    code: str
    name: str
    service_type: str
    erp_ref: str | None = None


class Ticket(Model):
    ticket_id: str
    customer_id: str
    subject: str = ""
    ticket_type: str | None = None
    priority: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    resolved_at: datetime | None = None


class WorkLog(Model):
    worklog_id: str
    customer_id: str
    ticket_id: str | None = None
    user: str | None = None
    service_type: str
    started_at: datetime
    raw_seconds: int = Field(ge=0)
    billed_seconds: int | None = Field(default=None, ge=0)
    billable: bool = True
    note: str = ""


class UsageRecord(Model):
    record_id: str
    customer_id: str
    metric: str
    quantity: Decimal
    occurred_on: date


class ChargeLine(Model):
    """One displayed invoice line. ``amount_minor == round(quantity_billed × unit_price_minor)``.

    A line bills the work items in ``work_item_keys``: one work log, several (rounded together), or none
    (a fee or an adjustment)."""

    work_item_keys: tuple[str, ...] = ()
    source_id: str = ""  # what the line shows as its source: "WL-00042", "WL-1, WL-2", or "" for a fee
    customer_id: str
    agreement_id: str = "default"
    period: str
    currency: str
    service_type: str
    description: str
    quantity_raw: Decimal  # hours worked, unrounded
    quantity_billed: Decimal  # hours billed, at display precision
    unit_price_minor: int
    amount_minor: int
    trace: dict[str, Any] = Field(default_factory=dict)
    tax_id: str | None = None  # a tax of its own (its product's tax class); None: the invoice's tax
    tax_rate: Decimal | None = None


class DraftState(StrEnum):
    DRAFTED = "drafted"
    APPROVED = "approved"
    REJECTED = "rejected"
    POSTED = "posted"


def draft_key(customer_id: str, agreement_id: str, period: str, currency: str, version: int) -> str:
    """The deterministic identity of an invoice draft; also the ERP's external reference."""
    return f"t2i:{customer_id}:{agreement_id}:{period}:{currency}:v{version}"


class InvoiceDraft(Model):
    customer_id: str
    agreement_id: str = "default"
    period: str
    currency: str
    version: int = Field(ge=1)
    lines: tuple[ChargeLine, ...]
    customer_name: str = ""
    customer_erp_ref: str | None = None
    customer_country: str | None = None
    money_rounding: Rounding = Rounding.HALF_UP
    tax_id: str = "no-tax"
    tax_rate: Decimal = Decimal(0)
    tax_rounding: Literal["document", "line"] = "document"
    tax_base: Literal["displayed", "unrounded"] = "displayed"
    tax_by: Literal["rules", "erp"] = "rules"  # erp: untaxed here, the ERP applies its own taxes

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not PERIOD_RE.match(value):
            raise ValueError(f"period {value!r} is not YYYY-MM")
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def key(self) -> str:
        return draft_key(self.customer_id, self.agreement_id, self.period, self.currency, self.version)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_minor(self) -> int:
        """The untaxed total: the sum of the displayed lines, and nothing else."""
        return sum(line.amount_minor for line in self.lines)

    def rate_of(self, line: ChargeLine) -> Decimal:
        return self.tax_rate if line.tax_rate is None else line.tax_rate

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tax_minor(self) -> int:
        """Tax at each line's rate (the invoice's ``tax_rate`` unless the line's product class has its own),
        rounded once per rate for the document (as ERPs keep one tax line per tax) or per line, by the
        currency's rounding. The base is the displayed line amounts, or (``unrounded``, as Tryton does)
        quantity × unit price before each line is rounded."""
        if self.tax_by == "erp":
            return 0  # the ERP's to compute; reconcile reports it
        mode = self.money_rounding.decimal_mode

        def base(line: ChargeLine) -> Decimal:
            if self.tax_base == "unrounded":
                return line.quantity_billed * line.unit_price_minor
            return Decimal(line.amount_minor)

        def rounded(amount: Decimal, rate: Decimal) -> int:
            return int((amount * rate).quantize(Decimal(1), rounding=mode))

        if self.tax_rounding == "line":
            return sum(rounded(base(line), self.rate_of(line)) for line in self.lines)
        per_rate: dict[Decimal, Decimal] = {}
        for line in self.lines:
            per_rate[self.rate_of(line)] = per_rate.get(self.rate_of(line), Decimal(0)) + base(line)
        return sum(rounded(amount, rate) for rate, amount in per_rate.items())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gross_minor(self) -> int:
        return self.total_minor + self.tax_minor


class PostingReceipt(Model):
    """What the ERP says it holds for a draft's key. ``total_minor`` is untaxed, as on drafts."""

    draft_key: str
    erp: str
    erp_id: str
    erp_number: str
    total_minor: int
    tax_minor: int = 0
    gross_minor: int = 0
    state: str = "posted"
    currency: str
    posted_at: datetime
    already_existed: bool = False  # found by its key in the ERP instead of created by this call


class PostingFailure(Model):
    draft_key: str
    erp: str
    error: str


class ApprovalDecision(Model):
    draft_key: str
    approved: bool
    approver: str
    note: str = ""
    decided_at: datetime


# -- batches ---------------------------------------------------------------------------------------
# Stages pass whole tables. These are the columns of the work-log table every source produces.
WORKLOG_COLUMNS: tuple[str, ...] = (
    "key", "source_system", "instance", "object_type", "source_id", "ticket_id", "customer_id", "user",
    "service_type", "started_at", "raw_seconds", "billable", "note", "period", "content_hash",
    "source_file", "source_row",
)  # fmt: skip
# What a work log's content is, for "changed since it was billed": everything but where it was read from.
HASHED_COLUMNS: tuple[str, ...] = ("source_id", "ticket_id", "customer_id", "user", "service_type", "started_at",
                                   "raw_seconds", "billable", "note")  # fmt: skip


def content_hash(worklogs: pd.DataFrame) -> pd.Series:
    """A 64-bit hash (hex) of each work log's content, by column: of each value's ``astype(str)`` text, as
    ledgers hold it (the same text made faster where it can be, so no billed item ever looks changed)."""
    text = pd.DataFrame({c: _utc_text(worklogs[c]) for c in HASHED_COLUMNS}).astype(str)
    return hex_digests(pd.util.hash_pandas_object(text, index=False))


def hex_digests(hashes: pd.Series) -> pd.Series:
    """64-bit hashes as 16 hex digits each (``"{:016x}".format``), by numpy rather than one call per value."""
    digits = hashes.to_numpy(dtype=np.uint64).astype(">u8").tobytes().hex().encode()
    return pd.Series(np.frombuffer(digits, dtype="S16").astype("U16").astype(object), index=hashes.index, dtype=str)


def _utc_text(column: pd.Series) -> pd.Series:
    """``column.astype(str)`` of UTC timestamps in whole seconds ("2026-10-05 14:30:00+00:00", missing ones
    missing) by numpy: pandas formats each in Python (~4 s per million). Anything else: ``astype(str)``."""
    if not isinstance(column.dtype, pd.DatetimeTZDtype) or str(column.dt.tz) != "UTC":
        return column
    values = column.to_numpy(dtype="datetime64[ns]")  # the UTC wall time
    present = ~np.isnat(values)
    if not present.any() or (values[present].view(np.int64) % 1_000_000_000).any():
        return column.astype(str)  # fractions: pandas gives every value as many digits as the longest needs
    text = np.strings.add(np.strings.replace(np.datetime_as_string(values.astype("datetime64[s]"), unit="s"),
                                             "T", " "), "+00:00").astype(object)  # fmt: skip
    text[~present] = np.nan
    return pd.Series(text, index=column.index, dtype=str)


# Usage records (subscription quantities, GB stored, API calls ...) as a billing-support system sends them:
# ``quantity`` is decimal text (exact), ``metric`` names a ``usage:`` entry of the rules.
USAGE_COLUMNS: tuple[str, ...] = (
    "key", "source_system", "instance", "object_type", "source_id", "customer_id", "metric", "quantity",
    "occurred_on", "subscription_id", "period", "content_hash", "source_file", "source_row",
)  # fmt: skip


def empty_usage() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in USAGE_COLUMNS})


# Row-level problems found while reading (a value that is not a number, a date that is no date ...).
ISSUE_COLUMNS: tuple[str, ...] = ("key", "source_file", "source_row", "field", "value", "problem")


@dataclass(frozen=True)
class Scope:
    """Part of a period billed before its end (a run on an event): one customer's resolved tickets. Usage and
    agreement fees wait for the period's run; ``per_ticket`` makes one invoice per ticket."""

    customer_id: str
    tickets: tuple[str, ...]
    per_ticket: bool = False


@dataclass
class WorkBatch:
    """What one extraction produced: reference data, work logs of the period, and row-level problems.
    ``scope``: only part of the period (an event run), else the whole period."""

    source_system: str
    instance: str
    period: str
    customers: list[Customer]
    tickets: pd.DataFrame
    worklogs: pd.DataFrame
    issues: pd.DataFrame
    customer_problems: dict[str, str] = field(default_factory=dict)  # customer_id → why it is unusable
    notes: list[str] = field(default_factory=list)  # things worth telling the user (ignored columns ...)
    outside_period: int = 0  # rows that belong to another period and were left alone
    usage: pd.DataFrame = field(default_factory=empty_usage)  # usage records of the period (USAGE_COLUMNS)
    scope: Scope | None = None
    # The source records the day of the work, not its time (Redmine's spent_on): ``started_at`` stands for that
    # day, and the work counts as in the future only once the day is after today in the customer's timezone.
    days_only: bool = False
    # What drafting the period reads, hashed (``tasks.extract.drafting_fingerprint``), when the source can say:
    # the draft stage records it with the drafts. ``settled``: it is the one the period's drafts were made from,
    # so this batch holds no work (nothing new: the drafts stand) and the stages up to drafting are skipped.
    fingerprint: str | None = None
    settled: bool = False

    @property
    def customers_by_id(self) -> dict[str, Customer]:
        return {c.customer_id: c for c in self.customers}
