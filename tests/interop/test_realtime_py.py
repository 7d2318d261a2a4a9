"""The official Python client (PyPI ``realtime`` 2.34.x, vsn 1.0.0) against a real relay, unchanged.

realtime-py validates every inbound frame with pydantic and *silently drops* (logs at ERROR,
"Unrecognized message format") any frame that does not fit, so besides asserting the callback
payloads these tests also assert that the client logged no such error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent as ListenEvent

from tests.interop.helpers import BOOKING_COLUMNS, delete_booking, insert_booking, set_status
from tests.support.relay import running_relay, token

pytestmark = [pytest.mark.pg, pytest.mark.interop]

WAIT = 10.0  # upper bound for any single wait
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


ClientErrors = Callable[[], list[str]]


@pytest.fixture()
def client_errors(caplog: pytest.LogCaptureFixture) -> ClientErrors:
    """Errors the realtime client logged (dropped frames, channel errors, ...)."""
    caplog.set_level(logging.ERROR, logger="realtime")

    def errors() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("realtime") and r.levelno >= logging.ERROR
        ]

    return errors


@asynccontextmanager
async def connected(url: str, tok: str) -> AsyncIterator[AsyncRealtimeClient]:
    client = AsyncRealtimeClient(url, tok, auto_reconnect=False, timeout=5)
    try:
        await asyncio.wait_for(client.connect(), WAIT)
        yield client
    finally:
        await asyncio.wait_for(client.close(), WAIT)


async def subscribe(channel: AsyncRealtimeChannel) -> list[tuple[RealtimeSubscribeStates, Exception | None]]:
    statuses: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
    await asyncio.wait_for(channel.subscribe(lambda s, e: statuses.append((s, e))), WAIT)
    assert statuses == [(RealtimeSubscribeStates.SUBSCRIBED, None)], statuses
    assert channel.is_joined
    return statuses


async def until(cond: Callable[[], bool], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def next_item(q: asyncio.Queue[Any], within: float = WAIT) -> Any:
    return await asyncio.wait_for(q.get(), within)


async def quiet(q: asyncio.Queue[Any], seconds: float = 0.7) -> list[Any]:
    """Whatever else arrives within ``seconds`` (expected: nothing)."""
    await asyncio.sleep(seconds)
    extra = []
    while not q.empty():
        extra.append(q.get_nowait())
    return extra


def record_frames(channel: AsyncRealtimeChannel) -> list[Any]:
    """Record every parsed frame routed to ``channel`` (what survived pydantic validation)."""
    seen: list[Any] = []
    original = channel._handle_message

    def spy(message: Any) -> None:
        seen.append(message)
        original(message)

    channel._handle_message = spy  # type: ignore[method-assign]
    return seen


async def test_all_events_insert_update_delete(pg_dsn: str, client_errors: ClientErrors) -> None:
    async with running_relay(pg_dsn) as relay, connected(relay.url, token()) as client:
        assert "vsn=1.0.0" in client.endpoint_url()
        changes: asyncio.Queue[Any] = asyncio.Queue()
        systems: asyncio.Queue[Any] = asyncio.Queue()
        channel = client.channel("dash")
        channel.on_postgres_changes(
            ListenEvent.All, schema="public", table="bookings", callback=changes.put_nowait
        )
        channel.on_system(systems.put_nowait)
        statuses = await subscribe(channel)
        (cb,) = channel.postgres_changes_callbacks
        assert isinstance(cb.id, int) and cb.id != 0

        # The "Subscribed to PostgreSQL" system frame must survive the client's pydantic validation.
        sysmsg = await next_item(systems)
        assert sysmsg.channel == "dash" and sysmsg.extension == "postgres_changes" and sysmsg.status == "ok"

        # Written right after SUBSCRIBED: the relay must not lose it.
        bid = await insert_booking(pg_dsn, branch=1)
        ins = await next_item(changes)
        assert ins["ids"] == [cb.id]
        data = ins["data"]
        assert data["type"] == "INSERT"
        assert data["schema"] == "public" and data["table"] == "bookings"
        assert TS_RE.match(data["commit_timestamp"]), data["commit_timestamp"]
        assert [c["name"] for c in data["columns"]] == BOOKING_COLUMNS
        types = {c["name"]: c["type"] for c in data["columns"]}
        assert types["id"] == "int8" and types["branch_id"] == "int4" and types["price"] == "numeric"
        assert types["starts_at"] == "timestamptz" and types["tags"] == "_text"
        assert types["details"] == "jsonb"
        rec = data["record"]
        assert rec["id"] == bid and rec["branch_id"] == 1 and rec["status"] == "pending"
        assert rec["service"] == "haircut" and rec["price"] == 42.5
        assert rec["tags"] == [] and rec["details"] == {} and rec["notes"] is None
        assert rec["starts_at"].endswith("+00:00")
        assert "old_record" not in data
        assert data["errors"] is None

        await set_status(pg_dsn, bid, "confirmed")
        upd = await next_item(changes)
        assert upd["ids"] == [cb.id]
        data = upd["data"]
        assert data["type"] == "UPDATE"
        assert data["record"]["id"] == bid and data["record"]["status"] == "confirmed"
        assert data["old_record"]["id"] == bid and data["old_record"]["status"] == "pending"
        assert TS_RE.match(data["commit_timestamp"])

        await delete_booking(pg_dsn, bid)
        dele = await next_item(changes)
        assert dele["ids"] == [cb.id]
        data = dele["data"]
        assert data["type"] == "DELETE"
        assert data["old_record"]["id"] == bid
        assert data.get("record") in (None, {})  # realtime-py's model: record is NotRequired / Optional
        assert [c["name"] for c in data["columns"]] == BOOKING_COLUMNS
        assert await quiet(changes) == []

        # phx_leave -> ok reply (and phx_close): the client reports CLOSED.
        await asyncio.wait_for(channel.unsubscribe(), WAIT)
        await until(lambda: statuses[-1][0] == RealtimeSubscribeStates.CLOSED)
        subscribed, closed = RealtimeSubscribeStates.SUBSCRIBED, RealtimeSubscribeStates.CLOSED
        assert [s for s, _ in statuses] == [subscribed, closed]
        assert statuses[-1][1] is None
        assert channel.is_closed
        assert client_errors() == []


async def test_filter_receives_only_matching_rows(pg_dsn: str, client_errors: ClientErrors) -> None:
    async with running_relay(pg_dsn) as relay, connected(relay.url, token()) as client:
        changes: asyncio.Queue[Any] = asyncio.Queue()
        channel = client.channel("branch2")
        channel.on_postgres_changes(
            ListenEvent.All,
            schema="public",
            table="bookings",
            filter="branch_id=eq.2",
            callback=changes.put_nowait,
        )
        await subscribe(channel)
        (cb,) = channel.postgres_changes_callbacks

        b1 = await insert_booking(pg_dsn, branch=1)
        b2 = await insert_booking(pg_dsn, branch=2)
        got = await next_item(changes)
        assert got["data"]["type"] == "INSERT"
        assert got["data"]["record"]["id"] == b2 and got["data"]["record"]["branch_id"] == 2
        assert got["ids"] == [cb.id]

        await set_status(pg_dsn, b1, "confirmed")
        await delete_booking(pg_dsn, b1)
        await delete_booking(pg_dsn, b2)  # DELETE is filtered against the old row
        got = await next_item(changes)
        assert got["data"]["type"] == "DELETE" and got["data"]["old_record"]["id"] == b2
        assert await quiet(changes) == []
        assert client_errors() == []


async def test_and_filter_receives_only_rows_in_range(pg_dsn: str, client_errors: ClientErrors) -> None:
    """A comma-separated filter is ANDed (Supabase Realtime PR #1912)."""
    async with running_relay(pg_dsn) as relay, connected(relay.url, token()) as client:
        changes: asyncio.Queue[Any] = asyncio.Queue()
        channel = client.channel("range")
        channel.on_postgres_changes(
            ListenEvent.Insert,
            schema="public",
            table="bookings",
            filter='branch_id=gte.2,branch_id=lte.3,status=not.in.(cancelled,"no_show")',
            callback=changes.put_nowait,
        )
        await subscribe(channel)
        expected = []
        for branch, status in [
            (1, "pending"),
            (2, "pending"),
            (3, "cancelled"),
            (4, "pending"),
            (3, "confirmed"),
        ]:
            bid = await insert_booking(pg_dsn, branch=branch, status=status)
            if 2 <= branch <= 3 and status != "cancelled":
                expected.append(bid)
        got = [(await next_item(changes))["data"]["record"]["id"] for _ in expected]
        assert got == expected
        assert await quiet(changes) == []
        assert client_errors() == []


async def test_event_specific_bindings(pg_dsn: str, client_errors: ClientErrors) -> None:
    async with running_relay(pg_dsn) as relay, connected(relay.url, token()) as client:
        inserts: asyncio.Queue[Any] = asyncio.Queue()
        deletes: asyncio.Queue[Any] = asyncio.Queue()
        channel = client.channel("events")
        channel.on_postgres_changes(
            ListenEvent.Insert, schema="public", table="bookings", callback=inserts.put_nowait
        )
        channel.on_postgres_changes(
            ListenEvent.Delete, schema="public", table="bookings", callback=deletes.put_nowait
        )
        frames = record_frames(channel)
        await subscribe(channel)
        ins_cb, del_cb = channel.postgres_changes_callbacks
        assert ins_cb.id and del_cb.id and ins_cb.id != del_cb.id

        bid = await insert_booking(pg_dsn)
        await set_status(pg_dsn, bid, "confirmed")
        await delete_booking(pg_dsn, bid)
        bid2 = await insert_booking(pg_dsn)  # a fence: anything for the UPDATE would have come before

        first = await next_item(inserts)
        assert first["data"]["type"] == "INSERT" and first["data"]["record"]["id"] == bid
        assert first["ids"] == [ins_cb.id]
        dele = await next_item(deletes)
        assert dele["data"]["type"] == "DELETE" and dele["data"]["old_record"]["id"] == bid
        assert dele["ids"] == [del_cb.id]
        second = await next_item(inserts)
        assert second["data"]["record"]["id"] == bid2
        assert await quiet(inserts, 0.3) == [] and await quiet(deletes, 0.3) == []

        # The relay itself sent no UPDATE frame (not merely filtered out client-side).
        sent = [m.payload["data"]["type"] for m in frames if m.event == "postgres_changes"]
        assert sent == ["INSERT", "DELETE", "INSERT"]
        assert client_errors() == []


async def test_bad_filter_reports_channel_error(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, connected(relay.url, token()) as client:
        channel = client.channel("bad")
        channel.on_postgres_changes(
            ListenEvent.All,
            schema="public",
            table="bookings",
            filter="branch_id=zz.1",
            callback=lambda p: None,
        )
        statuses: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
        await asyncio.wait_for(channel.subscribe(lambda s, e: statuses.append((s, e))), WAIT)
        (status, err), *_ = statuses
        assert status == RealtimeSubscribeStates.CHANNEL_ERROR
        assert "unknown operator" in str(err)
        await asyncio.wait_for(channel.unsubscribe(), WAIT)  # stop the client's rejoin timer


async def test_token_expiring_system_message_then_set_auth(pg_dsn: str, client_errors: ClientErrors) -> None:
    """realtime-py parses the relay's ``token_expiring`` warning as a system message; after
    ``set_auth`` with a new token the channel outlives the first token."""
    async with (
        running_relay(pg_dsn, token_expiry_warning=2.0) as relay,
        connected(relay.url, token(ttl=5)) as client,
    ):
        changes: asyncio.Queue[Any] = asyncio.Queue()
        systems: asyncio.Queue[Any] = asyncio.Queue()
        channel = client.channel("exp")
        channel.on_postgres_changes(
            ListenEvent.Insert, schema="public", table="bookings", callback=changes.put_nowait
        )
        channel.on_system(systems.put_nowait)
        await subscribe(channel)
        assert (await next_item(systems)).extension == "postgres_changes"  # Subscribed to PostgreSQL
        warning = await next_item(systems)
        assert warning.extension == "system" and warning.status == "ok"
        assert "expires in" in warning.message
        await client.set_auth(token(ttl=3600))
        await asyncio.sleep(3.0)  # past the first token's exp
        bid = await insert_booking(pg_dsn)
        assert (await next_item(changes))["data"]["record"]["id"] == bid
        assert channel.is_joined and relay.server.expiry_warnings == 1
        assert client_errors() == []


async def test_snapshot_rows_do_not_break_realtime_py(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """realtime-py has no way to ask for a snapshot (its binding object is rebuilt from fixed
    fields), so the flag is put on its binding here.  Its pydantic model only knows the types
    INSERT/UPDATE/DELETE: each SNAPSHOT frame is dropped with an "Unrecognized message format"
    error log, the ``snapshot_complete`` marker reaches ``on_system``, the channel stays joined
    and live changes follow (documented in docs/protocol.md)."""
    from realtime.types import PostgresChangesCallback

    class SnapshotBinding(PostgresChangesCallback):
        @property
        def binding_filter(self) -> dict[str, Any]:
            return {**super().binding_filter, "snapshot": True}

    caplog.set_level(logging.ERROR, logger="realtime")
    async with running_relay(pg_dsn) as relay, connected(relay.url, token()) as client:
        await insert_booking(pg_dsn, branch=2)
        changes: asyncio.Queue[Any] = asyncio.Queue()
        systems: asyncio.Queue[Any] = asyncio.Queue()
        channel = client.channel("snap")
        channel.on_postgres_changes(
            ListenEvent.All,
            schema="public",
            table="bookings",
            filter="branch_id=eq.2",
            callback=changes.put_nowait,
        )
        cb = channel.postgres_changes_callbacks[0]
        channel.postgres_changes_callbacks[0] = SnapshotBinding(
            cb.callback, cb.event, cb.table, cb.schema, cb.filter
        )
        channel.on_system(systems.put_nowait)
        await subscribe(channel)
        subscribed = await next_item(systems)
        assert subscribed.message == "Subscribed to PostgreSQL"
        marker = await next_item(systems)
        assert marker.status == "ok" and "snapshot complete: 1 rows" in marker.message
        bid = await insert_booking(pg_dsn, branch=2)
        ins = await next_item(changes)
        assert ins["data"]["type"] == "INSERT" and ins["data"]["record"]["id"] == bid
        assert channel.is_joined
        dropped = [r.getMessage() for r in caplog.records if r.name.startswith("realtime")]
        assert len(dropped) == 1 and "Unrecognized message format" in dropped[0], dropped
