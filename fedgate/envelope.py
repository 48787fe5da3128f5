"""Signed envelopes: sign the exact serialized bytes, verify the bytes as received.

A message is serialized once by its sender. The signature is Ed25519 over
``prefix || body`` where the prefix separates domains (requests, responses,
countersignatures, the registry), so a signature made for one purpose never
verifies for another. Verification never re-serializes: protobuf encoding is not
canonical, so only the bytes as received are meaningful.

A response is bound to its request by ``request_hash = SHA-256(request body)``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.errors import DecodeError, ResponseBindingError, SignatureInvalid
from fedgate.keys import key_id_of, sign_bytes, verify_bytes
from fedgate.types import KeyId
from fedgate.v1 import envelope_pb2, request_pb2

__all__ = [
    "MAX_BODY_BYTES",
    "Domain",
    "Signer",
    "countersign",
    "decode_request",
    "decode_response",
    "request_hash",
    "sign_envelope",
    "verify_countersignature",
    "verify_envelope",
    "verify_response_binding",
]

MAX_BODY_BYTES = 1 << 20
"""Largest envelope body accepted (1 MiB); bigger bodies are refused before parsing."""


class Domain(Enum):
    """Domain-separation prefixes: one per kind of signed thing."""

    REQUEST = b"fedgate/v1/request\n"
    RESPONSE = b"fedgate/v1/response\n"
    COUNTERSIGNATURE = b"fedgate/v1/countersignature\n"
    EVENT = b"fedgate/v1/event\n"


@dataclass(frozen=True, slots=True)
class Signer:
    """A member's Ed25519 signing key with its key id."""

    key: Ed25519PrivateKey
    key_id: KeyId

    @classmethod
    def from_key(cls, key: Ed25519PrivateKey) -> Signer:
        return cls(key=key, key_id=key_id_of(key))

    def sign(self, domain: Domain, body: bytes) -> bytes:
        return sign_bytes(self.key, domain.value + body)


def sign_envelope(body: bytes, signer: Signer, domain: Domain) -> envelope_pb2.SignedEnvelope:
    """Sign ``body`` (already serialized, never to be re-serialized) under ``domain``."""
    return envelope_pb2.SignedEnvelope(
        body=body, key_id=signer.key_id, signature=signer.sign(domain, body)
    )


def verify_envelope(
    envelope: envelope_pb2.SignedEnvelope, public_key: Ed25519PublicKey, domain: Domain
) -> None:
    """Check the envelope's signature over its body as received.

    Raises ``SignatureInvalid`` if the key id is not ``public_key``'s, the
    signature has the wrong length, or it does not verify under ``domain``.
    """
    if envelope.key_id != key_id_of(public_key):
        raise SignatureInvalid(f"envelope key id {envelope.key_id!r} is not the signer's key")
    if len(envelope.signature) != 64:
        raise SignatureInvalid(f"signature must be 64 bytes, got {len(envelope.signature)}")
    if not verify_bytes(public_key, envelope.signature, domain.value + envelope.body):
        raise SignatureInvalid(
            f"{domain.name.lower()} signature does not verify over the body as received"
        )


def request_hash(body: bytes) -> bytes:
    """SHA-256 over a request envelope's body bytes: what a response binds to."""
    return hashlib.sha256(body).digest()


def _decode(body: bytes, message: request_pb2.Request | request_pb2.Response, what: str) -> None:
    if len(body) > MAX_BODY_BYTES:
        raise DecodeError(f"{what} body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        message.ParseFromString(body)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"{what} body is not a well-formed fedgate.v1.{what}") from exc


def decode_request(body: bytes) -> request_pb2.Request:
    """Parse a request body; raises ``DecodeError`` if oversized or malformed."""
    message = request_pb2.Request()
    _decode(body, message, "Request")
    return message


def decode_response(body: bytes) -> request_pb2.Response:
    """Parse a response body; raises ``DecodeError`` if oversized or malformed."""
    message = request_pb2.Response()
    _decode(body, message, "Response")
    return message


def verify_response_binding(
    response: request_pb2.Response, *, request_body: bytes, request_id: str, responder: str
) -> None:
    """Check that ``response`` answers exactly this request, from the expected responder.

    Raises ``ResponseBindingError`` naming what does not match.
    """
    if response.request_hash != request_hash(request_body):
        raise ResponseBindingError("response request_hash does not match the request sent")
    if response.request_id != request_id:
        raise ResponseBindingError(
            f"response answers request {response.request_id!r}, not {request_id!r}"
        )
    if response.responder != responder:
        raise ResponseBindingError(
            f"response is from {response.responder!r}, the request went to {responder!r}"
        )


def _countersigned_message(response: envelope_pb2.SignedEnvelope, leaf_index: int) -> bytes:
    return (
        Domain.COUNTERSIGNATURE.value
        + hashlib.sha256(response.body).digest()
        + response.signature
        + struct.pack(">Q", leaf_index)
    )


def countersign(
    response: envelope_pb2.SignedEnvelope, signer: Signer, *, leaf_index: int
) -> envelope_pb2.Countersignature:
    """The gateway's countersignature on an agency's signed response logged at ``leaf_index``."""
    return envelope_pb2.Countersignature(
        key_id=signer.key_id,
        signature=sign_bytes(signer.key, _countersigned_message(response, leaf_index)),
    )


def verify_countersignature(
    response: envelope_pb2.SignedEnvelope,
    countersignature: envelope_pb2.Countersignature,
    gateway_key: Ed25519PublicKey,
    *,
    leaf_index: int,
) -> None:
    """Raises ``SignatureInvalid`` unless the gateway countersigned this response at this index."""
    if countersignature.key_id != key_id_of(gateway_key):
        raise SignatureInvalid("countersignature key id is not the gateway's key")
    message = _countersigned_message(response, leaf_index)
    if not verify_bytes(gateway_key, countersignature.signature, message):
        raise SignatureInvalid("gateway countersignature does not verify")
