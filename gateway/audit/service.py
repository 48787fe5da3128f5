"""``AuditService``: the log's checkpoints, proofs, entries, search and evidence over gRPC.

Callers are identified by their TLS client certificate (``fedgate.tls.peer_member_id``),
checked against the member registry. Who sees what:

- every member in good standing may read checkpoints and consistency proofs (agencies need
  them to check their receipts);
- a member allowed ``audit_read`` on the gateway (the auditors) sees every entry, with subject
  identifiers masked in summaries (auditors never read personal data in the clear);
- a member allowed ``audit_read_own`` on itself sees the entries it requested or answered;
- anyone else gets PERMISSION_DENIED.

Identifiers reach a reader who was no party to an exchange only through an audited reveal:

- summaries MUST have their subjects masked and their free text (``reason``: a refusal's rule,
  an agency's ``detail``) passed through ``mask_identifiers`` for such a reader;
- ``GetEntry`` MUST return the leaf bytes (signed envelopes included) only to a party to the
  entry (its requesting or target member); anyone else gets ``masked`` with a masked JSON view
  and the leaf hash;
- ``RevealEntry`` MUST refuse a reason shorter than ``MIN_REVEAL_REASON`` characters
  (``INVALID_ARGUMENT`` naming ``reason``) and MUST log an ``audit_reveal`` event (who, which
  entry, why) before it returns the entry in full; if that cannot be logged, nothing is shown;
- ``ExportEvidence`` by a non-party MUST log an ``audit_export`` event first (the bundle holds
  the leaf bytes), as the console does.

The policy decides when a ``decider_fn`` is given (``gateway.policy`` rules ``audit_read`` and
``audit_read_own``); without one, the registry role ``auditor`` sees everything and every other
member its own entries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import grpc
import grpc.aio

from fedgate.audit_entry import EntryKind, EventEntry, decode_entry, micros_to_time
from fedgate.errors import (
    FedgateError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionRefused,
)
from fedgate.evidence import build_bundle
from fedgate.logs import mask, mask_identifiers
from fedgate.registry import Member, Registry
from fedgate.status import abort_with
from fedgate.tls import peer_member_id
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc
from gateway.audit._bodies import BodyDeleted
from gateway.audit._masked import masked_view
from gateway.audit.log import AuditLog
from gateway.audit.reader import LogView
from gateway.audit.store import IndexedRow, SearchQuery
from gateway.policy import PolicyDecider, PolicyRequest

__all__ = [
    "EXPORT_EVENT",
    "MAX_PAGE_SIZE",
    "MIN_REVEAL_REASON",
    "REVEAL_EVENT",
    "Access",
    "AuditServicer",
    "check_reveal_reason",
    "export_evidence",
]

MAX_PAGE_SIZE = 500
MAX_COSIGN_WAIT_MS = 5_000
"""The longest ``GetCosignedCheckpoint`` waits for the witnesses to cosign."""
DEFAULT_PAGE_SIZE = 100
AUDITOR_ROLE = "auditor"
MIN_REVEAL_REASON = 10
MAX_REVEAL_REASON = 256
REVEAL_EVENT = "audit_reveal"
EXPORT_EVENT = "audit_export"


class Access(Enum):
    ALL = "all"
    OWN = "own"
    NONE = "none"


async def _open_body(log: AuditLog, stored: bytes) -> tuple[bytes, str]:
    """For a reveal (already logged): the clear entry of a sealed leaf, or why there is none
    (``""`` for both when the log does not seal or the entry held no personal data)."""
    vault = log.vault
    if vault is None:
        return b"", ""
    try:
        return await asyncio.to_thread(vault.open, stored), ""
    except BodyDeleted as exc:
        return b"", exc.message
    except NotFound:
        return b"", ""


async def export_evidence(log: LogView, index: int) -> bytes:
    """The evidence bundle for entry ``index``: it and the other leg(s) of its exchange,
    proved against the latest cosigned checkpoint that covers them (else the latest).
    Raises ``NotFound``."""
    row = await _row(log, index)
    if row is None:
        raise NotFound(f"no entry {index}: the log has {log.size} entries")
    related = {index}
    columns = row.columns
    if columns[0] == EntryKind.RESPONSE and columns[11] >= 0:  # (-1: in another shard)
        related.add(columns[11])
    elif columns[0] == EntryKind.REQUEST and columns[1]:
        hits = await log.search(SearchQuery(request_id=columns[1], limit=MAX_PAGE_SIZE))
        related |= {
            h.index for h in hits if h.columns[0] == EntryKind.RESPONSE and h.columns[11] == index
        }
    entries = [(i, await log.get_entry(i)) for i in sorted(related)]
    checkpoint = log.latest_checkpoint()
    size = log.size
    cosigned = log.latest_cosigned_checkpoint()
    cosigned_size = log.latest_cosigned_size()
    if cosigned is not None and cosigned_size > max(related):
        checkpoint, size = cosigned, cosigned_size
    return build_bundle(
        origin=log.origin,
        index=index,
        entries=entries,
        checkpoint=checkpoint,
        tree_size=size,
        inclusion_proof=log.inclusion_proof,
    )


async def _row(log: LogView, index: int, *, visible_to: str = "") -> IndexedRow | None:
    if not 0 <= index < log.size:
        return None
    hits = await log.search(SearchQuery(after_index=index - 1, limit=1, visible_to=visible_to))
    return hits[0] if hits and hits[0].index == index else None


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """Serves one ``AuditLog``. ``registry`` may be a callable returning the current registry
    (reloads); ``decider_fn`` returns the current policy decider."""

    def __init__(
        self,
        log: AuditLog,
        registry: Registry | Callable[[], Registry],
        decider_fn: Callable[[], PolicyDecider] | None = None,
    ) -> None:
        self._log = log
        self._registry = registry
        self._decider_fn = decider_fn

    def _current_registry(self) -> Registry:
        return self._registry if isinstance(self._registry, Registry) else self._registry()

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Member, Access]:
        member_id, cert = peer_member_id(context)
        registry = self._current_registry()
        member = registry.check_certificate(member_id, cert)
        return member, self._access(member, registry)

    def _access(self, member: Member, registry: Registry) -> Access:
        if self._decider_fn is None:
            if AUDITOR_ROLE in member.roles:
                return Access.ALL
            return Access.OWN
        decider = self._decider_fn()
        kinds = {m.id: str(m.kind) for m in registry.members()}
        for action, target, access in (
            ("audit_read", MemberId("gateway"), Access.ALL),
            ("audit_read_own", member.id, Access.OWN),
        ):
            for role in member.roles:
                request = PolicyRequest.of(
                    role=role, member=member.id, action=action, target=target, members=kinds
                )
                if decider.decide(request).allowed:
                    return access
        return Access.NONE

    def _entry_reader(self, member: Member, access: Access) -> str:
        """The ``visible_to`` restriction for an entry-reading call."""
        if access is Access.NONE:
            raise PermissionRefused(f"{member.id} may not read the audit log")
        return "" if access is Access.ALL else member.id

    def _summary(
        self, row: IndexedRow, member: Member, access: Access
    ) -> audit_service_pb2.AuditEntrySummary:
        c = row.columns
        clear = member.id in (c[3], c[7]) or access is Access.OWN
        subjects = list(c[10]) if clear else [mask(s) for s in c[10]]
        summary = audit_service_pb2.AuditEntrySummary(
            leaf_index=row.index,
            leg=c[0],  # type: ignore[arg-type]  # EntryLeg numbers are EntryKind's
            request_id=c[1],
            requesting_agency=c[3],
            officer_id=c[4],
            case_number=c[5],
            action=c[6],
            target_agency=c[7],
            subjects=subjects,
            outcome=c[8],
            reason=c[9] if clear else mask_identifiers(c[9]),
        )
        summary.time.FromDatetime(micros_to_time(c[2]))
        return summary

    async def GetCheckpoint(
        self,
        request: audit_service_pb2.GetCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.GetCheckpointResponse:
        try:
            self._caller(context)
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.GetCheckpointResponse(
            origin=self._log.origin, checkpoint=self._log.latest_checkpoint()
        )

    async def GetInclusionProof(
        self,
        request: audit_service_pb2.GetInclusionProofRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.GetInclusionProofResponse:
        try:
            member, access = self._caller(context)
            visible_to = self._entry_reader(member, access)
            log = self._log
            size = request.tree_size or log.size
            if await _row(log, request.leaf_index, visible_to=visible_to) is None:
                raise NotFound(f"no entry {request.leaf_index} visible to {member.id}")
            hashes = log.inclusion_proof(request.leaf_index, size)
            checkpoint = (
                log.latest_checkpoint() if size == log.size else await log.checkpoint_at(size)
            )
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.GetInclusionProofResponse(
            leaf_index=request.leaf_index,
            tree_size=size,
            leaf_hash=log.leaf_hash(request.leaf_index),
            hashes=hashes,
            checkpoint=checkpoint or "",
        )

    async def GetConsistencyProof(
        self,
        request: audit_service_pb2.GetConsistencyProofRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.GetConsistencyProofResponse:
        try:
            self._caller(context)
            second = request.second_size or self._log.size
            hashes = self._log.consistency_proof(request.first_size, second)
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.GetConsistencyProofResponse(
            first_size=request.first_size, second_size=second, hashes=hashes
        )

    async def GetEntry(
        self,
        request: audit_service_pb2.GetEntryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.GetEntryResponse:
        try:
            member, access = self._caller(context)
            visible_to = self._entry_reader(member, access)
            row = await _row(self._log, request.leaf_index, visible_to=visible_to)
            if row is None:
                raise NotFound(f"no entry {request.leaf_index} visible to {member.id}")
            data = await self._log.get_entry(request.leaf_index)
            summary = self._summary(row, member, access)
            reply = audit_service_pb2.GetEntryResponse(
                summary=summary, leaf_hash=self._log.leaf_hash(request.leaf_index)
            )
            if _party(row, member) or access is Access.OWN:
                reply.entry = data
            else:
                reply.masked = True
                reply.masked_view = masked_view(decode_entry(data))
        except FedgateError as exc:
            await abort_with(context, exc)
        return reply

    async def RevealEntry(
        self,
        request: audit_service_pb2.RevealEntryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.RevealEntryResponse:
        try:
            member, access = self._caller(context)
            visible_to = self._entry_reader(member, access)
            reason = check_reveal_reason(request.reason)
            row = await _row(self._log, request.leaf_index, visible_to=visible_to)
            if row is None:
                raise NotFound(f"no entry {request.leaf_index} visible to {member.id}")
            receipt = await self._log.append(
                EventEntry(
                    kind=REVEAL_EVENT,
                    actor=member.id,
                    member=member.id,
                    at=datetime.now(UTC),
                    detail=(
                        ("entry", str(request.leaf_index)),
                        ("reason", reason),
                        ("via", "AuditService"),
                    ),
                )
            )
            data = await self._log.get_entry(request.leaf_index)
            summary = self._summary(row, member, Access.OWN)
            clear, deleted = await _open_body(self._log, data)
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.RevealEntryResponse(
            entry=data,
            summary=summary,
            reveal_leaf_index=receipt.index,
            clear_entry=clear,
            body_deleted=deleted,
        )

    async def SearchEntries(
        self,
        request: audit_service_pb2.SearchEntriesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.SearchEntriesResponse:
        try:
            member, access = self._caller(context)
            visible_to = self._entry_reader(member, access)
            query = _query(request, visible_to)
            hits = await self._log.search(query)
        except FedgateError as exc:
            await abort_with(context, exc)
        more = len(hits) > query.limit - 1
        page = hits[: query.limit - 1]
        token = _page_token(page[-1].index, request) if more and page else ""
        return audit_service_pb2.SearchEntriesResponse(
            entries=[self._summary(h, member, access) for h in page], next_page_token=token
        )

    async def ExportEvidence(
        self,
        request: audit_service_pb2.ExportEvidenceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.ExportEvidenceResponse:
        try:
            member, access = self._caller(context)
            visible_to = self._entry_reader(member, access)
            row = await _row(self._log, request.leaf_index, visible_to=visible_to)
            if row is None:
                raise NotFound(f"no entry {request.leaf_index} visible to {member.id}")
            if not _party(row, member) and access is not Access.OWN:
                detail = [("entry", str(request.leaf_index)), ("via", "AuditService")]
                if request.reason.strip():
                    detail.append(("reason", _bounded(mask_identifiers(request.reason.strip()))))
                await self._log.append(
                    EventEntry(
                        kind=EXPORT_EVENT,
                        actor=member.id,
                        member=member.id,
                        at=datetime.now(UTC),
                        detail=tuple(detail),
                    )
                )
            bundle = await export_evidence(self._log, request.leaf_index)
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.ExportEvidenceResponse(bundle=bundle)

    async def GetCosignedCheckpoint(
        self,
        request: audit_service_pb2.GetCosignedCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.GetCosignedCheckpointResponse:
        try:
            self._caller(context)
            log = self._log
            if not 0 < request.tree_size <= log.size:
                raise InvalidArgument(
                    f"tree_size must be between 1 and the log's size {log.size}, "
                    f"got {request.tree_size}"
                )
            wait_s = min(request.wait_ms, MAX_COSIGN_WAIT_MS) / 1000.0
            note, size = await log.cosigned_covering(request.tree_size, timeout_s=wait_s)
            proof = log.consistency_proof(request.tree_size, size)
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.GetCosignedCheckpointResponse(
            checkpoint=note, tree_size=size, consistency_proof=proof
        )


def _party(row: IndexedRow, member: Member) -> bool:
    """Whether ``member`` requested or answered the entry (or, for an event, is its member)."""
    return member.id in (row.columns[3], row.columns[7])


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_REVEAL_REASON else text[: MAX_REVEAL_REASON - 1] + "…"


def check_reveal_reason(reason: str) -> str:
    """The reason for a reveal, as logged (identifiers in it masked); ``InvalidArgument``
    naming ``reason`` when it is missing or too short."""
    text = reason.strip()
    if len(text) < MIN_REVEAL_REASON:
        raise InvalidArgument.for_fields(
            [
                FieldViolation(
                    "reason",
                    f"say why the identifiers are needed (at least {MIN_REVEAL_REASON} "
                    "characters); the reveal is logged with it",
                )
            ]
        )
    return _bounded(mask_identifiers(text))


def _fingerprint(request: audit_service_pb2.SearchEntriesRequest) -> str:
    """Ties a page token to its query, so a token is not replayed against another query."""
    copy = audit_service_pb2.SearchEntriesRequest()
    copy.CopyFrom(request)
    copy.ClearField("page")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]


def _page_token(last_index: int, request: audit_service_pb2.SearchEntriesRequest) -> str:
    raw = f"v1:{last_index}:{_fingerprint(request)}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _after_index(request: audit_service_pb2.SearchEntriesRequest) -> int:
    token = request.page.page_token
    if not token:
        return -1
    try:
        version, last, fingerprint = (
            base64.urlsafe_b64decode(token.encode("ascii")).decode().split(":")
        )
        after = int(last)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise InvalidArgument("page.page_token is not a token this service issued") from exc
    if version != "v1" or fingerprint != _fingerprint(request) or after < 0:
        raise InvalidArgument("page.page_token belongs to another query")
    return after


def _query(request: audit_service_pb2.SearchEntriesRequest, visible_to: str) -> SearchQuery:
    size = request.page.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page.page_size must be 1 to {MAX_PAGE_SIZE}, got {size}")
    since = until = None
    if request.HasField("window"):
        if request.window.HasField("start"):
            since = request.window.start.ToMicroseconds()
        if request.window.HasField("end"):
            until = request.window.end.ToMicroseconds()
    return SearchQuery(
        officer_id=request.officer_id,
        member=request.member,
        case_number=request.case_number,
        action=request.action,
        subject=request.subject,
        outcome=request.outcome,
        since_us=since,
        until_us=until,
        visible_to=visible_to,
        after_index=_after_index(request),
        limit=size + 1,  # one more than the page, to know whether another page follows
    )
