"""The ledger on SQLite: what a rerun sees, drafts that keep or lose their approval, the audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from billing.ledger import Ledger, WorkState
from billing.ledger.store import MIGRATIONS, ClaimConflict
from billing.models import ApprovalDecision, ChargeLine, DraftState, InvoiceDraft, PostingReceipt


def test_migrations_match_the_models(ledger: Ledger) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with ledger.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.check(config)  # raises when the models and the migrations disagree


def items(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame([
        {"key": f"files:x:worklog:{sid}", "source_system": "files", "instance": "x", "object_type": "worklog",
         "source_id": sid, "customer_id": "ACME", "period": "2026-10", "content_hash": content}
        for sid, content in pairs
    ])  # fmt: skip


def draft(*source_ids: str, amount: int = 1000, version: int = 1) -> InvoiceDraft:
    lines = tuple(
        ChargeLine(work_item_keys=(f"files:x:worklog:{sid}",), source_id=sid, customer_id="ACME", period="2026-10",
                   currency="EUR", service_type="remote_support", description=sid, quantity_raw=Decimal("1"),
                   quantity_billed=Decimal("1.00"), unit_price_minor=amount, amount_minor=amount)
        for sid in source_ids
    )  # fmt: skip
    return InvoiceDraft(customer_id="ACME", period="2026-10", currency="EUR", version=version, lines=lines)


def approve(ledger: Ledger, d: InvoiceDraft, who: str = "ann") -> None:
    ledger.record_decisions([ApprovalDecision(draft_key=d.key, approved=True, approver=who,
                                              decided_at=datetime.now(UTC))])  # fmt: skip


def post(ledger: Ledger, d: InvoiceDraft, number: str = "INV-1") -> None:
    ledger.record_postings([PostingReceipt(draft_key=d.key, erp="files", erp_id=number, erp_number=number,
                                           total_minor=d.total_minor, currency="EUR",
                                           posted_at=datetime.now(UTC))], actor="test")  # fmt: skip


def test_a_rerun_processes_only_what_is_not_billed(ledger: Ledger) -> None:
    seen = ledger.register(items(("A", "h1"), ("B", "h1")), actor="t")
    assert seen["process"].all() and seen["prior_state"].isna().all()
    d = draft("A")
    ledger.save_drafts("2026-10", [d], actor="t")
    approve(ledger, d)
    post(ledger, d)

    again = ledger.register(items(("A", "h1"), ("B", "h1"), ("C", "h1")), actor="t").set_index("source_id")
    assert again["process"].to_dict() == {"A": False, "B": True, "C": True}
    assert again.loc["A", "prior_state"] == WorkState.POSTED
    assert ledger.counts("2026-10") == {"billed": 1, "non_billable": 0, "quarantined": 0, "pending_approval": 2,
                                        "pending_posting": 0, "held": 0}  # fmt: skip


def test_an_edit_after_billing_is_flagged_not_billed_again(ledger: Ledger) -> None:
    ledger.register(items(("A", "h1")), actor="t")
    d = draft("A")
    ledger.save_drafts("2026-10", [d], actor="t")
    approve(ledger, d)
    post(ledger, d)
    seen = ledger.register(items(("A", "h2")), actor="t")
    assert not seen["process"].any() and seen["changed_after_billing"].all()
    row = ledger.work_items("2026-10").iloc[0]
    assert row["state"] == WorkState.POSTED and row["billed_hash"] == "h1" and row["details"]["changed_after_billing"]
    assert [e.action for e in ledger.audit_log("files:x:worklog:A")][-1] == "changed_after_billing"


def test_an_unchanged_draft_keeps_its_approval_and_a_changed_one_loses_it(ledger: Ledger) -> None:
    ledger.register(items(("A", "h"), ("B", "h")), actor="t")
    d = draft("A")
    ledger.save_drafts("2026-10", [d], actor="t")
    approve(ledger, d)
    # A rerun: extracted again, priced again, the same draft made again: the draft and its work keep the approval.
    ledger.register(items(("A", "h"), ("B", "h")), actor="rerun")
    ledger.set_state(["files:x:worklog:A"], WorkState.PRICED, actor="rerun")
    ledger.save_drafts("2026-10", [draft("A")], actor="t")
    assert ledger.draft_states([d.key]) == {d.key: DraftState.APPROVED}
    assert ledger.work_items("2026-10").set_index("source_id")["state"]["A"] == WorkState.APPROVED

    changed = draft("A", "B")
    ledger.save_drafts("2026-10", [changed], actor="t")
    assert ledger.draft_states([d.key]) == {d.key: DraftState.DRAFTED}
    assert ledger.drafts("2026-10")[0].total_minor == 2000
    states = ledger.work_items("2026-10").set_index("source_id")["state"].to_dict()
    assert states == {"A": WorkState.DRAFTED, "B": WorkState.DRAFTED}


def test_posting_twice_records_one_posting(ledger: Ledger) -> None:
    ledger.register(items(("A", "h")), actor="t")
    d = draft("A")
    ledger.save_drafts("2026-10", [d], actor="t")
    approve(ledger, d)
    post(ledger, d)
    post(ledger, d)
    assert [p.erp_number for p in ledger.postings("2026-10")] == ["INV-1"]
    assert ledger.posted_versions("2026-10") == {("ACME", "default", "EUR"): 1}


def test_the_audit_log_is_append_only(ledger: Ledger) -> None:
    ledger.register(items(("A", "h")), actor="t")
    assert [e.action for e in ledger.audit_log()] == ["extracted"]
    with ledger.engine.begin() as connection, pytest.raises(DatabaseError, match="append-only"):
        connection.execute(text("UPDATE audit_log SET actor = 'mallory'"))
    with ledger.engine.begin() as connection, pytest.raises(DatabaseError, match="append-only"):
        connection.execute(text("DELETE FROM audit_log"))
    assert [e.actor for e in ledger.audit_log()] == ["t"]


def test_a_draft_never_claims_work_another_invoice_bills(ledger: Ledger) -> None:
    """The overlap that used to bill twice: run A posted v1 while run B, which extracted before that, drafts
    everything again as v2. B's draft is refused whole, in the transaction that would have saved it."""
    ledger.register(items(("A", "h"), ("B", "h")), actor="t")
    first = draft("A")
    ledger.save_drafts("2026-10", [first], actor="run-a")
    approve(ledger, first)
    post(ledger, first)

    with pytest.raises(ClaimConflict, match="1 work item") as refused:
        ledger.save_drafts("2026-10", [draft("A", "B", version=2)], actor="run-b")
    assert refused.value.held == [("files:x:worklog:A", first.key, WorkState.POSTED.value)]
    assert [d.key for d in ledger.drafts("2026-10")] == [first.key]  # nothing of run B's was saved
    rows = ledger.work_items("2026-10").set_index("source_id")
    assert rows["state"].to_dict() == {"A": WorkState.POSTED, "B": WorkState.EXTRACTED}
    assert pd.isna(rows.loc["B", "line_id"])


def test_two_drafts_of_one_save_cannot_share_a_work_item(ledger: Ledger) -> None:
    ledger.register(items(("A", "h")), actor="t")
    eur = draft("A")
    usd = InvoiceDraft(customer_id="ACME", period="2026-10", currency="USD", version=1,
                       lines=tuple(line.model_copy(update={"currency": "USD"}) for line in eur.lines))  # fmt: skip
    ledger.save_drafts("2026-10", [eur], actor="run-a")
    # Another run's draft of another key that bills A, while A's first draft is still unposted and kept:
    with pytest.raises(ClaimConflict):
        ledger.save_drafts("2026-10", [eur, usd], actor="run-b")
    assert ledger.draft_states([eur.key, usd.key]) == {eur.key: DraftState.DRAFTED}


def test_a_rerun_replaces_its_own_unposted_draft_and_reclaims_the_work(ledger: Ledger) -> None:
    ledger.register(items(("A", "h"), ("B", "h")), actor="t")
    ledger.save_drafts("2026-10", [draft("A")], actor="t")
    ledger.save_drafts("2026-10", [draft("A", "B")], actor="t")  # late work: the unposted draft grows
    assert ledger.drafts("2026-10")[0].total_minor == 2000
    assert ledger.work_items("2026-10")["line_id"].notna().all()


def test_billed_is_final_whatever_a_slower_run_does_later(ledger: Ledger) -> None:
    """A run that read the items before another posted them must not move them back (it used to price them
    again, so the next run drafted them again)."""
    ledger.register(items(("A", "h"), ("B", "h")), actor="t")
    first = draft("A")
    ledger.save_drafts("2026-10", [first], actor="run-a")
    approve(ledger, first)
    post(ledger, first)
    ledger.set_state(["files:x:worklog:A", "files:x:worklog:B"], WorkState.PRICED, actor="run-b")
    approve(ledger, first, who="run-b")  # a late decision on a posted draft changes nothing either
    states = ledger.work_items("2026-10").set_index("source_id")["state"].to_dict()
    assert states == {"A": WorkState.POSTED, "B": WorkState.PRICED}
    assert ledger.draft_states([first.key]) == {first.key: DraftState.POSTED}


def test_approving_posting_and_reconciling_many_drafts_writes_drafts_not_work_items(ledger: Ledger) -> None:
    """Sixty drafts: deciding, posting and reconciling them write a statement per chunk of drafts and none to
    ``work_items`` (a million at a large provider's month); each item's state is its draft's."""
    from sqlalchemy import event

    ids = [f"W{n:03d}" for n in range(60)]
    ledger.register(items(*((sid, "h") for sid in ids)), actor="t")
    drafts = [draft(sid).model_copy(update={"customer_id": f"C-{sid}"}) for sid in ids]  # one invoice each
    ledger.save_drafts("2026-10", drafts, actor="t")
    statements: list[str] = []

    def capture(_conn, _cursor, statement, _parameters, _context, _executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement.split()[1].strip('"').lower())

    decisions = [ApprovalDecision(draft_key=d.key, approved=n % 3 != 0, approver="ann", decided_at=datetime.now(UTC))
                 for n, d in enumerate(drafts)]  # fmt: skip
    receipts = [PostingReceipt(draft_key=d.key, erp="files", erp_id=f"INV-{n}", erp_number=f"INV-{n}",
                               total_minor=d.total_minor, currency="EUR", posted_at=datetime.now(UTC))
                for n, d in enumerate(drafts) if n % 3 != 0]  # fmt: skip
    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        ledger.record_decisions(decisions)
        ledger.record_postings(receipts, actor="test")
        ledger.mark_reconciled([r.draft_key for r in receipts[:10]], actor="test")
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)
    assert statements == ["invoice_drafts"] * 4  # approved, rejected; posted; reconciled
    states = ledger.work_items("2026-10").set_index("source_id")["state"]
    posted = [sid for n, sid in enumerate(ids) if n % 3 != 0]
    assert set(states[states == WorkState.RECONCILED.value].index) == set(posted[:10])
    assert set(states[states == WorkState.POSTED.value].index) == set(posted[10:])
    assert set(states[states == WorkState.DRAFTED.value].index) == set(ids[::3])  # rejected: awaiting a decision
    counts = ledger.counts("2026-10")
    assert (counts["billed"], counts["pending_approval"], sum(counts.values())) == (40, 20, 60)
    assert ledger.billed_keys(f"files:x:worklog:{sid}" for sid in ids[:3]) == {"files:x:worklog:W001",
                                                                                 "files:x:worklog:W002"}  # fmt: skip
    with ledger.engine.connect() as connection:  # the view says the same, for a person querying the ledger
        view = dict(connection.execute(text("SELECT source_id, state FROM work_item_states")).tuples().all())
    assert view == states.to_dict()


def test_state_changes_are_audited_in_batches_and_found_per_item(ledger: Ledger) -> None:
    """A period's items cost a few audit rows, not one per item and state; each item's history is still found."""
    odd = 'files:x:worklog:50%_off"q\\'  # LIKE's and JSON's special characters in a key
    keys = [f"files:x:worklog:W{n:05d}" for n in range(25_000)] + [odd]
    frame = pd.DataFrame({"key": keys, "source_system": "files", "instance": "x", "object_type": "worklog",
                          "source_id": [k.rsplit(":", 1)[1] for k in keys], "customer_id": "ACME",
                          "period": "2026-10", "content_hash": "h"})  # fmt: skip
    ledger.register(frame, actor="extract")
    ledger.set_state(keys[:20_000], WorkState.PRICED, actor="price")
    ledger.set_state(keys[20_000:], WorkState.NON_BILLABLE, actor="price", reasons=["internal"] * 5_001)
    entries = ledger.audit_log()
    # extracted: 3 entries of at most 10,000 keys; priced: 2; non-billable (one reason): 1
    assert [(e.action, len(e.detail["keys"])) for e in entries] == [
        ("extracted", 10_000), ("extracted", 10_000), ("extracted", 5_001), ("priced", 10_000), ("priced", 10_000),
        ("non_billable", 5_001),
    ]  # fmt: skip
    assert entries[-1].detail["reason"] == "internal"
    assert [e.action for e in ledger.audit_log("files:x:worklog:W00007")] == ["extracted", "priced"]
    assert [e.action for e in ledger.audit_log(odd)] == ["extracted", "non_billable"]
    assert ledger.audit_log("files:x:worklog:W0000") == []  # a prefix of keys names no item
    states = ledger.work_items("2026-10").set_index("key")["state"]
    assert (states[keys[:20_000]] == "priced").all() and (states[keys[20_000:]] == "non_billable").all()


def test_a_line_billing_several_items_claims_them_all_and_reads_back_alike(ledger: Ledger) -> None:
    """Lines go in by the database's bulk path (executemany on SQLite, COPY on PostgreSQL): a line that rounds
    several work logs together keeps every key, and each item points at it."""
    ledger.register(items(("A", "h"), ("B", "h"), ("C", "h")), actor="t")
    together = ChargeLine(
        work_item_keys=("files:x:worklog:A", "files:x:worklog:B"), source_id="A, B", customer_id="ACME",
        period="2026-10", currency="EUR", service_type="remote_support", description="A and B · 50% \\ \"ü\"",
        quantity_raw=Decimal("0.5000"), quantity_billed=Decimal("0.50"), unit_price_minor=9500, amount_minor=4750,
    )  # fmt: skip
    d = InvoiceDraft(customer_id="ACME", period="2026-10", currency="EUR", version=1,
                     lines=(together, *draft("C").lines))  # fmt: skip
    ledger.save_drafts("2026-10", [d], actor="t")
    (back,) = ledger.drafts("2026-10")
    assert [(li.work_item_keys, li.description, li.quantity_billed, li.amount_minor) for li in back.lines] == [
        (("files:x:worklog:A", "files:x:worklog:B"), 'A and B · 50% \\ "ü"', Decimal("0.50"), 4750),
        (("files:x:worklog:C",), "C", Decimal("1.00"), 1000),
    ]
    states = ledger.work_items("2026-10").set_index("key")
    assert (states["state"] == "drafted").all() and states["line_id"].notna().all()
    assert states.at["files:x:worklog:A", "line_id"] == states.at["files:x:worklog:B", "line_id"]
    assert back.total_minor == 5750 and ledger.draft_headers("2026-10")["line_count"].tolist() == [2]


def test_an_approved_draft_of_a_revision_0005_ledger_keeps_its_approval_after_the_upgrade(tmp_path: Path) -> None:
    """Drafts saved before 0007 kept a JSON document per draft and a trace per line; the upgrade writes their
    columns from them and recomputes their content hashes, so the same draft made again keeps its approval."""
    from sqlalchemy import column, create_engine, insert, table

    from rules.engine import price
    from tasks.price import group_drafts
    from tests.test_engine import CUSTOMERS
    from tests.test_retainers import WORK, batch, prepaid_rules

    rules = prepaid_rules(overage_rate={"EUR": "130.00"})
    (old,) = group_drafts(batch(WORK), price(WORK, CUSTOMERS, rules).lines, rules, {})
    assert {len(line.trace) > 0 for line in old.lines} == {True} and len(old.lines) == 4  # drawn, overage ...
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        now = datetime.now(UTC)
        connection.execute(insert(table("invoice_drafts", *map(column, (
            "key", "customer_id", "agreement_id", "period", "currency", "version", "total_minor", "state",
            "document", "created_at", "updated_at")))), [{  # as 0005's save_drafts wrote them
            "key": old.key, "customer_id": old.customer_id, "agreement_id": old.agreement_id, "period": old.period,
            "currency": old.currency, "version": old.version, "total_minor": old.total_minor, "state": "approved",
            "document": json.dumps(old.model_dump(mode="json") | {"_hash": "0" * 64}), "created_at": now,
            "updated_at": now}])  # fmt: skip
        connection.execute(insert(table("invoice_lines", *map(column, (
            "id", "draft_key", "line_no", "work_item_key", "description", "quantity_raw", "quantity_billed",
            "unit_price_minor", "amount_minor", "trace")))), [{
            "id": no, "draft_key": old.key, "line_no": no, "work_item_key": line.work_item_keys[0],
            "description": line.description, "quantity_raw": str(line.quantity_raw),
            "quantity_billed": str(line.quantity_billed), "unit_price_minor": line.unit_price_minor,
            "amount_minor": line.amount_minor, "trace": json.dumps(line.trace)}
            for no, line in enumerate(old.lines, start=1)])  # fmt: skip
        first_line = {k: no for no, line in reversed(list(enumerate(old.lines, start=1))) for k in line.work_item_keys}
        connection.execute(insert(table("work_items", *map(column, (
            "key", "source_system", "instance", "object_type", "source_id", "customer_id", "period", "state",
            "content_hash", "line_id", "first_seen_at", "updated_at")))), [{
            "key": k, "source_system": "test", "instance": "t", "object_type": "worklog", "source_id": k,
            "customer_id": "GLOBEX", "period": "2026-10", "state": "approved", "content_hash": "h", "line_id": no,
            "first_seen_at": now, "updated_at": now} for k, no in first_line.items()])  # fmt: skip
    engine.dispose()

    ledger = Ledger(url)  # opening it upgrades it to head
    (read,) = ledger.drafts("2026-10", rules=rules)
    assert read.model_dump() == old.model_dump()  # every line's columns and explanation from the document
    ledger.save_drafts("2026-10", [old], actor="rerun")
    assert ledger.draft_states([old.key]) == {old.key: DraftState.APPROVED}
    changed = old.model_copy(update={"lines": old.lines[:-1]})  # a draft that is not the same loses it
    ledger.save_drafts("2026-10", [changed], actor="rerun")
    assert ledger.draft_states([changed.key]) == {changed.key: DraftState.DRAFTED}
