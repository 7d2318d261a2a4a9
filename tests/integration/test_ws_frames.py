"""The relay's own WebSocket protocol (relay/server/websocket.py), byte by byte from a raw client.

Why a raw client: everything here is what the relay's parser and close handshake own since the
socket is taken from aiohttp after the upgrade — fragments, interleaved control frames, frame
headers split across reads, frames sent behind the upgrade request, the size limit, unmasked
frames, invalid UTF-8, oversized control frames, a close in the middle of a fragmented message,
a client that half-closes, a silent client.  aiohttp's client (the other tests' PhoenixClient)
always sends well-formed, masked, unfragmented frames in separate writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from relay.service import RunningRelay
from tests.support.relay import running_relay, token

pytestmark = pytest.mark.pg

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
HEARTBEAT = b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}'
JOIN = (
    b'{"topic":"realtime:raw","event":"phx_join","ref":"1","join_ref":"1","payload":{"config":'
    b'{"postgres_changes":[{"event":"*","schema":"public","table":"bookings"}]}}}'
)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame (masked unless told otherwise), as RFC 6455 §5.2 lays it out."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(port: int, key: str, query: str = "", version: str = "13") -> bytes:
    q = query or f"apikey={token()}&vsn=1.0.0"
    return (
        f"GET /realtime/v1/websocket?{q} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    ).encode()


class Raw:
    """A raw WebSocket client: writes bytes, reads the relay's (unmasked) frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame's opcode and payload (the relay never fragments its frames)."""
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert head[1] & 0x80 == 0, "server frames are never masked"
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return head[0] & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def recv_text(self) -> dict[str, Any]:
        opcode, payload = await self.recv()
        assert opcode == TEXT, (opcode, payload)
        out: dict[str, Any] = orjson.loads(payload)
        return out

    async def recv_close(self) -> tuple[int, bytes]:
        """Skip text frames up to the relay's close frame: its code and reason."""
        for _ in range(20):
            opcode, payload = await self.recv()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0], payload[2:]
        raise AssertionError("no close frame")

    async def eof(self, timeout: float = 5.0) -> bool:
        """True once the relay closed the TCP connection (after whatever it still sent)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionResetError:
            pass
        return True


@contextlib.asynccontextmanager
async def raw(relay: RunningRelay, behind_upgrade: bytes = b"") -> AsyncIterator[Raw]:
    """An upgraded raw socket (``behind_upgrade`` goes out in the same write as the request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(upgrade_request(relay.port, key) + behind_upgrade)
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    accept = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert response.startswith(b"HTTP/1.1 101 "), response
    assert b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n" in response, response
    try:
        yield Raw(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _gone(relay: RunningRelay, n: int = 0) -> None:
    """Wait (bounded) until the relay counts ``n`` sockets."""
    for _ in range(200):
        if len(relay.server.connections) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(relay.server.connections)} sockets, expected {n}")


async def test_fragments_interleaved_pings_split_headers_and_frames_behind_the_upgrade(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        # a heartbeat in the same TCP write as the upgrade request (aiohttp's "message tail")
        async with raw(relay, behind_upgrade=frame(TEXT, HEARTBEAT)) as c:
            assert (await c.recv_text())["payload"]["status"] == "ok"
            # a join and a heartbeat in one write, answered in order
            await c.send(frame(TEXT, JOIN) + frame(TEXT, HEARTBEAT))
            got = [await c.recv_text() for _ in range(3)]
            assert [(m["event"], m["ref"]) for m in got] == [
                ("phx_reply", "1"),
                ("system", None),
                ("phx_reply", "hb"),
            ]
            # a heartbeat in three fragments with a ping between them: pong first, then the reply
            part = len(HEARTBEAT) // 3
            await c.send(frame(TEXT, HEARTBEAT[:part], fin=False))
            await c.send(frame(PING, b"are you there") + frame(0x0, HEARTBEAT[part : 2 * part], fin=False))
            await c.send(frame(0x0, HEARTBEAT[2 * part :]))
            assert await c.recv() == (PONG, b"are you there")
            assert (await c.recv_text())["ref"] == "hb"
            # a frame trickled byte by byte (its header split over reads), a 126-length frame too
            big = HEARTBEAT[:-1] + b"," + b'"pad":"' + b"x" * 200 + b'"}'
            for data in (frame(TEXT, HEARTBEAT), frame(TEXT, big)):
                for i in range(len(data)):
                    await c.send(data[i : i + 1])
                    if i < 20:
                        await asyncio.sleep(0.002)
                assert (await c.recv_text())["ref"] == "hb"
            # the client closes: the relay answers 1000 and closes the TCP connection
            await c.send(frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
            assert await c.recv_close() == (1000, b"")
            assert await c.eof()
        await _gone(relay)
        assert relay.server.metrics.connections_closed["client"] == 1


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(TEXT, HEARTBEAT, mask=False), 1002),  # RFC 6455 §5.1: clients must mask
        (frame(TEXT, b'{"topic":"\xff\xfe"}'), 1007),  # invalid UTF-8 in a text frame
        (frame(PING, b"x" * 126), 1002),  # a control frame over 125 bytes
        (frame(0x3, b""), 1002),  # a reserved opcode
        (frame(0x0, b"continuation of nothing"), 1002),
        (frame(TEXT, b"x" * 4001), 1009),  # over the message limit (4 x max_frame_bytes)
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),  # a new message mid-message
    ],
    ids=[
        "unmasked",
        "bad-utf8",
        "big-control",
        "reserved-opcode",
        "bare-continuation",
        "too-big",
        "interleaved",
    ],
)
async def test_protocol_errors_close_with_their_code_after_the_frames_before_them(
    pg_dsn: str, bad: bytes, code: int
) -> None:
    async with running_relay(pg_dsn, max_frame_bytes=1000) as relay:
        async with raw(relay) as c:
            # the frame before the bad one (same write) is still answered
            await c.send(frame(TEXT, HEARTBEAT) + bad + frame(TEXT, HEARTBEAT))
            assert (await c.recv_text())["ref"] == "hb"
            assert (await c.recv_close())[0] == code
            assert await c.eof()
        await _gone(relay)
        # and the relay still serves others
        async with raw(relay) as c:
            await c.send(frame(TEXT, HEARTBEAT))
            assert (await c.recv_text())["payload"]["status"] == "ok"


async def test_a_frame_over_the_relay_limit_is_answered_binary_is_refused_the_socket_stays(
    pg_dsn: str,
) -> None:
    async with running_relay(pg_dsn, max_frame_bytes=1000) as relay, raw(relay) as c:
        big = b'{"topic":"phoenix","event":"heartbeat","payload":{"pad":"' + b"x" * 1200 + b'"},"ref":"7"}'
        await c.send(frame(TEXT, big))
        reply = await c.recv_text()
        assert reply["ref"] == "7" and reply["payload"]["response"]["code"] == "frame_too_large"
        await c.send(frame(BINARY, b"\x03\x00"))  # vsn 1.0.0: no binary frames
        assert (await c.recv_text())["payload"]["response"]["code"] == "binary_not_supported"
        await c.send(frame(TEXT, HEARTBEAT))
        assert (await c.recv_text())["ref"] == "hb"


async def test_close_in_the_middle_of_a_fragmented_message(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        async with raw(relay) as c:
            await c.send(frame(TEXT, JOIN))
            assert (await c.recv_text())["payload"]["status"] == "ok"
            await c.send(frame(TEXT, HEARTBEAT[:10], fin=False))
            await c.send(frame(CLOSE, struct.pack("!H", 1001)))
            assert await c.recv_close() == (1000, b"")
            assert await c.eof()
        await _gone(relay)
        assert len(relay.server.index) == 0  # its binding is gone with it


async def test_a_client_that_half_closes_is_forgotten(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        async with raw(relay) as c:
            await c.send(frame(TEXT, JOIN))
            assert (await c.recv_text())["payload"]["status"] == "ok"
            assert len(relay.server.connections) == 1 and len(relay.server.index) == 1
            sock = c.writer.get_extra_info("socket")
            sock.shutdown(socket.SHUT_WR)
            assert await c.eof()
            await _gone(relay)
            assert len(relay.server.index) == 0
            assert relay.server.metrics.connections_closed["client"] == 1


async def test_a_silent_socket_is_closed_with_heartbeat_timeout_and_forgotten(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, heartbeat_timeout=1.2) as relay, raw(relay) as c:
        await c.send(frame(TEXT, JOIN))
        assert (await c.recv_text())["payload"]["status"] == "ok"
        assert (await c.recv_text())["event"] == "system"
        for _ in range(3):  # a ping is no heartbeat (as on aiohttp's path): it does not keep it open
            await asyncio.sleep(0.2)
            await c.send(frame(PING, b"p"))
            assert await c.recv() == (PONG, b"p")
        code, reason = await c.recv_close()
        assert (code, reason) == (1000, b"heartbeat timeout")
        await _gone(relay)  # forgotten before the close handshake ends
        assert relay.server.metrics.connections_closed["heartbeat_timeout"] == 1
        await c.send(frame(CLOSE, struct.pack("!H", 1000)))  # the client answers: TCP closes
        assert await c.eof()


async def test_bad_handshakes_get_aiohttp_s_answers(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        for key, version, status, text in [
            (base64.b64encode(os.urandom(16)).decode(), "12", b"400", b"Unsupported version: 12"),
            ("short", "13", b"400", b"Handshake error: 'short'"),
        ]:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(upgrade_request(relay.port, key, version=version))
            data = await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            assert data.startswith(b"HTTP/1.1 " + status) and text in data, data
        assert not relay.server.connections
