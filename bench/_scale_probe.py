"""One fresh process measuring the gateway's log over a big cached log (``bench_scale``).

``python -m bench._scale_probe DB EXCHANGES`` prints one JSON object: start-up time and peak RSS
right after ``AuditLog.open``, proof times (inclusion + consistency at random points, read from
the store's tiles with a cold cache), and durable appends/s at 256 appenders on the big log and,
in the same process just before, on an empty one.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._biglog import ORIGIN, bench_signer
from bench.bench_audit import _appends, _sqlite_opener
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


async def _main(db: Path, exchanges: int) -> dict[str, float]:
    figures = await _open_and_prove(db)
    signer = bench_signer()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        empty, _ = await _appends(_sqlite_opener(Path(tmp)), signer, 256, exchanges)

    async def big() -> object:
        return await open_sqlite_store(db, origin=ORIGIN)

    loaded, _ = await _appends(big, signer, 256, exchanges)  # type: ignore[arg-type]
    figures["appends_empty"] = empty
    figures["appends_big"] = loaded
    return figures


def main() -> int:
    db, exchanges = Path(sys.argv[1]), int(sys.argv[2])
    print(json.dumps(asyncio.run(_main(db, exchanges))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
