"""``python -m bench profile``: where the gateway's CPU goes, per request, by component.

Runs the pipeline benchmark's set-up (agency node, gateway, bare proxy, each its own process),
drives the gateway closed-loop while ``py-spy`` samples it, and prints a table: each component's
share of the samples times the gateway's measured CPU per request (from the process's own CPU
time), beside the proxy's CPU per request for the same load. This is the script behind the
breakdown in ``docs/benchmarks.md``.

A sample is charged to the innermost frame that belongs to a known component (so time in the event
loop called from the pipeline counts as event loop); C code (libsodium, SQLite, gRPC's core) is
charged to the Python frame that called it. gRPC's Cython core has no Python frames: its time is
charged to the asyncio callback that runs it (``event loop``).

The CPU is split first by thread, from the main thread's own CPU time (``/proc``): the event
loop's thread (the one that limits throughput) is apportioned by its samples, the other threads'
CPU by theirs. py-spy counts a thread blocked in ``fsync`` as active, so apportioning all CPU by
samples would charge disk waits as CPU; this way they can only move CPU between the worker
threads. Threads without Python frames (gRPC's pollers) appear as ``threads without Python``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_pipeline import _channel, _closed_loop, _Envelopes, _Process
from fedgate.pki import init_federation
from fedgate.render import table

__all__ = ["COMPONENTS", "main"]

COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("telemetry (OpenTelemetry)", ("opentelemetry/", "gateway/telemetry.py")),
    ("Ed25519 (sign, verify)", ("nacl/", "fedgate/keys.py", "cryptography/")),
    ("replay cache", ("gateway/replay.py",)),
    (
        "audit log (encode, commit, tree, checkpoint)",
        (
            "gateway/audit/",
            "fedgate/audit_entry.py",
            "fedgate/merkle.py",
            "fedgate/note.py",
            "fedgate/checkpoint.py",
            "sqlite3/",
        ),
    ),
    ("policy and rules", ("gateway/policy/", "gateway/rules.py", "gateway/quotas.py")),
    ("validation", ("gateway/pipeline/validation.py", "gateway/pipeline/_fields.py", "validate")),
    ("protobuf", ("google/protobuf/",)),
    ("gRPC (Python side)", ("grpc/", "grpc_")),
    ("event loop (asyncio)", ("asyncio/",)),
    ("pipeline glue (gateway)", ("gateway/",)),
)
RATE_HZ = 200
OTHER = "other"
GC = "  of which garbage collection (gc.callbacks)"
COVERAGE = "loop thread: sampled as running ÷ its CPU time"
"""Over 1, py-spy (``--nonblocking``: it cannot ask the OS whether a thread runs, so it
guesses from the frame) counted the loop's thread as running while it waited: for the GIL
after a call that released it (gRPC's core, libsodium, sockets), or for a CPU after waking
another thread or process. Those waits are charged to the frame they happened in, mostly
``_run (asyncio/events.py)`` (gRPC's Cython has no Python frames): the ``event loop`` row is
then too large and the others too small. Read the split only when this is near 1 (a quiet
machine); ``--census`` counts the loop's operations themselves."""
NATIVE = "threads without Python (gRPC core)"


def _component(stack: str) -> str:
    """The component of the innermost frame that belongs to one (py-spy raw: root;…;leaf)."""
    for frame in reversed(stack.split(";")):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


def _on_main_thread(stack: str) -> bool:
    """Whether a py-spy stack is the process's main thread (the event loop's), not a worker's."""
    return not stack.startswith("_bootstrap (threading.py")


def _read_raw(path: Path) -> tuple[dict[bool, Counter[str]], Counter[str]]:
    """Samples per component (keyed by ``_on_main_thread``) and per innermost frame from a
    py-spy ``--format raw`` file."""
    counts: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    leaves: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[_on_main_thread(stack)][_component(stack)] += int(count)
            leaves[stack.rsplit(";", 1)[-1]] += int(count)
    return counts, leaves


async def _drive(
    fed: Path, endpoint: str, seconds: float, *, warmed: Callable[[], None] | None = None
) -> int:
    """A closed loop of ``seconds`` on one channel after a warm-up on it; the requests done.
    ``warmed`` is called between the two (the census starts counting there), so the counted
    load reuses the warm-up's connection, as the measured one does."""
    envelopes = _Envelopes(fed)
    channel = _channel(fed, endpoint)
    try:
        await _closed_loop(channel, envelopes.make(200), 0.5)  # warm up
        bodies = envelopes.make(int(seconds * 4000))
        if warmed is not None:
            warmed()
        done, _ = await _closed_loop(channel, bodies, seconds)
    finally:
        await channel.close(None)
    return done


class _Sampled:
    """One process's CPU per request by component, from py-spy and its threads' CPU times."""

    def __init__(self, py_spy: str, process: _Process, raw: Path) -> None:
        self._process, self._raw = process, raw
        command = [py_spy, "record", "--pid", str(process.pid), "--format", "raw"]
        command += ["--rate", str(RATE_HZ), "--nonblocking", "--output", str(raw)]
        self._sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._cpu = process.cpu_seconds()
        self._main = process.loop_cpu_seconds()
        self._gc = process.gc_seconds()

    def finish(self, done: int) -> tuple[dict[str, float], float, float, Counter[str]]:
        """Per component, the event loop's thread and the whole process (µs per request), and
        the samples per innermost frame. The garbage collector's CPU (timed by the process)
        is under ``GC``: its samples are also in the components whose allocations set it off.
        ``COVERAGE``: the loop thread's samples (as seconds at ``RATE_HZ``) ÷ its CPU seconds."""
        main_s = self._process.loop_cpu_seconds() - self._main
        main_us = main_s / done * 1e6
        total_us = (self._process.cpu_seconds() - self._cpu) / done * 1e6
        gc_us = (self._process.gc_seconds() - self._gc) / done * 1e6
        self._sampler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        _, errors = self._sampler.communicate(timeout=30)
        if not self._raw.exists():
            raise SystemExit(f"py-spy recorded nothing: {errors.decode(errors='replace')}")
        counts, leaves = _read_raw(self._raw)
        others_us = max(0.0, total_us - main_us)  # threads that ended count in the total only
        us: dict[str, float] = defaultdict(float)
        for on_main, share_of in ((True, main_us), (False, others_us)):
            samples = sum(counts[on_main].values())
            if not samples:
                us[NATIVE] += share_of
                continue
            for name, n in counts[on_main].items():
                us[name] += share_of * n / samples
        us[GC] = gc_us
        us[COVERAGE] = sum(counts[True].values()) / RATE_HZ / main_s if main_s > 0 else 0.0
        return us, main_us, total_us, leaves


def profile(
    seconds: float, top: int = 0, keep: Path | None = None, census: float = 0.0
) -> tuple[list[list[str]], list[list[str]]]:
    """Run, sample both processes, and return the table's rows (and print the gateway's ``top``
    hottest frames; copy the gateway's raw py-spy stacks to ``keep``); with ``census`` seconds,
    then count both loops' operations per request under the same load (the census table's
    rows, else none)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: run `make setup` (it is a dev dependency)")
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-profile-") as tmp:
        root = Path(tmp)
        fed = init_federation(root / "fed", now=datetime.now(UTC) - timedelta(hours=1))
        node = _Process("node", fed, root / "node")
        proxy = gateway = None
        try:
            proxy = _Process("proxy", fed, root / "proxy", node.endpoint)
            gateway = _Process("gateway", fed, root / "gateway", node.endpoint)
            sampled = _Sampled(py_spy, proxy, root / "proxy.raw")
            of_proxy = sampled.finish(asyncio.run(_drive(fed, proxy.endpoint, seconds)))
            sampled = _Sampled(py_spy, gateway, root / "gateway.raw")
            of_gateway = sampled.finish(asyncio.run(_drive(fed, gateway.endpoint, seconds)))
            if keep is not None:
                shutil.copyfile(root / "gateway.raw", keep)
            counted = [_census(fed, p, census) for p in (gateway, proxy)] if census > 0 else []
        finally:
            for process in (gateway, proxy, node):
                if process is not None:
                    process.stop()
    us, main_us, gateway_us, leaves = of_gateway
    proxy_by, proxy_main, proxy_us, _ = of_proxy
    proxy_by = defaultdict(float, proxy_by)
    total = sum(leaves.values()) or 1
    for frame, n in leaves.most_common(top):
        print(f"{100 * n / total:5.1f} %  {frame}")
    rows = [
        [name, f"{us[name]:,.0f}", f"{100 * us[name] / gateway_us:.0f} %", f"{proxy_by[name]:,.0f}"]
        for name in sorted(us, key=lambda name: -us[name])
        if name not in (GC, COVERAGE)
    ]
    rows.append(["all components", f"{gateway_us:,.0f}", "100 %", f"{proxy_us:,.0f}"])
    rows.append([GC, f"{us[GC]:,.0f}", "", f"{proxy_by[GC]:,.0f}"])
    rows.append(["  of which the event loop's thread", f"{main_us:,.0f}", "", f"{proxy_main:,.0f}"])
    rows.append(["pipeline_cpu_ratio (proxy ÷ gateway)", f"{proxy_us / gateway_us:.2f}", "", ""])
    rows.append([COVERAGE, f"{us[COVERAGE]:.2f}", "", f"{proxy_by[COVERAGE]:.2f}"])
    return rows, _census_rows(*counted) if counted else []


def _census(fed: Path, process: _Process, seconds: float) -> dict[str, float]:
    """``process``'s loop operations per request over a closed loop of ``seconds`` (after its
    CPU was measured: the counting stays installed)."""
    done = asyncio.run(_drive(fed, process.endpoint, seconds, warmed=process.census))
    return {name: n / max(1, done) for name, n in process.census_take().items()}


def _census_order(name: str) -> tuple[str, str]:
    """Rows by name, each coroutine's row (``"  task <name>"``) under the ``tasks`` row."""
    return ("tasks", name) if name.startswith("  task ") else (name, "")


def _census_rows(gateway: dict[str, float], proxy: dict[str, float]) -> list[list[str]]:
    names = sorted(set(gateway) | set(proxy), key=_census_order)
    return [
        [name, f"{gateway.get(name, 0.0):.2f}", f"{proxy.get(name, 0.0):.2f}"]
        for name in names
        if max(gateway.get(name, 0.0), proxy.get(name, 0.0)) >= 0.01
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per side")
    parser.add_argument("--top", type=int, default=0, help="also print the N hottest frames")
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw stacks here")
    parser.add_argument(
        "--census",
        type=float,
        default=0.0,
        metavar="S",
        help="then count each loop's operations per request over S seconds of load",
    )
    args = parser.parse_args(argv)
    rows, census = profile(args.seconds, args.top, args.raw, args.census)
    header = ["component", "gateway µs/request", "share", "proxy µs/request"]
    print("\n".join(table(header, rows)))
    if census:
        print()
        print(
            "\n".join(
                table(["event-loop operations", "gateway /request", "proxy /request"], census)
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
