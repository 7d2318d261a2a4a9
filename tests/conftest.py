"""Shared fixtures: one real Postgres per test session (see tests/support/postgres.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.postgres import provide_postgres


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """Superuser DSN of the session's Postgres server (database ``postgres``)."""
    with provide_postgres() as dsn:
        yield dsn


@pytest.fixture()
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards (with its slots)."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    base, _, _ = pg_server_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            for (slot,) in conn.execute(
                "select slot_name from pg_replication_slots where database = %s", (name,)
            ).fetchall():
                conn.execute(
                    "select pg_terminate_backend(active_pid) from pg_replication_slots "
                    "where slot_name = %s and active_pid is not null",
                    (slot,),
                )
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f'drop database if exists "{name}" with (force)')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests (1M-row transactions, long chaos runs) run only with RELAY_SLOW=1."""
    import os

    if os.environ.get("RELAY_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set RELAY_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
