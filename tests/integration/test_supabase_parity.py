"""Features today's official clients send (Supabase Realtime 2026): ``replication_ready`` and
resuming from positions kept on the application's binding objects.

Real Postgres, real relay, raw WebSockets (the interop tests drive the same through realtime-js).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import psycopg
import pytest

from tests.integration.test_resume import _alerts, _changes, _join, _system, _until_resumed
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

ALERTS = {"event": "*", "schema": "public", "table": "alerts"}


async def test_replication_ready_is_sent_once_the_stream_is_up(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        await asyncio.wait_for(relay.server.floors_ready.wait(), 20)
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join("ready", [ALERTS], broadcast={"replication_ready": True})
            assert reply["payload"]["status"] == "ok"
            msg = await c.recv_until(
                lambda m: m["event"] == "system" and m["payload"].get("extension") == "system"
            )
            assert msg["payload"] == {
                "channel": "ready",
                "extension": "system",
                "status": "ok",
                "message": "Replication connection established",
            }
            # a channel that did not ask gets no such message
            reply = await c.join("plain", [ALERTS])
            frames = await c.collect(0.5)
            assert not [
                m for m in frames if m["payload"].get("message") == "Replication connection established"
            ]


async def test_resume_position_on_the_binding_objects(pg_dsn: str) -> None:
    """realtime-js keeps only four config keys, but re-sends the application's binding objects."""
    branch1 = token("authenticated", branch_id=1)
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay, branch1) as c:
            await _join(c)
            await asyncio.to_thread(_alerts, pg_dsn, 2)
            last = (await c.changes(2))[-1]["position"]
        missed = await asyncio.to_thread(_alerts, pg_dsn, 3)
        async with PhoenixClient.connect(relay, branch1) as c:
            binding = {**ALERTS, "resume_from": last, "tx_end": True}
            reply = await c.join("alerts", [binding])
            assert reply["payload"]["status"] == "ok"
            # the reply echoes the binding as sent (realtime-js compares event/schema/table/filter)
            echoed = reply["payload"]["response"]["postgres_changes"][0]
            assert echoed["resume_from"] == last and echoed["table"] == "alerts"
            frames = await _until_resumed(c)
            got = _changes(frames)
            deadline = time.monotonic() + 10
            while len(got) < len(missed) and time.monotonic() < deadline:
                got += await c.changes(1)
            assert [d["record"]["id"] for d in got] == missed
            assert _system(frames)[-1]["resumed_from"] == last
            # tx_end requested on the binding: the transaction's end follows its rows
            tail: list[dict[str, Any]] = await c.collect(1.0)
            ends = [m for m in frames + tail if m["event"] == "tx_end"]
            assert ends and ends[-1]["payload"]["position"] == got[-1]["position"]


async def test_earliest_binding_position_wins_and_bad_positions_are_refused(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay) as c:
            await _join(c)
            await asyncio.to_thread(_alerts, pg_dsn, 2, 1, False)
            first, second = await c.changes(2)
        async with PhoenixClient.connect(relay) as c:
            bindings = [
                {**ALERTS, "event": "INSERT", "resume_from": second["position"]},
                {**ALERTS, "event": "UPDATE", "resume_from": first["position"]},
            ]
            assert (await c.join("alerts", bindings))["payload"]["status"] == "ok"
            frames = await _until_resumed(c)
            assert _system(frames)[-1]["resumed_from"] == first["position"]
            assert [d["record"]["id"] for d in _changes(frames)] == [second["record"]["id"]]
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join("alerts", [{**ALERTS, "resume_from": "0/16B3748"}])
            assert reply["payload"]["status"] == "error"
            assert reply["payload"]["response"]["reason"].startswith("InvalidResume:")


def _sql(dsn: str, text: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text, params)


def _bcasts(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["payload"] for m in frames if m["event"] == "broadcast"]


async def test_broadcast_replay_on_private_channels(pg_dsn: str) -> None:
    admin = token()  # service_role: admitted to private channels without topic policies
    async with running_relay(pg_dsn) as relay:
        await asyncio.wait_for(relay.server.floors_ready.wait(), 20)
        for i in range(4):
            _sql(pg_dsn, "select realtime.send(jsonb_build_object('i', %s::int), 'note', 'room:r')", i)
        _sql(pg_dsn, "select realtime.send('{\"other\": 1}', 'note', 'room:other')")
        _sql(pg_dsn, "select realtime.send('{\"public\": 1}', 'note', 'room:r', false)")
        # wait until the relay has decoded them
        deadline = time.monotonic() + 10
        while len(relay.server.topics.history.since("room:r", 0, 25, int(time.time() * 1000)).messages) < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with PhoenixClient.connect(relay, admin) as c:
            reply = await c.join("room:r", [], private=True, broadcast={"replay": {"since": 0, "limit": 2}})
            assert reply["payload"]["status"] == "ok", reply
            _sql(pg_dsn, "select realtime.send('{\"i\": 99}', 'note', 'room:r')")
            await c.recv_until(lambda m: m["event"] == "broadcast" and m["payload"]["payload"] == {"i": 99})
            got = _bcasts(c.inbox)  # the inbox keeps every frame, in arrival order
            # the two newest replayed first, oldest first, marked; then the live one
            assert [b["payload"] for b in got] == [{"i": 2}, {"i": 3}, {"i": 99}]
            assert [b["meta"].get("replayed") for b in got] == [True, True, None]
            assert all(len(b["meta"]["id"]) == 36 for b in got)
            assert len({b["meta"]["id"] for b in got}) == 3
            # two asked and two given: nothing is said to be missing
            assert not [m for m in c.inbox if m["payload"].get("code") == "broadcast_replay_incomplete"]
        async with PhoenixClient.connect(relay, admin, vsn="2.0.0") as c:
            # everything since the epoch: the relay holds only what was sent since it started
            reply = await c.join("room:r", [], private=True, broadcast={"replay": {"since": 0}})
            assert reply["payload"]["status"] == "ok", reply
            frames = await c.collect(0.5)
            assert [b["payload"] for b in _bcasts(frames)] == [{"i": i} for i in (0, 1, 2, 3, 99)]
            assert all(m.get("binary") for m in frames if m["event"] == "broadcast")  # kind 4 with meta
            note = [m["payload"] for m in frames if m["event"] == "system"]
            assert note and note[-1]["code"] == "broadcast_replay_incomplete" and note[-1]["status"] == "ok"
        async with PhoenixClient.connect(relay, admin) as c:
            since = int(time.time() * 1000) + 60_000  # nothing after it
            reply = await c.join(
                "room:r", [], private=True, broadcast={"replay": {"since": since, "limit": 5}}
            )
            assert reply["payload"]["status"] == "ok"
            assert _bcasts(await c.collect(0.3)) == []
            for bad, why in (
                ({"since": 0, "limit": 26}, "limit"),
                ({"since": "yesterday"}, "since"),
                ([1], "object"),
            ):
                reply = await c.join("room:bad", [], private=True, broadcast={"replay": bad})
                assert reply["payload"]["status"] == "error"
                assert reply["payload"]["response"]["reason"].startswith("InvalidReplay:") and why in str(
                    reply
                )
            reply = await c.join("room:r", [], broadcast={"replay": {"since": 0}})  # public
            assert "only available on private channels" in reply["payload"]["response"]["reason"]


async def test_send_binary_reaches_binary_and_text_clients(pg_dsn: str) -> None:
    blob = bytes(range(256)) * 2
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, token(), vsn="2.0.0") as v2,
        PhoenixClient.connect(relay, token(), vsn="1.0.0") as v1,
    ):
        for c in (v1, v2):
            assert (await c.join("files", [], private=True))["payload"]["status"] == "ok"
        _sql(pg_dsn, "select realtime.send_binary(%s, 'blob', 'files')", blob)
        got2 = await v2.recv_until(lambda m: m["event"] == "broadcast")
        assert got2["binary"] and got2["payload"]["payload"] == blob and got2["payload"]["event"] == "blob"
        assert len(got2["payload"]["meta"]["id"]) == 36
        got1 = await v1.recv_until(lambda m: m["event"] == "broadcast")
        assert base64.b64decode(got1["payload"]["payload"]["base64"]) == blob
        assert got1["payload"]["meta"] == {"id": got2["payload"]["meta"]["id"], "encoding": "base64"}


async def test_a_column_hidden_by_select_still_drives_the_row_policy(pg_dsn: str) -> None:
    """The demo policy ``branch_id = (claims->>'branch_id')::int`` decides on a column the
    subscriber did not select: the payload is cut, the authorization is not."""
    branch1 = token("authenticated", branch_id=1)
    binding = {"event": "INSERT", "schema": "public", "table": "bookings", "select": ["status"]}
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, branch1) as c:
        assert (await c.join("sel", [binding]))["payload"]["status"] == "ok"
        ids = []
        for branch in (2, 1, 3, 1):
            rows = await asyncio.to_thread(
                _rows,
                pg_dsn,
                "insert into bookings (branch_id, client_id, service, status, starts_at, ends_at, price) "
                "select %s, (select id from clients order by id limit 1), 'cut', 'pending', now(), "
                "now() + interval '1 hour', 10 returning id",
                branch,
            )
            ids.append((branch, rows[0][0]))
        frames = await c.collect_n(lambda m: bool(m["event"] == "postgres_changes"), 2)
        got = [m["payload"]["data"] for m in frames if m["event"] == "postgres_changes"]
        assert [d["record"] for d in got] == [{"id": i, "status": "pending"} for b, i in ids if b == 1]


def _rows(dsn: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(text, params).fetchall()
