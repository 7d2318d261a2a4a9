"""Broadcast, presence, private channels and the HTTP APIs against a real relay and Postgres.

Raw Phoenix clients (vsn 1.0.0 objects, vsn 2.0.0 arrays and binary frames) drive the protocol
byte by byte; the official clients are covered in tests/interop/test_broadcast_presence.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

USER = token("authenticated", sub="11111111-1111-1111-1111-111111111111")
DENIED_READ = "Unauthorized: You do not have permissions to read from this Channel topic: "
OTHER = token("authenticated", sub="22222222-2222-2222-2222-222222222222")


def sql(dsn: str, text: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text, params)


def is_bcast(event: str) -> Any:
    return lambda m: m["event"] == "broadcast" and m["payload"]["event"] == event


async def ok_join(c: PhoenixClient, channel: str, **config: Any) -> None:
    reply = await c.join(channel, [], **config)
    assert reply["payload"]["status"] == "ok", reply


async def test_broadcast_between_vsn1_and_vsn2_with_self_and_ack(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER, vsn="1.0.0") as a,
        PhoenixClient.connect(relay, OTHER, vsn="2.0.0") as b,
    ):
        await ok_join(a, "room", broadcast={"self": True, "ack": True})
        await ok_join(b, "room", broadcast={"self": False, "ack": False})
        ref = await a.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "hi", "payload": {"n": 1}}
        )
        ack = await a.recv_until(lambda m: m["event"] == "phx_reply" and m["ref"] == ref)
        assert ack["payload"] == {"status": "ok", "response": {}}
        (echo,) = [m for m in a.inbox if m["event"] == "broadcast"]  # self: true (queued before the ack)
        assert echo == {
            "topic": "realtime:room",
            "event": "broadcast",
            "ref": None,
            "payload": {"type": "broadcast", "event": "hi", "payload": {"n": 1}},
        }
        got = await b.recv_until(is_bcast("hi"))  # vsn 2.0.0 receives binary kind 4
        assert got["binary"] and got["payload"]["payload"] == {"n": 1}

        # b (self: false, ack: false) sends 50 in a row: a gets them in order, b gets none back
        for i in range(50):
            await b.send(
                "realtime:room", "broadcast", {"type": "broadcast", "event": "seq", "payload": {"i": i}}
            )
        seen = [(await a.recv_until(is_bcast("seq")))["payload"]["payload"]["i"] for _ in range(50)]
        assert seen == list(range(50))
        assert not [m for m in await b.collect(0.5) if m["event"] in ("broadcast", "phx_reply")]


async def test_binary_kind3_in_kind4_out_and_bad_frames(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER, vsn="2.0.0") as a,
        PhoenixClient.connect(relay, OTHER, vsn="2.0.0") as b,
        PhoenixClient.connect(relay, OTHER, vsn="1.0.0") as c,
    ):
        for cl in (a, b, c):
            await ok_join(cl, "bin", broadcast={"ack": True})
        raw = b'{"b":2,  "a":1}'
        ref: str | None = await a.send_binary_broadcast("realtime:bin", "j", raw, encoding=1, join_ref="1")
        assert (await a.recv_until(lambda m: m.get("ref") == ref))["payload"]["status"] == "ok"
        got = await b.recv_until(is_bcast("j"))
        assert got["payload"]["payload"] == {"a": 1, "b": 2}
        got_c = await c.recv_until(is_bcast("j"))
        assert got_c["payload"]["payload"] == {"a": 1, "b": 2}

        blob = bytes(range(256))
        await a.send_binary_broadcast("realtime:bin", "blob", blob, encoding=0, join_ref="1")
        assert (await b.recv_until(is_bcast("blob")))["payload"]["payload"] == blob
        text = await c.recv_until(is_bcast("blob"))  # vsn 1: base64, and says so
        assert text["payload"]["meta"] == {"encoding": "base64"}

        # malformed binary frames: an error reply, the socket stays usable
        await a.ws.send_bytes(b"\x03\x00")
        err = await a.recv_until(lambda m: m["event"] == "phx_reply" and m["payload"]["status"] == "error")
        assert "too short" in err["payload"]["response"]["reason"]
        await a.ws.send_bytes(bytes((1, 0, 0, 0, 0, 0, 0)))
        err = await a.recv_until(lambda m: m["event"] == "phx_reply" and m["payload"]["status"] == "error")
        assert "kind 1" in err["payload"]["response"]["reason"]
        ref = await a.send_binary_broadcast("realtime:nope", "e", b"{}")
        err = await a.recv_until(lambda m: m["event"] == "phx_reply" and m["ref"] == ref)
        assert err["payload"]["response"]["reason"] == "unmatched topic"
        # binary frames are not part of vsn 1.0.0
        await c.ws.send_bytes(b"\x03\x00\x00\x00\x00\x00\x01")
        err = await c.recv_until(lambda m: m["event"] == "phx_reply" and m["payload"]["status"] == "error")
        assert "vsn 2.0.0" in err["payload"]["response"]["reason"]
        # a bad text broadcast
        ref = await a.send("realtime:bin", "broadcast", {"type": "broadcast", "payload": {}})
        err = await a.recv_until(lambda m: m.get("ref") == ref)
        assert "event" in err["payload"]["response"]["reason"]
        # and everything still works
        await a.send("realtime:bin", "broadcast", {"type": "broadcast", "event": "after", "payload": {}})
        await b.recv_until(is_bcast("after"))


async def test_presence_state_diff_and_leave_on_disconnect(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as watcher,
    ):
        await ok_join(watcher, "lobby", presence={"key": "watcher", "enabled": True})
        state = await watcher.recv_until(lambda m: m["event"] == "presence_state")
        assert state["payload"] == {} and state["ref"] is None
        async with PhoenixClient.connect(relay, OTHER, vsn="2.0.0") as alice:
            await ok_join(alice, "lobby", presence={"key": "alice", "enabled": True})
            ref = await alice.send(
                "realtime:lobby", "presence", {"type": "presence", "event": "track", "payload": {"s": 1}}
            )
            assert (await alice.recv_until(lambda m: m.get("ref") == ref))["payload"]["status"] == "ok"
            diff = await watcher.recv_until(lambda m: m["event"] == "presence_diff")
            (meta,) = diff["payload"]["joins"]["alice"]["metas"]
            assert meta["s"] == 1 and meta["phx_ref"] and diff["payload"]["leaves"] == {}
            own = await alice.recv_until(lambda m: m["event"] == "presence_diff")  # the tracker too
            assert "alice" in own["payload"]["joins"]
            # a late joiner gets the state
            async with PhoenixClient.connect(relay, USER) as late:
                await ok_join(late, "lobby", presence={"key": "late", "enabled": True})
                st = await late.recv_until(lambda m: m["event"] == "presence_state")
                assert st["payload"]["alice"]["metas"][0]["s"] == 1
            # update (track again): leave old meta, join new with phx_ref_prev
            await alice.send("realtime:lobby", "presence", {"event": "track", "payload": {"s": 2}})
            upd = await watcher.recv_until(lambda m: m["event"] == "presence_diff")
            assert upd["payload"]["leaves"]["alice"]["metas"][0]["s"] == 1
            assert upd["payload"]["joins"]["alice"]["metas"][0]["phx_ref_prev"] == meta["phx_ref"]
            # a bad presence push
            ref = await alice.send("realtime:lobby", "presence", {"event": "track", "payload": [1]})
            err = await alice.recv_until(lambda m: m.get("ref") == ref)
            assert "object" in err["payload"]["response"]["reason"]
        # alice's socket closed: her presence leaves
        gone = await watcher.recv_until(lambda m: m["event"] == "presence_diff")
        assert gone["payload"]["joins"] == {} and gone["payload"]["leaves"]["alice"]["metas"][0]["s"] == 2


async def test_untrack_and_lazy_presence(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as a,
    ):
        await ok_join(a, "lazy", presence={"key": "", "enabled": False})
        assert not [m for m in await a.collect(0.3) if m["event"].startswith("presence")]
        await a.send("realtime:lazy", "presence", {"event": "track", "payload": {"x": 1}})
        st = await a.recv_until(lambda m: m["event"] == "presence_state")  # enabled by tracking
        assert st["payload"] == {}
        diff = await a.recv_until(lambda m: m["event"] == "presence_diff")
        (key,) = diff["payload"]["joins"]
        assert len(key) == 36  # an empty key becomes a UUID
        await a.send("realtime:lazy", "presence", {"type": "presence", "event": "untrack"})
        left = await a.recv_until(lambda m: m["event"] == "presence_diff")
        assert list(left["payload"]["leaves"]) == [key]


async def test_silent_socket_leaves_presence_after_heartbeat_timeout(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn, heartbeat_timeout=1.0) as relay,
        PhoenixClient.connect(relay, USER) as watcher,
    ):
        await ok_join(watcher, "hb", presence={"key": "w", "enabled": True})
        async with PhoenixClient.connect(relay, OTHER) as ghost:
            await ok_join(ghost, "hb", presence={"key": "ghost"})
            await ghost.send("realtime:hb", "presence", {"event": "track", "payload": {}})
            await watcher.recv_until(
                lambda m: m["event"] == "presence_diff" and "ghost" in m["payload"]["joins"]
            )
            # the ghost goes quiet; the watcher keeps heartbeating
            left: dict[str, Any] | None = None
            for _ in range(20):
                await watcher.send("phoenix", "heartbeat", {})
                try:
                    left = await watcher.recv_until(
                        lambda m: m["event"] == "presence_diff" and "ghost" in m["payload"]["leaves"], 0.3
                    )
                    break
                except TimeoutError:
                    continue
            assert left is not None, "the silent socket's presence did not leave"


async def test_database_broadcast_after_commit_only(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as pub,
        PhoenixClient.connect(relay, token(), vsn="2.0.0") as priv,  # service_role may join private
    ):
        await ok_join(pub, "alerts")
        await ok_join(priv, "alerts", private=True)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("select realtime.send('{\"n\": 1}'::jsonb, 'rolled', 'alerts', false)")
            conn.rollback()
            with conn.transaction():
                conn.execute("select realtime.send('{\"n\": 2}'::jsonb, 'pending', 'alerts', false)")
                await asyncio.sleep(0.5)
                assert not [m for m in await pub.collect(0.3) if m["event"] == "broadcast"]
            conn.execute("select realtime.send('{\"n\": 3}'::jsonb, 'secret', 'realtime:alerts')")  # private
            conn.commit()
        got = await pub.recv_until(lambda m: m["event"] == "broadcast")
        meta = got["payload"].pop("meta")  # Supabase's id of a database broadcast (migration 0010)
        assert list(meta) == ["id"] and len(meta["id"]) == 36
        assert got["payload"] == {"type": "broadcast", "event": "pending", "payload": {"n": 2}}
        secret = await priv.recv_until(lambda m: m["event"] == "broadcast")
        assert secret["payload"]["event"] == "secret"
        assert not [m for m in await pub.collect(0.5) if m["event"] == "broadcast"]  # never 'rolled'
        assert not [m for m in priv.inbox if m["event"] == "broadcast" and m["payload"]["event"] != "secret"]


async def test_database_broadcast_in_commit_order_with_row_changes(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, token()) as c,
    ):
        reply = await c.join("ops", [{"event": "INSERT", "schema": "public", "table": "branches"}])
        assert reply["payload"]["status"] == "ok"
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for i in range(5):
                with conn.transaction():
                    conn.execute("insert into branches (name, city) values (%s, 'X')", (f"bp{i}",))
                    conn.execute(
                        "select realtime.send(jsonb_build_object('i', %s::int), 'after', 'ops', false)", (i,)
                    )
        order: list[str] = []
        while len(order) < 10:
            m = await c.recv_until(lambda m: m["event"] in ("broadcast", "postgres_changes"))
            order.append("row" if m["event"] == "postgres_changes" else "msg")
        assert order == ["row", "msg"] * 5


async def test_private_channel_needs_a_topic_policy(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, USER) as a:
        reply = await a.join("secret-room", [], private=True)
        assert reply["payload"] == {
            "status": "error",
            "response": {"reason": DENIED_READ + "secret-room", "code": "Unauthorized"},
        }
        sql(
            pg_dsn,
            "select realtime.create_topic_policy("
            "'own room', 'read', $$topic = 'secret-' || (claims->>'sub')$$)",
        )
        sql(pg_dsn, "select realtime.create_topic_policy('lobby read', 'read', $$topic = 'secret-room'$$)")
        reply = await a.join("secret-room", [], private=True, broadcast={"ack": True})
        assert reply["payload"]["status"] == "ok"
        # read but no write policy: its broadcast is refused and reaches nobody
        ref = await a.send(
            "realtime:secret-room", "broadcast", {"type": "broadcast", "event": "x", "payload": {}}
        )
        err = await a.recv_until(lambda m: m.get("ref") == ref)
        assert err["payload"]["response"]["reason"] == (
            "Unauthorized: You do not have permissions to write to this Channel topic: secret-room"
        )
        sql(
            pg_dsn, "select realtime.create_topic_policy('lobby write', 'write', $$extension = 'broadcast'$$)"
        )
        await asyncio.sleep(0.5)  # the relay re-checks joined private channels on the change
        ref = await a.send(
            "realtime:secret-room", "broadcast", {"type": "broadcast", "event": "y", "payload": {}}
        )
        ok = await a.recv_until(lambda m: m.get("ref") == ref)
        assert ok["payload"]["status"] == "ok"
        # presence write was not granted (the write policy is for broadcast only)
        ref = await a.send("realtime:secret-room", "presence", {"event": "track", "payload": {}})
        err = await a.recv_until(lambda m: m.get("ref") == ref)
        assert "write" in err["payload"]["response"]["reason"]
        # dropping the read policy closes the joined channel
        sql(pg_dsn, "select realtime.drop_topic_policy('lobby read')")
        sysmsg = await a.recv_until(lambda m: m["event"] == "system" and m["topic"] == "realtime:secret-room")
        assert sysmsg["payload"]["status"] == "error" and "read from" in sysmsg["payload"]["message"]
        await a.recv_until(lambda m: m["event"] == "phx_close" and m["topic"] == "realtime:secret-room")


async def test_rest_broadcast_is_rate_limited_per_caller(pg_dsn: str) -> None:
    """The anon key is public: without a limit one caller could flood every public room."""
    async with (
        running_relay(pg_dsn, max_events_per_second=5) as relay,
        PhoenixClient.connect(relay, OTHER) as member,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(member, "flood-room")
        url = f"http://127.0.0.1:{relay.port}/api/broadcast"

        def msgs(n: int, tag: str) -> dict[str, Any]:
            return {
                "messages": [
                    {"topic": "flood-room", "event": tag, "payload": {"i": i}, "private": False}
                    for i in range(n)
                ]
            }

        # one request of up to 100 messages always fits (the burst), the next is over the rate
        async with http.post(url, json=msgs(100, "first"), headers={"apikey": USER}) as r:
            assert r.status == 202
        async with http.post(url, json=msgs(50, "over"), headers={"apikey": USER}) as r:  # 10 s of rate
            assert r.status == 429 and r.headers["Retry-After"] == "1"
            body = await r.json()
            assert body["code"] == "too_many_messages" and "Too many messages per second" in body["error"]
        # the refused request sent nothing (all or none), and another caller is not affected
        async with http.post(url, json=msgs(2, "other"), headers={"apikey": token("anon")}) as r:
            assert r.status == 202
        got = [m["payload"]["event"] for m in await member.collect(1.0) if m["event"] == "broadcast"]
        assert got.count("first") == 100 and "over" not in got and got.count("other") == 2
        # service_role (the operator's own key) is not limited
        for _ in range(3):
            async with http.post(url, json=msgs(100, "svc"), headers={"apikey": token()}) as r:
                assert r.status == 202
        assert relay.server.metrics.rate_limit_hits["rest_messages"] == 1
        # the bucket refills at the rate: one message after 1/rate seconds
        await asyncio.sleep(0.25)
        async with http.post(url, json=msgs(1, "later"), headers={"apikey": USER}) as r:
            assert r.status == 202


async def test_rest_broadcast_and_stats_api(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as a,
        PhoenixClient.connect(relay, OTHER, vsn="2.0.0") as b,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(a, "stats-room", presence={"key": "a"})
        await ok_join(b, "stats-room")
        await a.send("realtime:stats-room", "presence", {"event": "track", "payload": {"name": "Ann"}})
        await a.recv_until(lambda m: m["event"] == "presence_diff")
        base = f"http://127.0.0.1:{relay.port}"

        body = {"messages": [{"topic": "stats-room", "event": "rest", "payload": {"k": 1}, "private": False}]}
        async with http.post(f"{base}/realtime/v1/api/broadcast", json=body, headers={"apikey": USER}) as r:
            assert r.status == 202
        assert (await a.recv_until(is_bcast("rest")))["payload"]["payload"] == {"k": 1}
        url = f"{base}/realtime/v1/api/broadcast/stats-room/events/bytes"
        hdrs = {"apikey": USER, "Content-Type": "application/octet-stream"}
        async with http.post(url, data=b"\x01\x02", headers=hdrs) as r:
            assert r.status == 202
        assert (await b.recv_until(is_bcast("bytes")))["payload"]["payload"] == b"\x01\x02"
        for bad, status in [({"messages": []}, 400), ({"messages": [{"event": "e"}]}, 400)]:
            async with http.post(f"{base}/api/broadcast", json=bad, headers={"apikey": USER}) as r:
                assert r.status == status and "error" in await r.json()
        async with http.post(f"{base}/api/broadcast", data=b"{nope", headers={"apikey": USER}) as r:
            assert r.status == 400
        async with http.post(f"{base}/api/broadcast", json=body) as r:
            assert r.status == 401
        priv = {"messages": [{"topic": "stats-room", "event": "p", "payload": {}, "private": True}]}
        async with http.post(
            f"{base}/api/broadcast", json=priv, headers={"Authorization": f"Bearer {USER}"}
        ) as r:
            assert r.status == 403 and "write to" in (await r.json())["error"]

        async with http.get(f"{base}/api/stats") as r:
            assert r.status == 401
        async with http.get(f"{base}/api/stats", headers={"apikey": USER}) as r:
            assert r.status == 403
        async with http.get(
            f"{base}/realtime/v1/api/stats", headers={"Authorization": f"Bearer {token()}"}
        ) as r:
            assert r.status == 200
            stats = orjson.loads(await r.read())
        assert stats["connections"] == 2 and stats["channels"] == 2
        assert stats["rooms"] == [{"topic": "stats-room", "private": False, "members": 2, "presences": 1}]
        assert sorted(s["vsn"] for s in stats["sockets"]) == ["1.0.0", "2.0.0"]
        assert stats["broadcasts"]["sent"] >= 2
        async with http.get(f"{base}/api/channels/stats-room", headers={"apikey": token()}) as r:
            users = orjson.loads(await r.read())
        assert sorted(m["sub"] for m in users["members"]) == [
            "11111111-1111-1111-1111-111111111111",
            "22222222-2222-2222-2222-222222222222",
        ]
        assert users["presence"]["a"]["metas"][0]["name"] == "Ann"
        async with http.get(f"{base}/api/channels/empty-room?private=true", headers={"apikey": token()}) as r:
            assert (await r.json())["members"] == []


async def test_policy_changes_reach_presence(pg_dsn: str) -> None:
    """Losing presence write withdraws the member's presence; losing presence read empties its view."""
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as a,
        PhoenixClient.connect(relay, token()) as watcher,  # service_role: sees everything
    ):
        sql(pg_dsn, "select realtime.create_topic_policy('read bc', 'read', $$extension = 'broadcast'$$)")
        sql(pg_dsn, "select realtime.create_topic_policy('read pr', 'read', $$extension = 'presence'$$)")
        sql(pg_dsn, "select realtime.create_topic_policy('write pr', 'write', $$extension = 'presence'$$)")
        await ok_join(watcher, "p", private=True, presence={"key": "w", "enabled": True})
        await ok_join(a, "p", private=True, presence={"key": "a", "enabled": True})
        await a.send("realtime:p", "presence", {"event": "track", "payload": {"v": 1}})
        await watcher.recv_until(lambda m: m["event"] == "presence_diff" and "a" in m["payload"]["joins"])

        sql(pg_dsn, "select realtime.drop_topic_policy('write pr')")
        left = await watcher.recv_until(lambda m: m["event"] == "presence_diff")
        assert "a" in left["payload"]["leaves"]
        ref = await a.send("realtime:p", "presence", {"event": "untrack"})  # leaving stays allowed
        assert (await a.recv_until(lambda m: m.get("ref") == ref))["payload"]["status"] == "ok"
        ref = await a.send("realtime:p", "presence", {"event": "track", "payload": {}})
        assert (await a.recv_until(lambda m: m.get("ref") == ref))["payload"]["status"] == "error"

        sql(pg_dsn, "select realtime.drop_topic_policy('read pr')")
        empty = await a.recv_until(lambda m: m["event"] == "presence_state")
        assert empty["payload"] == {}
        # still joined for broadcast, but no presence diffs any more
        await watcher.send("realtime:p", "presence", {"event": "track", "payload": {}})
        await watcher.send("realtime:p", "broadcast", {"type": "broadcast", "event": "still", "payload": {}})
        got = await a.recv_until(lambda m: m["event"] in ("broadcast", "presence_diff"))
        assert got["event"] == "broadcast"
