"""A period's invoice drafts as two tables: one row per draft (``HEADER_COLUMNS``) and one per line
(``LINE_COLUMNS``, the line contract every producer of lines fills). Drafting, the ledger and the stages pass
these frames; an ``InvoiceDraft`` with its ``ChargeLine``s is made only where one invoice is handled alone
(an ERP's posting, an approver's form), by ``DraftBook.drafts``.

Money stays integer minor units; quantities are exact decimal text ("1.25" hours billed, "1.2500" worked),
as the ledger stores them. A line's explanation is not stored: ``explanation`` writes it from the line's
columns and the rules when someone reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from billing.models import ChargeLine, InvoiceDraft
from billing.money import Rounding, format_money
from rules.engine import explain as explain_work
from rules.engine import quantity
from rules.schema import RuleSet

# The line contract: what a line is, whoever made it (work, usage, a fee, a milestone, an adjustment).
LINE_COLUMNS: tuple[str, ...] = (
    "draft_key", "line_no", "work_item_keys", "source_id", "customer_id", "agreement_id", "period", "currency",
    "service_type", "description", "quantity_raw", "quantity_billed", "quantity_centi", "unit_price_minor",
    "amount_minor", "tax_id", "tax_rate",
    # how the amount came about (the trace): enough to re-derive it by hand
    "line_kind", "rules", "rate_minor", "rate_source", "rate_kind", "modifier", "multiplier_bp", "raw_seconds",
    "billed_seconds", "money_rounding", "ticket", "agreement", "prepaid_agreement", "drawn_centi",
    "prepaid_left_centi", "overage", "rule", "scope",
)  # fmt: skip
# What a line's trace holds for a line priced by the rules (in this order), and for an adjustment.
PRICED_TRACE = ("rules", "rate_minor", "rate_source", "rate_kind", "modifier", "multiplier_bp", "raw_seconds",
                "billed_seconds", "money_rounding", "line_kind", "ticket", "agreement")  # fmt: skip
HEADER_COLUMNS: tuple[str, ...] = (
    "key", "customer_id", "agreement_id", "period", "currency", "version", "customer_name", "customer_erp_ref",
    "customer_country", "money_rounding", "tax_id", "tax_rate", "tax_rounding", "tax_base", "tax_by",
    "total_minor", "tax_minor", "gross_minor", "line_count",
)  # fmt: skip
SEPARATOR = " · "


@dataclass
class DraftBook:
    """Drafts (``headers``) and their lines (``lines``, ordered by draft and line number)."""

    headers: pd.DataFrame
    lines: pd.DataFrame

    @classmethod
    def empty(cls) -> DraftBook:
        return cls(pd.DataFrame(columns=list(HEADER_COLUMNS)), pd.DataFrame(columns=list(LINE_COLUMNS)))

    def __len__(self) -> int:
        return len(self.headers)

    @property
    def keys(self) -> list[str]:
        return list(self.headers["key"])

    def only(self, keys: Iterable[str]) -> DraftBook:
        """The book of these drafts alone."""
        wanted = set(keys)
        return DraftBook(self.headers[self.headers["key"].isin(wanted)].reset_index(drop=True),
                         self.lines[self.lines["draft_key"].isin(wanted)].reset_index(drop=True))  # fmt: skip

    def drafts(self, rules: RuleSet | None = None, keys: Iterable[str] | None = None) -> list[InvoiceDraft]:
        """The drafts as ``InvoiceDraft``s (``keys``: only these), each line's explanation written from the
        ``rules`` when given."""
        headers = self.headers if keys is None else self.headers[self.headers["key"].isin(set(keys))]
        lines = self.lines[self.lines["draft_key"].isin(set(headers["key"]))] if keys is not None else self.lines
        by_draft: dict[str, list[ChargeLine]] = {}
        for row in lines.to_dict("records"):
            by_draft.setdefault(row["draft_key"], []).append(charge_line(row, rules))
        return [
            InvoiceDraft(
                customer_id=h["customer_id"], agreement_id=h["agreement_id"], period=h["period"],
                currency=h["currency"], version=int(h["version"]), lines=tuple(by_draft.get(h["key"], ())),
                customer_name=h["customer_name"], customer_erp_ref=_text(h["customer_erp_ref"]),
                customer_country=_text(h["customer_country"]), money_rounding=Rounding(h["money_rounding"]),
                tax_id=h["tax_id"], tax_rate=Decimal(h["tax_rate"]), tax_rounding=h["tax_rounding"],
                tax_base=h["tax_base"], tax_by=h["tax_by"],
            )
            for h in headers.to_dict("records")
        ]  # fmt: skip


def charge_line(row: Mapping[str, Any], rules: RuleSet | None = None) -> ChargeLine:
    """One row of the line contract as a ``ChargeLine`` (its trace rebuilt from the columns)."""
    return ChargeLine(
        work_item_keys=tuple(row["work_item_keys"]), source_id=row["source_id"], customer_id=row["customer_id"],
        agreement_id=row["agreement_id"], period=row["period"], currency=row["currency"],
        service_type=row["service_type"], description=row["description"], quantity_raw=Decimal(row["quantity_raw"]),
        quantity_billed=Decimal(row["quantity_billed"]), unit_price_minor=int(row["unit_price_minor"]),
        amount_minor=int(row["amount_minor"]), trace=trace_of(row, rules),
        tax_id=_text(row["tax_id"]), tax_rate=Decimal(row["tax_rate"]) if present(row["tax_rate"]) else None,
    )  # fmt: skip


def trace_of(row: Mapping[str, Any], rules: RuleSet | None = None) -> dict[str, Any]:
    """A line's trace as ``ChargeLine.trace`` holds it, from its columns; with ``rules``, its explanation."""
    if row["line_kind"] == "adjustment":
        trace: dict[str, Any] = {"rule": row["rule"], "explanation": row["description"], "line_kind": "adjustment"}
        return trace | ({"scope": row["scope"]} if present(row["scope"]) else {})
    trace = {name: _plain(row[name]) for name in PRICED_TRACE}
    if row["line_kind"] == "credit":
        trace["credit"] = True
    if rules is not None and present(row["rate_source"]):  # a line made by hand (a test's) has nothing to explain
        trace["explanation"] = explanation(row, rules)
    if int(row["drawn_centi"] or 0) > 0:
        trace["prepaid"] = {"agreement": row["prepaid_agreement"], "drawn_centi": int(row["drawn_centi"]),
                            "left_centi": int(row["prepaid_left_centi"])}  # fmt: skip
    elif row["overage"] is True:
        trace["overage"] = row["prepaid_agreement"]
    return trace


def explanation(row: Mapping[str, Any], rules: RuleSet) -> str:
    """The sentence that explains a line's amount, for an approver to check by hand."""
    currency = str(row["currency"])
    amount = format_money(int(row["amount_minor"]), currency)
    if row["line_kind"] == "adjustment":
        return str(row["description"])
    if row["line_kind"] == "usage":
        unit = format_money(int(row["unit_price_minor"]), currency)
        hours = quantity(int(row["quantity_centi"]))
        return f"{row['description']}: {hours} × {unit} = {amount} ({row['rate_source']})"
    if row["line_kind"] != "work":  # a fee or a milestone: its own words
        full = format_money(int(row["rate_minor"]), currency)
        of = f" of {full}" if int(row["rate_minor"]) != int(row["amount_minor"]) else ""
        return f"{row['description']}: {amount}{of} ({row['rate_source']})"
    service = rules.services[str(row["service_type"])].name if row["service_type"] in rules.services else ""
    return explain_work({name: _plain(value) for name, value in row.items()}, service, rules)


# -- helpers for columns ----------------------------------------------------------------------------------------


def hours_text(seconds: np.ndarray) -> list[str]:
    """Seconds as hours with four decimals, half up (900 → "0.2500"): ``quantity_raw``."""
    seconds = np.asarray(seconds, dtype=np.int64)
    sign = np.where(seconds < 0, "-", "")
    ten_thousandths = (np.abs(seconds) * 10_000 + 1_800) // 3_600
    whole, part = np.divmod(ten_thousandths, 10_000)
    return [f"{s}{w}.{p:04d}" for s, w, p in zip(sign.tolist(), whole.tolist(), part.tolist(), strict=True)]


def centi_text(centi: np.ndarray) -> list[str]:
    """Hundredths as decimal text (125 → "1.25", -5 → "-0.05"): ``quantity_billed``."""
    centi = np.asarray(centi, dtype=np.int64)
    sign = np.where(centi < 0, "-", "")
    whole, part = np.divmod(np.abs(centi), 100)
    return [f"{s}{w}.{p:02d}" for s, w, p in zip(sign.tolist(), whole.tolist(), part.tolist(), strict=True)]


def present(value: Any) -> bool:
    """Whether a column's value says something: not None, NA, NaN or empty text."""
    missing = value is None or value is pd.NA or (isinstance(value, float) and value != value)
    return not missing and value != ""


def _text(value: Any) -> str | None:
    return str(value) if present(value) else None


def _plain(value: Any) -> Any:
    """A column's value as the trace keeps it: None for missing, Python ints for numpy ones."""
    if not present(value):
        return None
    return int(value) if isinstance(value, np.integer) else value


def book_of(drafts: Sequence[InvoiceDraft]) -> DraftBook:
    """``InvoiceDraft``s as a book (drafts made one by one: tests, an old ledger's documents)."""
    if not drafts:
        return DraftBook.empty()
    headers = pd.DataFrame([
        {"key": d.key, "customer_id": d.customer_id, "agreement_id": d.agreement_id, "period": d.period,
         "currency": d.currency, "version": d.version, "customer_name": d.customer_name,
         "customer_erp_ref": d.customer_erp_ref, "customer_country": d.customer_country,
         "money_rounding": d.money_rounding.value, "tax_id": d.tax_id, "tax_rate": str(d.tax_rate),
         "tax_rounding": d.tax_rounding, "tax_base": d.tax_base, "tax_by": d.tax_by, "total_minor": d.total_minor,
         "tax_minor": d.tax_minor, "gross_minor": d.gross_minor, "line_count": len(d.lines)}
        for d in drafts
    ], columns=list(HEADER_COLUMNS))  # fmt: skip
    rows = [row_of(line, d.key, number) for d in drafts for number, line in enumerate(d.lines, start=1)]
    return DraftBook(headers=headers, lines=pd.DataFrame(rows, columns=list(LINE_COLUMNS)))


def row_of(line: ChargeLine, key: str, number: int) -> dict[str, Any]:
    """A ``ChargeLine`` as a row of the line contract: line ``number`` of draft ``key``."""
    trace = line.trace
    prepaid = trace.get("prepaid") or {}
    return {
        "draft_key": key, "line_no": number, "work_item_keys": tuple(line.work_item_keys), "source_id": line.source_id,
        "customer_id": line.customer_id, "agreement_id": line.agreement_id, "period": line.period,
        "currency": line.currency, "service_type": line.service_type, "description": line.description,
        "quantity_raw": str(line.quantity_raw), "quantity_billed": str(line.quantity_billed),
        "quantity_centi": int(line.quantity_billed * 100), "unit_price_minor": line.unit_price_minor,
        "amount_minor": line.amount_minor, "tax_id": line.tax_id,
        "tax_rate": None if line.tax_rate is None else str(line.tax_rate),
        "line_kind": "credit" if trace.get("credit") is True else trace.get("line_kind") or "work",
        "rules": trace.get("rules"),
        # numbers a line made by hand or by a rule may not have are 0: a column of whole numbers stays one
        "rate_minor": int(trace.get("rate_minor") or 0), "rate_source": trace.get("rate_source"),
        "rate_kind": trace.get("rate_kind"), "modifier": trace.get("modifier"),
        "multiplier_bp": int(trace.get("multiplier_bp") or 0), "raw_seconds": int(trace.get("raw_seconds") or 0),
        "billed_seconds": int(trace.get("billed_seconds") or 0), "money_rounding": trace.get("money_rounding"),
        "ticket": trace.get("ticket"), "agreement": trace.get("agreement"),
        "prepaid_agreement": prepaid.get("agreement") or trace.get("overage"),
        "drawn_centi": int(prepaid.get("drawn_centi") or 0), "prepaid_left_centi": int(prepaid.get("left_centi") or 0),
        "overage": "overage" in trace, "rule": trace.get("rule"), "scope": trace.get("scope"),
    }  # fmt: skip


# What a draft's content is, for "unchanged since it was drafted" (an unchanged draft keeps its approval).
HASHED_HEADER = ("key", "customer_id", "agreement_id", "period", "currency", "version", "customer_name",
                 "customer_erp_ref", "customer_country", "money_rounding", "tax_id", "tax_rate", "tax_rounding",
                 "tax_base", "tax_by")  # fmt: skip
HASHED_LINE = tuple(name for name in LINE_COLUMNS if name not in ("draft_key", "quantity_centi", "rules"))


def content_hashes(book: DraftBook) -> list[str]:
    """Each draft's content hash (in the order of ``book.headers``): SHA-256 of its header and of a 64-bit
    hash of each line, by column."""
    if book.headers.empty:
        return []
    lines = book.lines[list(HASHED_LINE)].copy()
    for name in HASHED_LINE:  # numbers hash as numbers; text, with a missing value as ""
        if lines[name].dtype.kind not in "iub":
            lines[name] = lines[name].astype(object).fillna("")
    lines["work_item_keys"] = [" ".join(keys) for keys in book.lines["work_item_keys"]]
    row_hashes = pd.util.hash_pandas_object(lines, index=False).to_numpy()
    by_draft: dict[str, list[int]] = {}
    for key, value in zip(book.lines["draft_key"], row_hashes.tolist(), strict=True):
        by_draft.setdefault(key, []).append(value)
    out = []
    for header in book.headers[list(HASHED_HEADER)].astype(object).fillna("").itertuples(index=False):
        digest = hashlib.sha256("\x1f".join(map(str, header)).encode())
        digest.update(np.array(by_draft.get(header[0], []), dtype=np.uint64).tobytes())
        out.append(digest.hexdigest()[:32])
    return out
