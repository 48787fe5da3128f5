"""The shared risk list as every member sees it: values, log leaves, verified batches, lookups.

The list is a transparency log of ``RiskListChange`` leaves (its own origin, checkpoints signed
by the gateway's key, cosigned by the witnesses). A member replicates it batch by batch with
``RiskListService.Follow``; ``verify_batch`` is the whole check a batch must pass before it is
applied, built only on the public formats in ``fedgate.merkle`` and ``fedgate.checkpoint``:

- the checkpoint note MUST be signed by a gateway key under the list's origin; known witness
  cosignatures on it MUST verify (a bad one is an error, not ignored);
- a checkpoint smaller than what the member holds, or of the same size with another root, MUST be
  refused (``LogInconsistent``: the list was rolled back or forked);
- the consistency proof from the member's size to the checkpoint's MUST verify, and the batch's
  leaves appended to the member's tree MUST give the checkpoint's root exactly;
- every leaf MUST decode as a ``RiskListChange`` with a canonical value.

``RiskIndex`` is the in-memory view the call/SMS and transfer paths check: one dict per category,
value → expiry in Unix microseconds; an entry past its expiry no longer matches.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.checkpoint import Checkpoint, CosignatureVerifier, parse_checkpoint
from fedgate.errors import InvalidArgument, LogInconsistent, NotCosigned, VerificationError
from fedgate.merkle import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash, verify_consistency
from fedgate.note import NoteVerifier, parse_note, verify_note
from fedgate.v1 import risklist_pb2

__all__ = [
    "CATEGORY_NAMES",
    "DEFAULT_TTL",
    "MAX_TTL",
    "RISKLIST_ORIGIN_SUFFIX",
    "CompactRange",
    "ListState",
    "RiskIndex",
    "VerifiedBatch",
    "canonical_value",
    "category_from_name",
    "decode_change",
    "micros",
    "risklist_origin",
    "verify_batch",
]

DEFAULT_TTL: Final = timedelta(days=90)
"""How long an entry stays listed when the request names no expiry."""
MAX_TTL: Final = timedelta(days=366)
"""The furthest ahead an add or extension may set an expiry (renew after that)."""
RISKLIST_ORIGIN_SUFFIX: Final = "/risklist"

C = risklist_pb2
CATEGORY_NAMES: Final[dict[int, str]] = {
    C.RISK_CATEGORY_PHONE_NUMBER: "phone",
    C.RISK_CATEGORY_BANK_ACCOUNT: "account",
    C.RISK_CATEGORY_DOMAIN: "domain",
    C.RISK_CATEGORY_URL: "url",
    C.RISK_CATEGORY_IP_ADDRESS: "ip",
    C.RISK_CATEGORY_DEVICE_ID: "device",
    C.RISK_CATEGORY_APP_PACKAGE: "app",
}
"""Short names of the categories, for the CLI, statistics and logs."""

_PHONE = re.compile(r"\+?[0-9]{5,20}")
_ACCOUNT = re.compile(r"[0-9]{8,32}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DEVICE = re.compile(r"[A-Za-z0-9:._-]{4,64}")
_APP = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
_MAX_URL = 2048
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def risklist_origin(audit_origin: str) -> str:
    """The risk list log's origin beside the gateway's audit log origin ``audit_origin``."""
    return audit_origin + RISKLIST_ORIGIN_SUFFIX


def category_from_name(name: str) -> risklist_pb2.RiskCategory.ValueType:
    """``phone`` → ``RISK_CATEGORY_PHONE_NUMBER``; raises ``InvalidArgument`` for others."""
    for value, short in CATEGORY_NAMES.items():
        if short == name:
            return value  # type: ignore[return-value]
    raise InvalidArgument(
        f"unknown risk list category {name!r}: use one of {', '.join(CATEGORY_NAMES.values())}"
    )


def _domain(value: str) -> str | None:
    try:
        name = value.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        return None
    return name


def canonical_value(category: int, value: str) -> str:
    """``value`` in the canonical form of ``category``; raises ``InvalidArgument`` when it is
    not one. Canonical forms: digits for numbers and accounts (a leading ``+`` kept for phone
    numbers), lower-case IDNA domains without the trailing dot, URLs with a lower-case scheme and
    host, IP addresses as ``ipaddress`` prints them."""
    v = value.strip()
    if category == C.RISK_CATEGORY_PHONE_NUMBER:
        if _PHONE.fullmatch(v):
            return v
        raise InvalidArgument("must be a phone number of 5 to 20 digits")
    if category == C.RISK_CATEGORY_BANK_ACCOUNT:
        if _ACCOUNT.fullmatch(v):
            return v
        raise InvalidArgument("must be an account number of 8 to 32 digits")
    if category == C.RISK_CATEGORY_DOMAIN:
        domain = _domain(v)
        if domain is None:
            raise InvalidArgument("must be a domain name such as example.com")
        return domain
    if category == C.RISK_CATEGORY_URL:
        parts = urlsplit(v)
        host = _domain(parts.hostname or "") if parts.hostname else None
        if parts.scheme.lower() not in ("http", "https") or host is None or len(v) > _MAX_URL:
            raise InvalidArgument("must be an http or https URL with a host name")
        port = f":{parts.port}" if parts.port else ""
        rest = v[len(parts.scheme) + 3 + len(parts.netloc) :]
        return f"{parts.scheme.lower()}://{host}{port}{rest or '/'}"
    if category == C.RISK_CATEGORY_IP_ADDRESS:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise InvalidArgument("must be an IPv4 or IPv6 address") from None
    if category == C.RISK_CATEGORY_DEVICE_ID:
        if _DEVICE.fullmatch(v):
            return v
        raise InvalidArgument("must be a device id of 4 to 64 letters, digits and ':._-'")
    if category == C.RISK_CATEGORY_APP_PACKAGE:
        if _APP.fullmatch(v) and len(v) <= 255:
            return v
        raise InvalidArgument("must be an app package name such as com.example.app")
    raise InvalidArgument("unknown risk list category")


def decode_change(leaf: bytes) -> risklist_pb2.RiskListChange:
    """Decode one leaf; raises ``VerificationError`` unless it is a well-formed change with a
    category, a canonical value and an expiry."""
    try:
        change = risklist_pb2.RiskListChange.FromString(leaf)
    except ProtobufDecodeError as exc:
        raise VerificationError("risk list leaf is not a RiskListChange") from exc
    entry = change.entry
    if change.kind not in (
        C.RISK_CHANGE_KIND_ADD,
        C.RISK_CHANGE_KIND_EXTEND,
        C.RISK_CHANGE_KIND_REMOVE,
    ):
        raise VerificationError("risk list leaf has no change kind")
    try:
        if canonical_value(entry.category, entry.value) != entry.value:
            raise VerificationError("risk list leaf value is not in canonical form")
    except InvalidArgument as exc:
        raise VerificationError(f"risk list leaf value is invalid: {exc.message}") from exc
    if not entry.HasField("expires_at"):
        raise VerificationError("risk list leaf entry has no expiry")
    return change


def micros(at: datetime) -> int:
    """``at`` in Unix microseconds."""
    return (at - _EPOCH) // timedelta(microseconds=1)


class CompactRange:
    """The right edge of an RFC 9162 tree: enough to append leaves and compute the root without
    holding the tree. ``hashes`` are the perfect subtrees' roots, largest first."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1") or any(len(h) != HASH_SIZE for h in hashes):
            raise VerificationError(f"compact range does not fit tree size {size}")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        h = leaf
        n = self.size
        while n & 1:
            h = node_hash(self.hashes.pop(), h)
            n >>= 1
        self.hashes.append(h)
        self.size += 1

    def root(self) -> bytes:
        """The tree's root hash (the empty-tree hash for size 0)."""
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.hashes))


@dataclass(frozen=True, slots=True)
class ListState:
    """What a replica holds: tree size, right edge, root and the checkpoint note it verified."""

    size: int
    hashes: tuple[bytes, ...]
    root: bytes
    checkpoint: str

    @classmethod
    def empty(cls) -> ListState:
        return cls(size=0, hashes=(), root=EMPTY_ROOT, checkpoint="")


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    """A batch that passed ``verify_batch``: the state after it and its decoded changes."""

    state: ListState
    changes: tuple[risklist_pb2.RiskListChange, ...]
    cosigned_by: tuple[str, ...]


def _open(note: str, origin: str, verifiers: Sequence[NoteVerifier]) -> Checkpoint:
    if not verifiers:
        raise VerificationError("no gateway key to check the risk list's checkpoints with")
    parsed, _ = verify_note(note, list(verifiers))
    cp = parse_checkpoint(parsed.text)
    if cp.origin != origin:
        raise VerificationError(
            f"checkpoint origin {cp.origin!r} is not the risk list's {origin!r}"
        )
    return cp


def _cosigners(note: str, witnesses: Sequence[CosignatureVerifier]) -> tuple[str, ...]:
    parsed = parse_note(note)
    by_key = {(w.name, w.key_hash): w for w in witnesses}
    names: list[str] = []
    for sig in parsed.signatures:
        witness = by_key.get((sig.name, sig.key_hash))
        if witness is not None:
            witness.verify(parsed.text, sig)  # a bad cosignature by a known witness is an error
            names.append(sig.name)
    return tuple(sorted(set(names)))


def verify_batch(
    state: ListState,
    *,
    first_index: int,
    leaves: Sequence[bytes],
    checkpoint: str,
    consistency_proof: Sequence[bytes],
    origin: str,
    log_verifiers: Sequence[NoteVerifier],
    witness_verifiers: Sequence[CosignatureVerifier] = (),
    min_cosignatures: int = 0,
) -> VerifiedBatch:
    """Check one ``FollowResponse`` against ``state`` (see the module's contract).

    Raises ``VerificationError`` for a forged or malformed batch and ``LogInconsistent`` for a
    list that went back or forked. Never changes ``state``.
    """
    cp = _open(checkpoint, origin, log_verifiers)
    if cp.size < state.size:
        raise LogInconsistent(
            f"risk list checkpoint of size {cp.size} is smaller than the {state.size} changes "
            "already applied: the list was rolled back; refused"
        )
    if cp.size == state.size and cp.root_hash != state.root:
        raise LogInconsistent(
            f"risk list checkpoint of size {cp.size} has another root than the one applied: the "
            "list forked; refused"
        )
    cosigned = _cosigners(checkpoint, witness_verifiers)
    if len(cosigned) < min_cosignatures:
        raise NotCosigned(
            f"risk list checkpoint of size {cp.size} has {len(cosigned)} witness cosignatures, "
            f"fewer than the {min_cosignatures} required"
        )
    if first_index != state.size:
        raise VerificationError(
            f"batch starts at change {first_index}, but {state.size} changes are applied"
        )
    if first_index + len(leaves) != cp.size:
        raise VerificationError(
            f"batch of {len(leaves)} changes from {first_index} does not reach the checkpoint's "
            f"size {cp.size}"
        )
    try:
        verify_consistency(state.size, cp.size, consistency_proof, state.root, cp.root_hash)
    except VerificationError as exc:
        raise LogInconsistent(
            f"risk list checkpoint of size {cp.size} is not consistent with the {state.size} "
            f"changes applied ({exc.message}); refused"
        ) from exc
    tree = CompactRange(state.size, state.hashes)
    for leaf in leaves:
        tree.append(leaf_hash(leaf))
    root = tree.root()
    if root != cp.root_hash:
        raise VerificationError(
            f"the batch's changes do not hash to the checkpoint's root at size {cp.size}"
        )
    changes = tuple(decode_change(leaf) for leaf in leaves)
    return VerifiedBatch(
        state=ListState(size=cp.size, hashes=tuple(tree.hashes), root=root, checkpoint=checkpoint),
        changes=changes,
        cosigned_by=cosigned,
    )


class RiskIndex:
    """The list in memory for lookups on the call/SMS and transfer paths.

    ``apply`` folds changes in (log order); ``listed`` is one dict lookup and one comparison.
    Not thread-safe for writers; readers see each change whole (one dict assignment).
    """

    __slots__ = ("_by_category",)

    def __init__(self) -> None:
        self._by_category: dict[int, dict[str, int]] = {c: {} for c in CATEGORY_NAMES}

    def apply(self, change: risklist_pb2.RiskListChange) -> None:
        entry = change.entry
        table = self._by_category[entry.category]
        if change.kind == C.RISK_CHANGE_KIND_REMOVE:
            table.pop(entry.value, None)
        else:
            table[entry.value] = micros(entry.expires_at.ToDatetime(tzinfo=UTC))

    def put(self, category: int, value: str, expires_us: int) -> None:
        """Load one entry directly (a replica's stored state at start-up)."""
        self._by_category[category][value] = expires_us

    def table(self, category: int) -> dict[str, int]:
        """The value → expiry dict of ``category``, for a hot path that looks up many values."""
        return self._by_category[category]

    def listed(self, category: int, value: str, now_us: int) -> bool:
        """True if ``value`` (canonical form) is listed under ``category`` and not expired."""
        return self._by_category[category].get(value, 0) > now_us

    def count(self, category: int, now_us: int) -> int:
        """Entries of ``category`` in force at ``now_us``."""
        return sum(1 for e in self._by_category[category].values() if e > now_us)

    def values(self, category: int, now_us: int) -> list[str]:
        """Values of ``category`` in force at ``now_us``, sorted."""
        return sorted(v for v, e in self._by_category[category].items() if e > now_us)
