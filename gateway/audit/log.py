"""The audit log: group commit of entries into a Merkle tree, signed checkpoints, witnesses.

One writer task batches concurrent appends (at most ``max_batch`` entries, waiting at most
``max_wait_ms`` after the oldest), extends the in-memory tree, checks the new tree against the
last checkpoint the log signed, signs ONE checkpoint for the batch and commits the leaves, their
searchable columns and that checkpoint in ONE transaction; then it resolves every caller with
its receipt. After the commit, background tasks record the last signed checkpoint in a small
state file (rollback tripwire) and gather witness cosignatures; appends never wait for either.

The state file is written at most once every ``state_interval_ms`` (and at close): writing it
after every batch (temp file, two fsyncs, rename) cost more than the batch's own commit under
load. The receipt value is in ``_receipt``, the checks at open and the state file in ``_state``,
witness cosigning in ``_witnessing``; this module is the group commit and the public surface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from fedgate.audit_entry import (
    AuditEntry,
    EntryKind,
    IndexColumns,
    ResponseLeg,
    encode_entry,
    entry_columns,
    index_columns,
    micros_to_time,
    with_request_columns,
)
from fedgate.checkpoint import Checkpoint, CheckpointSigner, sign_checkpoint
from fedgate.errors import (
    AuditUnavailable,
    FedgateError,
    InvalidArgument,
    LogInconsistent,
    NotFound,
    VerificationError,
)
from fedgate.merkle import HASH_SIZE, leaf_hash
from fedgate.note import NoteSigner, NoteVerifier
from fedgate.tiles import TILE_HEIGHT, TILE_WIDTH, TiledTree, encode_bundle, partial_width
from fedgate.witness import WitnessClient
from gateway.audit._bodies import BodyVault, PreparedBodies, case_ref, seal_entry
from gateway.audit._receipt import Receipt
from gateway.audit._state import StateFile, check_state_file, rebuild_tree
from gateway.audit._witnessing import Witnessing, check_witness_views
from gateway.audit.store import AuditStore, CommitBatch, IndexedRow, NewLeaf, SearchQuery

__all__ = ["AuditLog", "Receipt"]

logger = logging.getLogger(__name__)

_RECENT_REQUESTS = 1 << 12
"""Request legs whose columns are kept in memory to complete their response legs (~1.5 KiB
each, so at most ~6 MiB). A response leg normally follows its request within seconds; an older
one (a ticket answered later, a slow node) reads its request leg back from the store instead.
At 65,536 this cache took half an hour of a 40 req/s soak to fill (~100 MiB)."""

T = TypeVar("T")
_Result = tuple[int, int, str]
_Body = tuple[str, bytes] | None
"""A sealed entry's case key reference and clear leaf (``_bodies``); ``None`` when unsealed."""
_Pending = tuple[bytes, bytes, IndexColumns, "asyncio.Future[_Result]", _Body]


def _from_tiles(compute: Callable[[], T]) -> T:
    """``compute()`` over the tiled tree; a tile missing from the store is ``AuditUnavailable``.

    Proofs read the few tiles their cache lacks from the store, blocking (one indexed read
    each, on the store's tile connection): recent entries, which receipts prove, are cached.
    """
    try:
        return compute()
    except LookupError as exc:
        raise AuditUnavailable(f"the audit store cannot give a proof: {exc}") from exc


class AuditLog:
    """A transparency log of audit entries over an ``AuditStore``.

    Contract:

    - ``append`` MUST NOT resolve before the entry, its searchable columns and a checkpoint
      covering it are durably committed; the receipt it returns proves inclusion in that
      checkpoint.
    - If the store fails, every caller waiting on that batch MUST get ``AuditUnavailable`` and
      nothing of the batch is acknowledged; the log reloads its tree from the store before the
      next batch.
    - The log MUST NOT sign a checkpoint inconsistent with the last one it signed: not at open
      (the database behind its state file, i.e. restored from an older copy, or stored leaves
      that do not hash to the stored checkpoint), nor for any batch. It raises
      ``LogInconsistent`` saying why instead.
    - Appends MUST NOT wait for witnesses; cosignatures are gathered in the background and
      ``latest_checkpoint`` carries whatever was gathered for the latest size.

    The state file holds the last signed checkpoint note, replaced atomically after commits, at
    most once every ``state_interval_ms`` and at close. It MUST NOT lead the database (it is
    written only after the commit of the checkpoint it holds); it may lag it by about one
    interval, so a database rolled back by less than that is not caught at open: witnesses
    (which cosign from their own copy of the last size) catch that, and a restored backup is
    older than any interval. If it is lost, write the latest witness-cosigned checkpoint note
    into it.
    """

    def __init__(
        self,
        *,
        store: AuditStore,
        origin: str,
        signer: NoteSigner,
        tree: TiledTree,
        checkpoint: str,
        state_path: Path,
        max_batch: int,
        max_wait_ms: float,
        witnesses: Sequence[WitnessClient],
        published: str | None,
        published_size: int,
        state_interval_ms: float = 100.0,
        vault: BodyVault | None = None,
    ) -> None:
        self._store = store
        self._vault = vault
        self._origin = origin
        self._signer = signer
        self._checkpoints = CheckpointSigner(origin, signer)
        self._verifier = signer.verifier()
        self._tree = tree
        self._size = tree.size
        self._checkpoint = checkpoint
        self._signed = (tree.size, tree.root())
        self._state = StateFile(state_path, origin=origin, interval_s=state_interval_ms / 1000.0)
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._witnessing = Witnessing(
            origin=origin,
            store=store,
            witnesses=witnesses,
            tree=lambda: self._tree,
            published=published,
            published_size=published_size,
        )
        self._pending: list[_Pending] = []
        self._oldest = 0.0
        self._wake = asyncio.Event()
        self._broken: str | None = None
        self._closing = False
        self._recent: dict[int, IndexColumns] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        *,
        store: AuditStore,
        origin: str,
        signer: NoteSigner,
        max_batch: int = 1024,
        max_wait_ms: float = 2.0,
        witnesses: Sequence[WitnessClient] = (),
        state_path: Path | None = None,
        state_interval_ms: float = 100.0,
        vault: BodyVault | None = None,
    ) -> AuditLog:
        """Load the shard, check it against the state file, and start the writer.

        ``state_path`` defaults to the store's (``<db>.state`` for SQLite) and is required
        for stores without one; it is rewritten at most every ``state_interval_ms``. Raises
        ``LogInconsistent`` when the store is behind or forked from the last checkpoint this log
        signed, ``AuditUnavailable`` when it cannot be read, ``ValueError`` for bad options.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        if state_interval_ms < 0:
            raise ValueError(f"state_interval_ms must not be negative, got {state_interval_ms}")
        path = state_path if state_path is not None else store.state_path
        if path is None:
            raise ValueError("state_path is required: this store has no default location")
        stored = await store.load()
        tree = await asyncio.to_thread(rebuild_tree, stored, origin, store.read_tiles)
        await asyncio.to_thread(check_state_file, path, origin, tree)
        # The state file can be restored together with the database; the witnesses cannot.
        views = await check_witness_views(witnesses, origin, tree)
        checkpoint = stored.checkpoint
        if checkpoint is None:
            # A new log starts with a signed checkpoint of the empty tree.
            checkpoint = sign_checkpoint(Checkpoint(origin, 0, tree.root()), signer)
            await store.commit(CommitBatch((), 0, checkpoint))
        log = cls(
            store=store,
            origin=origin,
            signer=signer,
            tree=tree,
            checkpoint=checkpoint,
            state_path=path,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            witnesses=witnesses,
            published=stored.cosigned,
            published_size=stored.cosigned_size,
            state_interval_ms=state_interval_ms,
            vault=vault,
        )
        if stored.cosigned is not None:
            log._witnessing.seed(stored.cosigned, stored.cosigned_size)
        log._witnessing.sizes.update(views)
        log._start()
        return log

    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run_writer(), name="audit-writer"),
            asyncio.create_task(self._state.run(lambda: self._checkpoint), name="audit-state"),
            asyncio.create_task(
                self._witnessing.run(lambda: (self._size, self._checkpoint)),
                name="audit-witnesses",
            ),
        ]
        self._state.wake.set()
        self._witnessing.wake.set()

    # -- public surface ----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def size(self) -> int:
        """The number of durably committed entries."""
        return self._size

    @property
    def verifier(self) -> NoteVerifier:
        """The key that verifies this log's checkpoints."""
        return self._verifier

    @property
    def witness_errors(self) -> dict[str, str]:
        """The last error of each witness that failed to cosign, by witness name."""
        return dict(self._witnessing.errors)

    def latest_checkpoint(self) -> str:
        """The latest signed checkpoint, with the cosignatures gathered for it so far."""
        w = self._witnessing
        if w.published is not None and w.published_size == self._size:
            return w.published
        return self._checkpoint

    def latest_cosigned_checkpoint(self) -> str | None:
        """The newest checkpoint that carries witness cosignatures, if any."""
        return self._witnessing.published

    def latest_cosigned_size(self) -> int:
        """The size of ``latest_cosigned_checkpoint`` (0 if none)."""
        w = self._witnessing
        return w.published_size if w.published is not None else 0

    async def cosigned_covering(self, size: int, *, timeout_s: float) -> tuple[str, int]:
        """The newest cosigned checkpoint of at least ``size`` entries and its size, waiting
        up to ``timeout_s`` for the witnesses (they cosign in the background after commits).

        Raises ``AuditUnavailable`` when none covers ``size`` in time (no witness, or none
        answering), ``NotFound`` when ``size`` is beyond the log.
        """
        if size > self._size:
            raise NotFound(f"no tree of size {size}: the log has {self._size} entries")
        w = self._witnessing

        def covered() -> bool:
            return w.published is not None and w.published_size >= size

        async with w.published_changed:
            try:
                await asyncio.wait_for(w.published_changed.wait_for(covered), timeout_s)
            except TimeoutError:
                errors = "; ".join(f"{k}: {v}" for k, v in sorted(w.errors.items()))
                raise AuditUnavailable(
                    f"the witnesses have not cosigned a checkpoint covering size {size} yet"
                    + (f" ({errors})" if errors else "")
                ) from None
        assert w.published is not None
        return w.published, w.published_size

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash of entry ``index``; ``NotFound`` beyond the log."""
        if not 0 <= index < self._size:
            raise NotFound(f"no entry {index}: the log has {self._size} entries")
        return _from_tiles(lambda: self._tree.leaf_hash_at(index))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of entry ``index`` in the tree of ``size`` entries.

        Raises ``NotFound`` unless ``0 <= index < size <= self.size``.
        """
        if not 0 <= index < size <= self._size:
            raise NotFound(f"no entry {index} in a tree of size {size} (log size {self._size})")
        return _from_tiles(lambda: self._tree.inclusion_proof(index, size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The consistency proof from ``old_size`` to ``new_size``; ``NotFound`` unless
        ``0 <= old_size <= new_size <= self.size``."""
        if not 0 <= old_size <= new_size <= self._size:
            raise NotFound(
                f"no consistency proof from {old_size} to {new_size} (log size {self._size})"
            )
        return _from_tiles(lambda: self._tree.consistency_proof(old_size, new_size))

    @property
    def vault(self) -> BodyVault | None:
        """The encrypted bodies beside the leaves (``None``: this log stores entries whole)."""
        return self._vault

    async def open_entry(self, index: int) -> bytes:
        """The entry ``index`` as it was appended: for a sealed entry whose body is readable
        its clear leaf (``_bodies``), otherwise the stored leaf. For the gateway's own
        enforcement (undo, reconciliation, outcomes); never for display, which reveals through
        ``AuditService.RevealEntry`` or the console's audited reveal. Raises like
        ``get_entry``."""
        stored = await self.get_entry(index)
        vault = self._vault
        if vault is None:
            return stored
        return await asyncio.to_thread(vault.open_or_stored, stored)

    async def get_entry(self, index: int) -> bytes:
        """The canonical leaf bytes of entry ``index`` as stored (sealed when the log has a
        vault); ``NotFound`` beyond the log."""
        if not 0 <= index < self._size:
            raise NotFound(f"no entry {index}: the log has {self._size} entries")
        found = await self._store.leaves(index, index + 1)
        if not found:
            raise AuditUnavailable(f"entry {index} is missing from the audit store")
        return found[0]

    async def tile(self, level: int, index: int, width: int = TILE_WIDTH) -> bytes | None:
        """The first ``width`` hashes of C2SP tile ``(level, index)``, if the log has them:
        a full tile from the store, the right edge from memory. ``None`` otherwise."""
        full = (self._size >> (TILE_HEIGHT * level)) // TILE_WIDTH
        if index < full:
            found = await self._store.tiles(level, index, index + 1)
            if not found:
                raise AuditUnavailable(f"tile {level}/{index} is missing from the audit store")
            return found[0][1][: width * HASH_SIZE]
        # The tree may already hold a batch whose commit is in flight: serve only what the
        # committed size covers.
        if index != full or width > partial_width(level, self._size):
            return None
        return self._tree.tile(level, index, width)

    async def entry_bundle(self, index: int, width: int = TILE_WIDTH) -> bytes | None:
        """The C2SP entry bundle of entries ``[256 * index, 256 * index + width)``, if the log
        has them all; ``None`` otherwise."""
        start = index * TILE_WIDTH
        if start + width > self._size:
            return None
        leaves = await self._store.leaves(start, start + width)
        if len(leaves) != width:
            raise AuditUnavailable(f"entries {start}..{start + width - 1} are missing")
        return encode_bundle(leaves)

    async def checkpoint_at(self, size: int) -> str | None:
        """The signed checkpoint of the tree of ``size`` entries; ``None`` beyond the log.

        The store keeps only some checkpoints (``kept_checkpoint``); for another size the note
        is signed again from the stored tiles. Ed25519 signatures are deterministic, so for a
        size a batch ended at this is byte for byte the note that batch's receipts carry.
        """
        if not 0 <= size <= self._size:
            return None
        note = await self._store.checkpoint(size)
        if note is None:
            root = _from_tiles(lambda: self._tree.root(size))
            note = self._checkpoints.sign(size, root)
        return note

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        """Entries matching ``query`` by their searchable columns, oldest first (a subject is
        looked up by its blind index when the log seals entries)."""
        if self._vault is not None and query.subject:
            query = replace(query, subject=self._vault.blind(query.subject))
        return await self._store.search(query)

    def catch_up_soon(self) -> None:
        """Have the store bring its search projection and rollups level now (the auditor
        console calls it before it waits for the rollups: ``LogInsights``)."""
        self._store.catch_up_soon()

    async def append(self, entry: AuditEntry) -> Receipt:
        """Record ``entry`` durably and return its receipt.

        Raises ``InvalidArgument`` for an entry that cannot be encoded or a response leg whose
        ``request_leaf_index`` is not its request leg, ``AuditUnavailable`` when the store
        fails or the log is closed, ``LogInconsistent`` when the log refuses to sign.
        """
        if self._closing:
            raise AuditUnavailable("the audit log is closed")
        data = encode_entry(entry)
        body: _Body = None
        vault = self._vault
        if vault is not None:
            # Seal: the tree and the stored leaf hold no personal data; the clear leaf goes
            # into the body, encrypted under its case's key when the batch commits.
            sealed = seal_entry(entry, vault.blind)
            sealed_data = encode_entry(sealed)
            if sealed_data != data:
                body = ("", data)
                data, entry = sealed_data, sealed
        columns = entry_columns(entry)
        if isinstance(entry, ResponseLeg):
            request = await (
                self._other_shard_columns(entry)
                if entry.request_origin
                else self._request_columns(entry)
            )
            if request is not None:
                columns = with_request_columns(columns, request)
        if body is not None:
            body = (case_ref(columns[5], micros_to_time(columns[2])), body[1])
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        pending = self._pending
        if not pending:
            self._oldest = asyncio.get_running_loop().time()
            self._wake.set()
        pending.append((data, leaf_hash(data), columns, future, body))
        index, size, note = await future
        if columns[0] == EntryKind.REQUEST:
            recent = self._recent
            recent[index] = columns
            if len(recent) > _RECENT_REQUESTS:
                del recent[next(iter(recent))]
        return Receipt._lazy(
            origin=self._origin, index=index, tree_size=size, checkpoint=note, tree=self._tree
        )

    async def close(self) -> None:
        """Commit what is pending, record the state file, stop the tasks, close the store."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        writer, state, witnesses = self._tasks
        await writer
        witnesses.cancel()
        state.cancel()
        await asyncio.gather(witnesses, state, return_exceptions=True)
        await self._state.drain()
        try:
            await self._state.write(self._checkpoint)
        finally:
            try:
                await self._store.close()
            finally:
                if self._vault is not None:
                    self._vault.close()

    # -- group commit ------------------------------------------------------------------------

    async def _request_columns(self, leg: ResponseLeg) -> IndexColumns:
        i = leg.request_leaf_index
        columns = self._recent.get(i)
        if columns is None:
            if i >= self._size:
                raise InvalidArgument(
                    f"response leg of {leg.request_id} names request entry {i}, beyond the log"
                )
            try:
                columns = index_columns(await self.get_entry(i))
            except VerificationError as exc:
                raise AuditUnavailable(f"entry {i} does not decode: {exc.message}") from exc
        if columns[0] != EntryKind.REQUEST or columns[1] != leg.request_id:
            raise InvalidArgument(
                f"entry {i} is not the request leg of {leg.request_id}: response legs must "
                "name their request's leaf index"
            )
        return columns

    async def _other_shard_columns(self, leg: ResponseLeg) -> IndexColumns | None:
        """The columns of ``leg``'s request leg in the shard ``leg.request_origin`` names,
        read from the same database (docs/audit.md, "A ticket answered through another
        instance"). ``None`` when the database holds this shard only (SQLite) or the named
        entry is not that request leg: the leg then keeps its own columns, and ``fedgate
        audit verify`` judges the link over every shard, as it always did."""
        data = await self._store.shard_leaf(leg.request_origin, leg.request_leaf_index)
        if data is None:
            return None
        try:
            columns = index_columns(data)
        except VerificationError:
            return None
        if columns[0] != EntryKind.REQUEST or columns[1] != leg.request_id:
            return None
        return columns

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Gather more while appends keep arriving, up to max_wait after the oldest: callers
            # just resolved re-append within a loop iteration or two, a lone caller is not kept
            # waiting for company that is not coming.
            deadline = self._oldest + self._max_wait
            while len(self._pending) < self._max_batch and not self._closing:
                before = len(self._pending)
                await asyncio.sleep(0)
                if len(self._pending) == before or loop.time() >= deadline:
                    break
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._oldest = loop.time()
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._broken is not None:
                await self._recover()
            start = self._size
            tiles = self._tree.extend([p[1] for p in batch])
            size = self._tree.size
            root = self._tree.root()
            self._check_consistent(size)
            note = self._checkpoints.sign(size, root)
            leaves = [NewLeaf(start + i, p[0], p[1], p[2]) for i, p in enumerate(batch)]
            prepared = await self._prepare_bodies(start, batch)
            try:
                beside = () if prepared is None else prepared.steps
                await self._store.commit(CommitBatch(leaves, size, note, tiles, beside))
            except BaseException:
                if prepared is not None and self._vault is not None:
                    self._vault.discard(prepared)
                raise
        except Exception as exc:
            self._broken = str(exc)
            self._fail(batch, exc)
            return
        except BaseException as exc:  # cancelled mid-commit: acknowledge nothing
            self._broken = "the writer was cancelled"
            self._fail(batch, exc)
            raise
        self._size = size
        self._checkpoint = note
        self._signed = (size, root)
        for i, p in enumerate(batch):
            future = p[3]
            if not future.done():
                future.set_result((start + i, size, note))
        self._state.wake.set()
        self._witnessing.wake.set()

    async def _prepare_bodies(self, start: int, batch: list[_Pending]) -> PreparedBodies | None:
        """The batch's bodies encrypted, to commit with its leaves (``_bodies`` contract)."""
        vault = self._vault
        bodies = [
            (start + i, p[1], p[4][0], p[4][1]) for i, p in enumerate(batch) if p[4] is not None
        ]
        if vault is None or not bodies:
            return None
        now = datetime.now(UTC)
        return await asyncio.to_thread(lambda: vault.prepare(bodies, now=now))

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        logger.error(
            "audit log %s: batch of %d entries not committed: %s", self._origin, len(batch), exc
        )
        for p in batch:
            future = p[3]
            if future.done():
                continue
            err: FedgateError
            if isinstance(exc, LogInconsistent):
                err = LogInconsistent(exc.message)
            else:
                detail = exc.message if isinstance(exc, FedgateError) else repr(exc)
                err = AuditUnavailable(f"the audit log could not record the entry: {detail}")
            err.__cause__ = exc
            future.set_exception(err)

    def _check_consistent(self, size: int) -> None:
        signed_size, signed_root = self._signed
        if size < signed_size or self._tree.root(signed_size) != signed_root:
            raise LogInconsistent(
                f"refusing to sign size {size}: the tree does not extend the checkpoint of size "
                f"{signed_size} this log signed last"
            )

    async def _recover(self) -> None:
        """Reload the tree from the store after a failed commit; it must extend what we signed."""
        stored = await self._store.load()
        tree = await asyncio.to_thread(rebuild_tree, stored, self._origin, self._store.read_tiles)
        signed_size, signed_root = self._signed
        if tree.size < signed_size or tree.root(signed_size) != signed_root:
            raise LogInconsistent(
                f"the audit store now holds {tree.size} entries that do not extend the "
                f"checkpoint of size {signed_size} this log signed: it was altered or rolled "
                "back. Refusing to sign"
            )
        self._tree = tree
        self._size = tree.size
        if stored.checkpoint is not None:
            self._checkpoint = stored.checkpoint
        self._signed = (tree.size, tree.root())
        self._broken = None
