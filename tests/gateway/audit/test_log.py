"""AuditLog: receipts, group commit and its durability contract, refusing to sign."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedgate.audit_entry import EntryKind, encode_entry
from fedgate.checkpoint import Checkpoint, cosignatures_in, open_checkpoint, sign_checkpoint
from fedgate.errors import AuditUnavailable, InvalidArgument, LogInconsistent, NotFound
from fedgate.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedgate.tlogproof import parse_tlog_proof, verify_tlog_proof
from gateway.audit.log import AuditLog, Receipt
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import AuditStore, CommitBatch, IndexedRow, SearchQuery, StoredLog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from conftest import Fed, LogFactory

    from fedgate.checkpoint import CosignatureVerifier
    from fedgate.note import NoteSignature
    from fedgate.witness import Witness

ORIGIN = "fedgate.test/gateway/shard-0"


class _Seam:
    """An AuditStore that delegates to a real one, and can be told to fail or to hold commits:
    a fake through the public seam, the log under test is real."""

    def __init__(self, inner: AuditStore) -> None:
        self.inner = inner
        self.fail_commits = False
        self.gate: asyncio.Event | None = None
        self.commits: list[int] = []

    @property
    def origin(self) -> str:
        return self.inner.origin

    @property
    def state_path(self) -> Path | None:
        return self.inner.state_path

    async def load(self) -> StoredLog:
        return await self.inner.load()

    async def commit(self, batch: CommitBatch) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_commits:
            raise AuditUnavailable("disk full (injected)")
        await self.inner.commit(batch)
        self.commits.append(len(batch.leaves))

    async def add_cosigned(self, size: int, note: str) -> None:
        await self.inner.add_cosigned(size, note)

    async def leaves(self, start: int, stop: int) -> list[bytes]:
        return await self.inner.leaves(start, stop)

    async def shard_leaf(self, origin: str, index: int) -> bytes | None:
        return await self.inner.shard_leaf(origin, index)

    async def checkpoint(self, size: int) -> str | None:
        return await self.inner.checkpoint(size)

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        return await self.inner.search(query)

    def catch_up_soon(self) -> None:
        self.inner.catch_up_soon()

    def read_tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return self.inner.read_tiles(level, start, stop)

    async def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return await self.inner.tiles(level, start, stop)

    async def close(self) -> None:
        await self.inner.close()


class _NoStatePath(_Seam):
    @property
    def state_path(self) -> Path | None:
        return None


async def _seam_log(fed: Fed, tmp_path: Path, **kwargs: object) -> tuple[AuditLog, _Seam]:
    seam = _Seam(await open_sqlite_store(tmp_path / "a.sqlite", origin=ORIGIN))
    log = await AuditLog.open(
        store=seam,
        origin=ORIGIN,
        signer=fed.log_signer(),
        **kwargs,  # type: ignore[arg-type]
    )
    return log, seam


class TestReceipts:
    async def test_a_receipt_proves_the_entry_in_a_signed_checkpoint(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        entry = logs.fed.request()
        receipt = await log.append(entry)
        assert (receipt.origin, receipt.index, receipt.tree_size) == (ORIGIN, 0, 1)
        cp = verify_tlog_proof(
            parse_tlog_proof(receipt.tlog_proof), encode_entry(entry), log.verifier, origin=ORIGIN
        )
        assert cp.size == receipt.tree_size
        verify_inclusion(
            leaf_hash(encode_entry(entry)),
            receipt.index,
            receipt.tree_size,
            receipt.inclusion_proof,
            cp.root_hash,
        )
        proto = receipt.to_proto(request_leaf_index=0)
        assert proto.leaf_index == 0
        assert proto.tlog_proof == receipt.tlog_proof
        assert list(proto.inclusion_proof) == list(receipt.inclusion_proof)
        assert proto.leaf_hash == leaf_hash(encode_entry(entry))

    async def test_indices_are_consecutive_and_the_log_resumes_after_reopening(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        first = [await log.append(logs.fed.request()) for _ in range(3)]
        old_checkpoint = log.latest_checkpoint()
        await log.close()
        log = await logs.open()
        assert log.size == 3
        later = await log.append(logs.fed.request())
        assert [r.index for r in first] + [later.index] == [0, 1, 2, 3]
        old = open_checkpoint(old_checkpoint, log.verifier)
        new = open_checkpoint(log.latest_checkpoint(), log.verifier)
        verify_consistency(
            old.size,
            new.size,
            log.consistency_proof(old.size, new.size),
            old.root_hash,
            new.root_hash,
        )

    async def test_a_new_log_starts_with_a_signed_empty_checkpoint(self, logs: LogFactory) -> None:
        log = await logs.open()
        cp = open_checkpoint(log.latest_checkpoint(), log.verifier, origin=ORIGIN)
        assert cp.size == 0
        assert log.size == 0

    async def test_entries_read_back_byte_for_byte_and_out_of_range_is_not_found(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        entry = logs.fed.request()
        await log.append(entry)
        assert await log.get_entry(0) == encode_entry(entry)
        with pytest.raises(NotFound, match="no entry 1"):
            await log.get_entry(1)
        with pytest.raises(NotFound, match="no entry 5"):
            log.inclusion_proof(5, 1)

    async def test_receipts_made_by_hand_equal_the_logs(self, logs: LogFactory) -> None:
        log = await logs.open()
        receipt = await log.append(logs.fed.request())
        copy = Receipt(
            origin=receipt.origin,
            index=receipt.index,
            tree_size=receipt.tree_size,
            inclusion_proof=receipt.inclusion_proof,
            checkpoint=receipt.checkpoint,
            tlog_proof=receipt.tlog_proof,
        )
        assert copy == receipt
        assert copy.tlog_proof == receipt.tlog_proof


class TestResponseLegs:
    async def test_a_response_leg_is_searchable_by_its_requests_case_and_agency(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        request = logs.fed.request()
        r = await log.append(request)
        await log.append(logs.fed.response(request, r.index))
        hits = await log.search(SearchQuery(case_number=request.case_number))
        assert [(h.index, h.columns[0]) for h in hits] == [
            (0, EntryKind.REQUEST),
            (1, EntryKind.RESPONSE),
        ]
        by_member = await log.search(SearchQuery(visible_to="police.gd.afc"))
        assert len(by_member) == 2
        by_subject = await log.search(SearchQuery(subject=request.subjects[0]))
        assert len(by_subject) == 2

    async def test_a_response_leg_must_name_its_request_leg(self, logs: LogFactory) -> None:
        log = await logs.open()
        request = logs.fed.request()
        other = logs.fed.request()
        await log.append(request)
        await log.append(other)
        with pytest.raises(InvalidArgument, match="not the request leg"):
            await log.append(logs.fed.response(request, 1))
        with pytest.raises(InvalidArgument, match="beyond the log"):
            await log.append(logs.fed.response(request, 9))


class TestGroupCommit:
    async def test_concurrent_appends_share_commits_and_checkpoints(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        log, seam = await _seam_log(fed, tmp_path)
        entries = [fed.request() for _ in range(64)]
        receipts = await asyncio.gather(*(log.append(e) for e in entries))
        assert sorted(r.index for r in receipts) == list(range(64))
        assert len(seam.commits) < 64
        assert sum(seam.commits) == 64
        for r, e in zip(receipts, entries, strict=True):
            verify_tlog_proof(parse_tlog_proof(r.tlog_proof), encode_entry(e), log.verifier)
        await log.close()

    async def test_each_commits_note_is_the_checkpoint_signed_again_from_the_tiles(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        # ``checkpoint_at`` signs a size the store did not keep again with ``sign_checkpoint``:
        # the note a receipt carries must be those same bytes (what a witness or the CLI finds).
        log, seam = await _seam_log(fed, tmp_path)
        receipts = await asyncio.gather(*(log.append(fed.request()) for _ in range(40)))
        receipts += [await log.append(fed.request()) for _ in range(3)]
        assert len(seam.commits) >= 4
        signer = fed.log_signer()
        for r in receipts:
            root = open_checkpoint(r.checkpoint, log.verifier, origin=ORIGIN).root_hash
            assert r.checkpoint == sign_checkpoint(Checkpoint(ORIGIN, r.tree_size, root), signer)
            assert await log.checkpoint_at(r.tree_size) == r.checkpoint
            verify_inclusion(log.leaf_hash(r.index), r.index, r.tree_size, r.inclusion_proof, root)
        await log.close()

    async def test_max_batch_bounds_a_commit(self, fed: Fed, tmp_path: Path) -> None:
        log, seam = await _seam_log(fed, tmp_path, max_batch=5)
        await asyncio.gather(*(log.append(fed.request()) for _ in range(23)))
        assert max(seam.commits) <= 5
        assert sum(seam.commits) == 23
        await log.close()

    async def test_append_does_not_resolve_before_the_commit(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        log, seam = await _seam_log(fed, tmp_path)
        seam.gate = asyncio.Event()
        tasks = [asyncio.create_task(log.append(fed.request())) for _ in range(8)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)
        assert log.size == 0
        seam.gate.set()
        receipts = await asyncio.gather(*tasks)
        assert log.size == 8
        assert {r.tree_size for r in receipts} <= {8} | set(range(1, 9))
        await log.close()

    async def test_a_store_failure_fails_every_waiter_and_acknowledges_nothing(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        log, seam = await _seam_log(fed, tmp_path)
        await log.append(fed.request())
        checkpoint = log.latest_checkpoint()
        seam.fail_commits = True
        results = await asyncio.gather(
            *(log.append(fed.request()) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert all("disk full" in str(r) for r in results)
        assert log.size == 1
        assert log.latest_checkpoint() == checkpoint
        assert (await seam.load()).next_index == 1
        seam.fail_commits = False
        receipt = await log.append(fed.request())
        assert (receipt.index, receipt.tree_size) == (1, 2)
        await log.close()

    async def test_appends_after_close_are_refused(self, logs: LogFactory) -> None:
        log = await logs.open()
        await log.close()
        with pytest.raises(AuditUnavailable, match="closed"):
            await log.append(logs.fed.request())

    async def test_a_second_writer_on_the_same_shard_is_refused(self, logs: LogFactory) -> None:
        await logs.open()
        with pytest.raises(AuditUnavailable, match="another"):
            await logs.store()


class TestRefusingToSign:
    """The log MUST NOT sign a checkpoint inconsistent with the last one it signed."""

    async def test_a_database_restored_from_an_older_copy_is_refused(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        db = tmp_path / "a.sqlite"
        log = await AuditLog.open(
            store=await open_sqlite_store(db, origin=ORIGIN), origin=ORIGIN, signer=fed.log_signer()
        )
        for _ in range(3):
            await log.append(fed.request())
        await log.close()
        backup = tmp_path / "backup.sqlite"
        shutil.copy(db, backup)
        log = await AuditLog.open(
            store=await open_sqlite_store(db, origin=ORIGIN), origin=ORIGIN, signer=fed.log_signer()
        )
        for _ in range(2):
            await log.append(fed.request())
        await log.close()
        shutil.copy(backup, db)  # the operator restores last night's backup
        store = await open_sqlite_store(db, origin=ORIGIN)
        with pytest.raises(LogInconsistent, match="restored from an older copy"):
            await AuditLog.open(store=store, origin=ORIGIN, signer=fed.log_signer())
        await store.close()

    async def test_a_database_forked_from_the_state_file_is_refused(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        db = tmp_path / "a.sqlite"
        log = await AuditLog.open(
            store=await open_sqlite_store(db, origin=ORIGIN), origin=ORIGIN, signer=fed.log_signer()
        )
        await log.append(fed.request())
        await log.close()
        state = (tmp_path / "a.sqlite.state").read_bytes()
        db.unlink()
        log = await AuditLog.open(
            store=await open_sqlite_store(db, origin=ORIGIN),
            origin=ORIGIN,
            signer=fed.log_signer(),
            state_path=tmp_path / "other.state",
        )
        await log.append(fed.request())  # a different first entry
        await log.close()
        store = await open_sqlite_store(db, origin=ORIGIN)
        (tmp_path / "a.sqlite.state").write_bytes(state)
        with pytest.raises(LogInconsistent, match="do not match the checkpoint this log signed"):
            await AuditLog.open(store=store, origin=ORIGIN, signer=fed.log_signer())
        await store.close()

    async def test_a_missing_state_file_beside_a_full_database_is_refused(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        await log.append(logs.fed.request())
        await log.close()
        logs.state.unlink()
        store = await logs.store()
        with pytest.raises(LogInconsistent, match=r"state file .* is missing"):
            await AuditLog.open(store=store, origin=ORIGIN, signer=logs.fed.log_signer())
        await store.close()

    async def test_a_store_without_a_state_file_location_needs_one(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        seam = _NoStatePath(await open_sqlite_store(tmp_path / "a.sqlite", origin=ORIGIN))
        with pytest.raises(ValueError, match="state_path is required"):
            await AuditLog.open(store=seam, origin=ORIGIN, signer=fed.log_signer())
        await seam.close()


class TestStateFile:
    """The rollback tripwire: written after commits, at most once per interval, and at close."""

    async def test_it_never_leads_the_database_and_is_current_after_close(
        self, sqlite_logs: LogFactory
    ) -> None:
        log = await sqlite_logs.open(state_interval_ms=60_000.0)
        await log.append(sqlite_logs.fed.request())
        for _ in range(100):
            if sqlite_logs.state.exists():
                break
            await asyncio.sleep(0.01)
        first = open_checkpoint(sqlite_logs.state.read_text("utf-8"), log.verifier)
        await asyncio.gather(*(log.append(sqlite_logs.fed.request()) for _ in range(5)))
        await asyncio.sleep(0.05)
        lagging = open_checkpoint(sqlite_logs.state.read_text("utf-8"), log.verifier)
        assert first.size <= lagging.size <= log.size == 6
        assert lagging.size < 6  # coalesced: the next write waits for the interval
        await log.close()
        current = open_checkpoint(sqlite_logs.state.read_text("utf-8"), log.verifier)
        assert current.size == 6

    async def test_a_negative_interval_is_refused(self, sqlite_logs: LogFactory) -> None:
        store = await sqlite_logs.store()
        with pytest.raises(ValueError, match="state_interval_ms must not be negative"):
            await AuditLog.open(
                store=store,
                origin=ORIGIN,
                signer=sqlite_logs.fed.log_signer(),
                state_interval_ms=-1.0,
            )
        await store.close()


class _HeldWitness:
    """A real witness whose answers wait until ``release`` is set (a slow witness)."""

    def __init__(self, witness: Witness) -> None:
        self._witness = witness
        self.release = asyncio.Event()
        self.calls = 0

    @property
    def verifier(self) -> CosignatureVerifier:
        return self._witness.verifier

    async def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: str
    ) -> NoteSignature:
        self.calls += 1
        await self.release.wait()
        return await self._witness.add_checkpoint(old_size, proof, note)

    async def latest_checkpoint(self, origin: str) -> str | None:
        return await self._witness.latest_checkpoint(origin)


class TestWitnessing:
    async def test_witness_cosignatures_reach_the_latest_checkpoint(self, logs: LogFactory) -> None:
        fed = logs.fed
        witnesses = [fed.witness(w, logs.tmp / f"{w}.json") for w in ("pboc.gz", "audit.office")]
        log = await logs.open(witnesses=witnesses)
        for _ in range(3):
            await log.append(fed.request())
        verifiers = [w.verifier for w in witnesses]
        for _ in range(100):
            if len(cosignatures_in(log.latest_checkpoint(), verifiers)) == 2:
                break
            await asyncio.sleep(0.02)
        assert set(cosignatures_in(log.latest_checkpoint(), verifiers)) == {
            "pboc.gz",
            "audit.office",
        }
        assert open_checkpoint(log.latest_checkpoint(), log.verifier).size == 3
        assert log.witness_errors == {}

    async def test_a_slow_witness_does_not_hold_back_the_others_cosignature(
        self, logs: LogFactory
    ) -> None:
        fed = logs.fed
        fast = fed.witness("pboc.gz", logs.tmp / "fast.json")
        slow = _HeldWitness(fed.witness("audit.office", logs.tmp / "slow.json"))
        log = await logs.open(witnesses=[fast, slow])
        for _ in range(3):
            await log.append(fed.request())
        # The slow witness has not answered a single request: the fast one's cosignature of
        # the latest size is published regardless.
        note, size = await log.cosigned_covering(3, timeout_s=10.0)
        assert size == 3
        assert set(cosignatures_in(note, [fast.verifier, slow.verifier])) == {"pboc.gz"}
        assert slow.calls >= 1
        slow.release.set()
        # Once it answers, its cosignature joins the published note of that size.
        deadline = asyncio.get_running_loop().time() + 10
        while len(cosignatures_in(log.latest_checkpoint(), [fast.verifier, slow.verifier])) < 2:
            assert asyncio.get_running_loop().time() < deadline, log.witness_errors
            await asyncio.sleep(0.01)
        assert open_checkpoint(log.latest_checkpoint(), log.verifier).size == 3

    async def test_a_witness_that_saw_more_than_the_log_reports_a_rollback(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        witness = fed.witness("pboc.gz", tmp_path / "w.json")  # type: ignore[arg-type]
        db = tmp_path / "a.sqlite"
        log = await AuditLog.open(
            store=await open_sqlite_store(db, origin=ORIGIN),
            origin=ORIGIN,
            signer=fed.log_signer(),
            witnesses=[witness],
        )
        for _ in range(4):
            await log.append(fed.request())
        for _ in range(100):
            if witness.last_cosigned(ORIGIN)[0] == 4:
                break
            await asyncio.sleep(0.02)
        await log.close()
        # An attacker replaces database and state file with a fresh log: the witness's latest
        # view (size 4) refuses it at open, before anything is signed.
        db.unlink()
        (tmp_path / "a.sqlite.state").unlink()
        store = await open_sqlite_store(db, origin=ORIGIN)
        with pytest.raises(LogInconsistent, match="rolled back or truncated"):
            await AuditLog.open(
                store=store, origin=ORIGIN, signer=fed.log_signer(), witnesses=[witness]
            )
        await store.close()
