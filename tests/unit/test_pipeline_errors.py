"""How the stream loop classifies its failures and how long it backs off (issue 11, item 12)."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from relay.core.wal2json import DecodeError
from relay.pipeline import backoff_delay, is_expected
from relay.postgres.replication import ReplicationError, ServerShuttingDown


@pytest.mark.parametrize(
    "exc",
    [
        ReplicationError("replication stream ended"),
        ServerShuttingDown("Postgres is shutting down"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("connection refused"),
        ConnectionResetError(),
        TimeoutError(),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    ],
)
def test_database_and_network_failures_are_expected(exc: BaseException) -> None:
    assert is_expected(exc)


@pytest.mark.parametrize(
    "exc",
    [KeyError("x"), TypeError("bad"), DecodeError("unknown action"), AssertionError(), RuntimeError("bug")],
)
def test_anything_else_is_a_relay_bug(exc: BaseException) -> None:
    assert not is_expected(exc)


def test_backoff_grows_with_full_jitter_and_is_capped() -> None:
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (20, 10.0), (500, 10.0)]:
        delays = [backoff_delay(attempt, 10.0) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays), (attempt, max(delays))
        assert max(delays) > ceiling / 2  # jittered over the whole range, not a fixed step
    assert len({backoff_delay(5, 10.0) for _ in range(20)}) > 1
