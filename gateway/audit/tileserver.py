"""The audit log served read-only over HTTP as a C2SP tiled log (https://c2sp.org/tlog-tiles).

``GET <prefix>/checkpoint`` (the latest checkpoint, with the witness cosignatures gathered for
it), ``GET <prefix>/tile/<L>/<N>[.p/<W>]`` (hash tiles) and
``GET <prefix>/tile/entries/<N>[.p/<W>]`` (entry bundles), so witnesses, auditors and monitors
can fetch and verify the log with any tile client. Everything else is 404; nothing is written.

Tiles and bundles are immutable (a partial tile of a given width never changes), so they carry
long-lived cache headers; the checkpoint is cached for a second at most. Entries are the
canonical leaf bytes: they hold personal data, so serve this on an interface only auditors and
witnesses reach (it is off unless ``audit.tiles_listen`` is set).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fedgate.tiles import ENTRIES, parse_tile_path
from gateway.audit.log import AuditLog

__all__ = ["tile_app"]

_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
_OCTETS = "application/octet-stream"


def tile_app(log: AuditLog) -> Starlette:
    """A Starlette app serving ``log``'s checkpoint, tiles and entry bundles."""

    async def checkpoint(request: Request) -> Response:
        return PlainTextResponse(
            log.latest_checkpoint(),
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-cache, max-age=1"},
        )

    async def tile(request: Request) -> Response:
        try:
            wanted = parse_tile_path("tile/" + request.path_params["rest"])
        except ValueError as exc:
            return PlainTextResponse(f"not a tile path: {exc}\n", status_code=404)
        if wanted.level == ENTRIES:
            data = await log.entry_bundle(wanted.index, wanted.width)
        else:
            data = await log.tile(wanted.level, wanted.index, wanted.width)
        if data is None:
            return PlainTextResponse("no such tile in this log (yet)\n", status_code=404)
        return Response(data, media_type=_OCTETS, headers=_IMMUTABLE)

    return Starlette(
        routes=[
            Route("/checkpoint", checkpoint, methods=["GET"]),
            Route("/tile/{rest:path}", tile, methods=["GET"]),
        ]
    )
