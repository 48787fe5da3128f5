"""The audit store's writer thread: order, failures, shutdown, and the store's use of it."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedgate.errors import AuditUnavailable
from gateway.audit._writer_thread import WriterThread
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CommitBatch, LogDatabase, ThreadedStore

if TYPE_CHECKING:
    from conftest import Fed

ORIGIN = "fedgate.test/gateway/shard-0"


def _threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


class TestWriterThread:
    async def test_calls_run_one_at_a_time_in_the_order_queued_on_one_thread(self) -> None:
        writer = WriterThread("test-writer")
        ran: list[tuple[int, int]] = []
        running = 0
        overlapped = False

        def step(i: int) -> int:
            nonlocal running, overlapped
            running += 1
            overlapped |= running > 1
            ran.append((i, threading.get_ident()))
            running -= 1
            return i * i

        try:
            futures = [writer.call(lambda i=i: step(i)) for i in range(200)]
            results = await asyncio.gather(*futures)
        finally:
            writer.shutdown()
        assert results == [i * i for i in range(200)]
        assert [i for i, _ in ran] == list(range(200))
        assert {t for _, t in ran} != {threading.get_ident()}
        assert len({t for _, t in ran}) == 1
        assert not overlapped

    async def test_a_failing_call_fails_its_own_future_only(self) -> None:
        writer = WriterThread("test-writer")

        def fail() -> None:
            raise OSError("disk full (injected)")

        try:
            failed = writer.call(fail)
            after = writer.call(lambda: "still running")
            with pytest.raises(OSError, match="disk full"):
                await failed
            assert await after == "still running"
        finally:
            writer.shutdown()

    async def test_a_call_whose_caller_left_still_runs(self) -> None:
        writer = WriterThread("test-writer")
        gate = threading.Event()
        ran: list[str] = []
        try:
            writer.call(gate.wait)
            left = writer.call(lambda: ran.append("committed"))
            left.cancel()
            gate.set()
            await writer.call(lambda: None)  # everything queued before it has run
        finally:
            writer.shutdown()
        assert ran == ["committed"]
        assert left.cancelled()

    async def test_a_stop_iteration_arrives_as_a_runtime_error(self) -> None:
        """An asyncio future refuses a StopIteration: unwrapped, its caller waited forever."""
        writer = WriterThread("test-writer")

        def exhausted() -> object:
            return next(iter(()))

        try:
            with pytest.raises(RuntimeError, match="StopIteration") as raised:
                await asyncio.wait_for(writer.call(exhausted), 30)
            assert isinstance(raised.value.__cause__, StopIteration)
            assert await writer.call(lambda: "still running") == "still running"
        finally:
            writer.shutdown()

    async def test_an_error_whose_caller_left_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        writer = WriterThread("test-writer")
        gate = threading.Event()

        def fail() -> None:
            raise OSError("disk full (injected)")

        try:
            writer.call(gate.wait)
            left = writer.call(fail)
            left.cancel()
            gate.set()
            with caplog.at_level(logging.WARNING, logger="gateway.audit.log"):
                await writer.call(lambda: None)
        finally:
            writer.shutdown()
        assert any(
            "caller was cancelled" in r.getMessage() and "disk full" in r.getMessage()
            for r in caplog.records
        ), caplog.records

    def test_a_call_ending_after_its_loop_closed_leaves_the_thread_serving(self) -> None:
        """A store closed with its loop, a call still running: the next loop is served."""
        writer = WriterThread("test-writer")
        gate = threading.Event()

        async def queue_and_leave() -> None:
            writer.call(gate.wait)

        try:
            first = asyncio.new_event_loop()
            first.run_until_complete(queue_and_leave())
            first.close()
            gate.set()  # it ends now, its loop closed

            async def next_call() -> int:
                return await asyncio.wait_for(writer.call(lambda: 42), 30)

            assert asyncio.run(next_call()) == 42
        finally:
            writer.shutdown()

    async def test_shutdown_drains_the_queue_then_stops_the_thread(self) -> None:
        before = len(_threads_named("test-drain"))
        writer = WriterThread("test-drain")
        assert len(_threads_named("test-drain")) == before + 1
        gate = threading.Event()
        ran: list[int] = []
        writer.call(gate.wait)
        for i in range(50):
            writer.call(functools.partial(ran.append, i))
        threading.Timer(0.05, gate.set).start()
        writer.shutdown(wait=True)
        assert ran == list(range(50))
        assert len(_threads_named("test-drain")) == before
        with pytest.raises(RuntimeError, match="shut down"):
            writer.call(lambda: None)
        writer.shutdown()  # a second shutdown is harmless


class _FailingWriter:
    """A real SQLite writer connection whose commits can be made to fail, on the writer's
    thread, the way a full disk fails them; records which thread each commit ran on."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self.fail = False
        self.commit_threads: set[int] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    def commit(self, batch: CommitBatch) -> None:
        self.commit_threads.add(threading.get_ident())
        if self.fail:
            raise AuditUnavailable("disk full (injected on the writer's thread)")
        self._db.commit(batch)


async def _store(path: Path, writer: list[_FailingWriter]) -> ThreadedStore:
    def open_writer() -> LogDatabase:
        writer.append(_FailingWriter(SqliteDatabase(path, origin=ORIGIN, writer=True)))
        return writer[0]  # type: ignore[return-value]

    return await ThreadedStore.open(
        open_writer,
        lambda: SqliteDatabase(path, origin=ORIGIN, writer=False),
        name="test-audit",
        state_path=path.with_suffix(".state"),
    )


class _CloseFails:
    """A real SQLite connection whose close raises after closing it."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    def close(self) -> None:
        self._db.close()
        raise OSError("close failed (injected)")


class TestThreadedStoreOpen:
    async def test_a_failed_open_stops_every_thread_and_raises_its_own_error(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a.sqlite"

        def open_writer() -> LogDatabase:
            return _CloseFails(SqliteDatabase(path, origin=ORIGIN, writer=True))  # type: ignore[return-value]

        def open_reader() -> LogDatabase:
            raise OSError("reader cannot open (injected)")

        with pytest.raises(OSError, match="reader cannot open"):
            await ThreadedStore.open(open_writer, open_reader, name="test-open", state_path=None)
        for thread in _threads_named("test-open"):
            thread.join(30)  # shut down without waiting: they end on their own
        assert _threads_named("test-open") == []


class TestThreadedStoreWriter:
    async def test_commits_run_in_order_on_one_thread_and_close_leaves_none(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        writer: list[_FailingWriter] = []
        store = await _store(tmp_path / "a.sqlite", writer)
        assert {t.name for t in _threads_named("test-audit")} == {
            "test-audit-w",
            "test-audit-r_0",
            "test-audit-t_0",
        }
        log = await AuditLog.open(store=store, origin=ORIGIN, signer=fed.log_signer())
        receipts = await asyncio.gather(*(log.append(fed.request()) for _ in range(40)))
        assert sorted(r.index for r in receipts) == list(range(40))
        assert (await store.leaves(0, 40)) == [await log.get_entry(i) for i in range(40)]
        (thread,) = writer[0].commit_threads
        assert thread != threading.get_ident()
        await log.close()
        assert _threads_named("test-audit") == []

    async def test_a_commit_failing_on_the_writer_thread_fails_every_waiter(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        writer: list[_FailingWriter] = []
        store = await _store(tmp_path / "a.sqlite", writer)
        log = await AuditLog.open(store=store, origin=ORIGIN, signer=fed.log_signer())
        await log.append(fed.request())
        writer[0].fail = True
        results = await asyncio.gather(
            *(log.append(fed.request()) for _ in range(12)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert all("disk full" in str(r) for r in results)
        assert log.size == 1
        writer[0].fail = False
        receipt = await log.append(fed.request())
        assert (receipt.index, receipt.tree_size) == (1, 2)
        await log.close()

    async def test_close_runs_what_was_queued_before_it(self, fed: Fed, tmp_path: Path) -> None:
        writer: list[_FailingWriter] = []
        store = await _store(tmp_path / "a.sqlite", writer)
        log = await AuditLog.open(store=store, origin=ORIGIN, signer=fed.log_signer())
        appends = [asyncio.create_task(log.append(fed.request())) for _ in range(20)]
        await asyncio.sleep(0)
        await log.close()
        receipts = await asyncio.gather(*appends)
        assert sorted(r.index for r in receipts) == list(range(20))
        reopened = await _store(tmp_path / "a.sqlite", [])
        try:
            assert (await reopened.load()).next_index == 20
        finally:
            await reopened.close()
