"""An embedded Tryton for demos and tests: a ``trytond`` server process on SQLite under ``<home>/tryton``, set up
once (database, company, chart of accounts, fiscal years, taxes) and reused afterwards.

Tryton is GPL-3: this module never imports it. It runs the ``trytond``/``trytond-admin`` executables of the
environment as separate processes and does everything else over JSON-RPC with :class:`TrytonRpc`.

    with EmbeddedTryton(home) as conn:              # first time about a minute, then a few seconds
        rpc = conn.rpc()
        ids = bootstrap(rpc, years=[2025])         # idempotent: looks up what exists, creates what is missing
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from billing.errors import ConfigurationError
from billing.processes import forget_child, free_port, popen_tied, reap_orphans, record_child
from connectors.tryton_rpc import TrytonRpc

Progress = Callable[[str], None]

TRYTON_REQUIREMENTS = ("trytond==8.2.1", "trytond-account-invoice==8.2.0")  # as the 'tryton' extra
DATABASE = "tryton"
ADMIN = "admin"
MARKER_VERSION = 1
CURRENCIES: dict[str, dict[str, Any]] = {
    "EUR": {"name": "Euro", "symbol": "€", "numeric_code": "978"},
    "USD": {"name": "US Dollar", "symbol": "$", "numeric_code": "840"},
}
PER_EUR: dict[str, Decimal] = {"EUR": Decimal(1), "USD": Decimal("1.08")}  # demo rates: 1.08 USD per EUR


def _default_years() -> list[int]:
    year = dt.date.today().year
    return [year - 1, year, year + 1]


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False



def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class TrytonConnection:
    url: str
    database: str
    user: str
    password: str

    def rpc(self, login: bool = True) -> TrytonRpc:
        """A TrytonRpc on this server, logged in unless ``login=False``."""
        rpc = TrytonRpc(self.url, self.database, self.user, self.password)
        if login:
            rpc.login()
        return rpc


class EmbeddedTryton:
    """One trytond server on one SQLite database under ``home / "tryton"``.

    Files there: ``trytond.conf``, ``tryton.sqlite``, ``admin.password`` (0600), ``ready.json`` (written only after
    the whole set-up succeeded; without it the database is rebuilt), ``trytond-admin.log`` and ``trytond.log``.

    No orphans: ``trytond`` and ``trytond-admin`` get a death signal (:mod:`billing.processes`), so they stop when
    the process that started them dies, even by ``kill -9``; ``trytond.pid.json``/``trytond-admin.pid.json``
    record them, and whoever starts or sets up the server next first stops one whose starter is gone. A set-up
    killed half-way leaves no ``ready.json``, so the next run rebuilds the database instead of trusting it.
    """

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        years: Iterable[int] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.folder = Path(home) / "tryton"
        self.port = port
        self.years = sorted(set(years)) if years is not None else _default_years()
        self.bin_dir = Path(sys.executable).parent
        self.config_file = self.folder / "trytond.conf"
        self.database_file = self.folder / f"{DATABASE}.sqlite"
        self.password_file = self.folder / "admin.password"
        self.marker = self.folder / "ready.json"
        self.admin_log = self.folder / "trytond-admin.log"
        self.server_log = self.folder / "trytond.log"
        self.server_record = self.folder / "trytond.pid.json"
        self.admin_record = self.folder / "trytond-admin.pid.json"
        self.ids: dict[str, Any] = {}
        self.admin_ran = False  # whether this instance ran trytond-admin (a reused database does not)
        self.timings: dict[str, float] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._connection: TrytonConnection | None = None
        self._progress: Progress = progress or (lambda message: None)

    # -- files and executables ------------------------------------------------------------------------------------

    def _executable(self, name: str) -> str:
        candidate = self.bin_dir / name
        if not candidate.exists() and not shutil.which(name):
            self._install_trytond()
        if candidate.exists():
            return str(candidate)
        found = shutil.which(name)
        if not found:
            raise ConfigurationError(f"{name} not found next to {sys.executable} nor on PATH",
                                     hint="pip install 'ticket-to-invoice[tryton]'")  # fmt: skip
        return found

    def _install_trytond(self) -> None:
        """The optional 'tryton' group, installed on first use into this environment."""
        self._progress(f"installing {' '.join(TRYTON_REQUIREMENTS)} (first use of the embedded ERP)")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *TRYTON_REQUIREMENTS],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise ConfigurationError(
                f"could not install trytond: {done.stderr.strip()[-500:]}",
                hint="pip install 'ticket-to-invoice[tryton]', or set TICKET_TO_INVOICE_ERP=files",
            )

    def _write_config(self, port: int) -> None:
        self.config_file.write_text(
            "[database]\n"
            "uri = sqlite://\n"
            f"path = {self.folder}\n"
            "\n"
            "[web]\n"
            f"listen = 127.0.0.1:{port}\n"
            "\n"
            "[session]\n"
            "timeout = 2592000\n"
            "max_age = 31536000\n"
        )

    def _password(self) -> str:
        return self.password_file.read_text().strip()

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            marker = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        if marker.get("version") != MARKER_VERSION or not (self.database_file.exists() and self.password_file.exists()):
            return None
        return marker

    def _write_marker(self) -> None:
        earlier = self._read_marker() or {}
        years = sorted(set(self.years) | set(earlier.get("years", [])))  # every year bootstrapped so far
        marker = {"version": MARKER_VERSION, "years": years, "ids": self.ids, "at": dt.datetime.now().isoformat()}
        temporary = self.marker.with_name(f".{self.marker.name}.tmp")  # a kill mid-write leaves no half marker
        temporary.write_text(json.dumps(marker, indent=2))
        os.replace(temporary, self.marker)

    @property
    def ready(self) -> bool:
        return self._read_marker() is not None

    # -- set-up ---------------------------------------------------------------------------------------------------

    def ensure_database(self, progress: Progress | None = None) -> None:
        """Create the database on first use (about a minute), reuse it afterwards."""
        self._ensure(progress, keep_running=False)

    def _ensure(self, progress: Progress | None, keep_running: bool) -> None:
        if progress is not None:
            self._progress = progress
        marker = self._read_marker()
        if marker is not None:
            self.ids = dict(marker.get("ids", {}))
            self.ids["fiscal_years"] = {int(y): i for y, i in self.ids.get("fiscal_years", {}).items()}  # JSON keys
            if set(self.years) <= set(marker.get("years", [])):
                self._progress(f"Tryton: reusing the database in {self.folder}")
                return
            self._progress(f"Tryton: adding fiscal years {sorted(set(self.years) - set(marker['years']))}")
            self._bootstrap_running(keep_running)
            return
        started = time.monotonic()
        self._create_database()
        self._bootstrap_running(keep_running)
        self.timings["first_setup"] = time.monotonic() - started
        self._progress(f"Tryton: set-up finished in {self.timings['first_setup']:.0f} s")

    def reap_orphans(self) -> list[int]:
        """Stop a trytond or trytond-admin on this folder whose starter is gone (a killed earlier run)."""
        return reap_orphans([self.admin_record, self.server_record])

    def _create_database(self) -> None:
        self.stop()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.reap_orphans()  # an orphaned trytond-admin must not write into the files deleted below
        self._progress(f"Tryton: creating a new database in {self.folder} (first run, about a minute)")
        for path in (self.marker, self.database_file, *self.folder.glob(f"{DATABASE}.sqlite-*")):
            path.unlink(missing_ok=True)
        self._write_config(self.port or 8000)
        self.password_file.unlink(missing_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")
        self.database_file.touch()
        self._progress("Tryton: installing the modules account_invoice and its dependencies (trytond-admin, ~30 s)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRYTOND_")}
        env["TRYTONPASSFILE"] = str(self.password_file)
        started = time.monotonic()
        with self.admin_log.open("w") as log:
            admin = popen_tied(
                [
                    self._executable("trytond-admin"),
                    "-c",
                    str(self.config_file),
                    "-d",
                    DATABASE,
                    "-u",
                    "account_invoice",
                    "--activate-dependencies",
                    "--email",
                    "admin@localhost",  # an empty value makes trytond-admin prompt for one
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
            )
            record_child(self.admin_record, admin, "trytond-admin")
            try:
                returncode = admin.wait(900)
            except BaseException:  # a timeout, or Ctrl-C: no trytond-admin left writing into the database
                admin.kill()
                admin.wait()
                raise
            finally:
                forget_child(self.admin_record, admin)
        self.admin_ran = True
        self.timings["trytond_admin"] = time.monotonic() - started
        if returncode != 0:
            raise RuntimeError(f"trytond-admin failed ({returncode}):\n{_tail(self.admin_log)}")

    def _bootstrap_running(self, keep_running: bool) -> None:
        was_running = self.running
        connection = self._connection if was_running and self._connection else self._launch()
        try:
            self._progress("Tryton: company, chart of accounts, fiscal years, taxes (over JSON-RPC)")
            rpc = connection.rpc()
            try:
                self.ids = bootstrap(rpc, self.years)
            finally:
                rpc.close()
            self._write_marker()
        finally:
            if not keep_running and not was_running:
                self.stop()

    # -- server ---------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> TrytonConnection:
        """Start ``trytond -c CONF -d DB`` on 127.0.0.1 and wait until a login works; sets the database up first
        if :meth:`ensure_database` has not (or did not finish)."""
        try:
            if not self.running:
                self._ensure(None, keep_running=True)
            if self.running and self._connection is not None:
                return self._connection
            return self._launch()
        except BaseException:  # a half-started server must not outlive a failed set-up
            self.stop()
            raise

    def _launch(self, timeout: float = 120.0) -> TrytonConnection:
        self.stop()
        self.reap_orphans()  # a trytond left by a killed run: on our port, or serving the same SQLite file
        started = time.monotonic()
        port = self.port or free_port()
        self._write_config(port)
        self._progress(f"Tryton: starting the server on 127.0.0.1:{port}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRYTOND_") and k != "TRYTONPASSFILE"}
        with self.server_log.open("w") as log:
            self._process = popen_tied(  # dies with this process: no trytond left listening after a kill -9
                [self._executable("trytond"), "-c", str(self.config_file), "-d", DATABASE],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,  # its own process group: stop() signals the group, a shell's SIGINT is moot
            )
        record_child(self.server_record, self._process, "trytond")
        connection = TrytonConnection(f"http://127.0.0.1:{port}", DATABASE, ADMIN, self._password())
        try:
            self._wait_for_login(connection, timeout)
        except BaseException:
            self.stop()
            raise
        self._connection = connection
        self.timings["start"] = time.monotonic() - started
        return connection

    def _wait_for_login(self, connection: TrytonConnection, timeout: float) -> None:
        body = {"id": 0, "method": "common.db.login", "params": [ADMIN, {"password": connection.password}, "en"]}
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10) as client:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"trytond exited with {self._process.returncode}:\n{_tail(self.server_log)}")
                try:
                    answer = client.post(f"{connection.url}/{DATABASE}/rpc/", json=body)
                    if answer.status_code == 200 and isinstance(answer.json().get("result"), list):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"trytond did not accept a login within {timeout:.0f} s:\n{_tail(self.server_log)}"
                    )
                time.sleep(0.25)

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server's process group and wait for it (SIGKILL after ``timeout``)."""
        process, self._process, self._connection = self._process, None, None
        if process is None:
            return
        if process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            process.wait()
        forget_child(self.server_record, process)

    def __enter__(self) -> TrytonConnection:
        # One server per folder: a second run on the same home waits here instead of starting a second server
        # on the same SQLite file (concurrent posting there would duplicate invoice numbers).
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = (self.folder / ".in-use.lock").open("w")
        if not _try_lock(self._lock_file):
            self._progress("another run is using the embedded Tryton; waiting for it to finish")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            return self.start()  # ensure_database + start, with one server start
        except BaseException:
            self._release()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


# -- bootstrap over JSON-RPC ----------------------------------------------------------------------------------------


def _search(rpc: TrytonRpc, model: str, domain: list[Any], limit: int | None = None) -> list[int]:
    return list(rpc.model(model, "search", domain, 0, limit, None))


def _one(rpc: TrytonRpc, model: str, domain: list[Any]) -> int | None:
    found = _search(rpc, model, domain, 1)
    return found[0] if found else None


def _create(rpc: TrytonRpc, model: str, values: dict[str, Any]) -> int:
    (new_id,) = rpc.model(model, "create", [values])
    return int(new_id)


def _get_or_create(rpc: TrytonRpc, model: str, domain: list[Any], values: dict[str, Any]) -> int:
    found = _one(rpc, model, domain)
    return found if found is not None else _create(rpc, model, values)


def _read(rpc: TrytonRpc, model: str, record_id: int, fields: list[str]) -> dict[str, Any]:
    (record,) = rpc.model(model, "read", [record_id], fields)
    return dict(record)


def _wizard(rpc: TrytonRpc, name: str, method: str, *args: Any) -> Any:
    """``wizard.<name>.<method>(*args, context)``: create → (session, start, end); execute(session, data, state)."""
    return rpc.call(f"wizard.{name}.{method}", *args, rpc.context)


def _sequence_type(rpc: TrytonRpc, name: str) -> int:
    found = _one(rpc, "ir.sequence.type", [("name", "=", name)])
    if found is None:
        raise RuntimeError(f"Tryton has no sequence type {name!r}")
    return found


# Accounts of the "Universal Chart of Accounts" (account 8.x) by code, each with a fallback domain.
ACCOUNTS: dict[str, tuple[str, list[Any]]] = {
    "receivable": ("1.2.1", [("type.receivable", "=", True), ("party_required", "=", True)]),
    "payable": ("2.1.1", [("type.payable", "=", True), ("party_required", "=", True)]),
    "revenue": ("4.1.2", [("type.revenue", "=", True)]),  # Revenue / Recognized point of time / Services
    "expense": ("5.1.3", [("type.expense", "=", True)]),
    "tax": ("6.3.4", [("type.statement", "=", "balance"), ("type.payable", "=", False)]),  # Excise and sales taxes
    "exchange": ("6.2.1", [("type.statement", "=", "income")]),  # Foreign currency transaction gain (loss)
}


def _account(rpc: TrytonRpc, company: int, kind: str) -> int:
    code, fallback = ACCOUNTS[kind]
    base = [("company", "=", company), ("closed", "!=", True), ("type", "!=", None)]
    found = _one(rpc, "account.account", [*base, ("code", "=", code)]) or _one(
        rpc, "account.account", [*base, *fallback]
    )
    if found is None:
        raise RuntimeError(f"the chart of accounts has no {kind} account")
    return found


def _create_chart(rpc: TrytonRpc, company: int) -> None:
    """The ``account.create_chart`` wizard: states account → create_account → (properties) → create_properties."""
    template = _one(
        rpc, "account.account.template", [("parent", "=", None), ("name", "=", "Universal Chart of Accounts")]
    )
    template = template or _one(rpc, "account.account.template", [("parent", "=", None)])
    if template is None:
        raise RuntimeError("Tryton has no chart of accounts template")
    session, _start, _end = _wizard(rpc, "account.create_chart", "create")
    try:
        _wizard(rpc, "account.create_chart", "execute", session, {}, "account")
        answer = _wizard(
            rpc,
            "account.create_chart",
            "execute",
            session,
            {"account": {"company": company, "account_template": template}},
            "create_account",
        )
        properties = {k: v for k, v in answer["view"]["defaults"].items() if "." not in k}  # no "company." rec_names
        properties.update(
            company=company,
            account_receivable=_account(rpc, company, "receivable"),
            account_payable=_account(rpc, company, "payable"),
            category_account_revenue=_account(rpc, company, "revenue"),
            category_account_expense=_account(rpc, company, "expense"),
        )
        _wizard(rpc, "account.create_chart", "execute", session, {"properties": properties}, "create_properties")
    finally:
        _wizard(rpc, "account.create_chart", "delete", session)


def _fiscal_year(rpc: TrytonRpc, company: int, year: int) -> int:
    start, end = dt.date(year, 1, 1), dt.date(year, 12, 31)
    found = _one(rpc, "account.fiscalyear", [("company", "=", company), ("start_date", "=", start)])
    if found is None:
        move_type, invoice_type = _sequence_type(rpc, "Account Move"), _sequence_type(rpc, "Invoice")

        def strict(name: str, kind: int, prefix: str) -> int:
            return _create(
                rpc,
                "ir.sequence.strict",
                {"name": name, "sequence_type": kind, "company": company, "prefix": prefix, "padding": 4},
            )

        supplier = strict(f"Supplier invoices {year}", invoice_type, f"SUP{year}-")
        sequences = {
            "company": company,
            "out_invoice_sequence": strict(f"Customer invoices {year}", invoice_type, f"INV{year}-"),
            "out_credit_note_sequence": strict(f"Customer credit notes {year}", invoice_type, f"CN{year}-"),
            "in_invoice_sequence": supplier,  # required too
            "in_credit_note_sequence": supplier,
        }
        found = _create(
            rpc,
            "account.fiscalyear",
            {
                "name": str(year),
                "start_date": start,
                "end_date": end,
                "company": company,
                "move_sequence": strict(f"Moves {year}", move_type, f"M{year}-"),
                "invoice_sequences": [("create", [sequences])],
            },
        )
    if not _search(rpc, "account.period", [("fiscalyear", "=", found)], 1):
        rpc.model("account.fiscalyear", "create_period", [found])
    return found


def bootstrap(
    rpc: TrytonRpc,
    years: Iterable[int],
    company_name: str = "ticket-to-invoice demo company",
    company_currency: str = "EUR",
) -> dict[str, Any]:
    """Make a fresh Tryton able to create and post customer invoices in EUR and USD for any date of ``years``.

    Over JSON-RPC only, idempotent (every record is searched before it is created). Returns the ids: company,
    currencies {code: id}, account_category, taxes {"vat19", "vat0"}, tax_rule_export, revenue_account,
    receivable_account, journal_revenue, fiscal_years {year: id} and tax_rounding.
    """
    years = sorted(set(years))
    # currencies and their rates from January 1st of each year (company currency 1; Tryton needs a rate on both
    # sides of a conversion, the company currency's too)
    if company_currency not in PER_EUR:
        raise ValueError(f"company currency must be one of {sorted(PER_EUR)}")
    currencies: dict[str, int] = {}
    for code in sorted(CURRENCIES):
        info = CURRENCIES[code]
        currencies[code] = _get_or_create(
            rpc,
            "currency.currency",
            [("code", "=", code)],
            {"code": code, "rounding": Decimal("0.01"), "digits": 2, **info},
        )
    for year in years:
        for code, currency in currencies.items():
            rate = (PER_EUR[code] / PER_EUR[company_currency]).quantize(Decimal("0.000001"))
            date = dt.date(year, 1, 1)
            _get_or_create(
                rpc,
                "currency.currency.rate",
                [("currency", "=", currency), ("date", "=", date)],
                {"currency": currency, "date": date, "rate": rate},
            )

    # company, and the admin user working in it
    company = _one(rpc, "company.company", [("party.name", "=", company_name)])
    if company is None:
        party = _get_or_create(rpc, "party.party", [("name", "=", company_name)], {"name": company_name})
        company = _create(
            rpc,
            "company.company",
            {"party": party, "currency": currencies[company_currency], "timezone": "Europe/Berlin"},
        )
    user = _one(rpc, "res.user", [("login", "=", rpc.user)])
    if user is None:
        raise RuntimeError("cannot find the current Tryton user")
    preferences = _read(rpc, "res.user", user, ["company", "companies"])
    if company not in preferences["companies"] or preferences["company"] != company:
        rpc.model("res.user", "write", [user], {"companies": [("add", [company])], "company": company})
    rpc.login()  # the context now carries the company
    if rpc.context.get("company") != company:
        raise RuntimeError(f"the Tryton user's context has company {rpc.context.get('company')}, not {company}")

    # chart of accounts (wizard) and its default receivable/payable/revenue/expense accounts
    if not _search(rpc, "account.account", [("company", "=", company)], 1):
        _create_chart(rpc, company)

    fields = [
        "default_account_receivable",
        "default_account_payable",
        "default_category_account_revenue",
        "default_category_account_expense",
        "currency_exchange_credit_account",
        "currency_exchange_debit_account",
        "tax_rounding",
    ]
    config = _read(rpc, "account.configuration", 1, fields)
    wanted: dict[str, Any] = {
        "default_account_receivable": "receivable",
        "default_account_payable": "payable",
        "default_category_account_revenue": "revenue",
        "default_category_account_expense": "expense",
        # a foreign-currency invoice posts its conversion remainder there, else "currency exchange account missing"
        "currency_exchange_credit_account": "exchange",
        "currency_exchange_debit_account": "exchange",
    }
    updates = {field: _account(rpc, company, kind) for field, kind in wanted.items() if not config[field]}
    if config["tax_rounding"] != "document":
        updates["tax_rounding"] = "document"  # account 8.2 accepts "document" and "line"
    if updates:
        rpc.model("account.configuration", "write", [1], updates)
    config.update(updates)
    receivable, revenue = config["default_account_receivable"], config["default_category_account_revenue"]

    fiscal_years = {year: _fiscal_year(rpc, company, year) for year in years}

    # taxes, the export rule, the service category
    tax_account = _account(rpc, company, "tax")

    def tax(name: str, rate: str) -> int:
        return _get_or_create(
            rpc,
            "account.tax",
            [("company", "=", company), ("name", "=", name)],
            {
                "name": name,
                "description": name,
                "type": "percentage",
                "rate": Decimal(rate),
                "company": company,
                "invoice_account": tax_account,
                "credit_note_account": tax_account,
            },
        )

    vat19, vat0 = tax("VAT 19%", "0.19"), tax("VAT 0% export", "0")
    tax("VAT 7%", "0.07")  # the German reduced rate, for services of a reduced tax class
    export = _get_or_create(
        rpc,
        "account.tax.rule",
        [("company", "=", company), ("name", "=", "Export")],
        {
            "name": "Export",
            "kind": "sale",
            "company": company,
            "lines": [("create", [{"origin_tax": vat19, "tax": vat0}])],
        },
    )
    category = _get_or_create(
        rpc,
        "product.category",
        [("name", "=", "Services"), ("accounting", "=", True)],
        {
            "name": "Services",
            "accounting": True,
            "account_revenue": revenue,
            "customer_taxes": [("add", [vat19])],
        },
    )
    journal = _one(rpc, "account.journal", [("type", "=", "revenue")])
    if journal is None:
        raise RuntimeError("Tryton has no revenue journal")
    return {
        "company": company,
        "currencies": currencies,
        "account_category": category,
        "taxes": {"vat19": vat19, "vat0": vat0},
        "tax_rule_export": export,
        "revenue_account": revenue,
        "receivable_account": receivable,
        "journal_revenue": journal,
        "fiscal_years": fiscal_years,
        "tax_rounding": config["tax_rounding"],
    }


# -- smoke test: one customer invoice -------------------------------------------------------------------------------


def demo_invoice(
    rpc: TrytonRpc,
    ids: dict[str, Any],
    currency: str = "USD",
    country: str = "US",
    tax_rule: int | None = None,
    invoice_date: dt.date | None = None,
    uom: str = "Hour",
    lines: Iterable[tuple[str, Decimal, Decimal]] = (
        ("Support, March", Decimal("1.25"), Decimal("110.00")),
        ("On-call weekend", Decimal("3"), Decimal("95.50")),
    ),
) -> dict[str, Any]:
    """Create a customer (with an invoice address), a service product and a posted customer invoice; read it back.

    What Tryton 8.2 needs on create (found by leaving fields out), and where the values come from:
    - invoice: ``type``, ``party``, ``currency``, ``company``, ``invoice_date`` are ours; ``account`` (the party's
      receivable), ``invoice_address`` and ``journal`` are required too and come, with ``payment_term``, from
      ``account.invoice.on_change(values, ["type", "party"])`` (on_change_type sets the journal, on_change_party
      the rest). Without ``journal`` the server fails with a non-business error.
    - line: ``product``, ``quantity``, ``unit_price``, ``description`` are ours; ``account`` (category revenue),
      ``unit`` (the product's) and ``taxes`` (category taxes after the party's customer tax rule) come from
      ``account.invoice.line.on_change(values, ["product"])`` on a line without invoice (``invoice_type``, ``party``
      and ``company`` must be in the values, or the accounts and the tax rule are not found). ``currency`` must be
      the invoice's: the default is the company's, and a USD invoice with EUR lines fails its lines' domain.
      Missing taxes only give a UserWarning ("…invoice_taxes") at post, not an error.
    - the unit: "Unit" has 0 digits, so 1.25 needs a unit like "Hour" (2 digits).
    """
    stamp = dt.datetime.now().strftime("%H%M%S%f")
    country_id = _get_or_create(rpc, "country.country", [("code", "=", country)], {"name": country, "code": country})
    party_values: dict[str, Any] = {
        "name": f"Demo customer {country} {stamp}",
        "addresses": [
            (
                "create",
                [
                    {
                        "street": "1 Main Street",
                        "postal_code": "10115",
                        "city": "Berlin" if country == "DE" else "Boston",
                        "country": country_id,
                    }
                ],
            )
        ],
    }
    if tax_rule is not None:
        party_values["customer_tax_rule"] = tax_rule
    party = _create(rpc, "party.party", party_values)
    unit = _one(rpc, "product.uom", [("name", "=", uom)])  # "Unit" has 0 digits: 1.25 would be refused
    template = _create(
        rpc,
        "product.template",
        {
            "name": f"Support hour {stamp}",
            "type": "service",
            "list_price": Decimal("110.00"),
            "default_uom": unit,
            "account_category": ids["account_category"],
            "products": [("create", [{}])],
        },
    )
    (product,) = _search(rpc, "product.product", [("template", "=", template)])

    invoice: dict[str, Any] = {
        "type": "out",
        "party": party,
        "company": ids["company"],
        "currency": ids["currencies"][currency],
        "invoice_date": invoice_date or dt.date.today(),
        "description": "ticket-to-invoice smoke test",
    }
    changes = rpc.model(
        "account.invoice",
        "on_change",
        {**invoice, "journal": None, "invoice_address": None, "account": None, "payment_term": None},
        ["type", "party"],
    )
    invoice.update({k: changes[k] for k in ("journal", "invoice_address", "account", "payment_term") if k in changes})
    line_values = []
    for description, quantity, unit_price in lines:
        line: dict[str, Any] = {
            "product": product,
            "description": description,
            "quantity": quantity,
            "unit_price": unit_price,
            "currency": invoice["currency"],
            "company": invoice["company"],
        }
        # a line on its own (no invoice yet) needs invoice_type and party for the tax rule, company for the accounts
        changes = rpc.model(
            "account.invoice.line",
            "on_change",
            {
                **line,
                "invoice": None,
                "invoice_type": "out",
                "party": party,
                "account": None,
                "unit": None,
                "taxes": [],
            },
            ["product"],
        )
        line["account"], line["unit"] = changes["account"], changes["unit"]
        line["taxes"] = [("add", [tax["id"] for _index, tax in changes.get("taxes", {}).get("add", [])])]
        line_values.append(line)
    invoice["lines"] = [("create", line_values)]
    invoice_id = _create(rpc, "account.invoice", invoice)
    rpc.model("account.invoice", "post", [invoice_id])
    result = _read(
        rpc,
        "account.invoice",
        invoice_id,
        ["number", "state", "untaxed_amount", "tax_amount", "total_amount", "currency", "party"],
    )
    result["lines"] = rpc.model(
        "account.invoice.line",
        "search_read",
        [("invoice", "=", invoice_id)],
        0,
        None,
        None,
        ["quantity", "unit_price", "amount", "taxes", "account"],
    )
    return result
