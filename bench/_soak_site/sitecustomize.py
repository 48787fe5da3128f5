"""Diagnostics for the soak (``bench.soak``), loaded into the gateway only when asked.

``FEDGATE_SOAK_TRACEMALLOC=DIR`` makes the soak put this directory on the ``PYTHONPATH`` of
the processes it starts; in the gateway (and nowhere else) this module then starts
``tracemalloc`` and, every ``FEDGATE_SOAK_TRACEMALLOC_EVERY_S`` seconds (default 30), appends
to ``DIR/tracemalloc-<pid>.txt`` the traced total and the 25 lines whose allocations grew most
since the previous snapshot and since the first. Off (nothing imported, nothing traced) unless
the variable is set; tracing slows the gateway several-fold, so its figures are not the soak's.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from pathlib import Path


def _dump(out: Path, every_s: float) -> None:
    first = previous = tracemalloc.take_snapshot()
    began = time.monotonic()
    while True:
        time.sleep(every_s)
        snap = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        lines = [
            f"=== {time.monotonic() - began:.0f} s: traced {current >> 10} KiB (peak {peak >> 10})"
        ]
        for title, base in (("since previous", previous), ("since first", first)):
            lines.append(f"--- {title}")
            lines.extend(str(stat) for stat in snap.compare_to(base, "lineno")[:25])
        with out.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        previous = snap


def _start() -> None:
    target = os.environ.get("FEDGATE_SOAK_TRACEMALLOC")
    if not target:
        return
    cmdline = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")
    if b"gateway.server" not in cmdline:
        return
    every_s = float(os.environ.get("FEDGATE_SOAK_TRACEMALLOC_EVERY_S", "30"))
    tracemalloc.start(1)
    out = Path(target) / f"tracemalloc-{os.getpid()}.txt"
    threading.Thread(
        target=_dump, args=(out, every_s), name="soak-tracemalloc", daemon=True
    ).start()


_start()
