"""Tamper detection: an attacker with write access to the database (triggers dropped or
disabled) changes the log; ``fedgate audit verify`` fails and names the entry, on both stores."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from fedgate.errors import AuditUnavailable
from gateway.audit.cli import register
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CommitBatch

if TYPE_CHECKING:
    from conftest import LogFactory


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


class Attacker:
    """Raw SQL on the log's database with the append-only triggers out of the way."""

    def __init__(self, logs: LogFactory) -> None:
        self.kind = logs.kind
        if logs.kind == "sqlite":
            self.lite = sqlite3.connect(logs.db, isolation_level=None)
            for (name,) in self.lite.execute("SELECT name FROM sqlite_master WHERE type='trigger'"):
                self.lite.execute(f"DROP TRIGGER {name}")
        else:
            assert logs.pg is not None
            self.pg = psycopg.connect(logs.pg.dsn, autocommit=True)
            self.pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(logs.pg.schema)))
            for table in ("leaves", "subjects", "checkpoints", "cosigned", "tiles", "heads"):
                self.pg.execute(
                    sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table))
                )

    def run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            return self.lite.execute(statement, params).fetchall()
        cur = self.pg.execute(statement.replace("?", "%s").encode(), params)
        return cur.fetchall() if cur.description else []

    def leaf(self, idx: int) -> bytes:
        return bytes(self.run("SELECT leaf FROM leaves WHERE idx = ?", (idx,))[0][0])

    def close(self) -> None:
        if self.kind == "sqlite":
            self.lite.close()
        else:
            self.pg.close()


async def build_log(logs: LogFactory, *, both_cosigned: bool = False) -> None:
    """Eight exchanges and a refusal, appended one by one (one batch per entry: the store keeps
    the empty tree's checkpoint and the head of size 17), with two witnesses cosigning.
    ``both_cosigned``: close only once a checkpoint carries both witnesses' cosignatures (they
    cosign in the background, and the close cancels a round in flight on a loaded machine)."""
    fed = logs.fed
    witnesses = [fed.witness(w, logs.tmp / f"{w}.json") for w in ("pboc.gz", "audit.office")]  # type: ignore[arg-type]
    log = await logs.open(witnesses=witnesses)
    for i in range(8):
        request = fed.request()
        receipt = await log.append(request)
        await log.append(
            fed.response(request, receipt.index, status="ok" if i % 3 else "not_found")
        )
    await log.append(fed.request(decision="refused"))
    deadline = asyncio.get_running_loop().time() + 10.0
    while both_cosigned and not all(
        f"\u2014 {w} " in (log.latest_cosigned_checkpoint() or "")
        for w in ("pboc.gz", "audit.office")
    ):
        assert asyncio.get_running_loop().time() < deadline, log.latest_cosigned_checkpoint()
        await asyncio.sleep(0.01)
    await log.close()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def leaf_byte(a: Attacker) -> None:
    a.run("UPDATE leaves SET leaf = ? WHERE idx = 5", (flip(a.leaf(5), 40),))


def leaf_and_hash(a: Attacker) -> None:
    leaf = flip(a.leaf(6), 60)
    a.run(
        "UPDATE leaves SET leaf = ?, leaf_hash = ? WHERE idx = 6",
        (leaf, hashlib.sha256(b"\x00" + leaf).digest()),
    )


def delete_row(a: Attacker) -> None:
    a.run("DELETE FROM leaves WHERE idx = 7")


def swap_rows(a: Attacker) -> None:
    a.run("UPDATE leaves SET idx = 1000 WHERE idx = 3")
    a.run("UPDATE leaves SET idx = 3 WHERE idx = 9")
    a.run("UPDATE leaves SET idx = 9 WHERE idx = 1000")


def swap_entries_keep_index_rows(a: Attacker) -> None:
    four, eight = a.leaf(4), a.leaf(8)
    for idx, leaf in ((4, eight), (8, four)):
        a.run(
            "UPDATE leaves SET leaf = ?, leaf_hash = ? WHERE idx = ?",
            (leaf, hashlib.sha256(b"\x00" + leaf).digest(), idx),
        )


def truncate(a: Attacker) -> None:
    a.run("DELETE FROM leaves WHERE idx >= 10")


def replace_checkpoint(a: Attacker) -> None:
    (note,) = a.run("SELECT note FROM checkpoints WHERE size = 0")[0]
    a.run("UPDATE heads SET note = ? WHERE kind = 'signed'", (note,))


def forge(note: str) -> str:
    body, signature = note.split("\n\n")
    *head, last = signature.rstrip("\n").split(" ")
    forged = last[:-6] + ("AAAAAA" if last[-6:] != "AAAAAA" else "BBBBBB")
    return f"{body}\n\n{' '.join(head)} {forged}\n"


def forge_checkpoint_signature(a: Attacker) -> None:
    (note,) = a.run("SELECT note FROM heads WHERE kind = 'signed'")[0]
    a.run("UPDATE heads SET note = ? WHERE kind = 'signed'", (forge(note),))


def forge_kept_checkpoint_signature(a: Attacker) -> None:
    (note,) = a.run("SELECT note FROM checkpoints WHERE size = 0")[0]
    a.run("UPDATE checkpoints SET note = ? WHERE size = 0", (forge(note),))


def index_column(a: Attacker) -> None:
    a.run("UPDATE leaves SET officer_id = 'someone-else' WHERE idx = 2")


def delete_index_subject(a: Attacker) -> None:
    a.run("DELETE FROM subjects WHERE idx = 1")


TAMPERING: list[tuple[Callable[[Attacker], None], str | re.Pattern[str]]] = [
    (leaf_byte, "entry 5 was altered"),
    # the head or the cosigned head (size 16 or 17: "entry 16 does" or "entries 0..16 do")
    (leaf_and_hash, re.compile(r"(does|do) not match")),
    (delete_row, "entry 7 is missing"),
    (swap_rows, "entry 3"),
    (swap_entries_keep_index_rows, "entry 4"),
    (truncate, "truncated"),
    (replace_checkpoint, "checkpoint stored at size 17 is for"),
    (forge_checkpoint_signature, "checkpoint at size 17 is not signed by the log's key"),
    (forge_kept_checkpoint_signature, "checkpoint at size 0 is not signed by the log's key"),
    (index_column, "entry 2: its search index row does not match the entry (officer_id)"),
    (delete_index_subject, "entry 1: its search index row does not match the entry (subjects)"),
]


class TestVerifyCatchesTampering:
    async def test_the_untouched_log_verifies_with_every_signature(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await build_log(logs, both_cosigned=True)
        code, out = run_audit(
            ["verify", *logs.source_args(), "--federation", str(logs.fed.dir)], capsys
        )
        assert code == 0, out
        assert "OK" in out
        assert "8 allowed requests, 8 responses verified" in out
        assert "refused requests: 1 signed" in out
        assert "pboc.gz" in out
        assert "audit.office" in out

    @pytest.mark.parametrize(("tamper", "named"), TAMPERING, ids=[t.__name__ for t, _ in TAMPERING])
    async def test_tampering_fails_verify_naming_the_entry(
        self,
        logs: LogFactory,
        capsys: pytest.CaptureFixture[str],
        tamper: Callable[[Attacker], None],
        named: str | re.Pattern[str],
    ) -> None:
        await build_log(logs)
        attacker = Attacker(logs)
        try:
            tamper(attacker)
        finally:
            attacker.close()
        code, out = run_audit(
            ["verify", *logs.source_args(), "--federation", str(logs.fed.dir), "--no-signatures"],
            capsys,
        )
        assert code == 1, out
        assert "FAILED" in out
        assert named.search(out) if isinstance(named, re.Pattern) else named in out, out


class TestTheDatabaseRefusesEdits:
    """The triggers (and on PostgreSQL the grants) stop edits made through SQL."""

    async def test_updates_and_deletes_are_refused(self, logs: LogFactory) -> None:
        await build_log(logs)
        if logs.kind == "sqlite":
            con = sqlite3.connect(logs.db, isolation_level=None)
            for statement in (
                "UPDATE leaves SET leaf = x'00' WHERE idx = 1",
                "DELETE FROM leaves WHERE idx = 1",
                "DELETE FROM checkpoints",
                "UPDATE cosigned SET note = ''",
                "DELETE FROM subjects",
            ):
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    con.execute(statement)
            with pytest.raises(sqlite3.DatabaseError, match="only moves forward"):
                con.execute("UPDATE heads SET size = 3, note = '' WHERE kind = 'signed'")
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                con.execute("DELETE FROM heads")
            con.close()
            return
        assert logs.pg is not None
        with psycopg.connect(logs.pg.dsn, autocommit=True) as con:
            con.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(logs.pg.schema)))
            for statement in (
                b"UPDATE leaves SET leaf = '\\x00' WHERE idx = 1",
                b"DELETE FROM leaves WHERE idx = 1",
                b"TRUNCATE leaves",
                b"DELETE FROM checkpoints",
                b"UPDATE cosigned SET note = ''",
            ):
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    con.execute(statement)
            for statement in (
                b"UPDATE heads SET size = 3, note = '' WHERE kind = 'signed'",
                b"DELETE FROM heads",
                b"TRUNCATE heads",
            ):
                with pytest.raises(psycopg.errors.RaiseException, match="only moves forward"):
                    con.execute(statement)
            grants = con.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE grantee = 'PUBLIC' AND table_schema = %s",
                (logs.pg.schema,),
            ).fetchall()
            assert not {"UPDATE", "DELETE", "TRUNCATE"} & {g[0] for g in grants}

    async def test_a_commit_that_does_not_continue_the_log_is_refused(
        self, logs: LogFactory
    ) -> None:
        await build_log(logs)
        if logs.kind == "sqlite":
            db: SqliteDatabase | PgDatabase = SqliteDatabase(logs.db, origin=None, writer=True)
        else:
            assert logs.pg is not None
            db = PgDatabase(
                logs.pg.dsn,
                origin="fedgate.test/gateway/shard-0",
                schema=logs.pg.schema,
                writer=True,
            )
        try:
            with pytest.raises(AuditUnavailable, match="next index is 17"):
                db.commit(CommitBatch((), 3, "x"))
        finally:
            db.close()
