"""Reconcile: read the posted invoices back from the ERP, compare with the ledger to the cent, and report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from billing.ledger import Ledger, WorkState
from billing.models import DraftState
from billing.money import format_money, to_decimal
from billing.settings import Settings
from tasks.extract import make_source
from tasks.post import make_erp
from tasks.stage import plural, stage

UNBILLED_STATES = (WorkState.EXTRACTED, WorkState.PRICED, WorkState.DRAFTED, WorkState.APPROVED)


@dataclass
class ReconcileReport:
    period: str
    invoices: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    # ERP invoices sharing one key ({key, erp_numbers}), and work items on two live invoices ({work_item, keys, ...})
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    unbilled: list[str] = field(default_factory=list)
    changed_after_billing: list[str] = field(default_factory=list)  # edited at the source since: credit or re-bill
    deleted_after_billing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile_period(settings: Settings, period: str) -> ReconcileReport:
    """Compare every posted draft with what the ERP holds for its key: untaxed, tax and total, to the cent.

    The ERP computes tax itself, so agreement is an independent check of our arithmetic.
    """
    ledger = Ledger(settings.resolved_ledger_url)
    erp = make_erp(settings)
    posted = ledger.draft_headers(period, states=[DraftState.POSTED])  # totals only: no lines are read
    numbers = {p.draft_key: p.erp_number for p in ledger.postings(period)}
    found = erp.read_back(list(posted["key"]))
    report = ReconcileReport(period=period)
    matched = []
    for draft in posted.itertuples():
        in_erp = found.get(draft.key, [])
        theirs = (in_erp[0].total_minor, in_erp[0].tax_minor, in_erp[0].gross_minor) if in_erp else None
        ours = (int(draft.total_minor), int(draft.tax_minor), int(draft.gross_minor))
        if draft.tax_by == "erp" and theirs:  # the ERP's tax is its own: only the untaxed total must agree
            ours = (int(draft.total_minor), theirs[1], int(draft.total_minor) + theirs[1])
        if not in_erp:
            status = "missing_in_erp"
        elif len(in_erp) > 1:
            status = "duplicate"
            report.duplicates.append({"key": draft.key, "erp_numbers": [r.erp_number for r in in_erp]})
        elif theirs != ours:
            status = "mismatch"
        else:
            status = "ok"
            matched.append(draft.key)
        entry = {
            "key": draft.key, "erp_number": numbers.get(draft.key), "currency": draft.currency,
            "total_minor": ours[0], "erp_total_minor": theirs[0] if theirs else None,
            "tax_minor": int(draft.tax_minor), "erp_tax_minor": theirs[1] if theirs else None,
            "gross_minor": int(draft.gross_minor), "erp_gross_minor": theirs[2] if theirs else None,
            "erp_state": in_erp[0].state if in_erp else None, "status": status,
        }  # fmt: skip
        report.invoices.append(entry)
        if status in ("missing_in_erp", "mismatch"):
            report.mismatches.append(entry)
    report.duplicates += [{"work_item": item, "keys": keys, "erp_numbers": [numbers.get(k) for k in keys]}
                          for item, keys in ledger.items_on_two_posted_drafts(period)]  # fmt: skip
    ledger.mark_reconciled(matched, actor=f"reconcile:{erp.name}")
    if settings.source == "redmine":  # billed entries are not extracted again: look at them at the source
        source = make_source(settings)
        everything = source.extract(period, unbilled_only=False)  # type: ignore[call-arg]
        _, deleted = ledger.flag_billed_changes(
            period, source.system, everything.instance, everything.worklogs[["key", "content_hash"]], actor="reconcile"
        )
        report.deleted_after_billing = sorted(deleted)  # fmt: skip
    report.unbilled = list(ledger.items_in(period, UNBILLED_STATES, columns=["key"])["key"])
    report.changed_after_billing = ledger.flagged_items(period, "changed_after_billing")
    return report


def write_back_to_source(settings: Settings, period: str) -> dict[str, Any]:
    """Invoice numbers into the source (Redmine), so its "not yet billed" filter skips them and the helpdesk
    sees what was billed. Failures are reported and retried on the next run; the posting stands."""
    if settings.source != "redmine":
        return {"written": 0, "failed": {}}
    ledger = Ledger(settings.resolved_ledger_url)
    source = make_source(settings)
    pending = ledger.billed_without_write_back(period, source.system)
    result = source.write_back(pending)  # type: ignore[attr-defined]
    ledger.record_write_back(result.written, result.failed, actor=f"write-back:{source.system}")
    return {"written": len(result.written), "failed": result.failed}


SUMMARY_LINES = 2_000  # a period with more lines leaves them out of its summary unless asked (``lines=True``)
SUMMARY_SHOWN = 100  # and lists only the first of more quarantined, non-billable or held items ("omitted": the rest)


def period_summary(settings: Settings, period: str, new_postings: int, failures: list[Any],
                   lines: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """The run's answer (``--json``): every invoice of the period with its totals, quarantines, counts by final
    state. ``lines``: each invoice's lines too (True), never (False), or while the period has no more than
    ``SUMMARY_LINES`` (None): a large period's summary stays kilobytes; its lines are in the ledger and the ERP.
    Likewise the quarantined, non-billable and held items are listed in full up to ``SUMMARY_LINES`` of each."""
    ledger = Ledger(settings.resolved_ledger_url)
    numbers = {p.draft_key: p.erp_number for p in ledger.postings(period)}
    drafts = ledger.draft_headers(period)
    decisions = ledger.latest_decisions(drafts["key"])
    with_lines = lines if lines is not None else int(drafts["line_count"].sum()) <= SUMMARY_LINES
    lines_of = {d.key: d.lines for d in ledger.drafts(period)} if with_lines else {}
    invoices = [
        {"key": d.key, "customer": d.customer_id, "customer_name": d.customer_name, "period": d.period,
         "currency": d.currency, "version": int(d.version), "total_minor": int(d.total_minor),
         "tax_minor": int(d.tax_minor), "gross_minor": int(d.gross_minor), "status": d.state,
         "erp_number": numbers.get(d.key), "line_count": int(d.line_count),
         "decided_by": decisions[d.key].approver if d.key in decisions else None,
         "decision_note": (decisions[d.key].note or None) if d.key in decisions else None}
        | ({"lines": [{"source_id": line.source_id, "description": line.description,
                       "quantity": str(line.quantity_billed), "unit_price_minor": line.unit_price_minor,
                       "amount_minor": line.amount_minor} for line in lines_of[d.key]]} if with_lines else {})
        for d in drafts.itertuples()
    ]  # fmt: skip
    counts = ledger.counts(period)
    settled: dict[str, list[dict[str, Any]]] = {}
    omitted: dict[str, int] = {}
    kinds = (("quarantined", WorkState.QUARANTINED, "reason"), ("non_billable", WorkState.NON_BILLABLE, "rule"),
             ("held", WorkState.HELD, "rule"))  # fmt: skip
    for name, state, why in kinds:
        rows = ledger.items_in(period, [state])
        if lines is not True and len(rows) > SUMMARY_LINES:  # counts say how many; the ledger has them all
            omitted[name] = len(rows) - SUMMARY_SHOWN
            rows = rows.head(SUMMARY_SHOWN)
        settled[name] = [{"source_id": s, why: r} for s, r in zip(rows["source_id"], rows["reason"], strict=True)]
    return {
        "period": period,
        "invoices": invoices,
        **settled,
        "counts": counts,
        "posting_latency_seconds": sorted(ledger.posting_latencies(period)),
        "work_items_total": sum(counts.values()),
        "new_postings": new_postings,
        "posting_failures": [f.model_dump() for f in failures],
    } | ({"omitted": omitted} if omitted else {})


def publish(summary: dict[str, Any], report: ReconcileReport) -> None:
    """The invoice summary and the reconciliation as artifacts in the Prefect UI."""
    period = summary["period"]
    create_table_artifact(
        key=f"invoices-{period.replace('-', '')}",
        table=[{"invoice": i["erp_number"] or "(not posted)", "customer": i["customer_name"] or i["customer"],
                "status": i["status"], "lines": i["line_count"],
                "untaxed": format_money(i["total_minor"], i["currency"]),
                "tax": format_money(i["tax_minor"], i["currency"]),
                "total": format_money(i["gross_minor"], i["currency"])} for i in summary["invoices"]],
        description=f"Invoices of {period}",
    )  # fmt: skip
    counts = summary["counts"]
    quarantined = "\n".join(f"- `{q['source_id']}`: {q['reason']}" for q in summary["quarantined"][:20]) or "- none"
    create_markdown_artifact(
        key=f"run-summary-{period.replace('-', '')}",
        markdown=(
            f"## Billing {period}\n\n"
            f"{summary['work_items_total']} work items: {counts['billed']} billed, {counts['non_billable']} "
            f"non-billable, {counts['quarantined']} quarantined, {counts['pending_approval']} pending approval, "
            f"{counts['pending_posting']} pending posting, {counts['held']} held (billed by a rerun of {period} "
            f"once their hold clears). New postings this run: {summary['new_postings']}.\n\n"
            f"Reconciliation: {len(report.mismatches)} mismatches, {len(report.duplicates)} duplicates, "
            f"{len(report.unbilled)} unbilled, {len(report.changed_after_billing)} changed after billing.\n\n"
            f"### Quarantined\n{quarantined}\n"
        ),
        description=f"Billing run summary for {period}",
    )
    create_markdown_artifact(
        key=dashboard_key(period),
        markdown=billing_dashboard(summary, report),
        description=f"Billing {period}: posted, waiting, rejected, not posted, quarantined, reconcile",
    )


# -- the period's dashboard -----------------------------------------------------------------------------------

MONEY = (("untaxed", "total_minor"), ("tax", "tax_minor"), ("total", "gross_minor"))
Column = tuple[str, Callable[[dict[str, Any]], object]]


def dashboard_key(period: str) -> str:
    """``billing-2026-10``: an artifact key is lowercase letters, digits and dashes, and a period is YYYY-MM."""
    return f"billing-{period}"


def billing_dashboard(summary: dict[str, Any], report: ReconcileReport) -> str:
    """The period for a person reading the Prefect UI, as markdown: a short table per question (posted, waiting,
    rejected, not posted, quarantined, non-billable, held, reconcile). Amounts are exact decimals of the integer
    minor units, and every total is the sum of the lines shown above it."""
    period, invoices, counts = summary["period"], summary["invoices"], summary["counts"]
    customer: Column = ("customer", lambda i: i["customer_name"] or i["customer"])
    draft: Column = ("draft", lambda i: f"`{i['key']}`")
    posted = [i for i in invoices if i["status"] == DraftState.POSTED.value]
    waiting = [i for i in invoices if i["status"] == DraftState.DRAFTED.value]
    rejected = [i for i in invoices if i["status"] == DraftState.REJECTED.value]
    by_key = {i["key"]: i for i in invoices}
    failures = summary["posting_failures"]
    return "\n".join([
        f"# Billing {period}\n",
        f"{summary['work_items_total']} work items: {counts['billed']} billed, {counts['pending_approval']} pending "
        f"approval, {counts['pending_posting']} approved and not posted, {counts['non_billable']} non-billable, "
        f"{counts['quarantined']} quarantined, {counts['held']} held. New postings this run: "
        f"{summary['new_postings']}.\n",
        health(summary, report) + "\n",
        f"## Invoices posted: {len(posted)}\n",
        _invoices_table(posted, [("invoice", lambda i: i["erp_number"] or ""), customer]),
        f"## Awaiting approval: {len(waiting)}\n",
        _invoices_table(waiting, [customer, draft]),
        f"## Rejected: {len(rejected)}\n",
        _invoices_table(rejected, [customer, draft], after=[("rejected by", lambda i: i.get("decided_by") or ""),
                                                            ("note", lambda i: i.get("decision_note") or "")]),
        f"## Posting failures: {len(failures)}\n",
        _table(["customer", "draft", "error"], [
            [customer[1](by_key[f["draft_key"]]) if f["draft_key"] in by_key else "", f"`{f['draft_key']}`",
             f["error"]] for f in failures]),
        f"## Quarantined work items: {len(summary['quarantined'])}\n",
        _count_table("reason", [quarantine_reason(q["reason"]) for q in summary["quarantined"]]),
        f"## Non-billable by rule: {len(summary['non_billable'])}\n",
        _count_table("rule", [n["rule"] or "" for n in summary["non_billable"]]),
        f"## Held until their hold clears: {len(summary['held'])}\n",
        _count_table("rule", [h["rule"] or "" for h in summary["held"]]),
        *_reconcile_section(report),
    ])  # fmt: skip


def health(summary: dict[str, Any], report: ReconcileReport) -> str:
    """Posting latency (drafted → posted), exception rate (quarantined work items and failed postings per work
    item) and reconciliation backlog (differences reconcile found that someone has to look at)."""
    latencies = summary.get("posting_latency_seconds") or []
    latency = (f"median {_duration(latencies[len(latencies) // 2])}, max {_duration(latencies[-1])} over "
               f"{len(latencies)} invoice(s)") if latencies else "no invoice posted yet"  # fmt: skip
    exceptions = len(summary["quarantined"]) + len(summary["posting_failures"])
    total = summary["work_items_total"]
    rate = f"{Decimal(100 * exceptions) / total:.1f} %" if total else "0.0 %"
    backlog = (len(report.mismatches) + len(report.duplicates) + len(report.unbilled)
               + len(report.changed_after_billing))  # fmt: skip
    return (
        f"**Posting latency** (drafted → posted): {latency}. **Exception rate**: {rate} ({exceptions} of "
        f"{total}: quarantined work items and failed postings). **Reconciliation backlog**: {backlog} "
        "difference(s) to look at."
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def quarantine_reason(reason: str) -> str:
    """What a quarantined row's reason says, without the row's own value and place: ``duration must be more
    than 0 and at most 24 hours: duration_minutes=-30 (worklogs.csv row 47)`` → ``duration must be more than 0
    and at most 24 hours``. Several reasons (joined by ``; ``) stay together, so each row is counted once."""
    said: list[str] = []
    for part in reason.split("; "):
        if ": " in part or not said:
            said.append(part.split(": ", 1)[0])
        # else: the rest of a value that held "; " itself
    return "; ".join(dict.fromkeys(said))


def _reconcile_section(report: ReconcileReport) -> list[str]:
    """How many of each difference reconcile found (the total is their sum), then the invoices whose amounts
    the ERP does not agree with."""
    kinds = {
        "amounts differ from the ERP's": [m for m in report.mismatches if m["status"] == "mismatch"],
        "missing in the ERP": [m for m in report.mismatches if m["status"] == "missing_in_erp"],
        "several ERP invoices with one key": [d for d in report.duplicates if "key" in d],
        "work item on two live invoices": [d for d in report.duplicates if "work_item" in d],
        "work item not billed yet": report.unbilled,
        "changed at the source after billing": report.changed_after_billing,
        "deleted at the source after billing": report.deleted_after_billing,
    }
    found = sum(len(v) for v in kinds.values())
    lines = [f"## Reconcile differences: {found}\n"]
    if not found:
        return [*lines, f"_none: {plural(len(report.invoices), 'posted invoice')} agree with the ERP to the cent_\n"]
    rows = [[kind, len(items)] for kind, items in kinds.items() if items]
    lines.append(_table(["difference", "count"], [*rows, ["**total**", f"**{found}**"]], right={1}))
    if report.mismatches:
        lines.append(_table(
            ["invoice", "draft", "currency", *(f"{name} (ours / ERP)" for name, _ in MONEY)],
            [[m["erp_number"] or "", f"`{m['key']}`", m["currency"],
              *(f"{_amount(m[f], m['currency'])} / {_erp_amount(m['erp_' + f], m['currency'])}" for _, f in MONEY)]
             for m in report.mismatches], right={3, 4, 5},
        ))  # fmt: skip
    return lines


def _invoices_table(invoices: list[dict[str, Any]], before: list[Column], after: Sequence[Column] = ()) -> str:
    """One row per invoice (by currency, then key) with its untaxed, tax and total, and a total row per
    currency summing the amounts shown."""
    header = [name for name, _ in before] + ["currency", *(name for name, _ in MONEY)] + [name for name, _ in after]
    money = {len(before) + 1 + n for n in range(len(MONEY))}
    rows: list[list[object]] = []
    for currency in sorted({i["currency"] for i in invoices}):
        these = sorted((i for i in invoices if i["currency"] == currency), key=lambda i: i["key"])
        rows += [[*(show(i) for _, show in before), currency, *(_amount(i[f], currency) for _, f in MONEY),
                  *(show(i) for _, show in after)] for i in these]  # fmt: skip
        totals = [f"**{_amount(sum(i[f] for i in these), currency)}**" for _, f in MONEY]
        rows.append([f"**total {currency}** ({plural(len(these), 'invoice')})", *[""] * (len(before) - 1),
                     currency, *totals, *[""] * len(after)])  # fmt: skip
    return _table(header, rows, right=money)


def _count_table(what: str, values: list[str]) -> str:
    """How many of each value (most first), and their total."""
    counted = Counter(values).most_common()
    rows: list[list[object]] = [[value, n] for value, n in sorted(counted, key=lambda c: (-c[1], c[0]))]
    return _table([what, "work items"], [*rows, ["**total**", f"**{len(values)}**"]] if rows else [], right={1})


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], right: set[int] | None = None) -> str:
    if not rows:
        return "_none_\n"
    align = ["---:" if n in (right or set()) else "---" for n in range(len(header))]
    lines = [header, align, *([_cell(c) for c in row] for row in rows)]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines) + "\n"


def _cell(value: object) -> str:
    """A value as one table cell: on one line, its pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _amount(minor: int, currency: str) -> str:
    return str(to_decimal(minor, currency))  # exact: 2093301 EUR → 20933.01


def _erp_amount(minor: int | None, currency: str) -> str:
    return "—" if minor is None else _amount(minor, currency)


def _written_back(result: dict[str, Any]) -> str:
    failed = result.get("failed") or {}
    return (f"wrote {plural(int(result.get('written', 0)), 'invoice number')} back to the source"
            + (f"; {len(failed)} failed (retried next run): {failed}" if failed else ""))  # fmt: skip


def _reconciled(report: ReconcileReport) -> str:
    agree = len(report.invoices) - len(report.mismatches)
    return (f"{agree} of {plural(len(report.invoices), 'posted invoice')} agree with the ERP to the cent; "
            f"{len(report.mismatches)} mismatched, {len(report.duplicates)} duplicated, "
            f"{len(report.unbilled)} work items not billed yet (awaiting approval or posting)")  # fmt: skip


write_back = stage(write_back_to_source, name="write-back", says=_written_back, retries=2, retry_delay_seconds=10)
reconcile = stage(reconcile_period, name="reconcile", says=_reconciled, retries=2)
