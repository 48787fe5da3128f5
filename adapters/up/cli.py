"""``fedgate up``, ``fedgate down`` and ``fedgate demo``: a whole federation on this machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adapters.synth import load_world
from adapters.up import (
    DEMO_AUDITOR,
    Federation,
    demo_password,
    demo_staff_id,
    prepare_state,
    record_supervisor,
    start,
    stop,
    stop_pids,
    wait_healthy,
)
from adapters.up.instances import PgTarget
from adapters.up.scenario import run_scenario
from fedgate.errors import FedgateError
from fedgate.federation import MemberKind
from fedgate.render import format_time, table
from fedgate.types import CHINA_TIME

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser(
        "up",
        help="start a whole federation on loopback and run the demo scenario",
        description="Create a state directory if there is none (PKI, registry, seeded banks and"
        " carriers), start the gateway and every agency node, wait until all are healthy, print"
        " the members and consoles, and run the demo scenario. Ctrl-C stops everything.",
    )
    up.add_argument(
        "--state", type=Path, default=Path("state"), help="state directory (default: state)"
    )
    up.add_argument("--no-scenario", action="store_true", help="just run the federation")
    up.add_argument(
        "--base-port",
        type=int,
        metavar="PORT",
        help="for a new state directory: the gateway's port; the other members take the next"
        " ones and each console listens 1000 above (default 20051, below Linux's ephemeral"
        " ports)",
    )
    up.add_argument(
        "--gateways",
        type=int,
        default=1,
        metavar="N",
        help="run N gateway instances, each with its own audit shard, sharing one PostgreSQL"
        " database (--pg); instance 0 on the registry's gateway port, instance i on that port"
        " + 20 + i",
    )
    up.add_argument(
        "--pg",
        metavar="DSN",
        default=os.environ.get("FEDGATE_PG_DSN"),
        help="the PostgreSQL database of the gateway instances (default $FEDGATE_PG_DSN);"
        " without it, one gateway on SQLite",
    )
    up.add_argument(
        "--pg-schema",
        default="fedgate_audit",
        help="the audit schema in --pg (default fedgate_audit; the replay cache uses"
        " <schema>_replay)",
    )
    up.add_argument(
        "--background",
        action="store_true",
        help="leave it running and return (stop with `fedgate down`)",
    )
    up.set_defaults(func=_up)

    down = subparsers.add_parser(
        "down", help="stop a federation started with `fedgate up --background`"
    )
    down.add_argument(
        "--state", type=Path, default=Path("state"), help="state directory (default: state)"
    )
    down.set_defaults(func=_down)

    world = subparsers.add_parser(
        "world",
        help="the planted fraud chains of a state directory, in yuan and China time",
        description="What state/world/world.json holds, in the CLI's units: amounts in yuan"
        " (world.json keeps fen, minor units) and times in China time (world.json keeps UTC)."
        " With --shell: `export` lines for one chain, to paste into police commands.",
    )
    world.add_argument(
        "--state", type=Path, default=Path("state"), help="state directory (default: state)"
    )
    world.add_argument(
        "--chain",
        type=int,
        default=-1,
        help="which chain (0-based; default: the last, which the demo scenario reaches last)",
    )
    world.add_argument("--shell", action="store_true", help="print export lines for --chain")
    world.set_defaults(func=_world)

    demo = subparsers.add_parser(
        "demo",
        help="smoke test: a fresh federation in a temporary directory, the scenario, then stop",
        description="Exit 0 only if every member became healthy, every scenario step succeeded"
        " and the audit log verified.",
    )
    demo.set_defaults(func=_demo)


def _print_table(federation: Federation) -> None:
    print(f"\n{'MEMBER':<15} {'KIND':<13} {'gRPC ENDPOINT':<17} {'CONSOLE':<24} NAME")
    consoles: dict[str, str | None] = {}
    for spec in federation.processes:
        consoles[spec.member] = consoles.get(spec.member) or spec.console
    for member in federation.registry.members():
        console = consoles.get(member.id)
        url = f"http://{console}/" if console else ""
        running = member.id in consoles
        endpoint = member.endpoint if running else "(not started)"
        name = f"{member.name_zh} / {member.name_en}"
        print(f"{member.id:<15} {member.kind.value:<13} {endpoint:<17} {url:<24} {name}")
    gateways = federation.gateway_endpoints
    if len(gateways) > 1:
        print(
            f"\n{len(gateways)} gateway instances on PostgreSQL ({federation.audit_source[3]}):"
            f" {', '.join(gateways)}; give clients them all, e.g. fedgate ticket get ID"
            f" --gateway {','.join(gateways)}"
        )
    staff = [s for s in federation.processes if s.console and s.kind is not MemberKind.GATEWAY]
    if staff:
        example = staff[0]
        user = demo_staff_id(example.member)
        print(
            f"\nStaff consoles: log in as <agency>.zhang (e.g. {user} at http://{example.console}/)"
            f" with the demo password {demo_password(federation.state)!r}"
            f" (kept in {federation.state / 'demo-password'})."
        )
    auditor = next((s for s in federation.processes if s.kind is MemberKind.GATEWAY), None)
    if auditor is not None and auditor.console:
        print(
            f"Auditor console: log in as {DEMO_AUDITOR} (audit.office) at"
            f" http://{auditor.console}/ with the same demo password."
        )
    print(f"Logs: {federation.state / 'logs'}/   Federation: {federation.federation_dir}/\n")


async def _bring_up(
    state: Path,
    *,
    free_ports: bool = False,
    base_port: int | None = None,
    gateways: int = 1,
    pg: PgTarget | None = None,
) -> tuple[Federation, list[subprocess.Popen[bytes]]]:
    started = time.monotonic()
    federation = prepare_state(
        state,
        progress=lambda line: print(f"  {line}"),
        free_ports=free_ports,
        base_port=base_port,
        gateways=gateways,
        pg=pg,
    )
    print(f"starting {len(federation.processes)} processes …")
    children = start(federation)
    try:
        await wait_healthy(federation, children, progress=print)
    except BaseException:
        stop(children)
        raise
    print(f"federation up in {time.monotonic() - started:.1f} s")
    _print_table(federation)
    return federation, children


async def _scenario(federation: Federation) -> bool:
    result = await run_scenario(
        federation_dir=federation.federation_dir,
        world=federation.world,
        state=federation.state,
        audit_source=federation.audit_source,
    )
    return result.ok


def _up(args: argparse.Namespace) -> int:
    state: Path = args.state.resolve()
    if args.base_port is not None and not 1024 <= args.base_port <= 65535 - 1011:
        print("fedgate up: --base-port must be 1024 to 64524", file=sys.stderr)
        return 2
    pg = PgTarget(dsn=args.pg, schema=args.pg_schema) if args.pg else None
    try:
        federation, children = asyncio.run(
            _bring_up(state, base_port=args.base_port, gateways=args.gateways, pg=pg)
        )
    except FedgateError as exc:
        print(f"fedgate up: {exc.message}", file=sys.stderr)
        return 1
    ok = True
    try:
        if not args.background:
            record_supervisor(state)
            signal.signal(signal.SIGTERM, _interrupt)
        _print_path_hint()
        if not args.no_scenario:
            ok = asyncio.run(_scenario(federation))
        if args.background:
            print(f"running in the background; stop with: fedgate down --state {args.state}")
            return 0 if ok else 1
        print(
            "The federation keeps running. Press Ctrl-C (or run `fedgate down` elsewhere) to"
            " stop every process."
        )
        ok = _supervise(federation, children) and ok
    except KeyboardInterrupt:
        pass
    finally:
        if not args.background:
            print("\nstopping …")
            stop(children)
            (state / "pids.json").unlink(missing_ok=True)
            print("stopped.")
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _supervise(federation: Federation, children: list[subprocess.Popen[bytes]]) -> bool:
    """Watch the processes until Ctrl-C, ``fedgate down`` or the end of all of them; a process
    that ends early is reported (with its log) once. False if any ended on its own."""
    reported: set[int] = set()
    while True:
        for spec, child in zip(federation.processes, children, strict=True):
            if child.poll() is not None and child.pid not in reported:
                reported.add(child.pid)
                print(f"{spec.key} exited with code {child.returncode}; see {spec.log}")
        if len(reported) == len(children):
            print("every process has ended.")
            return False
        time.sleep(1.0)


def _print_path_hint() -> None:
    """How to call ``fedgate`` from another terminal: it lives in the virtualenv."""
    here = Path(sys.executable).parent
    if shutil.which("fedgate") != str(here / "fedgate"):
        print(
            f"To use the CLI in another terminal: export PATH={here}:$PATH"
            f"  (or: . {here / 'activate'})"
        )


def _down(args: argparse.Namespace) -> int:
    count = stop_pids(args.state.resolve())
    print(f"stopped {count} processes" if count else f"no federation running from {args.state}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fedgate-demo-") as tmp:
        state = Path(tmp)
        try:
            federation, children = asyncio.run(_bring_up(state, free_ports=True))
        except FedgateError as exc:
            print(f"fedgate demo: the federation did not come up: {exc.message}", file=sys.stderr)
            return 1
        try:
            ok = asyncio.run(_scenario(federation))
        finally:
            stop(children)
        print("fedgate demo:", "OK" if ok else "FAILED")
        return 0 if ok else 1


def _yuan(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _world(args: argparse.Namespace) -> int:
    world_dir = args.state / "world"
    if not (world_dir / "world.json").exists():
        print(
            f"fedgate world: no world in {world_dir}: start a federation first (`make run`)",
            file=sys.stderr,
        )
        return 2
    world = load_world(world_dir)
    if not -len(world.chains) <= args.chain < len(world.chains):
        print(f"fedgate world: --chain must be 0 to {len(world.chains) - 1}", file=sys.stderr)
        return 2
    if args.shell:
        chain = world.chains[args.chain]
        hop, final = chain.hops[0], chain.hops[-1]
        values = {
            "VICTIM_NAME": chain.victim.name,
            "VICTIM_PHONE": chain.victim.phone,
            "VICTIM_ACCOUNT": chain.victim.account_number,
            "VICTIM_BANK": chain.victim.bank_id,
            "VICTIM_CARRIER": chain.victim.carrier_id,
            "VICTIM_ID_NUMBER": chain.victim.id_number,
            "FRAUD_PHONE": chain.fraud_numbers[0].number,
            "FRAUD_CARRIER": chain.fraud_numbers[0].carrier_id,
            "MULE_ACCOUNT": hop.to_account,
            "MULE_NAME": hop.to_name,
            "MULE_BANK": hop.to_bank,
            "PAYER_ACCOUNT": hop.from_account,
            "PAYER_NAME": hop.from_name,
            "AMOUNT": _yuan(hop.amount_minor),
            "TRANSFER_TIME": hop.ts.astimezone(CHINA_TIME).isoformat(timespec="seconds"),
            "FINAL_ACCOUNT": final.to_account,
            "FINAL_NAME": final.to_name,
            "FINAL_BANK": final.to_bank,
        }
        for name, value in values.items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    print(f"world of {world_dir} (seed {world.seed}, made {format_time(world.now)})")
    print("amounts in yuan, times in China time (world.json keeps fen and UTC)\n")
    for chain in world.chains:
        v = chain.victim
        numbers = ", ".join(f"{n.number} ({n.carrier_id})" for n in chain.fraud_numbers)
        called = format_time(chain.first_contact)
        print(
            f"chain {chain.index}: victim {v.name} {v.phone}, account {v.account_number}"
            f" ({v.bank_id}); called by {numbers} at {called}"
        )
        rows = [
            (str(h.index), f"{h.from_account} ({h.from_bank})", f"{h.to_account} ({h.to_bank})",
             h.to_name, f"¥{_yuan(h.amount_minor)}", format_time(h.ts))
            for h in chain.hops
        ]  # fmt: skip
        print("\n".join(table(("hop", "from", "to", "holder", "amount", "time"), rows)))
        print()
    return 0
