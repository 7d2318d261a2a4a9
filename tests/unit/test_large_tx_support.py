"""The large-transaction scenario's subscriber (tests/support/large_tx.py), without Postgres.

The subscriber is the cheap client of bench/wsload.py feeding ``Tally``.  It replaced aiohttp
because the relay outran it (issue 16: dropped as a slow consumer at 1M rows), so its two halves
are checked here against real bytes: the client's framing (lengths of every size, frames split
across reads, pings answered, the relay's close code and reason reported), and that ``Tally``
still makes every check on frames built by the relay's own encoder (``FrameCache.wire``).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import orjson
import pytest

from relay.core.changes import Action, Column, Lsn, RowChange
from relay.core.protocol import ws_text_frame
from relay.core.subscriptions import FrameCache
from tests.support.large_tx import TABLE, ClosedError, Tally, WsClient

TOPIC = "realtime:large"
COLUMNS = (Column("id", "int8"), Column("label", "text"), Column("qty", "int4"))
COMMIT = Lsn.parse("0/16B3748")


def row_frame(
    rid: int, index: int, table: str = TABLE, commit: Lsn = COMMIT, action: Action = Action.INSERT
) -> bytes:
    """The wire frame the relay sends a vsn 1.0.0 subscriber for one row (its own encoder)."""
    change = RowChange(
        schema="public",
        table=table,
        action=action,
        columns=COLUMNS,
        record={"id": rid, "label": f"row number {rid}", "qty": rid % 1000},
        old_record=None if action is Action.INSERT else {"id": rid},
        commit_timestamp="2026-12-06T19:00:00.000000Z",
        commit_lsn=commit,
        index=index,
        stream="s0",
    )
    return FrameCache(change).wire(TOPIC, [7], "1.0.0")


def payload_of(wire: bytes) -> bytes:
    """The payload of one unmasked server frame."""
    n, head = wire[1] & 0x7F, 2
    if n == 126:
        n, head = struct.unpack_from("!H", wire, 2)[0], 4
    elif n == 127:
        n, head = struct.unpack_from("!Q", wire, 2)[0], 10
    return wire[head : head + n]


Server = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Server) -> tuple[asyncio.Server, WsClient]:
    """A loopback server that accepts the upgrade and then runs ``script``; the client connected."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await WsClient.connect("127.0.0.1", port, "/realtime/v1/websocket", {"vsn": "1.0.0"})
    return server, client


async def dribble(writer: asyncio.StreamWriter, data: bytes, sizes: tuple[int, ...]) -> None:
    """Write ``data`` in pieces of the given sizes (cycled), each flushed and yielded on, so the
    client's reads end in the middle of headers and payloads."""
    pos, i = 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        writer.write(data[pos : pos + step])
        await writer.drain()
        await asyncio.sleep(0)
        pos, i = pos + step, i + 1


async def test_recv_batch_reassembles_split_frames_answers_pings_and_reports_the_close() -> None:
    payloads = [b"x" * 5, b"y" * 200, b"z" * 70_000, b'{"event":"phx_reply"}']  # 7-, 16-, 64-bit lengths
    ping = bytes((0x89, 4)) + b"beat"
    close = bytes((0x88, 2 + 44)) + struct.pack("!H", 1013) + b"slow consumer: more than 10000 frames queued"
    stream = (
        b"".join(ws_text_frame(p) for p in payloads[:2]) + ping + b"".join(map(ws_text_frame, payloads[2:]))
    )
    pong: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await dribble(writer, stream, (1, 3, 7, 4096, 2))
        head = await asyncio.wait_for(reader.readexactly(6), 5)  # a masked frame: 2 + 4-byte mask
        pong.append(head[:2] + await reader.readexactly(head[1] & 0x7F))
        writer.write(close)
        await writer.drain()
        await reader.read()  # until the client closes

    server, client = await serve(script)
    try:
        got: list[bytes] = []
        while len(got) < len(payloads):
            got += await asyncio.wait_for(client.recv_batch(), 5)
        assert got == payloads
        with pytest.raises(ClosedError, match="1013 slow consumer: more than 10000 frames queued"):
            await asyncio.wait_for(client.recv_batch(), 5)
        assert pong == [bytes((0x8A, 0x80 | 4)) + b"beat"]  # masked with the zero mask
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_tally_checks_the_relays_frames_read_through_the_cheap_client() -> None:
    """Every row once, in order, one commit: complete; replies and system messages are skipped."""
    n = 500
    reply = orjson.dumps({"topic": TOPIC, "event": "phx_reply", "ref": "1", "payload": {"status": "ok"}})
    system = orjson.dumps(
        {
            "topic": TOPIC,
            "event": "system",
            "ref": None,
            "payload": {
                "extension": "postgres_changes",
                "status": "ok",
                "message": "Subscribed to PostgreSQL",
            },
        }
    )
    stream = ws_text_frame(reply) + ws_text_frame(system) + b"".join(row_frame(i, i) for i in range(1, n + 1))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await dribble(writer, stream, (5000, 13, 70_000))
        await reader.read()

    server, client = await serve(script)
    tally = Tally(n)
    try:
        for _ in range(1000):  # bounded: far more reads than the dribble makes
            if tally.rows >= n:
                break
            for data in await asyncio.wait_for(client.recv_batch(), 5):
                tally.add(data)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    assert (tally.rows, tally.missing, tally.other_frames, tally.out_of_order) == (n, 0, 0, 0)
    assert tally.frame_bytes == sum(len(payload_of(row_frame(i, i))) for i in range(1, n + 1))
    assert tally.commit_lsns == {f"s0/{int(COMMIT):016X}"}
    assert tally.complete


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        (row_frame(3, 10), "duplicates", 1),  # a row twice
        (row_frame(0, 10), "out_of_range", 1),
        (row_frame(4, 10), "out_of_range", 1),
        (row_frame(3, 10, table="other"), "other_frames", 1),
        (row_frame(3, 10, action=Action.UPDATE), "other_frames", 1),
        (row_frame(3, 2), "out_of_order", 1),  # position not after the last one
    ],
)
def test_tally_flags_every_kind_of_wrong_delivery(extra: bytes, field: str, value: int) -> None:
    tally = Tally(3)
    for i in (1, 2, 3):
        tally.add(payload_of(row_frame(i, i)))
    assert tally.complete
    tally.add(payload_of(extra))
    assert getattr(tally, field) == value
    assert not tally.complete


def test_tally_wants_one_commit_and_every_row() -> None:
    """Rows of two transactions, or a row missing, are not a complete delivery."""
    two = Tally(2)
    two.add(payload_of(row_frame(1, 1)))
    two.add(payload_of(row_frame(2, 0, commit=Lsn(int(COMMIT) + 1))))
    assert (two.rows, two.missing, two.out_of_order, len(two.commit_lsns)) == (2, 0, 0, 2)
    assert not two.complete
    short = Tally(2)
    short.add(payload_of(row_frame(1, 1)))
    assert (short.missing, short.complete) == (1, False)
