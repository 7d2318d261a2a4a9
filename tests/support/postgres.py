"""Find a real Postgres for the integration tests.

Order: ``RELAY_TEST_DSN`` if set, else a testcontainers Postgres (with wal2json) when a Docker
engine answers, else a throwaway local cluster.  With ``CI`` set, failing to get one is a test
*failure*: a green CI run must never mean "skipped everything that touches Postgres".
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from relay.postgres.cluster import ClusterError, LocalCluster


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def provide_postgres() -> Iterator[str]:
    """Yield a superuser DSN of a Postgres with ``wal_level=logical`` and wal2json."""
    dsn = os.environ.get("RELAY_TEST_DSN")
    if dsn:
        yield dsn
        return
    if os.environ.get("RELAY_TEST_DOCKER", "1") == "1" and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        # The Postgres image of docker/ has wal2json; build it as relay-postgres:15 first.
        image = os.environ.get("RELAY_TEST_IMAGE", "relay-postgres:15")
        with PostgresContainer(image, driver=None).with_command(
            "postgres -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
        ) as pgc:
            yield pgc.get_connection_url()
        return
    try:
        cluster = LocalCluster().start()
    except ClusterError as exc:
        msg = f"could not start a local Postgres for the tests: {exc}"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    try:
        yield cluster.dsn()
    finally:
        cluster.stop()


@contextlib.contextmanager
def fresh_database(server: str, prefix: str = "t_") -> Iterator[str]:
    """A new database on ``server``, dropped afterwards with its replication slots (one per test)."""
    name = prefix + uuid.uuid4().hex[:12]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    base, _, _ = server.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
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
