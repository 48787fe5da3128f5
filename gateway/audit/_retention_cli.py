"""``fedgate audit retention``: run the retention job once, with the gateway stopped.

The gateway runs the same job every ``audit.retention_interval_s``; this command is for a
gateway configured with ``retention_interval_s = 0`` or kept stopped, and for operators who
want to see what is destroyed. Each destroyed case key is logged first (``body_key_destroyed``),
exactly as when the gateway runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from fedgate.errors import FedgateError

__all__ = ["add_retention_parser"]


def add_retention_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retention = sub.add_parser(
        "retention",
        help="destroy the data keys of cases whose retention ended (gateway stopped)",
    )
    retention.add_argument("--config", type=Path, required=True, help="the gateway's TOML file")
    retention.add_argument(
        "--now",
        type=datetime.fromisoformat,
        default=None,
        help="judge retention as of this ISO time (default: now)",
    )
    retention.set_defaults(func=_retention)


def _retention(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig  # the gateway's side, loaded only when used
    from gateway.server import run_retention_once

    now: datetime = args.now or datetime.now(UTC)
    if now.tzinfo is None:
        print("fedgate audit retention: --now needs a time zone (e.g. +08:00)", file=sys.stderr)
        return 2
    try:
        config = GatewayConfig.load(args.config)
        destroyed = asyncio.run(run_retention_once(config, now=now))
    except FedgateError as exc:
        print(f"fedgate audit retention: {exc.message}", file=sys.stderr)
        return 1
    for ref in destroyed:
        print(f"destroyed the data key of {ref}")
    print(f"{len(destroyed)} case keys destroyed")
    return 0
