"""Safe retries: what became of each request, so that the same signed request sent again gets
what the first got (pipeline stage 4).

A client whose call timed out cannot know whether the gateway ran its request. It sends the
same signed envelope again, to the same instance or another one. The gateway recognises the
retry by its request id and the SHA-256 of the signed body (the same id with another body is a
different request, refused as ``REPLAYED``), and answers it without running anything again:

- the first attempt finished: its recorded outcome, byte for byte (the same signed answer,
  countersignature and receipt, the same ticket, or the same refusal; for a fan-out every
  member's item as first streamed, each answer with its own receipt);
- the first attempt is still running: ``InProgress`` (``UNAVAILABLE``, reason
  ``IN_PROGRESS``, with a ``RetryInfo`` delay): ask again.

How: before the replay cache remembers a request, the request *claims* its id here with its
body hash (``OutcomeStore.claim``). Of two attempts, exactly one claims (the store's unique
key); the other finds the claim and is answered from it. When the first attempt ends (an
answer, a ticket, a refusal at any later stage), its outcome is recorded (``record``).

Contract:

- ``claim`` MUST be atomic: of any number of attempts with one request id (on any instance
  sharing the store), exactly one gets ``None`` (it runs the request); the others get the claim.
- ``record`` MUST store the outcome the caller was (or would have been) given, and MUST be
  called once the request leaves stage 4 claimed, whatever happens after (the pipeline records
  refusals and cancellations too), so that no claim stays in progress longer than its exchange.
- A claim is kept until ``expires_us`` (the replay window after ``issued_at``): a retry later
  than that is refused as stale before it gets here.

Stores: ``gateway.replay.MemoryReplayCache`` (one process; the default with ``[shared] store =
"local"``: the in-memory replay cache keeps the outcomes in the same entry as the request id,
encoded, bounded by age and size) and ``PgOutcomes`` (every instance on one PostgreSQL
database, with ``"postgres"``). A restart of a local gateway forgets the outcomes; a retry of a
request sent before the restart is then refused as ``REPLAYED`` by the rebuilt replay cache,
and ``GetOutcome`` reads its outcome back from the audit log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Protocol

from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.status import error_detail, error_from_detail
from fedgate.storage import Schema
from fedgate.v1 import gateway_service_pb2, status_pb2
from gateway.shared import PgPool

__all__ = [
    "RETRIED",
    "Claim",
    "OutcomeStore",
    "PgOutcomes",
    "RecordedOutcome",
]

RETRIED: Final = "RETRIED"
"""The reason in the rule of the request leg logged for a retry answered from its record
(decision ``refused``: nothing was run again; the caller got the first attempt's outcome)."""

_PRUNE_EVERY_US: Final = 30 * 1_000_000
_ANSWER = b"A"
_ERROR = b"E"
_FAN_OUT = b"F"
_ITEM_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """What the first attempt of a request ended with: the reply the caller got, the items a
    fan-out streamed (in the order it streamed them), or the error."""

    reply: gateway_service_pb2.SubmitResponse | None = None
    error: FedgateError | None = None
    fan_out: tuple[gateway_service_pb2.FanOutResponse, ...] | None = None

    def encode(self) -> bytes:
        if self.reply is not None:
            return _ANSWER + self.reply.SerializeToString()
        if self.fan_out is not None:
            items = [item.SerializeToString() for item in self.fan_out]
            return _FAN_OUT + b"".join(_ITEM_LENGTH.pack(len(i)) + i for i in items)
        assert self.error is not None, "an outcome is a reply, a fan-out's items or an error"
        return _ERROR + error_detail(self.error).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> RecordedOutcome:
        """Raises ``AuditUnavailable`` for bytes no gateway recorded (fail closed)."""
        kind, body = data[:1], data[1:]
        try:
            if kind == _ANSWER:
                return cls(reply=gateway_service_pb2.SubmitResponse.FromString(body))
            if kind == _ERROR:
                return cls(error=error_from_detail(status_pb2.ErrorDetail.FromString(body)))
            if kind == _FAN_OUT:
                return cls(fan_out=_fan_out_items(body))
        except Exception as exc:  # protobuf's DecodeError and friends: unreadable record
            raise AuditUnavailable("a recorded outcome is unreadable") from exc
        raise AuditUnavailable("a recorded outcome is of an unknown kind")


def _fan_out_items(body: bytes) -> tuple[gateway_service_pb2.FanOutResponse, ...]:
    """The length-prefixed ``FanOutResponse`` items of a recorded fan-out."""
    items = []
    at = 0
    while at < len(body):
        (length,) = _ITEM_LENGTH.unpack_from(body, at)
        at += _ITEM_LENGTH.size
        if at + length > len(body):
            raise ValueError("a recorded fan-out item is cut short")
        items.append(gateway_service_pb2.FanOutResponse.FromString(body[at : at + length]))
        at += length
    return tuple(items)


@dataclass(frozen=True, slots=True)
class Claim:
    """What the store holds for a request id that an earlier attempt claimed."""

    body_sha256: bytes
    outcome: RecordedOutcome | None
    """``None`` while the first attempt is still running."""


class OutcomeStore(Protocol):
    """Where the pipeline claims request ids and records their outcomes (see the module)."""

    async def claim(
        self, request_id: str, body_sha256: bytes, *, expires_us: int, now_us: int
    ) -> Claim | None:
        """Claim ``request_id`` for this body: ``None`` when this attempt claimed it, else the
        earlier claim. Raises ``AuditUnavailable``."""
        ...

    async def record(self, request_id: str, outcome: RecordedOutcome) -> None:
        """Record the outcome of the attempt that claimed ``request_id``. Raises
        ``AuditUnavailable``."""
        ...

    def close(self) -> None: ...


_PG_STORE = Schema(
    store="shared request outcomes",
    version=1,
    create="""
CREATE TABLE IF NOT EXISTS outcomes (
    request_id  TEXT PRIMARY KEY,
    body_sha256 BYTEA NOT NULL,
    outcome     BYTEA,
    expires_us  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_by_expiry ON outcomes (expires_us);
""",
)
_PG_CLAIM = (
    "INSERT INTO outcomes (request_id, body_sha256, expires_us) VALUES (%s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
_PG_HELD = "SELECT body_sha256, outcome FROM outcomes WHERE request_id = %s"
_PG_RECORD = "UPDATE outcomes SET outcome = %s WHERE request_id = %s AND outcome IS NULL"
_PG_PRUNE = "DELETE FROM outcomes WHERE expires_us < %s"


class PgOutcomes:
    """Claims and outcomes shared by every gateway instance on one PostgreSQL database: one
    row per request id (the primary key makes ``claim`` atomic across instances), committed
    before each call returns. Database failures raise ``AuditUnavailable``."""

    def __init__(self, *, dsn: str, schema: str, connections: int = 4) -> None:
        self._pool = PgPool(
            dsn=dsn,
            schema=schema,
            store=_PG_STORE,
            what="shared request outcomes",
            connections=connections,
        )
        self._next_prune_us = 0

    async def claim(
        self, request_id: str, body_sha256: bytes, *, expires_us: int, now_us: int
    ) -> Claim | None:
        """As ``OutcomeStore.claim``."""
        async with self._pool.connection() as conn:
            async with conn.pipeline():  # the prune, when due, rides along with the claim
                if now_us >= self._next_prune_us:
                    self._next_prune_us = now_us + _PRUNE_EVERY_US
                    await conn.execute(_PG_PRUNE, (now_us,))
                cursor = await conn.execute(_PG_CLAIM, (request_id, body_sha256, expires_us))
            if cursor.rowcount == 1:
                return None
            # Another attempt's row: ON CONFLICT waited for its commit, so this read sees it
            # (unless it expired and was pruned in between: then the replay cache refuses).
            row = await (await conn.execute(_PG_HELD, (request_id,))).fetchone()
        if row is None:
            return Claim(body_sha256=b"", outcome=None)
        outcome = None if row[1] is None else RecordedOutcome.decode(bytes(row[1]))
        return Claim(body_sha256=bytes(row[0]), outcome=outcome)

    async def record(self, request_id: str, outcome: RecordedOutcome) -> None:
        """As ``OutcomeStore.record``."""
        async with self._pool.connection() as conn:
            await conn.execute(_PG_RECORD, (outcome.encode(), request_id))

    def close(self) -> None:
        self._pool.close()
