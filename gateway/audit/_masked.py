"""Masked views of audit entries, for readers who were no party to an exchange.

``masked_view`` renders one entry as JSON in which every identifier is hidden
(``fedgate.web.protoview.mask_tree``: identifier and name fields by ``mask``, every other string,
free text such as a refusal's rule or an agency's ``detail``, by ``mask_identifiers``). The
leaf bytes themselves are never altered (their hash is the proof).

- A masked view MUST NOT contain any identifier ``mask_identifiers`` would mask, in any field.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import AuditEntry, EventEntry, RequestLeg, ResponseLeg
from fedgate.envelope import decode_request, decode_response
from fedgate.errors import FedgateError
from fedgate.protojson import iso_time, message_dict
from fedgate.v1 import envelope_pb2
from fedgate.web.protoview import mask_tree

__all__ = ["masked_view"]


def _body(envelope_bytes: bytes, *, response: bool) -> dict[str, Any] | None:
    if not envelope_bytes:
        return None
    try:
        envelope = envelope_pb2.SignedEnvelope.FromString(envelope_bytes)
        message = decode_response(envelope.body) if response else decode_request(envelope.body)
    except (ProtobufDecodeError, FedgateError):
        return None
    return message_dict(message)


def masked_view(entry: AuditEntry) -> str:
    """``entry`` as masked JSON (see the module docstring)."""
    doc: dict[str, Any]
    if isinstance(entry, RequestLeg):
        doc = {
            "leg": "request",
            "received_at": iso_time(entry.received_at),
            "peer": entry.peer,
            "decision": entry.decision,
            "rule": entry.rule,
            "request": _body(entry.envelope, response=False),
        }
    elif isinstance(entry, ResponseLeg):
        doc = {
            "leg": "response",
            "received_at": iso_time(entry.received_at),
            "request_id": entry.request_id,
            "request_leaf_index": entry.request_leaf_index,
            "responder": entry.responder,
            "status": entry.status,
            "detail": entry.detail,
            "response": _body(entry.response_envelope, response=True),
        }
    else:
        assert isinstance(entry, EventEntry)
        doc = {
            "leg": "event",
            "at": iso_time(entry.at),
            "kind": entry.kind,
            "actor": entry.actor,
            "member": entry.member,
            "detail": dict(entry.detail),
        }
    return json.dumps(mask_tree(doc), ensure_ascii=False, sort_keys=True)
