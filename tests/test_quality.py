"""The work-log suite (Great Expectations) decides the quarantine, with reasons a user can act on."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from connectors.filedrop import FileDropSource
from rules.quality import validate_worklogs
from tests.conftest import SAMPLE

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def outcome_for(worklogs: pd.DataFrame | None = None):  # type: ignore[no-untyped-def]
    batch = FileDropSource(SAMPLE).extract()
    frame = batch.worklogs if worklogs is None else worklogs
    return validate_worklogs(frame, batch.issues, [c.customer_id for c in batch.customers], {},
                             ["remote_support", "onsite_support", "consulting", "project_work", "internal"],
                             batch.tickets["ticket_id"].tolist(), now=NOW)  # fmt: skip


def test_the_sample_bad_rows_are_quarantined_with_their_reasons() -> None:
    outcome = outcome_for()
    reasons = dict(zip(outcome.quarantined["source_id"], outcome.quarantined["reason"], strict=True))
    assert reasons == {
        "WL-00501": "duration must be more than 0 and at most 24 hours: duration_minutes=-30 (worklogs.csv row 47)",
        "WL-00502": "duration must be more than 0 and at most 24 hours: duration_minutes=2000 (worklogs.csv row 113)",
        "WL-00123": "the work log id appears more than once: WL-00123 (worklogs.csv rows 126 and 346)",
        "WL-00503": "unknown customer: customer_id='HOOLI' (worklogs.csv row 179)",
        "WL-00504": "unknown service type (not in the rules file): service_type='gardening' (worklogs.csv row 245)",
        "WL-00505": "started_at is not an ISO 8601 timestamp: '2026-10-3xT10:00:00Z' (worklogs.csv row 311)",
        "WL-00506": "duration_minutes is not a number of minutes: '1h30' (worklogs.csv row 378)",
        "WL-00507": "customer_id is empty: customer_id=(empty) (worklogs.csv row 444)",
    }
    assert len(outcome.valid) + 7 + 2 == 504  # 504 rows in the period: 7 bad ones and both WL-00123 rows leave
    assert not outcome.valid["key"].isin(outcome.quarantined["key"]).any()
    details = outcome.quarantined.set_index("source_id").loc["WL-00503", "details"]
    assert details == [{"field": "customer_id", "value": "HOOLI", "check": "expect_column_values_to_be_in_set"}]


def test_every_failed_check_of_a_row_is_named_and_future_dates_fail() -> None:
    batch = FileDropSource(SAMPLE).extract()
    frame = batch.worklogs.head(3).copy()
    frame.loc[0, "started_at"] = pd.Timestamp("2026-12-01", tz="UTC")
    frame.loc[1, ["raw_seconds", "service_type"]] = [0, "gardening"]
    outcome = outcome_for(frame)
    reasons = dict(zip(outcome.quarantined["source_id"], outcome.quarantined["reason"], strict=True))
    assert reasons[frame.loc[0, "source_id"]].startswith("started_at is in the future: started_at=")
    assert reasons[frame.loc[1, "source_id"]].split("; ")[0].startswith("unknown service type")
    assert "duration must be more than 0" in reasons[frame.loc[1, "source_id"]]
    assert len(outcome.valid) == 1
    assert outcome.failed_per_check["started_at is in the future"] == 1
