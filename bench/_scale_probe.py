"""One fresh process measuring the gateway's log over a big cached log (``bench_scale``).

``python -m bench._scale_probe DB EXCHANGES ROUNDS`` prints one JSON object: start-up time and
peak RSS right after ``AuditLog.open``, proof times (inclusion + consistency at random points,
read from the store's tiles with a cold cache), and durable appends/s at 256 appenders on an
empty log and on the big one, interleaved ``ROUNDS`` times in this process
(``bench_audit._big_appends``: one round each was at the mercy of a catch-up or a WAL
checkpoint falling in one side's run), with this process's CPU time per append on each.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

from bench._biglog import ORIGIN, bench_signer
from bench.bench_audit import _big_appends
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import open_sqlite_store

__all__ = ["main"]


def _peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (``ru_maxrss`` would report the parent's peak, which
    Linux carries across the fork and exec that started this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _open_and_prove(db: Path) -> dict[str, float]:
    started = time.perf_counter()
    store = await open_sqlite_store(db, origin=ORIGIN)
    log = await AuditLog.open(store=store, origin=ORIGIN, signer=bench_signer())
    startup = time.perf_counter() - started
    rss_mb = _peak_rss_mb()
    rng = random.Random(5)
    size = log.size
    times = []
    for _ in range(200):
        index = rng.randrange(size)
        old = rng.randrange(1, size)
        t0 = time.perf_counter()
        log.inclusion_proof(index, size)
        log.consistency_proof(old, size)
        times.append(time.perf_counter() - t0)
    await log.close()
    return {
        "size": float(size),
        "startup_s": startup,
        "rss_mb": rss_mb,
        "prove_ms": statistics.median(times) * 1000,
        "prove_p99_ms": statistics.quantiles(times, n=100)[98] * 1000,
    }


async def _main(db: Path, exchanges: int, rounds: int) -> dict[str, float]:
    figures = await _open_and_prove(db)
    t = await _big_appends(db, rounds, exchanges)
    figures["appends_empty"] = t["n"] / t["empty_s"]
    figures["appends_big"] = t["n"] / t["big_s"]
    figures["append_cpu_us_empty"] = 1e6 * t["empty_cpu"] / t["n"]
    figures["append_cpu_us_big"] = 1e6 * t["big_cpu"] / t["n"]
    return figures


def main() -> int:
    db, exchanges, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(_main(db, exchanges, rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
