"""Where a soaked process's memory is: per-mapping resident sets and SQLite WAL files over time.

Off unless ``FEDGATE_SOAK_PROBE`` names a file: the soak (``bench.soak``) then appends one JSON
line per sample to it, every ``PROBE_EVERY_S`` seconds, with

- ``rss``: the process's resident set by mapping (``/proc/<pid>/smaps``), summed per file
  path, ``[anon]`` for anonymous mappings without a name, in KiB; only mappings of at least
  64 KiB, plus every ``-shm`` mapping (the WAL index each SQLite connection maps);
- ``anon_kib`` / ``file_kib``: the anonymous and file-backed totals;
- ``wal``: the size in bytes of every ``*-wal`` and ``*-shm`` file under the state directory,
  and of the database beside each WAL.

Print a summary of a probe file with ``python -m bench._soak_probe FILE``: the first and last
sample and the mappings and WAL files that changed most.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

__all__ = ["PROBE_EVERY_S", "Probe"]

PROBE_EVERY_S = 15.0
_SMALL_KIB = 64


def _smaps(pid: int) -> tuple[dict[str, int], int, int]:
    """(resident KiB per mapped path, anonymous KiB, file-backed KiB) of process ``pid``."""
    rss: dict[str, int] = {}
    anon = 0
    total = 0
    name = "[anon]"
    for line in (
        Path(f"/proc/{pid}/smaps").read_text(encoding="utf-8", errors="replace").splitlines()
    ):
        head, _, rest = line.partition(":")
        if " " in head or "-" in head:  # a mapping's header line: "addr-addr perms ... path"
            parts = line.split(None, 5)
            name = parts[5] if len(parts) == 6 else "[anon]"
        elif head == "Rss":
            kib = int(rest.split()[0])
            rss[name] = rss.get(name, 0) + kib
            total += kib
        elif head == "Anonymous":
            anon += int(rest.split()[0])
    kept = {k: v for k, v in rss.items() if v >= _SMALL_KIB or k.endswith("-shm")}
    return kept, anon, total - anon


class Probe:
    """Appends a sample of the processes ``pids`` and the WAL files under ``state`` to ``out``."""

    def __init__(self, out: Path, state: Path, pids: dict[str, int]) -> None:
        self._out = out
        self._state = state
        self._pids = pids
        self._began = time.monotonic()

    def sample(self, requests: int) -> None:
        wal = {
            str(p.relative_to(self._state)): p.stat().st_size
            for pattern in ("*-wal", "*-shm")
            for p in self._state.rglob(pattern)
        }
        for name in [k for k in wal if k.endswith("-wal")]:
            database = self._state / name.removesuffix("-wal")
            if database.exists():
                wal[name.removesuffix("-wal")] = database.stat().st_size
        for name, pid in self._pids.items():
            rss, anon, file_backed = _smaps(pid)
            line = {
                "t": round(time.monotonic() - self._began, 1),
                "process": name,
                "requests": requests,
                "anon_kib": anon,
                "file_kib": file_backed,
                "rss": rss,
                "wal": wal,
            }
            with self._out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")


def _summary(path: Path, process: str | None) -> None:
    lines = [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines()]
    process = process or lines[0]["process"]
    series = [line for line in lines if line["process"] == process]
    for line in series:
        top_shm = sum(v for k, v in line["rss"].items() if k.endswith("-shm"))
        print(
            f"{line['t']:7.1f} s {line['requests']:7d} req  anon {line['anon_kib'] / 1024:6.1f}"
            f"  file {line['file_kib'] / 1024:6.1f} MiB  shm rss {top_shm:6d} KiB"
        )
    first, last = series[0], series[-1]
    print(f"\n{process}: mappings that changed most (KiB, first -> last)")
    keys = set(first["rss"]) | set(last["rss"])
    deltas = sorted(keys, key=lambda k: -abs(last["rss"].get(k, 0) - first["rss"].get(k, 0)))
    for k in deltas[:15]:
        print(f"  {first['rss'].get(k, 0):8d} -> {last['rss'].get(k, 0):8d}  {k}")
    print("\nWAL files (bytes, first -> max -> last)")
    for k in sorted(set(first["wal"]) | set(last["wal"])):
        peak = max(line["wal"].get(k, 0) for line in series)
        print(f"  {first['wal'].get(k, 0):12d} -> {peak:12d} -> {last['wal'].get(k, 0):12d}  {k}")


if __name__ == "__main__":
    _summary(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
