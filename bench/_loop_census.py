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

        def counted(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if census.on:
                    counts[label] += 1
                return fn(*args, **kwargs)

            return call

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
            call_soon=counted("callbacks scheduled (call_soon)", loop.call_soon),
            call_at=counted("timers (call_at / call_later)", loop.call_at),
            call_soon_threadsafe=counted(
                "wake-ups from other threads (call_soon_threadsafe)", loop.call_soon_threadsafe
            ),
            create_future=counted("futures (loop.create_future)", loop.create_future),
            _run_once=counted("loop iterations", loop._run_once),  # type: ignore[attr-defined]
        )
        loop.set_task_factory(factory)

    def take(self) -> dict[str, int]:
        """The counts so far, reset."""
        out = dict(self.counts)
        self.counts.clear()
        return out
