"""The ledger on SQLite: what a rerun sees, drafts that keep or lose their approval, the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DatabaseError

from billing.ledger import Ledger, WorkState
from billing.ledger.store import MIGRATIONS
from billing.models import ApprovalDecision, ChargeLine, DraftState, InvoiceDraft, PostingReceipt


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        yield Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        return
    # One database per test on the session's PostgreSQL cluster.
    base = request.getfixturevalue("postgres_url")
    name = f"t{uuid.uuid4().hex[:12]}"
    with create_engine(base, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield Ledger(base.rsplit("/", 1)[0] + f"/{name}")


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
    ledger.save_drafts("2026-10", [draft("A")], actor="t")
    assert ledger.draft_states([d.key]) == {d.key: DraftState.APPROVED}

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
