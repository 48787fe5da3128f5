"""The signed requests this member sent, kept on disk so that a ticket's answer can be verified
later, by another process."""

from __future__ import annotations

from pathlib import Path

from fedgate.commands._parse import parse_request_id
from fedgate.errors import DecodeError
from fedgate.files import write_atomically
from fedgate.v1 import envelope_pb2, request_pb2

__all__ = ["SentStore"]


class SentStore:
    """Signed request envelopes this member sent, one file ``<request id>.bin`` each (0600).

    The client keeps sent bytes in memory only; a ticket's answer is bound to those exact
    bytes, so a later ``fedgate ticket`` reads them from here to verify the answer."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, request_id: str) -> Path:
        return self.directory / f"{parse_request_id(request_id)}.bin"

    def save(self, request_id: str, envelope: envelope_pb2.SignedEnvelope) -> Path:
        """Write atomically; raises ``OSError``."""
        path = self.path(request_id)
        write_atomically(path, envelope.SerializeToString())
        return path

    def load(self, request_id: str) -> bytes | None:
        """The request body sent under ``request_id``, or None if it was not kept here.

        Raises ``DecodeError`` when the file is not a signed request with that id."""
        path = self.path(request_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        envelope = envelope_pb2.SignedEnvelope()
        request = request_pb2.Request()
        try:
            envelope.ParseFromString(raw)
            request.ParseFromString(envelope.body)
        except Exception as exc:  # protobuf raises its own DecodeError (a subclass of Exception)
            raise DecodeError(f"{path} is not a signed request") from exc
        if request.request_id != parse_request_id(request_id):
            raise DecodeError(f"{path} holds request {request.request_id!r}, not {request_id}")
        return envelope.body
