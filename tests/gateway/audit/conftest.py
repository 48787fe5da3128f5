"""Audit log fixtures: a session PKI, signed exchanges, and helpers that open a log over either
store (the PostgreSQL schema per test, ``pg``, is in ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.checkpoint import CosignatureVerifier
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.keys import load_private_key
from fedgate.note import NoteSigner
from fedgate.pki import FederationLayout, init_federation
from fedgate.registry import Registry
from fedgate.testing import card_number, valid_request
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, request_pb2
from fedgate.witness import Witness
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import open_pg_store
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import AuditStore

if TYPE_CHECKING:
    from conftest import PgTarget

ORIGIN = "fedgate.test/gateway/shard-0"
POLICE = MemberId("police.gd.afc")
BANK = MemberId("bank.icbc")
WITNESSES = (MemberId("pboc.gz"), MemberId("audit.office"))


@dataclass
class Fed:
    """The session federation and signed exchanges made with its members' keys."""

    dir: Path
    registry: Registry
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    serial: int = 0

    def signer(self, member: MemberId) -> Signer:
        return Signer.from_key(load_private_key(FederationLayout(self.dir).signing_key(member)))

    def log_signer(self, origin: str = ORIGIN) -> NoteSigner:
        key = load_private_key(FederationLayout(self.dir).signing_key(MemberId("gateway")))
        return NoteSigner(name=origin, private_key=key)

    def witness(self, member: MemberId, state: Path, origin: str = ORIGIN) -> Witness:
        key = load_private_key(FederationLayout(self.dir).signing_key(member))
        return Witness(
            name=member,
            private_key=key,
            state_path=state,
            logs={origin: self.log_signer(origin).verifier()},
        )

    def witness_verifier(self, member: MemberId) -> CosignatureVerifier:
        key = load_private_key(FederationLayout(self.dir).signing_key(member))
        return CosignatureVerifier(name=member, public_key=key.public_key())

    def request(self, *, decision: str = "allowed", action: str = "stop_payment") -> RequestLeg:
        """A request signed by the police, as the gateway would log it."""
        self.serial += 1
        account = card_number(BANK, self.serial)
        request = valid_request(action, now=self.now, serial=self.serial, account_number=account)
        body = request.SerializeToString()
        envelope = sign_envelope(body, self.signer(POLICE), Domain.REQUEST)
        return RequestLeg(
            envelope=envelope.SerializeToString(),
            peer=POLICE,
            peer_cert_sha256=self.registry.member(POLICE).cert_fingerprint,
            received_at=self.now,
            decision=decision,
            rule="p, police_investigator, police, stop_payment, bank, allow"
            if decision == "allowed"
            else "POLICY_DENIED: no rule allows it",
            request_id=request.request_id,
            requesting_agency=request.requesting_agency,
            officer_id=request.officer.id,
            case_number=request.case.case_number,
            action=action,
            target_agency=request.target_agency,
            subjects=(account,),
        )

    def response(self, request: RequestLeg, index: int, *, status: str = "ok") -> ResponseLeg:
        """The bank's signed answer to ``request`` logged at ``index``."""
        parsed = envelope_pb2.SignedEnvelope()
        parsed.ParseFromString(request.envelope)
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=hashlib.sha256(parsed.body).digest(),
            responder=BANK,
            status=request_pb2.RESPONSE_STATUS_OK,
        )
        response.answered_at.FromDatetime(self.now)
        body = response.SerializeToString()
        signed = sign_envelope(body, self.signer(BANK), Domain.RESPONSE)
        return ResponseLeg(
            request_id=request.request_id,
            request_leaf_index=index,
            responder=BANK,
            received_at=self.now,
            status=status,
            response_hash=hashlib.sha256(body).digest(),
            responder_signature=signed.signature,
            responder_key_id=signed.key_id,
            detail="",
            response_envelope=signed.SerializeToString(),
        )


@pytest.fixture(scope="session")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default federation, issued a day ago so that keys were valid before now."""
    return init_federation(
        tmp_path_factory.mktemp("audit-federation") / "fed",
        now=datetime.now(UTC) - timedelta(days=1),
    )


@pytest.fixture
def fed(fed_dir: Path) -> Fed:
    return Fed(fed_dir, Registry.load_dir(fed_dir))


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Both stores: tests that take it run once per store."""
    kind: str = request.param
    return kind


@dataclass
class LogFactory:
    """Opens logs over the store chosen by ``store_kind`` (same database each time)."""

    kind: str
    tmp: Path
    fed: Fed
    pg: PgTarget | None
    opened: list[AuditLog] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "audit.sqlite"

    @property
    def state(self) -> Path:
        return self.tmp / "audit.sqlite.state"

    async def store(self) -> AuditStore:
        if self.kind == "sqlite":
            return await open_sqlite_store(self.db, origin=ORIGIN)
        assert self.pg is not None
        return await open_pg_store(
            self.pg.dsn, origin=ORIGIN, schema=self.pg.schema, state_path=self.state
        )

    async def open(self, *, witnessed: bool = False, **kwargs: object) -> AuditLog:
        """A log over this store; ``witnessed``: with the central bank's witness (the default
        federation's witness policy is 1 of 2), see ``cosigned``."""
        if witnessed:
            kwargs["witnesses"] = [self.fed.witness(WITNESSES[0], self.tmp / "witness-pboc")]
        log = await AuditLog.open(
            store=await self.store(),
            origin=ORIGIN,
            signer=self.fed.log_signer(),
            **kwargs,  # type: ignore[arg-type]
        )
        self.opened.append(log)
        return log

    @staticmethod
    async def cosigned(log: AuditLog, *, timeout_s: float = 10.0) -> str:
        """Wait until the witnesses cosigned the log's latest checkpoint; returns that note."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while log.latest_cosigned_size() != log.size:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not cosigned at size {log.size}: {log.witness_errors}")
            await asyncio.sleep(0.01)
        note = log.latest_cosigned_checkpoint()
        assert note is not None
        return note

    def source_args(self) -> list[str]:
        """The ``fedgate audit`` arguments naming this log."""
        if self.kind == "sqlite":
            return ["--db", str(self.db)]
        assert self.pg is not None
        return ["--pg", self.pg.dsn, "--schema", self.pg.schema, "--origin", ORIGIN]


@pytest_asyncio.fixture
async def logs(
    store_kind: str, tmp_path: Path, fed: Fed, request: pytest.FixtureRequest
) -> AsyncIterator[LogFactory]:
    target = request.getfixturevalue("pg") if store_kind == "postgres" else None
    factory = LogFactory(store_kind, tmp_path, fed, target)
    yield factory
    for log in factory.opened:
        await log.close()


@pytest_asyncio.fixture
async def sqlite_logs(tmp_path: Path, fed: Fed) -> AsyncIterator[LogFactory]:
    """``logs`` on SQLite only."""
    factory = LogFactory("sqlite", tmp_path, fed, None)
    yield factory
    for log in factory.opened:
        await log.close()
