"""Row <-> value mapping shared by the audit stores.

Both databases keep the same columns for a leaf; only the SQL dialect (placeholders, the
PostgreSQL ``origin`` key) differs, and that stays in each store. What is here is the part that
is the same: which value goes in which column on the way in, how a result row becomes a
``StoredRow``, ``IndexedRow`` or ``StoredLog`` on the way out (the search query is in
``_search``). The mappers index tuples explicitly: they run once per leaf on the commit and
verification paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from fedgate.auditverify import normalized_subjects
from gateway.audit.store import IndexedRow, NewLeaf, StoredLog, StoredRow

__all__ = [
    "COLUMNS",
    "LEAF_COLUMNS",
    "PROJECTED_COLUMNS",
    "LeafValues",
    "group_subjects",
    "indexed_row",
    "leaf_values",
    "stored_log",
    "stored_rows",
    "subjects_json",
]

COLUMNS = (
    "leg, request_id, time_us, requesting_agency, officer_id, case_number, action,"
    " target_agency, outcome, reason"
)
"""The searchable columns ``IndexColumns[0:10]``, in that order."""

LEAF_COLUMNS = f"idx, leaf, leaf_hash, {COLUMNS}, request_leaf_index, subjects"
"""A stored leaf's columns, in ``LeafValues`` and ``stored_rows`` order."""

PROJECTED_COLUMNS = f"idx, {COLUMNS}, request_leaf_index"
"""The columns of the search projection ``search_rows`` (the leaf's, without its bytes)."""

LeafValues = tuple[int, bytes, bytes, int, str, int, str, str, str, str, str, str, str, int, str]
"""One leaf's values in ``LEAF_COLUMNS`` order: its normalized subjects as a JSON array (the
search projection copies them into the ``subjects`` table)."""


def leaf_values(leaves: Sequence[NewLeaf]) -> list[LeafValues]:
    """The ``LEAF_COLUMNS`` values of each leaf of a batch."""
    return [
        (
            n.index,
            n.data,
            n.leaf_hash,
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6],
            c[7],
            c[8],
            c[9],
            c[11],
            subjects_json(c[10]),
        )
        for n in leaves
        for c in (n.columns,)
    ]


_QUOTE = json.encoder.encode_basestring  # the C quoting ``json.dumps`` uses (ensure_ascii off)


def subjects_json(subjects: Sequence[str]) -> str:
    """The leaf row's ``subjects`` column: the normalized subjects as a JSON array, exactly as
    ``json.dumps(..., ensure_ascii=False)`` writes it (built from the C quoting function: this
    runs once per leaf on the commit path, where ``json.dumps`` cost ~3 us)."""
    if not subjects:
        return "[]"
    return "[" + ", ".join([_QUOTE(s) for s in normalized_subjects(subjects)]) + "]"


def stored_rows(
    rows: Iterable[Sequence[Any]], subjects: dict[int, list[str]], projected_to: int
) -> list[StoredRow]:
    """``StoredRow``s of ``SELECT {LEAF_COLUMNS}`` rows. The subjects of a leaf below
    ``projected_to`` are its ``subjects`` table rows (grouped, as the search finds them), of a
    leaf above it the leaf row's own JSON column (the projection has not copied it yet)."""
    out: list[StoredRow] = []
    empty: tuple[str, ...] = ()
    for r in rows:
        if r[0] < projected_to:
            s = subjects.get(r[0])
            found = empty if s is None else tuple(s)
        else:
            found = tuple(json.loads(r[14])) if r[14] != "[]" else empty
        out.append(
            (
                r[0],
                r[1],
                r[2],
                (r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], found, r[13]),
            )
        )
    return out


def group_subjects(rows: Iterable[Sequence[Any]]) -> dict[int, list[str]]:
    """``(idx, subject)`` rows, already in order, grouped by leaf index."""
    subjects: dict[int, list[str]] = {}
    for idx, subject in rows:
        subjects.setdefault(idx, []).append(subject)
    return subjects


def indexed_row(r: Sequence[Any], subjects: tuple[str, ...]) -> IndexedRow:
    """The ``IndexedRow`` of a ``SELECT idx, {COLUMNS}, request_leaf_index`` row."""
    return IndexedRow(
        r[0], (r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], subjects, r[11])
    )


def stored_log(
    origin: str,
    edge_hashes: list[bytes],
    tile_count: int,
    next_index: int,
    checkpoint: Sequence[Any] | None,
    cosigned: Sequence[Any] | None,
) -> StoredLog:
    """The ``StoredLog`` of the edge's leaf hashes and the latest ``(size, note)`` rows."""
    return StoredLog(
        origin=origin,
        edge_hashes=edge_hashes,
        tile_count=tile_count,
        next_index=next_index,
        checkpoint=None if checkpoint is None else checkpoint[1],
        checkpoint_size=0 if checkpoint is None else checkpoint[0],
        cosigned=None if cosigned is None else cosigned[1],
        cosigned_size=0 if cosigned is None else cosigned[0],
    )
