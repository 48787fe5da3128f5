"""Full verification of an audit log shard, as ``fedgate audit verify`` runs it.

Nothing read from the store is trusted. The checks, which stop at the first failure:

- every checkpoint the log stored is signed by the log's key, for this origin and its size;
- entries are numbered 0..n-1 without gaps, each entry's bytes hash to its stored leaf hash and
  decode strictly, and each response leg names an earlier request leg of the same request;
- the Merkle root recomputed from the entries equals every stored checkpoint's root, and
  successive checkpoints are consistent (RFC 9162 proofs); no checkpoint is beyond the entries
  (truncation) and no entry is outside every checkpoint;
- each cosigned checkpoint matches the log and every cosignature on it verifies with a
  witness key from the registry;
- optionally, each entry's search-index row equals what the entry says (``check_index``);
- optionally (given the federation directory), each allowed request's signature with a key
  valid when it was issued, each kept response's signature and its binding to the request.
  Refused requests and node faults are counted, not failed: a bad signature is a reason to
  refuse a request, and an agency answer the gateway rejected is logged as a node fault.

Entry checks run in worker processes over chunks of the log (``jobs``); the tree is built in
this process from the leaf hashes the workers return.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from fedgate.audit_entry import (
    EntryKind,
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
from fedgate.merkle import HASH_SIZE, MerkleTree, verify_consistency
from fedgate.note import NoteVerifier, verify_note
from fedgate.registry import Registry

__all__ = [
    "Failure",
    "LogSource",
    "SignatureCounts",
    "StoredRow",
    "VerifyOptions",
    "VerifyReport",
    "normalized_subjects",
    "verify_log",
]

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

    def leaf_rows(self, start: int, stop: int) -> list[tuple[int, bytes, bytes]]: ...

    def checkpoints(self) -> list[tuple[int, str]]: ...

    def cosigned_checkpoints(self) -> list[tuple[int, str]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """``federation`` (a federation directory) turns on signature checks; ``jobs`` worker
    processes check chunks of ``chunk`` entries."""

    check_index: bool = True
    federation: Path | None = None
    jobs: int = 1
    chunk: int = 20_000


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

    def add(self, other: SignatureCounts) -> None:
        self.requests_verified += other.requests_verified
        self.refused_signed += other.refused_signed
        self.refused_unverifiable += other.refused_unverifiable
        self.responses_verified += other.responses_verified
        self.responses_without_envelope += other.responses_without_envelope
        self.node_faults_unverifiable += other.node_faults_unverifiable


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

    @property
    def ok(self) -> bool:
        return self.failure is None


# -- per-chunk checks (in worker processes) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    start: int
    hashes: bytes
    failure: Failure | None
    counts: SignatureCounts


class _Checker:
    """Checks chunks of entries from one source; lives in each worker process."""

    def __init__(
        self, open_source: Callable[[], LogSource], federation: Path | None, check_index: bool
    ) -> None:
        self.source = open_source()
        self.keys = HistoricalKeys(Registry.load_dir(federation)) if federation else None
        self.check_index = check_index

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

    def check_structure(self, start: int, stop: int) -> _ChunkResult:
        """``check`` without the index and signature checks, lean: the bulk of a big log."""
        hashes: list[bytes] = []
        append = hashes.append
        sha = hashlib.sha256
        link = entry_link
        request_ids: dict[int, str] = {}
        request_kind, response_kind = int(EntryKind.REQUEST), int(EntryKind.RESPONSE)
        expect = start
        failure: Failure | None = None
        for idx, data, stored_hash in self.source.leaf_rows(start, stop):
            if idx != expect:
                failure = Failure(f"entry {expect} is missing from the store", expect)
                break
            expect += 1
            h = sha(b"\x00" + data).digest()
            if h != stored_hash:
                failure = Failure(
                    f"entry {idx} was altered: its bytes do not hash to its stored leaf hash", idx
                )
                break
            try:
                kind, request_id, r = link(data)
            except VerificationError as exc:
                failure = Failure(f"entry {idx} does not decode: {exc.message}", idx)
                break
            if kind == request_kind:
                request_ids[idx] = request_id
            elif kind == response_kind and request_ids.get(r) != request_id:
                request = self._request_at(r, {}) if r < idx else None
                if request is None or request[0] != EntryKind.REQUEST or request[1] != request_id:
                    failure = Failure(
                        f"entry {idx}: response leg names entry {r}, which is not an earlier "
                        f"request leg of request {request_id!r}",
                        idx,
                    )
                    break
            append(h)
        if failure is None and expect != stop:
            failure = Failure(f"entry {expect} is missing from the store", expect)
        return _ChunkResult(start, b"".join(hashes), failure, SignatureCounts())

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

        def done(failure: Failure | None) -> _ChunkResult:
            return _ChunkResult(start, b"".join(hashes), failure, counts)

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
            if cols[0] == EntryKind.RESPONSE:
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
            if self.check_index:
                expected = (*cols[:10], normalized_subjects(cols[10]), cols[11])
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
            body = envs.get(entry.request_leaf_index)
            if body is None:
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


_worker: _Checker | None = None


def _init_worker(
    open_source: Callable[[], LogSource], federation: Path | None, check_index: bool
) -> None:
    global _worker
    _worker = _Checker(open_source, federation, check_index)


def _check_in_worker(span: tuple[int, int]) -> _ChunkResult:
    assert _worker is not None
    return _worker.check(*span)


def _results(
    open_source: Callable[[], LogSource], options: VerifyOptions, spans: list[tuple[int, int]]
) -> Iterator[_ChunkResult]:
    if options.jobs <= 1 or len(spans) <= 1:
        checker = _Checker(open_source, options.federation, options.check_index)
        try:
            for span in spans:
                yield checker.check(*span)
        finally:
            checker.source.close()
        return
    # fork starts workers instantly, but is only safe in a single-threaded process (the CLI);
    # elsewhere (a server, a test runner with threads) use a clean forkserver.
    single = threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if single else "forkserver")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=options.jobs,
        mp_context=context,
        initializer=_init_worker,
        initargs=(open_source, options.federation, options.check_index),
    ) as pool:
        yield from pool.map(_check_in_worker, spans)


# -- the whole log ---------------------------------------------------------------------------


def _open_checkpoints(
    rows: list[tuple[int, str]], origin: str, verifiers: Sequence[NoteVerifier]
) -> tuple[list[Checkpoint], Failure | None]:
    out: list[Checkpoint] = []
    for size, note in rows:
        try:
            parsed, _ = verify_note(note, verifiers)
            cp = parse_checkpoint(parsed.text)
        except VerificationError as exc:
            return out, Failure(
                f"checkpoint at size {size} is not signed by the log's key: {exc.message}",
                size=size,
            )
        if cp.origin != origin or cp.size != size:
            return out, Failure(
                f"checkpoint stored at size {size} is for {cp.origin!r} size {cp.size}: it was "
                "replaced",
                size=size,
            )
        out.append(cp)
    return out, None


class _TreeChecks:
    """Builds the tree from chunk hashes and checks the checkpoints as it goes."""

    def __init__(self, checkpoints: list[Checkpoint]) -> None:
        self.tree = MerkleTree()
        self.checkpoints = checkpoints
        self.next = 0
        self.prev: Checkpoint | None = None

    def extend(self, hashes: bytes) -> Failure | None:
        self.tree.extend(hashes[i : i + HASH_SIZE] for i in range(0, len(hashes), HASH_SIZE))
        tree = self.tree
        while self.next < len(self.checkpoints) and self.checkpoints[self.next].size <= tree.size:
            cp = self.checkpoints[self.next]
            lo = self.prev.size if self.prev is not None else 0
            root = tree.root(cp.size)
            if root != cp.root_hash:
                if cp.size - lo == 1:
                    what = f"entry {lo} does not match"
                else:
                    what = (
                        f"entries {lo}..{cp.size - 1} do not match (one of them is the first "
                        "bad entry)"
                    )
                return Failure(
                    f"{what} the checkpoint of size {cp.size} the log signed: altered, replaced, "
                    "reordered or deleted",
                    index=lo,
                    size=cp.size,
                )
            if self.prev is not None:
                try:
                    proof = tree.consistency_proof(self.prev.size, cp.size)
                    verify_consistency(
                        self.prev.size, cp.size, proof, self.prev.root_hash, cp.root_hash
                    )
                except VerificationError as exc:
                    return Failure(
                        f"checkpoints of sizes {self.prev.size} and {cp.size} are not "
                        f"consistent: {exc.message}",
                        size=cp.size,
                    )
            self.prev = cp
            self.next += 1
        return None


def _check_cosigned(
    rows: list[tuple[int, str]],
    tree: MerkleTree,
    origin: str,
    log_keys: Sequence[NoteVerifier],
    witnesses: Sequence[CosignatureVerifier],
) -> tuple[dict[str, int], Failure | None]:
    counts: dict[str, int] = {}
    log_ids = {(v.name, v.key_hash) for v in log_keys}
    by_id = {(w.name, w.key_hash): w for w in witnesses}
    for size, note in rows:
        try:
            parsed, _ = verify_note(note, log_keys)
            cp = parse_checkpoint(parsed.text)
        except VerificationError as exc:
            return counts, Failure(
                f"cosigned checkpoint at size {size} is not signed by the log: {exc.message}",
                size=size,
            )
        if cp.origin != origin or cp.size != size or size > tree.size:
            return counts, Failure(
                f"cosigned checkpoint stored at size {size} is for {cp.origin!r} size {cp.size} "
                f"(the log has {tree.size} entries)",
                size=size,
            )
        if tree.root(size) != cp.root_hash:
            return counts, Failure(
                f"cosigned checkpoint at size {size} does not match the entries", size=size
            )
        for sig in parsed.signatures:
            key = (sig.name, sig.key_hash)
            if key in log_ids:
                continue
            witness = by_id.get(key)
            if witness is None:
                return counts, Failure(
                    f"cosigned checkpoint at size {size} carries a signature by an unknown key "
                    f"{sig.name}+{sig.key_hash.hex()}",
                    size=size,
                )
            try:
                witness.verify(parsed.text, sig)
            except VerificationError as exc:
                return counts, Failure(
                    f"cosigned checkpoint at size {size}: {exc.message}", size=size
                )
            counts[sig.name] = counts.get(sig.name, 0) + 1
    return counts, None


def verify_log(
    open_source: Callable[[], LogSource],
    *,
    log_keys: Sequence[NoteVerifier],
    witnesses: Sequence[CosignatureVerifier] = (),
    options: VerifyOptions = VerifyOptions(),
    progress: Callable[[int, int, float], None] | None = None,
    witnessed: Sequence[tuple[str, str]] = (),
) -> VerifyReport:
    """Verify a whole shard; the report's ``failure`` is the first problem, if any.

    ``witnessed`` are (source, note) checkpoints the witnesses cosigned, from outside the log
    (fetched from them, or a file): the log MUST NOT be smaller than or inconsistent with any
    of them (``fedgate.cosigned.check_log_against``), or it was rolled back. Their witness
    signatures are the caller's to check.

    ``open_source`` must be picklable when ``options.jobs > 1`` (workers open their own
    connection). ``progress(done, total, elapsed_s)`` is called after each chunk. Raises
    ``FedgateError`` only when the store cannot be read.
    """
    t0 = time.monotonic()
    source = open_source()
    try:
        origin = source.origin
        total = source.next_index()
        cp_rows = source.checkpoints()
        cosigned_rows = source.cosigned_checkpoints()
    finally:
        source.close()
    counts = SignatureCounts() if options.federation is not None else None

    def report(failure: Failure | None, done: int, witness_counts: dict[str, int]) -> VerifyReport:
        return VerifyReport(
            origin=origin,
            entries=total,
            checkpoints=len(cp_rows),
            cosigned=len(cosigned_rows),
            witnesses=tuple(sorted(witness_counts.items())),
            signatures=counts,
            index_checked=options.check_index,
            seconds=time.monotonic() - t0,
            failure=failure,
            verified_entries=done,
        )

    checkpoints, failure = _open_checkpoints(cp_rows, origin, log_keys)
    if failure is not None:
        return report(failure, 0, {})
    if not checkpoints:
        return report(Failure("the log has no signed checkpoint"), 0, {})
    checks = _TreeChecks(checkpoints)
    failure = checks.extend(b"")  # the checkpoint of the empty tree, signed when a log starts
    if failure is not None:
        return report(failure, 0, {})
    spans = [(a, min(a + options.chunk, total)) for a in range(0, total, options.chunk)]
    for result in _results(open_source, options, spans):
        failure = checks.extend(result.hashes)
        if counts is not None:
            counts.add(result.counts)
        failure = failure or result.failure
        if failure is not None:
            return report(failure, checks.tree.size, {})
        if progress is not None:
            progress(checks.tree.size, total, time.monotonic() - t0)
    tree = checks.tree
    if checks.next < len(checkpoints):
        cp = checkpoints[checks.next]
        return report(
            Failure(
                f"the log was truncated: the checkpoint of size {cp.size} covers entries up to "
                f"{cp.size - 1} but the store ends at {tree.size}",
                index=tree.size,
                size=cp.size,
            ),
            tree.size,
            {},
        )
    if tree.size > checkpoints[-1].size:
        return report(
            Failure(
                f"entries {checkpoints[-1].size}..{tree.size - 1} are not covered by any signed "
                "checkpoint",
                index=checkpoints[-1].size,
            ),
            tree.size,
            {},
        )
    witness_counts, failure = _check_cosigned(cosigned_rows, tree, origin, log_keys, witnesses)
    if failure is not None:
        return report(failure, tree.size, witness_counts)
    compared: list[tuple[str, int]] = []
    for source_name, note in witnessed:
        try:
            cp = check_log_against(
                note,
                origin=origin,
                log_keys=log_keys,
                size=tree.size,
                root_at=tree.root,
                source=source_name,
            )
        except VerificationError as exc:
            return report(Failure(exc.message, index=tree.size), tree.size, witness_counts)
        compared.append((source_name, cp.size))
    done = report(None, tree.size, witness_counts)
    return replace(done, witnessed=tuple(compared))
