"""Topic policies for private channels (migration 0006) and relay.postgres.topic_policies."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from relay.postgres.catalog import Catalog
from relay.postgres.migrate import apply_migrations, sql_dir
from relay.postgres.topic_policies import (
    PUBLIC_GRANTS,
    TopicAuthorizer,
    TopicGrants,
    TopicPolicyError,
)
from tests.support.messages import realtime_messages

pytestmark = pytest.mark.pg

U1 = "00000000-0000-4000-8000-0000000000a1"
U2 = "00000000-0000-4000-8000-0000000000b2"
ORDER = [("read", "broadcast"), ("read", "presence"), ("write", "broadcast"), ("write", "presence")]


def _exec(dsn: str, query: str, params: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _create(dsn: str, name: str, action: str | None, expr: str | None, roles: str | None = None) -> None:
    if roles is None:
        _exec(dsn, "select realtime.create_topic_policy(%s, %s, %s)", (name, action, expr))
    else:
        _exec(dsn, "select realtime.create_topic_policy(%s, %s, %s, %s::text[])", (name, action, expr, roles))


def _eval(dsn: str, topic: str, claims: dict[str, Any] | None) -> list[tuple[object, ...]]:
    return _exec(
        dsn,
        "select action, extension, allowed, error from realtime.eval_topic_policies(%s, %s::jsonb)",
        (topic, None if claims is None else json.dumps(claims)),
    )


def _allowed(dsn: str, topic: str, claims: dict[str, Any] | None) -> dict[tuple[str, str], bool]:
    rows = _eval(dsn, topic, claims)
    assert [(r[0], r[1]) for r in rows] == ORDER  # always four rows, always in this order
    return {(str(r[0]), str(r[1])): bool(r[2]) for r in rows}


def _names(dsn: str) -> list[object]:
    return [r[0] for r in _exec(dsn, "select name from realtime.topic_policies order by name")]


@pytest.fixture()
def migrated(pg_dsn: str) -> str:
    apply_migrations(pg_dsn)
    return pg_dsn


@pytest.fixture()
def login_role(migrated: str) -> Iterator[tuple[str, str]]:
    """(role name, DSN connecting as it): a plain login role."""
    role = "topic_user_" + uuid.uuid4().hex[:8]
    _exec(migrated, f"create role {role} login password 'pw'")
    try:
        yield role, make_conninfo(migrated, user=role, password="pw")
    finally:
        _exec(migrated, f"drop owned by {role}")
        _exec(migrated, f"drop role {role}")


# --- creating, refusing, dropping ------------------------------------------------------------------


def test_create_lists_with_defaults(migrated: str) -> None:
    _create(migrated, "room members", "read", "topic = 'room:' || (claims->>'room')")
    _create(migrated, "presence", "write", "extension = 'presence'", "{anon,authenticated}")
    rows = _exec(
        migrated,
        "select name, action, using_expr, roles, created_by = current_user, created_at is not null "
        "from realtime.topic_policies order by id",
    )
    assert rows == [
        ("room members", "read", "topic = 'room:' || (claims->>'room')", ["authenticated"], True, True),
        ("presence", "write", "extension = 'presence'", ["anon", "authenticated"], True, True),
    ]


def test_expressions_are_compiled_not_evaluated(migrated: str) -> None:
    """A claim cast that fails for NULL/absent claims must not fail at creation."""
    _create(migrated, "cast", "read", "(claims->>'room')::int = 1")
    _create(migrated, "helpers", "read", f"auth.uid() = '{U1}' and auth.role() = 'authenticated'")
    _create(migrated, "jwt", "read", "auth.jwt()->>'tenant' = split_part(realtime.topic(), ':', 1)")
    _create(migrated, "qualified", "write", "messages.extension = 'broadcast' and messages.topic <> ''")
    _create(migrated, "subquery", "read", "exists (select 1 from pg_catalog.pg_class where relname = topic)")
    _exec(migrated, "create domain public.yes_no as boolean")
    _create(migrated, "domain", "read", "(topic = 'x')::public.yes_no")
    assert _names(migrated) == ["cast", "domain", "helpers", "jwt", "qualified", "subquery"]


def test_unknown_column_reports_postgres_error(migrated: str) -> None:
    with pytest.raises(errors.UndefinedColumn) as exc:
        _create(migrated, "bad", "read", "room_id = 1")
    assert exc.value.diag.message_primary == 'column "room_id" does not exist'
    assert exc.value.diag.message_detail == 'In the expression of topic policy "bad".'
    assert "extension (text: broadcast or presence)" in (exc.value.diag.message_hint or "")
    with pytest.raises(errors.UndefinedFunction) as exc2:
        _create(migrated, "bad", "read", "topic = 1")
    assert exc2.value.diag.message_primary == "operator does not exist: text = integer"
    assert _names(migrated) == []


def test_non_boolean_expression_is_refused(migrated: str) -> None:
    for expr, typ in [("topic", "text"), ("claims", "jsonb"), ("length(topic)", "integer")]:
        with pytest.raises(errors.DatatypeMismatch) as exc:
            _create(migrated, "bad", "read", expr)
        assert exc.value.diag.message_primary == f"policy expression must return boolean, not type {typ}"
    assert _names(migrated) == []


@pytest.mark.parametrize(
    ("expr", "error", "message"),
    [
        ("true; drop table realtime.topic_policies", errors.SyntaxError, 'must not contain ";"'),
        ("true) or (true", errors.SyntaxError, "unbalanced parentheses"),
        ("true --", errors.SyntaxError, "must not end with a -- comment"),
        ("count(*) > 0", errors.GroupingError, "aggregate functions are not allowed"),
        ("topic = $1", errors.UndefinedParameter, "there is no parameter"),
        ("  ", errors.InvalidParameterValue, "expression must not be empty"),
        (None, errors.InvalidParameterValue, "expression must not be empty"),
    ],
)
def test_malformed_expressions_are_refused(
    migrated: str, expr: str | None, error: type[psycopg.Error], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        _create(migrated, "bad", "read", expr)
    assert _names(migrated) == []


def test_invalid_arguments_are_refused(migrated: str) -> None:
    for action in ("READ", "select", ""):
        with pytest.raises(errors.InvalidParameterValue) as exc:
            _create(migrated, "bad", action, "true")
        assert (
            exc.value.diag.message_primary == f"topic policy action must be 'read' or 'write', not '{action}'"
        )
        assert "'write' allows sending broadcast" in (exc.value.diag.message_hint or "")
    with pytest.raises(errors.InvalidParameterValue, match="not NULL"):
        _create(migrated, "bad", None, "true")
    with pytest.raises(errors.InvalidParameterValue, match="topic policy name must not be empty"):
        _create(migrated, " ", "read", "true")
    with pytest.raises(errors.InvalidParameterValue, match="roles must not be empty"):
        _create(migrated, "bad", "read", "true", "{}")
    for roles in ("{authenticated,NULL}", '{authenticated,""}', "{{a},{b}}"):
        with pytest.raises(errors.InvalidParameterValue, match="non-empty role names"):
            _create(migrated, "bad", "read", "true", roles)
    # the catalog's own check holds for direct inserts too
    with pytest.raises(errors.CheckViolation):
        _exec(
            migrated,
            "insert into realtime.topic_policies (name, action, using_expr, roles) "
            "values ('raw', 'delete', 'true', '{authenticated}')",
        )
    assert _names(migrated) == []


def test_duplicate_name_is_refused(migrated: str) -> None:
    _create(migrated, "members", "read", "true")
    with pytest.raises(errors.DuplicateObject) as exc:
        _create(migrated, "members", "write", "false")
    assert exc.value.diag.message_primary == 'topic policy "members" already exists'
    assert exc.value.diag.message_hint == "drop it first with realtime.drop_topic_policy"
    assert _exec(migrated, "select action, using_expr from realtime.topic_policies") == [("read", "true")]


def test_drop_topic_policy(migrated: str) -> None:
    _create(migrated, "a", "read", "true")
    _create(migrated, "b", "write", "true")
    _exec(migrated, "select realtime.drop_topic_policy('a')")
    assert _names(migrated) == ["b"]
    with pytest.raises(errors.UndefinedObject) as exc:
        _exec(migrated, "select realtime.drop_topic_policy('a')")
    assert exc.value.diag.message_primary == 'topic policy "a" does not exist'
    _exec(migrated, "select realtime.drop_topic_policy('a', if_exists => true)")
    _exec(migrated, "select realtime.drop_topic_policy('a', true)")
    assert _names(migrated) == ["b"]


def test_only_privileged_roles_manage_but_everyone_reads(migrated: str, login_role: tuple[str, str]) -> None:
    role, dsn = login_role
    _create(migrated, "members", "read", "true")
    with pytest.raises(errors.InsufficientPrivilege) as exc:
        _create(dsn, "mine", "read", "true")
    assert exc.value.diag.message_primary == "permission denied to create topic policies"
    assert "relay migrate" in (exc.value.diag.message_hint or "")
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied to drop topic policies"):
        _exec(dsn, "select realtime.drop_topic_policy('members')")
    with pytest.raises(errors.InsufficientPrivilege):
        _exec(dsn, "delete from realtime.topic_policies")
    with pytest.raises(errors.InsufficientPrivilege):
        _exec(
            dsn,
            "insert into realtime.topic_policies (name, action, using_expr, roles) "
            "values ('raw', 'read', 'true', '{authenticated}')",
        )
    assert _names(dsn) == ["members"]
    # Evaluating runs SQL as realtime_policy_eval (0007): only roles granted the sandbox may.
    assert _eval(dsn, "room", {"role": "authenticated"})[0] == (
        "read",
        "broadcast",
        False,
        "members: 42501: permission denied for function eval_topic_policy_sandboxed",
    )
    _exec(
        migrated,
        f"grant execute on function realtime.eval_topic_policy_sandboxed(text, text, text, jsonb) to {role}",
    )
    assert _allowed(dsn, "room", {"role": "authenticated"})[("read", "broadcast")] is True
    # A DBA may delegate by granting on the catalog.
    _exec(migrated, f"grant insert, delete on realtime.topic_policies to {role}")
    _create(dsn, "mine", "write", "true")
    _exec(dsn, "select realtime.drop_topic_policy('members')")
    assert _exec(migrated, "select name, created_by::text from realtime.topic_policies") == [("mine", role)]


def test_create_and_drop_emit_a_logical_message(migrated: str) -> None:
    _exec(migrated, "select pg_create_logical_replication_slot('tp_msg', 'wal2json')")
    _create(migrated, "members", "read", "true")
    _exec(migrated, "select realtime.drop_topic_policy('members')")
    _exec(migrated, "select realtime.drop_topic_policy('members', true)")  # no-op: no message
    with pytest.raises(errors.UndefinedColumn):
        _create(migrated, "bad", "read", "nope")
    with psycopg.connect(migrated) as conn:  # rolled back: no message either
        conn.execute("select realtime.create_topic_policy('rolled back', 'read', 'true')")
        conn.rollback()
    msgs = realtime_messages(migrated, "tp_msg", ("topic_policy_changed",))
    # each names its transaction, so the relay can wait until the change is visible to it
    assert all(int(str(m.pop("xid"))) > 0 for m in msgs)
    assert msgs == [
        {"op": "topic_policy_changed", "name": "members"},
        {"op": "topic_policy_changed", "name": "members"},
    ]


# --- evaluation ---------------------------------------------------------------------------------------


def test_no_policy_denies_everything(migrated: str) -> None:
    rows = _eval(migrated, "room:1", {"role": "authenticated", "sub": U1})
    assert rows == [(a, e, False, None) for a, e in ORDER]
    with pytest.raises(errors.InvalidParameterValue, match="topic must not be null"):
        _exec(migrated, "select * from realtime.eval_topic_policies(null, '{}')")


def test_actions_extensions_and_roles_select_the_policies(migrated: str) -> None:
    _create(migrated, "members read", "read", "topic = 'room:' || (claims->>'room')")
    _create(migrated, "presence only", "write", "extension = 'presence' and claims ? 'room'")
    _create(migrated, "anon lobby", "read", "topic = 'lobby' and extension = 'broadcast'", "{anon}")
    member = {"role": "authenticated", "room": "7"}
    assert _allowed(migrated, "room:7", member) == {
        ("read", "broadcast"): True,
        ("read", "presence"): True,
        ("write", "broadcast"): False,
        ("write", "presence"): True,
    }
    assert set(_allowed(migrated, "room:8", member).values()) == {False, True}  # presence write only
    assert _allowed(migrated, "room:8", member)[("read", "broadcast")] is False
    # The anon policy grants anon only; the authenticated ones do not apply to anon.
    assert _allowed(migrated, "lobby", {"role": "anon", "room": "7"}) == {
        ("read", "broadcast"): True,
        ("read", "presence"): False,
        ("write", "broadcast"): False,
        ("write", "presence"): False,
    }
    assert _allowed(migrated, "room:7", {"role": "anon", "room": "7"}) == dict.fromkeys(ORDER, False)
    assert _allowed(migrated, "lobby", {"role": "authenticated"}) == dict.fromkeys(ORDER, False)
    # No role claim, or no claims at all: no policy applies.
    assert _allowed(migrated, "room:7", {"room": "7"}) == dict.fromkeys(ORDER, False)
    assert _allowed(migrated, "room:7", None) == dict.fromkeys(ORDER, False)


def test_auth_helpers_and_realtime_topic_see_the_evaluated_claims(migrated: str) -> None:
    _create(migrated, "own channel", "read", "realtime.topic() = 'user:' || auth.uid()::text")
    _create(
        migrated, "role helper", "write", "auth.role() = 'authenticated' and auth.jwt()->>'admin' = 'yes'"
    )
    me = {"role": "authenticated", "sub": U1}
    assert _allowed(migrated, f"user:{U1}", me)[("read", "broadcast")] is True
    assert _allowed(migrated, f"user:{U2}", me)[("read", "broadcast")] is False
    assert _allowed(migrated, "x", {**me, "admin": "yes"})[("write", "presence")] is True
    assert _allowed(migrated, "x", me)[("write", "presence")] is False


def test_settings_are_restored_after_evaluation(migrated: str) -> None:
    _create(migrated, "any", "read", "true")
    with psycopg.connect(migrated) as conn:  # one transaction: set_config(..., true) would leak here
        conn.execute("select set_config('realtime.topic', 'mine', true)")
        conn.execute("select set_config('request.jwt.claims', '{\"sub\": \"me\"}', true)")
        conn.execute("select * from realtime.eval_topic_policies('other', '{\"role\": \"authenticated\"}')")
        row = conn.execute("select realtime.topic(), auth.jwt()->>'sub'").fetchone()
    assert row == ("mine", "me")


def test_a_failing_policy_reports_and_does_not_block_others(migrated: str) -> None:
    _create(migrated, "a cast", "read", "(claims->>'room')::int = 1")
    _create(migrated, "b fallback", "read", "topic = 'lobby'")
    _create(migrated, "c div", "write", "1 / length(claims->>'x') = 1")
    claims = {"role": "authenticated", "room": "seven", "x": ""}
    rows = _eval(migrated, "lobby", claims)
    cast_error = 'a cast: 22P02: invalid input syntax for type integer: "seven"'
    assert rows == [
        ("read", "broadcast", True, cast_error),
        ("read", "presence", True, cast_error),
        ("write", "broadcast", False, "c div: 22012: division by zero"),
        ("write", "presence", False, "c div: 22012: division by zero"),
    ]
    # Without the fallback's topic, the failing policy grants nothing.
    assert [r[2] for r in _eval(migrated, "room:1", claims)] == [False] * 4
    # A policy the relay's role may not evaluate (no privilege on a table) is reported too, and a
    # later policy (in name order) still grants.
    _exec(migrated, "select realtime.drop_topic_policy('c div')")
    _exec(migrated, "create table public.secret (topic text)")
    _exec(migrated, "revoke all on public.secret from public")
    _create(migrated, "d secret", "write", "exists (select 1 from public.secret s where s.topic = topic)")
    _create(migrated, "e open", "write", "extension = 'broadcast'")
    # Policies run as realtime_policy_eval (0007), whatever the relay's role: even a superuser
    # relay gets the error until the DBA grants the evaluation role what the policy reads.
    denied = "d secret: 42501: permission denied for table secret"
    assert _eval(migrated, "lobby", claims)[2:] == [
        ("write", "broadcast", True, denied),
        ("write", "presence", False, denied),
    ]
    _exec(migrated, "grant select on public.secret to realtime_policy_eval")
    assert _eval(migrated, "lobby", claims)[2:] == [
        ("write", "broadcast", True, None),
        ("write", "presence", False, None),
    ]


def test_migration_file_can_be_rerun(migrated: str) -> None:
    _create(migrated, "members", "read", "true")
    text = (sql_dir() / "migrations" / "0006_topic_policies.sql").read_text(encoding="utf-8")
    _exec(migrated, text)
    _exec(migrated, text)
    assert _names(migrated) == ["members"]
    assert _exec(migrated, "select realtime.topic()") == [(None,)]


# --- TopicAuthorizer ------------------------------------------------------------------------------------


@pytest.fixture()
async def catalog(migrated: str) -> AsyncIterator[Catalog]:
    cat = Catalog(migrated)
    await cat.open()
    try:
        yield cat
    finally:
        await cat.close()


async def test_authorizer_grants(migrated: str, catalog: Catalog) -> None:
    _create(migrated, "own", "read", "realtime.topic() = 'user:' || auth.uid()::text")
    _create(migrated, "send own", "write", "extension = 'broadcast' and topic = 'user:' || (claims->>'sub')")
    _create(migrated, "broken", "write", "(claims->>'level')::int > 3")
    auth = TopicAuthorizer(catalog)
    me = {"role": "authenticated", "sub": U1, "level": "high"}
    grants = await auth.grants(f"user:{U1}", me)
    assert grants == TopicGrants(
        broadcast_read=True,
        broadcast_write=True,
        presence_read=True,
        presence_write=False,
        errors=('broken: 22P02: invalid input syntax for type integer: "high"',),  # once, not per row
    )
    assert grants.can_join
    other = await auth.grants(f"user:{U2}", {"role": "authenticated", "sub": U1})
    assert other == TopicGrants(False, False, False, False)
    assert not other.can_join
    assert TopicGrants(False, False, True, False).can_join  # presence alone is worth joining
    assert PUBLIC_GRANTS == TopicGrants(True, True, True, True)
    # Claims of any JSON shape travel intact (nested values, quotes).
    _create(migrated, "nested", "read", "claims->'app'->'rooms' ? topic and claims->>'q' = 'it''s'")
    nested = await auth.grants("r1", {"role": "authenticated", "app": {"rooms": ["r1"]}, "q": "it's"})
    assert nested.broadcast_read and not nested.broadcast_write


async def test_authorizer_survives_a_dropped_connection(migrated: str, catalog: Catalog) -> None:
    _create(migrated, "all", "read", "true")
    auth = TopicAuthorizer(catalog)
    assert (await auth.grants("a", {"role": "authenticated"})).broadcast_read
    _exec(
        migrated,
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where datname = current_database() and pid <> pg_backend_pid()",
    )
    assert (await auth.grants("a", {"role": "authenticated"})).broadcast_read


async def test_authorizer_without_the_migration(catalog: Catalog, migrated: str) -> None:
    _exec(migrated, "drop function realtime.eval_topic_policies(text, jsonb)")
    with pytest.raises(TopicPolicyError, match=r"0006_topic_policies\.sql; run `relay migrate`"):
        await TopicAuthorizer(catalog).grants("a", {"role": "authenticated"})


async def test_authorizer_reports_other_database_errors(catalog: Catalog) -> None:
    with pytest.raises(TopicPolicyError, match="22023: topic must not be null"):
        await TopicAuthorizer(catalog).grants(None, {"role": "authenticated"})  # type: ignore[arg-type]


class _DownPool:
    async def fetch(self, query: str, *args: object) -> list[object]:
        raise ConnectionRefusedError(111, "Connection refused")


async def test_authorizer_reports_an_unreachable_database() -> None:
    cat = Catalog("postgresql://unused")
    cat._pool = _DownPool()
    with pytest.raises(TopicPolicyError, match="cannot reach Postgres to evaluate topic policies") as exc:
        await TopicAuthorizer(cat).grants("a", {"role": "authenticated"})
    assert "RELAY_DATABASE_URL" in str(exc.value)
