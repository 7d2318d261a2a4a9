"""``LiveTable``: a table's rows by primary key, kept current from a snapshot and the changes after it.

Why it exists: what a backend cache or a dashboard wants is not a stream of events but the
table's current content (restricted to a filter and to what its token may see), kept up to date.
Building that by hand means a query racing the subscription — a row changed between the two is
lost or applied twice — and a refetch by hand after every ``resync_needed``.  The relay's
snapshot on join removes the race (rows as of one consistent point, then every change committed
after it, once); this class applies it: snapshot rows fill a dict, INSERT/UPDATE/DELETE (and the
``moved_out`` DELETEs and key-only ``old_record`` UPDATEs of rows leaving or entering the view)
keep it current, and a ``resync_needed`` makes the channel rejoin for a fresh snapshot, which
replaces the dict's content.

A new snapshot is collected aside and swapped in when its marker arrives, so ``rows`` never holds
half a snapshot: until then it holds the previous content (and ``ready`` says whether that is
current).  The primary key is not on the wire (``columns`` carries names and types only), so it
is given: ``key=("id",)`` by default.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from relay_client.backoff import Backoff, BackoffPolicy
from relay_client.channel import RealtimeChannel, SnapshotEvent
from relay_client.errors import ClientClosedError, NotJoinedError, SnapshotError
from relay_client.types import Change, ResyncNeeded, SnapshotComplete, SnapshotRow

__all__ = ["RETRYABLE_SNAPSHOT_CODES", "SNAPSHOT_RETRY", "LiveTable", "RowCallback", "RowKey"]

log = logging.getLogger("relay_client")

#: Snapshot failures that can pass by themselves: the relay's snapshot connections were busy or
#: the query ran out of time (``snapshot_timeout``), or the database failed it (``snapshot_failed``:
#: a restart, a lock timeout).  ``snapshot_too_large`` does not pass: asking again gets it again.
RETRYABLE_SNAPSHOT_CODES = frozenset({"snapshot_timeout", "snapshot_failed"})
#: How automatic reloads are spaced: full jitter, so a relay that timed out many clients' snapshots
#: at once is not asked by all of them again at the same moment.
SNAPSHOT_RETRY = BackoffPolicy(initial=1.0, maximum=30.0, stable_after=0.0)

RowKey = tuple[Any, ...]
RowCallback = Callable[[RowKey, dict[str, Any] | None, dict[str, Any] | None], Awaitable[None] | None]
"""``on_change(key, old, new)``: ``old`` None for a row that appeared, ``new`` None for one that left."""


class LiveTable:
    """The rows of ``schema.table`` matching ``filter`` (and the token's policies), by primary key.

    Give it a channel before ``subscribe()``: it adds a ``*`` binding with ``snapshot=True`` and
    makes the channel rejoin with a snapshot after a ``resync_needed``.  Then::

        await channel.subscribe()
        await live.wait_ready()   # the snapshot is in; rows stay current from here on

    ``rows``: ``{key tuple: row dict}``, the same dict object for the table's lifetime (changed in
    place).  ``on_change(key, old, new)`` is called after each change of ``rows`` — for every row
    of the first snapshot, for each live change, and for each difference a later snapshot brings.
    """

    def __init__(
        self,
        channel: RealtimeChannel,
        table: str,
        *,
        schema: str = "public",
        filter: str | None = None,
        key: Sequence[str] | str = ("id",),
        on_change: RowCallback | None = None,
        retries: int = 5,
        retry_policy: BackoffPolicy = SNAPSHOT_RETRY,
    ) -> None:
        self.channel = channel
        self.schema = schema
        self.table = table
        self.key: tuple[str, ...] = (key,) if isinstance(key, str) else tuple(key)
        if not self.key:
            raise ValueError("a LiveTable needs the primary key's column names")
        self.rows: dict[RowKey, dict[str, Any]] = {}
        self.position: str | None = None  # of the last snapshot marker or change applied
        self.error: SnapshotError | None = None  # the last snapshot failure, until one succeeds
        self.snapshots = 0  # snapshots loaded
        self.skipped = 0  # rows or changes without the key columns (e.g. a policy error): not applied
        self._on_change = on_change
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.max_retries = retries
        self.retries = 0  # automatic reloads after a snapshot failure that may pass
        self._backoff = Backoff(retry_policy)
        self._retry: asyncio.Task[None] | None = None
        self._building: dict[RowKey, dict[str, Any]] | None = None
        self._building_seq = -1
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()  # ready, or the snapshot failed: wait_ready() returns
        channel.on_postgres_changes(
            "*", self._on_event, table=table, schema=schema, filter=filter, snapshot=True
        )
        channel.snapshot_on_resync()
        channel.on_resync(self._on_resync)

    @property
    def ready(self) -> bool:
        """A snapshot is in and every change since applied: ``rows`` is the table's content."""
        return self._ready.is_set()

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        state = "ready" if self.ready else "loading"
        return f"<LiveTable {self.schema}.{self.table} {len(self.rows)} rows {state} at {self.position}>"

    async def wait_ready(self, timeout: float | None = None) -> LiveTable:  # noqa: ASYNC109
        """Until ``ready`` (``TimeoutError`` after ``timeout``); the snapshot's error if it failed."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                if self.error is not None and not self.retrying:
                    raise self.error
                self._settled.clear()
                await self._settled.wait()
        return self

    @property
    def retrying(self) -> bool:
        """An automatic reload is scheduled after a snapshot failure that may pass."""
        return self._retry is not None and not self._retry.done()

    def reload(self) -> None:
        """Load a fresh snapshot (the channel joins again): e.g. after the automatic retries of a
        ``snapshot_timeout`` ran out.  ``rows`` keeps its content until the new snapshot is
        complete.  Cancels a scheduled automatic reload (this one replaces it)."""
        if self._retry is not None and self._retry is not asyncio.current_task():
            self._retry.cancel()
        self._retry = None
        self.error = None
        self._ready.clear()
        self.channel.request_snapshot()

    def _schedule_retry(self, error: SnapshotError) -> bool:
        """After a failure that may pass, reload by itself (backoff with jitter), at most
        ``retries`` times in a row; False when it will not (permanent, or out of retries)."""
        if error.code not in RETRYABLE_SNAPSHOT_CODES or self._backoff.attempt >= self.max_retries:
            return False
        delay = self._backoff.next_delay()
        self.retries += 1
        log.warning(
            "snapshot of %s.%s failed (%s); asking again in %.1f s (retry %d of %d)",
            self.schema,
            self.table,
            error.code,
            delay,
            self._backoff.attempt,
            self.max_retries,
        )
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().create_task(self._reload_after(delay))
        return True

    async def _reload_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.ready:
            return  # a snapshot came in meanwhile (e.g. a rejoin after a reconnect)
        try:
            self.reload()
        except (ClientClosedError, NotJoinedError):
            # the client or channel was closed meanwhile: nothing to load into
            self._settled.set()

    # -- events of the binding --------------------------------------------------------------------
    async def _on_event(self, item: Change | SnapshotEvent) -> None:
        if isinstance(item, SnapshotRow):
            self._on_row(item)
        elif isinstance(item, SnapshotComplete):
            await self._on_complete(item)
        elif isinstance(item, SnapshotError):
            self._building = None
            self.error = item
            self._ready.clear()
            self._schedule_retry(item)
            self._settled.set()
        else:
            await self._apply(item)

    def _on_resync(self, event: ResyncNeeded) -> None:
        """Changes were missed: not current until the fresh snapshot the channel asks for is in."""
        self._ready.clear()

    def _key(self, row: Mapping[str, Any]) -> RowKey | None:
        try:
            k = tuple(row[c] for c in self.key)
            hash(k)
        except (KeyError, TypeError):
            return None
        return k

    def _on_row(self, row: SnapshotRow) -> None:
        if self._building is None or row.snapshot != self._building_seq:
            # A new snapshot (a reconnect during the previous one restarts it): start over.
            self._building = {}
            self._building_seq = row.snapshot
        k = self._key(row.record)
        if k is None:
            self.skipped += 1
            log.warning("snapshot row of %s.%s without key %s: not kept", self.schema, self.table, self.key)
            return
        self._building[k] = dict(row.record)

    async def _on_complete(self, done: SnapshotComplete) -> None:
        new = self._building if self._building is not None and self._building_seq == done.snapshot else {}
        self._building = None
        old = dict(self.rows)
        self.rows.clear()
        self.rows.update(new)
        self.position = done.position
        self.error = None
        self._backoff.reset()  # the next failure gets its full number of retries again
        self.snapshots += 1
        self._ready.set()
        self._settled.set()
        for k, row in new.items():
            prev = old.get(k)
            if prev != row:
                await self._notify(k, prev, row)
        for k, prev in old.items():
            if k not in new:
                await self._notify(k, prev, None)

    async def _apply(self, change: Change) -> None:
        self.position = change.position
        if change.type == "DELETE":  # also a row that left the view (moved_out)
            k = self._key(change.old_record)
            if k is None:
                self._skip(change)
            elif (prev := self.rows.pop(k, None)) is not None:
                await self._notify(k, prev, None)
            return
        new_key = self._key(change.record)
        if new_key is None:
            self._skip(change)
            return
        if change.type == "UPDATE":
            # old_record is the old row, or only its key when the row just entered the view.
            old_key = self._key(change.old_record)
            if old_key is not None and old_key != new_key:  # the primary key itself changed
                gone = self.rows.pop(old_key, None)
                if gone is not None:
                    await self._notify(old_key, gone, None)
        prev = self.rows.get(new_key)
        row = dict(change.record)
        self.rows[new_key] = row
        await self._notify(new_key, prev, row)

    def _skip(self, change: Change) -> None:
        self.skipped += 1
        log.warning(
            "%s on %s.%s at %s without its key %s (errors: %s): not applied",
            change.type,
            self.schema,
            self.table,
            change.position,
            self.key,
            list(change.errors),
        )

    async def _notify(self, k: RowKey, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        cb = self._on_change
        if cb is None:
            return
        try:
            result = cb(k, old, new)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the table stays consistent whatever the application's callback does
            log.exception("LiveTable on_change callback %r failed", cb)
