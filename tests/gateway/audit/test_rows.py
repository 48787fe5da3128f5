"""The shared row mapping of the audit stores: values in, rows out."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.audit_entry import IndexColumns
from gateway.audit._rows import (
    group_subjects,
    indexed_row,
    leaf_values,
    stored_rows,
    subjects_json,
)
from gateway.audit.store import IndexedRow, NewLeaf, normalized_subjects

COLUMNS: IndexColumns = (
    1, "req-1", 1_700_000_000_000_000, "police.sh", "officer-7", "case-9", "query_account",
    "bank.icbc", "allowed", "", ("acct:1", "acct:2"), -1,
)  # fmt: skip
NO_SUBJECTS: IndexColumns = (*COLUMNS[:10], (), 4)


class TestRowMapping:
    def test_values_written_come_back_as_the_same_columns(self) -> None:
        leaves = [
            NewLeaf(4, b"leaf", b"hash", COLUMNS),
            NewLeaf(5, b"l2", b"h2", NO_SUBJECTS),
        ]
        values = leaf_values(leaves)
        assert values[0][:3] == (4, b"leaf", b"hash")
        assert values[0][-1] == '["acct:1", "acct:2"]'
        assert values[1][-1] == "[]"
        # Past the projection the subjects come from the leaf row's own column...
        rows = stored_rows(values, {}, projected_to=4)
        assert rows == [(4, b"leaf", b"hash", COLUMNS), (5, b"l2", b"h2", NO_SUBJECTS)]
        # ... below it from the subjects table, as the search finds them.
        subjects = group_subjects([(4, "acct:1")])
        rows = stored_rows(values, subjects, projected_to=6)
        assert rows[0][3][10] == ("acct:1",)
        assert rows[1] == (5, b"l2", b"h2", NO_SUBJECTS)

    def test_indexed_row_puts_the_subjects_before_the_request_index(self) -> None:
        hit = (4, *COLUMNS[:10], COLUMNS[11])
        assert indexed_row(hit, COLUMNS[10]) == IndexedRow(4, COLUMNS)


@given(st.lists(st.text(max_size=8), max_size=4))
@settings(max_examples=400)
def test_subjects_json_is_what_json_dumps_writes(subjects: list[str]) -> None:
    expected = json.dumps(normalized_subjects(subjects), ensure_ascii=False) if subjects else "[]"
    assert subjects_json(subjects) == expected
    assert json.loads(subjects_json(subjects)) == list(normalized_subjects(subjects))
