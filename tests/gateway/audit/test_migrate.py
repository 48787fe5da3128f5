"""``fedgate audit migrate``: a log written before tiles (no tiles, time blocks or rollups)
moves to the tiled layout, verified before and after; the gateway refuses it until then."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from fedgate.errors import AuditUnavailable
from gateway.audit.log import AuditLog
from tests.gateway.audit.test_tamper import Attacker, flip, run_audit
from tests.gateway.audit.test_tiled_log import ORIGIN, _reader

if TYPE_CHECKING:
    from conftest import LogFactory

SIZE = 1300
_DERIVED = ("tiles", "time_blocks", "rollup_day", "rollup_officer")


async def _pre_tile_log(logs: LogFactory) -> dict[str, list[Any]]:
    """A log as an older gateway left it; returns what the derived tables held."""
    log = await logs.open(max_batch=100)
    await asyncio.gather(*(log.append(logs.fed.request()) for _ in range(SIZE)))
    await log.close()
    attacker = Attacker(logs)
    try:
        if logs.kind == "postgres":
            for table in _DERIVED:
                attacker.run(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        before = {t: sorted(attacker.run(f"SELECT * FROM {t}")) for t in _DERIVED}
        for table in _DERIVED:
            attacker.run(f"DELETE FROM {table}")
        attacker.run("UPDATE projection_state SET value = ? WHERE name = 'rollups_from'", (SIZE,))
    finally:
        attacker.close()
    return before


def _derived(logs: LogFactory) -> dict[str, list[Any]]:
    attacker = Attacker(logs)
    try:
        return {t: sorted(attacker.run(f"SELECT * FROM {t}")) for t in _DERIVED}
    finally:
        attacker.close()


class TestMigrate:
    async def test_a_pre_tile_log_is_refused_then_migrated_and_verified(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        original = await _pre_tile_log(logs)
        store = await logs.store()
        try:
            with pytest.raises(AuditUnavailable, match="fedgate audit migrate"):
                await AuditLog.open(store=store, origin=ORIGIN, signer=logs.fed.log_signer())
        finally:
            await store.close()
        args = ["migrate", *logs.source_args(), "--federation", str(logs.fed.dir)]
        code, out = run_audit(args, capsys)
        assert code == 0, out
        assert out.count("OK") == 2
        assert f"{SIZE} entries, 5 tiles, 5 time blocks, rollups of {SIZE} entries" in out
        if logs.kind == "sqlite":  # and its key tiers (none: a tier is 262,144 entries)
            assert "key tiers: 0 of level 1 + 0 of level 2" in out
        assert _derived(logs) == original
        log = await logs.open()
        assert log.size == SIZE
        await log.append(logs.fed.request())
        await log.close()
        code, out = run_audit(args, capsys)  # again: nothing left to add
        assert code == 0, out
        assert "0 tiles, 0 time blocks, rollups of 0 entries" in out

    async def test_a_log_that_does_not_verify_is_left_alone(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await _pre_tile_log(logs)
        attacker = Attacker(logs)
        try:
            leaf = flip(bytes(attacker.run("SELECT leaf FROM leaves WHERE idx = 7")[0][0]), 30)
            attacker.run("UPDATE leaves SET leaf = ? WHERE idx = 7", (leaf,))
        finally:
            attacker.close()
        code, out = run_audit(
            ["migrate", *logs.source_args(), "--federation", str(logs.fed.dir)], capsys
        )
        assert code == 1
        assert "entry 7 was altered" in out
        assert "nothing changed" in out
        assert all(rows == [] for rows in _derived(logs).values())
        db = _reader(logs)
        try:
            assert db.tiles(0, 0, 10) == []
        finally:
            db.close()
