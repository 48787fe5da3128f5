"""Fan-out: one signed request to a set of members, answers streamed as they arrive.

The request's ``target_set`` (signed with it) names the members; ``fedgate.fanout`` resolves it
against the registry. Stages 1–4 run once (transport, decode, signature, freshness); stages 5–7
(validation, authorization, quotas) run once per member, on a copy of the request addressed to
that member alone, so every member-specific rule applies exactly as for a single request (and,
being a wide query, the policy's staged-disclosure rule: ``_disclosure.check_wide``). One
request leg records the whole fan-out (the signed envelope as received) and, in its rule, the
decision for every member. Each allowed member is then asked in parallel through the same
stages 9–12 as a single request: its answer is checked, logged as its own response leg,
countersigned and receipted. (A part of the ``Pipeline``: it runs the pipeline's own stages.)

Contract:

- The request leg MUST be durable before any member is asked; if every member is refused, the
  request leg is a refusal and the caller gets the first member's error.
- Every allowed member MUST end in exactly one streamed item and one response leg: its answer,
  a ticket, an error (a faulty answer), or ``no_answer`` when it was silent or unreachable by
  the deadline; once stages 1–7 have passed, the request leg and the exchanges run to their end
  even if the caller goes away.
- Safe retries (``gateway.retries``): the fan-out claims its request id at stage 4 like a single
  request. Once every member has ended, the items streamed (the refused members' first, then
  in the order they were streamed) MUST be recorded as its outcome, before the stream ends; a
  wholly refused fan-out records its error. A retry of the same signed request (on any
  instance sharing the outcomes) gets those items, byte for byte, or ``IN_PROGRESS`` until they
  are recorded, and nothing is asked again; another request with the id stays refused
  (``REPLAYED``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry import trace

from fedgate.errors import (
    AgencyUnavailable,
    DecodeError,
    Expired,
    FedgateError,
    FieldViolation,
    InvalidArgument,
)
from fedgate.fanout import resolve_targets
from fedgate.status import error_detail
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, request_pb2
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline.validation import validate_request
from gateway.retries import Claim, RecordedOutcome

if TYPE_CHECKING:
    from gateway.pipeline._stages import PeerSource, Pipeline

__all__ = ["run_fan_out"]

_log = logging.getLogger("gateway.pipeline")

FanOutResponse = gateway_service_pb2.FanOutResponse


def _addressed(request: request_pb2.Request, target: MemberId) -> request_pb2.Request:
    """The request as if sent to ``target`` alone (for the per-member stages only: the signed
    bytes, which name the whole set, are what is logged and forwarded)."""
    one = request_pb2.Request()
    one.CopyFrom(request)
    one.ClearField("target_set")
    one.target_agency = target
    return one


async def run_fan_out(
    pipeline: Pipeline, raw: bytes, *, peer: PeerSource, remaining_s: float | None
) -> AsyncIterator[FanOutResponse]:
    """Run a serialized ``FanOutRequest``; yields one item per member. Raises ``FedgateError``
    (logged as a refused request leg) when the request as a whole is refused. A retry of the
    same signed request yields the first attempt's items (``gateway.retries``)."""
    x = Exchange(received_at=pipeline._now())
    telemetry = pipeline._telemetry
    started = time.perf_counter()
    outcome = "ok"
    with telemetry.span("gateway.FanOut", kind=trace.SpanKind.SERVER) as span:
        try:
            admitted = await _admit(pipeline, x, raw, peer)
            if isinstance(admitted, Claim):
                recorded = await pipeline._retried_outcome(x, admitted, fan_out=True)
                if recorded.error is not None:
                    raise recorded.error
                assert recorded.fan_out is not None
                first: tuple[FanOutResponse, ...] | None = recorded.fan_out
            else:
                first = None
                refused, allowed = admitted
        except FedgateError as error:
            outcome = error.reason
            span.set_status(trace.StatusCode.ERROR, error.reason)
            raise
        finally:
            telemetry.record_request(
                time.perf_counter() - started, action=x.action or "unknown", target="fanout",
                outcome=outcome,
            )  # fmt: skip
    if first is not None:
        for item in first:
            yield item
        return
    # From here on the fan-out runs to its end even if the caller goes away (as a Submit
    # does): a member that answered must have its answer (or its silence) in the log, and the
    # items are recorded for retries once every member has ended (until then: IN_PROGRESS).
    results: asyncio.Queue[FanOutResponse | FedgateError] = asyncio.Queue()
    rest = asyncio.ensure_future(_log_and_ask(pipeline, x, refused, allowed, results, remaining_s))
    rest.add_done_callback(_retrieve)
    for _ in range(len(refused) + len(allowed)):
        got = await results.get()
        if isinstance(got, FedgateError):
            raise got
        yield got
    # The stream ends once the outcome is recorded: a retry sent after it gets the items.
    await asyncio.shield(rest)


async def _log_and_ask(
    pipeline: Pipeline,
    x: Exchange,
    refused: list[tuple[MemberId, FedgateError]],
    allowed: list[Exchange],
    results: asyncio.Queue[FanOutResponse | FedgateError],
    remaining_s: float | None,
) -> None:
    """Stage 8 (the one request leg), then every allowed member asked in parallel; each item
    (or the error that ends the fan-out) is put in ``results``; the outcome is recorded."""
    try:
        with stage(x, pipeline._telemetry, "audit_request"):
            x.request_entry = x.request_leg(decision="allowed", rule=x.rule)
            x.request_receipt = await pipeline._legs.append(x.request_entry, "request")
    except FedgateError as error:  # nothing was asked: that is the outcome
        await pipeline._record(x, RecordedOutcome(error=error))
        await results.put(error)
        return
    request_id = x.req().request_id
    streamed: list[FanOutResponse] = []
    for target, why in refused:
        item = FanOutResponse(request_id=request_id, target_agency=target, error=error_detail(why))
        streamed.append(item)
        await results.put(item)
    timeout = pipeline._forwarder.node_timeout(remaining_s)

    async def one(xt: Exchange) -> None:
        target = xt.req().target_agency
        out = FanOutResponse(request_id=request_id, target_agency=target)
        try:
            reply = await pipeline._forwarder.forward(xt, remaining_s)
            if reply.HasField("ticket"):
                out.ticket.CopyFrom(reply.ticket)
            else:
                out.response.CopyFrom(reply.response)
        except AgencyUnavailable as error:
            out.no_answer.detail = (
                f"no answer from {target} by the deadline ({timeout:.1f} s): {error.message}"
            )
        except FedgateError as error:
            out.error.CopyFrom(error_detail(error))
        except Exception:  # a bug must still end this member's item, and fail closed
            _log.exception("fan-out to %s failed", target)
            out.error.CopyFrom(error_detail(FedgateError(f"internal error asking {target}")))
        streamed.append(out)
        await results.put(out)

    members = [
        replace(xt, request_entry=x.request_entry, request_receipt=x.request_receipt)
        for xt in allowed
    ]
    await asyncio.gather(*(one(xt) for xt in members))
    await pipeline._record(x, RecordedOutcome(fan_out=tuple(streamed)))


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("recording a fan-out's outcome failed: %s", task.exception())


async def _admit(
    pipeline: Pipeline, x: Exchange, raw: bytes, peer: PeerSource
) -> tuple[list[tuple[MemberId, FedgateError]], list[Exchange]] | Claim:
    """Stages 1–7: the members refused (with why) and an exchange per member allowed (the
    request leg is ``_log_and_ask``'s). A retry of the same signed request stops at stage 4 and
    returns the first attempt's claim instead."""
    telemetry = pipeline._telemetry
    refused: list[tuple[MemberId, FedgateError]] = []
    allowed: list[Exchange] = []
    try:
        with stage(x, telemetry, "transport"):
            x.member = pipeline.authenticate(peer, x)
        with stage(x, telemetry, "decode"):
            try:
                fan = gateway_service_pb2.FanOutRequest.FromString(raw)
            except ProtobufDecodeError as exc:
                raise DecodeError("the message is not a well-formed FanOutRequest") from exc
            if not fan.HasField("envelope"):
                raise InvalidArgument.for_fields(
                    [FieldViolation("envelope", "required: the signed request")]
                )
            pipeline._decode(x, fan.envelope)
        with stage(x, telemetry, "signature"):
            pipeline._verify_signature(x)
        with stage(x, telemetry, "freshness"):
            retry = await pipeline._claim(x)
            if retry is not None:
                return retry
            await pipeline._check_freshness(x)
        with stage(x, telemetry, "validation"):
            targets = resolve_targets(x.req(), pipeline.registry)
        for target in targets:
            # Each member's copy runs stages 5-7 only; the whole fan-out's outcome is recorded
            # once, by this exchange.
            xt = replace(x, request=_addressed(x.req(), target), claimed=False)
            try:
                with stage(xt, telemetry, "validation"):
                    validate_request(xt.req(), now=x.received_at)
                with stage(xt, telemetry, "authorization"):
                    await pipeline._authorize(xt, wide=True)
                with stage(xt, telemetry, "quotas"):
                    await pipeline._check_quotas(xt)
            except FedgateError as error:
                telemetry.record_refusal(reason=error.reason, stage=xt.stage)
                refused.append((target, error))
                continue
            allowed.append(xt)
        if not allowed:
            x.stage = "authorization"
            raise refused[0][1]  # every member refused: the first one's reason is the answer
        decisions = [f"{xt.req().target_agency}: {xt.rule}" for xt in allowed] + [
            f"{t} refused ({e.reason}: {e.message})" for t, e in refused
        ]
        x.rule = "fan-out; " + "; ".join(decisions)
    except FedgateError as error:
        raise await pipeline._refuse(x, error) from None
    except asyncio.CancelledError:
        pipeline._record_later(x, Expired("its caller went away before it was logged; not run"))
        raise
    except Exception as exc:  # a bug must still fail closed, and be logged as a refusal
        _log.exception("unexpected error at fan-out stage %s", x.stage)
        internal = FedgateError(f"internal error at stage {x.stage}")
        raise await pipeline._refuse(x, internal) from exc
    return refused, allowed
