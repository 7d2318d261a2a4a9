"""The one place the stages meet: replication stream -> decode -> fan-out -> confirm.

Why it is shaped like this:

- **Confirm after hand-off, and not past the replay window.**  A transaction's end LSN is
  confirmed to Postgres only after every change in it was passed to the sink (queued on its
  sockets), and never past the oldest change the replay log still holds (``hold``).  Until then
  the persistent slot keeps the WAL, so a crash replays rather than loses, and a restarted
  relay decodes its replay window again.
- **Exactly once across stream restarts.**  Restarting the stream (new table set, reconnect)
  may replay transactions the relay already handed off; they are skipped by commit LSN, which
  is strictly increasing in a logical slot.
- **Network weather retries quietly, bugs do not.**  Connection failures (Postgres restarting
  or shutting down, a dead link noticed by the stream's receive deadline) are expected: a
  warning, then a retry with exponential backoff and full jitter.  Anything else is a bug in
  the relay: logged with its traceback and counted in ``internal_errors`` (on /health), and
  still retried with backoff so the relay stays up.
- **Table set changes in commit order.**  ``realtime.enable_table`` / ``disable_table`` (and an
  event trigger on ``ALTER PUBLICATION``) emit a transactional logical message.  When the relay
  decodes it, it confirms up to that transaction and restarts the stream from there with the new
  ``add-tables`` list, so the first change to a newly enabled table is never skipped.  A poll of
  the publication every second catches anything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import asyncpg
import psycopg
from tenacity import RetryCallState, Retrying, wait_random_exponential

from relay.core.changes import Begin, Commit, Lsn, Message, RowChange
from relay.core.publication import ColumnStripper, PublicationRules, stripper_available
from relay.core.relay_messages import MESSAGE_PREFIX, RelayMessage, TableSetChanged, decode_message
from relay.core.sqltypes import TypeRegistry
from relay.core.stream import StreamIdentity
from relay.core.wal2json import NUMBERS_AS_TEXT, Decoder, wal2json_options
from relay.postgres.catalog import Catalog
from relay.postgres.identity import read_identity
from relay.postgres.replication import ReplicationError, ReplicationStream, SlotInfo, ensure_slot

__all__ = ["ChangeSink", "ChangesOnly", "Pipeline", "PipelineStats"]

log = logging.getLogger("relay.pipeline")

LAG_LOG_INTERVAL = 60.0  # seconds between "slot lag" log lines
HEALTHY_STREAM = 30.0  # a stream that ran this long resets the backoff

# What a database or network going away raises: retried with a warning, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ReplicationError,  # stream failed, ended, timed out, server shutting down
    psycopg.OperationalError,  # connection refused/lost, admin shutdown, too many connections
    OSError,  # sockets (includes ConnectionError and TimeoutError)
    asyncpg.PostgresConnectionError,  # catalog pool: connection lost
    asyncpg.exceptions.OperatorInterventionError,  # catalog pool: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # catalog pool: too many connections
)


def is_expected(exc: BaseException) -> bool:
    """True for a database or network failure; False for anything else (a relay bug)."""
    return isinstance(exc, EXPECTED_ERRORS)


def backoff_delay(attempt: int, max_backoff: float) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): tenacity's exponential backoff with
    full jitter (0.25 s doubling, capped at ``max_backoff``), so a flapping database is not
    hammered and many relays do not reconnect in step."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait_random_exponential(multiplier=0.25, max=max_backoff)(state))


@dataclass
class PipelineStats:
    """Counters and positions surfaced on /health and in logs."""

    streaming: bool = False
    tables: list[str] = field(default_factory=list)
    last_commit_lsn: str = "0/0"
    confirmed_lsn: str = "0/0"
    transactions: int = 0
    changes: int = 0
    restarts: int = 0
    internal_errors: int = 0  # stream failures that were relay bugs, not network weather
    last_error: str | None = None
    undecodable: int = 0  # wal2json messages skipped because they could not be decoded at all
    numbers_as_text: bool = False  # wal2json sends exact numbers, NaN/Infinity included (2.6+)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ChangeSink(Protocol):
    """Where the pipeline hands everything it reads: the one interface between capture and serving.

    Why one protocol instead of a sink and six callbacks: the pipeline's whole contract with the
    rest of the relay is visible in one place, and a sink is one object (the server's adapter in
    relay/service.py, or :class:`ChangesOnly`) rather than a web of closures.
    """

    def change(self, change: RowChange) -> Awaitable[None] | None:
        """A row change, in stream order; an awaitable means "wait before the next one"."""

    def commit(self, commit: Commit) -> None:
        """A transaction whose changes were all handed over."""

    def message(self, message: RelayMessage) -> None:
        """A relay message other than a table-set change (the pipeline handles those)."""

    def batch_end(self) -> None:
        """The end of one batch read from the stream: one write per touched socket."""

    def slot(self, info: SlotInfo, first: bool) -> None:
        """The slot the stream (re)starts from, with its stream identity."""

    def status(self, stats: PipelineStats) -> None:
        """The pipeline's counters changed (for /health)."""

    def hold(self) -> Lsn | None:
        """The oldest LSN the slot must keep (the replay window), or None."""


class ChangesOnly:
    """A :class:`ChangeSink` for callers that want only the row changes (``relay tail``, tests)."""

    def __init__(self, on_change: Callable[[RowChange], Awaitable[None] | None]) -> None:
        self.change = on_change

    def commit(self, commit: Commit) -> None:
        pass

    def message(self, message: RelayMessage) -> None:
        pass

    def batch_end(self) -> None:
        pass

    def slot(self, info: SlotInfo, first: bool) -> None:
        pass

    def status(self, stats: PipelineStats) -> None:
        pass

    def hold(self) -> Lsn | None:
        return None


class _Restart(Exception):
    """Internal: stop the current stream and start a new one (table set changed)."""


class Pipeline:
    """Runs the capture loop until ``stop`` is set, reconnecting with backoff on failure."""

    def __init__(
        self,
        dsn: str,
        catalog: Catalog,
        sink: ChangeSink,
        *,
        slot: str,
        publication: str,
        poll_interval: float = 1.0,
        temporary_slot: bool = False,
        max_backoff: float = 10.0,
        receive_timeout: float | None = None,
    ) -> None:
        self.dsn = dsn
        self.catalog = catalog
        self.sink = sink
        self.slot = slot
        self.publication = publication
        self.poll_interval = poll_interval
        self.temporary_slot = temporary_slot
        self.max_backoff = max_backoff
        self.receive_timeout = receive_timeout  # None: derived from wal_sender_timeout
        self.types = TypeRegistry(numbers_as_text=True)  # until wal2json says it does not know it
        self.stats = PipelineStats()
        self.handed_off = Lsn(0)  # end LSN of the last transaction fully handed to the sink
        self.last_commit = Lsn(0)  # commit LSN of that transaction (dedup key)
        self.ready = asyncio.Event()  # set once the first stream is running
        self._first_stream = True
        self._streaming_since: float | None = None  # when the current stream started
        self._stale_pid: int | None = None  # walsender of a stream that failed (may linger)
        self.stream: StreamIdentity | None = None  # identity of the history being streamed

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                await self._stream_once(stop)
                attempt = 0
            except _Restart:
                attempt = 0
                self.stats.restarts += 1
                continue
            except Exception as exc:
                self.stats.streaming = False
                if stop.is_set():  # failures while stopping (pool closing...) are not news
                    log.debug("replication stopped while stopping: %r", exc)
                    break
                since = self._streaming_since
                if since is not None and time.monotonic() - since >= HEALTHY_STREAM:
                    attempt = 0  # it had been fine for a while: start the backoff over
                attempt += 1
                delay = backoff_delay(attempt, self.max_backoff)
                if is_expected(exc):
                    self.stats.last_error = str(exc)
                    log.warning("replication stopped (%s); retrying in %.1fs", exc, delay)
                else:
                    self.stats.internal_errors += 1
                    self.stats.last_error = f"internal error: {type(exc).__name__}: {exc}"
                    log.exception(
                        "replication stopped by an internal error (a relay bug); retrying in %.1fs", delay
                    )
                self._publish()
                try:
                    async with asyncio.timeout(delay):  # no helper task (unlike wait_for)
                        await stop.wait()
                except TimeoutError:
                    pass
        self.stats.streaming = False
        self._publish()

    async def _stream_once(self, stop: asyncio.Event) -> None:
        self._streaming_since = None
        if not self.temporary_slot:
            info = await ensure_slot(self.dsn, self.slot, stale_pid=self._stale_pid)
            self._stale_pid = None
            info = replace(info, stream=await read_identity(self.dsn, self.slot))
            if self.stream is not None and info.stream != self.stream:
                # Another history (failover, restore, new cluster): its LSNs are not comparable
                # with what was handed off, so nothing may be skipped or resumed by them.
                log.warning("stream identity changed from %s to %s", self.stream, info.stream)
                self.handed_off, self.last_commit = Lsn(0), Lsn(0)
            self.stream = info.stream
            if info.reason == "lost":
                self.stats.last_error = f"slot {self.slot} was lost and recreated at {info.confirmed_flush}"
            self.sink.slot(info, self._first_stream)
            self._first_stream = False
        self.types.update(await self.catalog.types())
        published = await self.catalog.published_tables(self.publication)
        rules = await self.catalog.publication_rules(self.publication, fresh=True)
        tables = self._streamed(published, rules)
        stream = await self._start_stream(tables, rules)
        self._streaming_since = time.monotonic()
        decoder = Decoder(self.types)
        try:
            self.stats.streaming = True
            self.stats.tables = [f"{s}.{t}" for s, t in tables]
            self.stats.last_error = None
            self._publish()
            log.info(
                "streaming slot %s from %s; tables: %s",
                self.slot,
                stream.start_lsn,
                ", ".join(self.stats.tables) or "(none)",
            )
            self.ready.set()
            await self._consume(stream, decoder, (published, rules), stop)
        except _Restart:
            raise
        except BaseException:
            self._stale_pid = stream.backend_pid  # its walsender may still hold the slot
            raise
        finally:
            self.stats.streaming = False
            await stream.close()

    def _streamed(self, published: list[tuple[str, str]], rules: PublicationRules) -> list[tuple[str, str]]:
        """The published tables the relay can stream as the publication says (see
        relay.core.publication): not those with a row filter, and not those with a column list
        when the stripper cannot run.  Says so at every stream start: a DBA must not find out
        from a dashboard that stays empty."""
        for (schema, table), where in sorted(rules.row_filters.items()):
            log.warning(
                "table %s.%s is not streamed: publication %s has a row filter on it (WHERE %s), which "
                "the relay cannot apply; joins naming it are refused with publication_row_filter. "
                "Remove the filter and use a row policy instead (docs/authorization.md)",
                schema,
                table,
                self.publication,
                where,
            )
        tables = rules.streamed(published)
        if rules.columns and not stripper_available():
            log.error(
                "column lists of publication %s need msgspec: those tables are not streamed", self.publication
            )
            tables = [t for t in tables if t not in rules.columns]
        for (schema, table), keep in sorted(rules.columns.items()):
            log.info(
                "table %s.%s: only the published columns are streamed (%s)",
                schema,
                table,
                ", ".join(sorted(keep)),
            )
        return tables

    async def _start_stream(
        self, tables: list[tuple[str, str]], rules: PublicationRules | None = None
    ) -> ReplicationStream:
        """Start streaming, with exact numbers if this wal2json has the option (2.6+).

        wal2json 2.5 rejects ``numeric-data-types-as-string`` when decoding starts; we then start
        again without it and remember.  Without it, wal2json itself prints float/numeric ``NaN``
        and ``±Infinity`` as ``null``: those values cannot be recovered (docs/protocol.md).
        """
        while True:
            as_text = self.types.numbers_as_text
            options = wal2json_options(tables, (MESSAGE_PREFIX,), numbers_as_text=as_text)
            actions = rules.wal2json_actions() if rules is not None else None
            if actions is not None:  # the publication publishes only some row actions
                options["actions"] = actions
            stream = ReplicationStream(
                self.dsn,
                self.slot,
                options,
                start_lsn=self.handed_off,
                temporary=self.temporary_slot,
                receive_timeout=self.receive_timeout,
            )
            try:
                await stream.start()
            except ReplicationError as exc:
                await stream.close()
                if as_text and NUMBERS_AS_TEXT in str(exc):
                    log.info(
                        "wal2json has no %s option (wal2json < 2.6): float/numeric NaN and "
                        "Infinity will arrive as null",
                        NUMBERS_AS_TEXT,
                    )
                    self.types.numbers_as_text = False
                    continue
                raise
            self.stats.numbers_as_text = as_text
            return stream

    async def _consume(
        self,
        stream: ReplicationStream,
        decoder: Decoder,
        publication: tuple[list[tuple[str, str]], PublicationRules],
        stop: asyncio.Event,
    ) -> None:
        next_lag_log = time.monotonic() + LAG_LOG_INTERVAL
        # a stop ends the stream's idle wait at once (else it waited for the next idle tick)
        stopper = asyncio.get_running_loop().create_task(stop.wait(), name="relay-pipeline-stop")
        stopper.add_done_callback(lambda _: stream.interrupt())
        try:
            await self._consume_batches(stream, decoder, publication, stop, next_lag_log)
        finally:
            stopper.cancel()

    async def _consume_batches(
        self,
        stream: ReplicationStream,
        decoder: Decoder,
        publication: tuple[list[tuple[str, str]], PublicationRules],
        stop: asyncio.Event,
        next_lag_log: float,
    ) -> None:
        skipping = False
        tx_commit = Lsn(0)
        restart_after_commit = False
        next_poll = time.monotonic() + self.poll_interval
        unconfirmed = False
        sink = self.sink
        hand_over = sink.change
        stats = self.stats
        decode: Callable[[bytes | str], Begin | Commit | RowChange | Message | None] = decoder.decode
        rules = publication[1]
        if rules.columns and stripper_available():
            # Column lists: applied to the bytes before anything reads them (decoder, replay
            # window, cluster change log); a message that cannot be stripped is skipped below.
            strip, decode_one = ColumnStripper(rules.columns), decoder.decode

            def decode_stripped(payload: bytes | str) -> Begin | Commit | RowChange | Message | None:
                return decode_one(strip(payload if isinstance(payload, bytes) else payload.encode()))

            decode = decode_stripped
        async for batch in stream.batches(idle_timeout=min(0.5, self.poll_interval)):
            if stop.is_set():
                return
            if time.monotonic() >= next_lag_log:
                next_lag_log = time.monotonic() + LAG_LOG_INTERVAL
                held = int(stream.received_lsn) - int(stream.flushed_lsn)
                log.info(
                    "slot %s: received %s, confirmed %s (%d bytes of WAL held: replay window and "
                    "in-flight changes)",
                    self.slot,
                    stream.received_lsn,
                    stream.flushed_lsn,
                    max(held, 0),
                )
            if not batch:
                if self._confirm(stream) or unconfirmed:
                    stream.force_status()
                    unconfirmed = False
                    stats.last_commit_lsn = str(self.last_commit)
                    stats.confirmed_lsn = str(stream.flushed_lsn)
                    self._publish()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_interval
                    current = (
                        await self.catalog.published_tables(self.publication),
                        await self.catalog.publication_rules(self.publication, fresh=True),
                    )
                    if current != publication:
                        log.info("publication %s changed; restarting stream", self.publication)
                        raise _Restart()
                continue
            committed = False  # a transaction ended in this batch: confirm once, at its end
            try:
                for payload in batch:
                    try:
                        event = decode(payload)
                    except Exception as exc:
                        # never stall the slot on one message: skip it, counted and logged
                        stats.undecodable += 1
                        log.error(
                            "skipped a wal2json message that could not be decoded (%s: %s)",
                            type(exc).__name__,
                            str(exc)[:200],
                        )
                        continue
                    if type(event) is RowChange:
                        if not skipping:
                            stats.changes += 1
                            pending = hand_over(event)
                            if pending is not None:  # a policy needs Postgres: keep commit order
                                await pending
                    elif type(event) is Begin:
                        skipping = self.last_commit != 0 and event.commit_lsn <= self.last_commit
                        tx_commit = event.commit_lsn
                    elif type(event) is Commit:
                        if not skipping:
                            self.last_commit = event.commit_lsn
                            stats.transactions += 1
                            sink.commit(event)
                        if event.end_lsn > self.handed_off:
                            self.handed_off = event.end_lsn
                        committed = True
                        unconfirmed = True
                        skipping = False
                        if restart_after_commit:
                            self._confirm(stream)
                            committed = False
                            stream.force_status()
                            raise _Restart()
                    elif type(event) is Message:
                        if event.prefix == MESSAGE_PREFIX and not skipping:
                            # with its transaction's commit LSN: where it sits in commit order
                            msg = decode_message(
                                event.content, tx_commit if event.transactional else event.lsn
                            )
                            if type(msg) is TableSetChanged:
                                restart_after_commit = True
                            elif msg is not None:
                                sink.message(msg)
            finally:
                if committed:
                    # Once per batch, not per transaction: the status update that tells Postgres
                    # is sent between batches anyway, and asking the replay window for its hold
                    # per single-row transaction was ~5 % of a backlog drain.
                    self._confirm(stream)
                sink.batch_end()  # one write per touched socket per batch

    def _confirm(self, stream: ReplicationStream) -> bool:
        """Confirm what was handed off, but not past the replay window; True if it advanced."""
        lsn = self.handed_off
        held = self.sink.hold()
        if held is not None and held < lsn:
            lsn = held
        if lsn > stream.flushed_lsn:
            stream.confirm(lsn)
            return True
        return False

    def _publish(self) -> None:
        self.sink.status(self.stats)
