"""The embedded Tryton against a real trytond: first set-up, idempotent bootstrap, invoices that post in EUR (19%)
and USD (export, 0%), a stop that frees the port, a second instance that reuses the database, and no trytond left
running when the process that started it is killed."""

from __future__ import annotations

import datetime as dt
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.processes import alive
from connectors.tryton_embedded import EmbeddedTryton, bootstrap, demo_invoice
from connectors.tryton_rpc import TrytonRpc

pytestmark = pytest.mark.integration

TODAY = dt.date.today()
YEARS = (TODAY.year - 1, TODAY.year)
CENT = Decimal("0.01")


@dataclass
class Tryton:
    emb: EmbeddedTryton
    home: Path
    messages: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0

    def rpc(self) -> TrytonRpc:
        """A logged-in client on the running server (started again if a test stopped it)."""
        return self.emb.start().rpc()


@pytest.fixture(scope="module")
def tryton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tryton]:
    home = tmp_path_factory.mktemp("tryton-home")
    messages: list[str] = []
    emb = EmbeddedTryton(home, years=YEARS, progress=messages.append)
    started = time.monotonic()
    emb.start()
    try:
        yield Tryton(emb, home, messages, time.monotonic() - started)
    finally:
        emb.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _port_free(port: int) -> bool:
    """Nothing listens there: a server could bind the port now. With SO_REUSEADDR, as servers bind: a connection
    that the stopped server closed itself stays in TIME-WAIT for a minute and is no listener (without the option
    such a leftover made test_stop_really_stops_the_server fail now and then under load)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _counts(rpc: TrytonRpc) -> dict[str, int]:
    models = [
        "company.company",
        "currency.currency",
        "currency.currency.rate",
        "account.account",
        "account.tax",
        "account.tax.rule",
        "account.tax.rule.line",
        "account.fiscalyear",
        "account.period",
        "account.fiscalyear.invoice_sequence",
        "ir.sequence.strict",
        "product.category",
        "party.party",
    ]
    return {model: rpc.model(model, "search_count", []) for model in models}


def test_the_project_never_imports_tryton() -> None:
    """GPL-3: Tryton runs as its own process; importing the connector must not load trytond or proteus."""
    code = (
        "import sys, connectors.tryton_embedded\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('trytond', 'proteus')]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_first_setup_creates_the_database_once(tryton: Tryton) -> None:
    folder = tryton.home / "tryton"
    assert tryton.emb.admin_ran
    assert (folder / "ready.json").exists() and (folder / "tryton.sqlite").exists()
    assert stat.S_IMODE((folder / "admin.password").stat().st_mode) == 0o600
    assert "listen = 127.0.0.1:" in (folder / "trytond.conf").read_text()
    assert any("trytond-admin" in message for message in tryton.messages)
    assert set(tryton.emb.ids["fiscal_years"]) == set(YEARS)
    print(f"first set-up {tryton.setup_seconds:.1f} s, timings {tryton.emb.timings}")


def test_bootstrap_twice_creates_no_twins(tryton: Tryton) -> None:
    rpc = tryton.rpc()
    before = _counts(rpc)
    first = bootstrap(rpc, YEARS)
    second = bootstrap(rpc, YEARS)
    after = _counts(rpc)
    assert first == second == tryton.emb.ids
    assert before == after
    assert after["company.company"] == 1
    assert after["account.tax"] == 3  # VAT 19 %, 7 % and 0 % (export)
    assert after["account.tax.rule"] == 1
    assert after["account.fiscalyear"] == len(YEARS)
    assert after["account.period"] == 12 * len(YEARS)
    assert after["currency.currency"] == 2
    assert rpc.context["company"] == first["company"]
    assert first["tax_rounding"] == "document"
    rpc.close()


def test_eur_invoice_for_german_party_posts_with_19_percent(tryton: Tryton) -> None:
    rpc = tryton.rpc()
    started = time.monotonic()
    invoice = demo_invoice(rpc, tryton.emb.ids, currency="EUR", country="DE")
    print(f"EUR invoice created and posted in {time.monotonic() - started:.2f} s: {invoice['number']}")
    assert invoice["state"] == "posted"
    assert invoice["number"].startswith(f"INV{TODAY.year}-")
    assert invoice["currency"] == tryton.emb.ids["currencies"]["EUR"]
    assert invoice["untaxed_amount"] == Decimal("1.25") * Decimal("110.00") + 3 * Decimal("95.50")
    assert invoice["tax_amount"] == (invoice["untaxed_amount"] * Decimal("0.19")).quantize(CENT)
    assert invoice["total_amount"] == (invoice["untaxed_amount"] * Decimal("1.19")).quantize(CENT)
    assert all(line["taxes"] == [tryton.emb.ids["taxes"]["vat19"]] for line in invoice["lines"])
    rpc.close()


def test_usd_invoice_for_export_party_posts_without_tax(tryton: Tryton) -> None:
    rpc = tryton.rpc()
    ids = tryton.emb.ids
    last_year = dt.date(YEARS[0], 12, 31)  # any date of the bootstrapped years, not only today
    invoice = demo_invoice(
        rpc, ids, currency="USD", country="US", tax_rule=ids["tax_rule_export"], invoice_date=last_year
    )
    assert invoice["state"] == "posted"
    assert invoice["number"].startswith(f"INV{YEARS[0]}-")
    assert invoice["currency"] == ids["currencies"]["USD"]
    assert invoice["tax_amount"] == Decimal("0.00")
    assert invoice["total_amount"] == invoice["untaxed_amount"] == Decimal("424.00")
    assert all(line["taxes"] == [ids["taxes"]["vat0"]] for line in invoice["lines"])
    # the move is in EUR: 424.00 USD at 1.08 USD per EUR
    (move,) = rpc.model("account.invoice", "read", [invoice["id"]], ["move"])
    lines = rpc.model(
        "account.move.line",
        "search_read",
        [("move", "=", move["move"])],
        0,
        None,
        None,
        ["debit", "credit", "amount_second_currency"],
    )
    assert sum(line["debit"] for line in lines) == (Decimal("424.00") / Decimal("1.08")).quantize(CENT)
    rpc.close()


def test_stop_really_stops_the_server(tryton: Tryton) -> None:
    connection = tryton.emb.start()
    process = tryton.emb._process
    assert process is not None
    pid, port = process.pid, _port(connection.url)
    assert not _port_free(port)
    started = time.monotonic()
    tryton.emb.stop()
    print(f"stopped in {time.monotonic() - started:.2f} s")
    assert not tryton.emb.running
    assert not _alive(pid)
    assert _port_free(port)
    tryton.emb.stop()  # a second stop is harmless


def test_second_instance_reuses_the_database(tryton: Tryton) -> None:
    rpc = tryton.rpc()
    earlier = demo_invoice(rpc, tryton.emb.ids, currency="EUR", country="DE")
    rpc.close()
    tryton.emb.stop()
    admin_log = tryton.home / "tryton" / "trytond-admin.log"
    admin_mtime = admin_log.stat().st_mtime_ns
    messages: list[str] = []
    second = EmbeddedTryton(tryton.home, years=YEARS, progress=messages.append)
    started = time.monotonic()
    try:
        with second as connection:
            elapsed = time.monotonic() - started
            print(f"reuse start {elapsed:.1f} s")
            assert not second.admin_ran and "trytond_admin" not in second.timings
            assert admin_log.stat().st_mtime_ns == admin_mtime
            assert any("reusing" in message for message in messages)
            assert elapsed < 30  # the first set-up takes ~20-60 s, a start a second or a few
            assert second.ids == tryton.emb.ids
            rpc = connection.rpc()
            found: list[dict[str, Any]] = rpc.model(
                "account.invoice", "search_read", [("id", "=", earlier["id"])], 0, None, None, ["number", "state"]
            )
            assert found == [{"id": earlier["id"], "number": earlier["number"], "state": "posted"}]
            assert rpc.model("account.invoice", "search_count", [("state", "=", "posted")]) >= 2
            rpc.close()
    finally:
        second.stop()
    assert _port_free(_port(connection.url))


STARTER = """
import subprocess, sys, time
from pathlib import Path
import connectors.tryton_embedded as embedded
if sys.argv[1] == "untied":  # as a version without the death signal started it
    embedded.popen_tied = lambda args, **kwargs: subprocess.Popen(args, **kwargs)
emb = embedded.EmbeddedTryton(Path(sys.argv[2]), years=[int(year) for year in sys.argv[3:]])
connection = emb.start()
print(emb._process.pid, connection.url, flush=True)
time.sleep(600)
"""


def _start_in_a_process_and_kill_it(tryton: Tryton, mode: str) -> tuple[int, int]:
    """trytond started by another process on the fixture's home, that process killed with SIGKILL: (pid, port)."""
    tryton.emb.stop()
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"PYTHONPATH": str(root)}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, mode, str(tryton.home), *map(str, YEARS)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=root,
    )  # fmt: skip
    try:
        assert starter.stdout is not None
        pid, url = starter.stdout.readline().split()
        assert not _port_free(_port(url))
    finally:
        starter.kill()
        starter.wait()
    return int(pid), _port(url)


def test_trytond_dies_with_the_process_that_started_it(tryton: Tryton) -> None:
    pid, port = _start_in_a_process_and_kill_it(tryton, "tied")
    deadline = time.monotonic() + 20  # the kernel closes a dead process's socket a moment after it dies
    while (alive(pid) or not _port_free(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid) and _port_free(port)
    assert tryton.emb.start() and tryton.emb.ready  # the next start works on the same files


def test_an_orphaned_trytond_is_stopped_by_the_next_start(tryton: Tryton) -> None:
    """The safety net where no death signal was set (an older version, another system): the record it left."""
    pid, port = _start_in_a_process_and_kill_it(tryton, "untied")
    time.sleep(0.5)
    assert alive(pid) and not _port_free(port), "an untied trytond outlives its starter"
    connection = tryton.emb.start()
    assert not alive(pid) and _port_free(port)
    rpc = connection.rpc()
    assert rpc.model("company.company", "search_count", []) == 1
    rpc.close()
