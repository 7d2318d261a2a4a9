"""Read the stream identity (relay.core.stream) from Postgres.

Why ``IDENTIFY_SYSTEM`` on a replication connection rather than ``pg_control_system()``: the
relay's role is guaranteed the REPLICATION privilege (it streams a slot) but not the right to
read the control file functions, and IDENTIFY_SYSTEM reports the timeline the server writes
now (the checkpoint's timeline lags behind a promotion).
"""

from __future__ import annotations

import psycopg

from relay.core.stream import StreamIdentity

__all__ = ["read_identity"]


async def read_identity(dsn: str, slot: str) -> StreamIdentity:
    """The identity of the stream the relay reads from ``slot`` in the database of ``dsn``."""
    async with await psycopg.AsyncConnection.connect(dsn, replication="database", autocommit=True) as conn:
        cur = conn.cursor()
        await cur.execute("IDENTIFY_SYSTEM")
        ident = await cur.fetchone()
        # a walsender in database mode runs plain SQL too (simple query protocol: no parameters)
        await cur.execute("select oid::int8 from pg_catalog.pg_database where datname = current_database()")
        db = await cur.fetchone()
    if ident is None or db is None:
        raise psycopg.OperationalError("IDENTIFY_SYSTEM returned no row")
    return StreamIdentity(str(ident[0]), int(ident[1]), int(db[0]), slot)
