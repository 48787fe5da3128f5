"""Query-plan checks on PostgreSQL: which tables a statement reads, and how.

``scans`` runs ``EXPLAIN (FORMAT JSON)`` and lists every scan node with its relation. A plan
fails ``assert_indexed`` when it scans sequentially a relation holding rows (the planner may
seq-scan an empty partition, created ahead, at no cost: that is no scan of the log), or reads
leaf partitions other than the ones the query needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["Scan", "assert_indexed", "scans"]


@dataclass(frozen=True, slots=True)
class Scan:
    node: str  # "Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", ...
    relation: str  # "" for a Bitmap Index Scan (its Bitmap Heap Scan names the table)
    index: str


def scans(
    conn: psycopg.Connection[Any], statement: str | bytes, params: Sequence[Any] | dict[str, Any]
) -> list[Scan]:
    """The scan nodes of ``statement``'s plan, as the planner chose it for ``params``."""
    text = statement.encode() if isinstance(statement, str) else statement
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + text, params).fetchone()
    assert row is not None
    plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    found: list[Scan] = []

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node or "Index Name" in node:
            found.append(
                Scan(node["Node Type"], node.get("Relation Name", ""), node.get("Index Name", ""))
            )
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def _rows(conn: psycopg.Connection[Any], relation: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM " + _quoted(conn, relation) + " LIMIT 1) AS x"
    ).fetchone()
    return 0 if row is None else int(row[0])


def _quoted(conn: psycopg.Connection[Any], relation: str) -> str:
    row = conn.execute("SELECT quote_ident(%s)", (relation,)).fetchone()
    assert row is not None
    return str(row[0])


def assert_indexed(
    conn: psycopg.Connection[Any],
    found: Iterable[Scan],
    *,
    partitions: Iterable[str] | None = None,
) -> None:
    """Fail on a sequential scan of a relation that holds rows, and (when ``partitions`` is
    given) on a read of any ``leaves_y…`` partition not in it."""
    found = list(found)
    shown = "\n".join(f"{s.node} on {s.relation} {s.index}" for s in found)
    for s in found:
        if s.node == "Seq Scan" and _rows(conn, s.relation):
            raise AssertionError(f"sequential scan of {s.relation}:\n{shown}")
    if partitions is not None:
        allowed = set(partitions)
        read = {s.relation for s in found if s.relation.startswith("leaves_y")}
        assert read <= allowed, f"reads partitions {sorted(read - allowed)}:\n{shown}"
