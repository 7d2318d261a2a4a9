"""Broadcast and presence between the two official clients, through a real relay, unchanged.

realtime-js (npm ``@supabase/realtime-js`` 2.109.0, vsn 2.0.0: broadcasts go out as binary kind 3
and come back as binary kind 4) runs under Node in ``tests/interop/js/room.mjs``, driven over
stdin/stdout JSON lines; realtime-py (PyPI ``realtime`` 2.34.x, vsn 1.0.0) runs in-process.
Also covered: ``realtime.send(...)`` from SQL (delivered on commit only), private channels and
topic policies, and the REST broadcast endpoints behind ``httpSend()`` / ``http_send()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent as ListenEvent

from tests.interop import test_realtime_js
from tests.interop.helpers import exec_sql, insert_booking, set_status
from tests.support.relay import running_relay, token

pytestmark = [pytest.mark.pg, pytest.mark.interop]

node_env = test_realtime_js.node_env  # session fixture: node, with node_modules installed

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "room.mjs"
WAIT = 10.0  # upper bound for any single wait
QUIET = 0.7  # how long "nothing else arrives" is watched for

Line = dict[str, Any]
ROOM_OF_SUB = "topic = 'room-' || (claims->>'sub')"  # a topic policy: user <sub> may use room-<sub>


def unauthorized(topic: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"


# --------------------------------------------------------------------------------------------
# realtime-js, driven over stdin/stdout


class JsRoom:
    """A running ``room.mjs``: send it commands, take its output lines with bounded waits."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[Line] = []  # everything, for failure messages
        self._pending: list[Line] = []  # not yet taken
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)
        self._stderr = bytearray()
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        self.eof = False
        self.killed = False

    def kill(self) -> None:
        """SIGKILL node: no phx_leave, no close frame, the socket just dies."""
        self.killed = True
        self.proc.kill()

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            line = json.loads(raw)
            self.lines.append(line)
            self._pending.append(line)
            self._changed.set()
        self.eof = True
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self._stderr += chunk

    def describe(self) -> str:
        stderr = self._stderr.decode(errors="replace")[-2000:]
        return f"rc={self.proc.returncode} lines={self.lines[-40:]} stderr={stderr}"

    async def take(self, pred: Callable[[Line], bool], within: float = WAIT) -> Line:
        """The first not yet taken line matching ``pred`` (waiting for it)."""
        deadline = time.monotonic() + within
        while True:
            for i, line in enumerate(self._pending):
                if pred(line):
                    del self._pending[i]
                    return line
            if self.eof:
                raise AssertionError(f"room.mjs exited before the expected line; {self.describe()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line within {within}s; {self.describe()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def take_n(self, pred: Callable[[Line], bool], n: int, within: float = WAIT) -> list[Line]:
        deadline = time.monotonic() + within
        return [await self.take(pred, max(0.05, deadline - time.monotonic())) for _ in range(n)]

    async def none(self, pred: Callable[[Line], bool], seconds: float = QUIET) -> list[Line]:
        """Lines matching ``pred`` that arrive within ``seconds`` (expected: none)."""
        await asyncio.sleep(seconds)
        return [line for line in self._pending if pred(line)]

    async def command(self, cmd: str, **args: Any) -> int:
        assert self.proc.stdin is not None
        cid = next(self._ids)
        self.proc.stdin.write((json.dumps({"id": cid, "cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        return cid

    async def call(self, cmd: str, within: float = WAIT, **args: Any) -> Line:
        """Run a command and return its result line (``result`` or ``error``)."""
        cid = await self.command(cmd, **args)
        return await self.take(lambda m: m["ev"] == "result" and m["id"] == cid, within)

    async def join(
        self,
        channel: str,
        *,
        self_: bool = False,
        ack: bool = False,
        key: str = "",
        private: bool = False,
        presence: bool = False,
        expect: str = "SUBSCRIBED",
        broadcast: dict[str, Any] | None = None,
    ) -> Line:
        config = {
            "broadcast": {"self": self_, "ack": ack, **(broadcast or {})},
            "presence": {"key": key},
            "private": private,
        }
        res = await self.call("join", channel=channel, config=config, presence=presence)
        assert res.get("result") == "joining", res
        status = await self.take(lambda m: m["ev"] == "status" and m["join"] == res["id"])
        assert status["status"] == expect, (status, self.describe())
        return status

    async def send(self, channel: str, event: str, payload: Any) -> Any:
        res = await self.call("send", channel=channel, event=event, payload=payload)
        assert "error" not in res, res
        return res["result"]

    async def broadcast(self, channel: str, event: str | None = None, within: float = WAIT) -> Line:
        return await self.take(
            lambda m: m["ev"] == "broadcast" and m["channel"] == channel and event in (None, m["event"]),
            within,
        )

    async def presence(self, channel: str, kind: str, key: str | None = None, within: float = WAIT) -> Line:
        return await self.take(
            lambda m: (
                m["ev"] == "presence"
                and m["channel"] == channel
                and m["kind"] == kind
                and key in (None, m.get("key"))
            ),
            within,
        )


@contextlib.asynccontextmanager
async def js_room(
    node: str,
    url: str,
    tok: str | None = None,
    *,
    access_token: str | None = None,
    vsn: str = "",
    heartbeat_ms: int = 0,
) -> AsyncIterator[JsRoom]:
    env = {
        **os.environ,
        "RT_URL": url,
        "RT_TOKEN": tok or token(),
        "RT_VSN": vsn,
        "RT_TIMEOUT_MS": "5000",
        "RT_HEARTBEAT_MS": str(heartbeat_ms),
    }
    if access_token:
        env["RT_ACCESS_TOKEN"] = access_token
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        cwd=JS_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    room = JsRoom(proc)
    try:
        ready = await room.take(lambda m: m["ev"] == "ready")
        assert ready["vsn"] == (vsn or "2.0.0"), ready
        yield room
        if not room.killed:
            # room.mjs leaves its channels and exits by itself when its stdin closes.
            assert proc.stdin is not None
            proc.stdin.close()
            rc = await asyncio.wait_for(proc.wait(), 5)
            assert rc == 0, room.describe()
    finally:
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.close()  # room.mjs leaves its channels and exits on EOF
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(ProcessLookupError, TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        for task in room._tasks:
            task.cancel()


def is_broadcast(channel: str, event: str | None = None) -> Callable[[Line], bool]:
    return lambda m: m["ev"] == "broadcast" and m["channel"] == channel and event in (None, m["event"])


# --------------------------------------------------------------------------------------------
# realtime-py


@contextlib.asynccontextmanager
async def py_client(
    url: str, tok: str | None = None, *, hb_interval: int = 25
) -> AsyncIterator[AsyncRealtimeClient]:
    client = AsyncRealtimeClient(
        url, tok or token(), auto_reconnect=False, timeout=5, hb_interval=hb_interval
    )
    try:
        await asyncio.wait_for(client.connect(), WAIT)
        yield client
    finally:
        await asyncio.wait_for(client.close(), WAIT)


def py_channel(
    client: AsyncRealtimeClient,
    name: str,
    *,
    self_: bool = False,
    ack: bool = False,
    key: str = "",
    private: bool = False,
) -> AsyncRealtimeChannel:
    return client.channel(
        name,
        {
            "config": {
                "broadcast": {"self": self_, "ack": ack},
                "presence": {"key": key, "enabled": False},
                "private": private,
            }
        },
    )


async def py_subscribe(
    channel: AsyncRealtimeChannel,
) -> list[tuple[RealtimeSubscribeStates, Exception | None]]:
    statuses: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
    await asyncio.wait_for(channel.subscribe(lambda s, e: statuses.append((s, e))), WAIT)
    return statuses


async def py_join(channel: AsyncRealtimeChannel) -> None:
    statuses = await py_subscribe(channel)
    assert statuses == [(RealtimeSubscribeStates.SUBSCRIBED, None)], statuses


def py_broadcasts(channel: AsyncRealtimeChannel) -> asyncio.Queue[dict[str, Any]]:
    q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    channel.on_broadcast("*", lambda p: q.put_nowait(dict(p)))
    return q


async def next_item(q: asyncio.Queue[Any], within: float = WAIT) -> Any:
    return await asyncio.wait_for(q.get(), within)


async def drain(q: asyncio.Queue[Any], seconds: float = QUIET) -> list[Any]:
    """Whatever arrives within ``seconds`` (expected: nothing)."""
    await asyncio.sleep(seconds)
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


async def until(cond: Callable[[], bool], within: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {within}s")
        await asyncio.sleep(0.02)


@pytest.fixture()
def py_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Frames realtime-py dropped ("Unrecognized message format" is logged at ERROR)."""
    caplog.set_level(logging.ERROR, logger="realtime")

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if "Unrecognized message format" in r.getMessage()]

    return errors


def _is_result(m: Line, cid: Any) -> bool:
    return bool(m["ev"] == "result" and m["id"] == cid)


def _metas(chan: AsyncRealtimeChannel, key: str) -> list[dict[str, Any]]:
    """A key's presence metas as plain dicts: realtime's ``Presence`` type names only ``presence_ref``,
    while the metas carry whatever the client tracked."""
    return [dict(meta) for meta in chan.presence_state()[key]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------
# 1. broadcast between the clients


async def test_broadcast_js_and_py_order_self_ack(
    pg_dsn: str, node_env: str, py_errors: Callable[[], list[str]]
) -> None:
    n = 50
    async with (
        running_relay(pg_dsn) as relay,
        py_client(relay.url, token(role="authenticated", sub="py")) as client,
        js_room(node_env, relay.url, token(role="authenticated", sub="js")) as js,
    ):
        chan = py_channel(client, "room1", self_=False)
        got_py = py_broadcasts(chan)
        await py_join(chan)
        await js.join("room1", self_=True, ack=True)

        # realtime-js -> realtime-py (and back to itself: self:true). ack:true: send() waits for
        # the relay's ok reply, so 'ok' here means the reply arrived.
        payloads = [
            {"i": i, "from": "js", "text": "héllo ✓ 🎉", "nested": {"list": [i, None, True]}}
            for i in range(n)
        ]
        # All 50 are pushed back to back (room.mjs runs commands concurrently), then acked.
        ids = [await js.command("send", channel="room1", event="seq", payload=p) for p in payloads]
        for cid in ids:
            res = await js.take(functools.partial(_is_result, cid=cid))
            assert res.get("result") == "ok", res
        sent = await js.take_n(lambda m: m["ev"] == "sent" and m["event"] == "broadcast", n)
        assert {(m["wire"], m.get("kind")) for m in sent} == {("binary", 3)}, sent[:3]

        for i in range(n):
            msg = await next_item(got_py)
            assert msg["event"] == "seq", msg
            assert msg["payload"] == payloads[i], (i, msg)
        echoed = await js.take_n(is_broadcast("room1", "seq"), n)
        assert [m["payload"] for m in echoed] == payloads
        assert {(m["wire"], m.get("kind")) for m in echoed} == {("binary", 4)}, echoed[:3]

        # realtime-py -> realtime-js; self:false: realtime-py does not get its own messages.
        for i in range(n):
            await asyncio.wait_for(chan.send_broadcast("pyseq", {"i": i, "from": "py"}), WAIT)
        got_js = await js.take_n(is_broadcast("room1", "pyseq"), n)
        assert [m["payload"] for m in got_js] == [{"i": i, "from": "py"} for i in range(n)]
        assert {(m["wire"], m.get("kind")) for m in got_js} == {("binary", 4)}, got_js[:3]
        assert await drain(got_py) == []
        assert await js.none(is_broadcast("room1")) == []
        assert py_errors() == []


@pytest.mark.parametrize("a_vsn", ["", "1.0.0"], ids=["vsn2-vsn2", "vsn1-vsn2"])
async def test_self_false_and_ack_for_realtime_js(pg_dsn: str, node_env: str, a_vsn: str) -> None:
    """Two realtime-js clients, self:false both; a's vsn 1.0.0 variant speaks JSON text only."""
    a_wire = ("binary", 4) if not a_vsn else ("text", None)
    async with (
        running_relay(pg_dsn) as relay,
        js_room(node_env, relay.url, vsn=a_vsn) as a,
        js_room(node_env, relay.url) as b,
    ):
        await a.join("room2", self_=False, ack=True)
        await b.join("room2", self_=False, ack=False)
        assert await a.send("room2", "ping", {"n": 1}) == "ok"
        sent = await a.take(lambda m: m["ev"] == "sent" and m["event"] == "broadcast")
        assert (sent["wire"], sent.get("kind")) == (("binary", 3) if not a_vsn else ("text", None)), sent
        got = await b.broadcast("room2", "ping")
        assert got["payload"] == {"n": 1} and (got["wire"], got.get("kind")) == ("binary", 4), got
        assert await b.send("room2", "pong", {"n": 2}) == "ok"
        got = await a.broadcast("room2", "pong")
        assert got["payload"] == {"n": 2} and (got["wire"], got.get("kind")) == a_wire, got
        # Neither got its own message back.
        assert await a.none(is_broadcast("room2", "ping")) == []
        assert await b.none(is_broadcast("room2", "pong"), 0.05) == []


# --------------------------------------------------------------------------------------------
# 2. binary payloads


async def test_binary_payload_between_realtime_js_clients(pg_dsn: str, node_env: str) -> None:
    blobs = [bytes(range(256)), os.urandom(4096), b"", b'\x00{"not": json}\xff']
    async with (
        running_relay(pg_dsn) as relay,
        js_room(node_env, relay.url) as a,
        js_room(node_env, relay.url) as b,
    ):
        await a.join("bin", self_=False, ack=True)
        await b.join("bin")
        for blob in blobs:
            res = await a.call("send_binary", channel="bin", event="blob", b64=b64(blob))
            assert res.get("result") == "ok", res
        sent = await a.take_n(lambda m: m["ev"] == "sent" and m["event"] == "broadcast", len(blobs))
        assert {(m["wire"], m.get("kind")) for m in sent} == {("binary", 3)}
        got = await b.take_n(is_broadcast("bin", "blob"), len(blobs))
        for blob, m in zip(blobs, got, strict=True):
            assert "b64" in m, m  # arrived as an ArrayBuffer, not JSON
            assert base64.b64decode(m["b64"]) == blob
            assert (m["wire"], m.get("kind")) == ("binary", 4)
        # A JSON broadcast right after still arrives as JSON.
        assert await a.send("bin", "json", {"ok": True}) == "ok"
        assert (await b.broadcast("bin", "json"))["payload"] == {"ok": True}
        assert await a.none(is_broadcast("bin")) == []


async def test_realtime_js_replay_replication_ready_and_send_binary(pg_dsn: str, node_env: str) -> None:
    """Supabase's 2026 broadcast options, as an unchanged realtime-js sends and reads them."""
    blob = bytes(range(256))
    async with running_relay(pg_dsn) as relay, js_room(node_env, relay.url) as a:
        await asyncio.wait_for(relay.server.floors_ready.wait(), WAIT)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("select realtime.send('{\"n\": 1}', 'note', 'files')")
            conn.execute("select realtime.send_binary(%s, 'blob', 'files')", (blob,))
        await until(
            lambda: (
                len(relay.server.topics.history.since("files", 0, 25, int(time.time() * 1000)).messages) == 2
            )
        )
        await a.join(
            "files", private=True, broadcast={"replay": {"since": 0, "limit": 25}, "replication_ready": True}
        )
        ready = await a.take(lambda m: m["ev"] == "system" and m["payload"].get("extension") == "system")
        assert ready["payload"]["message"] == "Replication connection established"
        note, bin_ = await a.take_n(is_broadcast("files"), 2)
        assert (
            note["payload"] == {"n": 1} and note["meta"]["replayed"] is True and len(note["meta"]["id"]) == 36
        )
        assert base64.b64decode(bin_["b64"]) == blob and bin_["meta"]["replayed"] is True
        assert (bin_["wire"], bin_.get("kind")) == ("binary", 4)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("select realtime.send_binary(%s, 'live', 'files')", (blob[::-1],))
        live = await a.broadcast("files", "live")
        assert base64.b64decode(live["b64"]) == blob[::-1] and "replayed" not in live["meta"]


# --------------------------------------------------------------------------------------------
# 3. presence


async def test_presence_between_clients_and_abrupt_leave(
    pg_dsn: str, node_env: str, py_errors: Callable[[], list[str]]
) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        py_client(relay.url, token(role="authenticated", sub="py")) as client,
    ):
        chan = py_channel(client, "lobby", key="py-user")
        joins: list[tuple[str, list[Any]]] = []
        leaves: list[tuple[str, list[Any]]] = []
        chan.on_presence_sync(lambda: None)
        chan.on_presence_join(lambda key, cur, new: joins.append((key, new)))
        chan.on_presence_leave(lambda key, cur, left: leaves.append((key, left)))
        await py_join(chan)

        await asyncio.wait_for(chan.track({"name": "py", "n": 1}), WAIT)
        # The relay sends the tracker its own join too.
        await until(lambda: "py-user" in chan.presence_state(), what="py sees its own track")
        (own,) = _metas(chan, "py-user")
        assert own["name"] == "py" and own["n"] == 1 and own["presence_ref"]

        async with js_room(node_env, relay.url, token(role="authenticated", sub="js")) as js:
            await js.join("lobby", key="js-user", presence=True)
            # presence_state after the join: the late joiner sees who is already here.
            sync = await js.take(
                lambda m: m["ev"] == "presence" and m["kind"] == "sync" and "py-user" in m["state"]
            )
            (meta,) = sync["state"]["py-user"]
            assert meta["name"] == "py" and meta["n"] == 1 and meta["presence_ref"], sync
            assert "phx_ref" not in meta

            res = await js.call("track", channel="lobby", meta={"name": "js", "tags": ["a", "b"]})
            assert res.get("result") == "ok", res
            await until(lambda: "js-user" in chan.presence_state(), what="py sees js track")
            (jmeta,) = _metas(chan, "js-user")
            assert jmeta["name"] == "js" and jmeta["tags"] == ["a", "b"] and jmeta["presence_ref"]
            assert [k for k, _ in joins].count("js-user") == 1, joins
            js_join = await js.presence("lobby", "join", "js-user")  # its own track, too
            assert js_join["presences"][0]["name"] == "js"
            state = (await js.call("state", channel="lobby"))["result"]
            assert set(state) == {"py-user", "js-user"}, state

            # Tracking again updates the meta in place (the old one leaves, phx_ref_prev).
            res = await js.call(
                "track", channel="lobby", meta={"name": "js", "tags": ["a", "b"], "away": True}
            )
            assert res.get("result") == "ok", res
            await until(
                lambda: chan.presence_state()["js-user"][0].get("away") is True, what="py sees the update"
            )
            assert len(chan.presence_state()["js-user"]) == 1, chan.presence_state()

            # untrack -> a leave for everyone.
            await asyncio.wait_for(chan.untrack(), WAIT)
            left = await js.presence("lobby", "leave", "py-user")
            # (phoenix's Presence calls onLeave before it drops the emptied key from the state)
            assert left["presences"][0]["name"] == "py" and not left["state"].get("py-user"), left
            await until(lambda: "py-user" not in chan.presence_state(), what="py sees its own leave")

            # A presence key of "" gets a generated, unique key.
            async with (
                js_room(node_env, relay.url) as anon1,
                js_room(node_env, relay.url) as anon2,
            ):
                for r in (anon1, anon2):
                    await r.join("lobby", key="", presence=True)
                    assert (await r.call("track", channel="lobby", meta={"anon": True})).get("result") == "ok"
                await until(
                    lambda: sum(1 for k in chan.presence_state() if k not in ("js-user", "py-user")) == 2,
                    what="py sees two generated presence keys",
                )
                generated = [k for k in chan.presence_state() if k not in ("js-user", "py-user")]
                assert all(k for k in generated), generated
            # Those two closed their sockets (leaving their channels): their presences left.
            await until(lambda: set(chan.presence_state()) == {"js-user"}, what="anonymous presences left")

            # SIGKILL the node process: no phx_leave, the socket just dies.
            leaves.clear()
            js.kill()
            started = time.monotonic()
            await until(
                lambda: "js-user" not in chan.presence_state(), within=5, what="py sees js-user leave"
            )
            assert time.monotonic() - started < 5
            assert [k for k, _ in leaves] == ["js-user"], leaves
            assert leaves[0][1][0]["name"] == "js"
        assert py_errors() == []


async def test_silent_peer_leaves_presence_after_heartbeat_timeout(pg_dsn: str, node_env: str) -> None:
    """A peer that stops talking (SIGSTOP: the TCP connection stays open) is dropped after the
    relay's heartbeat timeout, and its presence leaves. (realtime-py heartbeats every 15 s at
    the most, so both peers are realtime-js here, heartbeating every second.)"""
    async with (
        running_relay(pg_dsn, heartbeat_timeout=3.0) as relay,
        js_room(node_env, relay.url, heartbeat_ms=1000) as watcher,
        js_room(node_env, relay.url, heartbeat_ms=1000) as silent,
    ):
        await watcher.join("hb", key="watcher", presence=True)
        await silent.join("hb", key="silent", presence=True)
        assert (await silent.call("track", channel="hb", meta={"name": "silent"})).get("result") == "ok"
        await watcher.presence("hb", "join", "silent")
        # Heartbeating peers outlive the timeout.
        assert await watcher.none(lambda m: m["ev"] == "presence" and m["kind"] == "leave", 4.5) == []
        os.kill(silent.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            left = await watcher.presence("hb", "leave", "silent")
            assert time.monotonic() - started > 1.0, left  # not before the peer actually fell silent
            assert left["presences"][0]["name"] == "silent" and not left["state"].get("silent"), left
        finally:
            os.kill(silent.proc.pid, signal.SIGCONT)


# --------------------------------------------------------------------------------------------
# 4. realtime.send from SQL


def _sql_send(dsn: str, payload: dict[str, Any], event: str, topic: str, private: bool) -> None:
    exec_sql(dsn, "select realtime.send(%s::jsonb, %s, %s, %s)", (json.dumps(payload), event, topic, private))


async def sql_send(dsn: str, payload: dict[str, Any], event: str, topic: str, private: bool = False) -> None:
    await asyncio.to_thread(_sql_send, dsn, payload, event, topic, private)


async def test_realtime_send_from_sql_commit_rollback(
    pg_dsn: str, node_env: str, py_errors: Callable[[], list[str]]
) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        py_client(relay.url) as client,
        js_room(node_env, relay.url) as js,
    ):
        chan = py_channel(client, "news")
        got_py = py_broadcasts(chan)
        await py_join(chan)
        await js.join("news")

        # Not delivered while the transaction is open; delivered once it commits.
        conn = await psycopg.AsyncConnection.connect(pg_dsn)
        try:
            await conn.execute(
                "select realtime.send(%s::jsonb, 'db', 'news', false)", (json.dumps({"n": 1}),)
            )
            assert await drain(got_py) == []
            assert await js.none(is_broadcast("news"), 0.05) == []
            await conn.commit()
        finally:
            await conn.close()
        msg = await next_item(got_py)
        assert msg["event"] == "db" and msg["payload"] == {"n": 1}, msg
        jm = await js.broadcast("news", "db")
        assert jm["payload"] == {"n": 1} and (jm["wire"], jm.get("kind")) == ("binary", 4), jm

        # A rolled-back send never arrives; a later committed one does (and is the next one).
        conn = await psycopg.AsyncConnection.connect(pg_dsn)
        try:
            await conn.execute(
                "select realtime.send(%s::jsonb, 'db', 'news', false)", (json.dumps({"n": 2}),)
            )
            await conn.rollback()
        finally:
            await conn.close()
        await sql_send(pg_dsn, {"n": 3}, "db", "news")
        assert (await next_item(got_py))["payload"] == {"n": 3}
        assert (await js.broadcast("news", "db"))["payload"] == {"n": 3}
        assert await drain(got_py) == []
        assert await js.none(is_broadcast("news"), 0.05) == []

        # Other topics do not leak in.
        await sql_send(pg_dsn, {"n": 4}, "db", "other")
        await sql_send(pg_dsn, {"n": 5}, "db", "news")
        assert (await next_item(got_py))["payload"] == {"n": 5}
        assert (await js.broadcast("news", "db"))["payload"] == {"n": 5}
        assert py_errors() == []


async def test_realtime_send_public_private_separation(pg_dsn: str, node_env: str) -> None:
    member = token(role="authenticated", sub="u1")
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(
            exec_sql, pg_dsn, "select realtime.create_topic_policy('news read', 'read', $$topic = 'news'$$)"
        )
        async with (
            py_client(relay.url, member) as client,
            js_room(node_env, relay.url, member) as pub_js,
            js_room(node_env, relay.url, member) as priv_js,
        ):
            pub = py_channel(client, "news", private=False)
            got_pub = py_broadcasts(pub)
            await py_join(pub)
            await pub_js.join("news", private=False)
            await priv_js.join("news", private=True)

            await sql_send(pg_dsn, {"m": "public-1"}, "db", "news", private=False)
            await sql_send(pg_dsn, {"m": "private-1"}, "db", "news", private=True)
            await sql_send(pg_dsn, {"m": "public-2"}, "db", "news", private=False)
            await sql_send(pg_dsn, {"m": "private-2"}, "db", "news", private=True)

            assert [(await next_item(got_pub))["payload"]["m"] for _ in range(2)] == ["public-1", "public-2"]
            pub_got = await pub_js.take_n(is_broadcast("news", "db"), 2)
            assert [m["payload"]["m"] for m in pub_got] == ["public-1", "public-2"]
            priv_got = await priv_js.take_n(is_broadcast("news", "db"), 2)
            assert [m["payload"]["m"] for m in priv_got] == ["private-1", "private-2"]
            assert await drain(got_pub) == []
            assert await pub_js.none(is_broadcast("news"), 0.05) == []
            assert await priv_js.none(is_broadcast("news"), 0.05) == []

            # realtime.send's private defaults to true.
            await asyncio.to_thread(
                exec_sql, pg_dsn, "select realtime.send('{\"m\": \"default\"}'::jsonb, 'db', 'news')"
            )
            assert (await priv_js.broadcast("news", "db"))["payload"] == {"m": "default"}
            assert await drain(got_pub) == []
            assert await pub_js.none(is_broadcast("news"), 0.05) == []


async def test_realtime_send_in_commit_order_with_row_changes(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, py_client(relay.url) as client:
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        chan = py_channel(client, "orders")
        chan.on_postgres_changes(
            ListenEvent.All,
            schema="public",
            table="bookings",
            callback=lambda p: events.put_nowait(("row", p)),
        )
        chan.on_broadcast("*", lambda p: events.put_nowait(("broadcast", dict(p))))
        await py_join(chan)

        bid = await insert_booking(pg_dsn)
        await sql_send(pg_dsn, {"after": "insert"}, "db", "orders")
        await set_status(pg_dsn, bid, "confirmed")
        await sql_send(pg_dsn, {"after": "update"}, "db", "orders")

        seen = []
        for _ in range(4):
            kind, p = await next_item(events)
            seen.append((kind, p["data"]["type"] if kind == "row" else p["payload"]["after"]))
        assert seen == [
            ("row", "INSERT"),
            ("broadcast", "insert"),
            ("row", "UPDATE"),
            ("broadcast", "update"),
        ]


# --------------------------------------------------------------------------------------------
# 5. private channels


async def test_private_channel_needs_a_topic_policy(
    pg_dsn: str, node_env: str, py_errors: Callable[[], list[str]]
) -> None:
    u1 = token(role="authenticated", sub="u1")
    u2 = token(role="authenticated", sub="u2")
    async with (
        running_relay(pg_dsn) as relay,
        py_client(relay.url, u1) as client,
        js_room(node_env, relay.url, u1) as js,
    ):
        # No policy: both clients are refused with the reference server's reason (realtime-js
        # reports Object.values(response).join(", "): the reason, then the code).
        status = await js.join("room-u1", private=True, expect="CHANNEL_ERROR")
        assert status["error"] == unauthorized("room-u1") + ", Unauthorized", status
        refused = py_channel(client, "room-u1", private=True)
        statuses = await py_subscribe(refused)
        assert statuses and statuses[0][0] == RealtimeSubscribeStates.CHANNEL_ERROR, statuses
        refusal = {"reason": unauthorized("room-u1"), "code": "Unauthorized"}
        assert json.loads(str(statuses[0][1])) == refusal, statuses
        await asyncio.wait_for(refused.unsubscribe(), WAIT)  # stops realtime-py's rejoin timer
        await until(lambda: refused.is_closed, what="refused py channel closed")
        # A public channel of the same name is not affected.
        await js.join("room-u1-public")

        await asyncio.to_thread(
            exec_sql,
            pg_dsn,
            "select realtime.create_topic_policy('room members read', 'read', %s)",
            (ROOM_OF_SUB,),
        )
        await js.join("room-u1", private=True, ack=True)
        chan = py_channel(client, "room-u1", private=True)
        got_py = py_broadcasts(chan)
        await py_join(chan)

        # Another user is still refused (the policy is evaluated on the token's claims).
        async with js_room(node_env, relay.url, u2) as other:
            status = await other.join("room-u1", private=True, expect="CHANNEL_ERROR")
            assert status["error"] == unauthorized("room-u1") + ", Unauthorized", status
            await other.join("room-u2", private=True)

        # supabase-js style: apikey is the anon key, the user token is set with setAuth() and travels
        # as the join's access_token: that is what is authorized.
        async with js_room(node_env, relay.url, token(role="anon"), access_token=u1) as via_auth:
            await via_auth.join("room-u1", private=True)

        # Read but no write policy: a broadcast gets an error reply and reaches nobody.
        res = await js.call("send", channel="room-u1", event="msg", payload={"n": 1})
        assert res.get("result") == "error", res
        await asyncio.wait_for(chan.send_broadcast("pymsg", {"n": 1}), WAIT)  # no ack asked, none seen
        assert await drain(got_py) == []
        assert await js.none(is_broadcast("room-u1"), 0.05) == []

        await asyncio.to_thread(
            exec_sql,
            pg_dsn,
            "select realtime.create_topic_policy('room members write', 'write', %s)",
            (ROOM_OF_SUB,),
        )
        # Join again (the reference server settles a channel's permissions when it joins).
        assert (await js.call("leave", channel="room-u1")).get("result") == "ok"
        await js.join("room-u1", private=True, ack=True)
        res = await js.call("send", channel="room-u1", event="msg", payload={"n": 2})
        assert res.get("result") == "ok", res
        msg = await next_item(got_py)
        assert msg["event"] == "msg" and msg["payload"] == {"n": 2}, msg
        assert await drain(got_py) == []

        assert py_errors() == []


# --------------------------------------------------------------------------------------------
# 6. REST broadcast: httpSend() / http_send() / send() before subscribing


async def test_rest_broadcast_from_both_clients(
    pg_dsn: str, node_env: str, py_errors: Callable[[], list[str]]
) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        py_client(relay.url, token(role="authenticated", sub="py")) as client,
        js_room(node_env, relay.url, token(role="authenticated", sub="js")) as listener,
        js_room(node_env, relay.url, token(role="authenticated", sub="rest")) as sender,
    ):
        chan = py_channel(client, "alerts")
        got_py = py_broadcasts(chan)
        await py_join(chan)
        await listener.join("alerts")

        # realtime-js httpSend(): POST /realtime/v1/api/broadcast/alerts/events/rest (JSON body).
        res = await sender.call("http_send", channel="alerts", event="rest", payload={"via": "httpSend"})
        assert res.get("result") == {"success": True}, res
        assert (await next_item(got_py)) == {"event": "rest", "payload": {"via": "httpSend"}}
        assert (await listener.broadcast("alerts", "rest"))["payload"] == {"via": "httpSend"}

        # realtime-js send() on a channel that never joined falls back to POST /api/broadcast.
        res = await sender.call("rest_send", channel="alerts", event="rest", payload={"via": "fallback"})
        assert res.get("result") == "ok", res
        assert (await next_item(got_py))["payload"] == {"via": "fallback"}
        assert (await listener.broadcast("alerts", "rest"))["payload"] == {"via": "fallback"}

        # Binary httpSend(): application/octet-stream, arrives as an ArrayBuffer, byte-identical.
        blob = bytes(range(256)) * 3
        res = await sender.call("http_send", channel="alerts", event="blob", b64=b64(blob))
        assert res.get("result") == {"success": True}, res
        got = await listener.broadcast("alerts", "blob")
        assert base64.b64decode(got["b64"]) == blob, got
        # realtime-py (vsn 1, JSON only) gets it too, in a JSON form the protocol leaves open.
        assert (await next_item(got_py))["event"] == "blob"

        # realtime-py http_send(), from a client that is not even connected.
        rest_client = AsyncRealtimeClient(
            relay.url, token(role="authenticated", sub="py2"), auto_reconnect=False
        )
        await asyncio.wait_for(
            py_channel(rest_client, "alerts").http_send("rest", {"via": "http_send"}), WAIT
        )
        assert (await next_item(got_py))["payload"] == {"via": "http_send"}
        assert (await listener.broadcast("alerts", "rest"))["payload"] == {"via": "http_send"}

        # private=true REST messages do not reach public channels (the next public one does).
        res = await sender.call("http_send", channel="alerts", event="rest", payload={"p": 1}, private=True)
        assert "result" in res or "error" in res, res  # refused or accepted, it must not arrive
        res = await sender.call("http_send", channel="alerts", event="rest", payload={"p": 0})
        assert res.get("result") == {"success": True}, res
        assert (await next_item(got_py))["payload"] == {"p": 0}
        assert (await listener.broadcast("alerts", "rest"))["payload"] == {"p": 0}

        assert await drain(got_py) == []
        assert await listener.none(is_broadcast("alerts"), 0.05) == []
        assert py_errors() == []


async def test_rest_broadcast_rejects_a_bad_token(pg_dsn: str, node_env: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        js_room(node_env, relay.url) as listener,
        js_room(node_env, relay.url, "not-a-jwt") as sender,
    ):
        await listener.join("alerts")
        res = await sender.call("http_send", channel="alerts", event="rest", payload={"bad": True})
        assert "error" in res, res
        assert await listener.none(is_broadcast("alerts")) == []
