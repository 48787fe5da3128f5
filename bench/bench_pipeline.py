"""Pipeline efficiency: client → gateway (full pipeline, mTLS, durable audit) → agency node,
against client → a bare pass-through mTLS gRPC proxy → the same node, side by side in one run.

Three processes besides the client: the agency node, the gateway and the proxy (each its own
interpreter, as in production). The client, in this process, sends pre-signed account-holder
queries with ``CONCURRENCY`` in flight; phases alternate proxy / gateway so that drift in the
machine's state hits both alike.

- ``gateway_qps``, ``proxy_qps``: completed calls per second at the same concurrency.
- ``pipeline_efficiency_ratio``: gateway_qps / proxy_qps (goal ≥ 0.7).
- ``pipeline_cpu_ratio``: the proxy's CPU time per request ÷ the gateway's, from the two
  processes' own CPU times over the same closed-loop phases (goal ≥ 0.6). Unlike throughput it
  does not move when something else loads the machine.
- ``gateway_loop_cpu_us_per_request``, ``proxy_loop_cpu_us_per_request``: the same for each
  process's main thread alone (``/proc``), where its event loop and all its Python run; one
  core's worth of it, ``gateway_loop_bound_qps`` = 10⁶ ÷ that, is the most one gateway process
  can serve however many cores the machine has (the GIL: its other threads only take work off
  it that releases the GIL, such as fsync and SQLite).
- ``gateway_gc_cpu_us_per_request``: the gateway's CPU in garbage collections (timed by
  ``gc.callbacks``) per request, part of its CPU per request.
- ``pipeline_added_p50_ms``, ``pipeline_added_p99_ms``: at half the gateway's peak rate
  (open loop, requests sent on a fixed schedule), the gateway's latency percentile minus the
  proxy's (goal: p99 added ≤ 5 ms). Latency counts from each request's *scheduled* send time,
  so a client that falls behind its schedule shows up as latency instead of hiding it
  (no coordinated omission). The open-loop phases alternate proxy / gateway in rounds
  (``LATENCY_ROUNDS``) and each side's samples are pooled: ``pipeline_latency_samples`` per
  side: at least 1,000 in a quick run (rounds are lengthened when half the gateway's peak is a
  slower rate), so its p99 is about the 10th slowest; at least 4,000 in a full run.
  Every percentile here is nearest-rank (``fedgate.testing.percentile``).
- ``gateway_latency_p99_ms``, ``proxy_latency_p99_ms``: the two p99s the added p99 subtracts;
  ``client_send_late_p99_ms``: how late the client itself sent (the scheduler's share: the
  load generator shares the two cores with the node, the proxy and the gateway).
- ``disk_fdatasync_p50_ms``, ``disk_fdatasync_p99_ms``: 300 appends of 2 KiB, each followed by
  ``fdatasync``, in the gateway's state directory just before the open-loop rounds: what one
  durable commit costs the disk at that moment. The gateway waits for two in series per
  request (request leg, response leg); the proxy for none.
- During the gateway's open-loop rounds its tail diagnostics run (``Gateway.diagnose_tail``,
  2 ms: 2–3 % of a core at most): ``gateway_loop_stalls`` event-loop stalls over 2 ms,
  ``gateway_loop_stall_max_ms`` the longest, ``gateway_loop_stall_max_running_ms`` the most
  CPU the loop's thread used in one of the 32 longest (a stall whose thread barely ran was the
  scheduler's, not the gateway's), and, printed to stderr, the slowest 1 % of the
  gateway's requests stage by stage against all of them (a stage lasts until the next starts,
  waits included); ``gateway_slowest_1pct_audit_ms`` is those requests' mean time in the two
  audit legs (durable group commits), ``gateway_slowest_1pct_ms`` their mean time in the
  gateway.

The proxy parses the ``SubmitRequest``, forwards the envelope as a ``HandleRequest`` and wraps
the node's answer: the least any relay between these two services must do. The node signs an
answer without further checks, so that the relay in front of it is what is measured.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench._loop_census import LoopCensus
from fedgate.actions import new_request_id
from fedgate.envelope import Domain, Signer, decode_request, request_hash, sign_envelope
from fedgate.pki import init_federation
from fedgate.testing import percentile, valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import (
    agency_service_pb2,
    envelope_pb2,
    gateway_service_pb2,
    request_pb2,
)

__all__ = ["run"]

BANK = MemberId("bank.icbc")
POLICE = MemberId("police.gd.afc")
GATEWAY = MemberId("gateway")
CONCURRENCY = 16
LATENCY_ROUNDS = {True: (3, 1.5, 1_000), False: (4, 4.0, 4_000)}
"""quick → (open-loop rounds per side, seconds per round at least, samples per side at least:
rounds are lengthened when half the gateway's peak is too slow a rate for that many)."""
STALL_THRESHOLD_S = 0.002
_SUBMIT = "/fedgate.v1.GatewayService/Submit"
_HANDLE = "/fedgate.v1.AgencyService/Handle"


# -- the three servers (each in its own process) ---------------------------------------------


async def _serve_node(fed: Path) -> tuple[grpc.aio.Server, int]:
    creds = MemberCredentials.load(fed, BANK)
    signer = Signer.from_key(creds.signing_key)

    async def handle(raw: bytes, context: Any) -> bytes:
        envelope = agency_service_pb2.HandleRequest.FromString(raw).envelope
        request = decode_request(envelope.body)
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=request_hash(envelope.body),
            responder=BANK,
            status=request_pb2.RESPONSE_STATUS_OK,
        )
        response.answered_at.FromDatetime(datetime.now(UTC))
        holder = response.account_holder
        holder.account_number = request.account_holder.account_number
        holder.account_name = "张伟"
        holder.status = "normal"
        signed = sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE)
        return agency_service_pb2.HandleResponse(response=signed).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "fedgate.v1.AgencyService", {"Handle": grpc.unary_unary_rpc_method_handler(handle)}
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    await server.start()
    return server, port


async def _serve_proxy(fed: Path, node: str) -> tuple[grpc.aio.Server, int]:
    creds = MemberCredentials.load(fed, GATEWAY)
    channel = grpc.aio.secure_channel(
        node, channel_credentials(creds), options=channel_options(BANK)
    )
    forward = channel.unary_unary(_HANDLE, None, None)

    async def submit(raw: bytes, context: Any) -> bytes:
        envelope = gateway_service_pb2.SubmitRequest.FromString(raw).envelope
        handle = agency_service_pb2.HandleRequest(envelope=envelope)
        reply = agency_service_pb2.HandleResponse.FromString(
            await forward(handle.SerializeToString(), timeout=10)
        )
        signed = envelope_pb2.SignedResponse(response=reply.response)
        return gateway_service_pb2.SubmitResponse(response=signed).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "fedgate.v1.GatewayService", {"Submit": grpc.unary_unary_rpc_method_handler(submit)}
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    await server.start()
    return server, port


async def _child_main(kind: str, fed: Path, state: Path, node: str, conn: Any) -> None:
    stop: Callable[[], Any]
    if kind == "node":
        server, port = await _serve_node(fed)
        stop = lambda: server.stop(None)  # noqa: E731
    elif kind == "proxy":
        server, port = await _serve_proxy(fed, node)
        stop = lambda: server.stop(None)  # noqa: E731
    else:
        from gateway.config import GatewayConfig
        from gateway.server import Gateway, settle_heap

        config = GatewayConfig.from_mapping(
            {
                "federation": {"dir": str(fed), "reload_interval_s": 0},
                "pipeline": {"state_dir": str(state)},
                "server": {"listen": "127.0.0.1:0"},
                "routing": {"endpoints": {BANK: node}},
                "quotas": {
                    "officer_per_minute": 1e9,
                    "officer_burst": 10**9,
                    "member_per_minute": 1e9,
                    "member_burst": 10**9,
                },
            },
            env={},
        )
        gateway = await Gateway.start(config)
        settle_heap()  # as ``run_gateway`` does: what is measured is what production runs
        port = gateway.port
        stop = lambda: gateway.stop(1.0)  # noqa: E731
    gc_seconds = _time_collections()
    conn.send(port)
    loop = asyncio.get_running_loop()
    census: LoopCensus | None = None
    while (asked := await loop.run_in_executor(None, conn.recv)) != "stop":
        if asked == "cpu":  # CPU of every thread of the process, gRPC's own included
            conn.send(time.process_time())
        elif asked == "census":  # count loop operations from now on (the counting stays)
            if census is None:
                census = LoopCensus(loop)
            census.on = True
            conn.send(None)
        elif asked == "census-take":
            if census is not None:
                census.on = False
            conn.send(census.take() if census is not None else {})
        elif asked == "gc":  # the collector's CPU
            conn.send(gc_seconds[0])
        elif asked == "diagnose":
            gateway.diagnose_tail(STALL_THRESHOLD_S)
            conn.send(None)
        elif asked == "diagnosis":
            await gateway.stop_diagnosing()
            conn.send(_diagnosis(gateway))
    await stop()


def _diagnosis(gateway: Any) -> dict[str, Any]:
    """What the gateway's tail diagnostics recorded, as plain values for the pipe."""
    d = gateway.diagnostics
    every = d.stages.all()
    slowest = d.stages.slowest(0.01)
    return {
        "stalls": d.loop.count,
        "stalled_s": d.loop.stalled_s,
        "longest": [(s.lag_s, s.cpu_s, s.stack, s.gc_s) for s in d.loop.stalls()[:5]],
        "busy": sum(1 for s in d.loop.stalls()[:5] if s.cpu_s >= s.lag_s / 2),
        "max_running_s": max((s.cpu_s for s in d.loop.stalls()), default=0.0),
        "gc": [(p.generation, p.seconds, p.cpu_s) for p in d.loop.gc_pauses],
        "requests": len(every),
        "all": _stage_means(every),
        "slowest": _stage_means(slowest),
        "slowest_count": len(slowest),
        "slowest_total_s": sum(t.total_s for t in slowest) / max(1, len(slowest)),
    }


def _stage_means(times: list[Any]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for t in times:
        for name, seconds in t.stages:
            sums[name] = sums.get(name, 0.0) + seconds
    return {name: total / max(1, len(times)) for name, total in sums.items()}


def _time_collections() -> list[float]:
    """Time every garbage collection of this process from now on (CPU of the thread that runs
    it); returns the running total, in seconds, as a one-element list."""
    total, started = [0.0], [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            total[0] += time.thread_time() - started[0]

    gc.callbacks.append(timed)
    return total


def _child(kind: str, fed: str, state: str, node: str, conn: Any) -> None:
    asyncio.run(_child_main(kind, Path(fed), Path(state), node, conn))


class _Process:
    def __init__(self, kind: str, fed: Path, state: Path, node: str = "") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_child, args=(kind, str(fed), str(state), node, child), daemon=True
        )
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError(f"the {kind} process did not start")
        self.endpoint = f"127.0.0.1:{self._conn.recv()}"
        self.pid = self._process.pid

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user + system, all threads)."""
        self._conn.send("cpu")
        return float(self._conn.recv())

    def gc_seconds(self) -> float:
        """CPU time the process has spent in garbage collections so far."""
        self._conn.send("gc")
        return float(self._conn.recv())

    def census(self) -> None:
        """Start counting the process's event-loop operations (``LoopCensus``). The counting
        wrappers stay installed: measure no CPU in this process after this."""
        self._conn.send("census")
        self._conn.recv()

    def census_take(self) -> dict[str, int]:
        """Stop counting; the counts since ``census``."""
        self._conn.send("census-take")
        return dict(self._conn.recv())

    def diagnose(self) -> None:
        """Start the gateway's tail diagnostics (``Gateway.diagnose_tail``)."""
        self._conn.send("diagnose")
        self._conn.recv()

    def diagnosis(self) -> dict[str, Any]:
        """Stop them and return what they recorded (``_diagnosis``)."""
        self._conn.send("diagnosis")
        return dict(self._conn.recv())

    def loop_cpu_seconds(self) -> float:
        """CPU time the process's main thread (its event loop) has used so far, from
        ``/proc``: the one thread every request's Python runs on."""
        fields = Path(f"/proc/{self.pid}/task/{self.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- the client ------------------------------------------------------------------------------


class _Envelopes:
    """Fresh signed account-holder queries (new id and nonce each), made ahead of a phase."""

    def __init__(self, fed: Path) -> None:
        self._signer = Signer.from_key(MemberCredentials.load(fed, POLICE).signing_key)
        self._template = valid_request("account_holder", now=datetime.now(UTC))

    def make(self, count: int) -> list[bytes]:
        now = datetime.now(UTC)
        request = request_pb2.Request()
        request.CopyFrom(self._template)
        request.issued_at.FromDatetime(now)
        request.answer_deadline.FromDatetime(now + timedelta(hours=1))
        out = []
        for _ in range(count):
            request.request_id = new_request_id()
            request.nonce = os.urandom(16)
            envelope = sign_envelope(request.SerializeToString(), self._signer, Domain.REQUEST)
            out.append(gateway_service_pb2.SubmitRequest(envelope=envelope).SerializeToString())
        return out


def _channel(fed: Path, endpoint: str) -> grpc.aio.Channel:
    creds = MemberCredentials.load(fed, POLICE)
    return grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(GATEWAY)
    )


async def _closed_loop(
    channel: grpc.aio.Channel, bodies: list[bytes], seconds: float
) -> tuple[int, float]:
    """Calls completed and the time taken, with ``CONCURRENCY`` in flight."""
    call = channel.unary_unary(_SUBMIT, None, None)
    queue = iter(bodies)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        for body in queue:
            if time.perf_counter() >= deadline:
                return
            await call(body, timeout=10)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done, time.perf_counter() - started


async def _open_loop(
    channel: grpc.aio.Channel, bodies: list[bytes], rate: float, seconds: float
) -> tuple[list[float], list[float]]:
    """Latencies (ms) of calls sent every 1/rate seconds for ``seconds``, from each call's
    scheduled time; and how late (ms) the client sent each."""
    call = channel.unary_unary(_SUBMIT, None, None)
    latencies: list[float] = []
    late: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(body: bytes, scheduled: float) -> None:
        late.append((time.perf_counter() - scheduled) * 1000)
        await call(body, timeout=10)
        latencies.append((time.perf_counter() - scheduled) * 1000)

    count = min(len(bodies), int(rate * seconds))
    begin = time.perf_counter()
    for i in range(count):
        scheduled = begin + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(bodies[i], scheduled)))
    await asyncio.gather(*tasks)
    return latencies, late


def _fdatasync_ms(directory: Path, count: int = 300) -> list[float]:
    """Milliseconds of ``count`` fdatasyncs, each after a 2 KiB append to a file in
    ``directory`` (as a WAL commit appends its frames and syncs them)."""
    path = directory / "fdatasync-probe"
    took = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"\0" * 2048)
            started = time.perf_counter()
            os.fdatasync(fd)
            took.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return took


async def _measure(
    quick: bool, fed: Path, state: Path, gateway_process: _Process, proxy_process: _Process
) -> dict[str, tuple[float, str]]:
    gateway, proxy = gateway_process.endpoint, proxy_process.endpoint
    processes = {"gateway": gateway_process, "proxy": proxy_process}
    envelopes = _Envelopes(fed)
    rounds, seconds = (2, 2.0) if quick else (4, 5.0)
    per_phase = int(seconds * (2_000 if quick else 6_000))
    via_gateway, via_proxy = _channel(fed, gateway), _channel(fed, proxy)
    try:
        for channel in (via_proxy, via_gateway):  # warm up connections and caches
            await _closed_loop(channel, envelopes.make(200), 0.5)
        # calls, seconds, process CPU seconds, event-loop thread CPU seconds, GC CPU seconds
        totals = {"gateway": [0, 0.0, 0.0, 0.0, 0.0], "proxy": [0, 0.0, 0.0, 0.0, 0.0]}
        for _ in range(rounds):
            for name, channel in (("proxy", via_proxy), ("gateway", via_gateway)):
                bodies = envelopes.make(per_phase)
                process = processes[name]
                cpu_before, loop_before = process.cpu_seconds(), process.loop_cpu_seconds()
                gc_before = process.gc_seconds()
                done, took = await _closed_loop(channel, bodies, seconds)
                totals[name][4] += process.gc_seconds() - gc_before
                totals[name][0] += done
                totals[name][1] += took
                totals[name][2] += process.cpu_seconds() - cpu_before
                totals[name][3] += process.loop_cpu_seconds() - loop_before
        gateway_qps = totals["gateway"][0] / totals["gateway"][1]
        proxy_qps = totals["proxy"][0] / totals["proxy"][1]
        rate = gateway_qps / 2
        latency_rounds, latency_s, samples = LATENCY_ROUNDS[quick]
        latency_s = max(latency_s, samples / (rate * latency_rounds))
        latency: dict[str, list[float]] = {"gateway": [], "proxy": []}
        late: list[float] = []
        disk_ms = await asyncio.to_thread(_fdatasync_ms, state)
        gateway_process.diagnose()
        for _ in range(latency_rounds):
            for name, channel in (("proxy", via_proxy), ("gateway", via_gateway)):
                bodies = envelopes.make(int(rate * latency_s) + 1)
                latencies, client_late = await _open_loop(channel, bodies, rate, latency_s)
                latency[name] += latencies
                late += client_late
        diagnosis = gateway_process.diagnosis()
    finally:
        await via_gateway.close(None)
        await via_proxy.close(None)
    gateway_cpu_us = totals["gateway"][2] / totals["gateway"][0] * 1e6
    proxy_cpu_us = totals["proxy"][2] / totals["proxy"][0] * 1e6
    gateway_loop_us = totals["gateway"][3] / totals["gateway"][0] * 1e6
    proxy_loop_us = totals["proxy"][3] / totals["proxy"][0] * 1e6
    gateway_ms, proxy_ms = latency["gateway"], latency["proxy"]
    _print_diagnosis(diagnosis)
    slowest = diagnosis["slowest"]
    return {
        "pipeline_efficiency_ratio": (gateway_qps / proxy_qps, "ratio"),
        "pipeline_cpu_ratio": (proxy_cpu_us / gateway_cpu_us, "ratio"),
        "gateway_cpu_us_per_request": (gateway_cpu_us, "us"),
        "proxy_cpu_us_per_request": (proxy_cpu_us, "us"),
        "gateway_loop_cpu_us_per_request": (gateway_loop_us, "us"),
        "proxy_loop_cpu_us_per_request": (proxy_loop_us, "us"),
        "gateway_loop_bound_qps": (1e6 / gateway_loop_us, "req/s"),
        "gateway_gc_cpu_us_per_request": (totals["gateway"][4] / totals["gateway"][0] * 1e6, "us"),
        "pipeline_added_p50_ms": (
            percentile(gateway_ms, 0.50) - percentile(proxy_ms, 0.50),
            "ms",
        ),
        "pipeline_added_p99_ms": (
            percentile(gateway_ms, 0.99) - percentile(proxy_ms, 0.99),
            "ms",
        ),
        "pipeline_latency_samples": (float(min(len(gateway_ms), len(proxy_ms))), "requests"),
        "gateway_latency_p99_ms": (percentile(gateway_ms, 0.99), "ms"),
        "proxy_latency_p99_ms": (percentile(proxy_ms, 0.99), "ms"),
        "client_send_late_p99_ms": (percentile(late, 0.99), "ms"),
        "disk_fdatasync_p50_ms": (percentile(disk_ms, 0.50), "ms"),
        "disk_fdatasync_p99_ms": (percentile(disk_ms, 0.99), "ms"),
        "gateway_loop_stalls": (float(diagnosis["stalls"]), "stalls"),
        "gateway_loop_stall_max_ms": (
            diagnosis["longest"][0][0] * 1000 if diagnosis["longest"] else 0.0,
            "ms",
        ),
        "gateway_loop_stall_max_running_ms": (
            diagnosis["max_running_s"] * 1000,
            "ms",
        ),
        "gateway_slowest_1pct_ms": (diagnosis["slowest_total_s"] * 1000, "ms"),
        "gateway_slowest_1pct_audit_ms": (
            (slowest.get("audit_request", 0.0) + slowest.get("audit_response", 0.0)) * 1000,
            "ms",
        ),
        "gateway_qps": (gateway_qps, "req/s"),
        "proxy_qps": (proxy_qps, "req/s"),
    }


def _print_diagnosis(d: dict[str, Any]) -> None:
    """The slowest 1 % of the gateway's requests stage by stage, and the longest loop stalls."""
    out = sys.stderr
    print(
        f"# gateway tail: {d['requests']} requests timed; the slowest {d['slowest_count']}, "
        f"mean {d['slowest_total_s'] * 1000:.1f} ms in the gateway, stage by stage (ms):",
        file=out,
    )
    print(f"#   {'stage':<16}{'all':>8}{'slowest 1 %':>13}", file=out)
    for name, mean in d["all"].items():
        print(
            f"#   {name:<16}{mean * 1000:>8.2f}{d['slowest'].get(name, 0.0) * 1000:>13.2f}",
            file=out,
        )
    collections = ", ".join(
        f"gen {gen} {took * 1000:.1f} ms ({cpu * 1000:.1f} running)" for gen, took, cpu in d["gc"]
    )
    print(
        f"# loop stalls over {STALL_THRESHOLD_S * 1000:.0f} ms: {d['stalls']} "
        f"({d['stalled_s'] * 1000:.0f} ms in all); collections over it: {collections or 'none'}",
        file=out,
    )
    print(
        f"# of the {len(d['longest'])} longest shown, {d['busy']} ran the loop's thread for at "
        "least half their length (the rest: the thread was not running)",
        file=out,
    )
    for lag, cpu, stack, gc_s in d["longest"]:
        where = " < ".join(stack[:4]) or "(stack not caught)"
        collected = f"; {gc_s * 1000:.1f} ms collecting" if gc_s > 0.0005 else ""
        print(
            f"#   {lag * 1000:.1f} ms ({cpu * 1000:.1f} ms running{collected}): {where}",
            file=out,
        )


def run(quick: bool) -> dict[str, tuple[float, str]]:
    """Measure both paths side by side; see the module docstring for the figures."""
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-pipeline-") as tmp:
        root = Path(tmp)
        fed = init_federation(root / "fed", now=datetime.now(UTC) - timedelta(hours=1))
        node = _Process("node", fed, root / "node")
        proxy = gateway = None
        try:
            proxy = _Process("proxy", fed, root / "proxy", node.endpoint)
            gateway = _Process("gateway", fed, root / "gateway", node.endpoint)
            return asyncio.run(_measure(quick, fed, root / "gateway", gateway, proxy))
        finally:
            for process in (gateway, proxy, node):
                if process is not None:
                    process.stop()


if __name__ == "__main__":
    for figure, (value, unit) in run(quick=True).items():
        print(f"{figure}: {value:.6g} {unit}")
