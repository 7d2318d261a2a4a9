"""The live inspector page (``/inspector``): connection status, live counts, changes of a table.

Why served by the relay: an operator or a developer can watch what the relay delivers with
nothing installed, through the same path an application takes: the page uses the official
@supabase/realtime-js, vendored in ``relay/server/static`` (no CDN: relays often run without
internet; ``scripts/vendor-realtime-js.sh`` refreshes it from the locked version).  The page
itself holds no secret: the token is typed in (or put in the URL fragment, which is never sent
to the server); listing the published tables needs a ``service_role`` token.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from relay.core.tokens import TokenError

if TYPE_CHECKING:
    from relay.server.app import RelayServer

__all__ = ["Inspector"]

# Scripts only from the relay itself (no inline script, nothing from elsewhere); the page
# talks to the relay's own WebSocket and HTTP endpoints.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILES = {
    "inspector.js": "text/javascript",
    "realtime-js.js": "text/javascript",
}


def _static(name: str) -> bytes:
    return resources.files("relay.server").joinpath("static", name).read_bytes()


class Inspector:
    """Routes of the inspector page and its files (read once from the package)."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self._cache: dict[str, bytes] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/inspector", self.page)
        app.router.add_get("/inspector/", self.redirect)
        app.router.add_get("/inspector/tables", self.tables)
        for name in FILES:
            app.router.add_get(f"/inspector/{name}", self.file)

    def _read(self, name: str) -> bytes:
        data = self._cache.get(name)
        if data is None:
            data = self._cache[name] = _static(name)
        return data

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._read("inspector.html"),
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": CSP,
                "Cache-Control": "no-cache",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/inspector")

    async def file(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[1]
        return web.Response(
            body=self._read(name),
            content_type=FILES[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def tables(self, request: web.Request) -> web.Response:
        """The publication's tables as ``schema.table`` (service_role: which tables exist is not public)."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            return _json(401, {"error": "MissingJWT: send Authorization: Bearer <jwt>"})
        try:
            claims = self.server.verifier.verify(token)
        except TokenError as exc:
            return _json(401, {"error": exc.reason})
        if claims.get("role") != "service_role":
            return _json(403, {"error": "Unauthorized: listing the tables needs a service_role token"})
        rows = await self.server.catalog.published_tables(self.server.config.publication)
        return _json(200, {"tables": [f"{s}.{t}" for s, t in rows]})


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
