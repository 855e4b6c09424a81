"""Leases in the ledger: one holder of a name at a time, across processes and machines, on SQLite and
PostgreSQL alike (a primary key does the exclusion; no database-specific lock).

A lease names its holder (host, pid and the process's start time). A process that dies without releasing
(kill -9) leaves its row behind: on the same host the next process sees the holder is gone and takes over
at once; from another host it waits until the holder's heartbeat is older than ``stale_after``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from billing.errors import RunInProgress
from billing.ledger.schema import RunLock, utcnow

log = logging.getLogger(__name__)


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or "" when gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one short read
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{start_time(os.getpid())}"


def gone(holder: str) -> bool:
    """Whether the process a lease names has ended, as far as this host can tell (never for another host)."""
    host, pid, started = holder.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return start_time(int(pid)) != started  # no such process, or its pid was reused by a newer one


STALE_AFTER_SECONDS = 90.0  # a holder on another host whose heartbeat is this old is taken to be gone


def _age(at: datetime) -> float:
    return (utcnow() - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()


def describe(row: RunLock) -> str:
    host, pid, _ = row.holder.rsplit(":", 2)
    since = row.acquired_at if row.acquired_at.tzinfo else row.acquired_at.replace(tzinfo=UTC)
    return f"{row.purpose} (process {pid} on {host}, since {since:%Y-%m-%d %H:%M:%S} UTC)"


class Lease:
    """Held from ``acquire`` to ``release``; a daemon thread renews the heartbeat meanwhile."""

    def __init__(self, engine: Engine, name: str, purpose: str, heartbeat: float = 15.0,
                 stale_after: float = STALE_AFTER_SECONDS) -> None:  # fmt: skip
        self.engine, self.name, self.purpose = engine, name, purpose
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.token = str(uuid.uuid4())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try(self) -> RunLock | None:
        """Take the lease, or answer who holds it. A dead holder's lease is removed and tried again."""
        while True:
            try:
                with self.engine.begin() as connection:
                    now = utcnow()
                    connection.execute(insert(RunLock).values(
                        name=self.name, token=self.token, holder=this_process(), purpose=self.purpose,
                        acquired_at=now, heartbeat_at=now,
                    ))  # fmt: skip
                return None
            except IntegrityError:
                pass
            with self.engine.begin() as connection:
                row = connection.execute(select(RunLock).where(RunLock.name == self.name)).first()
                if row is None:
                    continue  # released in between
                holder = RunLock(**row._mapping)
                if not gone(holder.holder) and _age(holder.heartbeat_at) < self.stale_after:
                    return holder
                log.warning("taking over %s from %s, which is gone", self.name, describe(holder))
                connection.execute(delete(RunLock).where(RunLock.name == self.name, RunLock.token == holder.token))

    def acquire(self, wait: bool = True, timeout: float = 3600.0, say: Callable[[str], None] = print,
                poll: float = 1.0) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        told = -1.0
        while (holder := self._try()) is not None:
            if not wait:
                raise RunInProgress(f"{describe(holder)} is in progress: nothing was done",
                                    hint="run again later, or without --no-wait to wait for it")  # fmt: skip
            if time.monotonic() >= deadline:
                raise RunInProgress(
                    f"waited {timeout:.0f} s for {describe(holder)}: nothing was done",
                    hint="raise TICKET_TO_INVOICE_LOCK_WAIT_SECONDS, or see to that process",
                )
            if told < 0 or time.monotonic() - told >= 30:
                say(f"waiting for {describe(holder)} to finish")
                told = time.monotonic()
            time.sleep(poll)
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                with self.engine.begin() as connection:
                    renewed = connection.execute(
                        update(RunLock).where(RunLock.name == self.name, RunLock.token == self.token)
                        .values(heartbeat_at=utcnow())
                    ).rowcount  # fmt: skip
            except Exception as exc:  # a busy database now and then: the next beat tries again
                log.warning("could not renew %s: %s", self.name, exc)
                continue
            if not renewed:
                log.error("lost %s: another process took it over", self.name)
                return

    def release(self) -> None:
        """Give the lease back. Should that fail (a full disk), the lease stays until its holder is seen to be
        gone, and the error that ended the run is the one reported, not this one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(RunLock).where(RunLock.name == self.name, RunLock.token == self.token))
        except Exception as exc:
            log.warning("could not release %s (the next holder takes it over): %s", self.name, exc)


@contextmanager
def hold(engine: Engine, name: str, purpose: str, wait: bool = True, timeout: float = 3600.0,
         say: Callable[[str], None] = print) -> Iterator[Lease]:  # fmt: skip
    lease = Lease(engine, name, purpose)
    lease.acquire(wait=wait, timeout=timeout, say=say)
    try:
        yield lease
    finally:
        lease.release()


def abandoned(engine: Engine, prefix: str, stale_after: float = STALE_AFTER_SECONDS) -> list[RunLock]:
    """The leases named ``prefix…`` whose holder died without releasing them: gone from this host, or silent
    on another for ``stale_after`` seconds. For whoever cleans up what such a holder left elsewhere."""
    with engine.connect() as connection:
        rows = connection.execute(select(RunLock).where(RunLock.name.startswith(prefix, autoescape=True))).all()
    leases = [RunLock(**row._mapping) for row in rows]
    return [lease for lease in leases if gone(lease.holder) or _age(lease.heartbeat_at) >= stale_after]


def remove(engine: Engine, lease: RunLock) -> None:
    """Delete an abandoned lease (only as it was seen: a lease taken over since is left alone)."""
    with engine.begin() as connection:
        connection.execute(delete(RunLock).where(RunLock.name == lease.name, RunLock.token == lease.token))
