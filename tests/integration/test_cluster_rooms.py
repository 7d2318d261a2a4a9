"""Broadcast and presence across relay nodes sharing one Redis (issue 17, item 4).

Two relays in this process (or one here and one as a ``relay serve`` process, for SIGKILL),
a real ``redis-server`` and a real Postgres; raw Phoenix clients spread over the nodes.  Both
are nodes of one cluster (one slot, one change log): one captures, both serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
import redis

from relay.cluster.rooms import ClusterRooms
from relay.config import Config
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import RunningRelay, start_relay
from tests.support.redis_server import RedisServer, provide_redis
from tests.support.relay import SECRET, PhoenixClient, token
from tests.support.relay_process import log_tail, relay_env, spawn_relay

pytestmark = pytest.mark.pg

USER = token("authenticated", sub="11111111-1111-1111-1111-111111111111")
OTHER = token("authenticated", sub="22222222-2222-2222-2222-222222222222")
SERVICE = token()


def is_bcast(event: str) -> Any:
    return lambda m: m["event"] == "broadcast" and m["payload"]["event"] == event


def is_diff(m: dict[str, Any]) -> bool:
    return bool(m["event"] == "presence_diff")


def system_code(code: str) -> Any:
    return lambda m: m["event"] == "system" and m["payload"].get("code") == code


async def ok_join(c: PhoenixClient, channel: str, **config: Any) -> None:
    reply = await c.join(channel, [], **config)
    assert reply["payload"]["status"] == "ok", reply


async def track(c: PhoenixClient, channel: str, meta: dict[str, Any]) -> None:
    ref = await c.send(
        f"realtime:{channel}", "presence", {"type": "presence", "event": "track", "payload": meta}
    )
    reply = await c.recv_until(lambda m: m["event"] == "phx_reply" and m["ref"] == ref)
    assert reply["payload"]["status"] == "ok", reply


def settings(dsn: str, redis_url: str, node: str, **overrides: Any) -> Config:
    base: dict[str, Any] = {
        "port": 0,
        "publication_poll_interval": 0.2,
        "redis_url": redis_url,
        "node_id": node,
        "max_events_per_second": 0,
        **overrides,
    }
    return Config(database_url=dsn, jwt_secret=SECRET, **base)


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


def link(relay: RunningRelay) -> ClusterRooms:
    found = relay.server.topics.cluster
    assert isinstance(found, ClusterRooms)
    return found


async def linked(*relays: RunningRelay, timeout: float = 15.0) -> None:
    """Until every node's link is up and each knows every other one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = [link(r) for r in relays]
        if all(x.up for x in links):
            nodes = {x.node for x in links}
            if all(set(x.remote.nodes()) >= nodes - {x.node} for x in links):
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("the relay nodes did not find each other through Redis")


@contextlib.asynccontextmanager
async def two_nodes(
    dsn: str, redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[RunningRelay, RunningRelay]]:
    await asyncio.to_thread(apply_migrations, dsn)
    await asyncio.to_thread(apply_demo_schema, dsn)
    a = await start_relay(settings(dsn, redis_url, "node-a", **overrides))
    try:
        b = await start_relay(settings(dsn, redis_url, "node-b", **overrides))
        try:
            await linked(a, b)
            yield a, b
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_broadcast_across_nodes_in_send_order_per_sender(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    async with (
        two_nodes(pg_dsn, redis_server.url) as (a, b),
        PhoenixClient.connect(a, USER) as a1,
        PhoenixClient.connect(a, OTHER, vsn="2.0.0") as a2,
        PhoenixClient.connect(b, USER, vsn="2.0.0") as b1,
        PhoenixClient.connect(b, OTHER) as b2,
    ):
        await ok_join(a1, "room")  # self: false
        await ok_join(a2, "room", broadcast={"self": True, "ack": True})
        await ok_join(b1, "room")
        await ok_join(b2, "room")
        await ok_join(b2, "elsewhere")  # another room on node b: gets none of it
        n = 100

        async def send(c: PhoenixClient, who: str) -> None:
            for i in range(n):
                payload = {"type": "broadcast", "event": "seq", "payload": {"from": who, "i": i}}
                await c.send("realtime:room", "broadcast", payload, join_ref=c.join_refs["realtime:room"])

        await asyncio.gather(send(a1, "a1"), send(a2, "a2"), send(b1, "b1"))
        expect = {  # self: false senders never see their own; a2 (self: true) sees its own once
            "a1": {"a2", "b1"},
            "a2": {"a1", "a2", "b1"},
            "b1": {"a1", "a2"},
            "b2": {"a1", "a2", "b1"},
        }
        for name, client in (("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)):
            got: dict[str, list[int]] = {}
            for _ in range(n * len(expect[name])):
                m = await client.recv_until(is_bcast("seq"))
                assert m["topic"] == "realtime:room"
                body = m["payload"]["payload"]
                got.setdefault(body["from"], []).append(body["i"])
            assert set(got) == expect[name], name
            for sender, seen in got.items():
                assert seen == list(range(n)), f"{name} got {sender}'s messages out of order or twice"
            extra = [m for m in await client.collect(0.3) if m["event"] == "broadcast"]
            assert extra == [], f"{name} got more than once: {extra[:3]}"
        acks = [m for m in a2.inbox if m["event"] == "phx_reply" and m["payload"]["status"] == "ok"]
        assert len(acks) == n + 1  # the join and every push: ack semantics unchanged

        # bytes cross nodes as they are: kind 3 in on node a, kind 4 out on node b (vsn 2.0.0),
        # base64 for the text client
        blob = bytes(range(256))
        await a2.send_binary_broadcast(
            "realtime:room", "blob", blob, encoding=0, join_ref=a2.join_refs["realtime:room"]
        )
        got_b1 = await b1.recv_until(is_bcast("blob"))
        assert got_b1["binary"] and got_b1["payload"]["payload"] == blob
        got_b2 = await b2.recv_until(is_bcast("blob"))
        assert got_b2["payload"]["meta"] == {"encoding": "base64"}
        assert not [m for m in b2.inbox if m["topic"] == "realtime:elsewhere" and m["event"] == "broadcast"]


async def test_rest_broadcast_and_private_rooms_across_nodes(pg_dsn: str, redis_server: RedisServer) -> None:
    async with (
        two_nodes(pg_dsn, redis_server.url) as (a, b),
        PhoenixClient.connect(b, USER) as pub,
        PhoenixClient.connect(b, SERVICE) as priv,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(pub, "news")
        await ok_join(priv, "news", private=True)
        body = {"messages": [{"topic": "news", "event": "hello", "payload": {"x": 1}, "private": True}]}
        headers = {"Authorization": f"Bearer {SERVICE}"}
        async with http.post(f"http://127.0.0.1:{a.port}/api/broadcast", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
        got = await priv.recv_until(is_bcast("hello"))  # posted on node a, member on node b
        assert got["payload"]["payload"] == {"x": 1}
        # a private message never reaches the public twin, on any node
        assert not [m for m in await pub.collect(0.5) if m["event"] == "broadcast"]


async def test_database_broadcasts_reach_every_node_once(pg_dsn: str, redis_server: RedisServer) -> None:
    """``realtime.send`` reaches every node through the change log; rooms never publish it again."""
    async with (
        two_nodes(pg_dsn, redis_server.url) as (a, b),
        PhoenixClient.connect(a, USER) as on_a,
        PhoenixClient.connect(b, OTHER, vsn="2.0.0") as on_b,
    ):
        await ok_join(on_a, "db-room")
        await ok_join(on_b, "db-room")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for i in range(5):
                body = orjson.dumps({"i": i}).decode()
                conn.execute("select realtime.send(%s::jsonb, 'db', 'db-room', false)", (body,))
        for c in (on_a, on_b):
            got = [(await c.recv_until(is_bcast("db"), 20.0))["payload"]["payload"]["i"] for _ in range(5)]
            assert got == list(range(5))
        for frames in await asyncio.gather(on_a.collect(1.0), on_b.collect(1.0)):  # the same 1 s
            assert not [m for m in frames if m["event"] == "broadcast"], "a second copy"


async def test_presence_across_nodes(pg_dsn: str, redis_server: RedisServer) -> None:
    async with (
        two_nodes(pg_dsn, redis_server.url, max_room_presences=3) as (a, b),
        PhoenixClient.connect(a, USER) as watcher,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(watcher, "lobby", presence={"key": "watcher", "enabled": True})
        assert (await watcher.recv_until(lambda m: m["event"] == "presence_state"))["payload"] == {}
        await track(watcher, "lobby", {"on": "a"})
        await watcher.recv_until(is_diff)  # its own join
        # a join racing the track on another node gets it in the state or in the next diff;
        # once node b has heard of it, it is in the state
        await until(lambda: link(b).remote.count(("lobby", False)) == 1)
        async with PhoenixClient.connect(b, OTHER, vsn="2.0.0") as alice:
            await ok_join(alice, "lobby", presence={"key": "alice", "enabled": True})
            st = await alice.recv_until(lambda m: m["event"] == "presence_state")
            assert st["payload"]["watcher"]["metas"][0]["on"] == "a"  # node a's presence, on node b
            await track(alice, "lobby", {"on": "b"})
            diff = await watcher.recv_until(is_diff)
            (meta,) = diff["payload"]["joins"]["alice"]["metas"]
            assert meta["on"] == "b" and meta["phx_ref"] and diff["payload"]["leaves"] == {}
            # a late joiner on node a sees both nodes' presences
            async with PhoenixClient.connect(a, USER) as late:
                await ok_join(late, "lobby", presence={"key": "late", "enabled": True})
                st = await late.recv_until(lambda m: m["event"] == "presence_state")
                assert set(st["payload"]) == {"watcher", "alice"}
            # update on node b: node a gets the leave of the old meta and the join with phx_ref_prev
            await track(alice, "lobby", {"on": "b", "v": 2})
            upd = await watcher.recv_until(is_diff)
            assert upd["payload"]["leaves"]["alice"]["metas"][0]["phx_ref"] == meta["phx_ref"]
            assert upd["payload"]["joins"]["alice"]["metas"][0]["phx_ref_prev"] == meta["phx_ref"]
            # the room's limit (3) counts both nodes: one more on b, then a fourth on a is refused
            async with PhoenixClient.connect(b, USER) as carol, PhoenixClient.connect(a, OTHER) as dave:
                await ok_join(carol, "lobby", presence={"key": "carol"})
                await track(carol, "lobby", {})
                await watcher.recv_until(lambda m: is_diff(m) and "carol" in m["payload"]["joins"])
                await ok_join(dave, "lobby", presence={"key": "dave"})
                ref = await dave.send("realtime:lobby", "presence", {"event": "track", "payload": {}})
                err = await dave.recv_until(lambda m: m.get("ref") == ref)
                assert err["payload"]["response"]["code"] == "room_presence_full", err
            await watcher.recv_until(lambda m: is_diff(m) and "carol" in m["payload"]["leaves"])

            # the statistics say what they cover
            headers = {"Authorization": f"Bearer {SERVICE}"}
            async with http.get(f"http://127.0.0.1:{a.port}/api/stats", headers=headers) as resp:
                stats = orjson.loads(await resp.read())
            assert stats["scope"] == "node" and stats["cluster"]["node"] == "node-a"
            assert stats["cluster"]["redis"] == "up"
            (room,) = [r for r in stats["rooms"] if r["topic"] == "lobby"]
            assert room["presences"] == 1 and room["cluster_presences"] == 2
            async with http.get(f"http://127.0.0.1:{a.port}/api/channels/lobby", headers=headers) as resp:
                chan = orjson.loads(await resp.read())
            assert chan["scope"] == "node" and chan["presence_scope"] == "cluster"
            assert set(chan["presence"]) == {"watcher", "alice"} and len(chan["members"]) == 1
            # untrack on node b: the leave on node a
            await alice.send("realtime:lobby", "presence", {"event": "untrack"})
            gone = await watcher.recv_until(is_diff)
            assert list(gone["payload"]["leaves"]) == ["alice"] and gone["payload"]["joins"] == {}
            await track(alice, "lobby", {"again": True})
            await watcher.recv_until(lambda m: is_diff(m) and "alice" in m["payload"]["joins"])
        # alice's socket on node b closed: her presence leaves on node a
        gone = await watcher.recv_until(is_diff)
        assert list(gone["payload"]["leaves"]) == ["alice"]


async def test_stopped_node_presences_leave_at_once(pg_dsn: str, redis_server: RedisServer) -> None:
    """A clean stop says goodbye: the others drop its presences without waiting for the TTL."""
    async with two_nodes(pg_dsn, redis_server.url) as (a, _b), PhoenixClient.connect(a, USER) as watcher:
        await ok_join(watcher, "lobby", presence={"key": "watcher", "enabled": True})
        b = await start_relay(settings(pg_dsn, redis_server.url, "node-c"), wait_ready=False)
        stopped = False
        try:
            await linked(a, b)
            async with PhoenixClient.connect(b, OTHER) as alice:
                await ok_join(alice, "lobby", presence={"key": "alice"})
                await track(alice, "lobby", {})
                await watcher.recv_until(lambda m: is_diff(m) and "alice" in m["payload"]["joins"])
                t0 = time.monotonic()
                await b.stop()  # with alice still connected
                stopped = True
        finally:
            if not stopped:
                await b.stop()
        await watcher.recv_until(lambda m: is_diff(m) and "alice" in m["payload"]["leaves"], 5.0)
        # well under the TTL: the goodbye, or the socket's own leave published before it (then
        # the goodbye follows it: node a forgets node b as soon as it reads it)
        for _ in range(250):  # bounded: 5 s
            if link(b).node not in link(a).remote.nodes():
                break
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 < 5.0
        assert link(b).node not in link(a).remote.nodes()


async def test_killed_node_presences_leave_within_the_bound(pg_dsn: str, redis_server: RedisServer) -> None:
    """SIGKILL a node (a ``relay serve`` process): its presences leave on the survivor in ≤ 12 s."""
    async with two_nodes(pg_dsn, redis_server.url) as (a, _b):
        port = _free_port()
        env = relay_env(
            pg_dsn,
            port,
            SECRET,
            Config().slot,
            {"RELAY_REDIS_URL": redis_server.url, "RELAY_NODE_ID": "doomed"},
        )
        log_path = Path(tempfile.mkdtemp(prefix="relay-node-")) / "relay.log"
        with log_path.open("wb") as logf:
            proc = spawn_relay(env, logf)
            try:
                await _wait_linked_process(port, proc, log_path)
                async with PhoenixClient.connect(a, USER) as watcher:
                    await ok_join(watcher, "lobby", presence={"key": "watcher", "enabled": True})
                    async with PhoenixClient.connect(port, OTHER) as ghost:
                        await ok_join(ghost, "lobby", presence={"key": "ghost"})
                        await track(ghost, "lobby", {"n": 1})
                        await watcher.recv_until(lambda m: is_diff(m) and "ghost" in m["payload"]["joins"])
                        proc.kill()
                        proc.wait(10)
                        t0 = time.monotonic()
                        left = await watcher.recv_until(
                            lambda m: is_diff(m) and "ghost" in m["payload"]["leaves"], 20.0
                        )
                        waited = time.monotonic() - t0
                        print(f"the SIGKILLed node's presence left after {waited:.1f} s")
                        assert left["payload"]["leaves"]["ghost"]["metas"][0]["n"] == 1
                        assert waited <= 12.5, f"the dead node's presence left after {waited:.1f} s"
                    # and a late joiner on the survivor no longer sees it
                    async with PhoenixClient.connect(a, OTHER) as late:
                        await ok_join(late, "lobby", presence={"key": "late", "enabled": True})
                        st = await late.recv_until(lambda m: m["event"] == "presence_state")
                        assert "ghost" not in st["payload"]
                    assert not redis.Redis.from_url(redis_server.url).keys("relay:*presence:doomed*")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)


async def test_redis_restart_without_data_repairs_presence(pg_dsn: str) -> None:
    """Redis goes away and comes back empty: clients are told, then presence is repaired."""
    with provide_redis(appendonly=False) as server:
        async with (
            two_nodes(pg_dsn, server.url) as (a, b),
            PhoenixClient.connect(a, USER) as watcher,
            PhoenixClient.connect(a, USER) as neighbour,
            PhoenixClient.connect(b, OTHER) as alice,
            PhoenixClient.connect(b, OTHER) as bob,
            aiohttp.ClientSession() as http,
        ):
            await ok_join(watcher, "lobby", presence={"key": "watcher", "enabled": True})
            await ok_join(neighbour, "lobby")
            for c, key in ((alice, "alice"), (bob, "bob")):
                await ok_join(c, "lobby", presence={"key": key, "enabled": True})
            await track(alice, "lobby", {"v": 1})
            await watcher.recv_until(lambda m: is_diff(m) and "alice" in m["payload"]["joins"])

            await asyncio.to_thread(server.kill)
            # every channel is told, on both nodes
            for c in (watcher, alice):
                await c.recv_until(system_code("cluster_unavailable"))
            async with http.get(f"http://127.0.0.1:{a.port}/ready") as resp:
                ready = orjson.loads(await resp.read())
            assert resp.status == 503 and "redis_unavailable" in [r["code"] for r in ready["reasons"]]
            # a broadcast still reaches this node's members (the sender was told above)
            await watcher.send(
                "realtime:lobby", "broadcast", {"type": "broadcast", "event": "local", "payload": {}}
            )
            await neighbour.recv_until(is_bcast("local"))
            # REST broadcast refuses rather than reach one node silently
            body = {"messages": [{"topic": "lobby", "event": "x", "payload": {}}]}
            headers = {"Authorization": f"Bearer {SERVICE}"}
            async with http.post(
                f"http://127.0.0.1:{a.port}/api/broadcast", json=body, headers=headers
            ) as resp:
                err = orjson.loads(await resp.read())
            assert resp.status == 503 and err["code"] == "cluster_unavailable"
            # a channel joining during the outage is told too
            async with PhoenixClient.connect(a, OTHER) as newcomer:
                await ok_join(newcomer, "other-room")
                await newcomer.recv_until(system_code("cluster_unavailable"))
            # meanwhile on node b: alice leaves, bob tracks (nothing can be published)
            await alice.send("realtime:lobby", "presence", {"event": "untrack"})
            await track(bob, "lobby", {"v": 2})

            seen = len(watcher.inbox)
            await asyncio.to_thread(server.start)  # empty: it kept nothing
            await watcher.recv_until(system_code("cluster_restored"), 20.0)
            await alice.recv_until(system_code("cluster_restored"), 20.0)
            # node a's view repaired from node b's rewrite: alice left, bob joined
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                diffs = [m["payload"] for m in watcher.inbox[seen:] if is_diff(m)]
                if any("alice" in d["leaves"] for d in diffs) and any("bob" in d["joins"] for d in diffs):
                    break
                await watcher.collect(0.2)
            else:
                raise AssertionError(f"presence not repaired: {watcher.inbox[seen:]}")
            async with PhoenixClient.connect(a, OTHER) as late:
                await ok_join(late, "lobby", presence={"key": "late", "enabled": True})
                st = await late.recv_until(lambda m: m["event"] == "presence_state")
                assert set(st["payload"]) == {"bob"}  # the watcher never tracked
            # broadcasts cross nodes again
            await watcher.send(
                "realtime:lobby", "broadcast", {"type": "broadcast", "event": "back", "payload": {}}
            )
            await bob.recv_until(is_bcast("back"))


async def test_redis_losing_its_data_under_connected_nodes_is_repaired(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    """FLUSHALL while both nodes stay connected: the heartbeat notices and presence comes back."""
    async with (
        two_nodes(pg_dsn, redis_server.url) as (a, b),
        PhoenixClient.connect(a, USER) as watcher,
        PhoenixClient.connect(b, OTHER) as alice,
    ):
        await ok_join(watcher, "lobby", presence={"key": "watcher", "enabled": True})
        await ok_join(alice, "lobby", presence={"key": "alice"})
        await track(watcher, "lobby", {"v": 0})
        await track(alice, "lobby", {"v": 1})
        await watcher.recv_until(lambda m: is_diff(m) and "alice" in m["payload"]["joins"])
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        # both nodes' hashes are written again within two heartbeats
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if len(client.keys("relay:*presence:*")) == 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"presence hashes not rewritten: {client.keys('relay:*')}")
        await asyncio.sleep(2.5)  # one more heartbeat: any leave/join flicker has settled
        async with PhoenixClient.connect(a, OTHER) as late:
            await ok_join(late, "lobby", presence={"key": "late", "enabled": True})
            st = await late.recv_until(lambda m: m["event"] == "presence_state")
            assert set(st["payload"]) == {"watcher", "alice"}
        async with PhoenixClient.connect(b, OTHER) as late_b:
            await ok_join(late_b, "lobby", presence={"key": "late", "enabled": True})
            st = await late_b.recv_until(lambda m: m["event"] == "presence_state")
            assert set(st["payload"]) == {"watcher", "alice"}
        # what the watcher saw adds up to the same: alice is present
        present: set[str] = set()
        for m in watcher.inbox:
            if is_diff(m):
                present -= set(m["payload"]["leaves"]) - set(m["payload"]["joins"])
                present |= set(m["payload"]["joins"])
        assert "alice" in present


async def test_redis_down_at_start_then_up(pg_dsn: str) -> None:
    """A node that starts without Redis serves its own members, says so, and links up later."""
    server = RedisServer(appendonly=False)
    try:
        await asyncio.to_thread(apply_migrations, pg_dsn)
        await asyncio.to_thread(apply_demo_schema, pg_dsn)
        # not waiting for the change stream: in cluster mode that needs Redis too
        relay = await start_relay(settings(pg_dsn, server.url, "early"), wait_ready=False)
        try:
            async with (
                PhoenixClient.connect(relay, USER) as early,
                PhoenixClient.connect(relay, OTHER) as peer,
            ):
                await ok_join(early, "lobby")
                await early.recv_until(system_code("cluster_unavailable"))
                await ok_join(peer, "lobby")
                await early.send(
                    "realtime:lobby", "broadcast", {"type": "broadcast", "event": "x", "payload": {}}
                )
                await peer.recv_until(is_bcast("x"))  # this node's members still get it
                await asyncio.to_thread(server.start)
                await early.recv_until(system_code("cluster_restored"), 20.0)
                await peer.recv_until(system_code("cluster_restored"), 20.0)
                assert link(relay).up
        finally:
            await relay.stop()
    finally:
        server.cleanup()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_linked_process(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the ``relay serve`` process answers /api/stats with its Redis link up."""
    deadline = time.monotonic() + 30
    headers = {"Authorization": f"Bearer {SERVICE}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"relay exited with {proc.returncode}:\n{log_tail(log_path)}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/api/stats", headers=headers) as resp:
                    stats = orjson.loads(await resp.read())
                if (stats.get("cluster") or {}).get("redis") == "up":
                    return
            except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"relay process not linked to Redis:\n{log_tail(log_path)}")
