"""``relay check`` against a real Postgres: each failure mode yields a fail with an actionable fix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.postgres.preflight import Check, PreflightReport, run_preflight
from tests.support.relay import running_relay

pytestmark = pytest.mark.pg

PUB = "supabase_realtime"
SLOT = "relay_test_slot"


def _execute(dsn: str, query: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)


def _status(report: PreflightReport, name: str) -> str:
    check = report.by_name(name)
    assert check is not None, f"no check named {name!r}:\n{report.render()}"
    return check.status


def _message(report: PreflightReport, name: str) -> str:
    check = report.by_name(name)
    assert check is not None, f"no check named {name!r}:\n{report.render()}"
    return check.message


@pytest.fixture()
def demo_dsn(pg_dsn: str) -> str:
    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    return pg_dsn


def test_all_ok_on_migrated_demo_db(demo_dsn: str) -> None:
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert report.ok, report.render()
    fails_or_warns = {c.name for c in report.checks if c.status != "ok"}
    # The throwaway cluster keeps the default max_slot_wal_keep_size = -1, which is worth a warning.
    assert fails_or_warns <= {"wal retention"}, report.render()
    for name in (
        "connect",
        "server version",
        "wal_level",
        "replication role",
        "replication slots",
        "wal senders",
        "wal2json plugin",
        "realtime schema",
        "publication",
        "tables",
        "replica identity",
        "topic policies",
        "slot",
    ):
        assert _status(report, name) == "ok", report.render()
    assert "8 enabled" in _message(report, "tables")
    assert "will create it" in _message(report, "slot")
    # The probe slot must not outlive the check.
    with psycopg.connect(demo_dsn) as conn:
        assert conn.execute(
            "select count(*) from pg_replication_slots where slot_name like 'relay_probe_%'"
        ).fetchone() == (0,)


def test_render_is_aligned_one_line_per_check(demo_dsn: str) -> None:
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    lines = report.render().splitlines()
    assert len(lines) == len(report.checks)
    starts = {line.index(c.message.splitlines()[0]) for line, c in zip(lines, report.checks, strict=True)}
    assert len(starts) == 1  # messages start in one column
    assert lines[0].startswith("[ ok ] connect")


def test_render_marks_failures() -> None:
    report = PreflightReport([Check("a", "ok", "fine"), Check("longer name", "fail", "broken\nsecond line")])
    assert not report.ok
    assert report.render().splitlines() == [
        "[ ok ] a            fine",
        "[FAIL] longer name  broken",
        "                    second line",
    ]


def test_existing_wal2json_slot_reports_lag(demo_dsn: str) -> None:
    _execute(demo_dsn, f"select pg_create_logical_replication_slot('{SLOT}', 'wal2json')")
    _execute(demo_dsn, "insert into public.branches (name, city) values ('Lag Branch', 'Nowhere')")
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert report.ok, report.render()
    assert _status(report, "slot") == "ok"
    assert _status(report, "slot lag") == "ok"
    assert "bytes" in _message(report, "slot lag") and "wal_status reserved" in _message(report, "slot lag")


def test_slot_with_other_plugin_fails(demo_dsn: str) -> None:
    _execute(demo_dsn, f"select pg_create_logical_replication_slot('{SLOT}', 'test_decoding')")
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert not report.ok
    assert _status(report, "slot") == "fail"
    msg = _message(report, "slot")
    assert "test_decoding" in msg and "pg_drop_replication_slot" in msg


def test_no_tables_enabled_warns(pg_dsn: str) -> None:
    """A fresh database has no enabled table: a warning, so `relay check && relay serve` runs."""
    apply_migrations(pg_dsn)
    report = run_preflight(pg_dsn, publication=PUB, slot=SLOT)
    assert report.ok, report.render()
    assert _status(report, "tables") == "warn"
    assert "no tables enabled" in _message(report, "tables")
    assert "realtime.enable_table" in _message(report, "tables")


def test_not_migrated_fails(pg_dsn: str) -> None:
    report = run_preflight(pg_dsn, publication=PUB, slot=SLOT)
    assert not report.ok
    assert _status(report, "realtime schema") == "fail"
    assert "relay migrate" in _message(report, "realtime schema")
    assert _status(report, "publication") == "fail"


def test_table_without_replica_identity_full_fails(demo_dsn: str) -> None:
    _execute(demo_dsn, "create table public.raw_events (id bigint primary key, payload jsonb)")
    _execute(demo_dsn, f"alter publication {PUB} add table public.raw_events")
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert not report.ok
    assert _status(report, "replica identity") == "fail"
    msg = _message(report, "replica identity")
    assert "public.raw_events (default)" in msg
    assert "ALTER TABLE public.raw_events REPLICA IDENTITY FULL" in msg
    assert "public.bookings" not in msg


def test_publication_missing_fails(demo_dsn: str) -> None:
    report = run_preflight(demo_dsn, publication="other_pub", slot=SLOT)
    assert _status(report, "publication") == "fail"
    assert "CREATE PUBLICATION other_pub" in _message(report, "publication")


@pytest.fixture()
def plain_role_dsn(pg_dsn: str) -> Iterator[str]:
    """A DSN for a fresh LOGIN role without REPLICATION (password works under trust and md5/scram)."""
    role = "plain_" + uuid.uuid4().hex[:8]
    _execute(pg_dsn, f"create role {role} login password 'pw'")
    try:
        yield make_conninfo(pg_dsn, user=role, password="pw")
    finally:
        _execute(pg_dsn, f"drop role if exists {role}")


def test_role_without_replication_fails(demo_dsn: str, plain_role_dsn: str) -> None:
    report = run_preflight(plain_role_dsn, publication=PUB, slot=SLOT)
    assert not report.ok
    assert _status(report, "replication role") == "fail"
    assert "ALTER ROLE plain_" in _message(report, "replication role")
    assert "REPLICATION" in _message(report, "replication role")
    # The probe cannot run without the privilege: reported, not crashed.
    assert _status(report, "wal2json plugin") == "warn"
    # Catalog-based checks still work for an unprivileged role (the schema is readable by PUBLIC).
    assert _status(report, "realtime schema") == "ok", report.render()
    assert _status(report, "tables") == "ok", report.render()


def test_unreachable_server_fails_cleanly() -> None:
    report = run_preflight(
        "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2", publication=PUB, slot=SLOT
    )
    assert not report.ok
    assert [c.name for c in report.checks] == ["connect"]
    assert "cannot connect" in report.checks[0].message


def test_row_policies_reported(pg_dsn: str) -> None:
    """`relay check` says which tables deny by default and which policies need Postgres."""
    from relay.postgres.migrate import apply_migrations
    from relay.postgres.preflight import run_preflight

    apply_migrations(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("create table public.things (id int primary key, branch_id int, label text)")
        conn.execute("create table public.others (id int primary key)")
        conn.execute("select realtime.enable_table('public.things')")
        conn.execute("select realtime.enable_table('public.others')")
        conn.execute(
            "select realtime.create_policy('public.things', 'branch', "
            "$$branch_id = (claims->>'branch_id')::int$$)"
        )
        conn.execute("select realtime.create_policy('public.things', 'slow', $$length(label) > 3$$)")
    report = run_preflight(pg_dsn, publication="supabase_realtime", slot="realtime_relay")
    text = report.render()
    assert "public.things: 2 (1 in-process)" in text
    assert "default deny" in text and "public.others" in text
    assert "'slow'" in text
    assert report.ok


def test_topic_policies_reported(demo_dsn: str) -> None:
    """`relay check` counts the private-channel policies and warns when migration 0006 is missing."""
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert _status(report, "topic policies") == "ok"
    assert "none yet" in _message(report, "topic policies")
    with psycopg.connect(demo_dsn, autocommit=True) as conn:
        conn.execute("select realtime.create_topic_policy('members', 'read', $$topic = 'room'$$)")
        conn.execute("select realtime.create_topic_policy('lobby', 'read', $$topic = 'lobby'$$)")
        conn.execute("select realtime.create_topic_policy('senders', 'write', 'true')")
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert _status(report, "topic policies") == "ok"
    assert _message(report, "topic policies") == "3 (2 read, 1 write)"
    _execute(demo_dsn, "drop table realtime.topic_policies cascade")
    report = run_preflight(demo_dsn, publication=PUB, slot=SLOT)
    assert _status(report, "topic policies") == "warn"
    assert "0006_topic_policies.sql" in _message(report, "topic policies")
    assert "relay migrate" in _message(report, "topic policies")


async def test_resume_window_is_reported_with_and_without_the_relay(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        slot = relay.server.config.slot
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("insert into alerts (severity, kind, title) values ('info', 't', 'x')")
        await asyncio.sleep(1.5)
        report = await asyncio.to_thread(
            run_preflight, pg_dsn, publication="supabase_realtime", slot=slot, resume_window=120
        )
        (check,) = [c for c in report.checks if c.name == "resume window"]
        assert check.status == "ok" and "120 s / 64.0 MiB" in check.message
        assert "slot holds" in check.message and "relay " in check.message, check.message
    report = await asyncio.to_thread(run_preflight, pg_dsn, publication="supabase_realtime", slot=slot)
    (check,) = [c for c in report.checks if c.name == "resume window"]
    assert "relay not connected" in check.message, check.message
    report = await asyncio.to_thread(
        run_preflight, pg_dsn, publication="supabase_realtime", slot=slot, resume_window=0
    )
    assert "resume is off" in next(c for c in report.checks if c.name == "resume window").message
