"""Features today's official clients send (Supabase Realtime 2026): ``replication_ready`` and
resuming from positions kept on the application's binding objects.

Real Postgres, real relay, raw WebSockets (the interop tests drive the same through realtime-js).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration.test_resume import _alerts, _changes, _join, _n_changes, _system, _until_resumed
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
            last = (await _n_changes(c, 2))[-1]["position"]
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
                got += await _n_changes(c, 1)
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
            first, second = await _n_changes(c, 2)
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
