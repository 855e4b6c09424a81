"""A deployment run's logs carry one message for a user's mistake, and a traceback only for a bug."""

from __future__ import annotations

import logging
import sys

import pytest

import flows.run_state  # noqa: F401  (installs the filter, as the flow module does)
from billing.errors import ConfigurationError


def _engine_logs(error: Exception, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    logger = logging.getLogger("prefect.flow_runs")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="prefect.flow_runs"):
        try:
            raise error
        except Exception:  # what prefect.flow_engine.run_flow does with the Failed state's exception
            logger.error("Engine execution exited with unexpected exception", exc_info=sys.exc_info())
    return [r for r in caplog.records if r.name == "prefect.flow_runs"]


def test_a_users_mistake_leaves_no_traceback_in_the_run_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert _engine_logs(ConfigurationError("--period: 'Oct 2026' is not valid"), caplog) == []


def test_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    records = _engine_logs(KeyError("customer"), caplog)
    assert len(records) == 1 and records[0].exc_info is not None
