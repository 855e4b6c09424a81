"""Leases in the ledger: one billing run per period and ERP, across processes and machines."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from billing.errors import RunInProgress
from billing.ledger import Ledger
from billing.ledger.locks import Lease, start_time, this_process
from billing.ledger.schema import RunLock, utcnow


def test_a_second_holder_stops_at_once_when_asked_not_to_wait(ledger: Ledger) -> None:
    with ledger.lock("billing:2026-10:files", "a billing run of 2026-10"):
        busy = r"a billing run of 2026-10 \(process \d+ on .*\) is in progress"
        with pytest.raises(RunInProgress, match=busy), ledger.lock("billing:2026-10:files", "other", wait=False):
            pass
        with ledger.lock("billing:2026-11:files", "another period"):  # other names are free
            pass
    with ledger.lock("billing:2026-10:files", "the next run", wait=False):  # released on exit
        pass


def test_a_waiting_holder_goes_on_when_the_first_releases(ledger: Ledger) -> None:
    said: list[str] = []
    order: list[str] = []
    first = Lease(ledger.engine, "billing:2026-10:files", "run A")
    first.acquire()

    def second() -> None:
        with ledger.lock("billing:2026-10:files", "run B", say=said.append):
            order.append("B")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.5)
    order.append("A done")
    first.release()
    thread.join(timeout=10)
    assert order == ["A done", "B"]
    assert len(said) == 1 and said[0].startswith("waiting for run A (process ")


def test_waiting_has_a_limit(ledger: Ledger) -> None:
    with ledger.lock("x", "run A"):
        started = time.monotonic()
        with pytest.raises(RunInProgress, match="waited 1 s for run A"), ledger.lock("x", "B", timeout=1, say=print):
            pass
        assert time.monotonic() - started < 5


def _insert(ledger: Ledger, holder: str, heartbeat_age: float) -> None:
    at = utcnow() - timedelta(seconds=heartbeat_age)
    with ledger.engine.begin() as connection:
        connection.execute(insert(RunLock).values(name="x", token="t0", holder=holder, purpose="old run",
                                                  acquired_at=at, heartbeat_at=at))  # fmt: skip


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(ledger: Ledger) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = this_process().rsplit(":", 2)[0]
    _insert(ledger, f"{host}:{child.pid}:{start_time(child.pid)}", heartbeat_age=0)
    with pytest.raises(RunInProgress), ledger.lock("x", "new run", wait=False):  # alive: held
        pass
    child.kill()  # kill -9: no release
    child.wait()
    with ledger.lock("x", "new run", wait=False) as lease, ledger.engine.connect() as connection:
        assert connection.scalar(select(RunLock.token).where(RunLock.name == "x")) == lease.token


def test_a_lease_from_another_host_is_respected_until_its_heartbeat_is_stale(ledger: Ledger) -> None:
    _insert(ledger, "other-host:4242:123", heartbeat_age=10)
    with pytest.raises(RunInProgress, match="process 4242 on other-host"), ledger.lock("x", "new run", wait=False):
        pass
    with ledger.engine.begin() as connection:
        connection.execute(RunLock.__table__.delete())
    _insert(ledger, "other-host:4242:123", heartbeat_age=600)  # its machine died ten minutes ago
    with ledger.lock("x", "new run", wait=False):
        pass


def test_the_heartbeat_keeps_a_long_lease_fresh(ledger: Ledger) -> None:
    lease = Lease(ledger.engine, "x", "long run", heartbeat=0.2)
    lease.acquire()
    try:
        with ledger.engine.connect() as connection:
            first = connection.scalar(select(RunLock.heartbeat_at))
        time.sleep(1)
        with ledger.engine.connect() as connection:
            assert connection.scalar(select(RunLock.heartbeat_at)) > first
    finally:
        lease.release()
