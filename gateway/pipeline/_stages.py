"""The gateway's request pipeline: twelve stages, in DESIGN.md's order, each failing closed.

     1 transport      peer member from the TLS certificate, checked against the registry
     2 decode         size limit, well-formed SubmitRequest and Request, header fields present
     3 signature      key id → registry; key owned by the peer and valid at issued-at;
                      signature over the bytes as received; requesting_agency is the peer
     4 freshness      issued-at within the skew; a retry of the same signed request gets the
                      first attempt's recorded outcome (``gateway.retries``); request id and
                      nonce never seen (persistent)
     5 validation     every field (BadRequest violations name them)
     6 authorization  role granted to the member in the registry; policy; business rules
     7 quotas         per officer and per member
     8 audit request  the request leg, durable before anything leaves the gateway
     9 route          to the target's node (or, for agency reports, the alert stream)
    10 response check signed by the target with a key valid now, bound to this request
    11 audit response the response leg, durable before the answer is returned
    12 countersign    the gateway's countersignature and the audit receipt

Contract:

- A refusal at stages 1–7 MUST be logged as a request leg with decision ``refused`` and rule
  ``"<REASON>: <message>"`` before the error is returned; a failure at stages 9–10 MUST be
  logged as a response leg (``unavailable`` or ``node_fault``) first. If that logging fails,
  the caller gets ``AuditUnavailable`` instead.
- The gateway MUST NOT forward a request whose request leg is not durable, and MUST NOT return
  an answer whose response leg is not durable: a failing log means ``AuditUnavailable`` and
  nothing forwarded or returned.
- A request that claimed its id at stage 4 MUST have its outcome recorded whatever ends it (an
  answer, a ticket, a refusal, a failure, its caller going away): a retry of it is answered
  from that record, never run again and never refused as a replay of itself.
- Once the request leg is durable the exchange MUST run to its end (answer checked and logged,
  or its absence logged) even if the caller cancels: a node may have executed an order.
- Errors are ``FedgateError`` subclasses; the service maps them with ``fedgate.status``. An
  unexpected exception MUST leave as ``INTERNAL`` without its text (a trace id instead, the same
  as in the error log line): at stages 1–7 logged as a refusal, after the request leg as a
  ``gateway_fault`` response leg (also when an earlier leg, a ticket's ``pending`` or even the
  answer, is in: the log then shows the caller never got what it records).

Appeals (filed to a police unit) and appeal decisions (to the gateway) stop there too: answered
by the gateway itself (``_appeals``), read back from the log (``gateway.appeals``).

Agency reports (target: a police member) stop at stage 9: the gateway acknowledges them itself
and streams them to the police member (``gateway.alerts``). Risk list changes (target: the
gateway) stop there too: appended to the risk list's log, answered by the gateway
(``_risklist``).

Stages 1–8 are here; the exchange state is in ``_exchange``, the audit legs in ``_audit_legs``,
stages 9–12 in ``_forwarding`` and report delivery in ``_reports``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry import trace

from fedgate.actions import (
    ACTIONS,
    APPEAL_ACTIONS,
    APPROVAL_ACTIONS,
    REPORT_ACTIONS,
    RISKLIST_ACTIONS,
    role_name,
)
from fedgate.disclosure import HIT_ACTIONS, stage_name
from fedgate.envelope import MAX_BODY_BYTES, Domain, Signer, decode_request, verify_envelope
from fedgate.errors import (
    AuditUnavailable,
    DecodeError,
    Expired,
    FedgateError,
    FieldViolation,
    InProgress,
    InvalidArgument,
    PeerMismatch,
    PolicyDenied,
    Replayed,
)
from fedgate.registry import Member, Registry, cert_fingerprint
from fedgate.status import internal_error, log_unexpected, trace_id_of
from fedgate.trust import TrustHolder
from fedgate.types import KeyId, MemberId
from fedgate.v1 import envelope_pb2, gateway_service_pb2
from gateway.alerts import Alerts
from gateway.appeals import AppealBook
from gateway.audit.log import AuditLog
from gateway.pipeline._appeals import Appeals, check_appeal
from gateway.pipeline._approvals import Approvals, check_approval
from gateway.pipeline._audit_legs import AuditLegs
from gateway.pipeline._disclosure import check_details, check_wide
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._fanout import run_fan_out
from gateway.pipeline._forwarding import Forwarder
from gateway.pipeline._officers import check_officers
from gateway.pipeline._outcome import stored_outcome
from gateway.pipeline._own import OwnAnswers
from gateway.pipeline._reconcile import Reconciler
from gateway.pipeline._refunds import check_refund
from gateway.pipeline._reports import Reports
from gateway.pipeline._risklist import RiskListChanges
from gateway.pipeline._undo import check_undo
from gateway.pipeline.validation import validate_request
from gateway.policy import PolicyDecider, PolicyRequest, authorize
from gateway.quotas import QuotaStore
from gateway.replay import ReplayStore, local_outcomes
from gateway.retries import RETRIED, Claim, OutcomeStore, RecordedOutcome
from gateway.risklist import RiskListLog, check_lister
from gateway.routing import NodeRouter
from gateway.rules import BusinessRules
from gateway.telemetry import ATTR_ACTION, ATTR_PEER, ATTR_TARGET, GatewayTelemetry
from gateway.tickets import PendingRequest, Tickets

__all__ = ["PeerSource", "Pipeline"]

_log = logging.getLogger("gateway.pipeline")

PeerSource = Callable[[], tuple[MemberId, bytes]]
"""Returns the TLS peer's member id and certificate (DER); raises ``AuthenticationError``."""

_KEEP_ENVELOPE_LIMIT = MAX_BODY_BYTES + 4096
"""Envelopes larger than this are refused at decode and not copied into the log."""


class Pipeline:
    """Runs Submit through the twelve stages; also finishes answers that arrive by ticket."""

    def __init__(
        self,
        *,
        trust: TrustHolder,
        decider: PolicyDecider,
        replay: ReplayStore,
        rules: BusinessRules,
        quotas: QuotaStore,
        audit: AuditLog,
        router: NodeRouter,
        tickets: Tickets,
        alerts: Alerts,
        signer: Signer,
        gateway_id: MemberId,
        origin: str,
        clock_skew: timedelta,
        telemetry: GatewayTelemetry,
        keep_response_bodies: bool = True,
        reconcile_timeout_s: float = 5.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        risklist: RiskListLog | None = None,
        outcomes: OutcomeStore | None = None,
        appeals: AppealBook | None = None,
    ) -> None:
        self._trust = trust
        self._running: set[asyncio.Task[Any]] = set()
        """The exchanges past their request leg (``_run_to_end``): a task is held until its end."""
        self._outcomes: OutcomeStore = outcomes if outcomes is not None else local_outcomes(replay)
        self._signer = signer
        self._decider = decider
        self._replay = replay
        self._audit = audit
        self._rules = rules
        self._quotas = quotas
        self._skew = clock_skew
        self._telemetry = telemetry
        self._now = now
        self._legs = AuditLegs(
            audit=audit, telemetry=telemetry, keep_response_bodies=keep_response_bodies, now=now
        )
        self._forwarder = Forwarder(
            trust=trust,
            router=router,
            tickets=tickets,
            rules=rules,
            legs=self._legs,
            signer=signer,
            origin=origin,
            telemetry=telemetry,
            now=now,
        )
        own = OwnAnswers(
            forwarder=self._forwarder,
            legs=self._legs,
            gateway_id=gateway_id,
            origin=origin,
            telemetry=telemetry,
        )
        self._reports = Reports(own, alerts)
        self._approvals = Approvals(own)
        self._appeals = Appeals(
            own, appeals if appeals is not None else AppealBook(log=audit, now=now), now
        )
        self.reconciler = Reconciler(
            audit=audit,
            router=router,
            tickets=tickets,
            forwarder=self._forwarder,
            legs=self._legs,
            node_timeout_s=reconcile_timeout_s,
            now=now,
        )
        """Writes the missing response legs of exchanges cut off by a crash (``_reconcile``)."""
        self._risklist = None if risklist is None else RiskListChanges(own, risklist, now)
        tickets.bind(self)

    @property
    def trust(self) -> TrustHolder:
        """The process's one holder of the current registry."""
        return self._trust

    @property
    def appeals(self) -> AppealBook:
        """The appeals on record in this gateway's log (``gateway.appeals``)."""
        return self._appeals.book

    @property
    def registry(self) -> Registry:
        """The registry in force now (from the process's one ``TrustHolder``)."""
        return self._trust.registry

    async def stored_outcome(
        self, request_id: str, *, caller: MemberId
    ) -> gateway_service_pb2.GetOutcomeResponse:
        """What became of ``caller``'s request ``request_id``, from the audit log (``GetOutcome``);
        raises ``NotFound`` for an id the caller did not send."""
        return await stored_outcome(
            audit=self._audit, signer=self._signer, request_id=request_id, caller=caller
        )

    # -- the Submit path ------------------------------------------------------------------

    async def submit(
        self,
        raw: bytes | envelope_pb2.SignedEnvelope,
        *,
        peer: PeerSource,
        remaining_s: float | None,
    ) -> gateway_service_pb2.SubmitResponse:
        """Run one serialized ``SubmitRequest`` (or an envelope of a batch from ``open_batch``)
        through the pipeline. Raises ``FedgateError``."""
        x = Exchange(received_at=self._now())
        started = time.perf_counter()
        outcome = "ok"
        clock = self._telemetry.clock
        timing = clock.begin() if clock is not None else None
        # INTERNAL: the gRPC instrumentation's interceptor makes the SERVER span around it.
        with self._telemetry.span("gateway.Submit") as span:
            try:
                reply = await self._run(x, raw, peer, remaining_s, span)
                if reply.HasField("ticket"):
                    outcome = "ticket"
                return reply
            except FedgateError as error:
                outcome = error.reason
                span.set_status(trace.StatusCode.ERROR, error.reason)
                raise
            finally:
                self._telemetry.record_request(
                    time.perf_counter() - started,
                    action=x.action if x.action in ACTIONS else "unknown",
                    target=self._metric_target(x),
                    outcome=outcome,
                )
                if clock is not None and timing is not None:
                    clock.end(timing, started)

    async def _run(
        self,
        x: Exchange,
        raw: bytes | envelope_pb2.SignedEnvelope,
        peer: PeerSource,
        remaining_s: float | None,
        span: trace.Span,
    ) -> gateway_service_pb2.SubmitResponse:
        retry: Claim | None = None
        try:
            with stage(x, self._telemetry, "transport"):
                x.member = self.authenticate(peer, x)
                span.set_attribute(ATTR_PEER, x.peer)
            with stage(x, self._telemetry, "decode"):
                self._decode(x, raw)
            with stage(x, self._telemetry, "signature"):
                self._verify_signature(x)
            with stage(x, self._telemetry, "freshness"):
                retry = await self._claim(x)
                if retry is None:
                    await self._check_freshness(x)
            if retry is None:
                with stage(x, self._telemetry, "validation"):
                    validate_request(x.req(), now=x.received_at)
                    span.set_attribute(ATTR_ACTION, x.action)
                    span.set_attribute(ATTR_TARGET, x.req().target_agency)
                with stage(x, self._telemetry, "authorization"):
                    await self._authorize(x)
                with stage(x, self._telemetry, "quotas"):
                    await self._check_quotas(x)
        except FedgateError as error:
            raise await self._refuse(x, error) from None
        except asyncio.CancelledError:
            self._record_later(x, Expired("its caller went away before it was logged; not run"))
            raise
        except Exception as exc:  # a bug must still fail closed, and be logged as a refusal
            trace_id = trace_id_of()
            log_unexpected(f"pipeline stage {x.stage}", trace_id)
            raise await self._refuse(x, internal_error(trace_id, stage=x.stage)) from exc
        if retry is not None:
            return await self._answer_retry(x, retry)
        # From here on the exchange runs to its end even if the caller goes away: a node that
        # executed an order must have its answer (or its silence) in the log, and a caller
        # whose deadline passed while the request leg was written retries it (safe retries).
        # Its own task, whose outcome comes back through ``answer``: a cancelled caller cancels
        # only ``answer``. (Cheaper than ``shield``: one wake-up of the caller instead of four
        # callbacks, counted on the pipeline bench.)
        answer: asyncio.Future[gateway_service_pb2.SubmitResponse] = (
            asyncio.get_running_loop().create_future()
        )
        asyncio.get_running_loop().create_task(self._run_to_end(x, remaining_s, answer))
        return await answer

    async def _run_to_end(
        self,
        x: Exchange,
        remaining_s: float | None,
        answer: asyncio.Future[gateway_service_pb2.SubmitResponse],
    ) -> None:
        """Stages 8–12 of ``x`` to their end, the outcome into ``answer`` unless its caller has
        gone (then an error is only logged). Holds its own task until it ends."""
        task = asyncio.current_task()
        assert task is not None, "run as a task"
        self._running.add(task)
        try:
            reply = await self._log_and_run(x, remaining_s)
        except asyncio.CancelledError:  # the gateway is stopping
            answer.cancel()
            raise
        except Exception as exc:
            if answer.cancelled():
                _log.info("exchange finished after its caller left: %s", exc)
            else:
                answer.set_exception(exc)
        else:
            if not answer.cancelled():
                answer.set_result(reply)
        finally:
            self._running.discard(task)

    async def _log_and_run(
        self, x: Exchange, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        try:
            with stage(x, self._telemetry, "audit_request"):
                x.request_entry = x.request_leg(decision="allowed", rule=x.rule)
                x.request_receipt = await self._legs.append(x.request_entry, "request")
        except FedgateError as error:  # nothing was forwarded: that is the outcome
            await self._record(x, RecordedOutcome(error=error))
            raise
        return await self._after_request_leg(x, remaining_s)

    async def _after_request_leg(
        self, x: Exchange, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        try:
            reply = await self._exchange(x, remaining_s)
        except FedgateError as error:
            await self._record(x, RecordedOutcome(error=error))
            raise
        await self._record(x, RecordedOutcome(reply=reply))
        return reply

    async def _exchange(
        self, x: Exchange, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        try:
            if x.action in REPORT_ACTIONS:
                return await self._reports.deliver(x)
            if x.action in APPROVAL_ACTIONS:
                return await self._approvals.grant(x)
            if x.action in APPEAL_ACTIONS:
                return await self._appeals.answer(x)
            if x.action in RISKLIST_ACTIONS:
                assert self._risklist is not None, "refused at stage 6 without a risk list"
                return await self._risklist.apply(x)
            return await self._forwarder.forward(x, remaining_s)
        except FedgateError:
            raise
        except Exception as exc:  # a bug after the request leg: INTERNAL, and its leg
            trace_id = trace_id_of()
            log_unexpected(f"pipeline stage {x.stage}", trace_id)
            error = internal_error(trace_id, stage=x.stage)
            raise await self._legs.gateway_fault(x, error) from exc

    async def open_batch(
        self, raw: bytes, *, peer: PeerSource, max_envelopes: int
    ) -> list[envelope_pb2.SignedEnvelope]:
        """Stages 1–2 for a serialized ``SubmitBatchRequest``: its envelopes, each to go through
        ``submit``. A refusal (``AuthenticationError``, ``MemberRefused``, ``DecodeError``,
        ``InvalidArgument`` for a count outside 1 to ``max_envelopes``) is logged as a request
        leg first, as for ``submit``."""
        x = Exchange(received_at=self._now())
        try:
            with stage(x, self._telemetry, "transport"):
                x.member = self.authenticate(peer, x)
            with stage(x, self._telemetry, "decode"):
                try:
                    batch = gateway_service_pb2.SubmitBatchRequest.FromString(raw)
                except ProtobufDecodeError as exc:
                    x.envelope_bytes = raw if len(raw) <= _KEEP_ENVELOPE_LIMIT else b""
                    raise DecodeError(
                        "the message is not a well-formed SubmitBatchRequest"
                    ) from exc
                if not 1 <= len(batch.envelopes) <= max_envelopes:
                    raise InvalidArgument(
                        f"a batch holds 1 to {max_envelopes} envelopes, got {len(batch.envelopes)}"
                    )
        except FedgateError as error:
            raise await self._legs.refuse(x, error) from None
        return list(batch.envelopes)

    def fan_out(
        self, raw: bytes, *, peer: PeerSource, remaining_s: float | None
    ) -> AsyncIterator[gateway_service_pb2.FanOutResponse]:
        """Run a serialized ``FanOutRequest`` (``gateway.pipeline._fanout``): one item per
        member as it completes. Raises ``FedgateError`` (logged) when wholly refused."""
        return run_fan_out(self, raw, peer=peer, remaining_s=remaining_s)

    def _metric_target(self, x: Exchange) -> str:
        target = x.request.target_agency if x.request is not None else ""
        return target if target and self.registry.find(target) is not None else "unknown"

    # stage 1
    def authenticate(self, peer: PeerSource, x: Exchange | None = None) -> Member:
        """The calling member from its TLS certificate, if the registry lists that certificate
        and the member is in good standing; raises ``AuthenticationError``/``MemberRefused``."""
        member_id, cert_der = peer()
        if x is not None:
            x.peer = member_id
            x.cert_sha256 = cert_fingerprint(cert_der)
        return self.registry.check_certificate(member_id, cert_der)

    # stage 2
    def _decode(self, x: Exchange, raw: bytes | envelope_pb2.SignedEnvelope) -> None:
        if isinstance(raw, envelope_pb2.SignedEnvelope):
            envelope = raw  # from ``open_batch``: parsed once, with its batch
        else:
            try:
                submit = gateway_service_pb2.SubmitRequest.FromString(raw)
            except ProtobufDecodeError as exc:
                # Keep what arrived (bounded) so the refusal can be examined.
                x.envelope_bytes = raw if len(raw) <= _KEEP_ENVELOPE_LIMIT else b""
                raise DecodeError("the message is not a well-formed SubmitRequest") from exc
            if not submit.HasField("envelope"):
                raise InvalidArgument.for_fields(
                    [FieldViolation("envelope", "required: the signed request")]
                )
            envelope = submit.envelope
        x.envelope = envelope
        size = len(envelope.body)
        if size > MAX_BODY_BYTES:
            digest = hashlib.sha256(envelope.body).hexdigest()
            raise DecodeError(
                f"Request body is {size} bytes; the limit is {MAX_BODY_BYTES} "
                f"(body sha256 {digest}, not kept in the log)"
            )
        x.envelope_bytes = envelope.SerializeToString()
        x.request = decode_request(envelope.body)
        action = x.request.WhichOneof("action")
        x.action = action or ""
        missing = [
            FieldViolation(name, "required")
            for name, present in (
                ("request_id", bool(x.request.request_id)),
                ("issued_at", x.request.HasField("issued_at")),
                ("nonce", bool(x.request.nonce)),
                ("action", action is not None),
            )
            if not present
        ]
        if missing:
            raise InvalidArgument.for_fields(missing)
        try:
            x.issued_at = x.request.issued_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:  # out of range; stages 3 and 4 need a time
            raise InvalidArgument.for_fields(
                [FieldViolation("issued_at", "not a valid timestamp")]
            ) from exc

    # stage 3
    def _verify_signature(self, x: Exchange) -> None:
        request, envelope = x.req(), x.envelope
        assert envelope is not None
        owner, key = self.registry.signing_key(KeyId(envelope.key_id), at=x.issued())
        if owner.id != x.peer:
            raise PeerMismatch(
                f"the request is signed with a key of {owner.id}, but the TLS peer is {x.peer}"
            )
        verify_envelope(envelope, key, Domain.REQUEST)
        if request.requesting_agency != x.peer:
            raise PeerMismatch(
                f"requesting_agency is {request.requesting_agency!r}, but the request was "
                f"signed and sent by {x.peer}"
            )

    # stage 4: safe retries (``gateway.retries``)
    async def _claim(self, x: Exchange) -> Claim | None:
        """The first attempt's claim when ``x`` is a retry of the same signed request; ``None``
        when ``x`` claimed the request id (or another request holds it: the replay cache
        refuses that one). Raises ``Stale`` before claiming anything."""
        request, issued_at, envelope = x.req(), x.issued(), x.envelope
        assert envelope is not None
        self._replay.check_freshness(issued_at, now=x.received_at, skew=self._skew)
        x.body_sha256 = hashlib.sha256(envelope.body).digest()
        claim = await self._outcomes.claim(
            request.request_id,
            x.body_sha256,
            expires_us=_us(issued_at + self._replay.window),
            now_us=_us(x.received_at),
        )
        if claim is None:
            x.claimed = True
            return None
        return claim if claim.body_sha256 == x.body_sha256 else None

    async def _answer_retry(self, x: Exchange, claim: Claim) -> gateway_service_pb2.SubmitResponse:
        """Answer a retry from its first attempt: the recorded reply or error, or ``InProgress``;
        logged as a request leg refused to run again."""
        outcome = await self._retried_outcome(x, claim, fan_out=False)
        if outcome.reply is not None:
            return outcome.reply
        assert outcome.error is not None
        raise outcome.error

    async def _retried_outcome(
        self, x: Exchange, claim: Claim, *, fan_out: bool
    ) -> RecordedOutcome:
        """The first attempt's recorded outcome for the retry ``x`` (a ``Submit``, or a
        ``FanOut`` with ``fan_out``), with the retry logged as a request leg refused to run
        again. Raises (logged) ``InProgress`` while the first attempt runs, ``Replayed`` when the
        record is of the other kind of call (the same body sent through the other RPC)."""
        request_id = x.req().request_id
        outcome = claim.outcome
        if outcome is None:
            raise await self._legs.refuse(
                x,
                InProgress(
                    f"request {request_id} is a retry; the gateway is still running the first "
                    "attempt, whose outcome it will give: ask again"
                ),
            )
        if outcome.error is None and (outcome.fan_out is not None) != fan_out:
            raise await self._legs.refuse(
                x,
                Replayed(
                    f"request id {request_id} was already used by a "
                    f"{'Submit' if fan_out else 'FanOut'} call"
                ),
            )
        given = "its answer" if outcome.error is None else outcome.error.reason
        leg = x.request_leg(
            decision="refused",
            rule=f"{RETRIED}: request {request_id} sent again; given the recorded outcome of "
            f"the first attempt ({given}), nothing run again",
        )
        await self._legs.append(leg, "request")
        return outcome

    async def _refuse(self, x: Exchange, error: FedgateError) -> FedgateError:
        """Log the refusal (``AuditLegs.refuse``) and record it as the request's outcome."""
        final = await self._legs.refuse(x, error)
        await self._record(x, RecordedOutcome(error=final))
        return final

    async def _record(self, x: Exchange, outcome: RecordedOutcome) -> None:
        """Record ``x``'s outcome if it claimed its id. A store that fails leaves the claim in
        progress until it expires: its retries are told ``IN_PROGRESS``, never run again."""
        if not x.claimed:
            return
        x.claimed = False
        try:
            await self._outcomes.record(x.req().request_id, outcome)
        except AuditUnavailable as exc:
            _log.warning("outcome of a request not recorded for its retries: %s", exc)

    def _record_later(self, x: Exchange, error: FedgateError) -> None:
        """``_record`` for an exchange whose caller cancelled it (cannot await any more)."""
        if x.claimed:
            task = asyncio.ensure_future(self._record(x, RecordedOutcome(error=error)))
            task.add_done_callback(_retrieve)

    # stage 4
    async def _check_freshness(self, x: Exchange) -> None:
        request, issued_at = x.req(), x.issued()
        self._replay.check_freshness(issued_at, now=x.received_at, skew=self._skew)
        # The cache fsyncs before it returns, off the event loop, one job per batch of requests.
        await self._replay.remember(request.request_id, request.nonce, issued_at, now=x.received_at)

    # stage 6
    async def _authorize(self, x: Exchange, *, wide: bool = False) -> None:
        """Stage 6; ``wide`` for one member's copy of a fan-out (a wide query)."""
        request, member = x.req(), x.member
        assert member is not None
        trust = self._trust.trust  # one registry and roster snapshot for the whole decision
        registry = trust.registry
        role = role_name(request.officer.role)
        if role not in member.roles:
            raise PolicyDenied(f"role {role} is not granted to member {member.id} in the registry")
        # A police member's officers must be on its signed roster, with the role they assert.
        check_officers(trust, member, request, at=x.received_at)
        target = registry.find(request.target_agency)
        asked = PolicyRequest(
            role=role,
            member=member.id,
            member_kind=member.kind.value,
            action=x.action,
            target=MemberId(request.target_agency),
            target_kind=target.kind.value if target is not None else "",
        )
        decision = authorize(self._decider, asked)
        # Policy decides which wide queries must be staged (hits first, then details).
        staged = request.HasField("disclosure")
        wide_rule = None
        if wide and x.action in HIT_ACTIONS and not staged:
            wide_rule = check_wide(self._decider, asked).rule
        registry.member(request.target_agency)  # the target must be in good standing
        self._rules.check(request, action=x.action, now=x.received_at)
        # Only the ordering unit (or a member above it) may undo an order, found in the log.
        await check_undo(self._audit, registry, request, x.action)
        # A refund draws on a freeze in the log, by its ordering unit, within what it froze.
        await check_refund(self._audit, registry, self._rules, request, x.action)
        # An appeal cites its agency's own restriction; a decision is the ordering unit's.
        await check_appeal(self._audit, self._appeals.book, registry, request, x.action)
        # Details of a staged disclosure only from a member that answered the cited stage 1 "hit".
        await check_details(self._audit, request, x.action)
        # A bulk order cites a supervisor's approval exchange, found in the log.
        why = self._rules.approval_needed(request, action=x.action)
        if why is not None:
            await check_approval(
                self._audit, registry, request, action=x.action, why=why, now=x.received_at
            )
        x.rule = ", ".join(decision.rule) if decision.rule else decision.explanation
        if wide_rule:
            x.rule += f"; {', '.join(wide_rule)}"
        if staged:
            x.rule += f"; disclosure {stage_name(request.disclosure.stage)}"
            if request.disclosure.hits_request_id:
                x.rule += f" citing {request.disclosure.hits_request_id}"
        if x.action in RISKLIST_ACTIONS:
            if self._risklist is None:  # fail closed: nowhere to log the change
                raise PolicyDenied("this gateway keeps no risk list")
            x.rule += f"; {check_lister(request, member)}"

    # stage 7
    async def _check_quotas(self, x: Exchange) -> None:
        request = x.req()
        await self._quotas.take(
            member=x.peer, officer_id=request.officer.id, action=x.action, urgency=request.urgency
        )

    # stages 10–12 for answers fetched by ticket (``AnswerFinisher``)
    async def finish(
        self, pending: PendingRequest, answer: envelope_pb2.SignedEnvelope
    ) -> tuple[envelope_pb2.SignedResponse, str]:
        """``AnswerFinisher.finish`` for tickets."""
        with self._telemetry.span("gateway.TicketAnswer", attributes={ATTR_TARGET: pending.target}):
            return await self._forwarder.finish(pending, answer, responder=pending.target)

    async def record_expiry(self, pending: PendingRequest, *, detail: str) -> None:
        """``AnswerFinisher.record_expiry`` for tickets."""
        await self._legs.record_expiry(pending, detail=detail)

    async def record_refused_read(
        self, *, ticket_id: str, caller: MemberId, owner: MemberId | None
    ) -> None:
        """``AnswerFinisher.record_refused_read`` for tickets."""
        await self._legs.record_refused_ticket_read(ticket_id=ticket_id, caller=caller, owner=owner)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of an exchange whose caller went away (no unretrieved errors)."""
    if not task.cancelled() and task.exception() is not None:
        _log.info("exchange finished after its caller left: %s", task.exception())
