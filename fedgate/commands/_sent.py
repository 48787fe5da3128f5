"""The signed requests this member sent and the verified answers they got, kept on disk so that
an answer can be verified, read and exported later, by another process (``fedgate answers``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fedgate.commands._parse import parse_request_id
from fedgate.errors import DecodeError
from fedgate.files import write_atomically
from fedgate.v1 import envelope_pb2, request_pb2

__all__ = ["SentStore"]


class SentStore:
    """Signed request envelopes this member sent, one file ``<request id>.bin`` each (0600),
    and beside each the signed, countersigned answer with its receipt once one was verified
    (``<request id>.answer.bin``, a ``SignedResponse``).

    The client keeps sent bytes in memory only; an answer is bound to those exact bytes, so a
    later ``fedgate ticket`` or ``fedgate answers`` reads them from here to verify it again.
    An answer MUST be saved only after it was verified against the request kept here."""

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

    def answer_path(self, request_id: str) -> Path:
        return self.directory / f"{parse_request_id(request_id)}.answer.bin"

    def save_answer(self, request_id: str, signed: envelope_pb2.SignedResponse) -> Path:
        """Keep a verified answer beside its request (atomically, replacing an older copy, e.g.
        one whose receipt had no witness cosignatures yet); raises ``OSError``."""
        path = self.answer_path(request_id)
        write_atomically(path, signed.SerializeToString())
        return path

    def load_answer(self, request_id: str) -> envelope_pb2.SignedResponse | None:
        """The answer kept for ``request_id`` (not verified again here), or None.

        Raises ``DecodeError`` when the file is not a signed response."""
        path = self.answer_path(request_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return envelope_pb2.SignedResponse.FromString(raw)
        except Exception as exc:  # protobuf's DecodeError
            raise DecodeError(f"{path} is not a signed response") from exc

    def request_ids(self) -> Iterator[str]:
        """The ids of the requests kept here, oldest first (UUIDv7 ids sort by time)."""
        if not self.directory.is_dir():
            return
        names = sorted(p.name for p in self.directory.glob("*.bin"))
        for name in names:
            stem = name.removesuffix(".bin")
            if "." not in stem:
                yield stem
