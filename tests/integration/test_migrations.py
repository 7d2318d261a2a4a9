"""Migrations, the realtime SQL functions and the CLI table helpers, against a real Postgres."""

from __future__ import annotations

import importlib.resources
import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from relay.postgres.migrate import (
    MigrationError,
    apply_demo_schema,
    apply_migrations,
    discover_migrations,
    sql_dir,
)
from relay.postgres.tables import TableError, TableInfo, disable_table, enable_table, list_tables
from tests.support.messages import realtime_messages

pytestmark = pytest.mark.pg


def _execute(dsn: str, query: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)


def _fetchall(dsn: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _published(dsn: str, publication: str = "supabase_realtime") -> list[tuple[object, ...]]:
    return _fetchall(
        dsn,
        "select schemaname::text, tablename::text from pg_publication_tables "
        "where pubname = %s order by 1, 2",
        (publication,),
    )


def _replica_identity(dsn: str, table: str) -> str:
    return str(
        _fetchall(dsn, "select relreplident::text from pg_class where oid = %s::regclass", (table,))[0][0]
    )


def _messages(
    dsn: str, slot: str, ops: tuple[str, ...] = ("enable_table", "disable_table")
) -> list[dict[str, object]]:
    """The realtime logical messages (of the given ops) decoded so far from a wal2json slot."""
    return realtime_messages(dsn, slot, ops)


@pytest.fixture()
def migrated(pg_dsn: str) -> str:
    apply_migrations(pg_dsn)
    _execute(pg_dsn, "create table public.items (id bigint primary key, name text)")
    return pg_dsn


def test_apply_twice_is_a_noop_and_records_rows(pg_dsn: str) -> None:
    names = [m.name for m in discover_migrations()]
    assert names and names[0] == "0001_realtime_schema.sql"
    assert apply_migrations(pg_dsn) == names
    assert apply_migrations(pg_dsn) == []
    rows = _fetchall(
        pg_dsn, "select version, name, checksum from realtime.schema_migrations order by version"
    )
    assert [(r[0], r[1]) for r in rows] == [(m.version, m.name) for m in discover_migrations()]
    assert all(len(str(r[2])) == 64 for r in rows)
    assert _fetchall(pg_dsn, "select value from realtime.settings where key = 'publication'") == [
        ("supabase_realtime",)
    ]
    assert _fetchall(pg_dsn, "select count(*) from pg_publication where pubname = 'supabase_realtime'") == [
        (1,)
    ]


def test_custom_publication_name(pg_dsn: str) -> None:
    apply_migrations(pg_dsn, publication="My Pub")
    assert _fetchall(pg_dsn, "select value from realtime.settings where key = 'publication'") == [("My Pub",)]
    assert _fetchall(pg_dsn, "select count(*) from pg_publication where pubname = 'My Pub'") == [(1,)]
    _execute(pg_dsn, "create table public.items (id int primary key)")
    enable_table(pg_dsn, "public.items")
    assert _published(pg_dsn, "My Pub") == [("public", "items")]
    assert [t.name for t in list_tables(pg_dsn)] == ["items"]


def test_invalid_publication_name(pg_dsn: str) -> None:
    with pytest.raises(MigrationError, match="invalid publication name"):
        apply_migrations(pg_dsn, publication="")


def test_concurrent_migrators_take_turns(pg_dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply_migrations(pg_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, len(discover_migrations())]


def test_enable_table_sets_replica_identity_publishes_and_emits_message(migrated: str) -> None:
    dsn = migrated
    _execute(dsn, "select pg_create_logical_replication_slot('mig_msgs', 'wal2json')")
    assert _replica_identity(dsn, "public.items") == "d"
    _execute(dsn, "select realtime.enable_table('public.items')")
    assert _replica_identity(dsn, "public.items") == "f"
    assert _published(dsn) == [("public", "items")]
    msgs = _messages(dsn, "mig_msgs")
    assert msgs == [{"op": "enable_table", "table": "public.items", "schema": "public", "name": "items"}]
    # Idempotent: a second call neither fails nor duplicates; it re-announces the table.
    _execute(dsn, "select realtime.enable_table('public.items')")
    assert _published(dsn) == [("public", "items")]
    assert [m["op"] for m in _messages(dsn, "mig_msgs")] == ["enable_table"]


def test_enable_message_is_transactional(migrated: str) -> None:
    """A rolled-back enable_table must not reach the relay: the message commits with the change."""
    dsn = migrated
    _execute(dsn, "select pg_create_logical_replication_slot('mig_tx', 'wal2json')")
    with psycopg.connect(dsn) as conn:
        conn.execute("select realtime.enable_table('public.items')")
        conn.rollback()
    assert _messages(dsn, "mig_tx") == []
    assert _published(dsn) == []


def test_enable_table_with_quoted_names(migrated: str) -> None:
    dsn = migrated
    _execute(dsn, 'create schema "Odd Schema"; create table "Odd Schema"."My Table" (id int primary key)')
    _execute(dsn, "select pg_create_logical_replication_slot('mig_odd', 'wal2json')")
    enable_table(dsn, '"Odd Schema"."My Table"')
    assert _published(dsn) == [("Odd Schema", "My Table")]
    assert _messages(dsn, "mig_odd")[0]["table"] == "Odd Schema.My Table"


def test_table_without_primary_key_is_rejected(migrated: str) -> None:
    dsn = migrated
    _execute(dsn, "create table public.nopk (v text)")
    with pytest.raises(psycopg.Error) as info:
        _execute(dsn, "select realtime.enable_table('public.nopk')")
    assert info.value.diag.message_primary == "table public.nopk has no primary key"
    assert "ADD PRIMARY KEY" in (info.value.diag.message_hint or "")
    with pytest.raises(TableError, match="has no primary key") as terr:
        enable_table(dsn, "public.nopk")
    assert terr.value.hint is not None and "ALTER TABLE public.nopk ADD PRIMARY KEY" in terr.value.hint
    assert _published(dsn) == []
    assert _replica_identity(dsn, "public.nopk") == "d"


def test_missing_table_error(migrated: str) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable, match=r'relation "public\.nope" does not exist'):
        _execute(migrated, "select realtime.enable_table('public.nope')")
    with pytest.raises(TableError, match=r'relation "public\.nope" does not exist'):
        enable_table(migrated, "public.nope")


@pytest.mark.parametrize(
    ("ddl", "name", "match"),
    [
        ("create view public.v as select 1 as id", "public.v", "is a view: only ordinary tables"),
        ("create materialized view public.mv as select 1 as id", "public.mv", "materialized view"),
        (
            "create table public.parted (id int primary key) partition by range (id)",
            "public.parted",
            "is partitioned: only ordinary tables",
        ),
        ("create unlogged table public.ul (id int primary key)", "public.ul", "unlogged"),
    ],
)
def test_non_ordinary_relations_are_rejected(migrated: str, ddl: str, name: str, match: str) -> None:
    _execute(migrated, ddl)
    with pytest.raises(TableError, match=match):
        enable_table(migrated, name)
    assert _published(migrated) == []


def test_partition_can_be_enabled(migrated: str) -> None:
    _execute(
        migrated,
        "create table public.parted (id int primary key) partition by range (id);"
        "create table public.parted_1 partition of public.parted for values from (0) to (100)",
    )
    enable_table(migrated, "public.parted_1")
    assert _published(migrated) == [("public", "parted_1")]


def test_disable_table(migrated: str) -> None:
    dsn = migrated
    enable_table(dsn, "public.items")
    _execute(dsn, "select pg_create_logical_replication_slot('mig_dis', 'wal2json')")
    disable_table(dsn, "public.items")
    assert _published(dsn) == []
    assert _replica_identity(dsn, "public.items") == "f"  # left as is
    disable_table(dsn, "public.items")  # not there: still fine, still announced
    msgs = _messages(dsn, "mig_dis")
    assert [m["op"] for m in msgs] == ["disable_table", "disable_table"]
    assert msgs[0]["table"] == "public.items"


def test_enabled_tables(migrated: str) -> None:
    dsn = migrated
    _execute(dsn, "create table public.another (id int primary key); create table public.raw (v text)")
    enable_table(dsn, "public.items")
    enable_table(dsn, "public.another")
    # Added behind the functions' back, the Supabase way: shows up with its real properties.
    _execute(dsn, "alter publication supabase_realtime add table public.raw")
    rows = _fetchall(dsn, "select * from realtime.enabled_tables()")
    assert rows == [
        ("public", "another", "full", True),
        ("public", "items", "full", True),
        ("public", "raw", "default", False),
    ]
    assert list_tables(dsn) == [
        TableInfo("public", "another", "full", True),
        TableInfo("public", "items", "full", True),
        TableInfo("public", "raw", "default", False),
    ]
    assert list_tables(dsn)[0].qualified_name == "public.another"


def test_enable_recreates_a_dropped_publication(migrated: str) -> None:
    _execute(migrated, "drop publication supabase_realtime")
    enable_table(migrated, "public.items")
    assert _published(migrated) == [("public", "items")]


def test_table_helpers_before_migration(pg_dsn: str) -> None:
    with pytest.raises(TableError, match="realtime schema") as info:
        list_tables(pg_dsn)
    assert info.value.hint is not None and "relay migrate" in info.value.hint
    with pytest.raises(TableError, match="realtime schema"):
        enable_table(pg_dsn, "public.x")


def test_table_helpers_connection_error() -> None:
    with pytest.raises(TableError, match="cannot connect"):
        list_tables("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")


def _copy_sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "sql"
    with importlib.resources.as_file(sql_dir()) as src:
        shutil.copytree(src, target)
    monkeypatch.setenv("RELAY_SQL_DIR", str(target))
    return target


def test_changed_checksum_is_refused(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_sql_dir(tmp_path, monkeypatch)
    apply_migrations(pg_dsn)
    first = target / "migrations" / "0001_realtime_schema.sql"
    first.write_text(first.read_text() + "\n-- edited after being applied\n")
    with pytest.raises(MigrationError, match=r"0001_realtime_schema\.sql was already applied.*immutable"):
        apply_migrations(pg_dsn)


def test_crlf_checkout_is_not_a_change(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_sql_dir(tmp_path, monkeypatch)
    apply_migrations(pg_dsn)
    first = target / "migrations" / "0001_realtime_schema.sql"
    first.write_bytes(first.read_bytes().replace(b"\n", b"\r\n"))
    assert apply_migrations(pg_dsn) == []


def test_new_migration_is_applied_alone(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_sql_dir(tmp_path, monkeypatch)
    apply_migrations(pg_dsn)
    (target / "migrations" / "0099_extra.sql").write_text("create table realtime.extra (id int);\n")
    assert apply_migrations(pg_dsn) == ["0099_extra.sql"]
    assert apply_migrations(pg_dsn) == []


def test_failed_migration_rolls_back(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_sql_dir(tmp_path, monkeypatch)
    (target / "migrations" / "0098_broken.sql").write_text(
        "create table realtime.half (id int);\nselect no_such_function();\n"
    )
    with pytest.raises(MigrationError, match=r"0098_broken\.sql failed"):
        apply_migrations(pg_dsn)
    expected = [(m.version,) for m in discover_migrations() if m.version < 98]
    assert _fetchall(pg_dsn, "select version from realtime.schema_migrations order by 1") == expected
    assert _fetchall(pg_dsn, "select to_regclass('realtime.half')") == [(None,)]


def test_badly_named_file_is_refused(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_sql_dir(tmp_path, monkeypatch)
    (target / "migrations" / "fix.sql").write_text("select 1;\n")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        apply_migrations(pg_dsn)


def test_missing_sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SQL_DIR", str(tmp_path / "absent"))
    with pytest.raises(MigrationError, match="RELAY_SQL_DIR"):
        sql_dir()


def test_demo_schema(pg_dsn: str) -> None:
    with pytest.raises(MigrationError, match="relay migrate"):
        apply_demo_schema(pg_dsn)
    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    apply_demo_schema(pg_dsn)  # idempotent
    names = {t.name for t in list_tables(pg_dsn)}
    assert names == {"branches", "clients", "staff", "bookings", "payments", "attendance", "alerts", "tasks"}
    assert all(t.replica_identity == "full" and t.has_primary_key for t in list_tables(pg_dsn))
    assert _fetchall(pg_dsn, "select count(*) from public.branches") == [(4,)]
    assert _fetchall(pg_dsn, "select count(*) from public.staff") == [(10,)]


def test_foreign_schema_migrations_table_is_refused(pg_dsn: str) -> None:
    """A Supabase database's own (Ecto) realtime.schema_migrations must not be written to."""
    _execute(
        pg_dsn,
        "create schema realtime; "
        "create table realtime.schema_migrations (version bigint primary key, inserted_at timestamp)",
    )
    with pytest.raises(MigrationError, match="not created by this relay"):
        apply_migrations(pg_dsn)
    assert _fetchall(pg_dsn, "select to_regclass('realtime.settings')") == [(None,)]


def test_raw_alter_publication_emits_message(migrated: str) -> None:
    """The 0002 event triggers make plain ALTER PUBLICATION visible in commit order too."""
    dsn = migrated
    _execute(dsn, "create table public.raw_pub (id int primary key)")
    _execute(dsn, "select pg_create_logical_replication_slot('mig_raw', 'wal2json')")
    _execute(dsn, "alter publication supabase_realtime add table public.raw_pub")
    _execute(dsn, "alter publication supabase_realtime drop table public.raw_pub")
    events = [m["event"] for m in _messages(dsn, "mig_raw", ops=("publication_changed",))]
    assert events == ["ddl_command_end", "ddl_command_end"]
