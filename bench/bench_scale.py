"""The audit log at national scale: a 10 M-entry log (200 k with ``--quick``) built once and kept
in ``bench/.cache/`` (git-ignored) between runs; building it is resumable.

- ``audit_startup_s_10m``, ``audit_rss_mb_10m``: ``AuditLog.open`` in a fresh process (peak RSS
  right after opening);
- ``audit_prove_ms_10m``: one inclusion plus one consistency proof at random points, read from
  the store's tiles (median; ``_p99`` too);
- ``audit_search_p99_ms_10m``: first pages (51 rows) of searches by officer, case, request id,
  target, action, outcome and a one-hour and a one-day time window (p99 over 160 searches);
  ``audit_search_pages_p99_10m``: the pages each of those reads into an empty page cache of its
  own (p99), what a search costs cold whatever the disk does; ``audit_search_subject_p99_ms_10m``
  and ``audit_search_subject_pages_10m`` (median): first pages by a subject (an account or
  number) of 20 entries, the key that is rarest and seeks every key block;
- ``console_charts_ms_10m``: the console's charts for a 30-day window (three per-day charts and
  the refusal reasons), from the rollups;
- ``audit_appends_per_s_sqlite_10m`` and ``audit_appends_per_s_sqlite_empty``: 256 appenders
  on the big log and on an empty one in the same process, interleaved four times (twice with
  ``--quick``; an even count, the sides taking turns going first), and their ratio
  ``audit_appends_ratio_10m``; ``audit_append_cpu_us_10m`` /
  ``_empty_10m`` the process's CPU per append on each and ``audit_appends_cpu_ratio_10m``
  (empty ÷ big). Each run appends its exchanges to the cached log.
  ``audit_appends_key_block_fill_10m``: how many leaves the log's newest key block held when
  the appends began; the catch-up's cost on the big log grows with it (docs/benchmarks.md).
- ``audit_disk_bytes_per_entry_10m``: the database's pages in use (indexes included) per
  entry, and ``audit_note_bytes_per_entry_10m``: the signed notes kept (history and heads)
  per entry.

``BENCH_SCALE_ENTRIES`` overrides the size (for measuring a partly built log). The log is
built by ``bench._biglog``'s bulk loader (about 100 µs of CPU per entry over three processes),
which keeps a record of the wall seconds its build took over every run:
``audit_scale_build_s``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench._biglog import build_record, cached_log, write_log
from bench.bench_audit import APPEND_ROUNDS, APPEND_ROUNDS_QUICK, key_block_fill
from fedgate.errors import AuditUnavailable
from gateway.audit._migrate import migrate
from gateway.audit.insights import LogInsights, TimeWindow, day_of, day_start_us
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import SearchQuery

__all__ = ["run"]


def _queries(db: SqliteDatabase) -> tuple[list[SearchQuery], list[SearchQuery]]:
    """First pages of each search kind on values taken from the log, and of a subject (an
    account or number, as an auditor looks one up) for each of the same entries."""
    rng = random.Random(3)
    size = db.next_index()
    samples = [
        db.search(SearchQuery(after_index=rng.randrange(size) - 1, limit=1))[0] for _ in range(20)
    ]
    last = samples[0].columns[2]
    queries: list[SearchQuery] = []
    for hit in samples:
        c = hit.columns
        queries += [
            SearchQuery(officer_id=c[4], limit=51),
            SearchQuery(case_number=c[5], limit=51),
            SearchQuery(request_id=c[1], limit=51),
            SearchQuery(target=c[7], limit=51),
            SearchQuery(action=c[6], limit=51),
            SearchQuery(outcome=c[8], limit=51),
            SearchQuery(since_us=c[2], until_us=c[2] + 3_600_000_000, limit=51),
        ]
        last = max(last, c[2])
    queries += [
        SearchQuery(since_us=last - 86_400_000_000, until_us=last, limit=51, newest_first=True)
        for _ in range(20)
    ]
    subjects = [SearchQuery(subject=hit.columns[10][0], limit=51) for hit in samples]
    return queries, subjects


def _timed(db: SqliteDatabase, queries: list[SearchQuery]) -> list[float]:
    """Seconds per search, one reader for all (its page cache warms as it goes)."""
    times = []
    for q in queries:
        t0 = time.perf_counter()
        db.search(q)
        times.append(time.perf_counter() - t0)
    return times


def _read_syscalls() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no syscr line")


def _page_reads(path: Path, queries: list[SearchQuery]) -> list[int]:
    """Pages each search reads into an empty page cache of its own (a fresh reader; SQLite reads
    one page per read call): what a search costs when cold, whatever the OS has cached, so it
    does not swing with the disk as the times do."""
    reads = []
    for q in queries:
        db = SqliteDatabase(path, origin=None, writer=False)
        try:
            before = _read_syscalls()
            db.search(q)
            reads.append(_read_syscalls() - before)
        finally:
            db.close()
    return reads


async def _charts(path: Path) -> float:
    insights = await LogInsights.open(path)
    try:
        today = day_of(int(datetime.now(UTC).timestamp() * 1_000_000))
        window = TimeWindow(
            day_start_us(today - timedelta(days=29)), day_start_us(today + timedelta(days=1))
        )
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for by in ("requester", "target", "action"):
                await insights.per_day(window, by)
            await insights.refusals(window)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)
    finally:
        await insights.close()


def _disk(path: Path, size: int) -> tuple[float, float]:
    """Bytes per entry: the database's pages in use (the free pages a bulk load's staging left
    are reused by later appends), and the signed notes it keeps."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        (used,) = con.execute(
            "SELECT (SELECT page_count FROM pragma_page_count())"
            " - (SELECT freelist_count FROM pragma_freelist_count())"
        ).fetchone()
        (page,) = con.execute("PRAGMA page_size").fetchone()
        (notes,) = con.execute(
            "SELECT (SELECT COALESCE(SUM(LENGTH(note)), 0) FROM checkpoints)"
            " + (SELECT COALESCE(SUM(LENGTH(note)), 0) FROM cosigned)"
            " + (SELECT COALESCE(SUM(LENGTH(note)), 0) FROM heads)"
        ).fetchone()
    finally:
        con.close()
    return int(used) * int(page) / size, int(notes) / size


def run(quick: bool) -> dict[str, tuple[float, str]]:
    path, entries = cached_log(quick)
    try:
        started = time.perf_counter()
        built = write_log(path, entries, progress=True)
        db = SqliteDatabase(path, origin=None, writer=True)
        try:
            done = migrate(db, after_chunk=lambda _d, _t: db.checkpoint_wal())
            db.checkpoint_wal()
            tiers_started = time.perf_counter()
            tiers = db.settle_key_tiers()  # what the writer builds behind the projection
            print(
                f"  key tiers {tiers} ready in {time.perf_counter() - tiers_started:.1f} s",
                file=sys.stderr,
            )
        finally:
            db.close()
        prepared = time.perf_counter() - started
    except AuditUnavailable as exc:
        print(
            f"  the scale log is not available ({exc.message}); no scale figures", file=sys.stderr
        )
        return {}
    record = build_record(path)
    print(
        f"  scale log {path.name}: {done.entries:,} entries ready ({built:.0f} s writing, "
        f"{prepared:.0f} s with catch-up of {done.rollups_backfilled:,} entries' rollups); "
        f"building it took {record.seconds:,.0f} s over all runs "
        f"({record.entries / max(record.seconds, 1e-9):,.0f} entries/s)",
        file=sys.stderr,
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench._scale_probe",
            str(path),
            "1000" if quick else "10000",
            str(APPEND_ROUNDS_QUICK if quick else APPEND_ROUNDS),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    p = json.loads(probe.stdout.strip().splitlines()[-1])
    reader = SqliteDatabase(path, origin=None, writer=False)
    try:
        queries, subject_queries = _queries(reader)
        searches = _timed(reader, queries)
        subject_searches = _timed(reader, subject_queries)
    finally:
        reader.close()
    pages = _page_reads(path, queries)
    subject_pages = _page_reads(path, subject_queries)
    charts = asyncio.run(_charts(path))
    disk, notes = _disk(path, int(p["size"]))
    search_p99 = statistics.quantiles(searches, n=100)[98] * 1000
    pages_p99 = statistics.quantiles(pages, n=100)[98]
    subject_p99 = statistics.quantiles(subject_searches, n=100)[98] * 1000
    print(
        f"  at {int(p['size']):,} entries: start-up {p['startup_s']:.2f} s, RSS "
        f"{p['rss_mb']:.0f} MB, proof {p['prove_ms']:.2f} ms, search p99 {search_p99:.1f} ms "
        f"({pages_p99:.0f} pages cold; a subject {subject_p99:.1f} ms, "
        f"{statistics.median(subject_pages):.0f} pages), "
        f"charts {charts * 1000:.0f} ms, {disk:,.0f} B/entry ({notes:.2f} B of notes), "
        f"appends {p['appends_big']:,.0f}/s vs {p['appends_empty']:,.0f}/s empty (CPU "
        f"{p['append_cpu_us_big']:.0f} vs {p['append_cpu_us_empty']:.0f} us per append, from "
        f"{key_block_fill(int(p['size'])):,} leaves into the newest key block)",
        file=sys.stderr,
    )
    return {
        "audit_scale_log_entries": (p["size"], "entries"),
        "audit_appends_key_block_fill_10m": (float(key_block_fill(int(p["size"]))), "entries"),
        "audit_scale_build_s": (record.seconds, "s"),
        "audit_startup_s_10m": (p["startup_s"], "s"),
        "audit_rss_mb_10m": (p["rss_mb"], "MB"),
        "audit_prove_ms_10m": (p["prove_ms"], "ms"),
        "audit_prove_p99_ms_10m": (p["prove_p99_ms"], "ms"),
        "audit_search_p99_ms_10m": (search_p99, "ms"),
        "audit_search_pages_p99_10m": (pages_p99, "pages"),
        "audit_search_subject_p99_ms_10m": (subject_p99, "ms"),
        "audit_search_subject_pages_10m": (float(statistics.median(subject_pages)), "pages"),
        "console_charts_ms_10m": (charts * 1000, "ms"),
        "audit_disk_bytes_per_entry_10m": (disk, "B"),
        "audit_note_bytes_per_entry_10m": (notes, "B"),
        "audit_appends_per_s_sqlite_10m": (p["appends_big"], "appends/s"),
        "audit_appends_per_s_sqlite_empty": (p["appends_empty"], "appends/s"),
        "audit_appends_ratio_10m": (p["appends_big"] / p["appends_empty"], "ratio"),
        "audit_append_cpu_us_10m": (p["append_cpu_us_big"], "us"),
        "audit_append_cpu_us_empty_10m": (p["append_cpu_us_empty"], "us"),
        "audit_appends_cpu_ratio_10m": (p["append_cpu_us_empty"] / p["append_cpu_us_big"], "ratio"),
    }


if __name__ == "__main__":
    for name, (value, unit) in run("--quick" in sys.argv).items():
        print(f"{name}: {value:.6g} {unit}")
