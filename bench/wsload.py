"""A cheap WebSocket load generator: the client side of the benches, kept out of the measurement.

aiohttp's client costs tens of µs and kilobytes per frame and socket; with hundreds of sockets
on this 2-core machine it became the bottleneck of the numbers it produced (issue 16: "a load
generator that measures the relay, not itself").  This client speaks just enough RFC 6455 for
the relay — one upgrade request, masked text frames out, unmasked frames in — and leaves the
payload as bytes so that callers look only at what they check.  Work is spread over several
processes by the benches; each reports its own CPU so a reader can see which side is the limit.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from urllib.parse import urlencode

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class ClosedError(Exception):
    """The relay closed the socket (the message carries its close code and reason)."""


class WsClient:
    """One client socket: ``await WsClient.connect(...)``, ``send_text``, ``recv``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._buf = bytearray()

    @classmethod
    async def connect(cls, host: str, port: int, path: str, params: dict[str, str]) -> WsClient:
        reader, writer = await asyncio.open_connection(host, port, limit=2**24)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path}?{urlencode(params)} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise ClosedError(f"upgrade refused: {status}")
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        """Queue one masked text frame (client frames must be masked; a zero mask is valid)."""
        data = text.encode()
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | OP_TEXT, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | OP_TEXT, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, n)
        self.writer.write(head + b"\0\0\0\0" + data)  # mask 0: payload XOR 0 is the payload

    async def recv(self) -> bytes:
        """The next data frame's payload (pings answered, close raised); fragments not expected."""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n) if n else b""
            op = b0 & 0x0F
            if op == OP_PING:
                self.writer.write(
                    struct.pack("!BB", 0x80 | OP_PONG, 0x80 | len(payload)) + b"\0\0\0\0" + payload
                )
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ClosedError(f"closed by the relay: {code} {payload[2:].decode(errors='replace')}")
            if op == OP_PONG:
                continue
            return payload

    async def recv_batch(self) -> list[bytes]:
        """Every complete data frame that has arrived (at least one): one read per batch.

        The hot loop of a load generator: a chunked read parsed in place costs a few µs per frame,
        where ``recv`` (two ``readexactly`` awaits per frame) costs tens.  Do not mix with ``recv``
        after the first call (bytes already taken into the batch buffer would be skipped).
        """
        buf = self._buf
        out: list[bytes] = []
        while not out:
            chunk = await self.reader.read(1 << 18)
            if not chunk:
                raise ClosedError("connection closed")
            buf += chunk
            pos, end = 0, len(buf)
            while end - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1] & 0x7F
                head = 2
                if b1 == 126:
                    if end - pos < 4:
                        break
                    b1, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
                elif b1 == 127:
                    if end - pos < 10:
                        break
                    b1, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
                if end - pos < head + b1:
                    break
                payload = bytes(buf[pos + head : pos + head + b1])
                pos += head + b1
                op = b0 & 0x0F
                if op == OP_PING:
                    pong = struct.pack("!BB", 0x80 | OP_PONG, 0x80 | len(payload))
                    self.writer.write(pong + b"\0\0\0\0" + payload)
                elif op == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    raise ClosedError(f"closed by the relay: {code} {payload[2:].decode(errors='replace')}")
                elif op != OP_PONG:
                    out.append(payload)
            del buf[:pos]
        return out

    def close(self) -> None:
        self.writer.close()


BOOKINGS_JOIN = (
    '["1","1","realtime:dash","phx_join",{"config":{"postgres_changes":'
    '[{"event":"*","schema":"public","table":"bookings"}]}}]'
)


async def join_bookings(port: int, token: str, timeout: float = 30) -> WsClient:
    """A vsn 2.0.0 socket on loopback ``port`` joined to every change of ``public.bookings``
    (the fan-out benches' subscriber), once the join's reply has arrived."""
    c = await WsClient.connect("127.0.0.1", port, "/realtime/v1/websocket", {"apikey": token, "vsn": "2.0.0"})
    c.send_text(BOOKINGS_JOIN)
    await asyncio.wait_for(c.recv(), timeout)
    return c


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of a process (default: this one) from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid or 'self'}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int | None = None) -> int:
    """Resident set size (VmRSS) of a process in KiB."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_wait_seconds(pid: int | None = None) -> float | None:
    """Seconds a process (its main thread) waited on a run queue for a CPU (``/proc/<pid>/schedstat``).

    On a shared 2-core machine a process can be runnable and still not run: this, next to its CPU
    seconds, says whether a figure measured the relay's code or the machine's contention.
    """
    try:
        with open(f"/proc/{pid or 'self'}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
