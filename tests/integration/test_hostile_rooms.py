"""Hostile payloads in broadcast and presence rooms: refused at the edge, rooms stay readable.

Regression tests for issue 12 items 4, 5 and 8.  Deeply nested JSON used to be accepted (orjson
reads 1,024 levels but writes only 254), so the relay stored or queued what it could not encode:
later joiners of a room got ``internal error``, ``GET /api/channels`` answered 500, the tracker's
teardown raised (its socket stayed counted forever), a database message crashed the stream, and
a REST batch was delivered in part.  Presence had no bounds, so one socket could grow the relay
without limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from relay.core.payload_limits import DEFAULT_MAX_DEPTH
from relay.service import RunningRelay
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

USER = token("authenticated", sub="11111111-1111-1111-1111-111111111111")
OTHER_SUB = "22222222-2222-2222-2222-222222222222"
OTHER = token("authenticated", sub=OTHER_SUB)


def nested(levels: int) -> str:
    """``{"a":{"a":...1...}}`` with ``levels`` objects, as text (orjson cannot write it)."""
    return '{"a":' * levels + "1" + "}" * levels


def frame(vsn: str, topic: str, event: str, payload_json: str, ref: str) -> str:
    t, e = orjson.dumps(topic).decode(), orjson.dumps(event).decode()
    if vsn == "2.0.0":
        return f'[null,"{ref}",{t},{e},{payload_json}]'
    return f'{{"topic":{t},"event":{e},"ref":"{ref}","join_ref":null,"payload":{payload_json}}}'


def is_reply(ref: str | None) -> Any:
    return lambda m: m["event"] == "phx_reply" and m["ref"] == ref


async def ok_join(c: PhoenixClient, channel: str, **config: Any) -> None:
    reply = await c.join(channel, [], **config)
    assert reply["payload"]["status"] == "ok", reply


async def track(c: PhoenixClient, channel: str, meta: Any) -> dict[str, Any]:
    ref = await c.send(
        f"realtime:{channel}", "presence", {"type": "presence", "event": "track", "payload": meta}
    )
    reply: dict[str, Any] = (await c.recv_until(is_reply(ref)))["payload"]
    return reply


async def wait_connections(relay: RunningRelay, n: int) -> None:
    for _ in range(100):
        if len(relay.server.connections) == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(relay.server.connections)} connections counted, expected {n}")


async def test_deep_presence_meta_is_refused_and_the_room_stays_readable(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as watcher,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(watcher, "deep", presence={"key": "w", "enabled": True})
        await watcher.recv_until(lambda m: m["event"] == "presence_state")
        async with PhoenixClient.connect(relay, OTHER) as tracker:
            await ok_join(tracker, "deep", presence={"key": "t", "enabled": True})
            await tracker.send_raw(
                frame(
                    "1.0.0",
                    "realtime:deep",
                    "presence",
                    f'{{"type":"presence","event":"track","payload":{nested(300)}}}',
                    "deep-1",
                )
            )
            err = await tracker.recv_until(is_reply("deep-1"))
            assert err["payload"]["status"] == "error"
            assert err["payload"]["response"]["code"] == "payload_too_deep"
            assert f"{DEFAULT_MAX_DEPTH} levels" in err["payload"]["response"]["reason"]
            # nothing was stored: the room's state is readable by a later joiner ...
            async with PhoenixClient.connect(relay, USER, vsn="2.0.0") as late:
                await ok_join(late, "deep", presence={"key": "late", "enabled": True})
                state = await late.recv_until(lambda m: m["event"] == "presence_state")
                assert state["payload"] == {}
            # ... and over HTTP
            url = f"http://127.0.0.1:{relay.port}/api/channels/deep"
            async with http.get(url, headers={"apikey": token()}) as r:
                assert r.status == 200 and (await r.json())["presence"] == {}
            # a valid track still works after the refusal
            assert (await track(tracker, "deep", {"ok": True}))["status"] == "ok"
            await watcher.recv_until(lambda m: m["event"] == "presence_diff" and "t" in m["payload"]["joins"])
        # the tracker's socket is gone: its presence leaves and it is no longer counted
        gone = await watcher.recv_until(lambda m: m["event"] == "presence_diff")
        assert "t" in gone["payload"]["leaves"]
        await wait_connections(relay, 1)


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_deep_broadcasts_are_refused_with_a_code(pg_dsn: str, vsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER, vsn=vsn) as sender,
        PhoenixClient.connect(relay, OTHER) as receiver,
    ):
        await ok_join(sender, "bc", broadcast={"ack": True})
        await ok_join(receiver, "bc")
        for levels in (300, 1000, DEFAULT_MAX_DEPTH + 1, DEFAULT_MAX_DEPTH):
            ref = f"d{levels}"
            body = f'{{"type":"broadcast","event":"e{levels}","payload":{nested(levels)}}}'
            await sender.send_raw(frame(vsn, "realtime:bc", "broadcast", body, ref))
            reply = await sender.recv_until(is_reply(ref))
            if levels == DEFAULT_MAX_DEPTH:  # a payload at the limit goes through
                assert reply["payload"]["status"] == "ok", reply
                got = await receiver.recv_until(lambda m: m["event"] == "broadcast")
                assert got["payload"]["event"] == f"e{levels}"
            else:
                assert reply["payload"]["status"] == "error"
                assert reply["payload"]["response"]["code"] == "payload_too_deep"
        if vsn == "2.0.0":  # realtime-js sends broadcasts as binary kind 3 frames
            for levels in (300, 1000):
                ref = await sender.send_binary_broadcast("realtime:bc", "bin", nested(levels).encode())
                reply = await sender.recv_until(is_reply(ref))
                assert reply["payload"]["response"]["code"] == "payload_too_deep"
        # nothing refused reached the receiver, and the room still works
        await sender.send("realtime:bc", "broadcast", {"type": "broadcast", "event": "after", "payload": {}})
        got = await receiver.recv_until(lambda m: m["event"] == "broadcast")
        assert got["payload"]["event"] == "after"


async def test_oversized_broadcast_is_refused(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn, max_payload_bytes=1000) as relay,
        PhoenixClient.connect(relay, USER, vsn="2.0.0") as sender,
        PhoenixClient.connect(relay, OTHER) as receiver,
    ):
        await ok_join(sender, "big", broadcast={"ack": True})
        await ok_join(receiver, "big")
        ref = await sender.send(
            "realtime:big", "broadcast", {"type": "broadcast", "event": "x", "payload": {"s": "y" * 2000}}
        )
        reply = await sender.recv_until(is_reply(ref))
        assert reply["payload"]["response"]["code"] == "payload_too_large"
        assert "1000 bytes" in reply["payload"]["response"]["reason"]
        ref = await sender.send_binary_broadcast("realtime:big", "b", b"\x00" * 1001, encoding=0)
        assert (await sender.recv_until(is_reply(ref)))["payload"]["response"]["code"] == "payload_too_large"
        assert not [m for m in await receiver.collect(0.3) if m["event"] == "broadcast"]


async def test_rest_batch_is_validated_whole_before_anything_is_sent(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, OTHER) as receiver,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(receiver, "batch")
        base = f"http://127.0.0.1:{relay.port}/api"
        hdrs = {"apikey": USER, "Content-Type": "application/json"}

        def msg(event: str, payload_json: str) -> str:
            return f'{{"topic":"batch","event":"{event}","payload":{payload_json},"private":false}}'

        body = (
            '{"messages":[' + ",".join([msg("one", "{}"), msg("two", nested(300)), msg("three", "{}")]) + "]}"
        )
        async with http.post(f"{base}/broadcast", data=body, headers=hdrs) as r:
            assert r.status == 422
            err = await r.json()
        assert err["code"] == "payload_too_deep" and err["index"] == 1 and "messages[1]" in err["error"]
        async with http.post(f"{base}/broadcast/batch/events/solo", data=nested(1000), headers=hdrs) as r:
            assert r.status == 422 and (await r.json())["code"] == "payload_too_deep"
        assert not [m for m in await receiver.collect(0.3) if m["event"] == "broadcast"]
        # the same batch without the deep message is delivered whole, in order
        body = '{"messages":[' + ",".join([msg("one", "{}"), msg("three", "{}")]) + "]}"
        async with http.post(f"{base}/broadcast", data=body, headers=hdrs) as r:
            assert r.status == 202
        got = [
            (await receiver.recv_until(lambda m: m["event"] == "broadcast"))["payload"]["event"]
            for _ in range(2)
        ]
        assert got == ["one", "three"]


async def test_rest_batch_too_large_payload(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn, max_payload_bytes=100) as relay,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{relay.port}/api"
        body = {
            "messages": [
                {"topic": "t", "event": "e", "payload": {}},
                {"topic": "t", "event": "e", "payload": {"s": "x" * 200}},
            ]
        }
        async with http.post(f"{base}/broadcast", json=body, headers={"apikey": USER}) as r:
            assert r.status == 422
            err = await r.json()
        assert err["code"] == "payload_too_large" and err["index"] == 1
        hdrs = {"apikey": USER, "Content-Type": "application/octet-stream"}
        async with http.post(f"{base}/broadcast/t/events/e", data=b"\x01" * 101, headers=hdrs) as r:
            assert r.status == 422 and (await r.json())["code"] == "payload_too_large"


async def test_deep_database_message_is_skipped_and_the_stream_goes_on(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as c,
    ):
        await ok_join(c, "dbdeep")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("select realtime.send(%s::jsonb, 'deep', 'dbdeep', false)", (nested(300),))
            conn.execute("select realtime.send('{\"n\": 1}'::jsonb, 'fine', 'dbdeep', false)")
        got = await c.recv_until(lambda m: m["event"] == "broadcast")
        assert got["payload"]["event"] == "fine"
        assert relay.server.topics.refused >= 1


async def test_presence_is_bounded_per_socket_and_per_room(pg_dsn: str) -> None:
    async with (
        running_relay(
            pg_dsn, max_socket_presences=3, max_socket_presence_bytes=10_000, max_room_presences=2
        ) as relay,
        PhoenixClient.connect(relay, USER) as a,
        PhoenixClient.connect(relay, OTHER) as b,
        PhoenixClient.connect(relay, OTHER, vsn="2.0.0") as c,
    ):
        for i in range(5):
            await ok_join(a, f"p{i}", presence={"key": "a"})
        # count: three presences per socket, the fourth is refused
        for i in range(3):
            assert (await track(a, f"p{i}", {"i": i}))["status"] == "ok"
        err = await track(a, "p3", {"i": 3})
        assert err["status"] == "error" and err["response"]["code"] == "too_many_presences"
        # tracking again on a channel that already has a presence replaces it (no new slot)
        assert (await track(a, "p0", {"i": 0, "again": True}))["status"] == "ok"
        # untracking frees a slot
        ref = await a.send("realtime:p0", "presence", {"event": "untrack"})
        assert (await a.recv_until(is_reply(ref)))["payload"]["status"] == "ok"
        assert (await track(a, "p3", {"i": 3}))["status"] == "ok"

        # bytes: 10,000 bytes of metas per socket, whatever the channels
        await ok_join(b, "q0", presence={"key": "b"})
        await ok_join(b, "q1", presence={"key": "b"})
        assert (await track(b, "q0", {"s": "x" * 6000}))["status"] == "ok"
        err = await track(b, "q1", {"s": "x" * 6000})
        assert err["status"] == "error" and err["response"]["code"] == "presence_too_large"
        assert (await track(b, "q0", {"s": "x" * 9000}))["status"] == "ok"  # a replacement counts once
        assert (await track(b, "q1", {"s": "x" * 500}))["status"] == "ok"

        # room: two presences in p1 (a's and c's), a third member is refused
        await ok_join(c, "p1", presence={"key": "c"})
        await ok_join(b, "p1", presence={"key": "b2"})
        assert (await track(c, "p1", {}))["status"] == "ok"
        err = await track(b, "p1", {})
        assert err["status"] == "error" and err["response"]["code"] == "room_presence_full"
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{relay.port}/api/stats"
            async with http.get(url, headers={"apikey": token()}) as r:
                stats = await r.json()
        assert {r["topic"]: r["presences"] for r in stats["rooms"]}["p1"] == 2
        assert stats["limits"] == {"refused": 3, "presence_errors": 0}


async def test_an_unencodable_meta_that_slipped_through_never_breaks_the_room(pg_dsn: str) -> None:
    """Defence in depth: a stored meta the encoder refuses is replaced by a counted placeholder.

    The edge check makes this impossible through the protocol, so the meta is put in the room the
    way a missed check would have: straight into the room's presence.
    """
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, USER) as watcher,
        aiohttp.ClientSession() as http,
    ):
        await ok_join(watcher, "slip", presence={"key": "w", "enabled": True})
        await watcher.recv_until(lambda m: m["event"] == "presence_state")
        async with PhoenixClient.connect(relay, OTHER) as tracker:
            await ok_join(tracker, "slip", presence={"key": "t"})
            (conn,) = [c for c in relay.server.connections if c.claims.get("sub") == OTHER_SUB]
            chan = conn.channels["realtime:slip"]
            assert chan.room is not None
            chan.room.presence.track(chan, "t", orjson.loads(nested(300)))
            async with PhoenixClient.connect(relay, USER, vsn="2.0.0") as late:
                await ok_join(late, "slip", presence={"key": "late", "enabled": True})
                state = await late.recv_until(lambda m: m["event"] == "presence_state")
            (meta,) = state["payload"]["t"]["metas"]
            assert meta["error"] == "presence_unencodable" and meta["phx_ref"]
            assert relay.server.topics.presence_errors == 1
            url = f"http://127.0.0.1:{relay.port}/api/channels/slip"
            async with http.get(url, headers={"apikey": token()}) as r:
                assert r.status == 200
                assert (await r.json())["presence"]["t"]["metas"][0]["phx_ref"] == meta["phx_ref"]
        gone = await watcher.recv_until(lambda m: m["event"] == "presence_diff")
        assert gone["payload"]["leaves"]["t"]["metas"][0]["phx_ref"] == meta["phx_ref"]
        await wait_connections(relay, 1)


async def test_teardown_survives_a_channel_that_fails_to_leave(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure leaving one room must not skip the other channels or keep the socket counted."""
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, USER) as watcher:
        await ok_join(watcher, "keep")
        hub = relay.server.topics
        real_leave = hub.leave

        def failing_leave(chan: Any) -> None:
            if chan.topic == "realtime:boom":
                raise RuntimeError("injected failure leaving the room")
            real_leave(chan)

        monkeypatch.setattr(hub, "leave", failing_leave)
        async with PhoenixClient.connect(relay, OTHER) as c:
            await ok_join(c, "boom")
            await ok_join(c, "other")
            assert len(relay.server.connections) == 2
        await wait_connections(relay, 1)
        assert hub.rooms.get("other", False) is None  # the channel after the failing one was closed too
