"""Tryton as the ERP: parties and products found by our reference (and remembered), invoices created and
posted exactly once by their draft key, read back for reconciliation.

Exactly once: the draft key is the invoice's ``reference``. Tryton does not make it unique, and create and
post are separate transactions, so posting is check-then-create under one writer: an invoice already posted
for the key is answered with as it is; one left in draft by a crash between create and post is posted (or,
if its content no longer matches the draft, deleted and made again); only a key Tryton does not know is
created. Writes to one Tryton are serialized (on SQLite concurrent posting duplicates invoice numbers).

An unreliable Tryton: reads and logins are retried by ``TrytonRpc``; a write whose answer is lost (Tryton may
have committed it) fails the batch, and the batch is tried again from its check by reference, so an invoice
created or posted before the connection dropped is found and not made twice. A batch that still fails raises
``TrytonUnavailable`` (an outage): what was done is found by reference on the next run.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

from billing.errors import ConfigurationError
from billing.models import InvoiceDraft, PostingFailure, PostingReceipt
from billing.money import to_decimal, to_minor
from connectors.tryton_rpc import TrytonRpc, TrytonUnavailable, TrytonUserError

ERP = "tryton"
LIVE_STATES = ("draft", "validated", "posted", "paid")  # a cancelled invoice no longer holds its key
DONE_STATES = ("posted", "paid")
INVOICE_FIELDS = ["reference", "number", "state", "untaxed_amount", "tax_amount", "total_amount", "currency",
                  "create_date"]  # fmt: skip
_WRITE_LOCKS: dict[str, threading.Lock] = {}
# Creates that got no answer in time, by Tryton and draft key: Tryton may still be making them, and a check by
# reference cannot see an invoice before it is committed, so such a key is not created again for a while.
_UNANSWERED: dict[tuple[str, str], float] = {}
UNANSWERED_GRACE = 600.0  # seconds
log = logging.getLogger(__name__)


class MappingStore(Protocol):
    """Where links to ERP records are remembered (the ledger)."""

    def erp_mappings(self, erp: str, entity: str) -> dict[str, str]: ...

    def remember_erp_mapping(self, erp: str, entity: str, local_id: str, erp_id: str) -> None: ...


class MemoryMappings:
    def __init__(self) -> None:
        self.links: dict[tuple[str, str], dict[str, str]] = {}

    def erp_mappings(self, erp: str, entity: str) -> dict[str, str]:
        return dict(self.links.get((erp, entity), {}))

    def remember_erp_mapping(self, erp: str, entity: str, local_id: str, erp_id: str) -> None:
        self.links.setdefault((erp, entity), {})[local_id] = erp_id


def invoice_date(period: str) -> dt.date:
    """Invoices are dated the last day of the period they bill: the same on every rerun."""
    year, month = map(int, period.split("-"))
    return dt.date(year, month, calendar.monthrange(year, month)[1])


def tryton_line_amount(quantity: Decimal, unit_price_minor: int, currency: str) -> int:
    """The amount Tryton computes for a line: quantity × unit price, rounded half-even to the currency."""
    amount = quantity * to_decimal(unit_price_minor, currency)
    return to_minor(amount.quantize(to_decimal(1, currency), rounding=ROUND_HALF_EVEN), currency)


class TrytonErp:
    name = ERP

    def __init__(self, rpc: TrytonRpc, mappings: MappingStore | None = None, batch_size: int = 50,
                 batch_attempts: int | None = None, sleep: Any = None) -> None:  # fmt: skip
        self.rpc = rpc
        self.mappings = mappings or MemoryMappings()
        self.batch_size = batch_size
        self.batch_attempts = batch_attempts or rpc.attempts  # a batch whose write lost its answer, in all
        self._sleep = sleep
        self._where = f"{rpc.url}/{rpc.database}"
        self._lock = _WRITE_LOCKS.setdefault(self._where, threading.Lock())
        self._cache: dict[str, Any] = {}

    # -- reference data ----------------------------------------------------------------------------

    def _one(self, model: str, domain: list[Any], what: str) -> int:
        ids = self.rpc.model(model, "search", domain, 0, 2, None)
        if len(ids) != 1:
            raise ConfigurationError(
                f"{self.rpc.where}: expected one {what}, found {len(ids)} ({model} {domain})",
                hint="set Tryton up for invoicing (company, chart of accounts, fiscal years, taxes, units); "
                "connectors/tryton_embedded.py bootstrap() shows what is needed",
            )
        return int(ids[0])

    def _ref(self, key: str, model: str, domain: list[Any], what: str) -> int:
        if key not in self._cache:
            self._cache[key] = self._one(model, domain, what)
        return int(self._cache[key])

    def currency_id(self, code: str) -> int:
        return self._ref(f"currency:{code}", "currency.currency", [["code", "=", code]], f"currency {code}")

    def currency_codes(self) -> dict[int, str]:
        if "currency_codes" not in self._cache:
            rows = self.rpc.model("currency.currency", "search_read", [], 0, None, None, ["code"])
            self._cache["currency_codes"] = {r["id"]: r["code"] for r in rows}
        return dict(self._cache["currency_codes"])

    def tax_id(self, rate: Decimal) -> int:
        """The sales tax with our rate: Tryton then computes the amount itself."""
        domain = [["type", "=", "percentage"], ["rate", "=", rate], ["parent", "=", None]]
        return self._ref(f"tax:{rate}", "account.tax", domain, f"tax of rate {rate}")

    def journal_id(self) -> int:
        return self._ref("journal", "account.journal", [["type", "=", "revenue"]], "revenue journal")

    def hour_uom(self) -> int:
        # "Hour" has 2 digits; "Unit" has none and would refuse 1.25.
        return self._ref("uom:hour", "product.uom", [["name", "=", "Hour"]], "unit of measure 'Hour'")

    def service_category(self) -> int:
        return self._ref("category", "product.category", [["accounting", "=", True]], "accounting product category")

    def _mapped(self, entity: str, wanted: dict[str, dict[str, Any]], find: Any, create: Any) -> dict[str, int]:
        """Our ids → Tryton ids: remembered links first, then a search by code, then create; remember new ones."""
        links = {k: int(v) for k, v in self.mappings.erp_mappings(ERP, entity).items()}
        missing = [k for k in wanted if k not in links]
        if missing:
            found = find(missing)
            to_create = [k for k in missing if k not in found]
            created = dict(zip(to_create, create([wanted[k] for k in to_create]), strict=True)) if to_create else {}
            for local_id, erp_id in {**found, **created}.items():
                self.mappings.remember_erp_mapping(ERP, entity, local_id, str(erp_id))
                links[local_id] = int(erp_id)
        return {k: links[k] for k in wanted}

    def parties(self, drafts: Sequence[InvoiceDraft]) -> dict[str, int]:
        wanted = {d.customer_erp_ref or d.customer_id: {"name": d.customer_name or d.customer_id,
                  "code": d.customer_erp_ref or d.customer_id} for d in drafts}  # fmt: skip

        def find(codes: list[str]) -> dict[str, int]:
            rows = self.rpc.model("party.party", "search_read", [["code", "in", codes]], 0, None, None, ["code"])
            return {r["code"]: r["id"] for r in rows}

        def create(values: list[dict[str, Any]]) -> list[int]:
            return self.rpc.model("party.party", "create", [
                {"name": v["name"], "code": v["code"], "addresses": [["create", [{}]]]} for v in values])  # fmt: skip

        return self._mapped("party", wanted, find, create)

    def products(self, drafts: Sequence[InvoiceDraft]) -> dict[str, int]:
        services = sorted({line.service_type for d in drafts for line in d.lines})
        wanted = {s: {"code": f"T2I-{s}", "name": s.replace("_", " ").capitalize()} for s in services}

        def find(codes: list[str]) -> dict[str, int]:
            rows = self.rpc.model("product.product", "search_read", [["code", "in", [f"T2I-{c}" for c in codes]]],
                                  0, None, None, ["code"])  # fmt: skip
            return {r["code"].removeprefix("T2I-"): r["id"] for r in rows}

        def create(values: list[dict[str, Any]]) -> list[int]:
            templates = self.rpc.model("product.template", "create", [
                {"name": v["name"], "code": v["code"], "type": "service", "default_uom": self.hour_uom(),
                 "list_price": Decimal(0), "account_category": self.service_category(),
                 "products": [["create", [{}]]]}
                for v in values])  # fmt: skip
            rows = self.rpc.model("product.product", "search_read", [["template", "in", templates]], 0, None, None,
                                  ["template"])  # fmt: skip
            by_template = {r["template"]: r["id"] for r in rows}
            return [by_template[t] for t in templates]

        return self._mapped("product", wanted, find, create)

    # -- invoices ----------------------------------------------------------------------------------

    def _invoices(self, keys: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
        for start in range(0, len(keys), 200):
            rows = self.rpc.model(
                "account.invoice",
                "search_read",
                [
                    ["reference", "in", list(keys[start : start + 200])],
                    ["type", "=", "out"],
                    ["state", "in", list(LIVE_STATES)],
                ],
                0,
                None,
                [["id", "ASC"]],
                INVOICE_FIELDS,
            )
            for row in rows:  # fmt: skip
                found[row["reference"]].append(row)
        return found

    def _receipt(self, row: dict[str, Any], already_existed: bool) -> PostingReceipt:
        code = self.currency_codes()[row["currency"]]
        return PostingReceipt(
            draft_key=row["reference"], erp=ERP, erp_id=str(row["id"]), erp_number=row["number"] or "",
            total_minor=to_minor(row["untaxed_amount"], code), tax_minor=to_minor(row["tax_amount"], code),
            gross_minor=to_minor(row["total_amount"], code), state=row["state"], currency=code,
            posted_at=row.get("create_date") or dt.datetime.now(dt.UTC), already_existed=already_existed,
        )  # fmt: skip

    def company(self) -> int:
        return int(self.rpc.context["company"])

    def _invoice_defaults(self, party: int) -> dict[str, Any]:
        """What Tryton derives from the party: journal, invoice address, receivable account, payment term."""
        key = f"invoice-defaults:{party}"
        if key not in self._cache:
            values = {"type": "out", "party": party, "company": self.company(), "journal": None,
                      "invoice_address": None, "account": None, "payment_term": None}  # fmt: skip
            changes = self.rpc.model("account.invoice", "on_change", values, ["type", "party"])
            self._cache[key] = {k: changes[k] for k in ("journal", "invoice_address", "account", "payment_term")
                                if changes.get(k)}  # fmt: skip
        return dict(self._cache[key])

    def _line_defaults(self, product: int, party: int, currency: int) -> dict[str, Any]:
        """The revenue account and taxes Tryton takes for the product and party (its category's accounts and
        customer taxes, after the party's tax rule)."""
        key = f"line-defaults:{product}:{party}:{currency}"
        if key not in self._cache:
            values = {"product": product, "company": self.company(), "currency": currency, "invoice": None,
                      "invoice_type": "out", "party": party, "account": None, "unit": None, "taxes": [],
                      "quantity": Decimal(1), "unit_price": Decimal(0)}  # fmt: skip
            changes = self.rpc.model("account.invoice.line", "on_change", values, ["product"])
            taxes = [tax["id"] for _index, tax in changes.get("taxes", {}).get("add", [])]
            self._cache[key] = {"account": int(changes["account"]), "taxes": taxes}
        return dict(self._cache[key])

    def _line_taxes(self, draft: InvoiceDraft, line: Any, product: int, party: int, currency: int) -> list[int]:
        """Our tax for the line (the invoice's or its product class's), or Tryton's own when it computes tax."""
        if draft.tax_by == "erp":
            return list(self._line_defaults(product, party, currency)["taxes"])
        return [self.tax_id(draft.rate_of(line))]

    def _payload(self, draft: InvoiceDraft, party: int, products: dict[str, int]) -> dict[str, Any]:
        # Our tax, explicitly (the invoice's, or the line's product class's): Tryton computes its amount.
        currency = self.currency_id(draft.currency)
        return {
            "type": "out", "party": party, "company": self.company(), "currency": currency,
            "invoice_date": invoice_date(draft.period), "reference": draft.key,
            "description": f"{draft.customer_name or draft.customer_id} {draft.period}",
            **self._invoice_defaults(party),
            "lines": [["create", [
                {"product": products[line.service_type], "description": line.description,
                 "quantity": line.quantity_billed, "unit": self.hour_uom(),
                 "unit_price": to_decimal(line.unit_price_minor, draft.currency), "currency": currency,
                 "account": self._line_defaults(products[line.service_type], party, currency)["account"],
                 "taxes": [["add", self._line_taxes(draft, line, products[line.service_type], party, currency)]]}
                for line in draft.lines]]],
        }  # fmt: skip

    def _check_amounts(self, draft: InvoiceDraft) -> str | None:
        """Tryton rounds line amounts half-even; a draft whose lines it would compute otherwise is refused."""
        for number, line in enumerate(draft.lines, start=1):
            theirs = tryton_line_amount(line.quantity_billed, line.unit_price_minor, draft.currency)
            if theirs != line.amount_minor:
                return (
                    f"line {number} ({line.source_id}): Tryton computes {to_decimal(theirs, draft.currency)}, "
                    f"the draft says {to_decimal(line.amount_minor, draft.currency)} {draft.currency} "
                    f"(rules round {draft.currency} {draft.money_rounding.value}; Tryton rounds half_even)"
                )
        return None

    def _create(self, drafts: list[InvoiceDraft], failures: list[PostingFailure]) -> list[int]:
        if not drafts:
            return []
        parties = self.parties(drafts)
        products = self.products(drafts)
        payloads = [self._payload(d, parties[d.customer_erp_ref or d.customer_id], products) for d in drafts]
        try:
            return list(self.rpc.model("account.invoice", "create", payloads))
        except TrytonUserError:  # find the one that is refused; create the others
            ids = []
            for draft, payload in zip(drafts, payloads, strict=True):
                try:
                    ids.extend(self.rpc.model("account.invoice", "create", [payload]))
                except TrytonUserError as exc:
                    failures.append(PostingFailure(draft_key=draft.key, erp=ERP, error=f"create refused: {exc}"))
            return ids

    def _call_acknowledging(self, model: str, method: str, ids: list[int]) -> None:
        """Call a button; a UserWarning (e.g. a due date already past for last month's invoice) is
        acknowledged for this user, as a clerk clicking "yes" would, and the call made again."""
        for _ in range(5):
            try:
                self.rpc.model(model, method, ids)
                return
            except TrytonUserError as exc:
                if exc.kind != "UserWarning" or not exc.detail:
                    raise
                # Twice is no harm (Tryton consumes every acknowledgement of the name): retried like a read.
                self.rpc.model("res.user.warning", "create", [{"user": self.rpc.context.get("id") or
                               self._user_id(), "name": exc.detail[0], "always": False}], retry_safe=True)  # fmt: skip
        self.rpc.model(model, method, ids)

    def _user_id(self) -> int:
        return self._ref("user", "res.user", [["login", "=", self.rpc.user]], f"user {self.rpc.user}")

    def _post_ids(self, ids: list[int], keys: dict[int, str], failures: list[PostingFailure]) -> None:
        if not ids:
            return
        try:
            self._call_acknowledging("account.invoice", "post", ids)
        except TrytonUserError:  # one refusal fails the whole call: post one by one to isolate it
            for invoice_id in ids:
                try:
                    self._call_acknowledging("account.invoice", "post", [invoice_id])
                except TrytonUserError as exc:
                    failures.append(PostingFailure(draft_key=keys[invoice_id], erp=ERP, error=f"post refused: {exc}"))

    def find(self, draft_key: str) -> PostingReceipt | None:
        rows = [r for r in self._invoices([draft_key])[draft_key] if r["state"] in DONE_STATES]
        return self._receipt(rows[0], already_existed=True) if rows else None

    def post(self, drafts: Sequence[InvoiceDraft]) -> tuple[list[PostingReceipt], list[PostingFailure]]:
        receipts: list[PostingReceipt] = []
        failures: list[PostingFailure] = []
        with self._lock:
            for start in range(0, len(drafts), self.batch_size):
                batch = list(drafts[start : start + self.batch_size])
                done, failed = self._post_batch_until_answered(batch)
                receipts += done
                failures += failed
        return receipts, failures

    def _post_batch_until_answered(
        self, drafts: list[InvoiceDraft]
    ) -> tuple[list[PostingReceipt], list[PostingFailure]]:
        """One batch, tried again from its check by reference when a write lost its answer (Tryton may have
        committed it). An attempt in which some write was answered made progress and does not count against
        ``batch_attempts`` (up to four times as many attempts in all); a read or login that failed after its
        own retries ends the batch at once."""
        touched: set[str] = set()  # keys this call created or posted: their receipts are new, found or not
        fruitless = 0
        for attempt in range(1, 4 * self.batch_attempts + 1):
            receipts: list[PostingReceipt] = []
            failures: list[PostingFailure] = []
            answered = self.rpc.writes_answered
            try:
                self._post_batch(drafts, receipts, failures, touched)
                return receipts, failures
            except TrytonUnavailable as exc:
                fruitless = 0 if self.rpc.writes_answered > answered else fruitless + 1
                if not exc.maybe_done or fruitless >= self.batch_attempts or attempt == 4 * self.batch_attempts:
                    raise
                pause = min(self.rpc.wait_max, self.rpc.wait_initial * 2 ** max(fruitless - 1, 0))
                pause += random.uniform(0, self.rpc.wait_initial)
                log.warning("Tryton: %s; checking the batch by reference again in %.1f s", exc, pause)
                (self._sleep or time.sleep)(pause)
        raise AssertionError("unreachable")

    def _post_batch(self, drafts: list[InvoiceDraft], receipts: list[PostingReceipt],
                    failures: list[PostingFailure], touched: set[str] | None = None) -> None:  # fmt: skip
        touched = set() if touched is None else touched
        existing = self._invoices([d.key for d in drafts])
        to_post: dict[int, str] = {}
        to_create: list[InvoiceDraft] = []
        stale: list[int] = []
        for draft in drafts:
            rows = existing[draft.key]
            unanswered = _UNANSWERED.pop((self._where, draft.key), None)  # kept below while it still counts
            done = [r for r in rows if r["state"] in DONE_STATES]
            if done:
                receipts.append(self._receipt(done[0], already_existed=draft.key not in touched))
                continue
            problem = self._check_amounts(draft)
            if problem:
                failures.append(PostingFailure(draft_key=draft.key, erp=ERP, error=problem))
                continue
            leftover = [r for r in rows if r["state"] in ("draft", "validated")]
            current = [r for r in leftover
                       if to_minor(r["untaxed_amount"], draft.currency) == draft.total_minor]  # fmt: skip
            if current:  # created by a run (or an attempt) that stopped before posting: post that one
                to_post[current[0]["id"]] = draft.key
                stale += [r["id"] for r in leftover if r is not current[0]]
            elif not rows and unanswered is not None and time.monotonic() - unanswered < UNANSWERED_GRACE:
                _UNANSWERED[(self._where, draft.key)] = unanswered
                failures.append(PostingFailure(draft_key=draft.key, erp=ERP, error=(
                    "not posted: Tryton did not answer its create in time and may still be making it; it is not "
                    f"created again for {UNANSWERED_GRACE / 60:.0f} minutes (the next run checks by reference "
                    "first)")))  # fmt: skip
            else:
                stale += [r["id"] for r in leftover]
                to_create.append(draft)
        if stale:  # drafts of ours that no longer match: Tryton allows deleting unposted invoices
            self.rpc.model("account.invoice", "delete", stale)
        touched.update(d.key for d in to_create)
        try:
            created = self._create(to_create, failures)
        except TrytonUnavailable as exc:
            if exc.maybe_running:
                _UNANSWERED.update({(self._where, d.key): time.monotonic() for d in to_create})
            raise
        rows = self.rpc.model("account.invoice", "read", created, ["reference"]) if created else []
        to_post.update({r["id"]: r["reference"] for r in rows})
        touched.update(to_post.values())
        self._post_ids(list(to_post), to_post, failures)
        failed = {f.draft_key for f in failures}
        after = self._invoices([k for k in to_post.values() if k not in failed])
        for found in after.values():
            done = [r for r in found if r["state"] in DONE_STATES]
            if done:
                receipts.append(self._receipt(done[0], already_existed=False))

    def read_back(self, draft_keys: Sequence[str]) -> dict[str, list[PostingReceipt]]:
        return {key: [self._receipt(r, already_existed=True) for r in rows]
                for key, rows in self._invoices(list(draft_keys)).items()}  # fmt: skip
