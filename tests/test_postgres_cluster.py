"""The Prefect server's database of `serve`: a real PostgreSQL cluster (Debian's packages) kept with the home."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from billing.errors import ConfigurationError
from billing.settings import PROJECT_ROOT, Settings
from flows import postgres_cluster
from flows.postgres_cluster import cluster_directory, prefect_database


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(home=tmp_path / "home")
    yield settings
    shutil.rmtree(cluster_directory(settings), ignore_errors=True)  # root's lives outside the home


def answers(url: str) -> int:
    with psycopg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), connect_timeout=10) as db:
        row = db.execute("SELECT 41 + 1").fetchone()
    assert row is not None
    return int(row[0])


def test_the_cluster_is_made_once_kept_with_the_home_and_stopped_on_exit(settings: Settings) -> None:
    said: list[str] = []
    with prefect_database(settings, said.append) as url:
        assert url is not None and url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        assert answers(url) == 42
        with psycopg.connect(url.replace("+asyncpg", ""), autocommit=True) as db:
            db.execute("CREATE TABLE kept (n int)")
    assert said == [f"making the Prefect server's PostgreSQL cluster in {cluster_directory(settings)} (once)"]
    assert (settings.prefect_home / "postgresql").resolve() == cluster_directory(settings).resolve()
    with pytest.raises(psycopg.OperationalError):
        answers(url)  # stopped

    said.clear()
    with prefect_database(settings, said.append) as again:
        assert again is not None
        with psycopg.connect(again.replace("+asyncpg", "")) as db:
            assert db.execute("SELECT count(*) FROM kept").fetchone() == (0,)  # the same cluster
    assert said == []


def test_a_cluster_left_running_by_a_killed_service_is_restarted(settings: Settings) -> None:
    """kill -9 of `serve` leaves its PostgreSQL running (pg_ctl detaches it): the next start stops it first."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TICKET_TO_INVOICE_HOME": str(settings.home)}
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal\n"
        "from billing.settings import load_settings\n"
        "from flows.postgres_cluster import prefect_database\n"
        "with prefect_database(load_settings()) as url:\n"
        "    print(url, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )], env=env, capture_output=True, text=True, timeout=120, start_new_session=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = killed.stdout.strip().splitlines()[-1]  # after "making the … cluster"
    assert answers(left) == 42  # still running

    with prefect_database(settings) as url:
        assert url is not None and answers(url) == 42
    with pytest.raises(psycopg.OperationalError):
        answers(left)


def test_sqlite_or_a_database_of_ones_own_starts_no_cluster(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with prefect_database(settings.model_copy(update={"prefect_database": "sqlite"})) as url:
        assert url is None
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://prefect@db/prefect")
    with prefect_database(settings) as url:
        assert url is None
    assert not cluster_directory(settings).exists()


def test_without_postgresql_installed_the_message_names_the_setting_and_the_fix(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_cluster.glob, "glob", lambda pattern: [])
    with pytest.raises(ConfigurationError) as refused, prefect_database(settings):
        pass
    assert "PostgreSQL is not installed" in str(refused.value)
    assert "TICKET_TO_INVOICE_PREFECT_DATABASE=sqlite" in str(refused.value.hint)
    assert "make serve" in str(refused.value.hint)
