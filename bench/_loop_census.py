"""Counts what a process's event loop does, for ``python -m bench profile --census``.

``LoopCensus(loop)`` wraps the loop's scheduling methods on the instance (``call_soon``,
``call_at``, ``call_soon_threadsafe``, ``create_future``, ``_run_once``) and sets a task
factory, counting while ``on`` is true: callbacks scheduled (a task's wake-ups among them),
timers, wake-ups from other threads, futures made by the loop, loop iterations, and tasks by
their coroutine's name. Counting costs a Python call per operation, so a census phase is never
one whose CPU is measured. C code that schedules through the loop's methods (the C task and
future, gRPC's Cython) is counted too: it looks the methods up on the instance.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["LoopCensus"]


def _task_name(coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any]) -> str:
    return str(getattr(coro, "__qualname__", type(coro).__name__))


class LoopCensus:
    """Per-operation counters for one event loop (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.on = False
        self.counts: Counter[str] = Counter()
        counts, census = self.counts, self
        call_soon, call_at = loop.call_soon, loop.call_at
        threadsafe, create_future = loop.call_soon_threadsafe, loop.create_future
        run_once: Callable[[], None] = loop._run_once  # type: ignore[attr-defined]

        def counted_call_soon(
            callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
        ) -> asyncio.Handle:
            if census.on:
                counts["callbacks scheduled (call_soon)"] += 1
            return call_soon(callback, *args, context=context)

        def counted_call_at(
            when: float,
            callback: Callable[..., object],
            *args: Any,
            context: contextvars.Context | None = None,
        ) -> asyncio.TimerHandle:
            if census.on:
                counts["timers (call_at / call_later)"] += 1
            return call_at(when, callback, *args, context=context)

        def counted_threadsafe(
            callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
        ) -> asyncio.Handle:
            if census.on:
                counts["wake-ups from other threads (call_soon_threadsafe)"] += 1
            return threadsafe(callback, *args, context=context)

        def counted_future() -> asyncio.Future[Any]:
            if census.on:
                counts["futures (loop.create_future)"] += 1
            return create_future()

        def counted_run_once() -> None:
            if census.on:
                counts["loop iterations"] += 1
            run_once()

        def factory(
            loop: asyncio.AbstractEventLoop,
            coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
            **kwargs: Any,
        ) -> asyncio.Task[Any]:
            if census.on:
                counts["tasks"] += 1
                counts[f"  task {_task_name(coro)}"] += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        # On the instance (its __dict__): the class, and every other loop, stay as they are.
        vars(loop).update(
            call_soon=counted_call_soon,
            call_at=counted_call_at,
            call_soon_threadsafe=counted_threadsafe,
            create_future=counted_future,
            _run_once=counted_run_once,
        )
        loop.set_task_factory(factory)

    def take(self) -> dict[str, int]:
        """The counts so far, reset."""
        out = dict(self.counts)
        self.counts.clear()
        return out
