"""A witness node: the central bank's branch or the audit office cosigning the gateway's log.

    python -m adapters.witness --federation DIR --member pboc.gz --state DIR

The node serves ``WitnessService`` (plus health and reflection) on the member's registry
endpoint over mTLS, and answers only the gateway's certificate. It knows each log by its origin
and checks checkpoints with the gateway members' keys from the registry under that origin, as
auditors do (``fedgate.evidence.log_verifiers``). Its state (the last checkpoint it cosigned per
origin) lives in ``<state>/witness.json``; see ``fedgate.witness`` for the contract.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapters.staff import require_peer
from fedgate.checkpoint import parse_checkpoint
from fedgate.errors import FedgateError, InvalidArgument, VerificationError
from fedgate.evidence import log_verifiers
from fedgate.logs import configure_logging
from fedgate.note import parse_note
from fedgate.registry import REGISTRY_FILE, Registry
from fedgate.status import ErrorInterceptor, abort_with
from fedgate.tileclient import Fetch, http_fetcher
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.trust import TrustHolder
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc
from fedgate.witness import Witness, WitnessServicer

__all__ = ["WITNESS_ROLE", "WitnessNode", "main"]

WITNESS_ROLE = "witness"
GATEWAY = MemberId("gateway")
_log = logging.getLogger("fedgate.witness")


class _GatewayOnly(WitnessServicer):
    """``WitnessServicer`` that refuses every caller but the gateway's registered certificate.

    For a log whose C2SP tiles it can fetch (``tiles``: origin to fetcher), it ignores the
    consistency proof the gateway pushes and computes its own from the tiles."""

    def __init__(
        self, witness: Witness, trust: TrustHolder, tiles: Mapping[str, Fetch] | None = None
    ) -> None:
        super().__init__(witness)
        self._trust = trust
        self._tiles = dict(tiles or {})

    async def AddCheckpoint(
        self,
        request: audit_service_pb2.AddCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.AddCheckpointResponse:
        try:
            require_peer(context, self._trust.registry, GATEWAY)
        except FedgateError as exc:
            await abort_with(context, exc)
        fetch = self._tiles.get(_origin_of(request.checkpoint))
        if fetch is None:
            return await super().AddCheckpoint(request, context)
        try:
            sig = await asyncio.to_thread(
                self._witness.add_checkpoint_from_tiles_sync, request.checkpoint, fetch
            )
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.AddCheckpointResponse(cosignature=sig.line().rstrip("\n"))


def _origin_of(note: str) -> str:
    try:
        return parse_checkpoint(parse_note(note).text).origin
    except VerificationError:
        return ""  # not a checkpoint: the plain path refuses it with the reason


class WitnessNode:
    """A running witness: ``start``, then ``stop``."""

    def __init__(
        self,
        *,
        federation: Path,
        member: MemberId,
        state: Path,
        origins: Sequence[str],
        listen: str | None = None,
        tiles: Mapping[str, str] | None = None,
        reload_interval_s: float = 2.0,
    ) -> None:
        """``tiles`` maps an origin to the URL prefix of its C2SP tiles (``audit.tiles_listen``
        of the gateway): checkpoints of that log are then checked from its tiles."""
        self._federation = federation
        self._trust = TrustHolder(Registry.load_dir(federation))
        self._reload_interval_s = reload_interval_s
        self._reload_task: asyncio.Task[None] | None = None
        record = self.registry.member(member)
        if WITNESS_ROLE not in record.roles:
            raise InvalidArgument(f"{member} does not hold the witness role in the registry")
        self.member = member
        self.credentials = MemberCredentials.load(federation, member)
        state.mkdir(parents=True, exist_ok=True)
        logs = {}
        for origin in origins:
            verifiers = log_verifiers(self.registry, origin)
            if not verifiers:
                raise InvalidArgument("the registry lists no gateway key to check the log with")
            logs[origin] = verifiers[-1]
        self.witness = Witness(
            name=member,
            private_key=self.credentials.signing_key,
            state_path=state / "witness.json",
            logs=logs,
        )
        self.listen = listen or record.endpoint
        unknown = sorted(set(tiles or {}) - set(origins))
        if unknown:
            raise InvalidArgument(f"--tiles names origins not witnessed: {', '.join(unknown)}")
        self.tiles = {o: http_fetcher(url) for o, url in (tiles or {}).items()}
        self._server: grpc.aio.Server | None = None

    @property
    def registry(self) -> Registry:
        """The registry in force now (reloaded when ``registry.json`` changes)."""
        return self._trust.registry

    def reload_registry(self) -> bool:
        """Load ``registry.json`` again (a revoked gateway certificate is refused at once);
        keeps the current one if the file does not verify or is older."""
        return self._trust.reload(self._federation)

    async def _watch_registry(self) -> None:
        path = self._federation / REGISTRY_FILE
        stamp = _stamp(path)
        while True:
            await asyncio.sleep(self._reload_interval_s)
            current = _stamp(path)
            if current != stamp:
                stamp = current
                await asyncio.to_thread(self.reload_registry)

    async def start(self) -> None:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        audit_service_pb2_grpc.add_WitnessServiceServicer_to_server(
            _GatewayOnly(self.witness, self._trust, self.tiles), server
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        names = (
            audit_service_pb2.DESCRIPTOR.services_by_name["WitnessService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        server.add_secure_port(self.listen, server_credentials(self.credentials))
        await server.start()
        self._server = server
        if self._reload_interval_s > 0:
            self._reload_task = asyncio.create_task(self._watch_registry())
        _log.info("witness %s serving on %s", self.member, self.listen)

    async def stop(self, grace: float = 2.0) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
            self._reload_task = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1, -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def _serve(node: WitnessNode) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await node.start()
    try:
        await stopping.wait()
    finally:
        await node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.witness", description="Run a log witness for a federation member."
    )
    parser.add_argument("--federation", type=Path, required=True, help="federation directory")
    parser.add_argument("--member", required=True, help="the witness member, e.g. pboc.gz")
    parser.add_argument("--state", type=Path, required=True, help="the witness's state directory")
    parser.add_argument(
        "--origin", action="append", required=True, help="a log origin to witness (repeatable)"
    )
    parser.add_argument("--listen", help="host:port (default: the member's registry endpoint)")
    parser.add_argument(
        "--tiles",
        action="append",
        default=[],
        metavar="ORIGIN=URL",
        help="check this log's checkpoints from its C2SP tiles at URL (repeatable)",
    )
    args = parser.parse_args(argv)
    tiles = dict(t.split("=", 1) for t in args.tiles if "=" in t)
    if len(tiles) != len(args.tiles):
        parser.error("--tiles takes ORIGIN=URL")
    configure_logging()
    try:
        node = WitnessNode(
            federation=args.federation,
            member=MemberId(args.member),
            state=args.state,
            origins=args.origin,
            listen=args.listen,
            tiles=tiles,
        )
        asyncio.run(_serve(node))
    except FedgateError as exc:
        print(f"fedgate witness: error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
