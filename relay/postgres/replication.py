"""Stream a logical replication slot with psycopg 3 (CopyBoth over ``pgconn``).

Why streaming and not ``pg_logical_slot_get_changes`` polling: latency is a network round trip
instead of a poll interval, and an idle relay costs nothing.  psycopg's high-level API has no
CopyBoth support, but its ``pgconn`` exposes libpq's non-blocking ``get_copy_data`` /
``put_copy_data``; we wait for readability with ``loop.add_reader``.

The stream knows nothing of wal2json: it yields ``(wal_start, payload)`` and takes feedback.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from relay.core.changes import Lsn
from relay.core.stream import StreamIdentity

__all__ = ["ReplicationError", "ReplicationStream", "SlotInfo", "ensure_slot"]

log = logging.getLogger("relay.replication")

# Postgres epoch (2000-01-01) in Unix seconds: status updates carry microseconds since then.
_PG_EPOCH = 946_684_800
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")


def _wake(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


_ZERO = Lsn(0)


class ReplicationError(RuntimeError):
    """The replication connection failed or ended; the caller reconnects with backoff."""


@dataclass(frozen=True)
class SlotInfo:
    """What the relay needs to know about its slot when a stream starts.

    ``confirmed_flush``: Postgres replays every transaction committing at or after it, so the
    replay window starts there.  ``current``: the server's WAL position now; transactions
    committing before it were committed before this stream started.  ``created`` with a
    ``reason`` other than "new" means changes may have been missed (the slot was lost).
    ``stream``: which database history the slot reads (filled in by the pipeline).
    """

    created: bool
    confirmed_flush: Lsn
    current: Lsn
    reason: str = ""
    stream: StreamIdentity | None = None


async def ensure_slot(dsn: str, slot: str) -> SlotInfo:
    """Create the persistent wal2json slot if missing (or recreate it if it was invalidated).

    A persistent slot (not a temporary one, as the reference server uses) is what makes a relay
    restart lose nothing: Postgres keeps the WAL from the last confirmed position.  A slot whose
    WAL was removed (``wal_status = 'lost'``, after ``max_slot_wal_keep_size``) cannot stream
    any more: it is dropped and created anew, and the caller tells clients to resync.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select plugin, wal_status, confirmed_flush_lsn::text, pg_current_wal_lsn()::text "
            "from pg_replication_slots where slot_name = %s and database = current_database()",
            (slot,),
        )
        row = await cur.fetchone()
        reason = "new"
        if row is not None:
            plugin, wal_status, confirmed, current = row
            if plugin != "wal2json":
                raise ReplicationError(
                    f"slot {slot!r} exists with plugin {plugin!r}, not wal2json: drop it or pick another "
                    "slot name (RELAY_SLOT)"
                )
            if wal_status != "lost":
                return SlotInfo(False, Lsn.parse(confirmed or "0/0"), Lsn.parse(current))
            log.error(
                "replication slot %s lost required WAL (max_slot_wal_keep_size exceeded): changes were "
                "missed; recreating it and telling clients to resync",
                slot,
            )
            await conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            reason = "lost"
        else:
            cur = await conn.execute("select 1 from pg_replication_slots where slot_name = %s", (slot,))
            if await cur.fetchone() is not None:
                raise ReplicationError(
                    f"slot {slot!r} belongs to another database: pick another slot name (RELAY_SLOT)"
                )
        cur = await conn.execute(
            "select lsn::text, pg_current_wal_lsn()::text "
            "from pg_create_logical_replication_slot(%s, 'wal2json')",
            (slot,),
        )
        created = await cur.fetchone()
        assert created is not None
        log.info("created replication slot %s at %s", slot, created[0])
        return SlotInfo(True, Lsn.parse(created[0]), Lsn.parse(created[1]), reason)


class ReplicationStream:
    """One START_REPLICATION session.  Use ``async with`` and iterate :meth:`messages`."""

    def __init__(
        self,
        dsn: str,
        slot: str,
        options: Mapping[str, str],
        start_lsn: Lsn = _ZERO,
        status_interval: float = 1.0,
        temporary: bool = False,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.options = dict(options)
        self.start_lsn = start_lsn
        self.status_interval = status_interval
        self.temporary = temporary
        self.received_lsn = Lsn(0)
        self.flushed_lsn = Lsn(0)
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._last_status = 0.0
        self._closed = False
        self._fd: int | None = None

    async def __aenter__(self) -> ReplicationStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                replication="database",
                autocommit=True,
                # UTC makes wal2json print timestamptz as +00 (the decoder's fast path);
                # ISO dates are what the converters expect.
                options="-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres",
            )
            if self.temporary:
                # A temporary slot lives on this very connection (``relay tail``): it never
                # holds WAL back after we go and never touches the relay's persistent slot.
                await self._conn.cursor().execute(
                    sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL wal2json").format(
                        sql.Identifier(self.slot)
                    )
                )
            opts = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in self.options.items()
            )
            query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
                sql.Identifier(self.slot), sql.SQL(str(self.start_lsn)), opts
            )
            await self._conn.cursor().execute(query)
        except psycopg.Error as exc:
            await self.close()
            raise ReplicationError(f"START_REPLICATION failed: {exc}".strip()) from exc
        pgconn = self._conn.pgconn
        if pgconn.status != pq.ConnStatus.OK:
            raise ReplicationError(pgconn.error_message.decode(errors="replace"))
        # Remember the fd: once libpq drops a broken connection ``pgconn.socket`` raises, and a
        # reader left registered on the number would hijack the next socket that reuses it.
        self._fd = pgconn.socket
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        self._last_status = time.monotonic()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed and self.flushed_lsn:
                self._send_status(conn.pgconn, reply=False)
                conn.pgconn.flush()
        except (psycopg.Error, OSError):
            pass
        await conn.close()

    def _drop_reader(self) -> None:
        """Unregister the socket at once when the connection breaks (libpq may close the fd)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)

    def confirm(self, lsn: Lsn) -> None:
        """Record that everything up to ``lsn`` is handed off (sent with the next status update)."""
        if lsn > self.flushed_lsn:
            self.flushed_lsn = lsn

    async def batches(self, idle_timeout: float = 1.0) -> AsyncIterator[list[bytes]]:
        """Yield the wal2json payloads available now, as a list; ``[]`` when idle a while.

        Draining everything libpq has buffered per wake-up (rather than one message per
        iteration) is what keeps the read loop's overhead per change small.  Keepalives are
        answered here; the empty ticks let the caller run periodic work (publication polls,
        status updates) without a second task touching the connection.
        """
        assert self._conn is not None
        pgconn = self._conn.pgconn
        loop = asyncio.get_running_loop()
        get = pgconn.get_copy_data
        while True:
            batch: list[bytes] = []
            while True:
                try:
                    nbytes, data = get(1)
                except psycopg.Error as exc:
                    self._drop_reader()
                    raise ReplicationError(f"replication stream failed: {exc}") from exc
                if nbytes == 0:
                    break
                if nbytes < 0:
                    self._drop_reader()
                    msg = pgconn.error_message.decode(errors="replace").strip()
                    raise ReplicationError(f"replication stream ended: {msg or 'server closed the stream'}")
                kind = data[0]
                if kind == 0x77:  # 'w' XLogData: header is start, end, clock (3 x int64)
                    end = int.from_bytes(data[9:17], "big")
                    if end > self.received_lsn:
                        self.received_lsn = Lsn(end)
                    batch.append(bytes(data[25:]))
                elif kind == 0x6B:  # 'k' keepalive: wal end, clock, reply requested
                    wal_end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                    if wal_end > self.received_lsn:
                        self.received_lsn = Lsn(wal_end)
                    if reply:
                        self._send_status(pgconn, reply=False)
            if batch:
                yield batch
                self._maybe_status(pgconn)
                continue
            self._maybe_status(pgconn)
            waiter = loop.create_future()
            self._waiter = waiter
            timer = loop.call_later(idle_timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not waiter.result():
                yield []
            try:
                pgconn.consume_input()
            except psycopg.Error as exc:
                self._drop_reader()
                raise ReplicationError(f"replication connection lost: {exc}") from exc

    def _on_readable(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)

    def _maybe_status(self, pgconn: pq.abc.PGconn) -> None:
        if time.monotonic() - self._last_status >= self.status_interval:
            self._send_status(pgconn, reply=False)

    def _send_status(self, pgconn: pq.abc.PGconn, reply: bool) -> None:
        """Standby status update: write = received, flush = apply = safe to forget.

        Reporting what was received as written keeps the walsender from pinging us on every
        wake-up while the flush position deliberately trails (the replay window).
        """
        now_us = int((time.time() - _PG_EPOCH) * 1_000_000)
        flushed = int(self.flushed_lsn)
        written = max(flushed, int(self.received_lsn))
        msg = _STATUS.pack(b"r", written, flushed, flushed, now_us, 1 if reply else 0)
        try:
            pgconn.put_copy_data(msg)
            pgconn.flush()
        except psycopg.Error as exc:
            raise ReplicationError(f"could not send status update: {exc}") from exc
        self._last_status = time.monotonic()

    def force_status(self) -> None:
        """Send a status update now (after a commit was handed off and we are idle)."""
        if self._conn is not None:
            self._send_status(self._conn.pgconn, reply=False)
