"""Freshness and replay protection (pipeline stage 4), surviving restarts.

A request is fresh when ``|issued_at - now| <= skew``. Its request id and its nonce are then
remembered, and any later request carrying either is refused as a replay.

How long to remember: a request issued at ``t`` is fresh only while ``now`` is within
``[t - skew, t + skew]``; after ``t + skew`` it is refused as stale without looking at this
cache. So an entry is needed until ``issued_at + skew`` — at most ``2 * skew`` after the gateway
first saw it (a request may arrive up to ``skew`` early). Entries are kept until
``issued_at + window`` and the window MUST be at least the skew (the gateway's configuration
insists on twice the skew, which also covers a request that arrives ``skew`` early).
``check_and_remember`` refuses an ``issued_at`` older than the window itself, so an entry that
could have been pruned can never be needed.

Durability: SQLite in WAL mode. With ``synchronous=FULL`` every remembered id is fsynced to the
WAL before ``check_and_remember`` returns. The gateway runs it with ``synchronous=NORMAL``
(``[pipeline] replay_synchronous``, default ``"normal"``): a commit then survives a crash of
the process but not a power loss or kernel crash, and it saves an fsync in series on every
request. What NORMAL can lose, ``rebuild_from_audit`` puts back at start-up, before the gateway
serves, from the request legs the audit log holds for the window. Why that keeps the promise
"never seen within the window" across power losses:

- A request can have an effect (be forwarded to a node, or an agency report be delivered) only
  after its request leg is durable in the audit log (stage 8 precedes stage 9; the audit store
  commits with ``synchronous=FULL``). So every request that was ever acted upon is in the log,
  and its leg carries the envelope as received: its request id, nonce and issued-at.
- Every request leg received within ``window + skew`` of now is read back, so every id whose
  cache entry could still be live (it expires at ``issued_at + window`` and
  ``issued_at <= received_at + skew``) is remembered again, with the same expiry.
- A request whose ids were remembered but whose leg never became durable (power lost between
  stage 4 and stage 8, or the log failing) had no effect; accepting it once more is harmless,
  and that once is then remembered and logged like any other request.
- Refused requests have request legs too. Those refused at stages 5-7 (validation,
  authorization, quotas) had their ids remembered at stage 4 and are remembered again: a replay
  MUST stay refused even if the quota or rule that stopped the original no longer would. Those
  refused before stage 4 recorded anything (``_NOT_REMEMBERED``: authentication, decoding,
  signature, staleness, replay) are skipped, so the rebuilt cache holds what the lost one held
  and nothing more; a refusal whose reason is ambiguous is remembered (the safe side).

Measured on the 2-core development VM: FULL about 250-350 µs per check one at a time (one fsync
each), about 170 µs per check with 8-32 concurrent callers (group commit); NORMAL about
100-130 µs.

Atomicity: the id and the nonce are inserted by one statement (both or neither), in a
transaction under one committer per process and SQLite's write lock across processes sharing the
file: of two identical requests exactly one passes, even within one batch.

In memory: ``MemoryReplayCache`` keeps the same promise with no store of its own. It is rebuilt
from the audit log at every start by the same ``rebuild_from_audit`` (the argument above does
not depend on the cache having kept anything), so it needs no fsync, no thread and no commit per
request. It is the gateway's default (``[pipeline] replay_store = "memory"``); the SQLite cache
stays for a deployment that wants the cache on disk. Neither is shared between processes. The
in-memory cache is also the local store of recorded outcomes (``gateway.retries``): one entry
per request id answers both "seen?" and "what did its first attempt get?", bounded by age and
size (see the class).

Shared: ``PgReplayCache`` keeps the ids in PostgreSQL, one row per request with a unique
constraint on the request id and one on the nonce, so that several gateway processes and hosts
on one database refuse each other's replays. A request is remembered by one ``INSERT … ON
CONFLICT DO NOTHING``: both keys or neither, committed (PostgreSQL's synchronous commit) before
``remember`` returns; of two identical requests sent to two instances at once exactly one row is
inserted, the other waits for that commit and is refused. Each instance also restores the ids of
its own audit shard at start-up (``rebuild_from_audit``), which covers a database restored from
a backup older than the log.

Cost: concurrent callers are group-committed: whoever holds the commit lock writes every queued
entry in one transaction, so N concurrent requests share one fsync instead of queueing for N.
On the event loop, ``remember`` goes further: the entries of concurrent requests are handed to
the cache's own thread in one job per batch (one thread hop, one transaction, one fsync), and
their futures are resolved together, instead of one worker thread and one wake-up per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, Protocol

import psycopg
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import RequestLeg, decode_entry
from fedgate.envelope import decode_request
from fedgate.errors import (
    AuditUnavailable,
    AuthenticationError,
    DecodeError,
    FedgateError,
    InProgress,
    KeyNotValid,
    PeerMismatch,
    Replayed,
    SignatureInvalid,
    Stale,
    UnknownKey,
)
from fedgate.storage import Schema, immediate, open_store
from fedgate.v1 import envelope_pb2
from gateway.retries import RETRIED, Claim, RecordedOutcome
from gateway.shared import PgPool

__all__ = [
    "MemoryReplayCache",
    "PgReplayCache",
    "Rebuilt",
    "ReplayCache",
    "ReplayStore",
    "RequestLegSource",
    "SeenRequest",
    "describe_span",
    "local_outcomes",
    "rebuild_from_audit",
]

_log = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PRUNE_EVERY: Final = timedelta(seconds=30)
_ID_KEY = b"i"
_NONCE_KEY = b"n"

_SEEN_QUERY = "SELECT key FROM seen WHERE key IN (?, ?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    key        BLOB PRIMARY KEY,
    expires_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_expiry ON seen (expires_us);
"""
_STORE = Schema(store="replay cache", version=1, create=_SCHEMA, legacy_table="seen")

# A rebuilt key keeps the later of the two expiries (the cache may already hold it).
_RESTORE = (
    "INSERT INTO seen (key, expires_us) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET expires_us = max(expires_us, excluded.expires_us)"
)

_NOT_REMEMBERED: Final = frozenset(
    e.reason
    for e in (
        AuthenticationError,  # stage 1 (no envelope is kept then) and stage 3
        SignatureInvalid,
        UnknownKey,
        KeyNotValid,
        PeerMismatch,
        DecodeError,  # stage 2
        Stale,  # stage 4, before anything is remembered
        Replayed,  # stage 4: nothing of the refused request is remembered (both keys or neither)
        InProgress,  # stage 4, a retry: its first attempt remembered the ids (and has its leg)
    )
) | {RETRIED}
"""Refusal reasons raised before stage 4 remembers a request's ids. Every reason here MUST be
one the pipeline raises only before ``remember`` commits; a reason raised both before and after
(``INVALID_ARGUMENT``, ``MEMBER_REFUSED``) MUST NOT be listed."""


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _check_freshness(
    issued_at: datetime, *, now: datetime, skew: timedelta, window: timedelta
) -> None:
    if skew > window:
        raise ValueError(f"skew {skew} exceeds the replay window {window}")
    age = now - issued_at
    if age > skew:
        raise Stale(
            f"issued_at is {describe_span(age)} in the past; allowed skew is {describe_span(skew)}"
        )
    if -age > skew:
        raise Stale(
            f"issued_at is {describe_span(age)} in the future; "
            f"allowed skew is {describe_span(skew)}"
        )


def describe_span(span: timedelta) -> str:
    """A short human span: ``7m12s``, ``5m``, ``2h3m``, ``1d2h``, ``40s``, ``0.5s``."""
    total = abs(span.total_seconds())
    if total < 1:
        return f"{total:.3g}s"
    seconds = int(total)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return "".join(shown[:2])


class RequestLegSource(Protocol):
    """Where ``rebuild_from_audit`` reads the recent request legs of one log shard: a reader of
    either audit store (``SqliteDatabase``, ``PgDatabase``)."""

    def request_legs_since(self, since_us: int) -> Iterable[bytes]:
        """The leaves of the request legs received at or after ``since_us`` (microseconds since
        the epoch), in any order, read through the store's time index; raises
        ``AuditUnavailable``."""
        ...


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """A request's identifiers as read back from its audit request leg."""

    request_id: str
    nonce: bytes
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What ``rebuild_from_audit`` did: request legs read from the window, requests whose id and
    nonce are held again (the others had expired, or were refused before stage 4), and how
    long it took."""

    legs: int
    remembered: int
    seconds: float


@dataclass(slots=True)
class _Pending:
    """One request's keys waiting for the next group commit, and what became of them."""

    request_id: str
    id_key: bytes
    nonce_key: bytes
    expires_us: int
    done: bool = False
    error: FedgateError | None = None


class ReplayCache:
    """Refuses any request id or nonce seen within the window; survives restarts.

    ``check_and_remember`` MUST be atomic (two identical concurrent requests: exactly one passes)
    and MUST be committed before it returns: durable across power loss with
    ``synchronous="FULL"``, across a process crash with ``"NORMAL"``. A cache opened with
    ``"NORMAL"`` MUST be rebuilt (``rebuild_from_audit``) from the audit log the pipeline writes
    before its first check after every start (see the module docstring). Entries expire
    ``window`` after their ``issued_at`` and are pruned every 30 seconds of ``now``.
    Thread-safe. SQLite failures raise ``AuditUnavailable``: the gateway refuses work rather
    than forget what it has seen.
    """

    def __init__(self, *, connection: sqlite3.Connection, window: timedelta) -> None:
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        self._db = connection
        self._window = window
        self._window_us = window // timedelta(microseconds=1)
        self._commit_lock = threading.Lock()  # one committer; guards the connection
        self._queue_lock = threading.Lock()  # guards _queue only, held for an append or a swap
        self._queue: list[_Pending] = []
        self._next_prune_us = 0
        # ``remember``: entries waiting for the next job on the committer thread (event loop only)
        self._waiting: list[tuple[_Pending, int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        window: timedelta = timedelta(minutes=10),
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> ReplayCache:
        """Open (creating if needed) the cache at ``path``; see the module docstring on
        ``synchronous`` (``"NORMAL"`` MUST go with ``rebuild_from_audit`` at start-up)."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        db = open_store(path, _STORE, error=AuditUnavailable, synchronous=synchronous)
        return cls(connection=db, window=window)

    @property
    def window(self) -> timedelta:
        return self._window

    def close(self) -> None:
        """Close the database; the cache is unusable afterwards."""
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None
        with self._commit_lock:
            self._db.close()

    def check_freshness(self, issued_at: datetime, *, now: datetime, skew: timedelta) -> None:
        """Raise ``Stale`` unless ``issued_at`` is within ``skew`` of ``now`` (both aware).

        Raises ``ValueError`` if ``skew`` exceeds the window: ids would be forgotten while the
        requests carrying them were still fresh.
        """
        _check_freshness(issued_at, now=now, skew=skew, window=self._window)

    def check_and_remember(
        self, request_id: str, nonce: bytes, issued_at: datetime, *, now: datetime
    ) -> None:
        """Remember ``request_id`` and ``nonce``; raise ``Replayed`` if either was seen.

        ``Replayed`` names which one (request id, nonce or both); nothing is remembered then.
        Raises ``Stale`` when ``issued_at`` is older than the window (call ``check_freshness``
        first; this is the cache's own guard).
        """
        now_us = _us(now)
        entry = self._entry(request_id, nonce, issued_at, now_us)
        with self._queue_lock:
            self._queue.append(entry)
        # Group commit: whoever holds the commit lock commits every queued entry in one
        # transaction (one fsync); a caller that finds its entry done was committed by another.
        with self._commit_lock:
            if not entry.done:
                self._commit_queued(now_us)
        if entry.error is not None:
            raise entry.error

    async def remember(
        self, request_id: str, nonce: bytes, issued_at: datetime, *, now: datetime
    ) -> None:
        """``check_and_remember`` for callers on an event loop, with the same contract (atomic;
        durable before it returns; ``Replayed``, ``Stale``, ``AuditUnavailable``).

        The entries of concurrent callers are committed by one job on the cache's own thread.
        A caller that is cancelled leaves its entry to be committed all the same.
        """
        now_us = _us(now)
        entry = self._entry(request_id, nonce, issued_at, now_us)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((entry, now_us, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="replay-commit")
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                entries = [b[0] for b in batch]
                now_us = max(b[1] for b in batch)
                if self._committer is None:
                    self._committer = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="replay-commit"
                    )
                try:
                    await loop.run_in_executor(
                        self._committer, self._commit_entries, entries, now_us
                    )
                except BaseException as exc:
                    # Fail closed: nobody of this batch is told its entry is remembered.
                    for _, _, future in batch:
                        if not future.done():
                            error = AuditUnavailable("replay cache: the commit was interrupted")
                            error.__cause__ = exc
                            future.set_exception(error)
                    raise
                for entry, _, future in batch:
                    if future.done():
                        continue
                    if entry.error is not None:
                        future.set_exception(entry.error)
                    else:
                        future.set_result(None)
        finally:
            self._flusher = None
            for _, _, future in self._waiting:  # only left behind if this task was cancelled
                if not future.done():
                    future.set_exception(AuditUnavailable("replay cache: the commit was stopped"))
            self._waiting = []

    def _commit_entries(self, entries: list[_Pending], now_us: int) -> None:
        """On the committer thread: queue ``entries`` and commit them (with whatever else is
        queued by synchronous callers) unless another committer already did."""
        with self._queue_lock:
            self._queue.extend(entries)
        with self._commit_lock:
            if not all(e.done for e in entries):
                self._commit_queued(now_us)

    def _entry(self, request_id: str, nonce: bytes, issued_at: datetime, now_us: int) -> _Pending:
        issued_us = _us(issued_at)
        if issued_us + self._window_us < now_us:
            raise Stale(
                f"issued_at is older than the replay window ({describe_span(self._window)})"
            )
        return _Pending(
            request_id=request_id,
            id_key=_ID_KEY + request_id.encode(),
            nonce_key=_NONCE_KEY + nonce,
            expires_us=issued_us + self._window_us,
        )

    def _commit_queued(self, now_us: int) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        db = self._db
        failure: FedgateError | None = None
        try:
            with immediate(db):
                for entry in batch:
                    self._insert(entry)
        except sqlite3.Error as exc:
            failure = AuditUnavailable(f"replay cache unavailable: {exc}")
            failure.__cause__ = exc
        except BaseException:
            failure = AuditUnavailable("replay cache: the commit was interrupted")
            raise
        finally:
            # Fail closed: an entry is accepted only if its transaction committed.
            for entry in batch:
                if failure is not None and entry.error is None:
                    entry.error = failure
                entry.done = True
        if failure is None and now_us >= self._next_prune_us:
            self._prune(now_us)

    def _insert(self, entry: _Pending) -> None:
        """Insert both keys or neither: a constraint failure undoes only this statement."""
        try:
            self._db.execute(
                "INSERT INTO seen (key, expires_us) VALUES (?, ?), (?, ?)",
                (entry.id_key, entry.expires_us, entry.nonce_key, entry.expires_us),
            )
        except sqlite3.IntegrityError:
            keys = (entry.id_key, entry.nonce_key)
            seen = {row[0] for row in self._db.execute(_SEEN_QUERY, keys)}
            entry.error = _replayed(entry.request_id, entry.id_key in seen, entry.nonce_key in seen)

    def _prune(self, now_us: int) -> None:
        self._next_prune_us = now_us + _PRUNE_EVERY // timedelta(microseconds=1)
        try:
            self._db.execute("DELETE FROM seen WHERE expires_us < ?", (now_us,))
        except sqlite3.Error as exc:  # the batch is committed; pruning waits for the next turn
            _log.warning("replay cache: pruning failed: %s", exc)

    def restore(self, seen: Iterable[SeenRequest], *, now: datetime) -> int:
        """Remember every request of ``seen`` again, in one transaction, without refusing any.

        A key already held keeps the later expiry; requests older than the window are skipped.
        Returns how many requests were restored. For start-up, before any check (not batched
        with concurrent callers). Raises ``AuditUnavailable``.
        """
        now_us = _us(now)
        rows: list[tuple[bytes, int]] = []
        count = 0
        for s in seen:
            expires_us = _us(s.issued_at) + self._window_us
            if expires_us < now_us or not s.request_id or not s.nonce:
                continue
            rows.append((_ID_KEY + s.request_id.encode(), expires_us))
            rows.append((_NONCE_KEY + s.nonce, expires_us))
            count += 1
        with self._commit_lock:
            db = self._db
            try:
                with immediate(db):
                    db.executemany(_RESTORE, rows)
            except sqlite3.Error as exc:
                raise AuditUnavailable(f"replay cache: cannot restore entries: {exc}") from exc
        return count

    def stored_keys(self) -> int:
        """Request ids plus nonces held, expired ones not yet pruned included."""
        with self._commit_lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()
        return int(count)


class ReplayStore(Protocol):
    """What the pipeline and the start-up rebuild need of a replay cache."""

    @property
    def window(self) -> timedelta: ...

    def check_freshness(self, issued_at: datetime, *, now: datetime, skew: timedelta) -> None: ...

    async def remember(
        self, request_id: str, nonce: bytes, issued_at: datetime, *, now: datetime
    ) -> None: ...

    def restore(self, seen: Iterable[SeenRequest], *, now: datetime) -> int: ...

    def stored_keys(self) -> int: ...

    def close(self) -> None: ...


_Held = tuple[int, bytes | None, bytes | None, bytes | None]
"""What ``MemoryReplayCache`` holds for one request id, by position:

- ``_EXPIRES``: when it may be forgotten (µs since the epoch);
- ``_BODY``: the sha256 of the body of the attempt that claimed the id; ``None`` when no attempt
  claims it (restored from the log, remembered without a claim, or its outcome evicted);
- ``_NONCE``: set once stage 4 remembered the request: its id and nonce are then refused to
  others;
- ``_OUTCOME``: ``RecordedOutcome.encode()`` of the claiming attempt, once recorded.

A plain tuple of ints, bytes and ``None``, replaced whole on every change, because the garbage
collector stops tracking such a tuple at its first collection: the cache holds one per request
of the window (450,000 at 500 requests a second over 15 minutes), and as objects of a class
they made every full collection walk them all (391 ms measured at that size, on the loop)."""
_EXPIRES: Final = 0
_BODY: Final = 1
_NONCE: Final = 2
_OUTCOME: Final = 3
_PRUNE_STEP: Final = 8
"""At most this many expired request ids are forgotten per call (5–8 µs each, measured with
450,000 held on the loaded machine), more than the one a call adds, so the cache keeps up
without a periodic sweep: the sweep it replaces, every 30 seconds, forgot 15,000 ids at once at
500 requests a second and held the event loop for 80 ms."""


class MemoryReplayCache:
    """One process's memory of requests for the replay window: replay protection
    (``ReplayStore``) and the recorded outcomes of safe retries (``OutcomeStore``) in one table
    keyed by request id, so that an id is held once for both.

    Replay protection keeps ``ReplayCache``'s contract except durability: it MUST be rebuilt with
    ``rebuild_from_audit`` from the audit log the pipeline writes before its first check after
    every start (the module docstring argues why the log holds every id that matters). Outcomes
    keep ``gateway.retries``'s contract. Atomic under one lock: of two identical requests exactly
    one passes, of two claims of one id exactly one wins.

    Bounded by age and by size:

    - every entry is dropped once past ``issued_at + window`` (oldest first, a few on each call,
      ``_PRUNE_STEP``);
    - at most ``max_requests`` request ids are held (default 1,000,000: about 1,100 requests a
      second sustained over the default 15-minute window, roughly 0.3 KB each without their
      outcome). A new request beyond that is refused with ``AuditUnavailable`` (fail closed: an
      id is never forgotten before its window ends);
    - recorded outcomes, kept encoded, take at most ``max_outcome_bytes`` (default 64 MiB).
      Beyond that the oldest recorded outcomes are forgotten: a retry of such a request is then
      refused as ``REPLAYED``, as after a restart, and ``GetOutcome`` reads its outcome back
      from the audit log.
    """

    def __init__(
        self,
        *,
        window: timedelta,
        max_requests: int = 1_000_000,
        max_outcome_bytes: int = 64 << 20,
    ) -> None:
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        if max_requests < 1 or max_outcome_bytes < 0:
            raise ValueError("max_requests must be positive and max_outcome_bytes not negative")
        self._window = window
        self._window_us = window // timedelta(microseconds=1)
        self._max_requests = max_requests
        self._max_outcome_bytes = max_outcome_bytes
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._nonces: dict[bytes, str] = {}  # nonce -> the request id that remembered it
        self._expiries: list[tuple[int, str]] = []  # min-heap of (expires_us, request id)
        self._outcomes: OrderedDict[str, int] = OrderedDict()  # recorded, oldest first -> size
        self._outcome_bytes = 0

    @property
    def window(self) -> timedelta:
        return self._window

    def close(self) -> None:
        """Forget everything (nothing to flush)."""
        with self._lock:
            self._held.clear()
            self._nonces.clear()
            self._expiries.clear()
            self._outcomes.clear()
            self._outcome_bytes = 0

    def check_freshness(self, issued_at: datetime, *, now: datetime, skew: timedelta) -> None:
        """As ``ReplayCache.check_freshness``."""
        _check_freshness(issued_at, now=now, skew=skew, window=self._window)

    def check_and_remember(
        self, request_id: str, nonce: bytes, issued_at: datetime, *, now: datetime
    ) -> None:
        """Remember ``request_id`` and ``nonce``; raise ``Replayed`` if either was remembered.

        Nothing is remembered when ``Replayed``, ``Stale`` or ``AuditUnavailable`` (full) is
        raised. The attempt that claimed ``request_id`` may remember it once.
        """
        now_us = _us(now)
        issued_us = _us(issued_at)
        if issued_us + self._window_us < now_us:
            raise Stale(
                f"issued_at is older than the replay window ({describe_span(self._window)})"
            )
        expires_us = issued_us + self._window_us
        with self._lock:
            self._prune(now_us)
            held = self._held.get(request_id)
            id_seen = held is not None and held[_NONCE] is not None
            nonce_seen = nonce in self._nonces
            if id_seen or nonce_seen:
                raise _replayed(request_id, id_seen, nonce_seen)
            if held is None:
                held = self._new(request_id, expires_us)
            self._remember(request_id, held, nonce, expires_us)

    async def remember(
        self, request_id: str, nonce: bytes, issued_at: datetime, *, now: datetime
    ) -> None:
        """``check_and_remember`` for callers on an event loop: no I/O, so no thread hop."""
        self.check_and_remember(request_id, nonce, issued_at, now=now)

    def restore(self, seen: Iterable[SeenRequest], *, now: datetime) -> int:
        """Remember every request of ``seen`` again without refusing any (see ``ReplayCache``);
        start-up only, so ``max_requests`` does not apply."""
        now_us = _us(now)
        count = 0
        with self._lock:
            for s in seen:
                expires_us = _us(s.issued_at) + self._window_us
                if expires_us < now_us or not s.request_id or not s.nonce:
                    continue
                held = self._held.get(s.request_id)
                if held is None:
                    held = self._held[s.request_id] = (expires_us, None, None, None)
                    heapq.heappush(self._expiries, (expires_us, s.request_id))
                self._remember(s.request_id, held, s.nonce, expires_us)
                count += 1
        return count

    def stored_keys(self) -> int:
        """Request ids plus nonces held, expired ones not yet pruned included."""
        with self._lock:
            return len(self._held) + len(self._nonces)

    def outcome_bytes(self) -> int:
        """The encoded size of the recorded outcomes held."""
        with self._lock:
            return self._outcome_bytes

    async def claim(
        self, request_id: str, body_sha256: bytes, *, expires_us: int, now_us: int
    ) -> Claim | None:
        """As ``OutcomeStore.claim``; ``AuditUnavailable`` when ``max_requests`` are held."""
        with self._lock:
            self._prune(now_us)
            held = self._held.get(request_id)
            if held is None:
                held = self._new(request_id, expires_us)
            elif held[_BODY] is not None:
                recorded = held[_OUTCOME]
                outcome = None if recorded is None else RecordedOutcome.decode(recorded)
                return Claim(body_sha256=held[_BODY], outcome=outcome)
            self._held[request_id] = (held[_EXPIRES], body_sha256, held[_NONCE], held[_OUTCOME])
            return None

    async def record(self, request_id: str, outcome: RecordedOutcome) -> None:
        """As ``OutcomeStore.record``; the oldest outcomes beyond ``max_outcome_bytes`` are
        forgotten (see the class)."""
        data = outcome.encode()
        with self._lock:
            held = self._held.get(request_id)
            if held is None or held[_BODY] is None or held[_OUTCOME] is not None:
                return
            self._held[request_id] = (held[_EXPIRES], held[_BODY], held[_NONCE], data)
            self._outcomes[request_id] = len(data)
            self._outcome_bytes += len(data)
            while self._outcome_bytes > self._max_outcome_bytes:
                oldest, size = self._outcomes.popitem(last=False)
                self._outcome_bytes -= size
                evicted = self._held[oldest]
                self._held[oldest] = (evicted[_EXPIRES], None, evicted[_NONCE], None)

    def _new(self, request_id: str, expires_us: int) -> _Held:
        if len(self._held) >= self._max_requests:
            raise AuditUnavailable(
                f"the replay cache holds its limit of {self._max_requests} requests within the "
                f"replay window ({describe_span(self._window)}); refused until older ones expire"
            )
        held: _Held = (expires_us, None, None, None)
        self._held[request_id] = held
        heapq.heappush(self._expiries, (expires_us, request_id))
        return held

    def _remember(self, request_id: str, held: _Held, nonce: bytes, expires_us: int) -> None:
        """Mark ``held`` remembered with ``nonce``, keeping the later expiry."""
        other = self._nonces.get(nonce)
        if other is None or other == request_id or self._held[other][_EXPIRES] < expires_us:
            self._nonces[nonce] = request_id
        later = max(held[_EXPIRES], expires_us)
        self._held[request_id] = (later, held[_BODY], nonce, held[_OUTCOME])
        if held[_EXPIRES] < expires_us:
            heapq.heappush(self._expiries, (expires_us, request_id))

    def _prune(self, now_us: int) -> None:
        """Forget up to ``_PRUNE_STEP`` request ids whose window ended before ``now_us``."""
        heap = self._expiries
        for _ in range(_PRUNE_STEP):
            if not heap or heap[0][0] >= now_us:
                return
            expires_us, request_id = heapq.heappop(heap)
            held = self._held.get(request_id)
            if held is None or held[_EXPIRES] != expires_us:  # renewed by a later restore
                continue
            del self._held[request_id]
            nonce = held[_NONCE]
            if nonce is not None and self._nonces.get(nonce) == request_id:
                del self._nonces[nonce]
            size = self._outcomes.pop(request_id, None)
            if size is not None:
                self._outcome_bytes -= size


_PG_STORE = Schema(
    store="shared replay cache",
    version=1,
    create="""
CREATE TABLE IF NOT EXISTS replay_requests (
    request_key BYTEA NOT NULL UNIQUE,
    nonce_key   BYTEA NOT NULL UNIQUE,
    expires_us  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS replay_requests_by_expiry ON replay_requests (expires_us);
""",
)
_PG_REMEMBER = (
    "INSERT INTO replay_requests (request_key, nonce_key, expires_us) VALUES (%s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
_PG_SEEN = (
    "SELECT EXISTS (SELECT 1 FROM replay_requests WHERE request_key = %s),"
    " EXISTS (SELECT 1 FROM replay_requests WHERE nonce_key = %s)"
)


class PgReplayCache:
    """Refuses any request id or nonce seen within the window by any gateway on the database.

    ``remember`` MUST be atomic across processes and hosts (one row per request, unique request
    id and unique nonce: exactly one of two identical requests is inserted) and committed before
    it returns. Database failures raise ``AuditUnavailable``: fail closed. Concurrent callers
    use ``connections`` connections in turn; rows expire ``window`` after ``issued_at`` and are
    deleted every 30 seconds of ``now`` by whichever instance notices first.
    """

    def __init__(self, *, dsn: str, schema: str, window: timedelta, connections: int = 4) -> None:
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        self._window = window
        self._window_us = window // timedelta(microseconds=1)
        self._pool = PgPool(
            dsn=dsn,
            schema=schema,
            store=_PG_STORE,
            what="shared replay cache",
            connections=connections,
        )
        self._next_prune_us = 0
        self._sync = self._pool.connect_sync()

    @property
    def window(self) -> timedelta:
        return self._window

    def close(self) -> None:
        """Close the connections; the cache is unusable afterwards."""
        self._sync.close()
        self._pool.close()

    def check_freshness(self, issued_at: datetime, *, now: datetime, skew: timedelta) -> None:
        """As ``ReplayCache.check_freshness``."""
        _check_freshness(issued_at, now=now, skew=skew, window=self._window)

    async def remember(
        self, request_id: str, nonce: bytes, issued_at: datetime, *, now: datetime
    ) -> None:
        """Remember ``request_id`` and ``nonce`` in the shared table; raise ``Replayed`` if
        either was seen by any instance (nothing is remembered then), ``Stale`` when older than
        the window, ``AuditUnavailable`` when the database fails."""
        now_us = _us(now)
        issued_us = _us(issued_at)
        if issued_us + self._window_us < now_us:
            raise Stale(
                f"issued_at is older than the replay window ({describe_span(self._window)})"
            )
        id_key = _ID_KEY + request_id.encode()
        nonce_key = _NONCE_KEY + nonce
        row = None
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _PG_REMEMBER, (id_key, nonce_key, issued_us + self._window_us)
            )
            inserted = cursor.rowcount == 1
            if not inserted:
                row = await (await conn.execute(_PG_SEEN, (id_key, nonce_key))).fetchone()
            if now_us >= self._next_prune_us:
                self._next_prune_us = now_us + _PRUNE_EVERY // timedelta(microseconds=1)
                await conn.execute("DELETE FROM replay_requests WHERE expires_us < %s", (now_us,))
        if not inserted:
            id_seen, nonce_seen = (bool(row[0]), bool(row[1])) if row else (False, False)
            raise _replayed(request_id, id_seen, nonce_seen)

    def restore(self, seen: Iterable[SeenRequest], *, now: datetime) -> int:
        """Insert the ids of ``seen`` that no row holds yet (start-up, before any check)."""
        now_us = _us(now)
        rows = [
            (_ID_KEY + s.request_id.encode(), _NONCE_KEY + s.nonce, expires_us)
            for s in seen
            if s.request_id
            and s.nonce
            and (expires_us := _us(s.issued_at) + self._window_us) >= now_us
        ]
        try:
            with self._sync.cursor() as cursor, self._sync.transaction():
                cursor.executemany(_PG_REMEMBER, rows)
        except psycopg.Error as exc:
            raise AuditUnavailable(f"shared replay cache: cannot restore entries: {exc}") from exc
        return len(rows)

    def stored_keys(self) -> int:
        """Request ids plus nonces held by every instance, expired ones not yet pruned included."""
        try:
            row = self._sync.execute("SELECT COUNT(*) FROM replay_requests").fetchone()
        except psycopg.Error as exc:
            raise AuditUnavailable(f"shared replay cache unavailable: {exc}") from exc
        return 2 * int(row[0]) if row else 0


def rebuild_from_audit(
    cache: ReplayStore,
    source: RequestLegSource,
    *,
    origin: str,
    skew: timedelta,
    now: datetime | None = None,
) -> Rebuilt:
    """Remember again the ids of every request logged in ``source`` within the window.

    Reads the request legs received at or after ``now - window - skew`` (through the store's
    time index, so only the window is read), skips those refused before stage 4 and those
    already expired, and restores the rest with ``ReplayCache.restore``. ``source`` MUST read
    the log the gateway's pipeline appends to (log shard ``origin``, named in errors), and
    nothing may be checked against ``cache`` until this returns. Blocking: run it off the event
    loop. Raises ``AuditUnavailable`` if the log cannot be read or holds a malformed leg (fail
    closed: the gateway does not serve with a replay cache it cannot vouch for).
    """
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    since_us = _us(now - cache.window - skew)
    legs = 0
    seen: list[SeenRequest] = []
    for leaf in source.request_legs_since(since_us):
        legs += 1
        request = _seen_request(leaf, origin)
        if request is not None:
            seen.append(request)
    remembered = cache.restore(seen, now=now)
    return Rebuilt(legs=legs, remembered=remembered, seconds=time.perf_counter() - started)


def _seen_request(leaf: bytes, origin: str) -> SeenRequest | None:
    """The identifiers of a request leg whose ids stage 4 may have remembered, else ``None``."""
    try:
        leg = decode_entry(leaf)
    except FedgateError as exc:
        raise AuditUnavailable(
            f"audit shard {origin!r}: a request leg is malformed: {exc}"
        ) from exc
    if not isinstance(leg, RequestLeg):
        raise AuditUnavailable(
            f"audit shard {origin!r}: a leaf indexed as a request leg is not one"
        )
    if leg.decision != "allowed" and leg.rule.partition(":")[0] in _NOT_REMEMBERED:
        return None
    try:
        envelope = envelope_pb2.SignedEnvelope.FromString(leg.envelope)
        request = decode_request(envelope.body)
    except (ProtobufDecodeError, DecodeError):
        return None  # stage 2 refused it: nothing was remembered
    if not request.request_id or not request.nonce or not request.HasField("issued_at"):
        return None  # stage 2 refused it
    try:
        issued_at = request.issued_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None  # stage 2 refused it (not a valid timestamp): nothing was remembered
    return SeenRequest(request_id=request.request_id, nonce=request.nonce, issued_at=issued_at)


def _replayed(request_id: str, id_seen: bool, nonce_seen: bool) -> Replayed:
    if id_seen and nonce_seen:
        return Replayed(f"request id {request_id} and its nonce were already used")
    if id_seen:
        return Replayed(f"request id {request_id} was already used")
    if nonce_seen:
        return Replayed(f"the nonce of request {request_id} was already used by another request")
    return Replayed(f"request id {request_id} or its nonce was already used")


def local_outcomes(replay: ReplayStore) -> MemoryReplayCache:
    """Where one process records the outcomes of safe retries: in ``replay`` itself when it is
    the in-memory cache (one entry per request id for both), else in a cache of its own with
    the same window."""
    return (
        replay if isinstance(replay, MemoryReplayCache) else MemoryReplayCache(window=replay.window)
    )
