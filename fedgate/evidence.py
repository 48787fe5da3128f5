"""Evidence bundles: one exchange from the audit log, provable offline.

A bundle is a JSON object::

    {"format": "fedgate-evidence/v1", "origin": "<log origin>", "index": <the entry asked for>,
     "entries": [{"index": N, "entry": "<base64 leaf bytes>", "tlog_proof": "<.tlog-proof>"}]}

``entries`` holds the entry asked for and the other leg of the same exchange (the request leg
for a response, the response legs for a request), each with its C2SP ``tlog-proof`` against a
checkpoint carrying whatever witness cosignatures the log had gathered. The leaf bytes hold the
signed request envelope exactly as received and the agency's signed response envelope.

``verify_bundle`` needs nothing but the federation's public keys (``trust/`` and the signed
``registry.json``): the log's checkpoint key is the gateway member's signing key under the
log's origin as key name, witnesses are the members with the ``witness`` role under their
member id. Keys are judged at the time they signed (a key revoked later still verified then).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import EventEntry, RequestLeg, ResponseLeg, decode_entry
from fedgate.checkpoint import Checkpoint, CosignatureVerifier, verify_cosignatures
from fedgate.envelope import Domain, decode_request, decode_response, verify_envelope
from fedgate.errors import (
    FedgateError,
    KeyNotValid,
    UnknownKey,
    VerificationError,
)
from fedgate.federation import MemberKind
from fedgate.keys import public_key_from_raw
from fedgate.note import NoteVerifier, b64decode_strict
from fedgate.registry import Member, Registry
from fedgate.sealed import sealed_digest
from fedgate.tlogproof import TlogProof, parse_tlog_proof, verify_tlog_proof
from fedgate.types import KeyId
from fedgate.v1 import envelope_pb2

__all__ = [
    "BUNDLE_FORMAT",
    "BundleReport",
    "HistoricalKeys",
    "build_bundle",
    "check_request_leg",
    "check_response_leg",
    "check_witness_policy",
    "log_verifiers",
    "verify_bundle",
    "witness_verifiers",
]

BUNDLE_FORMAT = "fedgate-evidence/v1"
WITNESS_ROLE = "witness"


def log_verifiers(registry: Registry, origin: str) -> list[NoteVerifier]:
    """The keys that may have signed ``origin``'s checkpoints: every signing key, current or
    past, of the registry's gateway members, under the origin as key name."""
    return [
        NoteVerifier(name=origin, public_key=public_key_from_raw(k.public_key))
        for m in registry.entries
        if m.kind == MemberKind.GATEWAY
        for k in m.signing_keys
    ]


def witness_verifiers(registry: Registry) -> list[CosignatureVerifier]:
    """Cosignature keys of the members with the ``witness`` role, named by member id."""
    return [
        CosignatureVerifier(name=m.id, public_key=public_key_from_raw(k.public_key))
        for m in registry.entries
        if WITNESS_ROLE in m.roles
        for k in m.signing_keys
    ]


class HistoricalKeys:
    """Signing keys as they stood when a past message was signed.

    ``Registry.signing_key`` answers for now (a revoked key is refused whenever it signed);
    here a key counts if ``at`` lies in its validity window and neither it nor its member had
    been revoked by then.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._keys = {k.key_id: (m, k) for m in registry.entries for k in m.signing_keys}

    def key_at(self, key_id: str, at: datetime) -> tuple[Member, Ed25519PublicKey]:
        """Raises ``UnknownKey`` or ``KeyNotValid``."""
        found = self._keys.get(KeyId(key_id))
        if found is None:
            raise UnknownKey(f"signing key {key_id!r} is not in the member registry")
        member, key = found
        if not key.valid_at(at):
            raise KeyNotValid(
                f"signing key {key_id} of {member.id} was not valid at {at.isoformat()}"
            )
        for subject in (key_id, member.id):
            revocation = self._registry.revocation_of(subject)
            if revocation is not None and revocation.at <= at:
                raise KeyNotValid(
                    f"signing key {key_id} of {member.id} was revoked at "
                    f"{revocation.at.isoformat()}, before it signed at {at.isoformat()}"
                )
        return member, public_key_from_raw(key.public_key)


def _envelope(raw: bytes, what: str) -> envelope_pb2.SignedEnvelope:
    env = envelope_pb2.SignedEnvelope()
    try:
        env.ParseFromString(raw)
    except ProtobufDecodeError as exc:
        raise VerificationError(f"{what} is not a SignedEnvelope") from exc
    return env


def _signed_at(stamp: timestamp_pb2.Timestamp, what: str) -> datetime:
    # A crafted body can carry a timestamp no datetime holds; that is a bad message, not a crash
    # of the auditor's verification (refused requests are checked too).
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise VerificationError(f"the signed {what} is not a valid time: {exc}") from exc


def check_request_leg(leg: RequestLeg, keys: HistoricalKeys) -> str:
    """Check the signed request in a request leg; returns the signing member's id.

    The signature must verify with a key the registry lists for the time the request says it
    was issued, that key's member must be the TLS peer and the requesting agency, and the
    leg's copied fields must match the signed request. Raises ``VerificationError`` (also for a
    refused leg whose envelope is bad: callers decide what a refusal's failure means).
    """
    try:
        env = _envelope(leg.envelope, "the request envelope")
        request = decode_request(env.body)
        at = _signed_at(request.issued_at, "issued_at")
        member, key = keys.key_at(env.key_id, at)
        verify_envelope(env, key, Domain.REQUEST)
    except VerificationError:
        raise
    except FedgateError as exc:
        raise VerificationError(f"request signature: {exc.message}") from exc
    mismatches = [
        name
        for name, signed, logged in (
            ("signer", member.id, leg.peer),
            ("requesting_agency", request.requesting_agency, leg.requesting_agency),
            ("request_id", request.request_id, leg.request_id),
            ("target_agency", request.target_agency, leg.target_agency),
            ("officer_id", request.officer.id, leg.officer_id),
            ("case_number", request.case.case_number, leg.case_number),
        )
        if signed != logged
    ]
    if mismatches:
        raise VerificationError(
            f"the logged {', '.join(mismatches)} do(es) not match the signed request"
        )
    return member.id


def check_response_leg(
    leg: ResponseLeg, keys: HistoricalKeys, *, request_body: bytes | None
) -> str | None:
    """Check the agency's signed response kept in a response leg; returns the signer's id, or
    ``None`` when the leg holds no response (a node fault, or bodies not kept).

    The signature must verify with the responder's key at the time it answered, the leg's
    hash and signature must be that envelope's, and with ``request_body`` the response must be
    bound to that request. Raises ``VerificationError``.
    """
    if not leg.response_envelope:
        return None
    try:
        env = _envelope(leg.response_envelope, "the response envelope")
        response = decode_response(env.body)
        at = _signed_at(response.answered_at, "answered_at")
        member, key = keys.key_at(env.key_id, at)
        verify_envelope(env, key, Domain.RESPONSE)
    except VerificationError:
        raise
    except FedgateError as exc:
        raise VerificationError(f"response signature: {exc.message}") from exc
    problems = []
    if member.id != leg.responder or response.responder != leg.responder:
        problems.append(f"it was signed by {member.id}, the leg says {leg.responder}")
    if hashlib.sha256(env.body).digest() != leg.response_hash:
        problems.append("the logged response_hash is not the hash of the signed response")
    if env.signature != leg.responder_signature:
        problems.append("the logged responder_signature is not the envelope's")
    if response.request_id != leg.request_id:
        problems.append(f"it answers {response.request_id!r}, not {leg.request_id!r}")
    if request_body is not None:
        request_env = _envelope(request_body, "the request envelope")
        if response.request_hash != hashlib.sha256(request_env.body).digest():
            problems.append("its request_hash is not the hash of the logged request")
    if problems:
        raise VerificationError("response leg: " + "; ".join(problems))
    return member.id


def build_bundle(
    *,
    origin: str,
    index: int,
    entries: Sequence[tuple[int, bytes]],
    checkpoint: str,
    tree_size: int,
    inclusion_proof: Callable[[int, int], Sequence[bytes]],
) -> bytes:
    """The bundle for entry ``index`` with ``entries`` (index, leaf bytes; it included),
    proved against ``checkpoint`` (of ``tree_size`` entries) by ``inclusion_proof``."""
    if all(i != index for i, _ in entries):
        raise ValueError(f"entry {index} must be among the bundle's entries")
    items = []
    for i, data in sorted(set(entries)):
        if not 0 <= i < tree_size:
            raise ValueError(f"entry {i} is not covered by a checkpoint of size {tree_size}")
        proof = TlogProof(
            index=i, proof=tuple(inclusion_proof(i, tree_size)), checkpoint_note=checkpoint
        )
        items.append(
            {
                "index": i,
                "entry": base64.b64encode(data).decode("ascii"),
                "tlog_proof": proof.marshal(),
            }
        )
    doc = {"format": BUNDLE_FORMAT, "origin": origin, "index": index, "entries": items}
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


@dataclass(frozen=True, slots=True)
class BundleReport:
    """What ``verify_bundle`` established: every line is a check that passed."""

    origin: str
    index: int
    checkpoint: Checkpoint
    witnesses: tuple[str, ...]
    entries: tuple[tuple[int, str], ...]
    """(index, kind) of each entry proved included."""
    checks: tuple[str, ...]


def _parse_bundle(data: bytes) -> tuple[str, int, list[tuple[int, bytes, TlogProof]]]:
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"not a {BUNDLE_FORMAT} bundle")
        origin, index, raw_entries = doc["origin"], doc["index"], doc["entries"]
        if not isinstance(origin, str) or not isinstance(index, int) or not raw_entries:
            raise ValueError("origin, index or entries missing")
        entries = []
        for e in raw_entries:
            i = e["index"]
            if not isinstance(i, int):
                raise ValueError("an entry index is not an integer")
            leaf, proof_text = e["entry"], e["tlog_proof"]
            if not isinstance(leaf, str) or not isinstance(proof_text, str):
                raise ValueError(f"entry {i}: entry and tlog_proof must be strings")
            proof = parse_tlog_proof(proof_text)
            if proof.index != i:
                raise ValueError(f"entry {i} carries a proof for index {proof.index}")
            entries.append((i, b64decode_strict(leaf), proof))
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError, binascii.Error too
        raise VerificationError(f"malformed evidence bundle: {exc}") from exc
    return origin, index, entries


def verify_bundle(data: bytes, registry: Registry) -> BundleReport:
    """Verify an evidence bundle offline with the federation's public keys.

    Checks each entry's inclusion in a checkpoint signed by the log's key, the witness
    cosignatures on it, that every entry decodes, the request's and the response's signatures
    (keys valid when they signed), and that the response answers that request. Raises
    ``VerificationError`` naming the first failure.
    """
    origin, index, entries = _parse_bundle(data)
    verifiers = log_verifiers(registry, origin)
    if not verifiers:
        raise VerificationError("the registry lists no gateway signing key for the log")
    checks: list[str] = []
    checkpoint: Checkpoint | None = None
    notes: set[str] = set()
    decoded: dict[int, RequestLeg | ResponseLeg | EventEntry] = {}
    for i, leaf, proof in entries:
        cp = _verify_inclusion(proof, leaf, verifiers, origin, i)
        if checkpoint is None or cp.size > checkpoint.size:
            checkpoint = cp
        notes.add(proof.checkpoint_note)
        try:
            decoded[i] = decode_entry(leaf)
        except VerificationError as exc:
            raise VerificationError(f"entry {i}: {exc.message}") from exc
        checks.append(f"entry {i} is in the log {origin} at tree size {cp.size}")
    if index not in decoded:
        raise VerificationError(f"the bundle does not contain entry {index}")
    assert checkpoint is not None
    witnesses = _check_witnesses(notes, registry)
    checks.append(f"checkpoint cosigned by {', '.join(sorted(witnesses))}")
    keys = HistoricalKeys(registry)
    for i, entry in sorted(decoded.items()):
        checks.extend(_check_entry(i, entry, decoded, keys))
    kinds = tuple((i, type(e).__name__) for i, e in sorted(decoded.items()))
    return BundleReport(origin, index, checkpoint, tuple(sorted(witnesses)), kinds, tuple(checks))


def check_witness_policy(note: str, registry: Registry) -> set[str]:
    """The witnesses whose cosignatures on ``note`` verify, if they meet the registry's
    witness policy (``Registry.effective_witness_policy``).

    A cosignature by a known witness key that does not verify is an error (signed-note
    semantics), and so is a checkpoint cosigned by fewer witnesses than the policy requires,
    or a federation without any witness. Raises ``VerificationError``.
    """
    policy = registry.effective_witness_policy()
    if policy is None:
        raise VerificationError("the registry names no witness: no checkpoint can be trusted")
    try:
        cosigners = set(verify_cosignatures(note, witness_verifiers(registry)))
    except VerificationError as exc:
        raise VerificationError(f"checkpoint: {exc.message}") from exc
    shortfall = policy.shortfall(cosigners)
    if shortfall is not None:
        raise VerificationError(f"the checkpoint is {shortfall}")
    return cosigners & set(policy.witnesses)


def _check_witnesses(notes: set[str], registry: Registry) -> set[str]:
    """Every checkpoint of the bundle must meet the witness policy; returns who cosigned."""
    witnesses: set[str] = set()
    for note in sorted(notes):
        witnesses |= check_witness_policy(note, registry)
    return witnesses


def _verify_inclusion(
    proof: TlogProof, leaf: bytes, verifiers: Sequence[NoteVerifier], origin: str, i: int
) -> Checkpoint:
    failure = "no log key"
    for verifier in verifiers:
        try:
            return verify_tlog_proof(proof, leaf, verifier, origin=origin)
        except VerificationError as exc:
            failure = exc.message
    raise VerificationError(f"entry {i} is not proved included in {origin}: {failure}")


def _check_entry(
    i: int,
    entry: RequestLeg | ResponseLeg | EventEntry,
    decoded: dict[int, RequestLeg | ResponseLeg | EventEntry],
    keys: HistoricalKeys,
) -> list[str]:
    if isinstance(entry, RequestLeg):
        if entry.decision == "refused":
            return [
                f"entry {i}: request {entry.request_id or '(undecoded)'} refused by the "
                f"gateway: {entry.rule}"
            ]
        if sealed_digest(entry.envelope) is not None:
            return [
                f"entry {i}: request {entry.request_id} allowed by {entry.rule!r}; its signed "
                f"envelope is sealed (SHA-256 {entry.envelope[-32:].hex()}), checked by an "
                "auditor's reveal"
            ]
        try:
            signer = check_request_leg(entry, keys)
        except VerificationError as exc:
            raise VerificationError(f"entry {i}: {exc.message}") from exc
        return [
            f"entry {i}: request {entry.request_id} signed by {signer}, allowed by {entry.rule!r}"
        ]
    if isinstance(entry, ResponseLeg) and entry.request_origin:
        return _foreign_response(i, entry, keys)
    if isinstance(entry, ResponseLeg):
        request = decoded.get(entry.request_leaf_index)
        if request is None:
            raise VerificationError(
                f"entry {i}: the response leg names request entry {entry.request_leaf_index}, "
                "which the bundle does not contain"
            )
        if not isinstance(request, RequestLeg) or request.request_id != entry.request_id:
            raise VerificationError(
                f"entry {i}: response leg names entry {entry.request_leaf_index}, which is not "
                f"the request leg of {entry.request_id}"
            )
        body = request.envelope
        if sealed_digest(entry.response_envelope) is not None or sealed_digest(body):
            return [
                f"entry {i}: {entry.status} from {entry.responder}; the signed envelopes are "
                "sealed, checked by an auditor's reveal"
            ]
        try:
            responder = check_response_leg(entry, keys, request_body=body)
        except VerificationError as exc:
            if entry.status == "node_fault":
                return [
                    f"entry {i}: node fault at {entry.responder} (its answer was rejected: "
                    f"{exc.message})"
                ]
            raise VerificationError(f"entry {i}: {exc.message}") from exc
        if responder is None:
            return [
                f"entry {i}: response status {entry.status} from {entry.responder} (no "
                "signed response kept)"
            ]
        return [
            f"entry {i}: response ({entry.status}) signed by {responder} and bound to the "
            f"request in entry {entry.request_leaf_index}"
        ]
    return [f"entry {i}: event {entry.kind} by {entry.actor}"]


def _foreign_response(i: int, entry: ResponseLeg, keys: HistoricalKeys) -> list[str]:
    """A ticket answer logged in another shard than its request leg: its signature checks
    here; its binding to the request is checked with the request's shard (``fedgate audit
    verify`` over every shard, or that shard's bundle of the request)."""
    where = f"entry {entry.request_leaf_index} of {entry.request_origin}"
    if sealed_digest(entry.response_envelope) is not None:
        return [
            f"entry {i}: {entry.status} from {entry.responder} (sealed) for the request in {where}"
        ]
    try:
        responder = check_response_leg(entry, keys, request_body=None)
    except VerificationError as exc:
        if entry.status == "node_fault":
            return [f"entry {i}: node fault at {entry.responder} ({exc.message})"]
        raise VerificationError(f"entry {i}: {exc.message}") from exc
    signed = f"signed by {responder}" if responder else "no signed response kept"
    return [
        f"entry {i}: response ({entry.status}, {signed}) to the request in {where}, another "
        "shard: its binding to that request is checked with that shard"
    ]
