"""Start a real relay in-process for a test, and a raw Phoenix WebSocket client to talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from relay.config import Config
from relay.core.tokens import mint
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import RunningRelay, start_relay
from tests.support.binary import kind3, split_kind4

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(role: str = "service_role", ttl: int = 3600, **claims: Any) -> str:
    return mint(SECRET, role=role, ttl=ttl, claims=claims)


@contextlib.asynccontextmanager
async def running_relay(dsn: str, *, demo: bool = True, **overrides: Any) -> AsyncIterator[RunningRelay]:
    """Migrate (and apply the demo schema), then run a relay on a free loopback port.

    ``publication_poll_interval`` 0.2 s (not the 1 s default): the pipeline looks at its stop
    event only between batches, and while idle a batch ends every min(0.5, poll) s, so each
    ``stop()`` used to wait ~0.4 s for that tick (about a minute over the suite); tests that
    enable a table on a running relay also see it sooner.
    """
    await asyncio.to_thread(apply_migrations, dsn)
    if demo:
        await asyncio.to_thread(apply_demo_schema, dsn)
    settings: dict[str, Any] = {"port": 0, "publication_poll_interval": 0.2, **overrides}
    cfg = Config(database_url=dsn, jwt_secret=SECRET, **settings)
    relay = await start_relay(cfg)
    try:
        yield relay
    finally:
        await relay.stop()


_ENDED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


class PhoenixClient:
    """The tests' one Phoenix client over aiohttp: drives the protocol frame by frame.

    Protocol tests use it directly; the resuming chaos subscriber
    (tests/support/resume_client.py) runs its sockets through it too, so frame encoding,
    decoding (vsn 1.0.0 objects, 2.0.0 arrays and binary kind 4) and join payloads exist once.
    The SDK is not built on it: the SDK is the product under test.

    ``keep``: record every frame in ``inbox`` / ``wire`` (off for long runs).
    """

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession, vsn: str, keep: bool = True
    ) -> None:
        self.ws = ws
        self.session = session
        self.vsn = vsn
        self.keep = keep
        self._refs = itertools.count(1)
        self.inbox: list[dict[str, Any]] = []
        self.wire: list[str | bytes] = []  # each inbox frame exactly as received (same index)
        self.join_refs: dict[str, str] = {}  # topic -> join_ref of its last join

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        relay: RunningRelay | int,
        tok: str | None = None,
        vsn: str = "1.0.0",
        path: str = "/realtime/v1/websocket",
    ) -> AsyncIterator[PhoenixClient]:
        """A socket to an in-process relay, or to the relay listening on a loopback port
        (one started as a process: ``relay serve``, ``relay demo``)."""
        port = relay if isinstance(relay, int) else relay.port
        url = f"http://127.0.0.1:{port}{path}"
        async with aiohttp.ClientSession() as session:
            params = {"apikey": tok or token(), "vsn": vsn}
            async with session.ws_connect(url, params=params) as ws:
                yield cls(ws, session, vsn)

    async def send(
        self, topic: str, event: str, payload: Any, join_ref: str | None = None, ref: str | None = "auto"
    ) -> str | None:
        r = str(next(self._refs)) if ref == "auto" else ref
        await self.ws.send_str(encode_frame(self.vsn, topic, event, payload, r, join_ref))
        return r

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send_binary_broadcast(
        self, topic: str, event: str, payload: bytes, encoding: int = 1, join_ref: str = "", meta: str = ""
    ) -> str:
        """A kind 3 user broadcast push, byte for byte as realtime-js's serializer writes it."""
        ref = str(next(self._refs))
        await self.ws.send_bytes(kind3(join_ref, ref, topic, event, payload, encoding, meta))
        return ref

    def next_ref(self) -> str:
        return str(next(self._refs))

    async def next_frame(self, timeout: float) -> dict[str, Any] | None:
        """The next frame, or None once the socket ended (TimeoutError if nothing came in time)."""
        msg = await self.ws.receive(timeout=timeout)
        if msg.type in _ENDED:
            return None
        binary = msg.type == aiohttp.WSMsgType.BINARY and self.vsn == "2.0.0"
        if msg.type != aiohttp.WSMsgType.TEXT and not binary:
            raise AssertionError(f"expected a text frame, got {msg.type}: {msg.data!r}")
        obj = decode_frame(msg.data, self.vsn)
        if self.keep:
            self.inbox.append(obj)
            self.wire.append(msg.data)
        return obj

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        obj = await self.next_frame(timeout)
        if obj is None:
            raise AssertionError(f"expected a text frame, the socket ended (close code {self.ws.close_code})")
        return obj

    async def recv_until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching frame")
            m = await self.recv(left)
            if pred(m):
                return m

    async def changes(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The ``data`` of the next ``n`` ``postgres_changes`` frames (other frames skipped)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            m = await self.recv(max(0.1, deadline - time.monotonic()))
            if m["event"] == "postgres_changes":
                out.append(m["payload"]["data"])
        return out

    async def collect_n(
        self, pred: Callable[[dict[str, Any]], bool], n: int, quiet: float = 0.5, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Frames until ``n`` of them match ``pred``, then all that arrive within ``quiet`` seconds.

        For "exactly these arrive": instead of listening a fixed time long enough for the
        expected frames on a busy machine (seconds each test), wait for them, then listen
        ``quiet`` more for anything extra (changes come in commit order, so an unwanted one
        committed before the last expected one is already there).  Fewer than ``n`` within
        ``timeout``: TimeoutError, naming what did arrive.
        """
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while sum(1 for m in out if pred(m)) < n:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                out.append(await self.recv(left))
            except TimeoutError:
                raise TimeoutError(f"{n} matching frames expected within {timeout} s, got: {out}") from None
        return out + await self.collect(quiet)

    async def collect(self, seconds: float) -> list[dict[str, Any]]:
        """All frames that arrive within ``seconds`` (for "receives nothing" assertions)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await self.recv(left))
            except TimeoutError:
                break
        return out

    @staticmethod
    def join_payload(
        bindings: list[dict[str, Any]], access_token: str | None = None, **config: Any
    ) -> dict[str, Any]:
        """A ``phx_join`` payload as realtime-js sends it, plus ``config`` keys (``resume_from``...)."""
        payload: dict[str, Any] = {
            "config": {
                "broadcast": {"ack": False, "self": False},
                "presence": {"key": ""},
                "postgres_changes": bindings,
                **config,
            }
        }
        if access_token:
            payload["access_token"] = access_token
        return payload

    async def join(
        self, channel: str, bindings: list[dict[str, Any]], access_token: str | None = None, **config: Any
    ) -> dict[str, Any]:
        topic = f"realtime:{channel}"
        payload = self.join_payload(bindings, access_token, **config)
        join_ref = self.join_refs[topic] = "j" + str(next(self._refs))
        ref = await self.send(topic, "phx_join", payload, join_ref=join_ref)
        return await self.recv_until(lambda m: m["event"] == "phx_reply" and m["ref"] == ref)


def encode_frame(
    vsn: str, topic: str, event: str, payload: Any, ref: str | None, join_ref: str | None = None
) -> str:
    """A client frame as the official clients write it: vsn 1.0.0 an object, 2.0.0 an array."""
    if vsn == "2.0.0":
        return orjson.dumps([join_ref, ref, topic, event, payload]).decode()
    return orjson.dumps(
        {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
    ).decode()


def decode_frame(data: str | bytes, vsn: str) -> dict[str, Any]:
    """A server frame as a dict with ``topic``, ``event``, ``payload``, ``ref``, ``join_ref``.

    vsn 1.0.0: a JSON object; 2.0.0: a JSON array, or bytes for a binary kind 4 broadcast
    (decoded as realtime-js hands it on, with ``"binary": True``).
    """
    if isinstance(data, bytes) and vsn == "2.0.0" and data[:1] == b"\x04":
        return decode_user_broadcast(data)
    obj = orjson.loads(data)
    if isinstance(obj, list):  # vsn 2.0.0: [join_ref, ref, topic, event, payload]
        return dict(zip(("join_ref", "ref", "topic", "event", "payload"), obj, strict=True))
    if not isinstance(obj, dict):
        raise AssertionError(f"not a Phoenix frame: {data!r}")
    return obj


def decode_user_broadcast(data: bytes) -> dict[str, Any]:
    """A kind 4 frame as realtime-js hands it on (JSON payloads parsed, binary kept as bytes)."""
    topic, event, meta, enc, body = split_kind4(data)
    payload: dict[str, Any] = {
        "type": "broadcast",
        "event": event,
        "payload": orjson.loads(body) if enc == 1 else body,
    }
    if meta:
        payload["meta"] = orjson.loads(meta)
    return {
        "join_ref": None,
        "ref": None,
        "topic": topic,
        "event": "broadcast",
        "payload": payload,
        "binary": True,
    }
