"""A scripted relay for SDK tests: a real WebSocket server whose every frame the test decides.

Why not the real relay: the SDK's snapshot logic must be checked against exact interleavings (a
socket lost after two snapshot rows, a ``resync_needed`` right after a marker, a failure code)
that a real relay produces only by chance.  This server speaks vsn 1.0.0 over a real aiohttp
socket, so the SDK under test runs unmodified (its link, reader, joiner and backoff); it answers
heartbeats by itself, records every client frame, answers joins ok with binding ids (unless the
test answers them), and sends whatever frames the test asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from relay.postgres.cluster import free_port

STREAM = "6FE5B8677D8C1807"


def pos(lsn: int, index: int = 0) -> str:
    """A position of the test stream: ``<stream id>/<lsn, 16 hex>:<index, 8 hex>``."""
    return f"{STREAM}/{lsn:016X}:{index:08X}"


@dataclass
class Received:
    """A frame the client sent, with the socket it came on (1, 2, ... in connection order)."""

    socket: int
    topic: str
    event: str
    payload: Any
    ref: str | None
    join_ref: str | None


@dataclass
class ScriptedRelay:
    """``async with ScriptedRelay() as relay``: ``relay.url`` for the client, then script it."""

    auto_join: bool = True  # answer every phx_join ok with ids 101, 102, ... per binding
    frames: list[Received] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1"

    async def __aenter__(self) -> ScriptedRelay:
        app = web.Application()
        app.router.add_get("/realtime/v1/websocket", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        n = len(self.sockets)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            obj = orjson.loads(msg.data)
            frame = Received(
                n, obj["topic"], obj["event"], obj["payload"], obj.get("ref"), obj.get("join_ref")
            )
            if frame.topic == "phoenix" and frame.event == "heartbeat":
                await self._send(ws, "phoenix", "phx_reply", {"status": "ok", "response": {}}, frame.ref)
                continue
            self.frames.append(frame)
            self._arrived.set()
            if frame.event == "phx_join" and self.auto_join:
                bindings = frame.payload["config"]["postgres_changes"]
                ids = [{**b, "id": 101 + i} for i, b in enumerate(bindings)]
                await self.reply(frame, {"postgres_changes": ids})
        return ws

    @staticmethod
    async def _send(ws: web.WebSocketResponse, topic: str, event: str, payload: Any, ref: str | None) -> None:
        await ws.send_str(
            orjson.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref}).decode()
        )

    # -- scripting ---------------------------------------------------------------------------
    @property
    def ws(self) -> web.WebSocketResponse:
        """The latest socket."""
        return self.sockets[-1]

    async def reply(self, frame: Received, response: Any, status: str = "ok") -> None:
        ws = self.sockets[frame.socket - 1]
        await self._send(ws, frame.topic, "phx_reply", {"status": status, "response": response}, frame.ref)

    async def send(self, topic: str, event: str, payload: Any) -> None:
        await self._send(self.ws, topic, event, payload, None)

    async def subscribed(self, topic: str, position: str) -> None:
        await self.send(
            topic,
            "system",
            {
                "extension": "postgres_changes",
                "status": "ok",
                "message": "Subscribed to PostgreSQL",
                "position": position,
            },
        )

    async def row(self, topic: str, binding: int, record: dict[str, Any], table: str = "t") -> None:
        data = {
            "schema": "public",
            "table": table,
            "commit_timestamp": "2026-12-06T18:00:00Z",
            "type": "SNAPSHOT",
            "columns": [{"name": k, "type": "int8"} for k in record],
            "record": record,
            "errors": None,
        }
        await self.send(topic, "postgres_changes", {"ids": [binding], "data": data})

    async def complete(self, topic: str, binding: int, rows: int, position: str) -> None:
        await self.send(
            topic,
            "system",
            {
                "status": "ok",
                "extension": "postgres_changes",
                "code": "snapshot_complete",
                "message": f"snapshot complete: {rows} rows",
                "id": binding,
                "rows": rows,
                "position": position,
            },
        )

    async def change(
        self,
        topic: str,
        binding: int,
        kind: str,
        position: str,
        record: dict[str, Any] | None = None,
        old: dict[str, Any] | None = None,
        table: str = "t",
        **extra: Any,
    ) -> None:
        data: dict[str, Any] = {
            "schema": "public",
            "table": table,
            "commit_timestamp": "2026-12-06T18:00:01Z",
            "type": kind,
            "columns": [],
            "errors": None,
            "position": position,
            **extra,
        }
        if record is not None:
            data["record"] = record
        if old is not None:
            data["old_record"] = old
        await self.send(topic, "postgres_changes", {"ids": [binding], "data": data})

    async def drop(self) -> None:
        """Close the latest socket (the client reconnects)."""
        await self.ws.close()

    async def next_frame(self, event: str, after: int = 0, timeout: float = 10.0) -> Received:
        """The first client frame of ``event`` at index ``after`` or later in ``frames``."""
        async with asyncio.timeout(timeout):
            while True:
                for f in self.frames[after:]:
                    if f.event == event:
                        return f
                self._arrived.clear()
                await self._arrived.wait()

    def joins(self) -> list[Received]:
        return [f for f in self.frames if f.event == "phx_join"]


@contextlib.asynccontextmanager
async def scripted() -> AsyncIterator[ScriptedRelay]:
    async with ScriptedRelay() as relay:
        yield relay
