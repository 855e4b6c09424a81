"""Shared fixtures. Prefect reads its settings on import, so the environment is set here first."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="t2i-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME  # never the project's own var/prefect
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.pop("PREFECT_API_URL", None)
for name in [n for n in os.environ if n.startswith("TICKET_TO_INVOICE_")]:
    del os.environ[name]

from billing.settings import PROJECT_ROOT, Settings  # noqa: E402

SAMPLE = PROJECT_ROOT / "examples" / "sample-export"
DEMO_RULES = PROJECT_ROOT / "rules" / "examples" / "demo.yaml"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (new database, migrations) for the whole test run: about 20 s."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    from tests.system.postgres import postgres_cluster

    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="session")
def tryton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real trytond for the test run (set up over JSON-RPC on first use: about 20 s)."""
    from connectors.tryton_embedded import EmbeddedTryton

    with EmbeddedTryton(tmp_path_factory.mktemp("tryton"), years=[2025, 2026, 2027]) as connection:
        yield connection


@pytest.fixture(scope="session")
def redmine() -> Iterator[Any]:
    """One real Redmine (Debian's package, installed and configured by tests/system/redmine-setup.sh)."""
    from tests.system.redmine import redmine_server

    with redmine_server() as instance:
        yield instance


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """`ticket-to-invoice serve` on free ports with a home of its own and the file-export ERP: (API URL, its
    environment). One per test module, stopped before the next module starts one (about 30 s to start)."""
    from tests.service_fixture import running_service

    with running_service(tmp_path_factory.mktemp("service")) as api_and_env:
        yield api_and_env


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh ledger on SQLite, and on PostgreSQL (a database of its own on the session's cluster)."""
    from sqlalchemy import create_engine, text

    from billing.ledger import Ledger

    if request.param == "sqlite":
        yield Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        return
    base = request.getfixturevalue("postgres_url")
    name = f"t{uuid.uuid4().hex[:12]}"
    with create_engine(base, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield Ledger(base.rsplit("/", 1)[0] + f"/{name}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, input_dir=SAMPLE, rules_file=DEMO_RULES)
