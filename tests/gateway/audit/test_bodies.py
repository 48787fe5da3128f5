"""Encrypted bodies beside the leaves: nothing personal at rest in clear, reveal only through the
vault, crypto-shredding that leaves the log and earlier bundles verifiable (both stores)."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from fedgate.audit_entry import EventEntry, RequestLeg, decode_entry, encode_entry
from fedgate.auditverify import VerifyOptions, verify_log
from fedgate.envelope import decode_request
from fedgate.errors import KeyUnavailable, NotFound
from fedgate.evidence import log_verifiers, verify_bundle, witness_verifiers
from fedgate.kek import write_kek_file
from fedgate.sealed import matches
from fedgate.v1 import envelope_pb2
from gateway.audit._bodies import BLIND_PREFIX, BodyDeleted, BodyVault
from gateway.audit._keys import FileKeyWrapper
from gateway.audit._retention import KEY_DESTROYED_EVENT, RetentionPolicy, run_retention
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import PgDatabase
from gateway.audit.service import export_evidence
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import SearchQuery

from .conftest import ORIGIN, LogFactory

if TYPE_CHECKING:
    from fedgate.v1 import request_pb2


def kek(tmp: Path, name: str = "kek") -> FileKeyWrapper:
    path = tmp / name
    write_kek_file(path)
    return FileKeyWrapper.load(path)


def open_vault(logs: LogFactory, wrapper: FileKeyWrapper) -> BodyVault:
    if logs.kind == "sqlite":
        return BodyVault.open_sqlite(logs.db, wrapper=wrapper, origin=ORIGIN)
    assert logs.pg is not None
    return BodyVault.open_pg(logs.pg.dsn, schema=logs.pg.schema, wrapper=wrapper, origin=ORIGIN)


async def sealed_log(logs: LogFactory, wrapper: FileKeyWrapper, **kw: object) -> AuditLog:
    log = await logs.open(**kw)  # the store creates its tables, then the vault adds its own
    log._vault = open_vault(logs, wrapper)
    return log


def raw_bytes(logs: LogFactory) -> bytes:
    """Everything the database holds: the SQLite file and its WAL, or every row of every table
    of the PostgreSQL schema as text."""
    if logs.kind == "sqlite":
        return b"".join(
            p.read_bytes() for p in logs.db.parent.iterdir() if p.name.startswith(logs.db.name)
        )
    assert logs.pg is not None
    out = []
    with psycopg.connect(logs.pg.dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (logs.pg.schema,),
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} AS t").format(
                sql.Identifier(logs.pg.schema), sql.Identifier(table)
            )
            out += [r[0].encode() for r in conn.execute(query).fetchall()]
    return b"\n".join(out)


def identifiers(request: request_pb2.Request, subjects: tuple[str, ...]) -> list[bytes]:
    """The personal identifiers of a request: its subjects and the officer's ID and phone."""
    values = [*subjects, request.officer.id_number, request.officer.phone]
    values = [v for v in values if v]
    assert len(values) >= 2
    # bytea and BLOB text renderings too: hex of the UTF-8 bytes.
    return [v.encode() for v in values] + [v.encode().hex().encode() for v in values]


def the_request(leg: RequestLeg) -> request_pb2.Request:
    return decode_request(envelope_pb2.SignedEnvelope.FromString(leg.envelope).body)


class TestSealedAtRest:
    async def test_the_raw_database_holds_no_identifier_of_an_exchange(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        log = await sealed_log(logs, kek(tmp_path))
        request = logs.fed.request()
        receipt = await log.append(request)
        await log.append(logs.fed.response(request, receipt.index))
        await log.append(
            EventEntry(
                "console_reveal",
                "auditor.1",
                "audit.office",
                logs.fed.now,
                (("reason", f"checking account {request.subjects[0]}"),),
            )
        )
        await log.close()
        raw = raw_bytes(logs)
        assert request.request_id.encode() in raw  # the test reads the right database
        for value in identifiers(the_request(request), request.subjects):
            assert value not in raw, value

    async def test_the_leaf_commits_to_the_envelope_and_search_finds_the_blind_subject(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        log = await sealed_log(logs, kek(tmp_path))
        request = logs.fed.request()
        receipt = await log.append(request)
        stored = decode_entry(await log.get_entry(receipt.index))
        assert isinstance(stored, RequestLeg)
        assert matches(stored.envelope, request.envelope)
        assert all(s.startswith(BLIND_PREFIX) for s in stored.subjects)
        assert await log.open_entry(receipt.index) == encode_entry(request)
        hits = await log.search(SearchQuery(subject=request.subjects[0]))
        assert [h.index for h in hits] == [receipt.index]

    async def test_an_entry_without_personal_data_has_no_body(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        log = await sealed_log(logs, kek(tmp_path))
        event = EventEntry("console_login", "auditor.1", "audit.office", logs.fed.now)
        receipt = await log.append(event)
        assert await log.get_entry(receipt.index) == encode_entry(event)
        assert log.vault is not None
        with pytest.raises(NotFound, match="no sealed body"):
            log.vault.open(encode_entry(event))


class TestKeys:
    async def test_the_key_cache_is_bounded_and_a_returning_case_keeps_its_key(
        self, logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("gateway.audit._bodies._KEYS_KEPT", 2)
        log = await sealed_log(logs, kek(tmp_path))
        requests = [
            dataclasses.replace(logs.fed.request(), case_number=f"case-{i}") for i in range(6)
        ]
        receipts = [await log.append(r) for r in requests]  # one batch each: six cases' keys
        assert log.vault is not None
        assert len(log.vault._keys) <= 3  # the bound, plus the batch being prepared
        # the first case again, after its key left the cache: read back, not made anew
        answer = await log.append(logs.fed.response(requests[0], receipts[0].index))
        for receipt, entry in [*zip(receipts, requests, strict=True), (answer, None)]:
            opened = await log.open_entry(receipt.index)
            if entry is not None:
                assert opened == encode_entry(entry)
        await log.close()

    def test_a_missing_kek_file_fails_closed(self, tmp_path: Path) -> None:
        with pytest.raises(KeyUnavailable, match=r"no key-encryption key at .*init-kek"):
            FileKeyWrapper.load(tmp_path / "absent")

    def test_a_kek_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "kek"
        write_kek_file(path)
        os.chmod(path, 0o644)
        with pytest.raises(KeyUnavailable, match=r"readable by others .*chmod 600"):
            FileKeyWrapper.load(path)

    def test_a_malformed_kek_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "kek"
        path.write_text("not a key\n")
        path.chmod(0o600)
        with pytest.raises(KeyUnavailable, match="is not a fedgate key-encryption key"):
            FileKeyWrapper.load(path)

    def test_the_kek_file_is_created_once_and_owner_only(self, tmp_path: Path) -> None:
        path = tmp_path / "keys" / "kek"
        assert write_kek_file(path) is True
        first = path.read_bytes()
        assert write_kek_file(path) is False
        assert path.read_bytes() == first
        assert path.stat().st_mode & 0o777 == 0o600

    async def test_a_log_sealed_under_another_kek_fails_closed(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        log = await sealed_log(logs, kek(tmp_path, "right"))
        await log.append(logs.fed.request())
        await log.close()
        with pytest.raises(KeyUnavailable, match="sealed under key-encryption key"):
            open_vault(logs, kek(tmp_path, "wrong"))

    async def test_a_wrapped_key_does_not_unwrap_under_another_context(
        self, tmp_path: Path
    ) -> None:
        wrapper = kek(tmp_path)
        wrapped = wrapper.wrap(b"k" * 32, context=b"case A")
        assert wrapper.unwrap(wrapped, context=b"case A") == b"k" * 32
        with pytest.raises(KeyUnavailable, match="does not unwrap"):
            wrapper.unwrap(wrapped, context=b"case B")


class TestRetention:
    async def test_shredding_a_case_leaves_the_log_and_earlier_bundles_verifiable(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        fed = logs.fed
        log = await sealed_log(logs, kek(tmp_path), witnessed=True)
        request = fed.request()
        receipt = await log.append(request)
        response = fed.response(request, receipt.index)
        answer = await log.append(response)
        await logs.cosigned(log)
        bundle = await export_evidence(log, answer.index)
        assert log.vault is not None
        assert log.vault.open(await log.get_entry(receipt.index)) == encode_entry(request)

        policy = RetentionPolicy(
            close_after_idle=timedelta(days=365), keep_after_close=timedelta(days=1095)
        )
        too_early = datetime.now(UTC) + timedelta(days=1000)
        assert await run_retention(log, log.vault, policy, actor="gateway", now=too_early) == []
        later = datetime.now(UTC) + timedelta(days=1461)
        destroyed = await run_retention(log, log.vault, policy, actor="gateway", now=later)
        assert destroyed == [request.case_number]

        for index in (receipt.index, answer.index):
            stored = await log.get_entry(index)
            deleted = f"deleted on {later.date()} under retention rule {policy.rule}"
            with pytest.raises(BodyDeleted, match=re.escape(deleted)):
                log.vault.open(stored)
            assert await log.open_entry(index) == stored  # nothing but the sealed leaf is left
        event = decode_entry(await log.get_entry(log.size - 1))
        assert isinstance(event, EventEntry)
        assert event.kind == KEY_DESTROYED_EVENT
        assert ("case", request.case_number) in event.detail
        await logs.cosigned(log)
        await log.close()

        registry = fed.registry
        opener = (
            (lambda: SqliteDatabase(logs.db, origin=None, writer=False))
            if logs.kind == "sqlite"
            else (
                lambda: PgDatabase(
                    logs.pg.dsn,
                    origin=ORIGIN,
                    schema=logs.pg.schema,  # type: ignore[union-attr]
                    writer=False,
                )
            )
        )
        report = verify_log(
            opener,
            log_keys=log_verifiers(registry, ORIGIN),
            witnesses=witness_verifiers(registry),
            options=VerifyOptions(federation=fed.dir),
        )
        assert report.ok, report.failure
        assert report.signatures is not None
        assert report.signatures.sealed == 2
        checked = verify_bundle(bundle, registry)
        assert any("sealed" in line for line in checked.checks)

    async def test_a_case_that_comes_back_after_shredding_gets_a_new_key(
        self, sqlite_logs: LogFactory, tmp_path: Path
    ) -> None:
        log = await sealed_log(sqlite_logs, kek(tmp_path))
        first = sqlite_logs.fed.request()
        await log.append(first)
        assert log.vault is not None
        later = datetime.now(UTC) + timedelta(days=5000)
        await run_retention(log, log.vault, RetentionPolicy(), actor="gateway", now=later)
        again = dataclasses.replace(sqlite_logs.fed.request(), case_number=first.case_number)
        receipt = await log.append(again)
        assert await log.open_entry(receipt.index) == encode_entry(again)
        key = log.vault.case_key(f"{first.case_number}#2")
        assert key is not None
        assert key.destroyed is None

    def test_negative_durations_are_refused(self) -> None:
        with pytest.raises(ValueError, match="keep_after_close must not be negative"):
            RetentionPolicy(keep_after_close=timedelta(days=-1))
