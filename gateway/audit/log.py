"""The audit log: group commit of entries into a Merkle tree, signed checkpoints, witnesses.

One writer task batches concurrent appends (at most ``max_batch`` entries, waiting at most
``max_wait_ms`` after the oldest), extends the in-memory tree, checks the new tree against the
last checkpoint the log signed, signs ONE checkpoint for the batch and commits the leaves, their
searchable columns and that checkpoint in ONE transaction; then it resolves every caller with
its receipt. After the commit, background tasks record the last signed checkpoint in a small
state file (rollback tripwire) and gather witness cosignatures; appends never wait for either.

The state file is written at most once every ``state_interval_ms`` (and at close): it is a
rollback detector, not the durability mechanism (the store's commit is), so it only has to
never lead the database and lag it by little. Writing it after every batch (temp file, two
fsyncs, rename) cost more than the batch's own commit under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from fedgate.audit_entry import (
    AuditEntry,
    EntryKind,
    IndexColumns,
    ResponseLeg,
    encode_entry,
    entry_columns,
    index_columns,
    with_request_columns,
)
from fedgate.checkpoint import Checkpoint, cosignatures_in, parse_checkpoint, sign_checkpoint
from fedgate.errors import (
    AuditUnavailable,
    FedgateError,
    InvalidArgument,
    LogInconsistent,
    NotFound,
    VerificationError,
)
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSignature, NoteSigner, NoteVerifier, add_signatures, parse_note
from fedgate.tlogproof import TlogProof
from fedgate.v1 import envelope_pb2
from gateway.audit.store import AuditStore, CommitBatch, IndexedRow, NewLeaf, SearchQuery
from gateway.audit.witness import WitnessClient, WitnessConflict, write_atomically

__all__ = ["AuditLog", "Receipt"]

logger = logging.getLogger(__name__)

_RECENT_REQUESTS = 1 << 16
"""Request legs whose columns are kept in memory to complete their response legs."""
_WITNESS_TIMEOUT_S = 10.0

_Result = tuple[int, int, str]
_Pending = tuple[bytes, bytes, IndexColumns, "asyncio.Future[_Result]"]


class Receipt:
    """Proof that an entry is in the log: its index, the inclusion proof in the tree of
    ``tree_size`` leaves, the checkpoint signed for that size, and the same as C2SP
    ``tlog-proof`` text.

    An immutable value. Receipts made by ``AuditLog.append`` compute ``inclusion_proof`` and
    ``tlog_proof`` on first use (most request-leg receipts are never read, and the proof is
    the largest part of an append's cost); the log's tree keeps every past size, so the
    result does not depend on when it is computed.
    """

    __slots__ = ("_proof", "_prover", "_tlog", "checkpoint", "index", "origin", "tree_size")

    def __init__(
        self,
        *,
        origin: str,
        index: int,
        tree_size: int,
        inclusion_proof: tuple[bytes, ...],
        checkpoint: str,
        tlog_proof: str,
    ) -> None:
        self.origin = origin
        self.index = index
        self.tree_size = tree_size
        self.checkpoint = checkpoint
        self._proof: tuple[bytes, ...] | None = tuple(inclusion_proof)
        self._tlog: str | None = tlog_proof
        self._prover: MerkleTree | None = None

    @classmethod
    def _lazy(
        cls, *, origin: str, index: int, tree_size: int, checkpoint: str, tree: MerkleTree
    ) -> Receipt:
        r = cls.__new__(cls)
        r.origin = origin
        r.index = index
        r.tree_size = tree_size
        r.checkpoint = checkpoint
        r._proof = None
        r._tlog = None
        r._prover = tree
        return r

    @property
    def inclusion_proof(self) -> tuple[bytes, ...]:
        if self._proof is None:
            assert self._prover is not None
            self._proof = tuple(self._prover.inclusion_proof(self.index, self.tree_size))
        return self._proof

    @property
    def tlog_proof(self) -> str:
        if self._tlog is None:
            self._tlog = TlogProof(
                index=self.index, proof=self.inclusion_proof, checkpoint_note=self.checkpoint
            ).marshal()
        return self._tlog

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Receipt):
            return NotImplemented
        return (self.origin, self.index, self.tree_size, self.checkpoint, self.inclusion_proof) == (
            other.origin,
            other.index,
            other.tree_size,
            other.checkpoint,
            other.inclusion_proof,
        )

    def __hash__(self) -> int:
        return hash((self.origin, self.index, self.tree_size, self.checkpoint))

    def __repr__(self) -> str:
        return f"Receipt(origin={self.origin!r}, index={self.index}, tree_size={self.tree_size})"

    def to_proto(self, *, request_leaf_index: int) -> envelope_pb2.AuditReceipt:
        """The wire ``AuditReceipt`` for this entry (the response leg) and its request leg.

        ``leaf_hash`` is filled in from the log's tree for receipts made by ``append`` (no need
        to encode the entry again), and left empty otherwise.
        """
        return envelope_pb2.AuditReceipt(
            log_origin=self.origin,
            request_leaf_index=request_leaf_index,
            leaf_index=self.index,
            tree_size=self.tree_size,
            inclusion_proof=list(self.inclusion_proof),
            checkpoint=self.checkpoint,
            tlog_proof=self.tlog_proof,
            leaf_hash=self._prover.leaf_hash_at(self.index) if self._prover is not None else b"",
        )


def _rebuild(
    stored_origin: str,
    origin: str,
    hashes: list[bytes],
    count: int,
    next_index: int,
    checkpoint: str | None,
    checkpoint_size: int,
) -> MerkleTree:
    """The tree of the stored leaf hashes, checked against the stored latest checkpoint."""
    if stored_origin != origin:
        raise AuditUnavailable(f"the audit store holds shard {stored_origin!r}, not {origin!r}")
    if count != next_index:
        raise LogInconsistent(
            f"the audit store holds {count} leaves but its highest index is {next_index - 1}: "
            "rows were deleted; run `fedgate audit verify`. Refusing to sign"
        )
    try:
        tree = MerkleTree.from_leaf_hashes(hashes)
    except ValueError as exc:
        raise LogInconsistent(f"the audit store holds a damaged leaf hash: {exc}") from exc
    if checkpoint is None:
        if tree.size:
            raise LogInconsistent(
                f"the audit store holds {tree.size} leaves but no checkpoint. Refusing to sign"
            )
        return tree
    try:
        cp = parse_checkpoint(parse_note(checkpoint).text)
    except VerificationError as exc:
        raise LogInconsistent(f"the stored latest checkpoint is malformed: {exc.message}") from exc
    if cp.origin != origin or cp.size != checkpoint_size:
        raise LogInconsistent(
            f"the stored checkpoint at size {checkpoint_size} is for {cp.origin!r} size "
            f"{cp.size}, not {origin!r} size {checkpoint_size}. Refusing to sign"
        )
    if cp.size != tree.size:
        raise LogInconsistent(
            f"the audit store holds {tree.size} leaves but its latest checkpoint covers "
            f"{cp.size}. Refusing to sign"
        )
    if tree.root() != cp.root_hash:
        raise LogInconsistent(
            f"the stored leaves do not hash to the root of the latest stored checkpoint (size "
            f"{cp.size}): the database was altered; run `fedgate audit verify`. Refusing to sign"
        )
    return tree


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
        tree: MerkleTree,
        checkpoint: str,
        state_path: Path,
        max_batch: int,
        max_wait_ms: float,
        witnesses: Sequence[WitnessClient],
        published: str | None,
        published_size: int,
        state_interval_ms: float = 100.0,
    ) -> None:
        self._store = store
        self._origin = origin
        self._signer = signer
        self._verifier = signer.verifier()
        self._tree = tree
        self._size = tree.size
        self._checkpoint = checkpoint
        self._signed = (tree.size, tree.root())
        self._state_path = state_path
        self._state_written: str | None = None
        self._state_interval = state_interval_ms / 1000.0
        self._state_inflight: asyncio.Future[None] | None = None
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._witnesses = tuple(witnesses)
        self._witness_sizes: dict[str, int] = {}
        self._witness_errors: dict[str, str] = {}
        self._published = published
        self._published_size = published_size
        self._pending: list[_Pending] = []
        self._oldest = 0.0
        self._wake = asyncio.Event()
        self._state_wake = asyncio.Event()
        self._witness_wake = asyncio.Event()
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
        tree = _rebuild(
            stored.origin,
            origin,
            stored.leaf_hashes,
            stored.leaf_count,
            stored.next_index,
            stored.checkpoint,
            stored.checkpoint_size,
        )
        await asyncio.to_thread(_check_state_file, path, origin, tree)
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
        )
        if stored.cosigned is not None:
            for w in log._witnesses:
                with contextlib.suppress(VerificationError):
                    if w.verifier.name in cosignatures_in(stored.cosigned, [w.verifier]):
                        log._witness_sizes[w.verifier.name] = stored.cosigned_size
        log._start()
        return log

    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run_writer(), name="audit-writer"),
            asyncio.create_task(self._run_state(), name="audit-state"),
            asyncio.create_task(self._run_witnesses(), name="audit-witnesses"),
        ]
        self._state_wake.set()
        self._witness_wake.set()

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
        return dict(self._witness_errors)

    def latest_checkpoint(self) -> str:
        """The latest signed checkpoint, with the cosignatures gathered for it so far."""
        if self._published is not None and self._published_size == self._size:
            return self._published
        return self._checkpoint

    def latest_cosigned_checkpoint(self) -> str | None:
        """The newest checkpoint that carries witness cosignatures, if any."""
        return self._published

    def latest_cosigned_size(self) -> int:
        """The size of ``latest_cosigned_checkpoint`` (0 if none)."""
        return self._published_size if self._published is not None else 0

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash of entry ``index``; ``NotFound`` beyond the log."""
        if not 0 <= index < self._size:
            raise NotFound(f"no entry {index}: the log has {self._size} entries")
        return self._tree.leaf_hash_at(index)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of entry ``index`` in the tree of ``size`` entries.

        Raises ``NotFound`` unless ``0 <= index < size <= self.size``.
        """
        if not 0 <= index < size <= self._size:
            raise NotFound(f"no entry {index} in a tree of size {size} (log size {self._size})")
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The consistency proof from ``old_size`` to ``new_size``; ``NotFound`` unless
        ``0 <= old_size <= new_size <= self.size``."""
        if not 0 <= old_size <= new_size <= self._size:
            raise NotFound(
                f"no consistency proof from {old_size} to {new_size} (log size {self._size})"
            )
        return self._tree.consistency_proof(old_size, new_size)

    async def get_entry(self, index: int) -> bytes:
        """The canonical leaf bytes of entry ``index``; ``NotFound`` beyond the log."""
        if not 0 <= index < self._size:
            raise NotFound(f"no entry {index}: the log has {self._size} entries")
        found = await self._store.leaves(index, index + 1)
        if not found:
            raise AuditUnavailable(f"entry {index} is missing from the audit store")
        return found[0]

    async def checkpoint_at(self, size: int) -> str | None:
        """The checkpoint the log signed at exactly ``size`` entries, if one was."""
        return await self._store.checkpoint(size)

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        """Entries matching ``query`` by their searchable columns, oldest first."""
        return await self._store.search(query)

    async def append(self, entry: AuditEntry) -> Receipt:
        """Record ``entry`` durably and return its receipt.

        Raises ``InvalidArgument`` for an entry that cannot be encoded or a response leg whose
        ``request_leaf_index`` is not its request leg, ``AuditUnavailable`` when the store
        fails or the log is closed, ``LogInconsistent`` when the log refuses to sign.
        """
        if self._closing:
            raise AuditUnavailable("the audit log is closed")
        data = encode_entry(entry)
        columns = entry_columns(entry)
        if isinstance(entry, ResponseLeg):
            columns = with_request_columns(columns, await self._request_columns(entry))
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        pending = self._pending
        if not pending:
            self._oldest = asyncio.get_running_loop().time()
            self._wake.set()
        pending.append((data, leaf_hash(data), columns, future))
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
        if self._state_inflight is not None:
            await asyncio.gather(self._state_inflight, return_exceptions=True)
        try:
            await self._write_state()
        finally:
            await self._store.close()

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
            self._tree.extend([p[1] for p in batch])
            size = self._tree.size
            root = self._tree.root()
            self._check_consistent(size)
            note = sign_checkpoint(Checkpoint(self._origin, size, root), self._signer)
            leaves = [NewLeaf(start + i, p[0], p[1], p[2]) for i, p in enumerate(batch)]
            await self._store.commit(CommitBatch(leaves, size, note))
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
        self._state_wake.set()
        self._witness_wake.set()

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
        tree = _rebuild(
            stored.origin,
            self._origin,
            stored.leaf_hashes,
            stored.leaf_count,
            stored.next_index,
            stored.checkpoint,
            stored.checkpoint_size,
        )
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

    # -- background: state file and witnesses ------------------------------------------------

    async def _write_state(self) -> None:
        note = self._checkpoint
        if note == self._state_written:
            return
        write = asyncio.get_running_loop().run_in_executor(
            None, write_atomically, self._state_path, note.encode("utf-8")
        )
        self._state_inflight = write
        # Shielded: a write cut off by close() still finishes on its thread, and close() waits
        # for it, so an older note can never replace the newer one close() writes.
        await asyncio.shield(write)
        self._state_written = note

    async def _run_state(self) -> None:
        while True:
            await self._state_wake.wait()
            self._state_wake.clear()
            try:
                await self._write_state()
            except OSError as exc:
                logger.error(
                    "audit log %s: cannot write the state file %s: %s",
                    self._origin,
                    self._state_path,
                    exc,
                )
            # Coalesce: the batches committed meanwhile are recorded by the next write.
            await asyncio.sleep(self._state_interval)

    async def _run_witnesses(self) -> None:
        if not self._witnesses:
            return
        while True:
            await self._witness_wake.wait()
            self._witness_wake.clear()
            size, note = self._size, self._checkpoint
            if size == self._published_size and self._published is not None:
                continue
            try:
                await self._gather_cosignatures(size, note)
            except Exception:  # keep witnessing; one bad round must not end the task
                logger.exception(
                    "audit log %s: witness round for size %d failed", self._origin, size
                )

    async def _gather_cosignatures(self, size: int, note: str) -> None:
        results = await asyncio.gather(*(self._ask(w, size, note) for w in self._witnesses))
        lines = [sig for sig in results if sig is not None]
        if not lines:
            return
        cosigned = add_signatures(note, lines)
        try:
            await self._store.add_cosigned(size, cosigned)
        except FedgateError as exc:
            logger.error(
                "audit log %s: cannot store a cosigned checkpoint: %s", self._origin, exc.message
            )
        if size >= self._published_size:
            self._published, self._published_size = cosigned, size

    async def _ask(self, witness: WitnessClient, size: int, note: str) -> NoteSignature | None:
        name = witness.verifier.name
        old = self._witness_sizes.get(name, 0)
        body = parse_note(note).text
        for _ in range(2):
            if old > size:
                self._witness_errors[name] = (
                    f"witness {name} has cosigned size {old}, more than this log's {size}: the "
                    "log was rolled back"
                )
                logger.error("audit log %s: %s", self._origin, self._witness_errors[name])
                return None
            try:
                proof = self._tree.consistency_proof(old, size)
                sig = await asyncio.wait_for(
                    witness.add_checkpoint(old, proof, note), _WITNESS_TIMEOUT_S
                )
                witness.verifier.verify(body, sig)
            except WitnessConflict as exc:
                old = exc.size
                continue
            except (FedgateError, TimeoutError, OSError) as exc:
                message = exc.message if isinstance(exc, FedgateError) else repr(exc)
                self._witness_errors[name] = message
                logger.warning(
                    "audit log %s: witness %s did not cosign size %d: %s",
                    self._origin,
                    name,
                    size,
                    message,
                )
                return None
            self._witness_sizes[name] = size
            self._witness_errors.pop(name, None)
            return sig
        return None


def _check_state_file(path: Path, origin: str, tree: MerkleTree) -> None:
    """Refuse (``LogInconsistent``) a store behind or forked from the last signed checkpoint."""
    try:
        note = path.read_text("utf-8")
    except FileNotFoundError:
        if tree.size:
            raise LogInconsistent(
                f"the audit log state file {path} is missing but the store holds {tree.size} "
                "entries: cannot tell whether the database was rolled back. Copy the state "
                "file with the database, or write the latest witness-cosigned checkpoint note "
                "into it. Refusing to sign"
            ) from None
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise LogInconsistent(f"cannot read the audit log state file {path}: {exc}") from exc
    try:
        cp = parse_checkpoint(parse_note(note).text)
    except VerificationError as exc:
        raise LogInconsistent(
            f"the audit log state file {path} is not a checkpoint note: {exc.message}"
        ) from exc
    if cp.origin != origin:
        raise LogInconsistent(f"the state file {path} is for log {cp.origin!r}, not {origin!r}")
    if cp.size > tree.size:
        raise LogInconsistent(
            f"the audit store holds {tree.size} entries but this log already signed a checkpoint "
            f"of size {cp.size} (state file {path}): the database was restored from an older "
            "copy or truncated. Refusing to sign"
        )
    if tree.root(cp.size) != cp.root_hash:
        raise LogInconsistent(
            f"the audit store's first {cp.size} entries do not match the checkpoint this log "
            f"signed at that size (state file {path}): the database was replaced or altered. "
            "Refusing to sign"
        )
