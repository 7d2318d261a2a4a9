"""Telling "the database cannot be reached right now" apart from every other failure.

Why: a join that needs Postgres (a ``postgres_changes`` binding is checked against the table's
columns; a private channel asks the topic policies) fails while Postgres is down or restarting.
That is not a bug of the client's request nor of the relay: the client must be told so, with a
stable code, and that retrying will work, instead of a generic "internal error".  The wording
and code mirror Supabase Realtime's for an unreachable project database, so clients that already
handle it (supabase-swift lists it as retryable) do the right thing.
"""

from __future__ import annotations

import asyncpg
import psycopg

from relay.core.errors import Code

__all__ = ["UNREACHABLE_CODE", "UNREACHABLE_REASON", "database_unreachable"]

UNREACHABLE_CODE = Code.UNABLE_TO_CONNECT_TO_PROJECT
UNREACHABLE_REASON = (
    "UnableToConnectToProject: Realtime was unable to connect to the project database; "
    "retry the join (the official clients rejoin by themselves): it succeeds once the database is back"
)

# Connection refused/reset/closed, timeouts, and the server refusing sessions while it starts,
# stops or recovers from a crash (57P01-57P03), or has no connection slot left (53300).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    psycopg.OperationalError,
)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or what it was explicitly raised from, means Postgres could not be reached.

    Only ``__cause__`` is followed (``raise ... from exc``: a wrapper such as TopicPolicyError),
    not ``__context__``: a bug raised while handling a connection error is still a bug.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, _UNREACHABLE):
            return True
        seen.add(id(cur))
        cur = cur.__cause__
    return False
