"""The files ERP's read-back: totals from a document's head, its lines not parsed, and the same answer for a
document laid out otherwise or edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

from connectors.file_erp import FileErp, head_of
from tests.test_ledger import draft


def test_read_back_reads_a_documents_totals_without_its_lines(tmp_path: Path) -> None:
    erp = FileErp(tmp_path / "erp")
    tricky = draft("A", "B", "C")
    lines = tuple(line.model_copy(update={"description": 'x\n  "lines": [\n  ],\n  "untaxed" y'})
                  for line in tricky.lines)  # the markers' text inside a line: escaped, never a marker  # fmt: skip
    tricky = tricky.model_copy(update={"lines": lines})
    empty = draft().model_copy(update={"customer_id": "GLOBEX"})  # no lines: '"lines": []' on one line
    (receipt, no_lines), failures = erp.post([tricky, empty])
    assert failures == []
    path = next((tmp_path / "erp" / "2026-10").glob("ACME-*.json"))
    text = path.read_text()
    whole = json.loads(text)
    assert head_of(text) == whole | {"lines": []} and len(whole["lines"]) == 3
    found = {key: [r.model_copy(update={"already_existed": False}) for r in rs]
             for key, rs in erp.read_back([tricky.key, empty.key]).items()}  # fmt: skip
    assert found == {tricky.key: [receipt], empty.key: [no_lines]}

    edited = whole | {"untaxed_minor": whole["untaxed_minor"] + 1}  # another tool's layout, a changed total
    path.write_text(json.dumps(edited, indent=4))
    (back,) = erp.read_back([tricky.key])[tricky.key]
    assert back.total_minor == receipt.total_minor + 1 and head_of(path.read_text()) == edited
