"""Full verification of an audit log shard, as ``fedgate audit verify`` runs it.

Nothing read from the store is trusted. The checks, which stop at the first failure:

- every checkpoint the log stored is signed by the log's key, for this origin and its size;
- entries are numbered 0..n-1 without gaps, each entry's bytes hash to its stored leaf hash and
  decode strictly, and each response leg names an earlier request leg of the same request
  (or, for a ticket answer fetched by another instance, a request leg in another shard:
  ``cross_shard_links`` checks those where every shard is at hand);
- the Merkle root recomputed from the entries equals every stored checkpoint's root (so
  successive checkpoints are consistent: their roots come from one sequence of entries); no
  checkpoint is beyond the entries (truncation) and no entry is outside every checkpoint;
- every C2SP tile the store holds equals the tile recomputed from the entries, and no tile lies
  beyond them (proofs and tile clients are served from the tiles);
- each cosigned checkpoint matches the log and every cosignature on it verifies with a
  witness key from the registry;
- optionally, each entry's search-index row equals what the entry says (``check_index``);
- a store that retired its oldest months of leaves (PostgreSQL retention, ``LogSource.retired``)
  is verified from its first kept entry on (the tree of the retired entries is read from the
  stored tiles and checked, with the kept entries, against the first signed checkpoint past
  them), and each retired range MUST be named by a ``leaves_retired`` event in the verified
  part of the log (``RetirementClaim``): exactly (shard, month, first and last entry), or
  within the shard's whole retired range so far that a newer event names (from entry 0 to the
  end of one of the store's retired ranges: an older event may have been retired since, with
  the month that held it); a range no such event names was deleted, not retired, and fails
  (``settle_retirements`` looks for the event in the other shards too: any gateway instance
  may run the retention job);
- optionally (given the federation directory), each allowed request's signature with a key
  valid when it was issued, each kept response's signature and its binding to the request.
  Refused requests and node faults are counted, not failed: a bad signature is a reason to
  refuse a request, and an agency answer the gateway rejected is logged as a node fault.

Entry checks run over chunks of the log (chunk bounds on multiples of 256, so each full tile
lies in one chunk; a short log is split so that each of the ``jobs`` has one), in this process
and ``jobs - 1`` worker processes; this process folds what the chunks give (the leaf hashes and
the root of each full tile) into a compact range and recomputed tiles, a tile at a time, reading
checkpoints chunk by chunk: memory stays constant however long the log.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from fedgate.audit_entry import (
    EntryKind,
    EventEntry,
    IndexColumns,
    RequestLeg,
    ResponseLeg,
    decode_entry,
    entry_link,
    index_columns,
    with_request_columns,
)
from fedgate.checkpoint import Checkpoint, CosignatureVerifier, parse_checkpoint
from fedgate.cosigned import check_log_against
from fedgate.errors import VerificationError
from fedgate.evidence import HistoricalKeys, check_request_leg, check_response_leg
from fedgate.merkle import HASH_SIZE, CompactRange
from fedgate.note import NoteVerifier, verify_note
from fedgate.registry import Registry
from fedgate.sealed import sealed_digest
from fedgate.tiles import TILE_HEIGHT, TILE_WIDTH, TiledTree, edge_of, tile_path, tile_root

__all__ = [
    "RETIRED_EVENT",
    "CrossShardLink",
    "Failure",
    "LogSource",
    "RetiredRange",
    "RetirementClaim",
    "SignatureCounts",
    "StoredRow",
    "VerifyOptions",
    "VerifyReport",
    "check_cross_shard_links",
    "normalized_subjects",
    "settle_retirements",
    "verify_log",
]

RETIRED_EVENT = "leaves_retired"
"""The event the retention job logs before it detaches a month of leaves."""

StoredRow = tuple[int, bytes, bytes, IndexColumns]
"""A stored leaf as read back: index, leaf bytes, stored leaf hash, stored search columns."""


def normalized_subjects(subjects: Sequence[str]) -> tuple[str, ...]:
    """Subjects as the stores keep them: sorted, without duplicates or empty strings."""
    return tuple(sorted({s for s in subjects if s}))


class LogSource(Protocol):
    """Read access to one stored shard (both audit stores provide it)."""

    @property
    def origin(self) -> str: ...

    def next_index(self) -> int: ...

    def rows(self, start: int, stop: int) -> list[StoredRow]: ...

    def leaves(self, start: int, stop: int) -> list[bytes]: ...

    def leaf_rows(self, start: int, stop: int) -> Iterable[tuple[int, bytes, bytes]]:
        """Entries ``[start, stop)``: (index, leaf, stored leaf hash), in order; streamed where
        the store can (verification reads each once)."""
        ...

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]: ...

    def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]: ...

    def checkpoints_in(self, lo: int, hi: int) -> list[tuple[int, str]]: ...

    def checkpoint_at_or_before(self, size: int) -> tuple[int, str] | None: ...

    def cosigned_in(self, lo: int, hi: int) -> list[tuple[int, str]]: ...

    def retired(self) -> list[RetiredRange]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetiredRange:
    """Entries ``first..stop-1`` of a shard the store says it retired (month ``YYYY-MM``)."""

    month: str
    first: int
    stop: int


@dataclass(frozen=True, slots=True)
class RetirementClaim:
    """A ``leaves_retired`` event found in the verified part of a log: the entry that logged
    it, the month, each shard's range of that month it names (origin, first, stop), and each
    shard's whole retired range after it (``through``: origin, 0, stop; empty in the events
    written before it was logged)."""

    index: int
    month: str
    ranges: tuple[tuple[str, int, int], ...]
    through: tuple[tuple[str, int, int], ...] = ()

    def names(self, origin: str, retired: RetiredRange, shard: Sequence[RetiredRange]) -> bool:
        """Whether the event names ``retired``, one of ``shard`` (the retired ranges of
        ``origin``, oldest first): exactly, as that month's range, or within the retired
        prefix it names, which must end exactly where one of the shard's ranges ends, in
        this event's month or before (the newest event accounts for the months retired
        before it, whose own events may have been retired since)."""
        if self.month == retired.month and (origin, retired.first, retired.stop) in self.ranges:
            return True
        return any(
            o == origin
            and retired.stop <= stop
            and any(r.stop == stop and r.month <= self.month for r in shard)
            for o, _, stop in self.through
        )


def _span_ranges(text: str) -> tuple[tuple[str, int, int], ...] | None:
    """``origin first..last; ...`` as (origin, first, stop) ranges; None when malformed."""
    ranges: list[tuple[str, int, int]] = []
    for part in text.split("; "):
        origin, _, span = part.rpartition(" ")
        first, sep, last = span.partition("..")
        try:
            a, b = int(first), int(last) + 1
        except ValueError:
            return None
        if not origin or not sep or a < 0 or b < a:
            return None
        ranges.append((origin, a, b))
    return tuple(ranges)


def _claim(index: int, data: bytes) -> RetirementClaim | None:
    """The retirement an event entry logs, if it is a well-formed ``leaves_retired`` event
    (a malformed one names nothing, so what it would cover fails). A whole retired range
    (``retired``) must start at entry 0. It decodes the entry: the checks call it only for
    the events whose kind (read by their own parse) is ``RETIRED_EVENT``."""
    entry = decode_entry(data)
    if not isinstance(entry, EventEntry) or entry.kind != RETIRED_EVENT:
        return None
    detail = dict(entry.detail)
    ranges = _span_ranges(detail.get("entries", ""))
    through: tuple[tuple[str, int, int], ...] | None = ()
    if "retired" in detail:
        through = _span_ranges(detail["retired"])
    if ranges is None or through is None or any(a != 0 for _, a, _ in through):
        return None
    return RetirementClaim(index, detail.get("month", ""), ranges, through)


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """``federation`` (a federation directory) turns on signature checks; ``jobs`` worker
    processes check chunks of ``chunk`` entries."""

    check_index: bool = True
    federation: Path | None = None
    jobs: int = 1
    chunk: int = 20_000
    check_tiles: bool = True
    """Off only for a log written before tiles (``fedgate audit migrate`` verifies it first)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The first problem found: the first bad entry when one can be named, the checkpoint
    size when a checkpoint is involved, and what is wrong."""

    message: str
    index: int | None = None
    size: int | None = None


@dataclass(slots=True)
class SignatureCounts:
    requests_verified: int = 0
    refused_signed: int = 0
    refused_unverifiable: int = 0
    responses_verified: int = 0
    responses_without_envelope: int = 0
    node_faults_unverifiable: int = 0
    sealed: int = 0
    """Legs whose envelopes are sealed (stored encrypted beside the log): the gateway checked
    their signatures before logging them; verification without the bodies cannot."""

    def add(self, other: SignatureCounts) -> None:
        self.requests_verified += other.requests_verified
        self.refused_signed += other.refused_signed
        self.refused_unverifiable += other.refused_unverifiable
        self.responses_verified += other.responses_verified
        self.responses_without_envelope += other.responses_without_envelope
        self.node_faults_unverifiable += other.node_faults_unverifiable
        self.sealed += other.sealed


@dataclass(frozen=True, slots=True)
class CrossShardLink:
    """A response leg of this shard whose request leg is in another shard (a ticket answered
    through another gateway instance): its index here, its leaf, and what it names."""

    index: int
    request_id: str
    request_origin: str
    request_leaf_index: int
    leaf: bytes
    stored: IndexColumns | None = None
    """The leg's stored index row, when the index is checked: its request's columns come from
    the other shard, so ``check_cross_shard_links`` checks it."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    origin: str
    entries: int
    checkpoints: int
    cosigned: int
    witnesses: tuple[tuple[str, int], ...]
    """Each witness and the number of cosigned checkpoints it signed."""
    signatures: SignatureCounts | None
    index_checked: bool
    seconds: float
    failure: Failure | None = None
    verified_entries: int = field(default=0)
    witnessed: tuple[tuple[str, int], ...] = ()
    """Each outside cosigned checkpoint the log was compared with: its source and size."""
    links: tuple[CrossShardLink, ...] = ()
    """The response legs naming a request leg in another shard, for ``check_cross_shard_links``
    (verifying one shard cannot check them)."""
    retired: tuple[RetiredRange, ...] = ()
    """The entries the store retired (oldest first, contiguous from 0)."""
    claims: tuple[RetirementClaim, ...] = ()
    """The ``leaves_retired`` events in the verified part of the log."""
    retired_by: tuple[tuple[RetiredRange, str, int], ...] = ()
    """Each retired range with the shard and entry of the event that names it."""
    verified_from: int = 0
    """The first entry verified (0: the whole log)."""
    anchor: int = 0
    """The size of the signed checkpoint the tree before ``verified_from`` was checked
    against (0: none needed)."""

    @property
    def unclaimed(self) -> tuple[RetiredRange, ...]:
        """Retired ranges no logged event names (yet: ``settle_retirements``)."""
        named = {r for r, _, _ in self.retired_by}
        return tuple(r for r in self.retired if r not in named)

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.unclaimed


# -- per-chunk checks (in worker processes) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    start: int
    hashes: bytes
    failure: Failure | None
    counts: SignatureCounts
    signed: tuple[tuple[int, bytes], ...] | None = None
    """The checkpoints stored for the chunk's sizes, signature checked: (size, root)."""
    signed_failure: Failure | None = None
    """The first of them that failed its check (``signed`` holds those before it)."""
    links: tuple[CrossShardLink, ...] = ()
    claims: tuple[RetirementClaim, ...] = ()
    tile_roots: bytes = b""
    """The Merkle roots of the complete level-0 tiles (256 entries from a multiple of 256)
    among ``hashes``, in order: the main process folds one root per tile instead of 256
    leaf hashes."""


def _tile_roots(start: int, hashes: bytes) -> bytes:
    """``_ChunkResult.tile_roots`` of the leaf hashes of entries from ``start``."""
    first = -(-start // TILE_WIDTH)
    stop = (start + len(hashes) // HASH_SIZE) // TILE_WIDTH
    roots: list[bytes] = []
    for t in range(first, stop):
        at = (t * TILE_WIDTH - start) * HASH_SIZE
        roots.append(tile_root(hashes[at : at + _TILE_BYTES]))
    return b"".join(roots)


class _Checker:
    """Checks chunks of entries from one source; lives in each worker process."""

    def __init__(
        self,
        open_source: Callable[[], LogSource],
        federation: Path | None,
        check_index: bool,
        log_vkeys: Sequence[str] = (),
    ) -> None:
        self.source = open_source()
        self.keys = HistoricalKeys(Registry.load_dir(federation)) if federation else None
        self.check_index = check_index
        self.log_keys = [NoteVerifier.from_vkey(k) for k in log_vkeys]

    def run(self, start: int, stop: int) -> _ChunkResult:
        """``check`` the entries, and check the signatures of the chunk's checkpoints (the
        bulk of the cost when the log signs a checkpoint every few entries: it is spread over
        the workers, and the main process compares roots only)."""
        result = self.check(start, stop)
        result = replace(result, tile_roots=_tile_roots(start, result.hashes))
        signed: list[tuple[int, bytes]] = []
        origin = self.source.origin
        for size, note in self.source.checkpoints_in(start - (start == 0), stop):
            cp, failure = _open_checkpoint(size, note, origin, self.log_keys)
            if failure is not None:
                return replace(result, signed=tuple(signed), signed_failure=failure)
            assert cp is not None
            signed.append((size, cp.root_hash))
        return replace(result, signed=tuple(signed))

    def _request_at(self, i: int, cols: dict[int, IndexColumns]) -> IndexColumns | None:
        found = cols.get(i)
        if found is None:
            leaves = self.source.leaves(i, i + 1)
            if not leaves:
                return None
            try:
                found = index_columns(leaves[0])
            except VerificationError:
                return None
            cols[i] = found
        return found

    @staticmethod
    def _link(idx: int, data: bytes, stored: IndexColumns | None = None) -> CrossShardLink:
        leg = decode_entry(data)
        assert isinstance(leg, ResponseLeg)
        return CrossShardLink(
            idx, leg.request_id, leg.request_origin, leg.request_leaf_index, data, stored
        )

    def check_structure(self, start: int, stop: int) -> _ChunkResult:
        """``check`` without the index and signature checks, lean: the bulk of a big log."""
        hashes: list[bytes] = []
        append = hashes.append
        # A copy of a hash already fed the leaf prefix: OpenSSL 3 looks the digest up on
        # every ``hashlib.sha256()`` call, a copy does not (~15 % of a leaf hash).
        leaf_prefixed = hashlib.sha256(b"\x00").copy
        link = entry_link
        request_ids: dict[int, str] = {}
        request_kind, response_kind = int(EntryKind.REQUEST), int(EntryKind.RESPONSE)
        event_kind = int(EntryKind.EVENT)
        expect = start
        failure: Failure | None = None
        links: list[CrossShardLink] = []
        claims: list[RetirementClaim] = []
        for idx, data, stored_hash in self.source.leaf_rows(start, stop):
            if idx != expect:
                failure = Failure(f"entry {expect} is missing from the store", expect)
                break
            expect += 1
            hasher = leaf_prefixed()
            hasher.update(data)
            h = hasher.digest()
            if h != stored_hash:
                failure = Failure(
                    f"entry {idx} was altered: its bytes do not hash to its stored leaf hash", idx
                )
                break
            try:
                kind, key, r = link(data)  # key: the request id, or an event's kind
            except VerificationError as exc:
                failure = Failure(f"entry {idx} does not decode: {exc.message}", idx)
                break
            if kind == request_kind:
                request_ids[idx] = key
            elif kind == event_kind:
                claim = _claim(idx, data) if key == RETIRED_EVENT else None
                if claim is not None:
                    claims.append(claim)
            elif kind == response_kind and r < 0:
                links.append(self._link(idx, data))
            elif kind == response_kind and request_ids.get(r) != key:
                request = self._request_at(r, {}) if r < idx else None
                if request is None or request[0] != EntryKind.REQUEST or request[1] != key:
                    failure = Failure(
                        f"entry {idx}: response leg names entry {r}, which is not an earlier "
                        f"request leg of request {key!r}",
                        idx,
                    )
                    break
            append(h)
        if failure is None and expect != stop:
            failure = Failure(f"entry {expect} is missing from the store", expect)
        return _ChunkResult(
            start,
            b"".join(hashes),
            failure,
            SignatureCounts(),
            links=tuple(links),
            claims=tuple(claims),
        )

    def check(self, start: int, stop: int) -> _ChunkResult:
        """Every check on entries ``[start, stop)``; the first failure ends the chunk."""
        if not self.check_index and self.keys is None:
            return self.check_structure(start, stop)
        counts = SignatureCounts()
        hashes: list[bytes] = []
        sha = hashlib.sha256
        request_cols: dict[int, IndexColumns] = {}
        request_envs: dict[int, bytes] = {}
        expect = start
        links: list[CrossShardLink] = []
        claims: list[RetirementClaim] = []

        def done(failure: Failure | None) -> _ChunkResult:
            return _ChunkResult(
                start,
                b"".join(hashes),
                failure,
                counts,
                links=tuple(links),
                claims=tuple(claims),
            )

        for idx, data, stored_hash, stored in self.source.rows(start, stop):
            if idx != expect:
                return done(Failure(f"entry {expect} is missing from the store", expect))
            expect += 1
            h = sha(b"\x00" + data).digest()
            if h != stored_hash:
                return done(
                    Failure(
                        f"entry {idx} was altered: its bytes do not hash to its stored leaf hash",
                        idx,
                    )
                )
            try:
                cols = index_columns(data)
            except VerificationError as exc:
                return done(Failure(f"entry {idx} does not decode: {exc.message}", idx))
            linked = cols[0] == EntryKind.RESPONSE and cols[11] < 0
            if linked:
                # A ticket answer whose request leg is in another shard, named in the leg's
                # request_origin: ``check_cross_shard_links`` checks those over every shard,
                # with their index rows (which carry that request leg's columns).
                links.append(self._link(idx, data, stored if self.check_index else None))
            elif cols[0] == EntryKind.RESPONSE:
                r = cols[11]
                request = self._request_at(r, request_cols) if r < idx else None
                if request is None or request[0] != EntryKind.REQUEST or request[1] != cols[1]:
                    return done(
                        Failure(
                            f"entry {idx}: response leg names entry {r}, which is not an earlier "
                            f"request leg of request {cols[1]!r}",
                            idx,
                        )
                    )
                cols = with_request_columns(cols, request)
            elif cols[0] == EntryKind.REQUEST:
                request_cols[idx] = cols
            elif cols[0] == EntryKind.EVENT:
                claim = _claim(idx, data) if cols[6] == RETIRED_EVENT else None  # 6: its kind
                if claim is not None:
                    claims.append(claim)
            if self.check_index and not linked:
                expected = _expected_row(cols)
                if expected != stored:
                    names = (
                        "leg",
                        "request_id",
                        "time",
                        "requesting_agency",
                        "officer_id",
                        "case_number",
                        "action",
                        "target_agency",
                        "outcome",
                        "reason",
                        "subjects",
                        "request_leaf_index",
                    )
                    wrong = [n for n, a, b in zip(names, expected, stored, strict=True) if a != b]
                    return done(
                        Failure(
                            f"entry {idx}: its search index row does not match the entry "
                            f"({', '.join(wrong)}): the index was altered",
                            idx,
                        )
                    )
            if self.keys is not None:
                failure = self._check_signatures(idx, data, counts, request_envs)
                if failure is not None:
                    return done(failure)
            hashes.append(h)
        if expect != stop:
            return done(Failure(f"entry {expect} is missing from the store", expect))
        return done(None)

    def _check_signatures(
        self, idx: int, data: bytes, counts: SignatureCounts, envs: dict[int, bytes]
    ) -> Failure | None:
        assert self.keys is not None
        entry = decode_entry(data)
        if isinstance(entry, RequestLeg | ResponseLeg) and _is_sealed(entry):
            counts.sealed += 1
            return None
        if isinstance(entry, RequestLeg):
            try:
                check_request_leg(entry, self.keys)
            except VerificationError as exc:
                if entry.decision == "allowed":
                    return Failure(f"entry {idx}: allowed request: {exc.message}", idx)
                counts.refused_unverifiable += 1
                return None
            if entry.decision == "allowed":
                counts.requests_verified += 1
                envs[idx] = entry.envelope
            else:
                counts.refused_signed += 1
        elif isinstance(entry, ResponseLeg):
            body = None if entry.request_origin else envs.get(entry.request_leaf_index)
            if body is None and not entry.request_origin:
                leaves = self.source.leaves(entry.request_leaf_index, entry.request_leaf_index + 1)
                request = decode_entry(leaves[0]) if leaves else None
                body = request.envelope if isinstance(request, RequestLeg) else None
            try:
                signer = check_response_leg(entry, self.keys, request_body=body)
            except VerificationError as exc:
                if entry.status == "node_fault":
                    # The gateway logs a bad answer as a node fault: failing is expected.
                    counts.node_faults_unverifiable += 1
                    return None
                return Failure(f"entry {idx}: {exc.message}", idx)
            if signer is None:
                counts.responses_without_envelope += 1
            else:
                counts.responses_verified += 1
        return None


def _is_sealed(entry: RequestLeg | ResponseLeg) -> bool:
    field = entry.envelope if isinstance(entry, RequestLeg) else entry.response_envelope
    return sealed_digest(field) is not None


_worker: _Checker | None = None


def _init_worker(
    open_source: Callable[[], LogSource],
    federation: Path | None,
    check_index: bool,
    log_vkeys: Sequence[str],
) -> None:
    global _worker
    _worker = _Checker(open_source, federation, check_index, log_vkeys)


def _check_in_worker(span: tuple[int, int]) -> _ChunkResult:
    assert _worker is not None
    return _worker.run(*span)


def _start_method(open_source: Callable[[], LogSource]) -> multiprocessing.context.BaseContext:
    """fork starts workers in milliseconds, but is only safe in a single-threaded process (the
    CLI); elsewhere (a server, a test runner, a process that used gRPC) a clean forkserver.

    A forkserver's worker imports what it unpickles: the verifier and the store's module, about
    0.6 s each time. The forkserver, when this process first starts it, imports them
    once (its own start costs about that), and each pool after it starts in ~30 ms."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    server = multiprocessing.get_context("forkserver")
    opener = getattr(open_source, "func", open_source)  # a functools.partial: what it calls
    server.set_forkserver_preload([__name__, getattr(opener, "__module__", __name__)])
    return server


def _results(
    open_source: Callable[[], LogSource],
    options: VerifyOptions,
    spans: list[tuple[int, int]],
    log_vkeys: Sequence[str],
) -> Iterator[_ChunkResult]:
    """Chunk results in order. This process checks every ``jobs``-th chunk itself (the first
    among them, while the workers start) and ``jobs - 1`` worker processes the others: one
    process fewer to start and to pass results from. At most ``2 * (jobs - 1)`` chunks are in
    the workers' hands, so memory does not grow with the log (``pool.map`` would queue every
    finished chunk's hashes)."""
    checker = _Checker(open_source, options.federation, options.check_index, log_vkeys)
    try:
        if options.jobs <= 1 or len(spans) <= 1:
            for span in spans:
                yield checker.run(*span)
            return
        workers = options.jobs - 1
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_start_method(open_source),
            initializer=_init_worker,
            initargs=(open_source, options.federation, options.check_index, tuple(log_vkeys)),
        ) as pool:
            theirs = (k for k in range(len(spans)) if k % options.jobs)
            sent: dict[int, concurrent.futures.Future[_ChunkResult]] = {}
            for i, span in enumerate(spans):
                while len(sent) < 2 * workers and (k := next(theirs, None)) is not None:
                    sent[k] = pool.submit(_check_in_worker, spans[k])
                future = sent.pop(i, None)
                yield checker.run(*span) if future is None else future.result()
    finally:
        checker.source.close()


# -- the whole log ---------------------------------------------------------------------------


def _open_checkpoint(
    size: int, note: str, origin: str, verifiers: Sequence[NoteVerifier]
) -> tuple[Checkpoint | None, Failure | None]:
    try:
        parsed, _ = verify_note(note, verifiers)
        cp = parse_checkpoint(parsed.text)
    except VerificationError as exc:
        return None, Failure(
            f"checkpoint at size {size} is not signed by the log's key: {exc.message}", size=size
        )
    if cp.origin != origin or cp.size != size:
        return None, Failure(
            f"checkpoint stored at size {size} is for {cp.origin!r} size {cp.size}: it was "
            "replaced",
            size=size,
        )
    return cp, None


def _check_cosigned(
    size: int,
    note: str,
    root: bytes,
    origin: str,
    log_keys: Sequence[NoteVerifier],
    witnesses: Sequence[CosignatureVerifier],
    counts: dict[str, int],
) -> Failure | None:
    """One cosigned checkpoint against the root recomputed at its size."""
    log_ids = {(v.name, v.key_hash) for v in log_keys}
    by_id = {(w.name, w.key_hash): w for w in witnesses}
    try:
        parsed, _ = verify_note(note, log_keys)
        cp = parse_checkpoint(parsed.text)
    except VerificationError as exc:
        return Failure(
            f"cosigned checkpoint at size {size} is not signed by the log: {exc.message}",
            size=size,
        )
    if cp.origin != origin or cp.size != size:
        return Failure(
            f"cosigned checkpoint stored at size {size} is for {cp.origin!r} size {cp.size}",
            size=size,
        )
    if root != cp.root_hash:
        return Failure(f"cosigned checkpoint at size {size} does not match the entries", size=size)
    for sig in parsed.signatures:
        key = (sig.name, sig.key_hash)
        if key in log_ids:
            continue
        witness = by_id.get(key)
        if witness is None:
            return Failure(
                f"cosigned checkpoint at size {size} carries a signature by an unknown key "
                f"{sig.name}+{sig.key_hash.hex()}",
                size=size,
            )
        try:
            witness.verify(parsed.text, sig)
        except VerificationError as exc:
            return Failure(f"cosigned checkpoint at size {size}: {exc.message}", size=size)
        counts[sig.name] = counts.get(sig.name, 0) + 1
    return None


_TILE_BYTES = TILE_WIDTH * HASH_SIZE


class _Stream:
    """The tree state while the entries stream past: a ``CompactRange`` for roots, the tiles
    the entries complete (checked against the stored ones), and the checkpoints and cosigned
    checkpoints of each chunk, read chunk by chunk.

    A complete level-0 tile is the leaf hashes themselves (compared as bytes) and enters the
    range and the upper levels as one root, computed by the worker that checked its entries:
    this process, which every chunk passes through, does per tile what it did per entry. The
    upper levels are a ``TiledTree`` whose leaves are those roots (its level ``L`` is the log's
    level ``L + 1``); only the leaves around a checkpoint that is not on a tile boundary are
    appended one by one."""

    def __init__(
        self,
        source: LogSource,
        *,
        origin: str,
        log_keys: Sequence[NoteVerifier],
        witnesses: Sequence[CosignatureVerifier],
        start: int,
        frontier: list[bytes],
        edge: list[bytes],
        check_tiles: bool = True,
    ) -> None:
        self.source = source
        self.check_tiles = check_tiles
        self.origin = origin
        self.log_keys = log_keys
        self.witnesses = witnesses
        self.range = CompactRange(start, frontier)
        self.partial = bytes(edge[0])  # the leaf hashes of the open level-0 tile
        self.upper = TiledTree(size=start // TILE_WIDTH, edge=edge[1:] or [b""], read=_no_read)
        self.checkpoints = 0
        self.cosigned = 0
        self.witness_counts: dict[str, int] = {}
        self.last_signed = start
        self.last_root = self.range.root()

    def _advance(self, size: int, lo: int, hashes: bytes, roots: bytes, first: int) -> None:
        """Bring the range to ``size`` entries: whole tiles by their roots (``roots``, tiles
        ``first`` on) when on a tile boundary, else leaf by leaf from ``hashes`` (entries
        from ``lo``)."""
        r = self.range
        last = first + len(roots) // HASH_SIZE
        while r.size < size:
            at = r.size
            tile = at // TILE_WIDTH
            if at % TILE_WIDTH == 0 and at + TILE_WIDTH <= size and first <= tile < last:
                k = (tile - first) * HASH_SIZE
                r.append_subtree(roots[k : k + HASH_SIZE], TILE_HEIGHT)
                continue
            k = (at - lo) * HASH_SIZE
            r.append(hashes[k : k + HASH_SIZE])

    def _root_at(self, size: int, lo: int, hashes: bytes, roots: bytes, first: int) -> bytes:
        self._advance(size, lo, hashes, roots, first)
        return self.range.root()

    def extend(self, lo: int, hashes: bytes, checked: _ChunkResult | None = None) -> Failure | None:
        """Entries ``[lo, lo + n)`` given by their ``n`` leaf hashes; ``checked`` carries the
        chunk's checkpoints whose signatures a worker checked (read and checked here without
        it)."""
        hi = lo + len(hashes) // HASH_SIZE
        roots, first = b"", 0
        if checked is not None:
            roots, first = checked.tile_roots, -(-lo // TILE_WIDTH)
        notes: list[tuple[int, int, str | bytes]] = []
        signed_failure: Failure | None = None
        if checked is not None and checked.signed is not None:
            # Only up to the entries given: a chunk that failed returns the hashes before its
            # failure, which is reported after them.
            notes += [(size, 0, root) for size, root in checked.signed if size <= hi]
            failed = checked.signed_failure
            if failed is not None and (failed.size or 0) <= hi:
                signed_failure = failed
        else:
            notes += [(s, 0, note) for s, note in self.source.checkpoints_in(lo - (lo == 0), hi)]
        notes += [(size, 2, note) for size, note in self.source.cosigned_in(lo - (lo == 0), hi)]
        if signed_failure is not None:
            # Nothing past the first checkpoint that failed its check: it is the failure,
            # unless a root before it fails first.
            notes = [n for n in notes if n[0] < (signed_failure.size or 0)]
            notes.append((signed_failure.size or 0, 1, ""))
        notes.sort(key=lambda n: (n[0], n[1]))
        for size, kind, value in notes:
            if kind == 1:
                return signed_failure
            root = self._root_at(size, lo, hashes, roots, first)
            if kind == 2:
                assert isinstance(value, str)
                self.cosigned += 1
                failure = _check_cosigned(
                    size, value, root, self.origin, self.log_keys, self.witnesses,
                    self.witness_counts,
                )  # fmt: skip
                if failure is not None:
                    return failure
                continue
            if isinstance(value, str):
                cp, failure = _open_checkpoint(size, value, self.origin, self.log_keys)
                if failure is not None:
                    return failure
                assert cp is not None
                signed_root = cp.root_hash
            else:
                signed_root = value
            if root != signed_root:
                low = self.last_signed
                if size - low == 1:
                    what = f"entry {low} does not match"
                else:
                    what = (
                        f"entries {low}..{size - 1} do not match (one of them is the first bad "
                        "entry)"
                    )
                return Failure(
                    f"{what} the checkpoint of size {size} the log signed: altered, replaced, "
                    "reordered or deleted",
                    index=low,
                    size=size,
                )
            self.checkpoints += 1
            self.last_signed = size
        self._advance(hi, lo, hashes, roots, first)
        done = self._complete_tiles(lo, hashes, roots, first)
        if not self.check_tiles:
            return None
        return self._check_tiles(done)

    def _complete_tiles(
        self, lo: int, hashes: bytes, roots: bytes, first: int
    ) -> list[tuple[int, int, bytes]]:
        """The tiles of every level that entries ``[lo, lo + n)`` complete, ``(level, index,
        data)``; the roots of the level-0 ones go into the upper levels."""
        partial = self.partial
        pending = partial + hashes
        tiles = len(pending) // _TILE_BYTES
        index0 = (lo - len(partial) // HASH_SIZE) // TILE_WIDTH
        last = first + len(roots) // HASH_SIZE
        done: list[tuple[int, int, bytes]] = []
        made: list[bytes] = []
        for t in range(tiles):
            data = pending[t * _TILE_BYTES : (t + 1) * _TILE_BYTES]
            index = index0 + t
            if first <= index < last:
                k = (index - first) * HASH_SIZE
                made.append(roots[k : k + HASH_SIZE])
            else:
                made.append(tile_root(data))
            done.append((0, index, data))
        self.partial = pending[tiles * _TILE_BYTES :]
        done += [(level + 1, index, data) for level, index, data in self.upper.extend(made)]
        return done

    def _check_tiles(self, done: list[tuple[int, int, bytes]]) -> Failure | None:
        by_level: dict[int, list[tuple[int, bytes]]] = {}
        for level, index, data in done:
            by_level.setdefault(level, []).append((index, data))
        for level, made in by_level.items():
            stored = dict(self.source.tiles(level, made[0][0], made[-1][0] + 1))
            for index, data in made:
                if stored.get(index) != data:
                    first = index << (TILE_HEIGHT * (level + 1))
                    what = "is missing" if index not in stored else "does not match the entries"
                    return Failure(
                        f"the stored tile {tile_path(level, index)} {what}: proofs and tile "
                        "clients would be served a wrong tree",
                        index=first,
                    )
        return None

    def finish(self, total: int) -> Failure | None:
        """After the last entry: nothing signed beyond it, nothing of it unsigned, no tile
        stored beyond it."""
        beyond = self.source.checkpoints_in(total, _NO_END) + self.source.cosigned_in(
            total, _NO_END
        )
        if beyond:
            # A live shard (its gateway instance still writing) signs checkpoints past the
            # size read at the start: those are truncation only if the store does not hold
            # their entries now. The store is append-only, so re-reading its end tells.
            end = self.source.next_index()
            beyond = [b for b in beyond if b[0] > end]
        if beyond:
            size = min(b[0] for b in beyond)
            return Failure(
                f"the log was truncated: the checkpoint of size {size} covers entries up to "
                f"{size - 1} but the store ends at {end}",
                index=end,
                size=size,
            )
        if self.checkpoints == 0 and self.range.size == 0:
            return Failure("the log has no signed checkpoint")
        if total > self.last_signed:
            return Failure(
                f"entries {self.last_signed}..{total - 1} are not covered by any signed checkpoint",
                index=self.last_signed,
            )
        level = 0
        while self.check_tiles and total >> (TILE_HEIGHT * level):
            full = (total >> (TILE_HEIGHT * level)) // TILE_WIDTH
            if self.source.tiles(level, full, _NO_END):
                return Failure(f"the store holds tiles of level {level} beyond its entries")
            level += 1
        return None


_NO_END = 1 << 62


def _no_read(level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
    raise LookupError("verification recomputes tiles; it never reads them back")


def _start_state(
    source: LogSource, start: int, origin: str, log_keys: Sequence[NoteVerifier]
) -> tuple[int, list[bytes], list[bytes], Failure | None]:
    """Where ``verify --from start`` begins: the newest checkpoint at or before ``start``, the
    complete subtrees and partial tiles at its size, read from the stored tiles and checked
    against its signed root (so the tiles before it are trusted only as far as that root)."""
    found = source.checkpoint_at_or_before(start)
    if found is None:
        return 0, [], [b""], None
    size, note = found
    cp, failure = _open_checkpoint(size, note, origin, log_keys)
    if failure is not None:
        return 0, [], [], failure
    assert cp is not None
    try:
        edge_start = size - size % TILE_WIDTH
        edge = edge_of(size, source.leaf_hashes(edge_start, size), source.tiles)
        tree = TiledTree(size=size, edge=edge, read=source.tiles)
        frontier = tree.frontier(size)
    except (ValueError, LookupError) as exc:
        return 0, [], [], Failure(f"cannot start at size {size}: {exc}", size=size)
    if CompactRange(size, frontier).root() != cp.root_hash:
        return (
            0,
            [],
            [],
            Failure(
                f"the stored tiles up to size {size} do not match the checkpoint the log signed "
                "at that size: run the whole verification",
                size=size,
            ),
        )
    return size, frontier, edge, None


def _spans(start: int, stop: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` in chunks of about ``chunk`` entries whose bounds (but the first and
    last) are multiples of ``chunk`` rounded to whole tiles, so that every complete tile lies
    in one chunk (its worker computes its root)."""
    step = max(TILE_WIDTH, chunk - chunk % TILE_WIDTH)
    bounds = [start, *range((start // step + 1) * step, stop, step), stop]
    return [(a, b) for a, b in itertools.pairwise(bounds) if a < b]


def _chunk_size(count: int, options: VerifyOptions) -> int:
    """Entries per chunk for ``count`` entries: ``options.chunk``, or less so that each of the
    ``options.jobs`` (this process and the workers) has a chunk: a short log is checked on
    every core too. In whole tiles."""
    share = -(-count // max(1, options.jobs))
    return min(options.chunk, -(-share // TILE_WIDTH) * TILE_WIDTH)


_LIVE_ROUNDS = 5
"""How many times ``verify_log`` follows a live shard's growth to reach a signed checkpoint."""


def verify_log(
    open_source: Callable[[], LogSource],
    *,
    log_keys: Sequence[NoteVerifier],
    witnesses: Sequence[CosignatureVerifier] = (),
    options: VerifyOptions = VerifyOptions(),
    progress: Callable[[int, int, float], None] | None = None,
    witnessed: Sequence[tuple[str, str]] = (),
    start: int = 0,
) -> VerifyReport:
    """Verify a shard, from entry ``start`` on (0: the whole log); the report's ``failure`` is
    the first problem, if any.

    Memory does not grow with the log: entries stream past in chunks, roots come from a compact
    range, checkpoints are read chunk by chunk. From ``start > 0``, the tree before it is taken
    from the stored tiles, checked against the newest signed checkpoint at or before ``start``.

    ``witnessed`` are (source, note) checkpoints the witnesses cosigned, from outside the log
    (fetched from them, or a file): the log MUST NOT be smaller than or inconsistent with any
    of them (``fedgate.cosigned.check_log_against``), or it was rolled back. Their witness
    signatures are the caller's to check; the roots at their sizes are read from the stored
    tiles, which the verification has just checked.

    ``open_source`` must be picklable when ``options.jobs > 1`` (workers open their own
    connection). ``progress(done, total, elapsed_s)`` is called after each chunk. Raises
    ``FedgateError`` only when the store cannot be read.
    """
    t0 = time.monotonic()
    source = open_source()
    counts = SignatureCounts() if options.federation is not None else None
    try:
        origin = source.origin
        total = source.next_index()
        begin, frontier, edge = 0, list[bytes](), [b""]
        retired = tuple(source.retired())
        anchor = 0
        if retired and start > retired[-1].stop:
            retired = ()  # ``--from`` past them: what it skips is not its to check
        failure = _retired_prefix(retired)
        if failure is None and retired:
            begin = retired[-1].stop
            anchor, failure = _first_kept(source, begin)
            if failure is None:
                frontier, edge, failure = _retired_start(source, begin)
        elif failure is None and start > 0:
            begin, frontier, edge, failure = _start_state(source, start, origin, log_keys)
            anchor = begin
        stream = _Stream(
            source,
            origin=origin,
            log_keys=log_keys,
            witnesses=witnesses,
            start=begin,
            frontier=frontier,
            edge=edge or [b""],
            check_tiles=options.check_tiles,
        )

        def report(failure: Failure | None) -> VerifyReport:
            return VerifyReport(
                origin=origin,
                entries=total,
                checkpoints=stream.checkpoints,
                cosigned=stream.cosigned,
                witnesses=tuple(sorted(stream.witness_counts.items())),
                signatures=counts,
                index_checked=options.check_index,
                seconds=time.monotonic() - t0,
                failure=failure,
                verified_entries=stream.range.size - begin,
                links=tuple(links),
                retired=retired,
                claims=tuple(claims),
                retired_by=_named(origin, retired, claims),
                verified_from=begin,
                anchor=anchor,
            )

        links: list[CrossShardLink] = []
        claims: list[RetirementClaim] = []
        if failure is not None:
            return report(failure)
        if begin >= total:
            failure = stream.extend(begin, b"")
            return report(failure or stream.finish(total))
        vkeys = [k.vkey() for k in log_keys]
        done = begin
        for _ in range(_LIVE_ROUNDS):
            spans = _spans(done, total, _chunk_size(total - done, options))
            for result in _results(open_source, options, spans, vkeys):
                failure = stream.extend(result.start, result.hashes, result)
                if counts is not None:
                    counts.add(result.counts)
                links += result.links
                claims += result.claims
                failure = failure or result.failure
                if failure is not None:
                    return report(failure)
                if progress is not None:
                    progress(stream.range.size, total, time.monotonic() - t0)
            done = total
            # A live shard keeps growing while it is verified, and the store keeps only some
            # of its checkpoints (plus the newest, its head): the end read at the start may be
            # signed only by a checkpoint the store has since replaced. The entries up to the
            # store's end now are signed by its head (leaves and head commit together), so
            # carry on to there.
            if stream.last_signed >= total:
                break
            grown = source.next_index()
            if grown <= total:
                break
            total = grown
        failure = stream.finish(total)
        if failure is not None or not witnessed:
            return report(failure)
        compared, failure = _compare_witnessed(source, total, witnessed, origin, log_keys)
        return replace(report(failure), witnessed=tuple(compared))
    finally:
        source.close()


def _retired_prefix(retired: Sequence[RetiredRange]) -> Failure | None:
    """Retired entries are always the oldest: ranges contiguous from entry 0."""
    at = 0
    for r in retired:
        if r.first != at or r.stop < r.first:
            return Failure(
                f"the store says entries {r.first}..{r.stop - 1} (month {r.month}) were retired, "
                f"but retention only ever retires the oldest entries, from {at} on",
                index=min(at, r.first),
            )
        at = r.stop
    return None


def _first_kept(source: LogSource, retired_stop: int) -> tuple[int, Failure | None]:
    """The size of the first stored checkpoint past ``retired_stop`` (the first kept entry):
    the one that checks the tree the verification starts from."""
    for hi in (retired_stop + 2 * TILE_WIDTH, _NO_END):
        found = source.checkpoints_in(retired_stop, hi)
        if found:
            return found[0][0], None
    return 0, Failure(
        f"entries 0..{retired_stop - 1} are retired and the store keeps no signed checkpoint "
        "past them: nothing after them can be verified",
        index=retired_stop,
    )


def _retired_start(source: LogSource, stop: int) -> tuple[list[bytes], list[bytes], Failure | None]:
    """The tree of the ``stop`` retired entries, read from the stored tiles (the retired
    leaves of the last, partial, tile from the full level-0 tile that holds them: retention
    retires only tiled entries). Nothing here is trusted: the stream checks it, with the kept
    entries after it, against the first signed checkpoint past ``stop`` (``_first_kept``).
    Starting at ``stop`` rather than at that checkpoint also checks the entries between the
    two, where the retirement's own event may be."""
    try:
        hashes: list[bytes] = []
        if stop % TILE_WIDTH:
            tile = stop // TILE_WIDTH
            got = source.tiles(0, tile, tile + 1)
            if not got or len(got[0][1]) != _TILE_BYTES:
                raise ValueError(f"the tile {tile_path(0, tile)} of the last retired entries")
            data = got[0][1]
            hashes = [data[k * HASH_SIZE : (k + 1) * HASH_SIZE] for k in range(stop % TILE_WIDTH)]
        edge = edge_of(stop, hashes, source.tiles)
        frontier = TiledTree(size=stop, edge=edge, read=source.tiles).frontier(stop)
    except (ValueError, LookupError) as exc:
        return [], [], Failure(f"cannot start past the retired entries: {exc}", index=stop)
    return frontier, edge, None


def _named(
    origin: str, retired: Sequence[RetiredRange], claims: Sequence[RetirementClaim]
) -> tuple[tuple[RetiredRange, str, int], ...]:
    """Each retired range of ``origin`` with the first claim (of the shard ``origin``) that
    names it (``RetirementClaim.names``)."""
    out: list[tuple[RetiredRange, str, int]] = []
    for r in retired:
        claim = next((c for c in claims if c.names(origin, r, retired)), None)
        if claim is not None:
            out.append((r, origin, claim.index))
    return tuple(out)


def settle_retirements(reports: Sequence[VerifyReport]) -> list[VerifyReport]:
    """Over the shards of one database verified together: a shard's retired range may be
    named by the ``leaves_retired`` event of another shard (the instance that ran the
    retention job logs it in its own shard, naming every shard's range). Returns the reports
    with such ranges credited to the verified shard and entry whose event names them."""
    claims = [(r.origin, c) for r in reports if r.failure is None for c in r.claims]
    settled: list[VerifyReport] = []
    for report in reports:
        named = list(report.retired_by)
        for retired in report.unclaimed:
            found = next(
                ((o, c) for o, c in claims if c.names(report.origin, retired, report.retired)),
                None,
            )
            if found is not None:
                named.append((retired, found[0], found[1].index))
        named.sort(key=lambda n: n[0].first)
        settled.append(replace(report, retired_by=tuple(named)))
    return settled


def _expected_row(cols: IndexColumns) -> IndexColumns:
    """The stored index row of an entry whose (completed) columns are ``cols``."""
    return (*cols[:10], normalized_subjects(cols[10]), cols[11])


def check_cross_shard_links(
    reports: Sequence[VerifyReport],
    open_shard: Callable[[str], LogSource],
    *,
    federation: Path | None = None,
) -> Failure | None:
    """Over every shard of one database, after each verified on its own: each response leg
    naming a request leg in another shard (``VerifyReport.links``) MUST name a shard among
    ``reports`` whose entry at that index is an allowed request leg of the same request; with
    ``federation``, the answer MUST be bound to that request (``check_response_leg``). Returns
    the first failure, naming both entries; ``open_shard(origin)`` opens a shard's source."""
    verified = {r.origin for r in reports if r.ok}
    keys = HistoricalKeys(Registry.load_dir(federation)) if federation is not None else None
    opened: dict[str, LogSource] = {}
    try:
        for report in reports:
            for link in report.links:
                where = f"{report.origin} entry {link.index}"
                named = f"{link.request_origin} entry {link.request_leaf_index}"
                if link.request_origin not in verified:
                    return Failure(
                        f"{where}: its request leg is in {link.request_origin!r}, which is not "
                        "a verified shard of this database",
                        link.index,
                    )
                source = opened.get(link.request_origin)
                if source is None:
                    source = opened[link.request_origin] = open_shard(link.request_origin)
                at = link.request_leaf_index
                leaves = source.leaves(at, at + 1)
                request = decode_entry(leaves[0]) if leaves else None
                if (
                    not isinstance(request, RequestLeg)
                    or request.request_id != link.request_id
                    or request.decision != "allowed"
                ):
                    return Failure(
                        f"{where}: names {named}, which is not the allowed request leg of "
                        f"request {link.request_id!r}",
                        link.index,
                    )
                if link.stored is not None:
                    own = index_columns(link.leaf)
                    full = with_request_columns(own, index_columns(leaves[0]))
                    # Legs logged before their rows carried the request's columns keep
                    # their own columns only (docs/audit.md).
                    if link.stored not in (_expected_row(full), _expected_row(own)):
                        return Failure(
                            f"{where}: its search index row does not match the entry and its "
                            f"request leg {named}: the index was altered",
                            link.index,
                        )
                answer = decode_entry(link.leaf)
                if keys is None or not isinstance(answer, ResponseLeg) or _is_sealed(answer):
                    continue
                body = None if _is_sealed(request) else request.envelope
                try:
                    check_response_leg(answer, keys, request_body=body)
                except VerificationError as exc:
                    if answer.status != "node_fault":
                        return Failure(f"{where} (request {named}): {exc.message}", link.index)
    finally:
        for source in opened.values():
            source.close()
    return None


def _compare_witnessed(
    source: LogSource,
    size: int,
    witnessed: Sequence[tuple[str, str]],
    origin: str,
    log_keys: Sequence[NoteVerifier],
) -> tuple[list[tuple[str, int]], Failure | None]:
    """Compare a verified log of ``size`` entries with checkpoints the witnesses cosigned."""
    try:
        edge_start = size - size % TILE_WIDTH
        edge = edge_of(size, source.leaf_hashes(edge_start, size), source.tiles)
        tree = TiledTree(size=size, edge=edge, read=source.tiles)
    except (ValueError, LookupError) as exc:
        return [], Failure(f"cannot read the tree at size {size}: {exc}", size=size)
    compared: list[tuple[str, int]] = []
    for source_name, note in witnessed:
        try:
            cp = check_log_against(
                note,
                origin=origin,
                log_keys=log_keys,
                size=size,
                root_at=tree.root,
                source=source_name,
            )
        except VerificationError as exc:
            return compared, Failure(exc.message, index=size)
        compared.append((source_name, cp.size))
    return compared, None
