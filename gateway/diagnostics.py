"""Where the gateway's slow requests wait: event-loop stalls and the stage times of the slowest
requests. Off unless ``[telemetry] diagnose_tail_ms`` is set (``Gateway.diagnose_tail``).

- ``LoopWatch``: a heartbeat timer on the event loop fires every ``threshold``; when it fires
  more than ``threshold`` late the loop was held (a long callback, a garbage collection, the
  process not scheduled) and the stall is recorded. A watcher thread looks every ``threshold``
  and, while the heartbeat is overdue, takes the loop thread's stack (``sys._current_frames``),
  which the stall then carries: what the loop was running, not only that it was late. The
  watcher needs the GIL to look, so a stall of one long call (C code holding the GIL, a
  collection) is often over before it gets it, so every garbage collection is timed too (its
  time within the stall is ``gc_s``; collections longer than ``threshold`` are kept, with the
  CPU they took).
- ``StageClock``: the start time of every stage of every ``Pipeline.submit``
  (``GatewayTelemetry.stage`` marks it), kept for the last ``keep`` requests; ``slowest(0.01)``
  gives the slowest 1 % with each stage's share, the waits included (a stage lasts until the next
  one starts, so the audit legs' time includes the wait for their group commit).

Cost while on, at 2 ms: 500 heartbeats and 500 watcher checks a second, 2–3 % of a core on an
idle loop (each heartbeat wakes it; measured on the loaded machine), less on a loop that is
serving anyway; a request's marks are a dozen clock reads. A finished request is kept as one
flat tuple of strings and floats, which the collector stops tracking at its first young
collection: the 8,192 kept never lengthen the passes over its older generations (a list of
tuples each, as before, was walked by every one). Off: no timer, no thread, one attribute check
per stage. Stacks name code locations only (file, line, function), never data.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import heapq
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["GcPause", "LoopWatch", "RequestTimes", "StageClock", "Stall", "TailDiagnostics"]

_log = logging.getLogger(__name__)

_STACK_DEPTH: Final = 8
_LOG_EVERY_S: Final = 10.0
"""At most one warning line about stalls per this many seconds (the longest since the last)."""


@dataclass(frozen=True, slots=True)
class Stall:
    """The event loop came back ``lag_s`` late; ``stack`` is what its thread was running while
    it was late (innermost frame first; empty when the watcher did not catch it in time).
    ``cpu_s`` is the CPU time the loop's thread used meanwhile: near ``lag_s``, the loop was
    busy (a long callback, a collection); far below it, the thread was not running (not
    scheduled on a busy machine, or blocked in a system call)."""

    lag_s: float
    cpu_s: float
    stack: tuple[str, ...]
    gc_s: float = 0.0
    """Time spent in garbage collections (any thread's) between the two heartbeats."""


@dataclass(frozen=True, slots=True)
class GcPause:
    """A collection of ``generation`` that took ``seconds`` (wall), ``cpu_s`` of them running on
    the thread that collected (far less: that thread was descheduled meanwhile)."""

    generation: int
    seconds: float
    cpu_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """One request: its time in ``Pipeline.submit`` and each stage's, in the order they ran."""

    total_s: float
    stages: tuple[tuple[str, float], ...]


def _stack(frame: Any) -> tuple[str, ...]:
    frames = traceback.extract_stack(frame, limit=_STACK_DEPTH)
    return tuple(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


class LoopWatch:
    """Records the event loop's stalls longer than ``threshold_s`` (the ``keep`` longest, and
    how many and how long in all) and garbage collections longer than it. ``start`` on the
    loop, ``stop`` when done; both idempotent."""

    def __init__(self, *, threshold_s: float, keep: int = 32) -> None:
        if threshold_s <= 0:
            raise ValueError(f"threshold_s must be positive, got {threshold_s}")
        self._threshold = threshold_s
        self._interval = threshold_s
        self._keep = keep
        self._longest: list[tuple[float, int, Stall]] = []  # min-heap by lag
        self.count = 0
        self.stalled_s = 0.0
        self.gc_pauses: collections.deque[GcPause] = collections.deque(maxlen=keep)
        """The last ``keep`` collections longer than the threshold."""
        self._seq = 0
        self._last = time.perf_counter()
        self._caught: tuple[int, tuple[str, ...]] | None = None
        self._gc_started = (0.0, 0.0)
        self._gc_s = 0.0
        """Collection time since the last heartbeat."""
        self._cpu_last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._logged_at = 0.0
        self._unlogged: Stall | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._last, self._cpu_last = time.perf_counter(), time.thread_time()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(self._interval, self._beat)
        self._stopping.clear()
        loop_thread = threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, args=(loop_thread,), name="loop-watch", daemon=True
        )
        self._thread.start()
        gc.callbacks.append(self._on_gc)

    async def stop(self) -> None:
        thread, timer = self._thread, self._timer
        if thread is None or timer is None:
            return
        self._thread = self._timer = None
        timer.cancel()
        gc.callbacks.remove(self._on_gc)
        self._stopping.set()
        await asyncio.to_thread(thread.join)

    def stalls(self) -> list[Stall]:
        """The longest stalls recorded, longest first."""
        return [s for _, _, s in sorted(self._longest, reverse=True)]

    def clear(self) -> None:
        self._longest.clear()
        self.count = 0
        self.stalled_s = 0.0
        self.gc_pauses.clear()

    def _beat(self) -> None:
        """The heartbeat: a plain timer callback (a task sleeping in a loop cost twice the
        CPU)."""
        loop = self._loop
        if self._thread is None or loop is None:
            return
        now, cpu = time.perf_counter(), time.thread_time()
        lag = now - self._last - self._interval
        if lag > self._threshold:
            caught = self._caught
            stack = caught[1] if caught is not None and caught[0] == self._seq else ()
            self._record(Stall(lag, min(lag, cpu - self._cpu_last), stack, self._gc_s), now)
        self._gc_s = 0.0
        self._seq += 1
        self._last, self._cpu_last = now, cpu
        self._timer = loop.call_later(self._interval, self._beat)

    def _record(self, stall: Stall, now: float) -> None:
        self.count += 1
        self.stalled_s += stall.lag_s
        entry = (stall.lag_s, self.count, stall)
        if len(self._longest) < self._keep:
            heapq.heappush(self._longest, entry)
        elif stall.lag_s > self._longest[0][0]:
            heapq.heapreplace(self._longest, entry)
        if self._unlogged is None or stall.lag_s > self._unlogged.lag_s:
            self._unlogged = stall
        if now - self._logged_at >= _LOG_EVERY_S:
            longest, self._unlogged, self._logged_at = self._unlogged, None, now
            _log.warning(
                "event loop stalled %.1f ms, %.1f ms of it running (%d stalls over %.1f ms so far)",
                longest.lag_s * 1000,
                longest.cpu_s * 1000,
                self.count,
                self._threshold * 1000,
                extra={"fields": {"stack": " < ".join(longest.stack)}},
            )

    def _watch(self, loop_thread: int) -> None:
        """On its own thread: take the loop thread's stack once per overdue heartbeat."""
        overdue_after = self._interval + self._threshold
        seen = -1
        while not self._stopping.wait(self._threshold):
            seq, last = self._seq, self._last
            if seq == seen or time.perf_counter() - last <= overdue_after:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                self._caught = (seq, _stack(frame))
            seen = seq

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = (time.perf_counter(), time.thread_time())
            return
        started, cpu = self._gc_started
        took = time.perf_counter() - started
        self._gc_s += took
        if took > self._threshold:
            self.gc_pauses.append(GcPause(info["generation"], took, time.thread_time() - cpu))


_MARKS: contextvars.ContextVar[list[str | float] | None] = contextvars.ContextVar(
    "fedgate_stage_marks", default=None
)
"""The open request's stage names and start times, alternating: ``[name, time, name, ...]``."""


class StageClock:
    """Stage start times of each request (``begin``, ``mark`` per stage, ``end``), for the last
    ``keep`` requests (~1.2 KB each: 10 MB at the default). The marks live in a context
    variable, so the exchange's own task (stages 8–12, created from the request's context) marks
    the same request."""

    def __init__(self, *, keep: int = 8192) -> None:
        self._done: collections.deque[tuple[str | float, ...]] = collections.deque(maxlen=keep)
        """Per request one flat tuple of strings and floats, ``(started, ended, name, time,
        name, time, ...)``: nothing in it the collector must follow, so it stops tracking it."""

    def begin(self) -> contextvars.Token[list[str | float] | None]:
        return _MARKS.set([])

    @staticmethod
    def mark(name: str) -> None:
        marks = _MARKS.get()
        if marks is not None:
            marks += (name, time.perf_counter())

    def end(self, token: contextvars.Token[list[str | float] | None], started: float) -> None:
        """Close the request ``begin`` opened (``started`` is its ``time.perf_counter()``)."""
        marks = _MARKS.get()
        _MARKS.reset(token)
        if marks is not None:
            self._done.append((started, time.perf_counter(), *marks))

    def clear(self) -> None:
        self._done.clear()

    def __len__(self) -> int:
        return len(self._done)

    def slowest(self, share: float) -> list[RequestTimes]:
        """The slowest ``share`` (0 to 1) of the requests kept, at least one when any, slowest
        first."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        done = list(self._done)
        count = max(1, round(len(done) * share)) if done else 0
        ranked = heapq.nlargest(count, done, key=lambda d: float(d[1]) - float(d[0]))
        return [_times(d) for d in ranked]

    def all(self) -> list[RequestTimes]:
        return [_times(d) for d in self._done]


def _times(done: tuple[str | float, ...]) -> RequestTimes:
    started, ended = float(done[0]), float(done[1])
    names, times = done[2::2], [float(t) for t in done[3::2]]
    stages = [
        (str(name), (times[i + 1] if i + 1 < len(times) else ended) - at)
        for i, (name, at) in enumerate(zip(names, times, strict=True))
    ]
    return RequestTimes(total_s=ended - started, stages=tuple(stages))


class TailDiagnostics:
    """A ``LoopWatch`` and a ``StageClock`` started together (``Gateway.diagnose_tail``)."""

    def __init__(self, *, threshold_s: float) -> None:
        self.loop = LoopWatch(threshold_s=threshold_s)
        self.stages = StageClock()

    def clear(self) -> None:
        """Forget what was recorded so far (a benchmark's phase starts)."""
        self.loop.clear()
        self.stages.clear()
