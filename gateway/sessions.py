"""Console logouts shared by every gateway instance on one PostgreSQL database.

A console session is a signed cookie (``fedgate.web.session``): any instance holding the
session key accepts it. With ``[shared] store = "postgres"`` the instances keep their logouts
in one table (schema ``<shared schema>_sessions``), so that a cookie logged out through one
instance is refused by every other at its next request, not only by the instance that saw the
logout. A revocation is kept until the session would have expired anyway, then pruned.

Contract: ``is_revoked`` reads the table on every call (no cache: a logout MUST take effect at
once everywhere); a database failure raises ``AuditUnavailable`` and the console refuses the
request (fail closed).
"""

from __future__ import annotations

from typing import Final

from fedgate.storage import Schema
from gateway.shared import PgPool

__all__ = ["PgRevocations"]

_PG_STORE = Schema(
    store="shared console logouts",
    version=1,
    create="""
CREATE TABLE IF NOT EXISTS revoked_sessions (
    sid      TEXT PRIMARY KEY,
    until_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_sessions_by_expiry ON revoked_sessions (until_us);
""",
)
_REVOKE: Final = (
    "INSERT INTO revoked_sessions (sid, until_us) VALUES (%s, %s)"
    " ON CONFLICT (sid) DO UPDATE SET until_us = GREATEST(revoked_sessions.until_us,"
    " excluded.until_us)"
)
_PRUNE: Final = "DELETE FROM revoked_sessions WHERE until_us <= %s"
_REVOKED: Final = "SELECT 1 FROM revoked_sessions WHERE sid = %s AND until_us > %s"


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class PgRevocations:
    """``fedgate.web.session.Revocations`` in PostgreSQL; see the module docstring."""

    def __init__(self, *, dsn: str, schema: str, connections: int = 2) -> None:
        self._pool = PgPool(
            dsn=dsn,
            schema=schema,
            store=_PG_STORE,
            what="shared console logouts",
            connections=connections,
        )

    async def revoke(self, sid: str, *, until: float, now: float) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(_PRUNE, (_us(now),))
            await conn.execute(_REVOKE, (sid, _us(until)))

    async def is_revoked(self, sid: str, *, now: float) -> bool:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_REVOKED, (sid, _us(now)))).fetchone()
        return row is not None

    def close(self) -> None:
        self._pool.close()
