"""Following the gateway's risk list: ``RiskListService.Follow`` over mTLS into a ``Replica``.

The follower asks for the changes after the replica's size, verifies and applies each batch
(``Replica.apply``, on a worker thread), and reconnects with a growing pause when the gateway is
unreachable, so a member that was offline catches up from where it stopped. A batch that fails
verification is refused and nothing of it is applied; the refusal is kept in ``last_refusal``
and logged, and the follower asks again later (the replica refuses anything that does not
verify, however often it is offered). A checkpoint without the witness cosignatures the
replica requires (``NotCosigned``) is not a refusal: the follower asks again shortly, by which
time the gateway serves the cosigned checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
import grpc.aio

from adapters.risklist.replica import Replica
from fedgate.errors import FedgateError, NotCosigned
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import risklist_pb2, risklist_pb2_grpc

__all__ = ["Follower"]

_log = logging.getLogger("adapters.risklist")
GATEWAY = MemberId("gateway")


class Follower:
    """Keeps ``replica`` up to date with the gateway at ``endpoint``. ``start``, then ``stop``."""

    def __init__(
        self,
        *,
        replica: Replica,
        endpoint: str | Callable[[], str],
        credentials: MemberCredentials,
        gateway_id: MemberId = GATEWAY,
        max_batch: int = 1000,
        retry_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.replica = replica
        self._endpoint = endpoint if callable(endpoint) else (lambda: endpoint)
        self._credentials = credentials
        self._gateway_id = gateway_id
        self._max_batch = max_batch
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._applied = asyncio.Condition()
        self.synced = asyncio.Event()
        """Set once the gateway has said the replica holds the whole list (and stays set)."""
        self.last_refusal: str | None = None
        self.waiting_for_witnesses: str | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for_size(self, size: int, timeout: float) -> None:
        """Return once the replica holds ``size`` changes; ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout), self._applied:
            await self._applied.wait_for(lambda: self.replica.size >= size)

    async def _run(self) -> None:
        pause = self._retry_s[0]
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except NotCosigned:
                await asyncio.sleep(self._retry_s[0])
                pause = self._retry_s[0]
                continue
            except FedgateError as exc:
                self.last_error = exc.message
                _log.warning("risk list: following the gateway failed: %s", exc.message)
            except Exception as exc:  # keep following; never let one bad batch end the task
                self.last_error = repr(exc)
                _log.exception("risk list: following the gateway failed")
            await asyncio.sleep(pause)
            pause = min(self._retry_s[1], pause * 2)

    async def _follow(self) -> None:
        async with grpc.aio.secure_channel(
            self._endpoint(),
            channel_credentials(self._credentials),
            options=channel_options(self._gateway_id),
        ) as channel:
            stub = risklist_pb2_grpc.RiskListServiceStub(channel)
            call = stub.Follow(
                risklist_pb2.FollowRequest(from_index=self.replica.size, max_batch=self._max_batch)
            )
            try:
                async for batch in call:
                    await self._apply(batch)
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc) from exc

    async def _apply(self, batch: risklist_pb2.FollowResponse) -> None:
        try:
            await asyncio.to_thread(
                self.replica.apply,
                first_index=batch.first_index,
                leaves=list(batch.changes),
                checkpoint=batch.checkpoint,
                consistency_proof=list(batch.consistency_proof),
            )
        except NotCosigned as exc:
            # Not an attack: the witnesses have not cosigned yet. Ask again shortly.
            self.waiting_for_witnesses = exc.message
            raise
        except FedgateError as exc:
            self.last_refusal = exc.message
            _log.error("risk list: batch from %d refused: %s", batch.first_index, exc.message)
            raise
        self.waiting_for_witnesses = None
        self.last_error = None
        if not batch.changes:
            self.synced.set()
        async with self._applied:
            self._applied.notify_all()
