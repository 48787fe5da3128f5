"""Audit log entries: what the gateway records, and their canonical leaf encoding.

An entry is one of three frozen values: the request leg (the envelope exactly as received, the
peer, the decision and matched rule), the response leg (the agency's signed answer, by hash and
signature, and its status) and an audited event (console login, identifier reveal, ...).

The leaf bytes, over which the Merkle leaf hash is taken, are::

    b"fedgate-audit/v1"  version byte 0x01  kind byte (1 request, 2 response, 3 event)
    then the kind's fields in a fixed order, each as u32 big-endian length || bytes

Strings are UTF-8; times are 8-byte signed big-endian microseconds since the Unix epoch (UTC);
integers are 8-byte unsigned big-endian; a list of strings is u32 count, then each string
length-prefixed; a list of pairs is u32 count, then key and value length-prefixed. There is one
encoding per entry, so ``encode_entry(decode_entry(b)) == b`` for every ``b`` that decodes.

``decode_entry`` is strict: anything malformed raises ``VerificationError``. ``encode_entry``
raises ``InvalidArgument`` for an entry that cannot be recorded faithfully (a naive time, an
unknown decision or status, a hash of the wrong length).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

from fedgate.errors import InvalidArgument, VerificationError

__all__ = [
    "DECISIONS",
    "ENTRY_MAGIC",
    "ENTRY_VERSION",
    "MAX_ENTRY_BYTES",
    "RESPONSE_STATUSES",
    "AuditEntry",
    "EntryKind",
    "EventEntry",
    "IndexColumns",
    "RequestLeg",
    "ResponseLeg",
    "SearchFields",
    "columns_of",
    "decode_entry",
    "encode_entry",
    "entry_columns",
    "entry_kind",
    "entry_link",
    "fields_of",
    "index_columns",
    "micros_to_time",
    "searchable",
    "time_to_micros",
    "with_request",
    "with_request_columns",
]

ENTRY_MAGIC = b"fedgate-audit/v1"
ENTRY_VERSION = 1
MAX_ENTRY_BYTES = 4 << 20
"""Largest leaf accepted (4 MiB): a 1 MiB request envelope and a response envelope fit."""

DECISIONS = frozenset({"allowed", "refused"})
RESPONSE_STATUSES = frozenset(
    {
        "ok",
        "refused",
        "not_found",
        "pending",
        "expired",
        "invalid",
        "node_fault",
        "unavailable",
        "gateway_fault",
    }
)

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEADER_SIZE = len(ENTRY_MAGIC) + 2
_SHA256_SIZE = 32
_SIGNATURE_SIZE = 64
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_MAX_INDEX = (1 << 63) - 1


class EntryKind(IntEnum):
    """The kind byte of a leaf; also the ``leg`` column of the searchable index."""

    REQUEST = 1
    RESPONSE = 2
    EVENT = 3


@dataclass(frozen=True, slots=True)
class RequestLeg:
    """A request as the gateway received it, with its decision; logged before forwarding.

    ``envelope`` is the serialized ``SignedEnvelope`` exactly as received (garbage when the
    request was refused at decode); ``rule`` is the matched policy rule or the refusal reason.
    ``subjects`` are the account, ID and phone numbers in the request, for search.
    """

    envelope: bytes
    peer: str
    peer_cert_sha256: str
    received_at: datetime
    decision: str
    rule: str
    request_id: str = ""
    requesting_agency: str = ""
    officer_id: str = ""
    case_number: str = ""
    action: str = ""
    target_agency: str = ""
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseLeg:
    """An agency's answer (or its absence) for the request logged at ``request_leaf_index``.

    ``response_hash`` is SHA-256 of the signed ``Response`` body and ``responder_signature`` the
    responder's signature (both empty when there was no answer). ``response_envelope`` keeps the
    whole signed response so that evidence bundles and ``fedgate audit verify`` can check the
    agency's signature offline. (DESIGN.md keeps response bodies only in an encrypted evidence
    mode; this first version stores the envelope in the clear, in the log's own database.)

    ``request_origin`` is empty when the request leg is in this leg's own log shard (always,
    but for one case): a ticket answer fetched by another gateway instance than the one that
    logged the request is logged in the fetching instance's shard, and names the request leg
    by the origin of its shard and its index there. Such a leg is encoded with one more field
    (absent otherwise, so every other leaf keeps its bytes), and its index row carries
    ``request_leaf_index`` -1: nothing in this shard is its request leg. The log completes its
    columns with that request leg's (``with_request_columns``), read from the other shard of
    the same database when it can (docs/audit.md).
    """

    request_id: str
    request_leaf_index: int
    responder: str
    received_at: datetime
    status: str
    response_hash: bytes
    responder_signature: bytes
    responder_key_id: str = ""
    detail: str = ""
    response_envelope: bytes = b""
    request_origin: str = ""


@dataclass(frozen=True, slots=True)
class EventEntry:
    """Another audited event: ``kind`` (e.g. ``console_login_failed``), who did it, for which
    member, when, and free-form key/value details."""

    kind: str
    actor: str
    member: str
    at: datetime
    detail: tuple[tuple[str, str], ...] = ()


AuditEntry = RequestLeg | ResponseLeg | EventEntry


@dataclass(frozen=True, slots=True)
class SearchFields:
    """The searchable columns stored beside a leaf (not covered by the tree; ``fedgate audit
    verify`` checks them against the leaf). ``outcome`` is the decision for a request leg, the
    status for a response leg and empty for an event; ``reason`` the rule, detail or details."""

    leg: EntryKind
    request_id: str
    time: datetime
    requesting_agency: str
    officer_id: str
    case_number: str
    action: str
    target_agency: str
    outcome: str
    reason: str
    subjects: tuple[str, ...]
    request_leaf_index: int = -1


def entry_kind(entry: AuditEntry) -> EntryKind:
    if isinstance(entry, RequestLeg):
        return EntryKind.REQUEST
    if isinstance(entry, ResponseLeg):
        return EntryKind.RESPONSE
    return EntryKind.EVENT


def searchable(entry: AuditEntry) -> SearchFields:
    """The searchable columns of one entry on its own.

    A response leg only knows its request id and responder; the log copies the request leg's
    agency, officer, case, action and subjects onto it with ``with_request``.
    """
    if isinstance(entry, RequestLeg):
        return SearchFields(
            leg=EntryKind.REQUEST,
            request_id=entry.request_id,
            time=entry.received_at,
            requesting_agency=entry.requesting_agency,
            officer_id=entry.officer_id,
            case_number=entry.case_number,
            action=entry.action,
            target_agency=entry.target_agency,
            outcome=entry.decision,
            reason=entry.rule,
            subjects=entry.subjects,
        )
    if isinstance(entry, ResponseLeg):
        return SearchFields(
            leg=EntryKind.RESPONSE,
            request_id=entry.request_id,
            time=entry.received_at,
            requesting_agency="",
            officer_id="",
            case_number="",
            action="",
            target_agency=entry.responder,
            outcome=entry.status,
            reason=entry.detail,
            subjects=(),
            request_leaf_index=-1 if entry.request_origin else entry.request_leaf_index,
        )
    return SearchFields(
        leg=EntryKind.EVENT,
        request_id="",
        time=entry.at,
        requesting_agency=entry.member,
        officer_id=entry.actor,
        case_number="",
        action=entry.kind,
        target_agency="",
        outcome="",
        reason="; ".join(f"{k}={v}" for k, v in entry.detail),
        subjects=(),
    )


def with_request(response: SearchFields, request: SearchFields) -> SearchFields:
    """A response leg's columns completed with its request leg's agency, officer, case, action
    and subjects, so that searches and per-agency visibility find both legs."""
    return SearchFields(
        leg=response.leg,
        request_id=response.request_id,
        time=response.time,
        requesting_agency=request.requesting_agency,
        officer_id=request.officer_id,
        case_number=request.case_number,
        action=request.action,
        target_agency=response.target_agency,
        outcome=response.outcome,
        reason=response.reason,
        subjects=request.subjects,
        request_leaf_index=response.request_leaf_index,
    )


# -- encoding ------------------------------------------------------------------------------------


def time_to_micros(at: datetime) -> int:
    """Microseconds since the Unix epoch; raises ``InvalidArgument`` for a naive datetime."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidArgument(f"audit times must be timezone-aware, got {at.isoformat()}")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_time(us: int) -> datetime:
    """The UTC datetime for microseconds since the epoch; ``ValueError`` if out of range."""
    return _EPOCH + timedelta(microseconds=us)


def _s(value: str) -> bytes:
    b = value.encode("utf-8")
    return _U32.pack(len(b)) + b


_PACK_U32 = _U32.pack


def _framed(head: bytes, fields: Sequence[bytes]) -> bytes:
    """``head`` then each field with its 4-byte length, in one join (the hot path: one pass
    over the leaf's fields, no intermediate concatenations)."""
    parts = [head]
    for f in fields:
        parts += (_PACK_U32(len(f)), f)
    return b"".join(parts)


def _strings(values: Sequence[str]) -> bytes:
    return _framed(_PACK_U32(len(values)), [v.encode("utf-8") for v in values])


_HEADS = {kind: ENTRY_MAGIC + bytes((ENTRY_VERSION, kind)) for kind in (1, 2, 3)}


def encode_entry(entry: AuditEntry) -> bytes:
    """The canonical leaf bytes of ``entry``; raises ``InvalidArgument`` if it is not valid."""
    try:
        if isinstance(entry, RequestLeg):
            if entry.decision not in DECISIONS:
                raise InvalidArgument(
                    f"request leg decision {entry.decision!r} is not one of {sorted(DECISIONS)}"
                )
            _check_fingerprint(entry.peer_cert_sha256)
            data = _framed(
                _HEADS[EntryKind.REQUEST],
                [
                    entry.envelope,
                    entry.peer.encode("utf-8"),
                    entry.peer_cert_sha256.encode("utf-8"),
                    _I64.pack(time_to_micros(entry.received_at)),
                    entry.decision.encode("utf-8"),
                    entry.rule.encode("utf-8"),
                    entry.request_id.encode("utf-8"),
                    entry.requesting_agency.encode("utf-8"),
                    entry.officer_id.encode("utf-8"),
                    entry.case_number.encode("utf-8"),
                    entry.action.encode("utf-8"),
                    entry.target_agency.encode("utf-8"),
                    _strings(entry.subjects),
                ],
            )
        elif isinstance(entry, ResponseLeg):
            if entry.status not in RESPONSE_STATUSES:
                raise InvalidArgument(
                    f"response leg status {entry.status!r} is not one of "
                    f"{sorted(RESPONSE_STATUSES)}"
                )
            if len(entry.response_hash) not in (0, _SHA256_SIZE):
                raise InvalidArgument("response_hash must be empty or a 32-byte SHA-256")
            if len(entry.responder_signature) not in (0, _SIGNATURE_SIZE):
                raise InvalidArgument("responder_signature must be empty or 64 bytes")
            if entry.request_leaf_index < 0:
                raise InvalidArgument("request_leaf_index must not be negative")
            data = _framed(
                _HEADS[EntryKind.RESPONSE],
                [
                    entry.request_id.encode("utf-8"),
                    _U64.pack(entry.request_leaf_index),
                    entry.responder.encode("utf-8"),
                    _I64.pack(time_to_micros(entry.received_at)),
                    entry.status.encode("utf-8"),
                    entry.response_hash,
                    entry.responder_signature,
                    entry.responder_key_id.encode("utf-8"),
                    entry.detail.encode("utf-8"),
                    entry.response_envelope,
                    *((entry.request_origin.encode("utf-8"),) if entry.request_origin else ()),
                ],
            )
        else:
            pairs = b"".join(_s(k) + _s(v) for k, v in entry.detail)
            data = _framed(
                _HEADS[EntryKind.EVENT],
                [
                    entry.kind.encode("utf-8"),
                    entry.actor.encode("utf-8"),
                    entry.member.encode("utf-8"),
                    _I64.pack(time_to_micros(entry.at)),
                    _U32.pack(len(entry.detail)) + pairs,
                ],
            )
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"audit entry text is not valid Unicode: {exc}") from exc
    except struct.error as exc:
        raise InvalidArgument(f"audit entry value out of range: {exc}") from exc
    if len(data) > MAX_ENTRY_BYTES:
        raise InvalidArgument(f"audit entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return data


def _check_fingerprint(value: str) -> None:
    if value and _FINGERPRINT.fullmatch(value) is None:
        raise InvalidArgument("peer_cert_sha256 must be 64 lowercase hex digits or empty")


# -- decoding ------------------------------------------------------------------------------------

_REQUEST, _RESPONSE, _EVENT = int(EntryKind.REQUEST), int(EntryKind.RESPONSE), int(EntryKind.EVENT)
_FIELD_COUNTS = {_REQUEST: 13, _RESPONSE: 10, _EVENT: 5}
_MIN_US = time_to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_US = time_to_micros(datetime.max.replace(tzinfo=UTC))


def _split(data: bytes, off: int, count: int, what: str) -> list[bytes]:
    """``count`` length-prefixed fields from ``off`` that exactly fill ``data``."""
    fields: list[bytes] = []
    append = fields.append
    unpack = _U32.unpack_from
    try:
        for _ in range(count):
            (length,) = unpack(data, off)
            off += 4
            append(data[off : off + length])
            off += length
    except struct.error:
        # A length prefix that does not fit: the previous field ran past the end.
        raise VerificationError(
            f"malformed {what}: truncated at field {len(fields)}, or the one before runs past "
            "the end"
        ) from None
    if off != len(data):
        if off > len(data):
            raise VerificationError(f"malformed {what}: field {count - 1} runs past the end")
        raise VerificationError(f"malformed {what}: {len(data) - off} trailing bytes")
    return fields


def _micros(raw: bytes) -> int:
    if len(raw) != 8:
        raise VerificationError("malformed audit entry: a time field is not 8 bytes")
    us: int = _I64.unpack(raw)[0]
    if not _MIN_US <= us <= _MAX_US:
        raise VerificationError("malformed audit entry: a time is out of range")
    return us


def _string_list(raw: bytes, what: str) -> tuple[str, ...]:
    if len(raw) < 4:
        raise VerificationError(f"malformed audit entry: {what} has no count")
    (count,) = _U32.unpack_from(raw, 0)
    if count == 1 and len(raw) >= 8 and _U32.unpack_from(raw, 4)[0] == len(raw) - 8:
        return (raw[8:].decode(),)  # the common case: one subject
    if count > (len(raw) - 4) // 4:
        raise VerificationError(f"malformed audit entry: {what} count {count} is too large")
    return tuple(f.decode("utf-8") for f in _split(raw, 4, count, what))


def _parse(data: bytes) -> tuple[int, tuple[Any, ...]]:
    """The kind and the validated field values of a leaf, in the dataclass's field order
    (times as microseconds)."""
    size = len(data)
    if size > MAX_ENTRY_BYTES:
        raise VerificationError(f"audit entry is {size} bytes, over {MAX_ENTRY_BYTES}")
    if size < _HEADER_SIZE or not data.startswith(ENTRY_MAGIC):
        raise VerificationError("malformed audit entry: no fedgate-audit/v1 header")
    version = data[_HEADER_SIZE - 2]
    if version != ENTRY_VERSION:
        raise VerificationError(f"audit entry version {version} is not supported")
    kind = data[_HEADER_SIZE - 1]
    count = _FIELD_COUNTS.get(kind)
    if count is None:
        raise VerificationError(f"audit entry kind {kind} is unknown")
    try:
        f = _split(data, _HEADER_SIZE, count, "audit entry")
    except VerificationError as error:
        if kind != _RESPONSE:
            raise
        # A response leg whose request leg is in another shard has one more field.
        try:
            f = _split(data, _HEADER_SIZE, count + 1, "audit entry")
        except VerificationError:
            raise error from None
        if not f[count]:
            raise VerificationError(
                "malformed audit entry: request_origin is present but empty"
            ) from None
    try:
        if kind == _REQUEST:
            return kind, _request_values(f)
        if kind == _RESPONSE:
            return kind, _response_values(f)
        return kind, _event_values(f)
    except UnicodeDecodeError as exc:
        raise VerificationError("malformed audit entry: a text field is not UTF-8") from exc


def _request_values(f: list[bytes]) -> tuple[Any, ...]:
    decision = f[4].decode()
    if decision not in DECISIONS:
        raise VerificationError(f"audit entry decision {decision!r} is not a known decision")
    fingerprint = f[2].decode()
    if fingerprint and _FINGERPRINT.fullmatch(fingerprint) is None:
        raise VerificationError("malformed audit entry: peer_cert_sha256 is not 64 hex digits")
    return (
        f[0],
        f[1].decode(),
        fingerprint,
        _micros(f[3]),
        decision,
        f[5].decode(),
        f[6].decode(),
        f[7].decode(),
        f[8].decode(),
        f[9].decode(),
        f[10].decode(),
        f[11].decode(),
        _string_list(f[12], "subjects"),
    )


def _response_values(f: list[bytes]) -> tuple[Any, ...]:
    if len(f[1]) != 8:
        raise VerificationError("malformed audit entry: request_leaf_index is not 8 bytes")
    status = f[4].decode()
    if status not in RESPONSE_STATUSES:
        raise VerificationError(f"audit entry status {status!r} is not a known status")
    if len(f[5]) not in (0, _SHA256_SIZE):
        raise VerificationError("malformed audit entry: response_hash is not 32 bytes")
    if len(f[6]) not in (0, _SIGNATURE_SIZE):
        raise VerificationError("malformed audit entry: responder_signature is not 64 bytes")
    request_leaf_index = _U64.unpack(f[1])[0]
    if request_leaf_index > _MAX_INDEX:
        raise VerificationError("malformed audit entry: request_leaf_index is out of range")
    return (
        f[0].decode(),
        request_leaf_index,
        f[2].decode(),
        _micros(f[3]),
        status,
        f[5],
        f[6],
        f[7].decode(),
        f[8].decode(),
        f[9],
        f[10].decode() if len(f) > 10 else "",
    )


def _event_values(f: list[bytes]) -> tuple[Any, ...]:
    raw = f[4]
    if len(raw) < 4:
        raise VerificationError("malformed audit entry: event detail has no count")
    (count,) = _U32.unpack_from(raw, 0)
    if count > (len(raw) - 4) // 8:
        raise VerificationError(f"malformed audit entry: event detail count {count} is too large")
    items = [x.decode() for x in _split(raw, 4, 2 * count, "event detail")]
    return (
        f[0].decode(),
        f[1].decode(),
        f[2].decode(),
        _micros(f[3]),
        tuple(zip(items[::2], items[1::2], strict=True)),
    )


def decode_entry(data: bytes) -> AuditEntry:
    """Parse canonical leaf bytes; raises ``VerificationError`` saying what is malformed."""
    kind, v = _parse(data)
    if kind == EntryKind.REQUEST:
        return RequestLeg(v[0], v[1], v[2], micros_to_time(v[3]), *v[4:])
    if kind == EntryKind.RESPONSE:
        return ResponseLeg(v[0], v[1], v[2], micros_to_time(v[3]), *v[4:])
    return EventEntry(v[0], v[1], v[2], micros_to_time(v[3]), v[4])


_UNPACK_U32 = _U32.unpack_from
_FINGERPRINT_SIZE = 64
_UNPACK_FINGERPRINT_TIME = struct.Struct(">I64sIqI").unpack_from
"""Fingerprint length and bytes, time length and value, the next field's length."""
_UNPACK_TIME = struct.Struct(">IIqI").unpack_from
"""An empty fingerprint's length, then as above."""
_UNPACK_INDEX = struct.Struct(">IQI").unpack_from
_UNPACK_TIME_AFTER = struct.Struct(">IqI").unpack_from
_REQUEST_HEAD = _HEADS[_REQUEST]
_RESPONSE_HEAD = _HEADS[_RESPONSE]
_DECISION_BYTES = frozenset(d.encode() for d in DECISIONS)
_STATUS_BYTES = frozenset(s.encode() for s in RESPONSE_STATUSES)
_HEX_DIGITS = b"0123456789abcdef"
_NOT_ASCII = 0x80808080
"""The high bit of each byte of a u32: a length prefix without it is four ASCII bytes."""


def _request_link(d: bytes) -> tuple[int, str, int]:
    """``entry_link`` of a well-formed request leg, unrolled: it slices only the fields whose
    values it checks and validates the text from the decision to the last subject as one UTF-8
    run. Raises on anything unusual (the caller then runs ``_parse``)."""
    u = _UNPACK_U32
    (n,) = u(d, _HEADER_SIZE)  # envelope: any bytes
    o = _HEADER_SIZE + 4 + n
    (n,) = u(d, o)
    peer = d[o + 4 : o + 4 + n]
    o += 4 + n
    # The fingerprint (empty or 64 bytes), the time and the decision's length in one call.
    (m,) = u(d, o)
    if m == _FINGERPRINT_SIZE:
        _, fingerprint, eight, us, n = _UNPACK_FINGERPRINT_TIME(d, o)
    elif m == 0:
        _, eight, us, n = _UNPACK_TIME(d, o)
        fingerprint = b""
    else:
        raise ValueError("peer_cert_sha256")
    if eight != 8:
        raise ValueError("received_at")
    o += 20 + m
    text = o  # the run of text fields starts at the decision
    decision = d[text : text + n]
    o = text + n
    (n,) = u(d, o)  # rule
    prefixes = n
    o += 4 + n
    (n,) = u(d, o)
    prefixes |= n
    request_id = d[o + 4 : o + 4 + n]
    o += 4 + n
    for _ in range(5):  # requesting agency, officer, case, action, target
        (n,) = u(d, o)
        prefixes |= n
        o += 4 + n
    (n,) = u(d, o)  # subjects
    end = o + 4 + n
    if (
        end != len(d)
        or decision not in _DECISION_BYTES
        or not _MIN_US <= us <= _MAX_US
        or fingerprint.translate(None, _HEX_DIGITS)
    ):
        raise ValueError("not a plain request leg")
    if n >= 8 and u(d, o + 4)[0] == 1 and u(d, o + 8)[0] == n - 8:
        prefixes |= n | (n - 8)  # one subject (the common case): it joins the run
        stop = end
    else:
        _string_list(d[o + 4 : end], "subjects")
        stop = o
    if prefixes & _NOT_ASCII:
        raise ValueError("a length prefix inside the text run is not ASCII")
    # Only ASCII bytes (length prefixes, a known decision) lie between the text fields of
    # the run, and no UTF-8 sequence spans an ASCII byte: the run decodes iff each field does.
    d[text:stop].decode()
    peer.decode()
    return _REQUEST, request_id.decode(), -1


def _response_link(d: bytes) -> tuple[int, str, int]:
    """``entry_link`` of a well-formed response leg, unrolled (the key id and detail checked as
    one UTF-8 run); raises on anything unusual."""
    u = _UNPACK_U32
    (n,) = u(d, _HEADER_SIZE)
    o = _HEADER_SIZE + 4
    request_id = d[o : o + n]
    o += n
    # Each 8-byte field with its length and the next field's length, in one call.
    eight, leaf_index, n = _UNPACK_INDEX(d, o)
    if eight != 8:
        raise ValueError("request_leaf_index")
    responder = d[o + 16 : o + 16 + n]
    o += 16 + n
    eight, us, n = _UNPACK_TIME_AFTER(d, o)
    if eight != 8:
        raise ValueError("received_at")
    status = d[o + 16 : o + 16 + n]
    o += 16 + n
    (hash_size,) = u(d, o)
    o += 4 + hash_size
    (signature_size,) = u(d, o)
    o += 4 + signature_size
    (n,) = u(d, o)  # key id: the text run starts here
    text = o + 4
    o = text + n
    (n,) = u(d, o)  # detail
    prefix = n
    o += 4 + n
    stop = o
    (n,) = u(d, o)  # the response envelope: any bytes
    o += 4 + n
    if (
        o != len(d)
        or status not in _STATUS_BYTES
        or hash_size not in (0, _SHA256_SIZE)
        or signature_size not in (0, _SIGNATURE_SIZE)
        or leaf_index > _MAX_INDEX
        or not _MIN_US <= us <= _MAX_US
        or prefix & _NOT_ASCII
    ):
        raise ValueError("not a plain response leg")
    d[text:stop].decode()
    responder.decode()
    return _RESPONSE, request_id.decode(), leaf_index


def entry_link(data: bytes) -> tuple[int, str, int]:
    """``(kind, key, request_index)`` of a leaf, validating it exactly as ``decode_entry``
    does but building no objects (bulk verification). ``key`` depends on the kind: a request
    or response leg's request id, an event's own kind (``EventEntry.kind``, such as
    ``leaves_retired``). ``request_index`` is a response leg's request leaf index (-1 for a
    foreign request and for every other kind). Raises ``VerificationError``.

    Request and response legs take an unrolled path (about half the time of ``_parse``); an
    entry it does not accept in full goes through ``_parse``, which says what is wrong (so the
    fast path can only accept what ``_parse`` accepts, never decide a failure)."""
    if len(data) <= MAX_ENTRY_BYTES:
        try:
            if data.startswith(_REQUEST_HEAD):
                return _request_link(data)
            if data.startswith(_RESPONSE_HEAD):
                return _response_link(data)
        except (ValueError, struct.error, VerificationError):
            pass  # UnicodeDecodeError is a ValueError
    kind, v = _parse(data)
    if kind == _REQUEST:
        return kind, v[6], -1
    if kind == _RESPONSE:
        return kind, v[0], -1 if v[10] else v[1]
    return kind, v[0], -1


# -- index columns -------------------------------------------------------------------------------

IndexColumns = tuple[int, str, int, str, str, str, str, str, str, str, tuple[str, ...], int]
"""The searchable columns as a plain tuple, in ``SearchFields`` order with the time in
microseconds: what the stores write and what bulk verification compares (no objects built)."""


def index_columns(data: bytes) -> IndexColumns:
    """The searchable columns of a leaf, validating it exactly as ``decode_entry`` does.

    For a response leg the request-side columns are blank (see ``with_request_columns``).
    Raises ``VerificationError``.
    """
    kind, v = _parse(data)
    if kind == EntryKind.REQUEST:
        return (kind, v[6], v[3], v[7], v[8], v[9], v[10], v[11], v[4], v[5], v[12], -1)
    if kind == EntryKind.RESPONSE:
        return (kind, v[0], v[3], "", "", "", "", v[2], v[4], v[8], (), -1 if v[10] else v[1])
    reason = "; ".join(f"{k}={val}" for k, val in v[4])
    return (kind, "", v[3], v[2], v[1], "", v[0], "", "", reason, (), -1)


def with_request_columns(response: IndexColumns, request: IndexColumns) -> IndexColumns:
    """``with_request`` for column tuples."""
    r = response
    q = request
    return (r[0], r[1], r[2], q[3], q[4], q[5], q[6], r[7], r[8], r[9], q[10], r[11])


def entry_columns(entry: AuditEntry) -> IndexColumns:
    """``columns_of(searchable(entry))`` without building the ``SearchFields`` (hot path)."""
    if isinstance(entry, RequestLeg):
        e = entry
        return (
            EntryKind.REQUEST,
            e.request_id,
            time_to_micros(e.received_at),
            e.requesting_agency,
            e.officer_id,
            e.case_number,
            e.action,
            e.target_agency,
            e.decision,
            e.rule,
            e.subjects,
            -1,
        )
    if isinstance(entry, ResponseLeg):
        r = entry
        return (
            EntryKind.RESPONSE,
            r.request_id,
            time_to_micros(r.received_at),
            "",
            "",
            "",
            "",
            r.responder,
            r.status,
            r.detail,
            (),
            -1 if r.request_origin else r.request_leaf_index,
        )
    return columns_of(searchable(entry))


def columns_of(fields: SearchFields) -> IndexColumns:
    f = fields
    return (
        int(f.leg),
        f.request_id,
        time_to_micros(f.time),
        f.requesting_agency,
        f.officer_id,
        f.case_number,
        f.action,
        f.target_agency,
        f.outcome,
        f.reason,
        f.subjects,
        f.request_leaf_index,
    )


def fields_of(columns: IndexColumns) -> SearchFields:
    """The ``SearchFields`` of a column tuple; raises ``VerificationError`` on a bad leg."""
    c = columns
    try:
        leg = EntryKind(c[0])
    except ValueError as exc:
        raise VerificationError(f"index row has unknown leg {c[0]}") from exc
    return SearchFields(
        leg, c[1], micros_to_time(c[2]), c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]
    )
