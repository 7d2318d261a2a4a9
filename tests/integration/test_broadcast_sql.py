"""Broadcast from the database (migrations 0005, 0010): realtime.send and realtime.broadcast_changes."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from relay.postgres.migrate import apply_migrations, sql_dir

pytestmark = pytest.mark.pg

Decoded = list[dict[str, object]]


def _exec(dsn: str, query: str, params: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture()
def migrated(pg_dsn: str) -> str:
    apply_migrations(pg_dsn)
    _exec(pg_dsn, "create table public.notes (id int primary key, room int, body text)")
    return pg_dsn


@pytest.fixture()
def decoded(migrated: str) -> Iterator[Callable[[], Decoded]]:
    """A function returning the wal2json records (format 2, with B/C) decoded since the last call.

    The temporary slot lives on its own connection: an error in a session drops that session's
    temporary slots, and the tests provoke errors on purpose (on other connections).
    """
    slot = "bc_" + uuid.uuid4().hex[:10]
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json', temporary => true)", (slot,))

        def read() -> Decoded:
            rows = conn.execute(
                "select data from pg_logical_slot_get_changes(%s, null, null, 'format-version', '2', "
                "'include-transaction', '1', 'add-msg-prefixes', 'realtime')",
                (slot,),
            ).fetchall()
            return [json.loads(str(r[0])) for r in rows]

        yield read


def _broadcasts(records: Decoded) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for rec in records:
        if rec["action"] == "M":
            assert rec["prefix"] == "realtime" and rec["transactional"] is True
            content = json.loads(str(rec["content"]))
            if content["op"] == "broadcast":
                # migration 0010: every message has Supabase's id (a uuid) and its send time;
                # checked here, then left out so the tests compare what the caller chose
                uuid.UUID(str(content.pop("id")))
                ts = content.pop("ts")
                assert isinstance(ts, int) and abs(ts / 1000 - time.time()) < 600
                assert content.pop("binary") is False
                out.append(content)
    return out


# --- realtime.send -----------------------------------------------------------------------------------


def test_committed_send_is_decoded_with_its_transaction(
    migrated: str, decoded: Callable[[], Decoded]
) -> None:
    with psycopg.connect(migrated) as conn:
        conn.execute("insert into public.notes values (1, 7, 'first')")
        conn.execute(
            "select realtime.send(%s::jsonb, 'new_note', 'room:7', false)", (json.dumps({"id": 1, "x": [1]}),)
        )
        conn.execute("insert into public.notes values (2, 7, 'second')")
    records = decoded()
    # One transaction, the message between the two inserts, exactly as executed.
    assert [r["action"] for r in records] == ["B", "I", "M", "I", "C"]
    assert _broadcasts(records) == [
        {
            "op": "broadcast",
            "topic": "room:7",
            "event": "new_note",
            "payload": {"id": 1, "x": [1]},
            "private": False,
        }
    ]


def test_rolled_back_send_is_not_decoded(migrated: str, decoded: Callable[[], Decoded]) -> None:
    with psycopg.connect(migrated) as conn:
        conn.execute("select realtime.send('{}', 'gone', 'room:1')")
        conn.execute("insert into public.notes values (1, 1, 'gone')")
        conn.rollback()
        conn.execute("select realtime.send('{}', 'kept', 'room:1')")
        conn.commit()
    assert [b["event"] for b in _broadcasts(decoded())] == ["kept"]


def test_send_defaults_and_normalization(migrated: str, decoded: Callable[[], Decoded]) -> None:
    _exec(migrated, "select realtime.send(null, 'e1', 'realtime:room:1')")  # prefix stripped, {} payload
    _exec(migrated, "select realtime.send('[1, \"a\"]', 'e2', 'room:2', null)")  # null private counts as true
    _exec(migrated, "select realtime.send(payload => '{\"k\": 1}', event => 'e3', topic => 'realtime:x')")
    _exec(migrated, "select realtime.send('{}', 'e4', 'realtime:realtime:y')")  # only one prefix is stripped
    assert _broadcasts(decoded()) == [
        {"op": "broadcast", "topic": "room:1", "event": "e1", "payload": {}, "private": True},
        {"op": "broadcast", "topic": "room:2", "event": "e2", "payload": [1, "a"], "private": True},
        {"op": "broadcast", "topic": "x", "event": "e3", "payload": {"k": 1}, "private": True},
        {"op": "broadcast", "topic": "realtime:y", "event": "e4", "payload": {}, "private": True},
    ]


def test_length_limits_are_bytes_of_the_wire_format(migrated: str, decoded: Callable[[], Decoded]) -> None:
    longest_topic = "é" * 123  # 246 bytes: 'realtime:' + topic is exactly 255
    longest_event = "e" * 254 + "x"
    _exec(migrated, "select realtime.send('{}', %s, %s)", (longest_event, longest_topic))
    _exec(migrated, "select realtime.send('{}', 'e', %s)", ("realtime:" + longest_topic,))
    topics = [(b["topic"], b["event"]) for b in _broadcasts(decoded())]
    assert topics == [(longest_topic, longest_event), (longest_topic, "e")]
    with pytest.raises(errors.InvalidParameterValue) as exc:
        _exec(migrated, "select realtime.send('{}', 'e', %s)", (longest_topic + "a",))
    assert (
        exc.value.diag.message_primary
        == "topic is too long: 256 bytes with the 'realtime:' prefix, at most 255"
    )
    assert "one byte" in (exc.value.diag.message_hint or "")
    with pytest.raises(errors.InvalidParameterValue) as exc:
        _exec(migrated, "select realtime.send('{}', %s, 'room')", ("é" * 128,))
    assert exc.value.diag.message_primary == "event is too long: 256 bytes, at most 255"
    assert "one byte" in (exc.value.diag.message_hint or "")


@pytest.mark.parametrize(
    ("event", "topic", "message"),
    [
        ("e", None, "topic must not be null"),
        ("e", "", "topic must not be empty"),
        ("e", "realtime:", "topic must not be empty"),
        (None, "room", "event must not be null"),
        ("", "room", "event must not be empty"),
    ],
)
def test_send_refuses_invalid_arguments(
    migrated: str, decoded: Callable[[], Decoded], event: str | None, topic: str | None, message: str
) -> None:
    with pytest.raises(errors.InvalidParameterValue) as exc:
        _exec(migrated, "select realtime.send('{}', %s, %s)", (event, topic))
    assert exc.value.diag.message_primary == message
    assert exc.value.diag.message_hint  # every refusal says what to pass instead
    assert _broadcasts(decoded()) == []


def test_send_is_plain_security_invoker_executable_by_public(migrated: str) -> None:
    rows = _exec(
        migrated,
        "select p.prosecdef, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE') "
        "from pg_proc p where p.oid = 'realtime.send(jsonb, text, text, boolean)'::regprocedure",
    )
    assert rows == [(False, ["search_path=pg_catalog, pg_temp"], True)]


@pytest.fixture()
def app_role(migrated: str) -> Iterator[tuple[str, str]]:
    """(role name, DSN connecting as it): an ordinary login role, no superuser, no REPLICATION."""
    role = "app_" + uuid.uuid4().hex[:8]
    _exec(migrated, f"create role {role} login password 'pw' nosuperuser noreplication")
    try:
        yield role, make_conninfo(migrated, user=role, password="pw")
    finally:
        _exec(migrated, f"drop owned by {role}")
        _exec(migrated, f"drop role {role}")


def test_ordinary_role_can_send_directly_and_from_a_trigger(
    migrated: str, app_role: tuple[str, str], decoded: Callable[[], Decoded]
) -> None:
    role, dsn = app_role
    _exec(dsn, "select realtime.send('{\"by\": \"app\"}', 'direct', 'room:1')")
    # A trigger owned by the superuser but fired by the app role's insert: runs as the app role.
    _exec(
        migrated,
        "create function public.notes_broadcast() returns trigger language plpgsql as $f$ begin "
        "perform realtime.broadcast_changes('room:' || coalesce(new.room, old.room), tg_op, tg_op, "
        "tg_table_name, tg_table_schema, new, old); return null; end $f$; "
        "create trigger notes_broadcast after insert or update or delete on public.notes "
        "for each row execute function public.notes_broadcast(); "
        f"grant insert on public.notes to {role}",
    )
    _exec(dsn, "insert into public.notes values (1, 3, 'hi')")
    assert [(b["event"], b["topic"]) for b in _broadcasts(decoded())] == [
        ("direct", "room:1"),
        ("INSERT", "room:3"),
    ]


# --- realtime.broadcast_changes -----------------------------------------------------------------------


def test_broadcast_changes_payload_shape(migrated: str, decoded: Callable[[], Decoded]) -> None:
    _exec(
        migrated,
        "create function public.notes_broadcast() returns trigger language plpgsql as $f$ begin "
        "perform realtime.broadcast_changes('room:' || coalesce(new.room, old.room), tg_op, tg_op, "
        "tg_table_name, tg_table_schema, new, old, tg_level); return null; end $f$; "
        "create trigger notes_broadcast after insert or update or delete on public.notes "
        "for each row execute function public.notes_broadcast()",
    )
    _exec(migrated, "insert into public.notes values (1, 5, 'a')")
    _exec(migrated, "update public.notes set body = 'b'")
    _exec(migrated, "delete from public.notes")
    a = {"id": 1, "room": 5, "body": "a"}
    b = {"id": 1, "room": 5, "body": "b"}
    common = {"table": "notes", "schema": "public"}
    assert _broadcasts(decoded()) == [
        {
            "op": "broadcast",
            "topic": "room:5",
            "event": "INSERT",
            "private": True,  # Supabase's default for broadcast_changes
            "payload": {**common, "operation": "INSERT", "record": a, "old_record": None},
        },
        {
            "op": "broadcast",
            "topic": "room:5",
            "event": "UPDATE",
            "private": True,
            "payload": {**common, "operation": "UPDATE", "record": b, "old_record": a},
        },
        {
            "op": "broadcast",
            "topic": "room:5",
            "event": "DELETE",
            "private": True,
            "payload": {**common, "operation": "DELETE", "record": None, "old_record": b},
        },
    ]


def test_broadcast_changes_refusals_keep_their_sqlstate(
    migrated: str, decoded: Callable[[], Decoded]
) -> None:
    _exec(
        migrated,
        "create function public.per_statement() returns trigger language plpgsql as $f$ begin "
        "perform realtime.broadcast_changes('room', tg_op, tg_op, tg_table_name, tg_table_schema, "
        "new, old, tg_level); return null; end $f$; "
        "create trigger per_statement after insert on public.notes "
        "for each statement execute function public.per_statement()",
    )
    with pytest.raises(errors.InvalidParameterValue) as exc:
        _exec(migrated, "insert into public.notes values (1, 1, 'x')")
    assert exc.value.diag.message_primary == (
        "Failed to process the row: function can only be triggered for each row, not for each statement"
    )
    assert _exec(migrated, "select count(*) from public.notes") == [(0,)]
    with pytest.raises(errors.InvalidParameterValue, match=re.escape("Unexpected operation type: TRUNCATE")):
        _exec(
            migrated,
            "select realtime.broadcast_changes('room', 'e', 'TRUNCATE', 'notes', 'public', null, null)",
        )
    with pytest.raises(errors.InvalidParameterValue) as exc:
        _exec(migrated, "select realtime.broadcast_changes('', 'e', 'INSERT', 'notes', 'public', null, null)")
    assert exc.value.diag.message_primary == "Failed to process the row: topic must not be empty"
    assert "room:42" in (exc.value.diag.message_hint or "")
    assert _broadcasts(decoded()) == []


def test_migration_file_can_be_rerun(migrated: str, decoded: Callable[[], Decoded]) -> None:
    for _ in range(2):  # 0010 redefines send on top of 0005: both, in order, twice
        for name in ("0005_broadcast.sql", "0010_broadcast_ids_replay_binary.sql"):
            _exec(migrated, (sql_dir() / "migrations" / name).read_text(encoding="utf-8"))
    _exec(migrated, "select realtime.send('{}', 'after', 'room')")
    assert [b["event"] for b in _broadcasts(decoded())] == ["after"]


def test_send_binary_emits_base64_bytes_with_an_id(migrated: str, decoded: Callable[[], Decoded]) -> None:
    blob = bytes(range(256)) * 3  # long enough for encode()'s line breaks, which must not appear
    _exec(migrated, "select realtime.send_binary(%s, 'blob', 'realtime:room:9')", (blob,))
    _exec(migrated, "select realtime.send_binary(null, 'empty', 'room:9', private => false)")
    msgs = [
        json.loads(str(r["content"]))
        for r in decoded()
        if r["action"] == "M" and json.loads(str(r["content"]))["op"] == "broadcast"
    ]
    assert [m["binary"] for m in msgs] == [True, True]
    assert base64.b64decode(msgs[0]["payload"], validate=True) == blob
    assert msgs[0]["topic"] == "room:9" and msgs[0]["private"] is True and msgs[0]["event"] == "blob"
    assert msgs[1]["payload"] == "" and msgs[1]["private"] is False
    assert msgs[0]["id"] != msgs[1]["id"]
    with pytest.raises(errors.InvalidParameterValue):
        _exec(migrated, "select realtime.send_binary('\\x00'::bytea, '', 'room')")
