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
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from relay.core.changes import Lsn
from relay.core.stream import StreamIdentity

__all__ = [
    "ReplicationError",
    "ReplicationStream",
    "ServerShuttingDown",
    "SlotInfo",
    "ensure_slot",
    "terminate_walsender",
]

log = logging.getLogger("relay.replication")

# Postgres epoch (2000-01-01) in Unix seconds: status updates carry microseconds since then.
_PG_EPOCH = 946_684_800
_KEEPALIVE = struct.Struct("!QQB")
_STATUS = struct.Struct("!cQQQQB")


def _wake(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


_ZERO = Lsn(0)

# A walsender that is shutting down (``pg_ctl stop -m fast``) waits in WalSndDone until the
# client confirms everything it sent, pinging (keepalive, reply requested) again as soon as each
# answer arrives.  The relay deliberately confirms only up to its replay window's floor, so that
# wait never ends and blocks the whole shutdown.  A normal ping comes only after the walsender
# heard nothing for wal_sender_timeout/2 (and we send a status every second), so pings arriving
# back to back (each within SHUTDOWN_PING_GAP of our previous answer, SHUTDOWN_PINGS in a row)
# mean the server is stopping: we end the copy stream, which lets the walsender exit at once,
# without confirming anything more.  Misreading (wal_sender_timeout under ~2 s) costs a reconnect.
SHUTDOWN_PING_GAP = 1.0
SHUTDOWN_PINGS = 3

# A half-open link to Postgres (a NAT or firewall that forgot the connection, a host that
# vanished, a middlebox whose upstream died) looks like an idle database forever.  The kernel
# notices a vanished peer with TCP keepalives (these defaults; a DSN that sets one wins); the
# stream notices the rest by itself: with nothing received for half of its receive deadline it
# asks the walsender for a reply, and with nothing for the whole of it the stream is dead.
#
# The deadline must outlast a walsender that is legitimately silent: while it feeds wal2json a
# large transaction of tables we filter out, it reads our messages (and so answers our request)
# only every wal_sender_timeout/2.  Unless given, the deadline is therefore twice the server's
# wal_sender_timeout (2 minutes by default), and at least RECEIVE_TIMEOUT.
CONNECT_DEFAULTS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
RECEIVE_TIMEOUT = 30.0

# Messages read into one batch while a backlog keeps the socket full (a batch is handed to the
# pipeline in one go and ends with one socket write per subscriber).  Small enough that the first
# change of a batch waits only milliseconds for the rest to be decoded; large enough that the
# per-batch costs (the writes, the flush, the event-loop turn) vanish next to the per-change ones.
BATCH_MESSAGES = 512
# ... and at most about this many bytes of messages: 512 rows with large TOASTed values must not
# become gigabytes held at once (the large-transaction memory aim is 300 MiB for the process).
BATCH_BYTES = 4 * 1024 * 1024


def with_connect_defaults(dsn: str) -> str:
    """``dsn`` plus the CONNECT_DEFAULTS it does not set itself."""
    given = conninfo_to_dict(dsn)
    return make_conninfo(dsn, **{k: v for k, v in CONNECT_DEFAULTS.items() if k not in given})


def _option_literal(value: str) -> str:
    """A START_REPLICATION option value: a plain ``'...'`` literal with ``''`` doubling.

    Why not ``sql.Literal``: for a value with a backslash (wal2json's escape in ``add-tables``)
    it renders ``E'...'``, which the replication command grammar rejects with a syntax error,
    stopping every table.  The grammar's literals know no escapes: backslashes stay as they are.
    """
    return "'" + value.replace("'", "''") + "'"


class ReplicationError(RuntimeError):
    """The replication connection failed or ended; the caller reconnects with backoff."""


class ServerShuttingDown(ReplicationError):
    """The walsender is shutting down and waits for a confirmation the relay withholds.

    The stream has been ended (CopyDone) so the shutdown can finish; reconnect when Postgres
    is back.
    """


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


async def ensure_slot(dsn: str, slot: str, stale_pid: int | None = None) -> SlotInfo:
    """Create the persistent wal2json slot if missing (or recreate it if it was invalidated).

    A persistent slot (not a temporary one, as the reference server uses) is what makes a relay
    restart lose nothing: Postgres keeps the WAL from the last confirmed position.  A slot whose
    WAL was removed (``wal_status = 'lost'``, after ``max_slot_wal_keep_size``) cannot stream
    any more: it is dropped and created anew, and the caller tells clients to resync.

    ``stale_pid``: the walsender of this relay's previous stream, which it gave up on (e.g. a
    half-open link).  Postgres may not have noticed yet (only after ``wal_sender_timeout``), and
    while it holds the slot no new stream can start; it is terminated.  Only that very process:
    a slot held by anyone else is left alone.
    """
    async with await psycopg.AsyncConnection.connect(with_connect_defaults(dsn), autocommit=True) as conn:
        if stale_pid is not None:
            await _release_stale(conn, slot, stale_pid)
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


async def _release_stale(conn: psycopg.AsyncConnection[tuple[object, ...]], slot: str, pid: int) -> None:
    """Terminate our own abandoned walsender ``pid`` if it still holds ``slot``; wait until freed."""
    cur = await conn.execute(_SLOT_HOLDER, (slot,))
    row = await cur.fetchone()
    if row is None or row[0] != pid:
        return
    log.warning("terminating walsender %d: it still holds slot %s for a stream the relay gave up", pid, slot)
    await terminate_walsender(conn, slot, pid)


_SLOT_HOLDER = "select active_pid from pg_replication_slots where slot_name = %s"


async def terminate_walsender(conn: psycopg.AsyncConnection[tuple[object, ...]], slot: str, pid: int) -> None:
    """Terminate walsender ``pid`` and wait (bounded, 5 s) until it no longer holds ``slot``.

    Why one function: the relay frees a slot from a walsender in two cases (its own abandoned
    stream, relay/postgres/replication.py; a deposed cluster leader's, relay/cluster/leader.py),
    and both must wait for the process to exit, since START_REPLICATION fails while it holds
    the slot.
    """
    await conn.execute("select pg_terminate_backend(%s)", (pid,))
    for _ in range(50):  # bounded: the slot is released as the process exits
        cur = await conn.execute(_SLOT_HOLDER, (slot,))
        row = await cur.fetchone()
        if row is None or row[0] != pid:
            return
        await asyncio.sleep(0.1)


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
        receive_timeout: float | None = None,
        batch_messages: int = BATCH_MESSAGES,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.batch_messages = batch_messages  # see BATCH_MESSAGES
        self.batch_bytes = batch_bytes  # see BATCH_BYTES
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
        self._copy_ended = False
        self.receive_timeout = receive_timeout  # None: from the server's wal_sender_timeout
        self.backend_pid: int | None = None  # the walsender serving this stream
        self._last_recv = 0.0
        self._asked_reply = False
        self._last_ping_answer = -SHUTDOWN_PING_GAP
        self._ping_streak = 0

    async def __aenter__(self) -> ReplicationStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                with_connect_defaults(self.dsn),
                replication="database",
                autocommit=True,
                # UTC makes wal2json print timestamptz as +00 (the decoder's fast path);
                # ISO dates are what the converters expect.
                options="-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres",
            )
            self.backend_pid = self._conn.pgconn.backend_pid
            if self.receive_timeout is None:
                cur = await self._conn.cursor().execute(
                    "select setting::int from pg_settings where name = 'wal_sender_timeout'"
                )
                row = await cur.fetchone()
                sender_ms = int(str(row[0])) if row is not None else 0
                self.receive_timeout = max(RECEIVE_TIMEOUT, 2 * sender_ms / 1000)
            if self.temporary:
                # A temporary slot lives on this very connection (``relay tail``): it never
                # holds WAL back after we go and never touches the relay's persistent slot.
                await self._conn.cursor().execute(
                    sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL wal2json").format(
                        sql.Identifier(self.slot)
                    )
                )
            opts = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(_option_literal(v)))
                for k, v in self.options.items()
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
        self._last_status = self._last_recv = time.monotonic()

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
            if not conn.closed and self.flushed_lsn and not self._copy_ended:
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
        iteration), and reading the socket again while a backlog keeps it full (up to
        ``batch_messages`` or ``batch_bytes``), is what keeps the per-batch overhead per change
        small.  Keepalives are
        answered here; the empty ticks let the caller run periodic work (publication polls,
        status updates) without a second task touching the connection.
        """
        assert self._conn is not None
        pgconn = self._conn.pgconn
        loop = asyncio.get_running_loop()
        get = pgconn.get_copy_data
        limit, byte_limit = self.batch_messages, self.batch_bytes
        while True:
            batch: list[bytes] = []
            size = 0
            refilled = False
            received = False
            end_max = 0  # highest XLogData end in this batch: one Lsn and one clock read per batch
            while True:
                try:
                    nbytes, data = get(1)
                except psycopg.Error as exc:
                    self._drop_reader()
                    raise ReplicationError(f"replication stream failed: {exc}") from exc
                if nbytes == 0:
                    # libpq's buffer is empty: read the socket again (non-blocking) while a
                    # backlog keeps it full; a batch ends at ``limit`` messages or ``byte_limit``
                    # bytes.  A batch is one socket write per subscriber downstream, and one
                    # libpq buffer (16 KiB, ~7 wide rows) per batch made those writes cost more
                    # than the decoding.
                    if refilled or not batch:
                        break
                    refilled = True
                    try:
                        pgconn.consume_input()
                    except psycopg.Error as exc:
                        self._drop_reader()
                        raise ReplicationError(f"replication connection lost: {exc}") from exc
                    continue
                refilled = False
                received = True
                if nbytes < 0:
                    self._drop_reader()
                    msg = pgconn.error_message.decode(errors="replace").strip()
                    raise ReplicationError(f"replication stream ended: {msg or 'server closed the stream'}")
                kind = data[0]
                if kind == 0x77:  # 'w' XLogData: header is start, end, clock (3 x int64)
                    end = int.from_bytes(data[9:17], "big")
                    if end > end_max:
                        end_max = end
                    batch.append(bytes(data[25:]))
                    size += nbytes
                    if len(batch) >= limit or size >= byte_limit:
                        break
                elif kind == 0x6B:  # 'k' keepalive: wal end, clock, reply requested
                    wal_end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                    self._received(max(end_max, wal_end))  # a reply reports all we have read
                    if reply:
                        self._send_status(pgconn, reply=False)
                        self._on_ping(pgconn)
            if received:
                self._received(end_max)
            if batch:
                yield batch
                self._maybe_status(pgconn)
                continue
            self._maybe_status(pgconn)
            self._check_alive(pgconn)
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

    def _received(self, end: int) -> None:
        """Something arrived (up to WAL position ``end``): the receive deadline starts over."""
        self._last_recv = time.monotonic()
        self._asked_reply = False
        if end > self.received_lsn:
            self.received_lsn = Lsn(end)

    def _check_alive(self, pgconn: pq.abc.PGconn) -> None:
        """Receive deadline: ask for a reply at half of it, give the stream up at all of it.

        Runs only when libpq's input was just read and held nothing, so a busy consumer that
        left data unread is never mistaken for a silent server.
        """
        timeout = self.receive_timeout
        if timeout is None or timeout <= 0:
            return
        silent = time.monotonic() - self._last_recv
        if silent >= timeout:
            self._drop_reader()
            raise ReplicationError(
                f"nothing received from Postgres for {silent:.0f}s (not even a keepalive): "
                "the replication connection is considered dead"
            )
        if silent >= timeout / 2 and not self._asked_reply:
            self._asked_reply = True
            self._send_status(pgconn, reply=True)  # the walsender answers with a keepalive

    def _on_ping(self, pgconn: pq.abc.PGconn) -> None:
        """Count back-to-back pings; on a shutdown's ping loop end the copy stream and raise."""
        now = time.monotonic()
        if now - self._last_ping_answer < SHUTDOWN_PING_GAP:
            self._ping_streak += 1
        else:
            self._ping_streak = 1
        self._last_ping_answer = now
        if self._ping_streak < SHUTDOWN_PINGS:
            return
        # CopyDone: the walsender answers with its own and exits (it is stopping); nothing is
        # confirmed beyond the status just sent, so the slot keeps what resuming clients need.
        self._copy_ended = True
        try:
            pgconn.put_copy_end()
            pgconn.flush()
        except psycopg.Error:
            pass  # the connection is going away anyway; closing it ends the walsender too
        self._drop_reader()
        raise ServerShuttingDown(
            f"Postgres is shutting down (the walsender waits for a confirmation up to "
            f"{self.received_lsn}; the relay holds it at {self.flushed_lsn} for its replay window): "
            "ended the replication stream"
        )

    def interrupt(self) -> None:
        """End an idle wait of :meth:`batches` now, as its idle tick would (it yields ``[]``).

        Why: the consumer checks its stop event between batches, so a stop waited for the next
        idle tick (up to half a second) before the stream could close — on every shutdown.
        """
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(False)

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
