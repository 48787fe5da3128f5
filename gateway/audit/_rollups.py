"""Rollups for the auditor console: per-day counts kept up to date as legs are committed.

The console's charts (request legs per day by requesting member, target member and action;
refusals by stable reason) and its pattern flags (an officer's requests per day, off-hours
requests, refusals per officer-day) would otherwise aggregate millions of leaves per page.
Instead each commit adds its batch's counts to two small tables, in the same transaction as the
leaves (so a rollup is never ahead of or behind the log), and the console reads hundreds to
thousands of rows:

- ``rollup_day (day, dim, key, n)``: ``dim`` is ``requester``, ``target`` or ``action`` (request
  legs) or ``refusal`` (refused request legs by the rule's code before the colon, refused
  response legs as ``AGENCY_REFUSED``).
- ``rollup_officer (day, hour, member, officer, action, leg, outcome, n, first_idx)``: request
  and response legs that name an officer, by China-time day and hour.

Days and hours are China Standard Time (UTC+8), as in ``insights``. The rollups are a
projection of the log: ``fedgate audit migrate`` rebuilds them for a log written without them,
and they are not append-only (counts are added to). ``projection_state`` says what they cover:
every entry from ``rollups_from`` on (the size when a writer first opened the log with
rollups), and the entries before it up to ``rollups_backfilled`` (``migrate`` moves it on
chunk by chunk, each chunk in one transaction, so a stopped migration resumes without counting
anything twice). SQL text is fixed; values are parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gateway.audit.store import NewLeaf

__all__ = [
    "DDL_PG",
    "DDL_SQLITE",
    "DIMENSIONS",
    "day_rows",
    "officer_rows",
    "sqlite_range_upserts",
    "upserts",
]

_US_PER_HOUR: Final = 3_600_000_000
_CST_US: Final = 8 * _US_PER_HOUR
DIMENSIONS: Final = ("requester", "target", "action", "refusal")

DDL_SQLITE: Final = """
CREATE TABLE IF NOT EXISTS projection_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS rollup_day (
    day INTEGER NOT NULL,
    dim TEXT NOT NULL,
    key TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (day, dim, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_officer (
    day INTEGER NOT NULL,
    member TEXT NOT NULL,
    officer TEXT NOT NULL,
    hour INTEGER NOT NULL,
    action TEXT NOT NULL,
    leg INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    first_idx INTEGER NOT NULL,
    PRIMARY KEY (day, member, officer, hour, action, leg, outcome)
) STRICT, WITHOUT ROWID;
"""

DDL_PG: Final = """
CREATE TABLE IF NOT EXISTS projection_state (
    origin TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (origin, name)
);
CREATE TABLE IF NOT EXISTS rollup_day (
    origin TEXT NOT NULL,
    day INTEGER NOT NULL,
    dim TEXT NOT NULL,
    key TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (origin, day, dim, key)
);
CREATE TABLE IF NOT EXISTS rollup_officer (
    origin TEXT NOT NULL,
    day INTEGER NOT NULL,
    member TEXT NOT NULL,
    officer TEXT NOT NULL,
    hour SMALLINT NOT NULL,
    action TEXT NOT NULL,
    leg SMALLINT NOT NULL,
    outcome TEXT NOT NULL,
    n BIGINT NOT NULL,
    first_idx BIGINT NOT NULL,
    PRIMARY KEY (origin, day, member, officer, hour, action, leg, outcome)
);
"""

_UPSERT_DAY: Final = (
    "INSERT INTO rollup_day ({o}day, dim, key, n) VALUES ({p}?, ?, ?, ?)"
    " ON CONFLICT ({o}day, dim, key) DO UPDATE SET n = rollup_day.n + excluded.n"
)
_UPSERT_OFFICER: Final = (
    "INSERT INTO rollup_officer ({o}day, member, officer, hour, action, leg, outcome, n,"
    " first_idx) VALUES ({p}?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT ({o}day, member, officer, hour, action, leg, outcome) DO UPDATE SET"
    " n = rollup_officer.n + excluded.n,"
    " first_idx = LEAST(rollup_officer.first_idx, excluded.first_idx)"
)


def upserts(*, pg: bool) -> tuple[str, str]:
    """The two upsert statements (day, officer) in SQLite's or PostgreSQL's dialect; on
    PostgreSQL each row starts with the shard's origin."""
    o, p = ("origin, ", "?, ") if pg else ("", "")
    day, officer = (s.format(o=o, p=p) for s in (_UPSERT_DAY, _UPSERT_OFFICER))
    if pg:
        return day.replace("?", "%s"), officer.replace("?", "%s")
    # SQLite spells the two-argument minimum MIN.
    return day, officer.replace("LEAST(", "MIN(")


# The same counts computed by SQLite over a range of rows, ``(start, stop)`` by index, read from
# ``{table}`` (``leaves`` or the projection's ``search_rows``): no row comes into Python. ``//``
# and ``%`` are spelled as floor division and a non-negative remainder, as in Python.
_FLOOR_DIV = "(({x}) - ((({x}) % {d}) + {d}) % {d}) / {d}"
_DAY_OF = _FLOOR_DIV.format(x=f"time_us + {_CST_US}", d=24 * _US_PER_HOUR)
_HOUR_OF = _FLOOR_DIV.format(x=f"time_us + {_CST_US}", d=_US_PER_HOUR)
_SQLITE_DAY: Final = (
    "INSERT INTO rollup_day (day, dim, key, n)"
    " SELECT day, dim, key, COUNT(*) FROM ("
    " SELECT {day} AS day, 'requester' AS dim, requesting_agency AS key FROM {table}"
    " WHERE idx >= ?1 AND idx < ?2 AND leg = 1"
    " UNION ALL SELECT {day}, 'target', target_agency FROM {table}"
    " WHERE idx >= ?1 AND idx < ?2 AND leg = 1"
    " UNION ALL SELECT {day}, 'action', action FROM {table}"
    " WHERE idx >= ?1 AND idx < ?2 AND leg = 1"
    " UNION ALL SELECT {day}, 'refusal', CASE WHEN leg = 2 THEN 'AGENCY_REFUSED'"
    " ELSE COALESCE(NULLIF(substr(reason, 1, instr(reason || ':', ':') - 1), ''), 'UNKNOWN')"
    " END FROM {table} WHERE idx >= ?1 AND idx < ?2 AND leg IN (1, 2) AND outcome = 'refused'"
    ") WHERE 1 = 1 GROUP BY day, dim, key"
    " ON CONFLICT (day, dim, key) DO UPDATE SET n = rollup_day.n + excluded.n"
)
_SQLITE_OFFICER: Final = (
    "INSERT INTO rollup_officer (day, member, officer, hour, action, leg, outcome, n, first_idx)"
    " SELECT {hour_day}, requesting_agency, officer_id, {hour_of_day}, action, leg, outcome,"
    " COUNT(*), MIN(idx) FROM (SELECT {hour} AS h, * FROM {table}"
    " WHERE idx >= ?1 AND idx < ?2 AND leg IN (1, 2) AND officer_id <> '')"
    " WHERE 1 = 1 GROUP BY 1, 2, 3, 4, 5, 6, 7"
    " ON CONFLICT (day, member, officer, hour, action, leg, outcome) DO UPDATE SET"
    " n = rollup_officer.n + excluded.n,"
    " first_idx = MIN(rollup_officer.first_idx, excluded.first_idx)"
)


def sqlite_range_upserts(table: str) -> tuple[str, str]:
    """The day and officer upserts of the entries ``[?1, ?2)`` read from ``table``
    (``leaves`` or ``search_rows``: a constant, never input), in SQLite's dialect."""
    if table not in ("leaves", "search_rows"):
        raise ValueError(f"rollups are counted from leaves or search_rows, not {table!r}")
    day = _SQLITE_DAY.format(day=_DAY_OF, table=table)
    officer = _SQLITE_OFFICER.format(
        hour=_HOUR_OF,
        hour_day=_FLOOR_DIV.format(x="h", d=24),
        hour_of_day="((h % 24) + 24) % 24",
        table=table,
    )
    return day, officer


def _code(leg: int, reason: str) -> str:
    if leg == 2:
        return "AGENCY_REFUSED"
    return reason.split(":", 1)[0] or "UNKNOWN"


def day_rows(leaves: Sequence[NewLeaf]) -> list[tuple[int, str, str, int]]:
    """The batch's ``(day, dim, key, n)`` counts."""
    counts: dict[tuple[int, str, str], int] = {}
    for leaf in leaves:
        c = leaf.columns
        leg = c[0]
        day = (c[2] + _CST_US) // (24 * _US_PER_HOUR)
        keys: list[tuple[str, str]] = []
        if leg == 1:
            keys += [("requester", c[3]), ("target", c[7]), ("action", c[6])]
        if leg in (1, 2) and c[8] == "refused":
            keys.append(("refusal", _code(leg, c[9])))
        for dim, key in keys:
            counts[(day, dim, key)] = counts.get((day, dim, key), 0) + 1
    return [(d, dim, key, n) for (d, dim, key), n in counts.items()]


def officer_rows(
    leaves: Sequence[NewLeaf],
) -> list[tuple[int, str, str, int, str, int, str, int, int]]:
    """The batch's ``(day, member, officer, hour, action, leg, outcome, n, first_idx)``."""
    counts: dict[tuple[int, str, str, int, str, int, str], list[int]] = {}
    for leaf in leaves:
        c = leaf.columns
        if c[0] not in (1, 2) or not c[4]:
            continue
        hours = (c[2] + _CST_US) // _US_PER_HOUR
        key = (hours // 24, c[3], c[4], hours % 24, c[6], c[0], c[8])
        found = counts.get(key)
        if found is None:
            counts[key] = [1, leaf.index]
        else:
            found[0] += 1
    return [(*k, n, first) for k, (n, first) in counts.items()]
