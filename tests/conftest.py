"""Shared fixtures: one real Postgres per test session (see tests/support/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import fresh_database, provide_postgres
from tests.support.redis_server import RedisServer, provide_redis


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """Superuser DSN of the session's Postgres server (database ``postgres``)."""
    with provide_postgres() as dsn:
        yield dsn


@pytest.fixture()
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards (with its slots)."""
    with fresh_database(pg_server_dsn) as dsn:
        yield dsn


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    """A throwaway ``redis-server`` (AOF on) of this test's own; see tests/support/redis_server.py."""
    with provide_redis() as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests (1M-row transactions, long chaos runs) run only with RELAY_SLOW=1."""
    import os

    if os.environ.get("RELAY_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set RELAY_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
