"""The Prefect server's database for ``serve``: a PostgreSQL cluster of Debian's packages, kept with the home.

Why not Prefect's default SQLite file: a trigger's automation writes its bucket in a transaction that is still
open when its action creates the flow run, and SQLite refuses that second writer at once ("database is locked",
a 503 the action's client retries after 2 s, then 4 s). An event then waited 2 to 6 s before its run existed;
on PostgreSQL it takes a few hundred milliseconds. ``TICKET_TO_INVOICE_PREFECT_DATABASE=sqlite`` keeps SQLite.

PostgreSQL refuses to run as root, so root runs it as the ``postgres`` user, with the cluster under that
user's home (``/var/lib/postgresql/ticket-to-invoice/<hash of the home>``: a directory of root's home may not
be reachable for it) and a symbolic link ``<home>/prefect/postgresql`` to it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from billing.errors import ConfigurationError
from billing.processes import free_port
from billing.settings import Settings

ROOTS_CLUSTERS = Path("/var/lib/postgresql/ticket-to-invoice")


def postgres_program(name: str) -> Path:
    """A program of Debian's newest installed PostgreSQL (``/usr/lib/postgresql/<version>/bin``)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise ConfigurationError(
            "the Prefect server's database is PostgreSQL (TICKET_TO_INVOICE_PREFECT_DATABASE=postgresql), and "
            "PostgreSQL is not installed",
            hint="`make serve` installs Debian's postgresql package (tests/system/install-debian-packages.sh "
            "postgresql), or set TICKET_TO_INVOICE_PREFECT_DATABASE=sqlite (event-triggered runs then often "
            "start 2 to 6 s later)",
        )
    return Path(found[-1])


def running_as_root() -> bool:
    return os.geteuid() == 0


def cluster_directory(settings: Settings) -> Path:
    """Where the home's cluster lives (see the module's docstring for root)."""
    if not running_as_root():
        return settings.prefect_home / "postgresql"
    return ROOTS_CLUSTERS / hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:12]



@contextmanager
def prefect_database(settings: Settings, say: Callable[[str], None] = print) -> Iterator[str | None]:
    """Yield the SQLAlchemy URL of the Prefect server's database, its cluster started (made on first use) and
    stopped on exit; ``None`` for Prefect's own SQLite file, or when ``PREFECT_SERVER_DATABASE_CONNECTION_URL``
    names a database already (then that one is used as it is)."""
    if settings.prefect_database == "sqlite" or os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        yield None
        return
    as_postgres = ["runuser", "-u", "postgres", "--"] if running_as_root() else []
    data = cluster_directory(settings)

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_postgres, *map(str, args)], capture_output=True, text=True, cwd="/")

    def must(*args: str | Path) -> None:
        done = run(*args)
        if done.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed for the cluster {data}: {done.stderr.strip()[-1500:]}")

    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not (data / "PG_VERSION").exists():
        say(f"making the Prefect server's PostgreSQL cluster in {data} (once)")
        data.mkdir(parents=True, exist_ok=True)
        if as_postgres:
            shutil.chown(data.parent, "postgres", "postgres")
            shutil.chown(data, "postgres", "postgres")
        must(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if as_postgres and not (link := settings.prefect_home / "postgresql").exists():
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        link.symlink_to(data)
    if run(pg_ctl, "status", "-D", data).returncode == 0:  # left running by a service that was killed
        must(pg_ctl, "stop", "-D", data, "-m", "fast", "-w")
    port = free_port()
    # TCP on 127.0.0.1 only, no Unix socket: a home's path can be longer than a socket's 107 bytes.
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200"
    must(pg_ctl, "start", "-D", data, "-l", data / "server.log", "-w", "-t", "120", "-o", options)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "stop", "-D", data, "-m", "fast", "-w")
