"""``RiskListService``: members follow the risk list's log, batch by verifiable batch.

``Follow(from_index)`` sends the changes after the follower's size in batches, each with the
signed checkpoint at its end and the consistency proof from the follower's size; once the
follower holds everything, one empty batch with the current checkpoint says so; then new changes
are sent as they are committed. Any member in good standing (mTLS certificate
in the registry) may follow: the list is shared with the whole federation; a member revoked while
following is cut off before its next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from fedgate.errors import FedgateError, InvalidArgument
from fedgate.registry import Member
from fedgate.status import abort_with
from fedgate.tls import peer_member_id
from fedgate.types import MemberId
from fedgate.v1 import risklist_pb2, risklist_pb2_grpc
from gateway.risklist._log import RiskListLog

__all__ = ["DEFAULT_BATCH", "MAX_BATCH", "SERVICE_NAME", "RiskListServicer"]

SERVICE_NAME = risklist_pb2.DESCRIPTOR.services_by_name["RiskListService"].full_name
DEFAULT_BATCH = 1000
MAX_BATCH = 10_000

Authenticate = Callable[[Callable[[], tuple[MemberId, bytes]]], Member]


class RiskListServicer(risklist_pb2_grpc.RiskListServiceServicer):
    """Follow and GetRiskCheckpoint over one ``RiskListLog``."""

    def __init__(self, *, log: RiskListLog, authenticate: Authenticate) -> None:
        self._log = log
        self._authenticate = authenticate

    async def Follow(
        self,
        request: risklist_pb2.FollowRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[risklist_pb2.FollowResponse]:
        try:
            self._authenticate(lambda: peer_member_id(context))
            if request.from_index > self._log.size:
                raise InvalidArgument(
                    f"from_index {request.from_index} is beyond the list's {self._log.size} "
                    "changes: the follower holds a list this gateway never had"
                )
        except FedgateError as error:
            await abort_with(context, error)
        size = request.from_index
        count = min(request.max_batch or DEFAULT_BATCH, MAX_BATCH)
        told_synced = False
        while True:
            if size >= self._log.size:
                if not told_synced:
                    # One empty batch with the current checkpoint: "you hold all there is".
                    told_synced = True
                    try:
                        _, note = await asyncio.to_thread(self._log.read, size, size)
                    except FedgateError as error:
                        await abort_with(context, error)
                    yield risklist_pb2.FollowResponse(first_index=size, checkpoint=note)
                    continue
                await self._log.wait_beyond(size)
            stop = min(self._log.size, size + count)
            proof = self._log.consistency_proof(size, stop)
            try:
                # A member revoked while following gets nothing more (the registry in force).
                self._authenticate(lambda: peer_member_id(context))
                leaves, note = await asyncio.to_thread(self._log.read, size, stop)
            except FedgateError as error:
                await abort_with(context, error)
            yield risklist_pb2.FollowResponse(
                first_index=size, changes=leaves, checkpoint=note, consistency_proof=proof
            )
            size += len(leaves)

    async def GetRiskCheckpoint(
        self,
        request: risklist_pb2.GetRiskCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> risklist_pb2.GetRiskCheckpointResponse:
        try:
            self._authenticate(lambda: peer_member_id(context))
        except FedgateError as error:
            await abort_with(context, error)
        return risklist_pb2.GetRiskCheckpointResponse(checkpoint=self._log.latest_checkpoint())
