"""Serve a console with uvicorn inside the process's running asyncio loop (node or gateway).

uvicorn's ``Server.serve`` would install SIGINT/SIGTERM handlers and ``sys.exit`` when it cannot
bind; embedded in a node that owns its signals and its errors, neither is wanted. This module
binds the socket itself (a bind failure raises ``AgencyUnavailable``), installs no signal
handlers, and shuts down gracefully when stopped or cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from fedgate.errors import AgencyUnavailable

__all__ = ["EmbeddedServer"]


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process owns SIGINT/SIGTERM; it stops us through ``should_exit``.
        yield


class EmbeddedServer:
    """One ASGI app on ``host:port`` (``port`` 0 picks a free one; see ``port`` after
    ``start``)."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._want_port = port
        self._socket: socket.socket | None = None
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; returns once the server accepts connections."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._want_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise AgencyUnavailable(
                f"the console cannot listen on {self._host}:{self._want_port}: {exc}"
            ) from exc
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise AgencyUnavailable("the console server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, finish open requests (2 s at most), close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def wait(self) -> None:
        """Until the server stops. Cancelling the waiter does not stop the server: call
        ``stop`` (e.g. in a ``finally``) for a graceful shutdown."""
        if self._task is not None:
            await asyncio.shield(self._task)
