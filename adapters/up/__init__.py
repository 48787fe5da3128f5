"""A whole federation on one machine: state directory, processes, health, and the demo scenario.

``fedgate up`` (what ``make run`` calls) prepares a state directory when there is none (PKI and
member registry, seeded reference backends, one config file per process, demo console
accounts), starts the gateway and every agency node as separate processes on loopback, waits
until each health check is serving, prints the members, endpoints and consoles, and runs the
scenario in ``adapters.up.scenario``. ``fedgate down`` stops a federation started in the
background; ``fedgate demo`` does all of it in a temporary directory and exits 0 only if every
step and the final audit verification succeeded.

State directory layout::

    federation/          PKI and registry (fedgate pki init)
    world/               seeded bank and carrier databases, world.json (the planted fraud chains)
    gateway/             gateway.toml and the gateway's state (audit log, replay cache, ...,
                         the auditor console's users)
    gateway-<i>/         with ``--gateways N``: instance i's config and state (i = 1..N-1)
    nodes/<member>/      node.toml and the node's state (answers, staff queue, console users)
    witnesses/<member>/  the log witnesses' state (pboc.gz, audit.office)
    logs/<member>.log    each process's output
    pids.json            the processes of a federation started with --background
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.synth import World, load_world, seed_world
from adapters.up.instances import PgTarget, write_instance_config
from fedgate.config import dump_toml
from fedgate.errors import FedgateError
from fedgate.federation import DEFAULT_MEMBERS, MemberKind
from fedgate.kek import write_kek_file
from fedgate.pki import FederationLayout, init_federation
from fedgate.registry import Member, Registry
from fedgate.risklist import risklist_origin
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.web.auth import Role, UserStore

__all__ = [
    "DEMO_AUDITOR",
    "DEMO_PASSWORD_FILE",
    "EXTRA_GATEWAY_PORT_OFFSET",
    "Federation",
    "ProcessSpec",
    "check_ports",
    "console_port",
    "demo_password",
    "demo_staff_id",
    "prepare_state",
    "record_supervisor",
    "start",
    "stop",
    "stop_pids",
    "wait_healthy",
]

DEMO_PASSWORD_FILE = "demo-password"  # noqa: S105 - a file name, not a password
"""File in the state directory holding the demo console accounts' password (generated, 0600)."""

DEMO_AUDITOR = "audit.wang"
"""The demo auditor account (member ``audit.office``) of the gateway's auditor console."""
DEMO_AUDITOR_MEMBER = MemberId("audit.office")

LOG_ORIGIN = "fedgate.local/gateway/shard-0"
"""The origin (log name) of the development gateway's audit log shard."""
RISKLIST_ORIGIN = risklist_origin(LOG_ORIGIN)

EXTRA_GATEWAY_PORT_OFFSET = 20
"""With ``--gateways N``, instance i (1..N-1) listens on the gateway's port + 20 + i (clear of
the default members' ports); instance 0 on the registry's gateway endpoint."""
"""The origin of the development gateway's risk list log (witnessed like the audit log)."""
FEED_PER_SECOND = 20.0
FEED_MAX = 20_000
"""Each carrier's call/SMS feed in the development federation: 20 events a second, at most
20,000 (about 17 minutes), generated from the world."""

WORLD_MAX_AGE = timedelta(hours=12)
"""A world older than this is reseeded: stop-payments need a recent victim transfer."""

Progress = Callable[[str], None]

SUPERVISOR = "fedgate up"
"""The key of the foreground ``fedgate up`` process in ``pids.json``."""


def console_port(endpoint: str) -> int:
    """A process's web console (a node's staff console, the gateway's auditor console) listens
    1000 ports above its gRPC port."""
    return int(endpoint.rsplit(":", 1)[1]) + 1000


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process of the federation."""

    member: MemberId
    kind: MemberKind
    argv: tuple[str, ...]
    endpoint: str
    console: str | None
    log: Path
    name: str = ""
    """The process's key in ``pids.json`` and its messages (the member id unless several
    processes serve one member, as the gateway instances of ``--gateways N``)."""

    @property
    def key(self) -> str:
        return self.name or self.member


@dataclass(frozen=True, slots=True)
class Federation:
    """A prepared state directory."""

    state: Path
    registry: Registry
    world: World
    processes: tuple[ProcessSpec, ...]
    pg: PgTarget | None = None
    """The shared database of the gateway instances, or ``None`` for one gateway on SQLite."""

    @property
    def federation_dir(self) -> Path:
        return self.state / "federation"

    @property
    def audit_db(self) -> Path:
        return self.state / "gateway" / "audit.sqlite"

    @property
    def gateway_endpoints(self) -> tuple[str, ...]:
        """Every gateway instance's address, instance 0 (the registry's) first."""
        return tuple(p.endpoint for p in self.processes if p.kind is MemberKind.GATEWAY)

    @property
    def audit_source(self) -> tuple[str, ...]:
        """The ``fedgate audit verify`` arguments naming every shard of the federation's log."""
        if self.pg is None:
            return ("--db", str(self.audit_db))
        return ("--pg", self.pg.dsn, "--schema", self.pg.schema)


def demo_password(state: Path) -> str:
    """The state directory's demo console password, generated on first use (never a constant)."""
    path = state / DEMO_PASSWORD_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(12) + "\n")
    return path.read_text(encoding="utf-8").strip()


def demo_staff_id(member: MemberId) -> str:
    """The demo staff account of an agency's console (``bank.icbc`` -> ``icbc.zhang``)."""
    return f"{member.split('.', 1)[1]}.zhang"


def _witnesses(registry: Registry) -> list[Member]:
    return [m for m in registry.members() if "witness" in m.roles]


def _agency_members(registry: Registry) -> list[Member]:
    return [m for m in registry.members() if m.kind in (MemberKind.BANK, MemberKind.CARRIER)]


@dataclass(frozen=True, slots=True)
class _GatewayInstance:
    index: int
    endpoint: str
    origin: str

    @property
    def directory(self) -> str:
        return "gateway" if self.index == 0 else f"gateway-{self.index}"

    @property
    def console(self) -> str | None:
        """Instance 0 serves the auditor console."""
        return f"127.0.0.1:{console_port(self.endpoint)}" if self.index == 0 else None


def _gateway_instances(registry: Registry, count: int) -> list[_GatewayInstance]:
    endpoint = registry.member(MemberId("gateway")).endpoint
    host, _, port = endpoint.rpartition(":")
    instances = [_GatewayInstance(0, endpoint, LOG_ORIGIN)]
    for i in range(1, count):
        instances.append(
            _GatewayInstance(
                i,
                f"{host}:{int(port) + EXTRA_GATEWAY_PORT_OFFSET + i}",
                LOG_ORIGIN.removesuffix("shard-0") + f"shard-{i}",
            )
        )
    return instances


_GATEWAY_HEADER = (
    "written by `fedgate up`; every value can be overridden by\n"
    "FEDGATE_GATEWAY__<SECTION>__<KEY> environment variables"
)


def _write_gateway_config(
    state: Path, registry: Registry, instance: _GatewayInstance, pg: PgTarget | None
) -> Path:
    directory = state / instance.directory
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    witnesses = [w.id for w in _witnesses(registry)]
    # One key-encryption key for the federation's gateway, beside instance 0's state (0600,
    # never committed): every instance seals its shard with it, and the auditor console on
    # instance 0 can reveal any shard's bodies.
    kek = "audit.kek" if instance.index == 0 else "../gateway/audit.kek"
    if instance.index == 0:
        write_kek_file(directory / "audit.kek")
    extra: dict[str, dict[str, object]] = {
        "telemetry": {"log_level": "INFO"},
        "audit": {"kek_path": kek},
    }
    if instance.console is not None:
        extra["console"] = {"listen": instance.console}  # the auditor console
    if pg is not None:
        write_instance_config(
            config,
            header=_GATEWAY_HEADER,
            listen=instance.endpoint,
            federation_dir="../federation",
            state_dir=".",
            origin=instance.origin,
            pg=pg,
            witnesses=witnesses,
            extra=extra,
        )
    else:
        config.write_text(
            dump_toml(
                {
                    "server": {"listen": instance.endpoint},
                    "federation": {"dir": "../federation"},
                    "pipeline": {"state_dir": "."},
                    **extra,
                    "audit": {"origin": instance.origin, "witnesses": witnesses, "kek_path": kek},
                },
                header=_GATEWAY_HEADER,
            ),
            encoding="utf-8",
        )
    if instance.console is None:
        return config
    users = UserStore.in_state_dir(directory)
    try:
        if users.get(DEMO_AUDITOR) is None:
            users.add_user(
                DEMO_AUDITOR,
                member_id=DEMO_AUDITOR_MEMBER,
                display_name="王审计 (demo)",
                role=Role.AUDITOR,
                password=demo_password(state),
            )
    finally:
        users.close()
    return config


def _write_node_config(state: Path, member: Member, world: World) -> Path:
    directory = state / "nodes" / member.id
    directory.mkdir(parents=True, exist_ok=True)
    manual = "transactions" if member.kind is MemberKind.BANK else "call_records"
    config = directory / "node.toml"
    config.write_text(
        dump_toml(
            {
                "member": member.id,
                "federation": "../../federation",
                "state": ".",
                "staff": [demo_staff_id(member.id)],
                "backend": {"kind": "reference", "path": world.database(member.id)},
                "actions": {"default": "automatic", manual: "manual"},
                # The shared risk list, replicated and verified (countermeasures); a change is
                # applied once a witness has cosigned it.
                "risklist": {
                    "follow": True,
                    "origin": RISKLIST_ORIGIN,
                    "min_cosignatures": 1,
                    **(
                        {"feed_per_second": FEED_PER_SECOND, "feed_max": FEED_MAX}
                        if member.kind is MemberKind.CARRIER
                        else {}
                    ),
                },
            },
            header="written by `fedgate up`; FEDGATE_NODE__<KEY> or\n"
            f"FEDGATE_NODE__<SECTION>__<KEY> variables override it; {manual} is answered\n"
            "by stationed staff in the console",
        ),
        encoding="utf-8",
    )
    users = UserStore.in_state_dir(directory)
    try:
        if users.get(demo_staff_id(member.id)) is None:
            users.add_user(
                demo_staff_id(member.id),
                member_id=member.id,
                display_name="张三 (demo)",
                role=Role.STAFF,
                password=demo_password(state),
            )
    finally:
        users.close()
    return config


def _world_usable(world_dir: Path) -> World | None:
    if not (world_dir / "world.json").exists():
        return None
    world = load_world(world_dir)
    if datetime.now(UTC) - world.now > WORLD_MAX_AGE:
        return None
    return world


def _free_ports(count: int) -> list[int]:
    """``count`` ports that are free, each with its console port (+1000) free too, below the
    kernel's ephemeral range (32768 and up) so no outgoing connection can take one meanwhile."""
    rng = random.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(20000, 31000)
        if port in chosen or port + 1000 in chosen or port - 1000 in chosen:
            continue
        if not _port_in_use(f"127.0.0.1:{port}") and not _port_in_use(f"127.0.0.1:{port + 1000}"):
            chosen.append(port)
    return chosen


def prepare_state(
    state: Path,
    *,
    progress: Progress = print,
    free_ports: bool = False,
    base_port: int | None = None,
    gateways: int = 1,
    pg: PgTarget | None = None,
) -> Federation:
    """Create what is missing in ``state`` and return the federation it describes.

    A new federation gets the default ports (20051 and up, consoles 1000 above) unless
    ``base_port`` (the gateway's port; the other members follow it) or ``free_ports``, which
    picks free ones (``fedgate demo`` and tests, which must not collide with a running
    federation). The ports MUST be free before any key or data is generated: a taken port
    raises ``FedgateError`` naming it, and nothing is written. An existing federation keeps its
    ports; ``base_port`` different from them raises ``FedgateError``."""
    if gateways < 1:
        raise FedgateError(f"--gateways must be at least 1, got {gateways}")
    if gateways > 1 and pg is None:
        raise FedgateError(
            "--gateways N needs a PostgreSQL database for the instances to share (--pg DSN)"
        )
    federation_dir = state / "federation"
    if not FederationLayout(federation_dir).registry.exists():
        members = list(DEFAULT_MEMBERS)
        if free_ports:
            ports = _free_ports(len(members))
            members = [replace(m, port=p) for m, p in zip(members, ports, strict=True)]
        elif base_port is not None:
            members = [replace(m, port=base_port + i) for i, m in enumerate(members)]
        check_ports(_addresses(m.endpoint for m in members))
        state.mkdir(parents=True, exist_ok=True)
        progress(f"creating the federation's PKI and member registry in {federation_dir}")
        init_federation(federation_dir, members=members)
        registry = Registry.load_dir(federation_dir)
    else:
        registry = Registry.load_dir(federation_dir)
        gateway_port = int(registry.member(MemberId("gateway")).endpoint.rsplit(":", 1)[1])
        if base_port is not None and base_port != gateway_port:
            raise FedgateError(
                f"{state} was created with base port {gateway_port}, not {base_port}: use "
                f"--base-port {gateway_port}, or another --state for new ports"
            )
        check_ports(_addresses(m.endpoint for m in registry.members()))
    instances = _gateway_instances(registry, gateways)
    check_ports(i.endpoint for i in instances[1:])
    world_dir = state / "world"
    world = _world_usable(world_dir)
    if world is None:
        seed = int(time.time()) % 100_000
        progress(
            f"seeding the banks' and carriers' reference databases in {world_dir} (seed {seed})"
        )
        world_dir.mkdir(parents=True, exist_ok=True)
        for old in world_dir.glob("*.sqlite*"):
            old.unlink()
        world = seed_world(world_dir, seed=seed, fraud_chains=8, progress=progress)
    processes = [
        ProcessSpec(
            member=MemberId("gateway"),
            kind=MemberKind.GATEWAY,
            argv=(
                sys.executable,
                "-m",
                "gateway.server",
                "--config",
                str(_write_gateway_config(state, registry, instance, pg)),
            ),
            endpoint=instance.endpoint,
            console=instance.console,
            log=state / "logs" / f"{instance.directory}.log",
            name=instance.directory,
        )
        for instance in instances
    ]
    # Every shard and its risk list are witnessed: each witness accepts every origin.
    origins: list[str] = []
    for instance in instances:
        origins += ["--origin", instance.origin, "--origin", risklist_origin(instance.origin)]
    for member in _witnesses(registry):
        processes.append(
            ProcessSpec(
                member=member.id,
                kind=member.kind,
                argv=(
                    sys.executable,
                    "-m",
                    "adapters.witness",
                    "--federation",
                    str(federation_dir),
                    "--member",
                    member.id,
                    "--state",
                    str(state / "witnesses" / member.id),
                    *origins,
                ),
                endpoint=member.endpoint,
                console=None,
                log=state / "logs" / f"{member.id}.log",
            )
        )
    for member in _agency_members(registry):
        config = _write_node_config(state, member, world)
        console = f"127.0.0.1:{console_port(member.endpoint)}"
        processes.append(
            ProcessSpec(
                member=member.id,
                kind=member.kind,
                argv=(
                    sys.executable,
                    "-m",
                    "adapters",
                    "--config",
                    str(config),
                    "--console",
                    console,
                ),
                endpoint=member.endpoint,
                console=console,
                log=state / "logs" / f"{member.id}.log",
            )
        )
    return Federation(
        state=state, registry=registry, world=world, processes=tuple(processes), pg=pg
    )


def _port_in_use(address: str) -> bool:
    """True when a server could not listen on ``address`` now.

    The probe binds as the servers do, with ``SO_REUSEADDR`` (gRPC and asyncio set it), so the
    connections a federation stopped a moment ago leave in TIME_WAIT do not count as taken."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
            probe.listen(1)
        except OSError:
            return True
    return False


def _addresses(endpoints: Iterable[str]) -> list[str]:
    """Each endpoint and its console address (1000 ports above)."""
    out: list[str] = []
    for endpoint in endpoints:
        host = endpoint.rsplit(":", 1)[0]
        out += [endpoint, f"{host}:{console_port(endpoint)}"]
    return out


def check_ports(addresses: Iterable[str]) -> None:
    """Raise ``FedgateError`` naming every address a server could not listen on now."""
    busy = [address for address in addresses if _port_in_use(address)]
    if busy:
        raise FedgateError(
            f"port(s) already in use: {', '.join(busy)}. Is another federation running?"
            " Stop it with `fedgate down --state DIR` (or Ctrl-C in its terminal), or choose"
            " other ports for a new state directory with `fedgate up --state DIR --base-port N`."
        )


def start(federation: Federation) -> list[subprocess.Popen[bytes]]:
    """Start every process, each in its own process group, output to its log file.

    Raises ``FedgateError`` before starting anything when a port is taken (most often by a
    federation that is still running)."""
    check_ports(
        address
        for spec in federation.processes
        for address in (spec.endpoint, spec.console)
        if address is not None
    )
    children: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for spec in federation.processes:
            spec.log.parent.mkdir(parents=True, exist_ok=True)
            with spec.log.open("ab") as log:
                children.append(
                    subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                        spec.argv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,
                    )
                )
    except OSError:
        stop(children)
        raise
    pids = {s.key: c.pid for s, c in zip(federation.processes, children, strict=True)}
    (federation.state / "pids.json").write_text(json.dumps(pids), encoding="utf-8")
    return children


def record_supervisor(state: Path) -> None:
    """Note this process (a foreground ``fedgate up``) in ``pids.json``, so that ``fedgate down``
    ends it too: it then stops and reaps its children itself (no zombies), and exits."""
    pids_file = state / "pids.json"
    pids: dict[str, int] = json.loads(pids_file.read_text(encoding="utf-8"))
    pids[SUPERVISOR] = os.getpid()
    pids_file.write_text(json.dumps(pids), encoding="utf-8")


def stop(children: Sequence[subprocess.Popen[bytes]], *, grace: float = 8.0) -> None:
    """SIGTERM every child, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def stop_pids(state: Path, *, grace: float = 8.0) -> int:
    """Stop a federation started in the background; returns how many processes were signalled."""
    pids_file = state / "pids.json"
    if not pids_file.exists():
        return 0
    pids: dict[str, int] = json.loads(pids_file.read_text(encoding="utf-8"))
    supervisor = pids.pop(SUPERVISOR, None)
    if supervisor is not None and supervisor != os.getpid():
        # A foreground ``fedgate up``: it stops its children on SIGTERM, reaps them, and exits.
        try:
            os.kill(supervisor, signal.SIGTERM)
        except ProcessLookupError:
            supervisor = None
    alive = [] if supervisor is None else [supervisor]
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _exists(p)]
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    pids_file.unlink(missing_ok=True)
    return len(pids)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return waited == 0


async def _serving(endpoint: str, server: MemberId, creds: MemberCredentials) -> bool:
    async with grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(server)
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_healthy(
    federation: Federation,
    children: Sequence[subprocess.Popen[bytes]],
    *,
    timeout: float = 60.0,
    progress: Progress = print,
) -> None:
    """Wait until every process reports SERVING; raises ``FedgateError`` naming the laggard."""
    gateway_creds = MemberCredentials.load(federation.federation_dir, MemberId("gateway"))
    police_creds = MemberCredentials.load(federation.federation_dir, MemberId("police.gd.afc"))
    pending = {spec.key: spec for spec in federation.processes}
    deadline = time.monotonic() + timeout
    while pending:
        for spec, child in zip(federation.processes, children, strict=True):
            if spec.key in pending and child.poll() is not None:
                raise FedgateError(
                    f"{spec.key} exited with status {child.returncode} while starting;"
                    f" see {spec.log}"
                )
        for key, spec in list(pending.items()):
            creds = police_creds if spec.kind is MemberKind.GATEWAY else gateway_creds
            if await _serving(spec.endpoint, spec.member, creds):
                progress(f"  {key:<14} serving on {spec.endpoint}")
                del pending[key]
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            raise FedgateError(
                f"not serving after {timeout:.0f} s: {names}; see {federation.state}/logs"
            )
        if pending:
            await asyncio.sleep(0.3)
