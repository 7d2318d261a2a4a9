"""One capture leader per slot: a Redis lease with a fencing token, and the takeover.

Why Redis and not Postgres (an advisory lock, the slot's ``active_pid``): the leader's output
goes to Redis, so the lease must be checked *where it writes*.  Every append runs a script that
compares the caller's token with the lease (relay/cluster/changelog.py), so a leader that was
paused or partitioned past its lease writes nothing after another node took over, whatever it
believes.  An advisory lock would fence Postgres, which the old leader no longer needs to reach
to do damage.

The lease: ``SET relay:{slot}:leader <token> NX PX 2000``, renewed every 0.5 s by a script
that extends it only while it still holds this node's token; acquiring also takes the next
fencing epoch (``INCR relay:{slot}:epoch``, shown on /health).  A leader that cannot renew for
a whole lease period stops capturing on its own (its lease may be someone else's by then).

Postgres allows one walsender per slot.  A leader that died with a half-open connection leaves
a walsender holding the slot until ``wal_sender_timeout`` (60 s by default); the new leader,
holding the lease, terminates whatever walsender holds the slot (only a leader may stream it),
so takeover takes the lease period plus a poll, not a minute.

Before it captures, a new leader checks that the log holds everything the slot confirmed
(``confirmed_flush_lsn`` ≤ the log's last transaction end): otherwise Redis lost entries (a
restart without persistence, a flush, a failover to an empty replica) and it starts a new
generation of the log from the slot's confirmed position, which the readers answer with
``resync_needed``.  Otherwise it continues the log: the pipeline starts after the last
transaction in it, and entries an old leader already appended are not appended again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from contextlib import suppress
from typing import Any

import psycopg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.config import Config
from relay.core.changes import Lsn
from relay.core.position import seq_before
from relay.pipeline import Pipeline, PipelineStats, backoff_delay, is_expected
from relay.postgres.catalog import Catalog
from relay.postgres.identity import read_identity
from relay.postgres.replication import terminate_walsender, with_connect_defaults

from .changelog import NEW_GENERATION, ClusterKeys, LogSink, Meta, decode_slot

__all__ = ["CaptureLeader"]

log = logging.getLogger("relay.cluster")

# The lease outlives 1.5 s without a renewal (a loaded event loop); a dead leader's lease is
# gone 1.5-2 s after its last renewal, and a candidate notices within POLL_S.
LEASE_MS = 2000
RENEW_S = 0.5
POLL_S = 0.1  # how often a follower tries to take a free lease

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CaptureLeader:
    """Competes for the lease; while it holds it, runs the pipeline into a :class:`LogSink`."""

    def __init__(
        self, redis: Redis, keys: ClusterKeys, config: Config, catalog: Catalog, node_id: str
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.catalog = catalog
        self.node_id = node_id
        self.role = "follower"
        self.epoch = 0
        self.leader: str | None = None  # who holds the lease, as last seen
        self.terms = 0
        self.sink: LogSink | None = None
        self.pipeline: Pipeline | None = None
        self.last_error: str | None = None
        self.took_over_at: float | None = None  # wall clock of the last acquisition (bench)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._new_gen = redis.register_script(NEW_GENERATION)

    @property
    def stats(self) -> PipelineStats | None:
        return self.sink.stats if self.sink is not None and self.role == "leader" else None

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                token = f"{self.node_id}|{uuid.uuid4().hex}"
                epoch = int(
                    await self._acquire(keys=[self.keys.lease, self.keys.epoch], args=[token, LEASE_MS])
                )
                if not epoch:
                    holder: Any = await self.redis.get(self.keys.lease)
                    self.leader = bytes(holder).decode().partition("|")[0] if holder else None
                    attempt = 0
                    await _sleep(stop, POLL_S)
                    continue
                self.epoch, self.leader, self.role = epoch, self.node_id, "leader"
                self.terms += 1
                self.took_over_at = time.time()
                log.warning("%s leads capture of slot %s (epoch %d)", self.node_id, self.config.slot, epoch)
                try:
                    await self._term(stop, token)
                finally:
                    # Hand over at once (compare-and-delete: a lease already someone else's is
                    # left alone), rather than making the next leader wait for it to expire.
                    with suppress(RedisError, OSError):
                        await self._release(keys=[self.keys.lease], args=[token])
                attempt = 0
            except Exception as exc:
                attempt += 1
                delay = backoff_delay(attempt, 5.0)
                self.last_error = str(exc) or type(exc).__name__
                if isinstance(exc, (RedisError, OSError)) or is_expected(exc):
                    log.warning("capture leadership: %s; retrying in %.1fs", exc, delay)
                else:
                    log.exception("capture leadership failed (a relay bug); retrying in %.1fs", delay)
                await _sleep(stop, delay)
            finally:
                self.role = "follower"

    async def _term(self, stop: asyncio.Event, token: str) -> None:
        """One term as leader: prepare the log, capture until stopped, fenced or lease lost.

        The lease is kept by a task of its own from the first moment of the term: preparing the
        log (Postgres round trips, terminating an old walsender) and starting the stream can
        take longer than a lease period on a busy machine.
        """
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(token, lost), name="relay-lease")
        stopped = asyncio.create_task(stop.wait())
        sink: LogSink | None = None
        task: asyncio.Task[None] | None = None
        term_stop = asyncio.Event()
        why = "stopping"
        try:
            meta = await self._prepare_log(token)
            if meta is None or lost.is_set():
                return
            sink = LogSink(
                self.redis,
                self.keys,
                token,
                meta,
                window_s=self.config.resume_window,
                max_entries=max(1000, self.config.resume_max_bytes // 256),
            )
            pipeline = Pipeline(
                self.config.require_database(),
                self.catalog,
                sink,
                slot=self.config.slot,
                publication=self.config.publication,
                poll_interval=self.config.publication_poll_interval,
                max_backoff=2.0,
            )
            # Continue after the last transaction the log holds (Postgres starts at the later of
            # this and the slot's confirmed position); a transaction the old leader appended only
            # part of is decoded again and its appended entries skipped by key.
            pipeline.handed_off = Lsn(meta.last_end)
            pipeline.last_commit = Lsn(meta.last_commit)
            if meta.slot is not None and meta.slot.get("nat") is False:
                # The log's last stream ran without wal2json's numbers-as-text option (wal2json <
                # 2.6): start without it rather than spend a failed START_REPLICATION finding out.
                pipeline.types.numbers_as_text = False
            self.sink, self.pipeline = sink, pipeline
            sink.start()
            task = asyncio.create_task(pipeline.run(term_stop), name="relay-capture")
            fenced = asyncio.create_task(sink.fenced_event.wait())
            lost_wait = asyncio.create_task(lost.wait())
            try:
                await asyncio.wait({task, fenced, stopped, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                fenced.cancel()
                lost_wait.cancel()
            if stop.is_set():
                why = "stopping"
            elif sink.fenced is not None:
                why = sink.fenced
            elif lost.is_set():
                why = self._lost_why
            else:
                why = "the capture pipeline ended"
        finally:
            term_stop.set()
            stopped.cancel()
            keeper.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await keeper
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
            if sink is not None:
                await sink.close()
            self.role = "follower"
            if not stop.is_set():
                log.warning("%s stops capturing slot %s: %s", self.node_id, self.config.slot, why)

    _lost_why = ""

    async def _keep_lease(self, token: str, lost: asyncio.Event) -> None:
        """Renew the lease every RENEW_S; set ``lost`` when it is gone or could not be renewed
        for a whole lease period (it may be someone else's by now)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                ok = await self._renew(keys=[self.keys.lease], args=[token, LEASE_MS])
            except (RedisError, OSError) as exc:
                ok = None
                self.last_error = f"redis: {exc}"
            if ok:
                renewed = time.monotonic()
                continue
            if ok is not None:
                self._lost_why = "the lease was lost to another node"
            elif time.monotonic() - renewed > LEASE_MS / 1000:
                self._lost_why = "the lease could not be renewed for a whole lease period"
            else:
                continue
            lost.set()
            return

    async def _prepare_log(self, token: str) -> Meta | None:
        """The log this term extends: the existing one if it holds what the slot confirmed."""
        confirmed, holder, current = await _slot_state(self.config.require_database(), self.config.slot)
        meta = Meta.parse(await self.redis.hgetall(self.keys.meta))
        identity = await read_identity(self.config.require_database(), self.config.slot)
        logged = decode_slot(meta.slot)[0].stream if meta is not None and meta.slot is not None else None
        reason = None
        if meta is None:
            reason = "there is no change log in Redis yet (or Redis lost it)"
        elif logged is not None and logged != identity:
            # Its positions belong to another database history (failover, restore, another
            # cluster behind the same address): continuing it would skip by LSNs of that history.
            reason = f"the database's stream changed from {logged.id} to {identity.id}"
        elif confirmed is not None and confirmed > meta.last_end:
            reason = (
                f"the slot is confirmed to {confirmed} but the change log ends at {Lsn(meta.last_end)} "
                "(Redis lost appended entries)"
            )
        if reason is not None:
            floor = confirmed if confirmed is not None else current
            gen = uuid.uuid4().hex[:16]
            log.warning("starting change log generation %s from %s: %s", gen, floor, reason)
            if not await self._new_gen(
                keys=[self.keys.lease, self.keys.log, self.keys.meta],
                args=[token, gen, seq_before(floor), int(floor)],
            ):
                return None
            meta = Meta.parse(await self.redis.hgetall(self.keys.meta))
        if holder is not None:
            await _terminate_walsender(self.config.require_database(), self.config.slot, holder)
        return meta

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "epoch": self.epoch,
            "leader": self.leader,
            "terms": self.terms,
        }
        if self.sink is not None and self.role == "leader":
            out["appended"] = self.sink.appended
            out["log_durable_lsn"] = str(self.sink.durable_end)
            if self.sink.last_error:
                out["append_error"] = self.sink.last_error
        return out


async def _slot_state(dsn: str, slot: str) -> tuple[Lsn | None, int | None, Lsn]:
    """The slot's confirmed position and the walsender holding it (if any), and the WAL's end."""
    async with await psycopg.AsyncConnection.connect(with_connect_defaults(dsn), autocommit=True) as conn:
        cur = await conn.execute(
            "select s.confirmed_flush_lsn::text, s.active_pid, pg_current_wal_lsn()::text "
            "from (select 1) one left join pg_replication_slots s "
            "on s.slot_name = %s and s.database = current_database()",
            (slot,),
        )
        row = await cur.fetchone()
    assert row is not None
    confirmed, pid, current = row
    return (Lsn.parse(confirmed) if confirmed else None), pid, Lsn.parse(current)


async def _terminate_walsender(dsn: str, slot: str, pid: int) -> None:
    """Free the slot from a deposed leader's walsender (only a lease holder streams it)."""
    if pid == os.getpid():
        return
    log.warning("terminating walsender %d: it holds slot %s for a leader that lost its lease", pid, slot)
    async with await psycopg.AsyncConnection.connect(with_connect_defaults(dsn), autocommit=True) as conn:
        await terminate_walsender(conn, slot, pid)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
