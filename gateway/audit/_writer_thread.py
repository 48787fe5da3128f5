"""The audit store's writer thread: one thread, one queue, one loop callback per call.

``loop.run_in_executor`` on a one-thread pool cost ~64 µs of CPU per commit (a
``concurrent.futures.Future`` and its condition, the pool's work item and queue, ``wrap_future``
chaining two futures with a callback each way); a thread of its own fed by a ``SimpleQueue``,
resolving the caller's asyncio future with one ``call_soon_threadsafe``, costs less
(``docs/benchmarks.md``, "The writer's hop").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WriterThread"]

T = TypeVar("T")

_Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]

logger = logging.getLogger("gateway.audit.log")


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.cancelled():  # its caller left; the call itself ran
        if error is not None:  # no one else will hear of it
            logger.warning(
                "audit store: a writer call whose caller was cancelled failed: %s: %s",
                type(error).__name__,
                error,
            )
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WriterThread:
    """A thread that runs blocking calls one at a time, in the order they were queued.

    ``call`` is the event loop's way in: it queues ``fn`` and returns a future of the calling
    loop, which the thread resolves with ``fn``'s result or exception through ONE
    ``call_soon_threadsafe``. It is not a ``concurrent.futures.Executor``: the store's only
    caller is the event loop.

    Contract:

    - Calls MUST run in the order queued, never two at once (one connection, one thread).
    - A queued call runs even if its caller was cancelled meanwhile (its future is then left
      alone, and an error it raises is logged as a warning): a commit is never half-abandoned,
      the log reloads after a cancelled commit.
    - Every call's future is resolved: a ``StopIteration`` (which an asyncio future refuses)
      arrives as a ``RuntimeError`` caused by it.
    - ``shutdown`` runs every call queued before it, then stops the thread; calls queued after
      it raise ``RuntimeError``. ``shutdown(wait=True)`` returns once the thread has ended.

    The thread is a daemon: a store that is never closed does not keep the interpreter from
    exiting. What it has not committed then was never acknowledged (a transaction that did not
    commit is not visible).
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn``; its result (or exception) resolves the returned future of the running
        loop. Raises ``RuntimeError`` after ``shutdown``."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put((fn, future))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Stop after the calls already queued (every one runs)."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._queue.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _put(self, item: _Call) -> None:
        # The lock orders a put against ``shutdown``'s sentinel: nothing lands behind it.
        with self._lock:
            if self._stopped:
                raise RuntimeError("the audit store's writer thread is shut down")
            self._queue.put(item)

    def _run(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            fn, future = item
            result: object = None
            error: BaseException | None = None
            try:
                result = fn()
            except StopIteration as exc:
                # An asyncio future refuses a StopIteration (TypeError in ``_settle``, and the
                # caller would wait forever): hand it over wrapped, as a coroutine would.
                error = RuntimeError(
                    "a call on the audit store's writer thread raised StopIteration"
                )
                error.__cause__ = exc
            except BaseException as exc:  # handed to the caller's future
                error = exc
            # A closed loop (RuntimeError) has no one waiting any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)
            del item, fn, future, result, error  # hold no batch while idle
