"""File-export ERP: each invoice as a JSON document plus, per period, a CSV import file.

The layout an ERP's import expects::

    <folder>/<period>/<customer>-<agreement>-<currency>-v<version>.json   one invoice, named by its key
    <folder>/<period>/import.csv                                          every line of the period's invoices
    <folder>/sequence.json                                                the last invoice number issued

Posting is idempotent by the draft's key: the JSON file is the commit point, written atomically, and an
existing file for the key is returned instead of written again. Writers are serialized by a file lock, so
two runs never issue the same number. A crash after a number is taken but before the file is written leaves
a gap in the numbering, never a duplicate.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billing.draft_book import DraftBook, book_of
from billing.models import InvoiceDraft, PostingFailure, PostingReceipt
from billing.money import to_decimal

IMPORT_COLUMNS = (
    "invoice_number", "external_reference", "invoice_date", "customer_ref", "customer_name", "currency",
    "line_no", "description", "quantity", "unit_price", "line_amount", "tax_id", "tax_rate", "invoice_untaxed",
    "invoice_tax", "invoice_total",
)  # fmt: skip


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class FileErp:
    name = "files"

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, draft_key: str) -> Path:
        _, customer, agreement, period, currency, version = draft_key.split(":")
        return self.folder / period / f"{customer}-{agreement}-{currency}-{version}.json"

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.folder / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _next_number(self, year: str) -> str:
        sequence_file = self.folder / "sequence.json"
        sequences = json.loads(sequence_file.read_text()) if sequence_file.exists() else {}
        sequences[year] = sequences.get(year, 0) + 1
        _write_atomically(sequence_file, json.dumps(sequences, indent=2) + "\n")
        return f"INV-{year}-{sequences[year]:05d}"

    @staticmethod
    def _receipt(document: dict[str, Any], already_existed: bool) -> PostingReceipt:
        return PostingReceipt(
            draft_key=document["external_reference"], erp="files", erp_id=document["number"],
            erp_number=document["number"], total_minor=document["untaxed_minor"], currency=document["currency"],
            tax_minor=document["tax"]["amount_minor"], gross_minor=document["gross_minor"],
            posted_at=datetime.fromisoformat(document["posted_at"]), already_existed=already_existed,
        )  # fmt: skip

    def find(self, draft_key: str) -> PostingReceipt | None:
        path = self._path(draft_key)
        if not path.exists():
            return None
        return self._receipt(json.loads(path.read_text(encoding="utf-8")), already_existed=True)

    def post(self, drafts: Sequence[InvoiceDraft]) -> tuple[list[PostingReceipt], list[PostingFailure]]:
        return self.post_book(book_of(drafts))

    def post_book(self, book: DraftBook) -> tuple[list[PostingReceipt], list[PostingFailure]]:
        """Post a book of drafts: each draft's document written from its columns (no ``InvoiceDraft`` made),
        then the period's import file rebuilt once."""
        receipts: list[PostingReceipt] = []
        failures: list[PostingFailure] = []
        lines_of = _lines_by_draft(book)
        with self._lock():
            for header in book.headers.to_dict("records"):
                try:
                    receipts.append(self.find(header["key"]) or self._write(header, lines_of.get(header["key"], [])))
                except OSError as exc:
                    failures.append(PostingFailure(draft_key=header["key"], erp=self.name, error=str(exc)))
            for period in sorted(set(book.headers["period"])):
                self._write_import_csv(period)
        return receipts, failures

    def _write(self, draft: dict[str, Any], lines: list[dict[str, Any]]) -> PostingReceipt:
        now = datetime.now(UTC)
        cur = draft["currency"]
        document = {
            "external_reference": draft["key"],
            "number": self._next_number(draft["period"][:4]),
            "posted_at": now.isoformat(),
            "invoice_date": now.date().isoformat(),
            "period": draft["period"],
            "customer": {"id": draft["customer_id"], "name": draft["customer_name"],
                         "erp_ref": draft["customer_erp_ref"] or None},
            "agreement": draft["agreement_id"],
            "currency": cur,
            "lines": lines,
            "untaxed": str(to_decimal(int(draft["total_minor"]), cur)),
            "untaxed_minor": int(draft["total_minor"]),
            "tax": {"id": draft["tax_id"], "rate": draft["tax_rate"], "rounding": draft["tax_rounding"],
                    "computed_by": draft["tax_by"],
                    "amount": str(to_decimal(int(draft["tax_minor"]), cur)), "amount_minor": int(draft["tax_minor"])},
            "gross": str(to_decimal(int(draft["gross_minor"]), cur)),
            "gross_minor": int(draft["gross_minor"]),
        }  # fmt: skip
        path = self._path(draft["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        # One line per invoice line: readable, and written by the json module's C encoder (indent= is pure Python).
        text = json.dumps({**document, "lines": []}, indent=2, ensure_ascii=False)
        body = ",\n".join("    " + json.dumps(line, ensure_ascii=False) for line in lines)
        text = text.replace('"lines": []', '"lines": [\n' + body + "\n  ]" if lines else '"lines": []', 1)
        _write_atomically(path, text + "\n")
        return self._receipt(document, already_existed=False)

    def documents(self, period: str) -> list[dict[str, Any]]:
        folder = self.folder / period
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]

    def _write_import_csv(self, period: str) -> None:
        # Rebuilt from the invoice documents each time, so it can never disagree with them.
        path = self.folder / period / "import.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".import.csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(IMPORT_COLUMNS)
            for doc in self.documents(period):
                for line in doc["lines"]:
                    writer.writerow([
                        doc["number"], doc["external_reference"], doc["invoice_date"],
                        doc["customer"]["erp_ref"] or doc["customer"]["id"], doc["customer"]["name"],
                        doc["currency"], line["line_no"], line["description"], line["quantity"],
                        line["unit_price"], line["amount"], line.get("tax_id", doc["tax"]["id"]),
                        line.get("tax_rate", doc["tax"]["rate"]), doc["untaxed"],
                        doc["tax"]["amount"], doc["gross"],
                    ])  # fmt: skip
        os.replace(tmp, path)

    def read_back(self, draft_keys: Sequence[str]) -> dict[str, list[PostingReceipt]]:
        """Every document of the keys' periods that carries one of them, by its totals (``head_of``: a large
        period's lines are not parsed to read them)."""
        found: dict[str, list[PostingReceipt]] = {key: [] for key in draft_keys}
        for period in {key.split(":")[3] for key in draft_keys}:
            folder = self.folder / period
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
                doc = head_of(path.read_text(encoding="utf-8"))
                if doc["external_reference"] in found:
                    found[doc["external_reference"]].append(self._receipt(doc, already_existed=True))
        return found


LINES_OPEN, LINES_CLOSE = '\n  "lines": [\n', '\n  ],\n  "untaxed"'  # around the lines, as ``_write`` lays them out


def head_of(text: str) -> dict[str, Any]:
    """A document without its lines: the text around them parsed (a few hundred bytes, where a document of
    thousands of lines takes milliseconds); a document laid out otherwise (edited by hand, another tool) is
    parsed whole. The JSON encoder escapes newlines in strings, so the markers occur only where ``_write`` put
    them."""
    start, end = text.find(LINES_OPEN), text.rfind(LINES_CLOSE)
    if 0 < start < end:
        try:
            head = json.loads(text[:start] + '\n  "lines": []' + text[end + len("\n  ]") :])
        except json.JSONDecodeError:
            head = None
        if isinstance(head, dict) and {"external_reference", "untaxed_minor", "tax", "gross_minor"} <= head.keys():
            return head
    document: dict[str, Any] = json.loads(text)
    return document


def _lines_by_draft(book: DraftBook) -> dict[str, list[dict[str, Any]]]:
    """Each draft's lines as its document lists them, built by column."""
    lines = book.lines
    if lines.empty:
        return {}
    of = book.headers.set_index("key")
    currency = lines["draft_key"].map(of["currency"]).tolist()
    own_tax = lines["tax_id"].tolist()
    own_rate = lines["tax_rate"].tolist()
    draft_tax = lines["draft_key"].map(of["tax_id"]).tolist()
    draft_rate = lines["draft_key"].map(of["tax_rate"]).tolist()
    out: dict[str, list[dict[str, Any]]] = {}
    for n, (key, number, source, text, quantity, unit, amount) in enumerate(zip(
        lines["draft_key"].tolist(), lines["line_no"].tolist(), lines["source_id"].tolist(),
        lines["description"].tolist(), lines["quantity_billed"].tolist(), lines["unit_price_minor"].tolist(),
        lines["amount_minor"].tolist(), strict=True,
    )):  # fmt: skip
        out.setdefault(key, []).append({
            "line_no": int(number), "source_id": source or "", "description": text, "quantity": quantity,
            "unit_price": str(to_decimal(int(unit), currency[n])), "amount": str(to_decimal(int(amount), currency[n])),
            "amount_minor": int(amount),
            "tax_id": own_tax[n] if isinstance(own_tax[n], str) and own_tax[n] else draft_tax[n],
            "tax_rate": own_rate[n] if isinstance(own_rate[n], str) and own_rate[n] else draft_rate[n],
        })  # fmt: skip
    return out
