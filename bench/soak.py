"""``make bench SOAK=1``: the whole federation at 70 % of its measured peak for ten minutes.

The federation is the one ``fedgate up`` starts (gateway, four banks, three carriers, two
witnesses, each its own process) in a temporary directory on free ports. The client, in this
process, signs queries as ``police.gd.afc``: ``account_holder`` at every bank and ``subscriber``
at every carrier, over accounts and numbers that exist in the seeded world.

1. Peak: closed loop with ``CONCURRENCY`` in flight for ``PEAK_S`` seconds.
2. Soak: open loop at 70 % of that peak for ``FEDGATE_SOAK_SECONDS`` (default 600), requests
   sent on a fixed schedule. Every answer must be a signed OK; anything else (a gRPC error, a
   refusal, another status) is an error.
3. Memory: the resident set (``VmRSS``) of the gateway and of every node, sampled every five
   seconds (each point the median of three samples). The gateway keeps every request id, and
   the outcome of every request for safe retries, for the replay window (``gateway.replay``):
   a one-time fill that lasts one window. With the default window (15 minutes) a ten-minute
   soak would see nothing but that fill, so the soak runs the gateway with a two-minute window
   (and a one-minute clock skew: the window must be at least twice the skew). The warm-up is
   the first quarter of the soak, and at least one window plus two pruning intervals (three
   minutes), so that fill is over when the measurement starts. Other caches are bounded by size
   only and fill as fast as the log grows (the audit log's SQLite page caches, up to 64 MiB for
   the writer and 32 MiB per reader); their fill can outlast the warm-up, which the halves
   below show. The figure for the nodes is the largest of them.

- ``soak_errors`` (goal 0), ``soak_requests``, ``soak_rate_per_s``, ``soak_peak_per_s``;
- ``soak_gateway_rss_growth_pct``, ``soak_nodes_rss_growth_pct`` (goal ≤ 5 each): from the end
  of the warm-up to the end;
- ``…_rss_growth_first_half_pct`` and ``…_rss_growth_second_half_pct``: the same growth split
  at the middle of the measurement window. A fill that was not over shows in the first half
  only; a leak shows in both, about equally;
- ``…_rss_fill_pct``: the growth during the warm-up (the caches filling), for the record;
- ``soak_gateway_rss_mib``: the gateway's resident set at the end.

The gateway's quotas and its replay window are set through its environment
(``FEDGATE_GATEWAY__…``): the default quotas would rightly refuse a sustained load from one
officer.

Diagnostics, off unless set: ``FEDGATE_SOAK_PROBE=FILE`` appends the processes' resident sets
by mapping and the sizes of every SQLite WAL and WAL index to ``FILE`` (``bench._soak_probe``,
which also summarises such a file); ``FEDGATE_SOAK_TRACEMALLOC=DIR`` traces the gateway's Python
allocations into ``DIR`` (``bench/_soak_site/sitecustomize.py``; it slows the gateway, so a
traced run's figures are not the soak's).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio

from adapters.up import prepare_state, start, stop, wait_healthy
from bench._soak_probe import PROBE_EVERY_S, Probe
from fedgate.envelope import Domain, Signer, decode_response, sign_envelope
from fedgate.federation import MemberKind
from fedgate.registry import Registry
from fedgate.testing import valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, gateway_service_pb2, request_pb2

__all__ = ["run"]

POLICE = MemberId("police.gd.afc")
GATEWAY = MemberId("gateway")
CONCURRENCY = 16
PEAK_S = 15.0
SHARE_OF_PEAK = 0.7
SAMPLE_EVERY_S = 5.0
REPLAY_WINDOW_S = 120.0
WARMUP_SHARE = 0.25
WARMUP_AT_LEAST_S = REPLAY_WINDOW_S + 2 * 30.0  # one window and two pruning intervals
_SUBMIT = "/fedgate.v1.GatewayService/Submit"
_QUOTAS = {
    "FEDGATE_GATEWAY__QUOTAS__OFFICER_PER_MINUTE": "1000000000",
    "FEDGATE_GATEWAY__QUOTAS__OFFICER_BURST": "1000000000",
    "FEDGATE_GATEWAY__QUOTAS__MEMBER_PER_MINUTE": "1000000000",
    "FEDGATE_GATEWAY__QUOTAS__MEMBER_BURST": "1000000000",
    "FEDGATE_GATEWAY__PIPELINE__REPLAY_WINDOW_S": str(REPLAY_WINDOW_S),
    "FEDGATE_GATEWAY__PIPELINE__CLOCK_SKEW_S": str(REPLAY_WINDOW_S / 2),
}


def _say(message: str) -> None:
    print(f"#   {message}", file=sys.stderr, flush=True)


def _column(database: Path, query: str, limit: int) -> list[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute(query, (limit,))]
    finally:
        conn.close()


class _Requests:
    """Freshly signed queries (new id and nonce each), round robin over banks and carriers."""

    def __init__(self, fed: Path, targets: list[tuple[str, str, list[str]]]) -> None:
        self._signer = Signer.from_key(MemberCredentials.load(fed, POLICE).signing_key)
        self._targets = targets
        self._rng = random.Random(7)
        self._serial = 0

    def make(self, count: int) -> list[bytes]:
        now = datetime.now(UTC)
        out = []
        for _ in range(count):
            self._serial += 1
            target, action, subjects = self._targets[self._serial % len(self._targets)]
            subject = self._rng.choice(subjects)
            request = valid_request(
                action,
                now=now,
                target=target,
                serial=self._serial,
                account_number=subject if action == "account_holder" else None,
                phone_number=subject if action == "subscriber" else None,
            )
            request.answer_deadline.FromDatetime(now + timedelta(minutes=30))
            envelope = sign_envelope(request.SerializeToString(), self._signer, Domain.REQUEST)
            out.append(gateway_service_pb2.SubmitRequest(envelope=envelope).SerializeToString())
        return out


def _is_ok(raw: bytes) -> bool:
    reply = gateway_service_pb2.SubmitResponse.FromString(raw)
    if not reply.HasField("response"):
        return False
    signed: envelope_pb2.SignedEnvelope = reply.response.response
    return decode_response(signed.body).status == request_pb2.RESPONSE_STATUS_OK


async def _peak(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], requests: _Requests) -> float:
    bodies = iter(requests.make(int(PEAK_S * 1500)))
    done = 0
    deadline = time.perf_counter() + PEAK_S

    async def worker() -> None:
        nonlocal done
        for body in bodies:
            if time.perf_counter() >= deadline:
                return
            await call(body, timeout=30)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _soak(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    requests: _Requests,
    rate: float,
    seconds: float,
    pids: dict[str, int],
    probe: Probe | None,
) -> tuple[int, int, dict[str, list[int]]]:
    errors = 0
    sent = 0
    samples: dict[str, list[int]] = {name: [] for name in pids}
    tasks: set[asyncio.Task[None]] = set()

    async def one(body: bytes) -> None:
        nonlocal errors
        try:
            if not _is_ok(await call(body, timeout=30)):
                errors += 1
        except grpc.aio.AioRpcError:
            errors += 1

    begin = time.perf_counter()
    next_sample = begin
    next_probe = begin
    batch: list[bytes] = []
    total = int(rate * seconds)
    for i in range(total):
        if not batch:
            batch = requests.make(min(500, total - i))
            batch.reverse()
        now = time.perf_counter()
        if now >= next_sample:
            for name, pid in pids.items():
                samples[name].append(_rss_kib(pid))
            next_sample += SAMPLE_EVERY_S
            _say(f"{now - begin:5.0f} s: {sent} sent, {errors} errors")
        if probe is not None and now >= next_probe:
            probe.sample(sent)
            next_probe += PROBE_EVERY_S
        delay = begin + i / rate - now
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(batch.pop()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*tasks)
    for name, pid in pids.items():
        samples[name].append(_rss_kib(pid))
    if probe is not None:
        probe.sample(sent)
    return sent, errors, samples


def _point(series: list[int], i: int) -> float:
    """The resident set at sample ``i``: the median of it and its neighbours (RSS is noisy)."""
    return statistics.median(series[max(0, i - 1) : i + 2])


def _growth(series: list[int], start: int, end: int) -> float:
    """Growth from sample ``start`` to sample ``end``, in per cent of the former."""
    return (_point(series, end) - _point(series, start)) / _point(series, start) * 100


def _memory(series: list[int], warmup: int) -> dict[str, float]:
    """The figures of one process's RSS series (see the module): the fill during the first
    ``warmup`` samples, then the growth after it, overall and by halves."""
    last = len(series) - 1
    warmup = min(warmup, last // 2)
    middle = (warmup + last) // 2
    return {
        "fill": _growth(series, 0, warmup),
        "growth": _growth(series, warmup, last),
        "first_half": _growth(series, warmup, middle),
        "second_half": _growth(series, middle, last),
    }


def run(quick: bool) -> dict[str, tuple[float, str]]:
    """The soak; ``quick`` shortens it to 60 s (a smoke run, not the figure)."""
    seconds = float(os.environ.get("FEDGATE_SOAK_SECONDS", "60" if quick else "600"))
    os.environ.update(_QUOTAS)
    if os.environ.get("FEDGATE_SOAK_TRACEMALLOC"):  # see bench/_soak_site/sitecustomize.py
        site = str(Path(__file__).with_name("_soak_site"))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (site, os.environ.get("PYTHONPATH")) if p
        )
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-soak-") as tmp:
        federation = prepare_state(Path(tmp) / "state", progress=_say, free_ports=True)
        world = federation.world
        targets: list[tuple[str, str, list[str]]] = []
        for bank in world.banks:
            accounts = _column(
                world.database(bank),
                "SELECT account_number FROM accounts WHERE status = 'active' LIMIT ?",
                500,
            )
            targets.append((bank, "account_holder", accounts))
        for carrier in world.carriers:
            numbers = _column(
                world.database(carrier),
                "SELECT number FROM subscribers WHERE state = 'active' LIMIT ?",
                500,
            )
            targets.append((carrier, "subscriber", numbers))
        children = start(federation)
        try:
            asyncio.run(wait_healthy(federation, children, timeout=90, progress=_say))
            pids = {
                str(spec.member): child.pid
                for spec, child in zip(federation.processes, children, strict=True)
                if spec.kind in (MemberKind.GATEWAY, MemberKind.BANK, MemberKind.CARRIER)
            }
            probe_to = os.environ.get("FEDGATE_SOAK_PROBE")
            probe = Probe(Path(probe_to), Path(tmp), pids) if probe_to else None
            return asyncio.run(_measure(federation.federation_dir, targets, seconds, pids, probe))
        finally:
            stop(children)


async def _measure(
    fed: Path,
    targets: list[tuple[str, str, list[str]]],
    seconds: float,
    pids: dict[str, int],
    probe: Probe | None,
) -> dict[str, tuple[float, str]]:
    gateway = next(iter(pids))
    creds = MemberCredentials.load(fed, POLICE)
    endpoint = Registry.load_dir(fed).member(GATEWAY).endpoint
    channel = grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(GATEWAY)
    )
    try:
        call = channel.unary_unary(_SUBMIT, None, None)
        requests = _Requests(fed, targets)
        _say(f"measuring the peak for {PEAK_S:.0f} s ({CONCURRENCY} in flight)")
        peak = await _peak(call, requests)
        rate = SHARE_OF_PEAK * peak
        _say(f"peak {peak:.0f} req/s; soaking at {rate:.0f} req/s for {seconds:.0f} s")
        sent, errors, samples = await _soak(call, requests, rate, seconds, pids, probe)
    finally:
        await channel.close(None)
    warmup = int(max(WARMUP_SHARE * seconds, WARMUP_AT_LEAST_S) / SAMPLE_EVERY_S)
    figures = {name: _memory(series, warmup) for name, series in samples.items()}
    nodes = [figures[name] for name in samples if name != gateway]
    out = {
        "soak_peak_per_s": (peak, "req/s"),
        "soak_rate_per_s": (rate, "req/s"),
        "soak_seconds": (seconds, "s"),
        "soak_requests": (float(sent), "requests"),
        "soak_errors": (float(errors), "errors"),
        "soak_gateway_rss_mib": (samples[gateway][-1] / 1024, "MiB"),
    }
    for key, suffix in (
        ("growth", ""),
        ("first_half", "_first_half"),
        ("second_half", "_second_half"),
        ("fill", "_fill"),
    ):
        name = "fill_pct" if key == "fill" else f"growth{suffix}_pct"
        out[f"soak_gateway_rss_{name}"] = (figures[gateway][key], "%")
        out[f"soak_nodes_rss_{name}"] = (max(node[key] for node in nodes), "%")
    return out


if __name__ == "__main__":
    for figure, (value, unit) in run(quick=True).items():
        print(f"{figure}: {value:.6g} {unit}")
