"""Run one agency node: ``python -m adapters --config FILE``.

The member's kind in the registry picks the node (bank or carrier); the node serves until
SIGTERM or SIGINT, then stops cleanly (queued requests and answers are durable either way).
Exit codes: 0 stopped cleanly, 2 configuration or start-up error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters.config import NodeConfig, load_config
from adapters.node import AgencyNode, utc_now
from adapters.telemetry import configure_logging
from fedgate.errors import FedgateError, InvalidArgument
from fedgate.federation import MemberKind
from fedgate.otel import Exporters
from fedgate.registry import Registry

__all__ = ["build_node", "main", "serve"]

_log = logging.getLogger("fedgate.node")


def build_node(
    config: NodeConfig, *, clock: Callable[[], datetime] = utc_now, **providers: Any
) -> AgencyNode:
    """The node for ``config``'s member, by its kind in the registry; ``providers`` are
    ``tracer_provider`` and ``meter_provider``. Raises ``FedgateError``."""
    from adapters.risklist.node import Countermeasures

    registry = Registry.load_dir(config.federation_dir)
    kind = registry.member(config.member_id).kind
    jobs = Countermeasures(config).jobs(kind)
    if kind is MemberKind.BANK:
        from adapters.bank.node import BankNode

        return BankNode.open(config, clock=clock, background=jobs, **providers)
    if kind is MemberKind.CARRIER:
        from adapters.carrier.node import CarrierNode

        return CarrierNode.open(config, clock=clock, background=jobs, **providers)
    raise InvalidArgument(f"member {config.member_id} is a {kind}: no agency node serves it")


async def serve(node: AgencyNode, *, console: str | None = None) -> None:
    """Start ``node`` (and its staff console on ``console``, host:port) until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await node.start()
    running = None
    try:
        if console is not None:
            from adapters.console_node import gateway_audit_hook, start_staff_console

            host, _, port = console.rpartition(":")
            running = await start_staff_console(
                node, host=host, port=int(port), audit_hook=gateway_audit_hook(node)
            )
            _log.info("staff console at %s", running.url)
        await stopping.wait()
    finally:
        if running is not None:
            await running.stop()
        await node.stop(grace=2.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters", description="Run one fedgate agency node."
    )
    parser.add_argument(
        "--config", type=Path, help="the node's TOML file (FEDGATE_NODE__* variables override it)"
    )
    parser.add_argument(
        "--console", metavar="HOST:PORT", help="also serve the staff web console there"
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config(args.config)
    except FedgateError as exc:
        print(f"fedgate node: error: {exc.message}", file=sys.stderr)
        return 2
    try:
        exporters = Exporters.start(
            service="fedgate-node",
            otlp_endpoint=config.otlp_endpoint,
            prometheus_listen=config.prometheus_listen,
        )
    except OSError as exc:
        print(f"fedgate node: error: telemetry.prometheus_listen: {exc}", file=sys.stderr)
        return 2
    try:
        node = build_node(
            config,
            tracer_provider=exporters.tracer_provider,
            meter_provider=exporters.meter_provider,
        )
        asyncio.run(serve(node, console=args.console))
    except FedgateError as exc:
        print(f"fedgate node: error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        exporters.shutdown()  # flushes the spans of the last requests
    return 0
