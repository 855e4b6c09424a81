"""Unit tests of the file-drop source (connectors/filedrop.py): the sample export, JSON inputs, bad files, bad rows."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.errors import ConfigurationError, InputError, UserFacingError
from billing.models import ISSUE_COLUMNS, WORKLOG_COLUMNS, WorkBatch
from connectors.filedrop import WORKLOGS, FileDropSource, read_table

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample-export"
PREFIX = "files:sample-export:worklog:"
HEADER = "worklog_id,customer_id,service_type,started_at,duration_minutes"
OUTSIDE_PERIOD = {"WL-00001", "WL-00002", "WL-00499", "WL-00500"}


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A private copy of the sample export, to break one file of."""
    folder = tmp_path / "sample-export"
    shutil.copytree(SAMPLE, folder)
    return folder


@pytest.fixture(scope="module")
def sample_batch() -> WorkBatch:
    return FileDropSource(SAMPLE).extract()


def _sample_rows() -> list[dict[str, str]]:
    with (SAMPLE / "worklogs.csv").open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def _by_id(frame: pd.DataFrame, worklog_id: str) -> pd.Series:
    rows = frame.loc[frame["source_id"] == worklog_id]
    assert len(rows) == 1, f"{worklog_id}: {len(rows)} rows"
    return rows.iloc[0]


def _extract_error(folder: Path, period: str | None = None) -> InputError:
    with pytest.raises(InputError) as caught:
        FileDropSource(folder).extract(period)
    return caught.value


# --- 1. the sample export -------------------------------------------------------------------------------------------


def test_sample_export_relative_path_period_instance_and_customers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    batch = FileDropSource("examples/sample-export").extract()
    assert batch.source_system == "files"
    assert batch.period == "2026-10"
    assert batch.instance == "sample-export"
    assert sorted(c.customer_id for c in batch.customers) == ["ACME", "GLOBEX", "INITECH", "NORTHWIND"]
    assert {c.customer_id: c.timezone for c in batch.customers}["NORTHWIND"] == "America/New_York"
    assert batch.customer_problems == {}
    assert batch.notes == []
    assert len(batch.tickets) == 100


def test_sample_export_leaves_out_the_four_rows_of_other_months(sample_batch: WorkBatch) -> None:
    rows = _sample_rows()
    assert len(rows) == 508
    assert sample_batch.outside_period == 4
    assert len(sample_batch.worklogs) == 508 - 4
    assert not OUTSIDE_PERIOD & set(sample_batch.worklogs["source_id"])
    assert list(sample_batch.worklogs.columns) == list(WORKLOG_COLUMNS)
    assert set(sample_batch.worklogs["period"]) == {"2026-10"}


def test_sample_export_month_edges_use_the_customers_timezone(sample_batch: WorkBatch) -> None:
    rows = {r["worklog_id"]: r for r in _sample_rows()}
    # UTC says October for both, the customer's local time does not.
    assert rows["WL-00002"]["customer_id"] == "NORTHWIND"
    assert rows["WL-00002"]["started_at"] == "2026-10-01T00:30:00Z"  # 2026-09-30 20:30 in New York
    assert rows["WL-00499"]["customer_id"] == "GLOBEX"
    assert rows["WL-00499"]["started_at"] == "2026-10-31T23:30:00Z"  # 2026-11-01 00:30 in Amsterdam
    ids = set(sample_batch.worklogs["source_id"])
    assert "WL-00002" not in ids
    assert "WL-00499" not in ids
    # Their neighbours, inside October locally, are kept.
    assert {"WL-00003", "WL-00498"} <= ids
    assert _by_id(sample_batch.worklogs, "WL-00003")["started_at"] == pd.Timestamp("2026-10-01T04:50:00Z")


def test_sample_export_issues_name_the_bad_rows(sample_batch: WorkBatch) -> None:
    issues = sample_batch.issues
    assert list(issues.columns) == list(ISSUE_COLUMNS)
    found = sorted(issues[["key", "source_file", "source_row", "field", "value"]].itertuples(index=False, name=None))
    assert found == [
        (PREFIX + "WL-00505", "worklogs.csv", 311, "started_at", "2026-10-3xT10:00:00Z"),
        (PREFIX + "WL-00506", "worklogs.csv", 378, "duration_minutes", "1h30"),
    ]
    # The rows stay in the batch (the validate stage quarantines them); their values are missing, not invented.
    bad_start = _by_id(sample_batch.worklogs, "WL-00505")
    assert pd.isna(bad_start["started_at"])
    assert bad_start["source_row"] == 311
    bad_minutes = _by_id(sample_batch.worklogs, "WL-00506")
    assert pd.isna(bad_minutes["raw_seconds"])
    assert bad_minutes["source_row"] == 378


def test_sample_export_values_keys_and_raw_seconds(sample_batch: WorkBatch) -> None:
    rows = {r["worklog_id"]: r for r in _sample_rows()}
    good = _by_id(sample_batch.worklogs, "WL-00010")
    assert good["key"] == "files:sample-export:worklog:WL-00010"
    assert good["raw_seconds"] == int(rows["WL-00010"]["duration_minutes"]) * 60 == 21600
    assert good["customer_id"] == "GLOBEX"
    assert good["service_type"] == "onsite_support"
    assert good["started_at"] == pd.Timestamp("2026-10-01T09:45:00Z")
    assert good["billable"]
    assert good["source_file"] == "worklogs.csv"
    assert good["source_row"] == 11
    assert not _by_id(sample_batch.worklogs, "WL-00003")["billable"]  # billable=false in the file
    assert pd.isna(_by_id(sample_batch.worklogs, "WL-00503")["ticket_id"])  # an empty ticket_id is missing
    assert (sample_batch.worklogs["key"] == PREFIX + sample_batch.worklogs["source_id"]).all()
    # Every in-period row with a whole number of minutes has exactly minutes * 60 seconds.
    for row in sample_batch.worklogs.itertuples():
        minutes = rows[row.source_id]["duration_minutes"] if row.source_id != "WL-00123" else None
        if minutes is not None and minutes.lstrip("-").isdigit():
            assert row.raw_seconds == int(minutes) * 60, row.source_id


def test_sample_export_duplicated_id_keeps_both_rows(sample_batch: WorkBatch) -> None:
    twins = sample_batch.worklogs.loc[sample_batch.worklogs["source_id"] == "WL-00123"]
    assert sorted(twins["raw_seconds"].tolist()) == [15 * 60, 40 * 60]
    assert set(twins["key"]) == {PREFIX + "WL-00123"}
    assert twins["content_hash"].nunique() == 2  # different duration, different content
    duplicated = Counter(sample_batch.worklogs["key"])
    assert {k: n for k, n in duplicated.items() if n > 1} == {PREFIX + "WL-00123": 2}


def test_sample_export_content_hash_is_stable(sample_batch: WorkBatch) -> None:
    again = FileDropSource(SAMPLE).extract()
    hashes = sample_batch.worklogs["content_hash"]
    assert hashes.str.fullmatch(r"[0-9a-f]{16}").all()
    assert hashes.tolist() == again.worklogs["content_hash"].tolist()
    assert sample_batch.worklogs["key"].tolist() == again.worklogs["key"].tolist()


# --- 2. the same export as JSON -------------------------------------------------------------------------------------


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as a JSON exporter would write it: numbers and booleans typed, the rest text."""
    item: dict[str, Any] = dict(row)
    if row["duration_minutes"].lstrip("-").isdigit():
        item["duration_minutes"] = int(row["duration_minutes"])
    if row["billable"] in ("true", "false"):
        item["billable"] = row["billable"] == "true"
    return item


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_worklogs_give_the_same_work_logs(export: Path, sample_batch: WorkBatch, suffix: str) -> None:
    items = [_typed(r) for r in _sample_rows()]
    (export / "worklogs.csv").unlink()
    target = export / f"worklogs{suffix}"
    if suffix == ".json":
        target.write_text(json.dumps(items, indent=2, ensure_ascii=False), encoding="utf-8")
    else:
        target.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")

    batch = FileDropSource(export).extract()

    assert batch.outside_period == 4
    got, want = batch.worklogs, sample_batch.worklogs
    assert got["key"].tolist() == want["key"].tolist()
    assert got["raw_seconds"].tolist() == want["raw_seconds"].tolist()
    assert got["billable"].tolist() == want["billable"].tolist()
    assert got["started_at"].tolist() == want["started_at"].tolist()
    assert got["ticket_id"].fillna("<none>").tolist() == want["ticket_id"].fillna("<none>").tolist()
    assert got["content_hash"].tolist() == want["content_hash"].tolist()
    assert set(got["source_file"]) == {target.name}
    assert (got["source_row"] == want["source_row"] - 1).all()  # JSON items count from 1, CSV rows from 2
    assert sorted(zip(batch.issues["key"], batch.issues["field"], strict=True)) == [
        (PREFIX + "WL-00505", "started_at"),
        (PREFIX + "WL-00506", "duration_minutes"),
    ]


def test_json_object_wrapping_the_array_is_accepted(export: Path) -> None:
    items = [_typed(r) for r in _sample_rows()[:3]]
    (export / "worklogs.csv").unlink()
    (export / "worklogs.json").write_text(json.dumps({"worklogs": items}), encoding="utf-8")
    batch = FileDropSource(export).extract()
    assert batch.worklogs["source_id"].tolist() == ["WL-00003"]  # WL-00001/2 are September locally
    assert batch.outside_period == 2


# --- 3. files that cannot be read -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["customers.json", "tickets.csv", "worklogs.csv"])
def test_empty_file(export: Path, name: str) -> None:
    (export / name).write_bytes(b"")
    error = _extract_error(export)
    assert error.path == export / name
    assert error.problem == "the file is empty"
    assert str(error) == f"{export / name}: the file is empty"


def test_file_of_only_whitespace(export: Path) -> None:
    (export / "worklogs.csv").write_text("  \n\n\t \r\n", encoding="utf-8")
    error = _extract_error(export)
    assert error.path == export / "worklogs.csv"
    assert error.problem == "the file is empty"


def test_non_utf8_bytes_name_the_line(export: Path) -> None:
    path = export / "worklogs.csv"
    lines = path.read_bytes().split(b"\n")
    lines[4] += b" caf\xe9"  # Latin-1 é on line 5
    path.write_bytes(b"\n".join(lines))
    error = _extract_error(export)
    assert error.path == path
    assert error.line == 5
    assert error.row is None
    assert "not UTF-8" in error.problem
    assert "0xe9" in error.problem
    assert str(error).startswith(f"{path}, line 5: not UTF-8")


def test_malformed_json_names_the_line(export: Path) -> None:
    (export / "worklogs.csv").unlink()
    path = export / "worklogs.json"
    path.write_text('[\n  {"worklog_id": "A"},\n  {"worklog_id": \n]\n', encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.problem.startswith("not valid JSON")
    assert "line 4" in str(error)
    assert str(error).startswith(f"{path}: not valid JSON")


def test_malformed_json_lines_name_the_row(export: Path) -> None:
    (export / "worklogs.csv").unlink()
    path = export / "worklogs.jsonl"
    path.write_text('{"worklog_id": "A"}\n{"worklog_id": "B"}\n{"worklog_id": B}\n', encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.row == 3
    assert error.problem.startswith("not valid JSON")


def test_json_object_that_is_not_an_array(export: Path) -> None:
    (export / "worklogs.csv").unlink()
    path = export / "worklogs.json"
    path.write_text('{"worklog_id": "WL-1", "customer_id": "ACME"}', encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.problem == "expected a JSON array of worklogs objects, found dict"


def test_json_array_with_a_non_object_names_the_item(export: Path) -> None:
    (export / "worklogs.csv").unlink()
    path = export / "worklogs.json"
    path.write_text('[{"worklog_id": "A"}, {"worklog_id": "B"}, "C", {"worklog_id": "D"}]', encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.row == 3
    assert error.problem == "expected an object, found str"
    assert str(error) == f"{path}, row 3: expected an object, found str"


@pytest.mark.parametrize(
    ("name", "column"),
    [("worklogs.csv", "started_at"), ("worklogs.csv", "duration_minutes"), ("tickets.csv", "customer_id")],
)
def test_missing_required_column_is_named(export: Path, name: str, column: str) -> None:
    path = export / name
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.drop(columns=[column]).to_csv(path, index=False)
    error = _extract_error(export)
    assert error.path == path
    assert error.problem == f"missing column(s) {column}"
    assert error.hint is not None and column in error.hint


def test_missing_columns_in_customers_json(export: Path) -> None:
    path = export / "customers.json"
    customers = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps([{k: v for k, v in c.items() if k != "currency"} for c in customers]), encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.problem == "missing column(s) currency"


def test_both_csv_and_json_worklogs(export: Path) -> None:
    (export / "worklogs.json").write_text("[]", encoding="utf-8")
    error = _extract_error(export)
    assert error.path == export
    assert error.problem == "both worklogs.csv and worklogs.json exist: keep one"


def test_no_worklogs_file(export: Path) -> None:
    (export / "worklogs.csv").unlink()
    error = _extract_error(export)
    assert error.path == export
    assert error.problem == "no worklogs file: expected one of worklogs.csv, worklogs.json, worklogs.jsonl"


def test_input_folder_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigurationError) as caught:
        FileDropSource(missing)
    assert str(caught.value) == f"input folder {missing} does not exist"
    assert caught.value.hint is not None and "--input" in caught.value.hint
    assert not isinstance(caught.value, InputError)


def test_manifest_with_an_impossible_period(export: Path) -> None:
    path = export / "manifest.json"
    path.write_text(json.dumps({"instance": "sample-export", "period": "2026-13"}), encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.field == "period"
    assert "'2026-13' is not YYYY-MM" in error.problem
    assert str(error).startswith(f"{path}, field 'period': ")
    # An explicit period does not need the manifest's.
    assert FileDropSource(export).extract("2026-10").period == "2026-10"


def test_manifest_that_is_not_json(export: Path) -> None:
    path = export / "manifest.json"
    path.write_text("{period: 2026-10}", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        FileDropSource(export)
    assert caught.value.path == path
    assert caught.value.problem.startswith("not valid JSON")


def test_unclosed_quote_is_not_a_well_formed_csv(export: Path) -> None:
    path = export / "worklogs.csv"
    path.write_text(HEADER + '\nA,ACME,consulting,"2026-10-05T10:00:00Z,30\n', encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert error.problem.startswith("not a well-formed CSV file")
    assert "\n" not in str(error)


# --- 4., 5. unknown columns and a byte order mark -------------------------------------------------------------------


def test_unknown_columns_are_ignored_and_noted(export: Path, sample_batch: WorkBatch) -> None:
    path = export / "worklogs.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.insert(2, "zz_internal_cost", "12.50")
    frame["approved_by"] = "boss"
    frame.to_csv(path, index=False)

    batch = FileDropSource(export).extract()

    assert batch.notes == ["worklogs.csv: ignored unknown column(s) zz_internal_cost, approved_by"]
    assert list(batch.worklogs.columns) == list(WORKLOG_COLUMNS)
    assert batch.worklogs["key"].tolist() == sample_batch.worklogs["key"].tolist()
    assert batch.worklogs["content_hash"].tolist() == sample_batch.worklogs["content_hash"].tolist()


def test_unknown_columns_in_read_table(tmp_path: Path) -> None:
    path = tmp_path / "worklogs.csv"
    path.write_text(HEADER + ",colour\nA,ACME,consulting,2026-10-05T10:00:00Z, 30 ,blue\n", encoding="utf-8")
    frame, notes = read_table(path, WORKLOGS)
    assert notes == ["worklogs.csv: ignored unknown column(s) colour"]
    assert list(frame.columns) == [*WORKLOGS.columns, "source_row"]
    assert frame.iloc[0].to_dict() == {
        "worklog_id": "A", "customer_id": "ACME", "service_type": "consulting",
        "started_at": "2026-10-05T10:00:00Z", "duration_minutes": "30", "ticket_id": "", "user": "",
        "billable": "", "note": "", "source_row": 2,
    }  # fmt: skip


def test_utf8_bom_is_accepted(export: Path, sample_batch: WorkBatch) -> None:
    path = export / "worklogs.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    batch = FileDropSource(export).extract()
    assert batch.notes == []  # the BOM did not turn "worklog_id" into an unknown column
    assert batch.worklogs["key"].tolist() == sample_batch.worklogs["key"].tolist()
    assert batch.worklogs["content_hash"].tolist() == sample_batch.worklogs["content_hash"].tolist()


# --- 6. rows with bad values ----------------------------------------------------------------------------------------


def test_bad_values_are_issues_and_an_empty_id_gets_its_own_key(export: Path) -> None:
    (export / "worklogs.csv").write_text(
        HEADER + ",billable\n"
        "WL-1,ACME,consulting,2026-10-05T10:00:00Z,30,true\n"
        "WL-2,ACME,consulting,2026-10-05T11:00:00Z,45,maybe\n"
        ",ACME,consulting,2026-10-05T12:00:00Z,15,no\n"
        "  ,GLOBEX,consulting,2026-10-06T12:00:00Z,20,\n",
        encoding="utf-8",
    )
    batch = FileDropSource(export).extract()

    keys = batch.worklogs["key"].tolist()
    assert keys == [
        PREFIX + "WL-1",
        PREFIX + "WL-2",
        PREFIX + "@worklogs.csv:4",
        PREFIX + "@worklogs.csv:5",
    ]
    assert batch.worklogs["raw_seconds"].tolist() == [1800, 2700, 900, 1200]
    assert batch.worklogs["billable"].tolist()[0::2] == [True, False]  # "no" is not billable
    assert batch.worklogs["billable"].tolist()[3]  # empty means billable
    found = sorted(batch.issues[["key", "source_row", "field", "value", "problem"]].itertuples(index=False, name=None))
    assert found == [
        (PREFIX + "@worklogs.csv:4", 4, "worklog_id", "", "worklog_id is empty"),
        (PREFIX + "@worklogs.csv:5", 5, "worklog_id", "", "worklog_id is empty"),
        (PREFIX + "WL-2", 3, "billable", "maybe", "billable is not true or false"),
    ]
    assert set(batch.issues["source_file"]) == {"worklogs.csv"}


# --- 7. any worklogs.csv: a batch or a user-facing error ------------------------------------------------------------

COLUMNS = [*WORKLOGS.columns, "extra"]
CELLS = st.one_of(
    st.sampled_from([
        "", " ", "WL-1", "WL-1", "ACME", "GLOBEX", "NORTHWIND", "HOOLI", "consulting", "true", "no", "maybe",
        "30", "-5", "0.5", "1h30", "2026-10-05T10:00:00Z", "2026-10-31T23:30:00Z", "2026-11-01T00:30:00+01:00",
        "2026-10-3x", "0001-01-01", '"', ",", "\n",
    ]),
    st.text(max_size=6),
)  # fmt: skip


@st.composite
def worklog_files(draw: st.DrawFn) -> bytes:
    """Mostly CSV with the required columns (so rows are read), sometimes anything at all."""
    kind = draw(st.sampled_from(["csv", "csv", "joined", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8")
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    header = [*draw(st.permutations(WORKLOGS.required)), *draw(st.lists(st.sampled_from(COLUMNS), max_size=3))]
    rows = draw(st.lists(st.lists(CELLS, max_size=len(header) + 1), max_size=8))
    if kind == "csv":
        buffer = StringIO()
        csv.writer(buffer).writerows([header, *rows])
        return buffer.getvalue().encode("utf-8")
    return "\n".join(",".join(cells) for cells in [header, *rows]).encode("utf-8")


def _pandas_rows(data: bytes) -> pd.DataFrame | None:
    """The table pandas reads from the file, as read_table reads it; None if pandas cannot read it."""
    try:
        text = data.decode("utf-8-sig")
        width = len(next(csv.reader(StringIO(text, newline="")), []))
        with warnings.catch_warnings():  # the oracle reads as read_table does, quietly
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(
                StringIO(text),
                dtype=str,
                keep_default_na=False,
                skipinitialspace=True,
                index_col=False,
                usecols=range(width),
                skip_blank_lines=False,
            )
    except (UnicodeDecodeError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=worklog_files())
def test_any_worklogs_file_gives_a_batch_or_a_user_facing_error(export: Path, data: bytes) -> None:
    # The same folder serves every example: worklogs.csv, the only file that changes, is rewritten each time.
    (export / "worklogs.csv").write_bytes(data)
    frame = _pandas_rows(data)
    try:
        batch = FileDropSource(export).extract("2026-10")
    except UserFacingError:
        return
    assert frame is not None, "a file pandas cannot read must be an InputError"
    worklogs = batch.worklogs
    assert list(worklogs.columns) == list(WORKLOG_COLUMNS)
    # A row without a single value (a blank line, ",,,,") is no row; the others keep their row numbers.
    blank = (frame.fillna("").apply(lambda column: column.str.strip()) == "").all(axis=1).tolist()
    assert len(worklogs) + batch.outside_period == blank.count(False)
    # Every row is accounted for once: none is dropped and no duplicate is collapsed into another.
    assert worklogs["source_row"].is_unique
    assert set(worklogs["source_row"]) <= {n for n, b in enumerate(blank, start=2) if not b}
    ids = frame["worklog_id"].fillna("").str.strip()
    expected = [PREFIX + i if i else f"{PREFIX}@worklogs.csv:{n}" for n, i in enumerate(ids, start=2)]
    for row in worklogs.itertuples():
        assert row.key == expected[row.source_row - 2]
    # A duplicated key is not collapsed: it appears once per row that carries it (all of them, if none is outside).
    counts, wanted = Counter(worklogs["key"]), Counter(k for k, b in zip(expected, blank, strict=True) if not b)
    assert counts <= wanted
    if batch.outside_period == 0:
        assert counts == wanted
    without_id = worklogs.loc[worklogs["source_id"] == "", "key"]
    assert without_id.is_unique
    assert set(batch.issues["key"]) <= set(counts)


# --- bugs the property test found, fixed ---


def test_column_names_equal_after_stripping_are_an_input_error(export: Path) -> None:
    path = export / "worklogs.csv"
    path.write_text(HEADER + ",worklog_id \nA,ACME,consulting,2026-10-05T10:00:00Z,30,B\n", encoding="utf-8")
    error = _extract_error(export)
    assert error.path == path
    assert "worklog_id" in error.problem


@pytest.mark.parametrize("minutes", ["inf", "1e300"])
def test_huge_duration_is_an_issue_not_a_crash(export: Path, minutes: str) -> None:
    (export / "worklogs.csv").write_text(
        HEADER + f"\nA,ACME,consulting,2026-10-05T10:00:00Z,30\nB,ACME,consulting,2026-10-05T11:00:00Z,{minutes}\n",
        encoding="utf-8",
    )
    batch = FileDropSource(export).extract()
    assert batch.worklogs["key"].tolist() == [PREFIX + "A", PREFIX + "B"]
    assert batch.issues[["key", "field", "value"]].values.tolist() == [[PREFIX + "B", "duration_minutes", minutes]]


@pytest.mark.parametrize("form", ["null", "missing key"])
def test_json_null_is_an_empty_value(export: Path, form: str) -> None:
    first = {
        "worklog_id": "A", "customer_id": "ACME", "service_type": "consulting",
        "started_at": "2026-10-05T10:00:00Z", "duration_minutes": 30, "ticket_id": "T-1001",
    }  # fmt: skip
    second = {**first, "worklog_id": None, "ticket_id": None}
    if form == "missing key":
        second = {k: v for k, v in second.items() if v is not None}
    (export / "worklogs.csv").unlink()
    (export / "worklogs.json").write_text(json.dumps([first, second]), encoding="utf-8")
    batch = FileDropSource(export).extract()
    assert batch.worklogs["key"].tolist() == [PREFIX + "A", PREFIX + "@worklogs.json:2"]
    assert batch.worklogs["ticket_id"].fillna("<none>").tolist() == ["T-1001", "<none>"]
    assert batch.issues[["key", "field"]].values.tolist() == [[PREFIX + "@worklogs.json:2", "worklog_id"]]


def test_trailing_comma_on_every_row_does_not_shift_columns(export: Path) -> None:
    (export / "worklogs.csv").write_text(
        HEADER + "\nA,ACME,consulting,2026-10-05T10:00:00Z,30,\nB,GLOBEX,consulting,2026-10-05T11:00:00Z,45,\n",
        encoding="utf-8",
    )
    try:
        batch = FileDropSource(export).extract()
    except InputError as error:  # refusing the file is as good as reading it right
        assert error.path == export / "worklogs.csv"
        return
    assert batch.worklogs["key"].tolist() == [PREFIX + "A", PREFIX + "B"]
    assert batch.worklogs["customer_id"].tolist() == ["ACME", "GLOBEX"]


def test_a_usage_file_is_read_for_the_period_and_an_unreadable_one_stops_the_run(tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(SAMPLE, export)
    (export / "usage.csv").write_text("record_id,customer_id,metric,quantity,occurred_on\n"
                                      "U-1,ACME,backup_gb,12.5,2026-10-31\nU-2,ACME,backup_gb,3,2026-09-30\n"
                                      "U-3,ACME,backup_gb,-1,2026-10-02\n")  # fmt: skip
    batch = FileDropSource(export).extract("2026-10")
    assert batch.usage["source_id"].tolist() == ["U-1", "U-3"]  # September's record is another period's
    assert batch.usage["key"].tolist() == [f"files:{batch.instance}:usage:U-1", f"files:{batch.instance}:usage:U-3"]
    assert batch.issues.loc[batch.issues["field"] == "quantity", "source_row"].tolist() == [4]
    (export / "usage.csv").write_text("record_id,customer_id,metric\nU-1,ACME,backup_gb\n")
    with pytest.raises(InputError, match=r"usage\.csv") as raised:
        FileDropSource(export).check()
    assert "quantity" in str(raised.value)


# --- bugs the fuzzed export (tests/faults/fuzz_rows.py) found, fixed ---


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x1c", "\x1e", "\x0b", "\x0c"])
def test_json_lines_with_a_line_separator_inside_a_string_are_one_record_each(export: Path, separator: str) -> None:
    # json.dumps(ensure_ascii=False) leaves U+2028, NEL ... unescaped; str.splitlines() split there.
    records = [
        {"worklog_id": "A", "customer_id": "ACME", "service_type": "consulting",
         "started_at": "2026-10-05T10:00:00Z", "duration_minutes": 30, "note": f"one{separator}two"},
        {"worklog_id": "B", "customer_id": "ACME", "service_type": "consulting",
         "started_at": "2026-10-05T11:00:00Z", "duration_minutes": 30},
    ]  # fmt: skip
    (export / "worklogs.csv").unlink()
    (export / "worklogs.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                                           encoding="utf-8")  # fmt: skip
    batch = FileDropSource(export).extract()
    assert batch.worklogs["source_id"].tolist() == ["A", "B"]
    assert batch.worklogs["note"].tolist()[0] == f"one{separator}two"


def test_json_lines_rows_are_their_line_numbers(export: Path) -> None:
    line = '{"worklog_id": "%s", "customer_id": "ACME", "service_type": "consulting", ' \
           '"started_at": "2026-10-05T10:00:00Z", "duration_minutes": "%s"}'  # fmt: skip
    (export / "worklogs.csv").unlink()
    (export / "worklogs.jsonl").write_text("\n".join([line % ("A", "30"), "", "  ", line % ("B", "1h")]) + "\n")
    batch = FileDropSource(export).extract()
    assert batch.worklogs["source_row"].tolist() == [1, 4]
    assert batch.issues[["source_file", "source_row", "field"]].values.tolist() == [
        ["worklogs.jsonl", 4, "duration_minutes"]]  # fmt: skip


def test_a_trailing_comma_on_some_rows_only_is_harmless(export: Path) -> None:
    # pandas refused the whole file ("Expected 5 fields in line 3, saw 6") for one row with an empty extra value.
    (export / "worklogs.csv").write_text(
        HEADER + "\nA,ACME,consulting,2026-10-05T10:00:00Z,30\nB,GLOBEX,consulting,2026-10-05T11:00:00Z,45,\n"
        "C,ACME,consulting,2026-10-05T12:00:00Z,15\n",
        encoding="utf-8",
    )
    batch = FileDropSource(export).extract()
    assert batch.worklogs["source_id"].tolist() == ["A", "B", "C"]
    assert batch.worklogs["raw_seconds"].tolist() == [1800, 2700, 900]
    assert batch.issues.empty


@pytest.mark.parametrize("started_at", ["2026-10-05T10:00:00", "2026-10-05 10:00", "2026-10-05"])
def test_a_start_without_timezone_is_an_issue_not_a_guess(export: Path, started_at: str) -> None:
    # Read as UTC before: a local time of a Berlin customer billed an hour off, at the month's edge in another period.
    rows = f"\nA,ACME,consulting,{started_at},30\nB,ACME,consulting,2026-10-05T10:00:00+0200,30\n"
    (export / "worklogs.csv").write_text(HEADER + rows, encoding="utf-8")
    batch = FileDropSource(export).extract("2026-10")
    assert batch.worklogs["source_id"].tolist() == ["A", "B"]  # kept in the period, to be quarantined
    assert pd.isna(batch.worklogs["started_at"][0])
    assert batch.worklogs["started_at"][1] == pd.Timestamp("2026-10-05T08:00:00Z")
    issue = batch.issues.iloc[0]
    assert (issue["key"], issue["source_row"], issue["field"], issue["value"]) == (PREFIX + "A", 2, "started_at",
                                                                                   started_at)  # fmt: skip
    assert issue["problem"].startswith("started_at has no timezone")


@pytest.mark.parametrize("started_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z", "2262-04-12T00:00:00Z"])
def test_a_start_in_an_impossible_year_is_an_issue_not_a_crash_nor_another_period(
    export: Path, started_at: str
) -> None:
    # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC: the month in the customer's zone raised NotImplementedError;
    # 0001-01-01 was silently another period's work.
    (export / "worklogs.csv").write_text(HEADER + f"\nA,ACME,consulting,{started_at},30\n", encoding="utf-8")
    batch = FileDropSource(export).extract("2026-10")
    assert batch.worklogs["source_id"].tolist() == ["A"] and batch.outside_period == 0
    assert batch.issues[["field", "value"]].values.tolist() == [["started_at", started_at]]
    assert "not in the years" in batch.issues["problem"][0]


def test_a_ticket_date_in_year_10000_is_no_crash_and_tickets_name_their_file(export: Path) -> None:
    tickets = export / "tickets.csv"
    tickets.write_text(tickets.read_text().replace("2026-09-25T09:37:00Z", "9999-12-31T23:59:59-14:00", 1))
    batch = FileDropSource(export).extract("2026-10")
    assert pd.isna(batch.tickets["created_at"][0])
    assert set(batch.tickets["source_file"]) == {"tickets.csv"}


def test_ids_longer_than_the_ledger_keeps_are_issues_and_left_out_of_the_row(export: Path) -> None:
    # PostgreSQL refuses a value longer than its column (work_items.source_id 200, customer_id 100, ticket_id 200):
    # one such row stopped the whole run at the ledger with a traceback.
    long_id, long_customer, long_ticket = "W" * 201, "C" * 101, "T" * 201
    (export / "worklogs.csv").write_text(
        HEADER + f",ticket_id\nA,ACME,consulting,2026-10-05T10:00:00Z,30,T-1001\n"
        f"{long_id},ACME,consulting,2026-10-05T11:00:00Z,30,T-1001\n"
        f"B,{long_customer},consulting,2026-10-05T12:00:00Z,30,{long_ticket}\n",
        encoding="utf-8",
    )
    batch = FileDropSource(export).extract()
    worklogs = batch.worklogs
    assert worklogs["key"].tolist() == [PREFIX + "A", PREFIX + "@worklogs.csv:3", PREFIX + "B"]
    assert worklogs["source_id"].str.len().max() <= 200
    assert worklogs["customer_id"].isna().tolist() == [False, False, True]
    assert worklogs["ticket_id"].isna().tolist() == [False, False, True]
    found = batch.issues[["key", "source_row", "field", "value", "problem"]].values.tolist()
    assert found == [
        [PREFIX + "@worklogs.csv:3", 3, "worklog_id", long_id, "worklog_id is longer than 200 characters"],
        [PREFIX + "B", 4, "customer_id", long_customer, "customer_id is longer than 100 characters"],
        [PREFIX + "B", 4, "ticket_id", long_ticket, "ticket_id is longer than 200 characters"],
    ]


@pytest.mark.parametrize("blank", ["", "   ", ",,,,", '""'])
def test_a_blank_row_is_no_row_and_the_rows_after_it_keep_their_numbers(export: Path, blank: str) -> None:
    # pandas skipped a blank line: every reason after it named the row above the bad one; ",,,," was a work item.
    (export / "worklogs.csv").write_text(HEADER + f"\nA,ACME,consulting,2026-10-05T10:00:00Z,30\n{blank}\n"
                                         "B,ACME,consulting,2026-10-05T11:00:00Z,1h\n\n", encoding="utf-8")  # fmt: skip
    batch = FileDropSource(export).extract()
    assert batch.worklogs[["source_id", "source_row"]].values.tolist() == [["A", 2], ["B", 4]]
    assert batch.issues[["source_row", "field"]].values.tolist() == [[4, "duration_minutes"]]


@pytest.mark.parametrize(
    "started",
    [
        ["2026-10-05T14:30:00Z", "2026-10-31T23:59:59Z", None],  # whole seconds and a missing one: numpy
        ["2026-10-05T14:30:00Z", "2026-10-05T14:30:00.5Z", None],  # a fraction: pandas' own text for all
        [None, None, None],
    ],
)
def test_content_hashes_are_the_ones_ledgers_hold(sample_batch: WorkBatch, started: list[str | None]) -> None:
    """Hashes made faster must equal those billed items were recorded with (``astype(str)`` text, hashed,
    ``"{:016x}"``): else every billed item would look changed after billing."""
    from billing.models import HASHED_COLUMNS, content_hash

    logs = sample_batch.worklogs.head(3).copy()
    logs["started_at"] = pd.to_datetime(pd.Series(started, index=logs.index), utc=True, format="ISO8601")
    logs["started_at"] = logs["started_at"].astype("datetime64[ns, UTC]")
    logs.loc[logs.index[0], "raw_seconds"] = pd.NA
    for frame in (logs, sample_batch.worklogs):
        old = pd.util.hash_pandas_object(frame[list(HASHED_COLUMNS)].astype(str), index=False).map("{:016x}".format)
        assert content_hash(frame).tolist() == old.tolist()
