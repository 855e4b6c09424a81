"""The ledger's operations, in batches: one statement per stage, not one per work item."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Text,
    Update,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from billing.draft_book import HEADER_COLUMNS, LINE_COLUMNS, DraftBook, book_of, content_hashes
from billing.errors import UserFacingError
from billing.ledger.bulk import insert_rows
from billing.ledger.locks import Lease, abandoned, hold, remove
from billing.ledger.schema import (
    BILLED_STATES,
    COUNT_OF_STATE,
    DRAFT_ITEM_STATE,
    Approval,
    AuditEntry,
    ErpMapping,
    EventDelivery,
    InvoiceDraftRow,
    InvoiceLineRow,
    Posting,
    RunLock,
    SourceCursor,
    WorkItem,
    WorkState,
    utcnow,
)
from billing.models import ApprovalDecision, DraftState, InvoiceDraft, PostingReceipt
from rules.schema import RuleSet

MIGRATIONS = Path(__file__).with_name("migrations")
CHUNK = 500  # keys per IN (...) clause: SQLite allows 32k parameters, PostgreSQL 65k
SQLITE_CACHE_KB = 262_144  # a connection's page cache at most (256 MB), allocated as pages are read
BIG_CHUNK = 5_000  # keys per IN (...) of a statement over many items: fewer statements to compile and run
DRAFTED_FROM = "drafted:{period}"  # the source cursor naming what a period's drafts were made from (a fingerprint)
AUDIT_BATCH = 10_000  # work item keys per audit entry of a batch
BATCH = "(batch)"  # the entity_key of an audit entry about many items, whose keys are in its detail
# The line contract's columns a line's row holds (its draft's row holds customer, agreement, period, currency).
LINE_STORED: tuple[str, ...] = tuple(
    c for c in LINE_COLUMNS if c not in ("work_item_keys", "customer_id", "agreement_id", "period", "currency")
)
UNPOSTED_DRAFT_STATES = (DraftState.DRAFTED, DraftState.APPROVED, DraftState.REJECTED)
DRAFT_HEADER_COLUMNS: tuple[str, ...] = (
    "key", "customer_id", "customer_name", "agreement_id", "period", "currency", "version", "state", "total_minor",
    "tax_minor", "gross_minor", "tax_by", "line_count", "content_hash", "rules_hash", "created_at",
)  # fmt: skip


def _on_posted_draft() -> ColumnElement[bool]:
    """The work item's draft is posted: a look-up of its draft by primary key, so it works per row of an
    executemany too (an IN over every posted draft would be read again for each row)."""
    posted = InvoiceDraftRow.key == WorkItem.draft_key, InvoiceDraftRow.state == DraftState.POSTED.value
    return and_(WorkItem.draft_key.is_not(None), exists().where(*posted))


def _unbilled_only(statement: Update) -> Update:
    """Billed is final: no later stage of any run changes a work item a posted draft holds (another run of the
    period may have posted it since this one read it)."""
    return statement.where(~_on_posted_draft()).execution_options(synchronize_session=None)


def _state_column() -> ColumnElement[str]:
    """A work item's state (``WorkState``): its own until a draft holds it, then its draft's (``DRAFT_ITEM_STATE``).
    For a query of ``work_items`` outer-joined to ``invoice_drafts`` on ``draft_key`` (``_with_drafts``)."""
    draft = InvoiceDraftRow
    by_draft = [(and_(draft.state == state, draft.reconciled_at.is_not(None) if reconciled
                      else draft.reconciled_at.is_(None)), item.value)
                for (state, reconciled), item in DRAFT_ITEM_STATE.items()]  # fmt: skip
    return case((draft.key.is_(None), WorkItem.state), *by_draft, else_=WorkState.DRAFTED.value)


def _with_drafts(query: Select[Any]) -> Select[Any]:
    return query.select_from(WorkItem).outerjoin(InvoiceDraftRow, InvoiceDraftRow.key == WorkItem.draft_key)


def _item_states(stored: pd.Series, draft_keys: pd.Series, drafts: dict[str, tuple[str, bool]]) -> pd.Series:
    """Each item's state from its own (``stored``) and its draft's (``drafts``: key → state, reconciled)."""
    of_draft = {key: DRAFT_ITEM_STATE[(state, reconciled)].value for key, (state, reconciled) in drafts.items()}
    return draft_keys.map(of_draft).fillna(stored) if len(of_draft) else stored


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@cache
def head_revision() -> str | None:
    """The newest revision of the ledger's migrations (read from their files once per process)."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def at_head(engine: Engine) -> bool:
    """Whether the ledger's schema is already the newest: one query, where an upgrade to head that finds nothing
    to do still loads Alembic's environment and takes the writer's lock (~50 ms of every run)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    except SQLAlchemyError:  # no version table yet: a new ledger
        return False


def migrate(engine: Engine) -> None:
    """Bring the ledger's schema to the newest Alembic revision, all of it in one transaction: a process killed
    half-way leaves the ledger as it was, and two processes opening a new ledger at once take turns (an
    immediate transaction on SQLite, an advisory lock on PostgreSQL): the second finds it done."""
    cfg = _alembic_config()
    if engine.dialect.name == "sqlite":
        engine = _transactional_sqlite(engine.url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(7210442)"))  # any constant of our own
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def _transactional_sqlite(url: URL) -> Engine:
    """An engine whose transactions are SQLite's own (``BEGIN IMMEDIATE`` … ``COMMIT``), DDL included: Python's
    sqlite3 commits each CREATE TABLE by itself otherwise, and a kill between two left tables without a schema
    version that no later run could migrate."""
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _own_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver issues no BEGIN of its own
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # the writer's lock at once: a second migrator waits here

    return engine


@cache
def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # SQLite's default page cache (2 MB) makes a large period's index updates read pages from disk again
            # and again: a million lines inserted took 28 s. Memory, not durability: the journal is as before.
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KB}")
            cursor.close()

    if not at_head(engine):
        migrate(engine)
    return engine


class ClaimConflict(UserFacingError):
    """Work items a new draft needs are held by another draft or already billed: another run of the period
    got there first. Nothing of this run's drafts was saved; a rerun bills what is left."""

    exit_code = 1

    def __init__(self, held: Sequence[tuple[str, str | None, str]], missing: int = 0) -> None:
        self.held = list(held)
        examples = ", ".join(f"{key} ({draft or state})" for key, draft, state in self.held[:3])
        gone = f"; {missing} not in the ledger" if missing else ""
        super().__init__(
            f"{len(self.held)} work item(s) are already on another invoice draft or billed ({examples}){gone}: "
            "another run of this period got there first. Nothing was drafted twice.",
            hint="run again: the rerun bills only what is left",
        )


def _column(values: pd.Series) -> list[Any]:
    """A column's values as Python's own, missing ones as None (whole-number and boolean columns have none)."""
    if values.dtype.kind in "iub":
        return values.tolist()
    missing = values.isna().to_numpy()
    if not missing.any():
        return values.tolist()
    return values.astype(object).where(~missing, None).tolist()


def _item_keys_of(session: Session, draft_keys: Sequence[str]) -> list[str]:
    """The work items the lines of these drafts bill."""
    keys: list[str] = []
    for first, more in session.execute(select(InvoiceLineRow.work_item_key, InvoiceLineRow.more_item_keys)
                                       .where(InvoiceLineRow.draft_key.in_(draft_keys))):  # fmt: skip
        keys += [first, *(more or ())] if first else []
    return keys


class Ledger:
    """What happened to every work item, draft and posting. Opening it migrates the schema."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    def lock(self, name: str, purpose: str, wait: bool = True, timeout: float = 3600.0,
             say: Callable[[str], None] = print) -> AbstractContextManager[Lease]:  # fmt: skip
        """Hold ``name`` while the block runs; another holder makes this wait (or raise ``RunInProgress``)."""
        return hold(self.engine, name, purpose, wait=wait, timeout=timeout, say=say)

    def abandoned_leases(self, prefix: str) -> list[RunLock]:
        """Leases named ``prefix…`` whose process died (kill -9, a reboot) without releasing them."""
        return abandoned(self.engine, prefix)

    def remove_lease(self, lease: RunLock) -> None:
        """Delete an abandoned lease once what it stood for is cleaned up."""
        remove(self.engine, lease)

    # -- audit -----------------------------------------------------------------------------------

    @staticmethod
    def _audit(session: Session, actor: str, action: str, entity: str, rows: Iterable[tuple[str, Any]]) -> None:
        entries = [
            {
                "actor": actor,
                "action": action,
                "entity": entity,
                "entity_key": key,
                "detail": detail,
                "at": utcnow(),
            }
            for key, detail in rows
        ]
        if entries:
            session.execute(insert(AuditEntry), entries)

    @staticmethod
    def _audit_batch(session: Session, actor: str, action: str, entity: str, keys: Sequence[str],
                     detail: dict[str, Any] | None = None) -> None:  # fmt: skip
        """One entry per ``AUDIT_BATCH`` keys, the keys in its detail (``entity_key`` is ``BATCH``): what happened
        to a period's items costs a few rows, and ``audit_log(key)`` still finds each item's."""
        now = utcnow()
        entries = [{"actor": actor, "action": action, "entity": entity, "entity_key": BATCH, "at": now,
                    "detail": (detail or {}) | {"keys": list(chunk)}}
                   for chunk in _chunks(keys, AUDIT_BATCH)]  # fmt: skip
        if entries:
            session.execute(insert(AuditEntry.__table__), entries)

    def audit_log(self, entity_key: str | None = None) -> list[AuditEntry]:
        """Every entry, or those about ``entity_key``: its own and the batches naming it."""
        with Session(self.engine) as session:
            query = select(AuditEntry).order_by(AuditEntry.id)
            if entity_key is not None:
                named = "%" + re.sub(r"([\\%_])", r"\\\1", json.dumps(entity_key)) + "%"  # as the JSON says it
                as_text = sql_cast(AuditEntry.detail, Text)
                in_batch = and_(AuditEntry.entity_key == BATCH, as_text.like(named, escape="\\"))
                query = query.where(or_(AuditEntry.entity_key == entity_key, in_batch))
            return list(session.scalars(query))

    # -- work items ------------------------------------------------------------------------------

    @staticmethod
    def _draft_states(session: Session | Connection, draft_keys: Sequence[str]) -> dict[str, tuple[str, bool]]:
        """Each of these drafts' state and whether it was reconciled: what its work items' states are."""
        found: dict[str, tuple[str, bool]] = {}
        for chunk in _chunks(draft_keys):
            rows = session.execute(select(InvoiceDraftRow.key, InvoiceDraftRow.state, InvoiceDraftRow.reconciled_at)
                                   .where(InvoiceDraftRow.key.in_(chunk)))  # fmt: skip
            found.update({key: (state, reconciled is not None) for key, state, reconciled in rows})
        return found

    def register(self, items: pd.DataFrame, actor: str) -> pd.DataFrame:
        """Record extracted work items; answer which of them this run must process.

        ``items`` has columns ``key, source_system, instance, object_type, source_id, customer_id, period,
        content_hash``. Returned: the same rows plus ``prior_state`` (None when new) and ``process``:
        False for items already billed. An item billed earlier whose content has changed since is not billed
        again; it is flagged ``changed_after_billing`` for reconcile to report.
        """
        keys = items["key"].tolist()
        with self.session() as session:
            rows = [row for chunk in _chunks(keys) for row in session.execute(
                select(WorkItem.key, WorkItem.state, WorkItem.draft_key, WorkItem.billed_hash)
                .where(WorkItem.key.in_(chunk)))]  # fmt: skip
            known = pd.DataFrame(rows, columns=["key", "state", "draft_key", "billed_hash"])
            drafts = self._draft_states(session, known["draft_key"].dropna().unique().tolist())
            known["state"] = _item_states(known["state"], known["draft_key"], drafts)
            known = known.set_index("key")

            prior_state = items["key"].map(known["state"])  # an index map: a hash lookup by column, NaN when new
            billed = prior_state.isin([s.value for s in BILLED_STATES])
            billed_hash = items["key"].map(known["billed_hash"])
            changed_after_billing = billed & (billed_hash != items["content_hash"])
            on_draft = items["key"].map(known["draft_key"]).notna()

            new = items[prior_state.isna()]
            if len(new):
                now = utcnow()
                names = ["key", "source_system", "instance", "object_type", "source_id", "customer_id", "period",
                         "content_hash", *(["ticket_id"] if "ticket_id" in new else [])]  # fmt: skip
                columns = {name: _column(new[name]) for name in names}
                columns |= {"state": [WorkState.EXTRACTED.value] * len(new), "first_seen_at": [now] * len(new),
                            "updated_at": [now] * len(new)}  # fmt: skip
                insert_rows(session, WorkItem.__table__, columns)
                self._audit_batch(session, actor, "extracted", "work_item", columns["key"])

            # Known, not yet billed: take the newest content and start over from "extracted". One an unposted draft
            # holds stays on it (its state is the draft's) until this run's drafts replace or keep that draft: a
            # kept draft bills it as it is now, so its billed content is the new one.
            again = prior_state.notna() & ~billed
            if again.any():
                now = utcnow()
                session.execute(
                    _unbilled_only(update(WorkItem)),
                    [{"key": key, "content_hash": content, "customer_id": customer, "period": period,
                      "billed_hash": content if held else None, "state": WorkState.EXTRACTED.value, "reason": None,
                      "details": None, "updated_at": now}
                     for key, content, customer, period, held in zip(
                        items["key"][again], items["content_hash"][again], _column(items["customer_id"][again]),
                        items["period"][again], on_draft[again], strict=True)],
                )  # fmt: skip
            changed = items[changed_after_billing]
            if len(changed):
                session.execute(
                    update(WorkItem),
                    [
                        {
                            "key": r.key,
                            "content_hash": r.content_hash,
                            "details": {"changed_after_billing": True},
                            "updated_at": utcnow(),
                        }
                        for r in changed.itertuples()
                    ],
                )
                self._audit(
                    session,
                    actor,
                    "changed_after_billing",
                    "work_item",
                    ((r.key, {"content_hash": r.content_hash}) for r in changed.itertuples()),
                )

        result = items.copy()
        result["prior_state"] = prior_state
        result["process"] = ~billed
        result["changed_after_billing"] = changed_after_billing
        return result

    def set_state(
        self,
        keys: Sequence[str],
        state: WorkState,
        actor: str,
        reasons: Sequence[str | None] | None = None,
        details: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Move work items to ``state`` (each with its reason and details), unless billed meanwhile. Items alike
        (one reason, no details) move by a statement per chunk of keys and are audited in batches; items with
        details of their own (a quarantine's failed checks: few) row by row."""
        if not len(keys):
            return
        reasons = reasons if reasons is not None else [None] * len(keys)
        now = utcnow()
        with self.session() as session:
            if details is not None:
                session.execute(
                    _unbilled_only(update(WorkItem)),
                    [{"key": k, "state": state.value, "reason": r, "details": d, "updated_at": now}
                     for k, r, d in zip(keys, reasons, details, strict=True)],
                )  # fmt: skip
                pairs = zip(keys, reasons, strict=True)
                self._audit(session, actor, state.value, "work_item",
                            ((k, {"reason": r} if r else None) for k, r in pairs))  # fmt: skip
                return
            by_reason: dict[str | None, list[str]] = {}
            for key, reason in zip(keys, reasons, strict=True):
                by_reason.setdefault(reason, []).append(key)
            for reason, alike in by_reason.items():
                for chunk in _chunks(alike, BIG_CHUNK):
                    session.execute(
                        _unbilled_only(update(WorkItem))
                        .where(WorkItem.key.in_(chunk))
                        .values(state=state.value, reason=reason, details=None, updated_at=now)
                    )
                self._audit_batch(session, actor, state.value, "work_item", alike,
                                  {"reason": reason} if reason else None)  # fmt: skip

    def billed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of these work items are billed (posted or reconciled)."""
        keys = list(dict.fromkeys(keys))
        billed: set[str] = set()
        with Session(self.engine) as session:
            for chunk in _chunks(keys):
                billed.update(session.scalars(select(WorkItem.key).where(WorkItem.key.in_(chunk), _on_posted_draft())))
        return billed

    def count_items(self, period: str, source_system: str, object_types: Iterable[str]) -> int:
        """How many work items of these kinds the period has, whatever their state."""
        with Session(self.engine) as session:
            return int(session.scalar(
                select(func.count()).select_from(WorkItem)
                .where(WorkItem.period == period, WorkItem.source_system == source_system,
                       WorkItem.object_type.in_(list(object_types)))
            ) or 0)  # fmt: skip

    def items_in(self, period: str, states: Iterable[WorkState],
                 columns: Sequence[str] = ("key", "source_id", "reason")) -> pd.DataFrame:  # fmt: skip
        """The period's work items in these states, with only these columns, ordered by key."""
        query = _with_drafts(select(*(getattr(WorkItem, c) for c in columns))
                             .where(WorkItem.period == period, _state_column().in_([s.value for s in states]))
                             .order_by(WorkItem.key))  # fmt: skip
        with self.engine.connect() as connection:
            return pd.DataFrame(connection.execute(query).all(), columns=list(columns))

    def flagged_items(self, period: str, flag: str) -> list[str]:
        """Keys of the period's work items whose details carry ``flag`` (``changed_after_billing`` ...)."""
        query = select(WorkItem.key, WorkItem.details).where(WorkItem.period == period, WorkItem.details.is_not(None))
        with Session(self.engine) as session:
            return sorted(key for key, details in session.execute(query) if details and details.get(flag))

    def work_items(self, period: str | None = None) -> pd.DataFrame:
        """The work items (of ``period``) as stored, each with its state (its draft's, once a draft holds it)."""
        query = select(WorkItem.__table__)
        if period is not None:
            query = query.where(WorkItem.period == period)
        with self.engine.connect() as connection:
            items = pd.read_sql(query, connection)
            drafts = self._draft_states(connection, items["draft_key"].dropna().unique().tolist())
        items["state"] = _item_states(items["state"], items["draft_key"], drafts)
        return items

    # -- drafts ----------------------------------------------------------------------------------

    def posted_versions(self, period: str) -> dict[tuple[str, str, str], int]:
        """Highest posted version per (customer, agreement, currency) of a period."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    InvoiceDraftRow.customer_id,
                    InvoiceDraftRow.agreement_id,
                    InvoiceDraftRow.currency,
                    func.max(InvoiceDraftRow.version),
                )
                .where(InvoiceDraftRow.period == period, InvoiceDraftRow.state == DraftState.POSTED.value)
                .group_by(InvoiceDraftRow.customer_id, InvoiceDraftRow.agreement_id, InvoiceDraftRow.currency)
            )
            return {(c, a, cur): v for c, a, cur, v in rows}

    def save_drafts(
        self,
        period: str,
        drafts: DraftBook | Sequence[InvoiceDraft],
        actor: str,
        customers: Collection[str] | None = None,
        rules_hash: str | None = None,
        drafted_from: dict[str, Any] | None = None,
    ) -> None:
        """Make ``drafts`` the period's unposted drafts (of ``customers`` only, when given), in one transaction.
        ``drafted_from``: what they were made from (``{"fingerprint": …}``: ``drafted_from(period)`` answers it
        until the period's drafts change again); without it, the period's record of that is removed.

        A draft whose content is unchanged keeps its state (and so its approval); a changed one replaces
        the old and must be approved again; an unposted draft no longer produced is removed. ``rules_hash``: the
        rules file's hash, recorded on each new draft (an unchanged draft keeps its own). A new draft
        claims its work items in the same transaction: only items no other draft holds and that are not
        billed. Should any be held (another run of the period drafted or posted them meanwhile), nothing
        is saved and ``ClaimConflict`` says which: nothing is ever billed twice, even without the run lock.
        Drafts and lines are written in bulk, work items claimed by statements per chunk of drafts.
        """
        book = drafts if isinstance(drafts, DraftBook) else book_of(drafts)
        hashes = dict(zip(book.headers["key"], content_hashes(book), strict=True))
        unposted = [s.value for s in UNPOSTED_DRAFT_STATES]
        with self.session() as session:
            self._forget_drafted_from(session, period)
            if drafted_from is not None:
                session.add(SourceCursor(name=DRAFTED_FROM.format(period=period), cursor=drafted_from))
            existing = {
                key: content_hash
                for key, customer, content_hash in session.execute(
                    select(InvoiceDraftRow.key, InvoiceDraftRow.customer_id, InvoiceDraftRow.content_hash).where(
                        InvoiceDraftRow.period == period, InvoiceDraftRow.state.in_(unposted)
                    )
                )
                if customers is None or customer in customers
            }
            keep = {key for key, content_hash in existing.items() if hashes.get(key) == content_hash}
            stale = [k for k in existing if k not in keep]
            for chunk in _chunks(stale):  # only while still unposted: a draft posted meanwhile stays as it is
                still = select(InvoiceDraftRow.key).where(InvoiceDraftRow.key.in_(chunk),
                                                           InvoiceDraftRow.state.in_(unposted))  # fmt: skip
                freed = update(WorkItem).where(WorkItem.draft_key.in_(still))
                session.execute(freed.values(line_id=None, draft_key=None))
                session.execute(delete(InvoiceLineRow).where(InvoiceLineRow.draft_key.in_(still)))
                session.execute(delete(InvoiceDraftRow).where(InvoiceDraftRow.key.in_(still)))
            self._audit(session, actor, "draft_replaced", "invoice_draft", ((k, None) for k in stale))
            # Items on a kept draft stay on it, and their state is still its state (drafted or approved).
            new = book.headers[~book.headers["key"].isin(keep)]
            if len(new):
                self._insert_drafts(session, period, new, book.lines[book.lines["draft_key"].isin(set(new["key"]))],
                                    hashes, rules_hash, actor)  # fmt: skip

    def _insert_drafts(self, session: Session, period: str, headers: pd.DataFrame, lines: pd.DataFrame,
                       hashes: dict[str, str], rules_hash: str | None, actor: str) -> None:  # fmt: skip
        """The new drafts' rows and lines in bulk, then their work items claimed (``_claim``)."""
        keys = self._write_rows(session, period, headers, lines, hashes, rules_hash)
        self._claim(session, list(headers["key"]), len({k for line in keys for k in line}))
        totals = zip(headers["key"], headers["total_minor"], headers["line_count"], strict=True)
        self._audit(session, actor, "drafted", "invoice_draft",
                    [(k, {"total_minor": int(t), "lines": int(n)}) for k, t, n in totals])  # fmt: skip

    @staticmethod
    def _write_rows(session: Session, period: str, headers: pd.DataFrame, lines: pd.DataFrame,
                    hashes: dict[str, str], rules_hash: str | None) -> list[tuple[str, ...]]:  # fmt: skip
        """Insert the drafts' rows and their lines (``insert_rows``: executemany or COPY); the work items each line
        bills."""
        now = utcnow()
        names = [c for c in HEADER_COLUMNS if c != "line_count"]
        columns = {name: _column(headers[name]) for name in names}
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        for row, count in zip(rows, headers["line_count"], strict=True):
            row.update(period=period, line_count=int(count), content_hash=hashes[row["key"]], rules_hash=rules_hash,
                       state=DraftState.DRAFTED.value, created_at=now, updated_at=now)  # fmt: skip
        session.execute(insert(InvoiceDraftRow.__table__), rows)  # by the table: a plain executemany
        keys = lines["work_item_keys"].tolist()
        columns = {name: _column(lines[name]) for name in LINE_STORED}
        columns["work_item_key"] = [k[0] if len(k) else "" for k in keys]
        columns["more_item_keys"] = [list(k[1:]) or None for k in keys]
        insert_rows(session, InvoiceLineRow.__table__, columns)
        return keys

    @staticmethod
    def _claim(session: Session, draft_keys: Sequence[str], expected: int) -> None:
        """Point the new drafts' work items at their drafts and lines, each only if no draft holds it (a posted
        one included: billed is final): by statements per chunk of drafts, then one count of what was claimed.
        Its content now is what the draft bills (``billed_hash``). The conditional update is exact under
        concurrency (SQLite serializes writers, PostgreSQL re-checks the condition on rows another transaction
        changed)."""
        items, on = WorkItem.__table__, InvoiceLineRow.__table__
        free = items.c.draft_key.is_(None)
        now = utcnow()
        claimed = 0
        for chunk in _chunks(draft_keys):
            # UPDATE … FROM the chunk's lines (by their draft_key index) to each item by its key: an item several
            # lines bill (usage tiers) ends on one of them, the others finding it taken.
            session.execute(
                update(items)
                .where(on.c.work_item_key == items.c.key, on.c.draft_key.in_(chunk), on.c.work_item_key != "", free)
                .values(line_id=on.c.id, draft_key=on.c.draft_key, state=WorkState.DRAFTED.value,
                        billed_hash=items.c.content_hash, updated_at=now)
            )  # fmt: skip
            several = session.execute(select(on.c.id, on.c.draft_key, on.c.more_item_keys).where(
                on.c.draft_key.in_(chunk), on.c.more_item_keys.is_not(None))).all()  # fmt: skip
            pairs = [{"item": key, "line": line_id, "draft": draft} for line_id, draft, more in several
                     for key in more or ()]  # fmt: skip
            if pairs:
                session.execute(  # by the table, not the entity: an executemany, not the ORM's update by key
                    update(items).where(items.c.key == bindparam("item"), free)
                    .values(line_id=bindparam("line"), draft_key=bindparam("draft"), state=WorkState.DRAFTED.value,
                            billed_hash=items.c.content_hash, updated_at=now)
                    .execution_options(synchronize_session=False), pairs,
                )  # fmt: skip
            claimed += int(session.scalar(select(func.count()).select_from(items)
                                          .where(items.c.draft_key.in_(chunk))) or 0)  # fmt: skip
        if claimed == expected:
            return
        keys = sorted({k for chunk in _chunks(draft_keys) for k in _item_keys_of(session, chunk)})
        held: list[tuple[str, str | None, str]] = []
        for chunk in _chunks(keys):
            held += session.execute(_with_drafts(
                select(WorkItem.key, WorkItem.draft_key, _state_column())
                .where(WorkItem.key.in_(chunk), WorkItem.draft_key.is_not(None), WorkItem.draft_key.not_in(draft_keys))
            )).tuples().all()  # fmt: skip
        raise ClaimConflict(held, missing=expected - claimed - len(held))

    def draft_states(self, keys: Iterable[str]) -> dict[str, DraftState]:
        keys = list(keys)
        out: dict[str, DraftState] = {}
        with Session(self.engine) as session:
            for chunk in _chunks(keys):
                rows = session.execute(
                    select(InvoiceDraftRow.key, InvoiceDraftRow.state).where(InvoiceDraftRow.key.in_(chunk))
                )
                out.update({k: DraftState(s) for k, s in rows})
        return out

    def draft_headers(
        self, period: str | None = None, states: Iterable[DraftState] | None = None, keys: Iterable[str] | None = None
    ) -> pd.DataFrame:
        """The drafts without their lines, one row each (``DRAFT_HEADER_COLUMNS``), ordered by key: what
        approving, reconciling and summing up a period need, without reading a document."""
        columns = [getattr(InvoiceDraftRow, name) for name in DRAFT_HEADER_COLUMNS]
        query = select(*columns).order_by(InvoiceDraftRow.key)
        if period is not None:
            query = query.where(InvoiceDraftRow.period == period)
        if states is not None:
            query = query.where(InvoiceDraftRow.state.in_([s.value for s in states]))
        with self.engine.connect() as connection:
            if keys is None:
                rows = connection.execute(query).all()
            else:
                rows = [r for chunk in _chunks(list(dict.fromkeys(keys)))
                        for r in connection.execute(query.where(InvoiceDraftRow.key.in_(chunk))).all()]  # fmt: skip
        frame = pd.DataFrame(rows, columns=list(DRAFT_HEADER_COLUMNS))
        return frame.sort_values("key", ignore_index=True) if keys is not None else frame

    def book(
        self,
        period: str | None = None,
        states: Iterable[DraftState] | None = None,
        keys: Iterable[str] | None = None,
        customers: Iterable[str] | None = None,
    ) -> DraftBook:
        """The drafts and their lines as frames (``keys``, ``customers``: only these), ordered by key and line."""
        query = select(*(getattr(InvoiceDraftRow, c) for c in HEADER_COLUMNS)).order_by(InvoiceDraftRow.key)
        if period is not None:
            query = query.where(InvoiceDraftRow.period == period)
        if states is not None:
            query = query.where(InvoiceDraftRow.state.in_([s.value for s in states]))
        line_columns = [getattr(InvoiceLineRow, c) for c in LINE_STORED]
        read = [*line_columns, InvoiceLineRow.work_item_key, InvoiceLineRow.more_item_keys]
        with self.engine.connect() as connection:
            if keys is None and customers is None:
                headers = connection.execute(query).all()
                lines = connection.execute(select(*read).where(InvoiceLineRow.draft_key.in_(
                    query.with_only_columns(InvoiceDraftRow.key).order_by(None)))).all()  # fmt: skip
            else:
                column = InvoiceDraftRow.key if keys is not None else InvoiceDraftRow.customer_id
                wanted = list(dict.fromkeys(keys if keys is not None else customers))  # type: ignore[arg-type]
                headers, lines = [], []
                for chunk in _chunks(wanted):
                    found = connection.execute(query.where(column.in_(chunk))).all()
                    headers += found
                    for part in _chunks([h[0] for h in found]):
                        lines += connection.execute(select(*read).where(InvoiceLineRow.draft_key.in_(part))).all()
        head = pd.DataFrame(headers, columns=list(HEADER_COLUMNS)).sort_values("key", ignore_index=True)
        frame = pd.DataFrame(lines, columns=[*LINE_STORED, "work_item_key", "more_item_keys"])
        pairs = zip(frame["work_item_key"], frame["more_item_keys"], strict=True)
        frame["work_item_keys"] = [(first, *(more or ())) if first else () for first, more in pairs]
        of = head.set_index("key")
        frame = frame.assign(customer_id=frame["draft_key"].map(of["customer_id"]),
                             agreement_id=frame["draft_key"].map(of["agreement_id"]),
                             period=frame["draft_key"].map(of["period"]),
                             currency=frame["draft_key"].map(of["currency"]))  # fmt: skip
        frame = frame.sort_values(["draft_key", "line_no"], ignore_index=True)
        return DraftBook(headers=head, lines=frame[list(LINE_COLUMNS)])

    def drafts(
        self,
        period: str | None = None,
        states: Iterable[DraftState] | None = None,
        keys: Iterable[str] | None = None,
        customers: Iterable[str] | None = None,
        rules: RuleSet | None = None,
    ) -> list[InvoiceDraft]:
        """The drafts with their lines, ordered by key (``keys``, ``customers``: only these); with ``rules``,
        each line's explanation written from them."""
        return self.book(period, states, keys, customers).drafts(rules)

    # -- approvals and postings --------------------------------------------------------------------

    def record_decisions(self, decisions: Sequence[ApprovalDecision], flow_run_id: str | None = None) -> None:
        """Every decision is kept; a draft decided twice in one call ends as the last one says (a posted one stays
        posted). A statement per chunk of drafts; their work items' state is theirs, nothing to write there."""
        final = {d.draft_key: d for d in decisions}  # the last decision of each draft
        with self.session() as session:
            if decisions:
                session.execute(insert(Approval), [
                    {"draft_key": d.draft_key, "approver": d.approver,
                     "decision": (DraftState.APPROVED if d.approved else DraftState.REJECTED).value,
                     "note": d.note, "decided_at": d.decided_at, "flow_run_id": flow_run_id}
                    for d in decisions
                ])  # fmt: skip
            for approved in (True, False):
                keys = [key for key, d in final.items() if d.approved is approved]
                decision = DraftState.APPROVED if approved else DraftState.REJECTED
                for chunk in _chunks(keys):
                    session.execute(
                        update(InvoiceDraftRow)
                        .where(InvoiceDraftRow.key.in_(chunk), InvoiceDraftRow.state != DraftState.POSTED.value)
                        .values(state=decision.value, updated_at=utcnow())
                    )
            self._audit(
                session,
                ", ".join(sorted({d.approver for d in decisions})) or "nobody",
                "decided",
                "invoice_draft",
                ((d.draft_key, {"approved": d.approved, "note": d.note}) for d in decisions),
            )

    def approvals(self, draft_key: str) -> list[Approval]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Approval).where(Approval.draft_key == draft_key).order_by(Approval.id)))

    def latest_decisions(self, draft_keys: Iterable[str]) -> dict[str, Approval]:
        """The last decision on each of these drafts (those decided), in one query per chunk of keys."""
        latest: dict[str, Approval] = {}
        with Session(self.engine) as session:
            for chunk in _chunks(list(dict.fromkeys(draft_keys))):
                for approval in session.scalars(select(Approval).where(Approval.draft_key.in_(chunk))
                                                .order_by(Approval.id)):  # fmt: skip
                    latest[approval.draft_key] = approval
        return latest

    def record_postings(self, receipts: Sequence[PostingReceipt], actor: str) -> None:
        """A posting row per draft (the first receipt of a draft counts; one recorded earlier stays), the drafts
        posted (and with them their work items): statements per chunk of drafts, not per draft."""
        first: dict[str, PostingReceipt] = {}
        for r in receipts:
            first.setdefault(r.draft_key, r)
        with self.session() as session:
            for chunk in _chunks(list(first)):
                recorded = set(session.scalars(select(Posting.draft_key).where(Posting.draft_key.in_(chunk))))
                new = [first[key] for key in chunk if key not in recorded]
                if new:
                    session.execute(insert(Posting), [
                        {"draft_key": r.draft_key, "erp": r.erp, "erp_id": r.erp_id, "erp_number": r.erp_number,
                         "total_minor": r.total_minor, "tax_minor": r.tax_minor, "gross_minor": r.gross_minor,
                         "currency": r.currency, "posted_at": r.posted_at}
                        for r in new
                    ])  # fmt: skip
                session.execute(update(InvoiceDraftRow).where(InvoiceDraftRow.key.in_(chunk))
                                .values(state=DraftState.POSTED.value, updated_at=utcnow()))  # fmt: skip
            self._audit(
                session,
                actor,
                "posted",
                "invoice_draft",
                (
                    (
                        r.draft_key,
                        {
                            "erp": r.erp,
                            "erp_number": r.erp_number,
                            "total_minor": r.total_minor,
                            "already_existed": r.already_existed,
                        },
                    )
                    for r in receipts
                ),
            )

    def postings(self, period: str | None = None) -> list[Posting]:
        query = select(Posting).order_by(Posting.draft_key)
        if period is not None:
            query = query.join(InvoiceDraftRow, InvoiceDraftRow.key == Posting.draft_key).where(
                InvoiceDraftRow.period == period
            )
        with Session(self.engine) as session:
            return list(session.scalars(query))

    def items_on_two_posted_drafts(self, period: str) -> list[tuple[str, list[str]]]:
        """Work items that lines of two posted drafts of the period bill (which must never happen), with the
        drafts' keys: one grouped query over the period's lines, none of them read."""
        posted = select(InvoiceDraftRow.key).where(InvoiceDraftRow.period == period,
                                                   InvoiceDraftRow.state == DraftState.POSTED.value)  # fmt: skip
        twice = (
            select(InvoiceLineRow.work_item_key)
            .where(InvoiceLineRow.draft_key.in_(posted), InvoiceLineRow.work_item_key != "")
            .group_by(InvoiceLineRow.work_item_key)
            .having(func.count(func.distinct(InvoiceLineRow.draft_key)) > 1)
        )
        query = (
            select(InvoiceLineRow.work_item_key, InvoiceLineRow.draft_key)
            .where(InvoiceLineRow.work_item_key.in_(twice), InvoiceLineRow.draft_key.in_(posted))
            .distinct()
            .order_by(InvoiceLineRow.work_item_key, InvoiceLineRow.draft_key)
        )
        on: dict[str, list[str]] = {}
        with self.engine.connect() as connection:
            for item, draft in connection.execute(query):
                on.setdefault(item, []).append(draft)
        return list(on.items())

    def posting_latencies(self, period: str) -> list[float]:
        """Seconds from each posted invoice's drafting (its last version) to its posting, for the period."""
        query = select(InvoiceDraftRow.created_at, Posting.posted_at).join(
            Posting, Posting.draft_key == InvoiceDraftRow.key
        ).where(InvoiceDraftRow.period == period)  # fmt: skip
        with Session(self.engine) as session:
            return [max(0.0, (posted - drafted).total_seconds()) for drafted, posted in session.execute(query)]

    def mark_reconciled(self, draft_keys: Sequence[str], actor: str) -> None:
        """These posted drafts were found in the ERP to the cent: they and their work items are reconciled."""
        with self.session() as session:
            for chunk in _chunks(list(draft_keys)):
                session.execute(
                    update(InvoiceDraftRow)
                    .where(InvoiceDraftRow.key.in_(chunk), InvoiceDraftRow.state == DraftState.POSTED.value,
                           InvoiceDraftRow.reconciled_at.is_(None))
                    .values(reconciled_at=utcnow())
                )  # fmt: skip
            self._audit(session, actor, "reconciled", "invoice_draft", ((k, None) for k in draft_keys))

    # -- the source's side: write-back and changes after billing ---------------------------------

    def billed_without_write_back(self, period: str, source_system: str) -> pd.DataFrame:
        """Posted work items whose invoice number is not yet in the source: key, source_id, ticket_id, number."""
        query = (
            select(WorkItem.key, WorkItem.source_id, WorkItem.ticket_id, Posting.erp_number)
            .join(Posting, Posting.draft_key == WorkItem.draft_key)  # a posting: its draft is posted
            .where(WorkItem.period == period, WorkItem.source_system == source_system,
                   WorkItem.written_back_at.is_(None))
        )  # fmt: skip
        with self.engine.connect() as connection:
            return pd.read_sql(query, connection)

    def record_write_back(self, written: Sequence[str], failed: dict[str, str], actor: str) -> None:
        now = utcnow()
        with self.session() as session:
            if written:
                session.execute(update(WorkItem), [{"key": k, "written_back_at": now, "write_back_error": None}
                                                   for k in written])  # fmt: skip
            if failed:
                session.execute(update(WorkItem), [{"key": k, "write_back_error": e} for k, e in failed.items()])
            self._audit(session, actor, "written_back", "work_item", ((k, None) for k in written))
            self._audit(session, actor, "write_back_failed", "work_item", failed.items())

    def flag_billed_changes(
        self, period: str, source_system: str, instance: str, current: pd.DataFrame, actor: str
    ) -> tuple[list[str], list[str]]:
        """Compare billed work items with what the source holds now (``key, content_hash`` of every item of
        the period): flag the ones edited or deleted since they were billed. Returns (changed, deleted)."""
        items = self.work_items(period)
        billed = items[(items["source_system"] == source_system) & (items["instance"] == instance)
                       & items["state"].isin([s.value for s in BILLED_STATES])]  # fmt: skip
        now = dict(zip(current["key"], current["content_hash"], strict=True))
        changed = [k for k, h in zip(billed["key"], billed["billed_hash"], strict=True) if k in now and now[k] != h]
        deleted = [k for k in billed["key"] if k not in now]
        flags = {**{k: "changed_after_billing" for k in changed}, **{k: "deleted_after_billing" for k in deleted}}
        if flags:
            with self.session() as session:
                session.execute(update(WorkItem), [{"key": k, "details": {flag: True}, "updated_at": utcnow()}
                                                   for k, flag in flags.items()])  # fmt: skip
                self._audit(session, actor, "changed_at_source", "work_item",
                            ((k, {"what": flag}) for k, flag in flags.items()))  # fmt: skip
        return changed, deleted

    # -- ERP mappings ------------------------------------------------------------------------------

    def erp_mappings(self, erp: str, entity: str) -> dict[str, str]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(ErpMapping.local_id, ErpMapping.erp_id).where(ErpMapping.erp == erp, ErpMapping.entity == entity)
            )
            return {local_id: erp_id for local_id, erp_id in rows}

    def remember_erp_mapping(self, erp: str, entity: str, local_id: str, erp_id: str) -> None:
        with self.session() as session:
            session.add(ErpMapping(erp=erp, entity=entity, local_id=local_id, erp_id=erp_id))

    # -- events: webhook deliveries and poll cursors --------------------------------------------------

    def accept_delivery(self, source: str, delivery_id: str, events: Sequence[str] = ()) -> bool:
        """Remember a webhook delivery by the sender's id; False when that id was accepted before (a replay).

        The primary key decides, so two receivers given the same delivery at once accept it once."""
        try:
            with self.session() as session:
                session.add(EventDelivery(source=source, delivery_id=delivery_id, events=list(events)))
        except IntegrityError:
            return False
        return True

    def record_delivery_events(self, source: str, delivery_id: str, events: Sequence[str]) -> None:
        """Note the Prefect event ids an accepted delivery became (known only after they were emitted)."""
        with self.session() as session:
            session.execute(
                update(EventDelivery)
                .where(EventDelivery.source == source, EventDelivery.delivery_id == delivery_id)
                .values(events=list(events))
            )

    def forget_delivery(self, source: str, delivery_id: str) -> None:
        """Release a delivery accepted by ``accept_delivery`` whose events could not be sent, so that the
        sender's retry of the same id is accepted instead of refused as a replay."""
        with self.session() as session:
            session.execute(
                delete(EventDelivery).where(EventDelivery.source == source, EventDelivery.delivery_id == delivery_id)
            )

    def drafted_from(self, period: str) -> dict[str, Any] | None:
        """What the period's drafts were made from, as the draft stage recorded it with them (None: unknown, or
        its work items changed since)."""
        return self.cursor(DRAFTED_FROM.format(period=period))

    def forget_drafted_from(self, period: str) -> None:
        with self.session() as session:
            self._forget_drafted_from(session, period)

    @staticmethod
    def _forget_drafted_from(session: Session, period: str) -> None:
        session.execute(delete(SourceCursor).where(SourceCursor.name == DRAFTED_FROM.format(period=period)))

    def last_posting_before(self, period: str) -> int:
        """The newest posting of an earlier period (0: none): a new one there may change what this period's
        drafts carry over (prepaid hours, caps)."""
        earlier = select(InvoiceDraftRow.key).where(InvoiceDraftRow.period < period)
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.max(Posting.id)).where(Posting.draft_key.in_(earlier))) or 0)

    def cursor(self, name: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(SourceCursor, name)
            return dict(row.cursor) if row else None

    def save_cursor(self, name: str, cursor: dict[str, Any]) -> None:
        with self.session() as session:
            row = session.get(SourceCursor, name)
            if row is None:
                session.add(SourceCursor(name=name, cursor=cursor))
            else:
                row.cursor = cursor

    # -- reports ---------------------------------------------------------------------------------

    def counts(self, period: str) -> dict[str, int]:
        """How many of the period's work items are billed, non-billable, quarantined ... (``COUNT_OF_STATE``):
        counted by their own state and draft, the drafts' states read apart (a few thousand, not an item each)."""
        counts = {name: 0 for name in dict.fromkeys(COUNT_OF_STATE.values())}
        with self.engine.connect() as connection:
            rows = connection.execute(select(WorkItem.state, WorkItem.draft_key, func.count())
                                      .where(WorkItem.period == period)
                                      .group_by(WorkItem.state, WorkItem.draft_key)).all()  # fmt: skip
            drafts = self._draft_states(connection, [d for _, d, _ in rows if d is not None])
        for stored, draft, n in rows:
            state = DRAFT_ITEM_STATE[drafts[draft]] if draft in drafts else WorkState(stored)
            counts[COUNT_OF_STATE[state]] += n
        return counts
