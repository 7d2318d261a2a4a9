"""Broadcast and presence in the SDK: the pure presence merge, the frames, and real-relay scenarios.

The unit tests drive :class:`relay_client.presence.Presences` with the relay's own frame shapes
(docs/broadcast-presence.md) and check Phoenix's merge semantics.  The integration tests run two
SDK clients against a real relay and Postgres; the reconnect ones put one client behind
:class:`FaultProxy` and check the promise of client_sdk/README.md: after a dropped connection
the channel rejoins, gets a fresh presence state, tracks its last state again (and not after
``untrack()``), and broadcasts flow again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from relay_client import (
    Broadcast,
    ChannelError,
    ChannelOptions,
    JoinError,
    NotJoinedError,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    RealtimeSubscribeStates,
    RelayClient,
    SendError,
    SendTimeoutError,
    SyncRelayClient,
)
from relay_client.presence import Presences
from relay_client.protocol import (
    ChannelClosedByServer,
    ProtocolError,
    broadcast_frame,
    join_frame,
    parse_broadcast,
    parse_system,
    presence_frame,
)
from relay_client.streams import Buffer, ChangeStream

from tests.sdk.helpers import until, url
from tests.support.relay import PhoenixClient, running_relay, token
from tests.support.tcp_proxy import FaultProxy

FAST: dict[str, Any] = {"initial_backoff": 0.05, "max_backoff": 0.3, "stable_after": 5.0, "timeout": 2.0}
USER = token("authenticated", sub="11111111-1111-1111-1111-111111111111")
OTHER = token("authenticated", sub="22222222-2222-2222-2222-222222222222")


# -- presence merge, without a network ---------------------------------------------------------
def meta(ref: str, **state: Any) -> dict[str, Any]:
    return {**state, "phx_ref": ref}


def entry(*metas: dict[str, Any]) -> dict[str, Any]:
    return {"metas": list(metas)}


def synced(state: dict[str, Any]) -> Presences:
    p = Presences("room")
    p.begin_join()
    p.joined()
    p.on_state(state)
    return p


def refs(p: Presences) -> dict[str, list[str]]:
    return {k: [m["presence_ref"] for m in v] for k, v in p.snapshot().items()}


def test_state_then_diffs_merge_by_phx_ref_as_phoenix_does() -> None:
    p = Presences("room")
    p.begin_join()
    p.joined()
    events = p.on_state({"ann": entry(meta("a1", tab=1)), "bob": entry(meta("b1"))})
    assert [type(e) for e in events] == [PresenceJoin, PresenceJoin, PresenceSync]
    first = events[0]
    assert isinstance(first, PresenceJoin)
    assert (first.key, first.current_presences) == ("ann", ())
    assert first.new_presences == ({"presence_ref": "a1", "tab": 1},)
    # the same user in a second tab: one key, two presences
    events = p.on_diff({"joins": {"ann": entry(meta("a2", tab=2))}, "leaves": {}})
    join = events[0]
    assert isinstance(join, PresenceJoin) and join.current_presences == ({"presence_ref": "a1", "tab": 1},)
    assert refs(p) == {"ann": ["a1", "a2"], "bob": ["b1"]}
    # an update (track again): leave the old meta, join the new one with phx_ref_prev
    events = p.on_diff(
        {
            "joins": {"ann": entry({"tab": 1, "away": True, "phx_ref": "a3", "phx_ref_prev": "a1"})},
            "leaves": {"ann": entry(meta("a1", tab=1))},
        }
    )
    assert [type(e) for e in events] == [PresenceJoin, PresenceLeave, PresenceSync]
    assert refs(p) == {"ann": ["a2", "a3"], "bob": ["b1"]}
    assert {"presence_ref": "a3", "tab": 1, "away": True} in p.snapshot()["ann"]  # no phx_ref(_prev)
    # the last presence of a key leaves: the key goes
    events = p.on_diff({"joins": {}, "leaves": {"bob": entry(meta("b1"))}})
    leave = events[0]
    assert isinstance(leave, PresenceLeave) and leave.key == "bob" and leave.current_presences == ()
    assert leave.left_presences == ({"presence_ref": "b1"},)
    assert "bob" not in p.snapshot()
    sync = events[-1]
    assert isinstance(sync, PresenceSync) and sync.state == p.snapshot()
    # a leave for something we never had changes nothing (and does not crash)
    assert [type(e) for e in p.on_diff({"joins": {}, "leaves": {"zed": entry(meta("z"))}})] == [PresenceSync]
    # snapshots are copies
    snap = p.snapshot()
    snap["ann"][0]["tab"] = 99
    snap.clear()
    assert refs(p) == {"ann": ["a2", "a3"]} and p.snapshot()["ann"][0]["tab"] == 2


def test_a_fresh_state_after_a_rejoin_replaces_the_old_one() -> None:
    p = synced({"me": entry(meta("m1", v=1)), "gone": entry(meta("g1")), "stay": entry(meta("s1"))})
    p.begin_join()  # the socket dropped; the channel rejoins
    p.joined()
    # the relay's fresh state: our old presence left with the old socket, "gone" left meanwhile,
    # "new" arrived, "stay" is the very same presence
    events = p.on_state({"stay": entry(meta("s1")), "new": entry(meta("n1"))})
    kinds = [(type(e).__name__, getattr(e, "key", None)) for e in events]
    assert sorted(kinds[:-1]) == [("PresenceJoin", "new"), ("PresenceLeave", "gone"), ("PresenceLeave", "me")]
    assert kinds[-1] == ("PresenceSync", None)
    assert refs(p) == {"stay": ["s1"], "new": ["n1"]}
    # our automatic re-track comes back as a diff with a new ref
    p.on_diff({"joins": {"me": entry(meta("m2", v=1))}, "leaves": {}})
    assert refs(p) == {"stay": ["s1"], "new": ["n1"], "me": ["m2"]}


def test_diffs_of_a_replaced_join_are_ignored_and_early_diffs_wait_for_the_state() -> None:
    p = synced({"a": entry(meta("a1"))})
    p.begin_join()
    # frames of the previous join (sent before the relay saw our new join) are ignored
    assert p.on_diff({"joins": {"x": entry(meta("x1"))}, "leaves": {}}) == []
    assert p.on_state({"x": entry(meta("x1"))}) == []
    assert refs(p) == {"a": ["a1"]}
    p.joined()
    # a diff before this join's state is held, then applied after it
    assert p.on_diff({"joins": {"b": entry(meta("b2"))}, "leaves": {"a": entry(meta("a1"))}}) == []
    events = p.on_state({"a": entry(meta("a1")), "c": entry(meta("c1"))})
    assert isinstance(events[-1], PresenceSync)
    assert refs(p) == {"c": ["c1"], "b": ["b2"]}


def test_held_diffs_are_bounded() -> None:
    p = Presences("room", max_pending=3)
    p.begin_join()
    p.joined()
    for i in range(10):
        p.on_diff({"joins": {f"k{i}": entry(meta(f"r{i}"))}, "leaves": {}})
    p.on_state({})
    assert sorted(refs(p)) == ["k7", "k8", "k9"]


@pytest.mark.parametrize(
    "bad",
    [[], {"k": {}}, {"k": {"metas": "x"}}, {"k": {"metas": [{"no_ref": 1}]}}, {"k": {"metas": [3]}}],
)
def test_malformed_presence_frames_raise(bad: Any) -> None:
    p = synced({})
    with pytest.raises(ProtocolError):
        p.on_state(bad)
    with pytest.raises(ProtocolError):
        p.on_diff({"joins": bad, "leaves": {}})


def test_broadcast_and_presence_frames_and_join_config() -> None:
    j = join_frame(
        "realtime:r",
        "2",
        "1",
        [],
        None,
        None,
        broadcast_self=True,
        broadcast_ack=True,
        presence_key="svc",
        presence_enabled=True,
        private=True,
    )
    assert j.payload["config"] == {
        "broadcast": {"ack": True, "self": True},
        "presence": {"key": "svc", "enabled": True},
        "postgres_changes": [],
        "private": True,
    }
    default = join_frame("realtime:r", "2", "1", [], None, None).payload["config"]
    assert default["presence"] == {"key": "", "enabled": False} and default["private"] is False
    b = broadcast_frame("realtime:r", "5", "1", "hi", {"n": 1})
    assert (b.event, b.ref, b.join_ref) == ("broadcast", "5", "1")
    assert b.payload == {"type": "broadcast", "event": "hi", "payload": {"n": 1}}
    t = presence_frame("realtime:r", "6", "1", "track", {"s": 1})
    assert t.payload == {"type": "presence", "event": "track", "payload": {"s": 1}}
    assert presence_frame("realtime:r", "7", "1", "untrack").payload == {
        "type": "presence",
        "event": "untrack",
    }


def test_broadcasts_are_typed_and_base64_payloads_become_bytes() -> None:
    m = parse_broadcast("r", {"type": "broadcast", "event": "hi", "payload": {"n": 1}})
    assert m == Broadcast("r", "hi", {"n": 1}) and not m.is_binary
    raw = parse_broadcast(
        "r",
        {
            "type": "broadcast",
            "event": "blob",
            "payload": {"base64": "AAEC/w=="},
            "meta": {"encoding": "base64"},
        },
    )
    assert raw.payload == b"\x00\x01\x02\xff" and raw.is_binary and raw.meta == {"encoding": "base64"}
    # a JSON payload that merely looks like base64 stays JSON (no meta)
    assert parse_broadcast("r", {"event": "e", "payload": {"base64": "AA=="}}).payload == {"base64": "AA=="}
    bad: Any
    for bad in (
        [],
        {"payload": {}},
        {"event": "e", "payload": {"base64": "***"}, "meta": {"encoding": "base64"}},
        {"event": "e", "payload": "AA==", "meta": {"encoding": "base64"}},
    ):
        with pytest.raises(ProtocolError):
            parse_broadcast("r", bad)


def test_a_policy_refusal_naming_a_token_topic_is_not_a_token_error() -> None:
    msg = "Unauthorized: You do not have permissions to read from this Channel topic: token-room"
    event = parse_system("token-room", {"extension": "system", "status": "error", "message": msg})
    assert event == ChannelClosedByServer(msg, token=False)
    assert JoinError("r", msg).unauthorized and not JoinError("r", "InvalidJWTToken: x").unauthorized


async def test_channel_options_keywords_and_official_params() -> None:
    client = RelayClient("ws://127.0.0.1:1/realtime/v1", token())
    ch = client.channel("room", broadcast_self=True, presence_key="k")
    assert ch.options == ChannelOptions(broadcast_self=True, presence_key="k")
    official = client.channel(
        "room2",
        {"config": {"broadcast": {"self": True, "ack": True}, "presence": {"key": "u"}, "private": True}},
    )
    assert official.options == ChannelOptions(True, True, "u", True)
    with pytest.raises(ValueError):
        client.channel("room3", {"config": {}}, private=True)
    with pytest.raises(ValueError):
        client.channel("room3", {"config": {"broadcast": {"self": "yes"}}})
    with pytest.raises(ValueError):
        client.channel("room3", {"config": {"nope": 1}})
    # not subscribed yet: nothing can be sent, but a presence is remembered for the join
    with pytest.raises(NotJoinedError):
        await ch.send_broadcast("e", {})
    with pytest.raises(ValueError):
        await ch.send_broadcast("", {})
    with pytest.raises(TypeError):
        await ch.send_broadcast("e", b"bytes")
    with pytest.raises(TypeError):
        await ch.track(["not", "an", "object"])  # type: ignore[arg-type]
    await ch.track({"s": 1})
    assert ch.tracked == {"s": 1}
    await client.close()


async def test_broadcast_streams_drop_the_oldest_when_full() -> None:
    buf: Buffer[int] = Buffer(3)
    dropped = [buf.offer(i) for i in range(5)]
    assert dropped == [False, False, False, True, True]
    stream = ChangeStream(buf)
    buf.close()
    assert [i async for i in stream] == [2, 3, 4]
    assert not buf.offer(9)


# -- against a real relay -------------------------------------------------------------------------
async def drain(stream: AsyncIterator[Any], seconds: float) -> list[Any]:
    """What ``stream`` yields within ``seconds`` (for "receives nothing more" assertions)."""
    out: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(await asyncio.wait_for(anext(stream), left))
        except (TimeoutError, StopAsyncIteration):
            break
    return out


def present(state: dict[str, list[dict[str, Any]]], key: str, **want: Any) -> bool:
    return any(all(p.get(k) == v for k, v in want.items()) for p in state.get(key, []))


def svc_refs(ch: Any) -> list[str]:
    return [p["presence_ref"] for p in ch.presence_state().get("svc", [])]


@pytest.mark.pg
async def test_two_clients_broadcast_with_self_and_ack(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        RelayClient(url(relay.port), USER, **FAST) as a_client,
        RelayClient(url(relay.port), OTHER, **FAST) as b_client,
    ):
        a = a_client.channel("room", broadcast_self=True, broadcast_ack=True)
        a_got: list[Broadcast] = []
        a_hi: list[Broadcast] = []
        a.on_broadcast("*", a_got.append).on_broadcast("HI", a_hi.append)
        b = b_client.channel("room")
        b_all = b.broadcasts()
        b_hi = b.broadcasts("hi")
        await a.subscribe(timeout=10)
        await b.subscribe(timeout=10)

        await a.send_broadcast("hi", {"n": 1})  # ack: the relay confirmed it was queued to all
        assert await asyncio.wait_for(anext(b_all), 5) == Broadcast("room", "hi", {"n": 1})
        assert (await asyncio.wait_for(anext(b_hi), 5)).payload == {"n": 1}
        await until(lambda: len(a_got) == 1, 5, "a's own broadcast (self: true)")
        assert a_hi == a_got  # "HI" matches "hi", as in the official clients

        for i in range(20):  # b: no ack, no self; in order at a
            await b.send_broadcast("seq", {"i": i})
        await until(lambda: len(a_got) == 21, 5, "b's broadcasts at a")
        assert [m.payload["i"] for m in a_got[1:]] == list(range(20))
        assert [m.event for m in await drain(b_all, 0.3)] == []  # b does not hear itself
        assert b.stats.broadcasts_sent == 20 and a.stats.broadcasts == 21

        # a realtime-js peer (vsn 2.0.0) sends an ArrayBuffer: a vsn 1.0.0 SDK gets the bytes
        async with PhoenixClient.connect(relay, OTHER, vsn="2.0.0") as js:
            assert (await js.join("room", []))["payload"]["status"] == "ok"
            await js.send_binary_broadcast(
                "realtime:room", "blob", bytes(range(256)), encoding=0, join_ref="1"
            )
            blob = await asyncio.wait_for(anext(b_all), 5)
        assert blob.event == "blob" and blob.payload == bytes(range(256)) and blob.is_binary
        assert blob.meta == {"encoding": "base64"}

        await b.unsubscribe()
        with pytest.raises(NotJoinedError):
            await b.send_broadcast("late", {})
        assert [m.event async for m in b_all] == []  # the stream ended with the channel


@pytest.mark.pg
async def test_presence_is_seen_by_the_other_client(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        RelayClient(url(relay.port), USER, **FAST) as a_client,
        RelayClient(url(relay.port), OTHER, **FAST) as b_client,
    ):
        joins: list[tuple[str, list[Any], list[Any]]] = []
        leaves: list[tuple[str, list[Any], list[Any]]] = []
        syncs: list[int] = []
        b = (
            b_client.channel("lobby", presence_key="watcher")
            .on_presence_join(lambda k, cur, new: joins.append((k, cur, new)))
            .on_presence_leave(lambda k, cur, left: leaves.append((k, cur, left)))
            .on_presence_sync(lambda: syncs.append(1))
        )
        events = b.presence_events()
        await b.subscribe(timeout=10)
        first = await asyncio.wait_for(anext(events), 5)  # the (empty) state after the join
        assert isinstance(first, PresenceSync) and first.state == {}

        a = a_client.channel("lobby", presence_key="svc")

        async def track_when_subscribed(state: RealtimeSubscribeStates, err: Exception | None) -> None:
            if state is RealtimeSubscribeStates.SUBSCRIBED:  # the realtime-js pattern, in a callback
                await a.track({"name": "svc", "v": 1})

        await a.subscribe(track_when_subscribed, timeout=10)
        await until(lambda: present(b.presence_state(), "svc", name="svc", v=1), 5, "svc present at b")
        assert joins[-1][0] == "svc" and joins[-1][1] == [] and joins[-1][2][0]["v"] == 1
        assert "phx_ref" not in joins[-1][2][0] and joins[-1][2][0]["presence_ref"]
        await until(lambda: present(a.presence_state(), "svc", v=1), 5, "a sees itself")
        assert a.presence_state()["svc"] == b.presence_state()["svc"]

        await a.track({"name": "svc", "v": 2})  # an update replaces the presence
        await until(lambda: present(b.presence_state(), "svc", v=2), 5, "the update at b")
        assert len(b.presence_state()["svc"]) == 1 and a.tracked == {"name": "svc", "v": 2}

        await a.untrack()
        await until(lambda: "svc" not in b.presence_state(), 5, "svc gone at b")
        assert leaves[-1][0] == "svc" and leaves[-1][1] == [] and leaves[-1][2][0]["v"] == 2
        assert a.tracked is None and syncs
        seen = await drain(events, 0.2)
        kinds = [type(e).__name__ for e in seen]
        assert "PresenceJoin" in kinds and "PresenceLeave" in kinds and kinds[-1] == "PresenceSync"


@pytest.mark.pg
async def test_after_a_forced_disconnect_the_client_tracks_again_and_broadcasts_flow(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        FaultProxy(relay.port) as proxy,
        RelayClient(url(proxy.port), USER, hb_interval=0.5, **FAST) as a_client,
        RelayClient(url(relay.port), OTHER, **FAST) as b_client,
    ):
        b_joins: list[str] = []
        b_left: list[str] = []
        b = b_client.channel("ops", presence_key="dash", broadcast_ack=True)
        b.on_presence_join(lambda k, cur, new: b_joins.append(k))
        b.on_presence_leave(lambda k, cur, left: b_left.extend(p["presence_ref"] for p in left))
        b_msgs = b.broadcasts()
        await b.subscribe(timeout=10)
        await b.track({"role": "dashboard"})
        a = a_client.channel("ops", presence_key="svc", broadcast_ack=True)
        a_msgs = a.broadcasts()
        subscribed: list[RealtimeSubscribeStates] = []
        await a.subscribe(lambda s, e: subscribed.append(s), timeout=10)
        await a.track({"service": "billing"})
        await until(lambda: present(b.presence_state(), "svc", service="billing"), 5, "svc present")
        (old_ref,) = svc_refs(b)
        await until(lambda: svc_refs(a) == [old_ref] and "dash" in a.presence_state(), 5, "a's state")
        assert a.stats.retracks == 0

        # 1. the connection drops (FIN): the relay drops svc's presence; the SDK reconnects,
        #    rejoins, replaces its state with the relay's fresh one and tracks again
        assert proxy.drop() == 1
        await until(lambda: len(svc_refs(b)) == 1 and old_ref not in svc_refs(b), 10, "svc back at b, anew")
        assert old_ref in b_left and b_joins.count("svc") == 2
        assert present(b.presence_state(), "svc", service="billing")
        assert a.stats.retracks == 1 and subscribed.count(RealtimeSubscribeStates.SUBSCRIBED) == 2
        # a's own state is the relay's fresh one: its previous connection's presence is gone
        await until(lambda: svc_refs(a) == svc_refs(b) and "dash" in a.presence_state(), 5, "a's new state")

        # broadcasts flow both ways after the reconnect
        await a.send_broadcast("after", {"n": 1})
        assert (await asyncio.wait_for(anext(b_msgs), 5)).payload == {"n": 1}
        await b.send_broadcast("reply", {"n": 2})
        assert (await asyncio.wait_for(anext(a_msgs), 5)).payload == {"n": 2}

        # 2. offline for a while: sending fails clearly, a new state is remembered and tracked
        #    when the connection is back
        proxy.drop()
        proxy.blackhole()  # new connections hang: the client stays offline
        await until(lambda: not a_client.status.online, 5, "a offline")
        with pytest.raises(NotJoinedError, match="not joined"):
            await a.send_broadcast("offline", {})
        await a.track({"service": "billing", "v": 2})  # remembered, no error
        await until(lambda: not svc_refs(b), 5, "svc gone at b while a is offline")
        proxy.blackhole(False)
        await until(lambda: present(b.presence_state(), "svc", v=2), 10, "the new state tracked on rejoin")
        assert a.stats.retracks == 2

        # 3. after untrack() a reconnect does not track again
        await a.untrack()
        await until(lambda: "svc" not in b.presence_state(), 5, "svc untracked")
        joins = a.stats.joins
        assert proxy.drop() == 1
        await until(lambda: a.stats.joins == joins + 1, 10, "a rejoined")
        await a.send_broadcast("still-here", {})  # (acked: the rejoin is complete)
        assert (await asyncio.wait_for(anext(b_msgs), 5)).event == "still-here"
        await asyncio.sleep(0.3)
        assert "svc" not in b.presence_state() and a.stats.retracks == 2


@pytest.mark.pg
async def test_presence_listeners_added_after_subscribe_turn_presence_on(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        RelayClient(url(relay.port), USER, **FAST) as a_client,
        RelayClient(url(relay.port), OTHER, **FAST) as b_client,
    ):
        a = await a_client.channel("late", presence_key="a").subscribe(timeout=10)
        await a.track({"x": 1})
        b = await b_client.channel("late").subscribe(timeout=10)
        await asyncio.sleep(0.2)
        assert b.presence_state() == {} and b.stats.joins == 1  # presence was not asked for
        syncs: list[int] = []
        b.on_presence_sync(lambda: syncs.append(1))  # as realtime-py: the channel rejoins
        await until(lambda: present(b.presence_state(), "a", x=1), 5, "presence after the listener")
        assert b.stats.joins == 2 and syncs


@pytest.mark.pg
async def test_private_channels_refusals_are_clear_errors_and_not_a_tight_loop(pg_dsn: str) -> None:
    def sql(text: str) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(text)

    async with (
        running_relay(pg_dsn) as relay,
        RelayClient(url(relay.port), USER, initial_backoff=0.2, max_backoff=1.0, timeout=2.0) as client,
    ):
        denied = client.channel("vault", private=True)
        with pytest.raises(JoinError, match="Unauthorized: You do not have permissions to read") as info:
            await denied.subscribe(timeout=10)
        assert info.value.unauthorized and denied.is_closed
        await asyncio.sleep(0.5)
        assert denied.stats.refusals == 1  # a refused first join is not retried

        sql("select realtime.create_topic_policy('vault read', 'read', $$topic = 'vault'$$)")
        ch = client.channel("vault", private=True, broadcast_ack=True)
        errors: list[Exception | None] = []
        await ch.subscribe(
            lambda s, e: errors.append(e) if s is RealtimeSubscribeStates.CHANNEL_ERROR else None
        )
        with pytest.raises(SendError) as refused:  # read, but no write policy
            await ch.send_broadcast("x", {})
        assert refused.value.unauthorized and "write to" in refused.value.reason
        with pytest.raises(SendError) as refused_track:
            await ch.track({"s": 1})
        assert refused_track.value.unauthorized and ch.tracked is None

        # the read policy goes: the relay closes the channel; rejoins are refused, with backoff
        sql("select realtime.drop_topic_policy('vault read')")
        await until(lambda: ch.stats.server_closes == 1, 10, "the relay closing the channel")
        t0 = time.monotonic()
        await until(lambda: ch.stats.refusals >= 2, 10, "refused rejoins")
        await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - t0)))
        assert 2 <= ch.stats.refusals <= 12, ch.stats  # backoff, not a tight loop
        closed = errors[0]
        assert isinstance(closed, ChannelError) and closed.unauthorized
        assert all(isinstance(e, JoinError) and e.unauthorized for e in errors[1:]) and len(errors) >= 3
        with pytest.raises(NotJoinedError):
            await ch.send_broadcast("x", {})

        # the policy comes back: the channel recovers by itself
        sql("select realtime.create_topic_policy('vault read', 'read', $$topic = 'vault'$$)")
        await until(lambda: ch.is_joined, 10, "rejoined once the policy is back")


@pytest.mark.pg
async def test_ack_timeout_is_a_send_timeout_error(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, FaultProxy(relay.port) as proxy:
        async with RelayClient(url(proxy.port), USER, hb_interval=5.0, **FAST) as client:
            ch = await client.channel("slow", broadcast_ack=True).subscribe(timeout=10)
            proxy.stall()  # nothing goes through, but the socket stays open
            with pytest.raises(SendTimeoutError) as info:
                await ch.send_broadcast("e", {}, timeout=0.3)
            assert isinstance(info.value, TimeoutError) and isinstance(info.value, SendError)
            proxy.stall(False)


@pytest.mark.pg
async def test_the_blocking_facade_broadcasts_and_tracks(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:

        def blocking_app() -> tuple[Any, Any, list[str]]:
            synced: list[str] = []
            with SyncRelayClient(url(relay.port), USER, **FAST) as client:
                ch = client.channel("sync-room", broadcast_self=True, broadcast_ack=True, presence_key="me")
                ch.on_presence_sync(lambda: synced.append("sync"))
                msgs = ch.broadcasts("e", timeout=5)
                ch.subscribe(timeout=10)
                ch.track({"v": 1})
                ch.send_broadcast("e", {"x": 1})
                got = next(msgs)
                deadline = time.monotonic() + 5
                while "me" not in ch.presence_state() and time.monotonic() < deadline:
                    time.sleep(0.02)
                state = ch.presence_state()
                ch.untrack()
            return got, state, synced

        got, state, synced = await asyncio.to_thread(blocking_app)
        assert got.payload == {"x": 1} and state["me"][0]["v"] == 1 and synced
