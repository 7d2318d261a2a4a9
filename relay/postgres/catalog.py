"""Catalog look-ups over a small asyncpg pool: table columns, types, publication membership.

Why asyncpg and a cache: a join must validate its filters against the table's real column types
without stalling the event loop, and a burst of joins to the same table should cost one query.
That includes the burst that finds the entry expired: concurrent misses of one key share one
query in flight (issue 16: with hundreds of joins in flight, every expiry of the 5 s entry
cost one query per join in flight, ≈ 7 % of the join path's CPU).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from relay.core.publication import ROW_ACTIONS, PublicationRules
from relay.core.sqltypes import PG_CAST_TYPES, TypeInfo

__all__ = ["Catalog", "OperandCastError", "TableShape", "close_pool"]

#: Session settings for operand casts: the canonical output the filter converters read (ISO dates,
#: shortest-exact floats; the day/month order stays the database's), and offset-less timestamptz
#: operands taken as UTC.
_CAST_SETTINGS = (
    "select set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO', true), "
    "set_config('extra_float_digits', '1', true)"
)
_CAST_CACHE_SIZE = 4096

# A published table's columns; from Postgres 15 on, only those its column list publishes
# (``published``) and its row filter (relay.core.publication).
_TABLE_SQL = """
select a.attname::text as name, t.typname::text as type,
       (r.prattrs is null or a.attnum = any(r.prattrs::int2[])) as published,
       p.rowfilter::text as row_filter
from pg_catalog.pg_publication_tables p
join pg_catalog.pg_publication pb on pb.pubname = p.pubname
join pg_catalog.pg_namespace n on n.nspname = p.schemaname
join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
left join pg_catalog.pg_publication_rel r on r.prpubid = pb.oid and r.prrelid = c.oid
left join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
left join pg_catalog.pg_type t on t.oid = a.atttypid
where p.pubname = $1 and p.schemaname = $2 and p.tablename = $3
order by a.attnum
"""
_TABLE_SQL_OLD = """
select a.attname::text as name, t.typname::text as type, true as published, null::text as row_filter
from pg_catalog.pg_publication_tables p
join pg_catalog.pg_namespace n on n.nspname = p.schemaname
join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
left join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
left join pg_catalog.pg_type t on t.oid = a.atttypid
where p.pubname = $1 and p.schemaname = $2 and p.tablename = $3
order by a.attnum
"""
# The publication's actions, with one row per table that has a column list or a row filter.
_RULES_SQL = """
select pb.pubinsert, pb.pubupdate, pb.pubdelete, x.s, x.t, x.cols, x.f
from pg_catalog.pg_publication pb
left join lateral (
    select p.schemaname::text as s, p.tablename::text as t,
           case when r.prattrs is null then null else p.attnames::text[] end as cols,
           p.rowfilter::text as f
    from pg_catalog.pg_publication_tables p
    join pg_catalog.pg_namespace n on n.nspname = p.schemaname
    join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
    left join pg_catalog.pg_publication_rel r on r.prpubid = pb.oid and r.prrelid = c.oid
    where p.pubname = pb.pubname and (r.prattrs is not null or p.rowfilter is not null)
) x on true
where pb.pubname = $1
"""
_RULES_SQL_OLD = """
select pubinsert, pubupdate, pubdelete,
       null::text as s, null::text as t, null::text[] as cols, null::text as f
from pg_catalog.pg_publication where pubname = $1
"""


def _retrieved(task: asyncio.Task[TableShape | None]) -> None:
    """Mark a shared look-up's failure as seen even when every join awaiting it went away."""
    if not task.cancelled():
        task.exception()


class OperandCastError(ValueError):
    """Postgres refused to cast a filter operand; the message is Postgres' own."""


@dataclass(frozen=True)
class TableShape:
    """A table's columns (name -> typname) in column order, and whether it is published.

    For a published table ``columns`` holds only the columns its publication publishes (a
    column list, PG 15+) and ``row_filter`` the publication's ``WHERE`` text, if it has one
    (relay.core.publication: such a table is not streamed).
    """

    schema: str
    table: str
    columns: dict[str, str]
    row_filter: str | None = None


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close an asyncpg pool within 5 s, else terminate it: a dead server's half-open
    connections must never hang a relay's shutdown (the catalog's pool, the snapshots' pool)."""
    try:
        await asyncio.wait_for(pool.close(), 5)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()


class Catalog:
    """Cached catalog queries; entries expire after ``ttl`` seconds so ALTERs are seen."""

    def __init__(self, dsn: str, ttl: float = 5.0) -> None:
        self.dsn = dsn
        self.ttl = ttl
        self._pool: asyncpg.Pool | None = None
        self._tables: dict[tuple[str, str], tuple[float, TableShape | None]] = {}
        self._published: dict[tuple[str, str, str | None], tuple[float, TableShape | None]] = {}
        self._casts: dict[tuple[str, str], tuple[float, str]] = {}
        self._rules: dict[str, tuple[float, PublicationRules]] = {}
        self.pg_major = 0  # the server's major version, known once open (column lists: 15+)
        # publication look-ups being answered: later misses of the same key await this one
        self._inflight: dict[tuple[str, str, str | None], asyncio.Task[TableShape | None]] = {}

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=10)
        async with self._pool.acquire() as conn:  # from the connection's start-up, no query
            self.pg_major = conn.get_server_version().major

    async def close(self) -> None:
        """Close the pool; never hang on connections a dead server left half-open."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("catalog is not open")
        return self._pool

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        """``pool.fetch`` retried once: after a Postgres restart pooled connections are dead,
        and the first query on each fails although a new connection would work."""
        try:
            return list(await self.pool.fetch(query, *args))
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, OSError):
            return list(await self.pool.fetch(query, *args))

    async def table(self, schema: str, table: str) -> TableShape | None:
        """The table's shape, or None if no such table exists."""
        key = (schema, table)
        hit = self._tables.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        rows = await self._fetch(
            """
            select a.attname::text as name, t.typname::text as type
            from pg_catalog.pg_attribute a
            join pg_catalog.pg_type t on t.oid = a.atttypid
            where a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text))
              and a.attnum > 0 and not a.attisdropped
            order by a.attnum
            """,
            schema,
            table,
        )
        shape = TableShape(schema, table, {r["name"]: r["type"] for r in rows}) if rows else None
        self._tables[key] = (now, shape)
        return shape

    async def published_table(self, publication: str, schema: str, table: str) -> TableShape | None:
        """The table's shape if it is in ``publication``; None for anything else.

        None alike for a missing table, a view, a catalog and a table not enabled: joins answer
        all of them with one refusal, so nothing outside the publication can be probed.  A
        refusal is cached for a second only, so a table just enabled can be joined at once.
        """
        return await self._published_lookup(publication, schema, table)

    async def schema_published(self, publication: str, schema: str) -> bool:
        """Whether ``publication`` has at least one table in ``schema`` (schema-wide bindings)."""
        return await self._published_lookup(publication, schema, None) is not None

    async def _published_lookup(self, publication: str, schema: str, table: str | None) -> TableShape | None:
        key = (publication, schema, table)
        hit = self._published.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < (self.ttl if hit[1] is not None else min(self.ttl, 1.0)):
            return hit[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._published_query(key))
            task.add_done_callback(_retrieved)
            self._inflight[key] = task
        # shielded: a join that gives up (its socket closed) must not cancel the others' answer
        return await asyncio.shield(task)

    async def _published_query(self, key: tuple[str, str, str | None]) -> TableShape | None:
        """One publication look-up from Postgres, cached; the in-flight entry goes when it ends."""
        publication, schema, table = key
        try:
            return await self._published_fetch(publication, schema, table)
        finally:
            self._inflight.pop(key, None)

    async def _published_fetch(self, publication: str, schema: str, table: str | None) -> TableShape | None:
        key = (publication, schema, table)
        now = time.monotonic()
        if table is None:
            rows = await self._fetch(
                "select 1 from pg_catalog.pg_publication_tables "
                "where pubname = $1 and schemaname = $2 limit 1",
                publication,
                schema,
            )
            shape = TableShape(schema, "*", {}) if rows else None
        else:
            rows = await self._fetch(
                _TABLE_SQL if await self._major() >= 15 else _TABLE_SQL_OLD, publication, schema, table
            )
            # what the publication does not publish (a column list) does not exist here
            cols = {r["name"]: r["type"] for r in rows if r["name"] is not None and r["published"]}
            shape = TableShape(schema, table, cols, rows[0]["row_filter"]) if rows else None
        if len(self._published) > 4096:  # probes of random names must not grow memory
            self._published.clear()
        self._published[key] = (now, shape)
        return shape

    async def cast_operands(self, casts: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Postgres' text output of ``operand::pg_catalog.<type>`` for each ``(type, operand)``.

        Why ask Postgres: a filter must accept exactly the operands Postgres accepts and mean what
        Postgres means by them (``1e3`` for numeric, ``yesterday`` for a timestamp, the JSON
        grammar), and only its input functions know that for sure.  One transaction per join
        (settings pinned, one statement per type); results are cached for ``ttl`` seconds, which
        also bounds how stale a cached ``now``/``today`` can be.  Types must be in
        :data:`relay.core.filters.PG_CAST_TYPES` (built-in names, safe to put in the SQL text).
        Raises :class:`OperandCastError` with Postgres' message when a cast fails.
        """
        now = time.monotonic()
        out: dict[tuple[str, str], str] = {}
        by_type: dict[str, list[str]] = {}
        for typ, value in casts:
            if typ not in PG_CAST_TYPES:
                raise ValueError(f"not a type the relay casts in Postgres: {typ!r}")
            hit = self._casts.get((typ, value))
            if hit is not None and now - hit[0] < self.ttl:
                out[(typ, value)] = hit[1]
            else:
                by_type.setdefault(typ, []).append(value)
        if not by_type:
            return out
        try:
            fetched = await self._cast(by_type)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, OSError):
            fetched = await self._cast(by_type)  # a pooled connection died with a restart: once more
        if len(self._casts) + len(fetched) > _CAST_CACHE_SIZE:
            self._casts.clear()
        for key, text in fetched.items():
            self._casts[key] = (now, text)
        out.update(fetched)
        return out

    async def _cast(self, by_type: dict[str, list[str]]) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_CAST_SETTINGS)
            for typ, values in by_type.items():
                try:
                    rows = await conn.fetch(
                        f"select u.v::pg_catalog.{typ}::text as c "
                        "from unnest($1::text[]) with ordinality as u(v, i) order by u.i",
                        values,
                    )
                except (asyncpg.DataError, asyncpg.SyntaxOrAccessError) as exc:
                    raise OperandCastError(str(exc)) from None
                out.update(((typ, v), r["c"]) for v, r in zip(values, rows, strict=True))
        return out

    async def types(self) -> list[TypeInfo]:
        rows = await self._fetch(
            "select oid::int8 as oid, typname::text as name, typcategory::text as cat, typelem::int8 as elem "
            "from pg_catalog.pg_type"
        )
        return [TypeInfo(r["oid"], r["name"], r["cat"], r["elem"]) for r in rows]

    async def publication_rules(self, publication: str, fresh: bool = False) -> PublicationRules:
        """The publication's published actions, column lists and row filters (the last two exist
        from Postgres 15 on), cached for ``ttl`` seconds (``fresh``: read now, at a stream start).
        One query."""
        hit = self._rules.get(publication)
        now = time.monotonic()
        if hit is not None and not fresh and now - hit[0] < self.ttl:
            return hit[1]
        rows = await self._fetch(_RULES_SQL if await self._major() >= 15 else _RULES_SQL_OLD, publication)
        actions = ROW_ACTIONS
        if rows:
            first = rows[0]
            actions = frozenset(a for a in ("insert", "update", "delete") if first["pub" + a])
        rules = PublicationRules(
            columns={(r["s"], r["t"]): frozenset(r["cols"]) for r in rows if r["cols"] is not None},
            row_filters={(r["s"], r["t"]): r["f"] for r in rows if r["f"] is not None},
            actions=actions,
        )
        self._rules[publication] = (now, rules)
        return rules

    async def _major(self) -> int:
        """The server's major version: from the pool's start-up (``open``), else asked once.
        Never guessed: an unknown version must not fall back to ignoring column lists."""
        if not self.pg_major:
            rows = await self._fetch(
                "select pg_catalog.current_setting('server_version_num')::int / 10000 as v"
            )
            self.pg_major = int(rows[0]["v"])
        return self.pg_major

    async def published_tables(self, publication: str) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "select schemaname::text as s, tablename::text as t from pg_catalog.pg_publication_tables "
            "where pubname = $1 order by 1, 2",
            publication,
        )
        return [(r["s"], r["t"]) for r in rows]
