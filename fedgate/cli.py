"""The ``fedgate`` command line: one parser, one sub-command group per module.

The police SDK's own groups live in ``fedgate.commands``. Groups that belong to a side of the
federation (``policy`` and ``audit`` to the gateway, ``up``/``down``/``demo`` to the development
federation in ``adapters``) register through the ``fedgate.commands`` entry-point group, so this
package never imports ``gateway`` or ``adapters`` (STYLE.md, practice 14): a police machine that
installs the SDK alone simply has fewer groups.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from types import ModuleType

from fedgate.errors import FedgateError

__all__ = ["COMMAND_MODULES", "ENTRY_POINT_GROUP", "build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "pki",
    "registry",
    "staff",
    "query",
    "order",
    "appeal",
    "ticket",
    "chase",
    "risk",
    "warn",
    "answers",
)
"""Modules under ``fedgate.commands``; each has ``register(subparsers)``."""

ENTRY_POINT_GROUP = "fedgate.commands"
"""Entry points naming a module with ``register(subparsers)``, from the installed sides."""


def _command_modules() -> Iterator[ModuleType]:
    for name in COMMAND_MODULES:
        yield importlib.import_module(f"fedgate.commands.{name}")
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            yield importlib.import_module(entry.value.split(":")[0])
        except ImportError:
            # The side is declared but not importable (installed without its extra): the SDK's
            # own commands still work, and the group is simply absent.
            continue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedgate",
        description="fedgate: signed, policy-checked, audited exchange between police, banks,"
        " carriers and the central bank.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except FedgateError as exc:
        print(f"fedgate: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a traceback.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
