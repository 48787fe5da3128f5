"""The reference bank at scale: holder lookups and 30-day window queries.

Builds one bank with 1,000,000 accounts and 10,000,000 postings (quick: 100,000 and 1,000,000)
through the generator's bulk path, once, and keeps it under the system's temporary directory for
later runs. ``bank_build_s`` is reported only by a run that built the database (a figure read from
an earlier run is not this run's measurement). ``bank_holder_lookups_per_s`` is sequential
``account_holder`` calls on random accounts; ``bank_window_query_p99_ms`` is the 99th percentile
latency of the first page (100 postings) of a random account's transactions in a random 30-day
window. ``synth_world_default_s`` is the CPU time of ``seed_world`` at its default size (four
banks, three carriers, fraud chains), the figure that replaced a timed assertion in the tests.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.bank.reference import ReferenceBank
from adapters.synth import seed_bank_bulk, seed_world
from fedgate.testing import percentile

__all__ = ["run"]

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # fixed, so that a cached database stays valid
BANK = "bank.icbc"
HISTORY_DAYS = 180
CACHE = Path(tempfile.gettempdir()) / "fedgate-bench"


def _say(message: str) -> None:
    print(f"#   {message}", file=sys.stderr, flush=True)


def _bank(accounts: int, transactions: int) -> tuple[Path, float | None]:
    """The cached database of that size (built now if missing) and, if built now, the time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"bank-{accounts}-{transactions}.sqlite"
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        earlier = float(json.loads(sidecar.read_text())["build_s"])
        _say(f"reusing {path} (built in {earlier:.1f} s by an earlier run; not reported)")
        return path, None
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _say(f"building {path} ({accounts:,} accounts, {transactions:,} transactions)")
    built = seed_bank_bulk(
        partial,
        bank_id=BANK,
        accounts=accounts,
        transactions=transactions,
        now=NOW,
        history_days=HISTORY_DAYS,
        progress=_say,
    )
    partial.rename(path)
    sidecar.write_text(json.dumps({"build_s": built.seconds}))
    _say(f"built in {built.seconds:.1f} s")
    return path, built.seconds


def _sample_accounts(path: Path, count: int, rng: random.Random) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        (total,) = conn.execute("SELECT MAX(id) FROM accounts").fetchone()
        ids = [rng.randint(1, total) for _ in range(count)]
        return [
            conn.execute("SELECT account_number FROM accounts WHERE id = ?", (i,)).fetchone()[0]
            for i in ids
        ]
    finally:
        conn.close()


def run(quick: bool) -> dict[str, tuple[float, str]]:
    accounts, transactions = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    lookups, windows = (2_000, 500) if quick else (20_000, 3_000)
    path, build_s = _bank(accounts, transactions)
    rng = random.Random(1)
    with ReferenceBank(path=path, bank_id=BANK, clock=lambda: NOW) as bank:
        numbers = _sample_accounts(path, lookups + windows, rng)
        for number in numbers[:200]:  # warm up the connection and the page cache
            bank.account_holder(number)
        started = time.perf_counter()
        for number in numbers[:lookups]:
            bank.account_holder(number)
        lookups_per_s = lookups / (time.perf_counter() - started)

        latencies: list[float] = []
        span = timedelta(days=30)
        for number in numbers[lookups:]:
            end = NOW - timedelta(seconds=rng.randrange((HISTORY_DAYS - 30) * 86_400))
            t0 = time.perf_counter()
            bank.transactions(number, end - span, end, page_size=100, page_token="")
            latencies.append(time.perf_counter() - t0)
    p99 = percentile(latencies, 0.99)
    p50 = percentile(latencies, 0.5)
    with tempfile.TemporaryDirectory() as world_dir:
        cpu = time.process_time()  # CPU, not wall: the machine is shared
        seed_world(Path(world_dir), now=NOW)
        world_s = time.process_time() - cpu
    built = {} if build_s is None else {"bank_build_s": (build_s, "s")}
    return built | {
        "synth_world_default_s": (world_s, "s"),
        "bank_holder_lookups_per_s": (lookups_per_s, "1/s"),
        "bank_window_query_p50_ms": (p50 * 1e3, "ms"),
        "bank_window_query_p99_ms": (p99 * 1e3, "ms"),
    }
