"""The official clients on two relay nodes of one cluster: broadcast and presence, unchanged.

realtime-py (vsn 1.0.0, in-process) on node A, realtime-js (vsn 2.0.0, binary broadcasts, under
Node) on node B, one Redis: what tests/interop/test_broadcast_presence.py checks on one relay
holds across nodes (order, ``self``, ``ack``, presence sync, an abrupt leave).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_cluster_rooms import two_nodes
from tests.interop import test_realtime_js
from tests.interop.test_broadcast_presence import (
    drain,
    is_broadcast,
    js_room,
    next_item,
    py_broadcasts,
    py_channel,
    py_client,
    py_errors,
    py_join,
    until,
)
from tests.support.redis_server import RedisServer
from tests.support.relay import token

pytestmark = [pytest.mark.pg, pytest.mark.interop]

node_env = test_realtime_js.node_env  # session fixture: node, with node_modules installed
__all__ = ["node_env", "py_errors"]  # fixtures, used by name


async def test_official_clients_on_two_nodes(
    pg_dsn: str, node_env: str, redis_server: RedisServer, py_errors: Callable[[], list[str]]
) -> None:
    n = 30
    async with (
        two_nodes(pg_dsn, redis_server.url) as (a, b),
        py_client(a.url, token(role="authenticated", sub="py")) as client,
        js_room(node_env, b.url, token(role="authenticated", sub="js")) as js,
    ):
        chan = py_channel(client, "lobby", key="py-user")
        got_py = py_broadcasts(chan)
        leaves: list[str] = []
        chan.on_presence_sync(lambda: None)
        chan.on_presence_leave(lambda key, cur, left: leaves.append(key))
        await py_join(chan)
        await js.join("lobby", key="js-user", presence=True, self_=True, ack=True)

        # realtime-js on node B -> realtime-py on node A, in order; ack and self as on one node
        payloads: list[dict[str, Any]] = [{"i": i, "text": "héllo ✓"} for i in range(n)]
        for p in payloads:
            assert await js.send("lobby", "seq", p) == "ok"
        for i in range(n):
            msg = await next_item(got_py)
            assert msg["event"] == "seq" and msg["payload"] == payloads[i], (i, msg)
        echoed = await js.take_n(is_broadcast("lobby", "seq"), n)  # self: true, once each
        assert [m["payload"] for m in echoed] == payloads
        # realtime-py on node A -> realtime-js on node B (binary kind 4 there)
        for i in range(n):
            await asyncio.wait_for(chan.send_broadcast("pyseq", {"i": i}), 10)
        got_js = await js.take_n(is_broadcast("lobby", "pyseq"), n)
        assert [m["payload"] for m in got_js] == [{"i": i} for i in range(n)]
        assert {(m["wire"], m.get("kind")) for m in got_js} == {("binary", 4)}
        assert await drain(got_py) == []  # self: false across nodes too
        assert await js.none(is_broadcast("lobby", "seq")) == []  # no second copy

        # presence: tracked on node A, seen by realtime-js on node B, and the other way round
        await asyncio.wait_for(chan.track({"name": "py"}), 10)
        sync = await js.take(
            lambda m: m["ev"] == "presence" and m["kind"] == "sync" and "py-user" in m["state"]
        )
        assert sync["state"]["py-user"][0]["name"] == "py"
        assert (await js.call("track", channel="lobby", meta={"name": "js"})).get("result") == "ok"
        await until(lambda: "js-user" in chan.presence_state(), what="py on node A sees js's track")
        state = (await js.call("state", channel="lobby"))["result"]
        assert set(state) == {"py-user", "js-user"}, state

        # SIGKILL the Node process: its socket on node B dies; the leave reaches node A
        js.kill()
        started = time.monotonic()
        await until(lambda: "js-user" not in chan.presence_state(), within=10, what="py sees js leave")
        assert time.monotonic() - started < 5 and leaves == ["js-user"], leaves
        assert py_errors() == []
