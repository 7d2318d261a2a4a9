"""Row policy SQL (migration 0003): create/drop/list, expression checks, auth helpers, messages."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from relay.postgres.migrate import apply_demo_schema, apply_migrations, sql_dir
from relay.postgres.policies_sql import PolicySQLError, create_policy, drop_policy, list_policies
from tests.support.messages import realtime_messages

pytestmark = pytest.mark.pg

U1 = "00000000-0000-4000-8000-0000000000a1"

EXAMPLES = [
    ("bookings", "branch", "branch_id = (claims->>'branch_id')::int"),
    ("tasks", "assignee", "assignee_id = auth.uid()"),
    (
        "payments",
        "my branches",
        "branch_id = any (select jsonb_array_elements_text(claims->'branches')::int)",
    ),
    ("alerts", "managers", "claims->>'role' in ('admin', 'manager')"),
    (
        "alerts",
        "branch staff, open alerts",
        "branch_id = (claims->>'branch_id')::int and status <> 'resolved' or claims->>'user_role' = 'admin'",
    ),
    (
        "tasks",
        "mine",
        "(owner_id = auth.uid() or assignee_id = (auth.jwt()->>'sub')::uuid)"
        " and auth.role() = 'authenticated'",
    ),
    ("bookings", "not cancelled", "not (status = 'cancelled') and branch_id is not null"),
]


def _exec(dsn: str, query: str, params: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _create(dsn: str, table: str, name: str, expr: str, roles: str | None = None) -> None:
    if roles is None:
        _exec(dsn, "select realtime.create_policy(%s::regclass, %s, %s)", (table, name, expr))
    else:
        _exec(
            dsn, "select realtime.create_policy(%s::regclass, %s, %s, %s::text[])", (table, name, expr, roles)
        )


def _policies(dsn: str) -> list[tuple[object, ...]]:
    return _exec(
        dsn,
        "select schema_name::text, table_name::text, name, roles, using_expr from realtime.policies",
    )


def _messages(dsn: str, slot: str) -> list[dict[str, object]]:
    """The policy_changed logical messages decoded so far from a wal2json slot."""
    return realtime_messages(dsn, slot, ("policy_changed",))


@pytest.fixture()
def demo(pg_dsn: str) -> str:
    """The demo tables without the demo schema's own policies: each test states its policies."""
    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    _exec(pg_dsn, "delete from realtime.row_policies")
    return pg_dsn


@pytest.fixture()
def login_role(demo: str) -> Iterator[tuple[str, str]]:
    """(role name, DSN connecting as it): a plain login role owning nothing yet."""
    role = "policy_user_" + uuid.uuid4().hex[:8]
    _exec(demo, f"create role {role} login password 'pw'")
    try:
        yield role, make_conninfo(demo, user=role, password="pw")
    finally:
        _exec(demo, f"drop owned by {role}")
        _exec(demo, f"drop role {role}")


# --- creating and listing -------------------------------------------------------------------------


def test_example_policies_are_created_and_listed(demo: str) -> None:
    for table, name, expr in EXAMPLES:
        _create(demo, f"public.{table}", name, expr)
    _create(demo, "public.branches", "public list", "true", "{anon,authenticated}")
    expected = sorted(
        [("public", t, n, ["authenticated"], e) for t, n, e in EXAMPLES]
        + [("public", "branches", "public list", ["anon", "authenticated"], "true")]
    )
    assert _policies(demo) == expected  # the view orders by schema, table, name
    rows = _exec(demo, "select created_by = current_user, created_at is not null from realtime.policies")
    assert rows and all(by and at for by, at in rows)


def test_python_wrappers(demo: str) -> None:
    create_policy(demo, "public.bookings", "branch", "branch_id = (claims->>'branch_id')::int")
    create_policy(demo, "bookings", "anon", "status = 'confirmed'", roles=["anon"])
    infos = list_policies(demo)
    assert [(p.qualified_table, p.name, p.roles) for p in infos] == [
        ("public.bookings", "anon", ("anon",)),
        ("public.bookings", "branch", ("authenticated",)),
    ]
    assert infos[0].created_at is not None and infos[0].created_by
    with pytest.raises(PolicySQLError, match='column "nope" does not exist') as exc:
        create_policy(demo, "public.bookings", "bad", "nope = 1")
    assert exc.value.sqlstate == "42703"
    with pytest.raises(PolicySQLError, match="does not exist"):
        drop_policy(demo, "public.bookings", "bad")
    drop_policy(demo, "public.bookings", "bad", if_exists=True)
    drop_policy(demo, "public.bookings", "anon")
    assert [p.name for p in list_policies(demo)] == ["branch"]


def test_python_wrappers_before_migrating(pg_dsn: str) -> None:
    with pytest.raises(PolicySQLError, match="relay migrate"):
        list_policies(pg_dsn)


def test_expressions_that_only_fail_for_some_claims_are_accepted(demo: str) -> None:
    """Validation compiles without evaluating: claim-dependent casts must not be folded early."""
    _create(demo, "public.bookings", "default branch", "coalesce(claims->>'branch_id', 'x')::int = branch_id")
    _create(demo, "public.bookings", "qualified", "t.branch_id = (c.claims->>'branch_id')::int")
    _create(
        demo,
        "public.bookings",
        "subquery",
        "exists (select 1 from public.staff s where s.user_id = auth.uid())",
    )
    _create(demo, "public.bookings", "multi-line", "branch_id = 1 -- the first branch\n or status = 'x'")
    assert len(_policies(demo)) == 4


def test_parentheses_in_literals_and_comments_do_not_count(demo: str) -> None:
    accepted = [
        "status = ')'",
        "status = '('''",
        "status = E'\\')'",
        "status = $q$)$q$",
        "status = $$($$",
        'status = (select "x)" from (select 1 as "x)") s)::text',
        "status = 'a' /* ) /* nested ( */ ) */",
    ]
    for i, expr in enumerate(accepted):
        _create(demo, "public.bookings", f"p{i}", expr)
    assert [r[0] for r in _exec(demo, "select using_expr from realtime.row_policies order by id")] == accepted


# --- refusing expressions -------------------------------------------------------------------------


def test_unknown_column_reports_postgres_error(demo: str) -> None:
    with pytest.raises(errors.UndefinedColumn) as exc:
        _create(demo, "public.bookings", "bad", "nope = (claims->>'x')::int")
    assert exc.value.diag.message_primary == 'column "nope" does not exist'
    assert "public.bookings" in (exc.value.diag.message_detail or "")
    assert _policies(demo) == []


def test_type_mismatch_reports_postgres_error(demo: str) -> None:
    with pytest.raises(errors.UndefinedFunction) as exc:
        _create(demo, "public.bookings", "bad", "branch_id = claims->>'branch_id'")
    assert exc.value.diag.message_primary == "operator does not exist: integer = text"
    assert exc.value.diag.message_hint and "explicit type casts" in exc.value.diag.message_hint
    with pytest.raises(errors.InvalidTextRepresentation):
        _create(demo, "public.bookings", "bad", "assignee_id = 'not-a-uuid'")
    with pytest.raises(errors.UndefinedFunction, match="no_such_function"):
        _create(demo, "public.bookings", "bad", "no_such_function(branch_id)")


def test_non_boolean_expression_is_refused(demo: str) -> None:
    for expr, typ in [("branch_id + 1", "integer"), ("claims->>'role'", "text"), ("claims", "jsonb")]:
        with pytest.raises(errors.DatatypeMismatch) as exc:
            _create(demo, "public.bookings", "bad", expr)
        assert exc.value.diag.message_primary == f"policy expression must return boolean, not type {typ}"
    _exec(demo, "create domain public.yes_no as boolean")
    _create(demo, "public.bookings", "domain", "(branch_id = 1)::public.yes_no")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("true; drop table public.bookings", 'must not contain ";"'),
        ("status = ';'", 'must not contain ";"'),
        ("true) from pg_authid, (select 1", "unbalanced parentheses"),
        ("(true", "unbalanced parentheses"),
        ("true --", "must not end with a -- comment"),
        ("status = 'open", "unterminated string constant"),
        ('"branch_id = 1', "unterminated quoted identifier"),
        ("status = $x$open", "unterminated dollar-quoted string"),
        ("true /* (", "unterminated /* comment"),
    ],
)
def test_escaping_the_expression_is_refused(demo: str, expr: str, message: str) -> None:
    with pytest.raises(errors.SyntaxError, match=re.escape(message)):
        _create(demo, "public.bookings", "bad", expr)
    assert _exec(demo, "select to_regclass('public.bookings') is not null") == [(True,)]
    assert _policies(demo) == []


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("count(*) > 0", "aggregate functions are not allowed"),
        ("row_number() over () = 1", "window functions are not allowed"),
        ("generate_series(1, 3) = branch_id", "set-returning functions are not allowed"),
        ("branch_id = $1", "there is no parameter"),
    ],
)
def test_non_row_expressions_are_refused(demo: str, expr: str, error: str) -> None:
    with pytest.raises(psycopg.Error, match=error):
        _create(demo, "public.bookings", "bad", expr)


def test_empty_or_null_arguments_are_refused(demo: str) -> None:
    with pytest.raises(errors.InvalidParameterValue, match="expression must not be empty"):
        _create(demo, "public.bookings", "bad", "  \n ")
    with pytest.raises(errors.InvalidParameterValue, match="expression must not be empty"):
        _exec(demo, "select realtime.create_policy('public.bookings', 'bad', null)")
    with pytest.raises(errors.InvalidParameterValue, match="name must not be empty"):
        _create(demo, "public.bookings", " ", "true")
    with pytest.raises(errors.InvalidParameterValue, match="roles must not be empty"):
        _create(demo, "public.bookings", "bad", "true", "{}")
    for roles in ("{authenticated,NULL}", '{authenticated,""}', "{{a},{b}}"):
        with pytest.raises(errors.InvalidParameterValue, match="non-empty role names"):
            _create(demo, "public.bookings", "bad", "true", roles)
    with pytest.raises(errors.UndefinedTable):
        _create(demo, "public.nope", "bad", "true")
    with pytest.raises(errors.NullValueNotAllowed):
        _exec(demo, "select realtime.create_policy(null, 'bad', 'true')")
    assert _policies(demo) == []


def test_only_ordinary_tables(demo: str) -> None:
    _exec(demo, "create view public.v as select * from public.bookings")
    with pytest.raises(errors.WrongObjectType, match="not an ordinary table"):
        _create(demo, "public.v", "bad", "true")
    _exec(demo, "create table public.parts (id int, k int, primary key (id, k)) partition by list (k)")
    with pytest.raises(errors.WrongObjectType, match="partitioned") as exc:
        _create(demo, "public.parts", "bad", "true")
    assert "each partition" in (exc.value.diag.message_hint or "")


def test_duplicate_is_refused(demo: str) -> None:
    _create(demo, "public.bookings", "branch", "true")
    with pytest.raises(errors.DuplicateObject) as exc:
        _create(demo, "public.bookings", "branch", "false")
    assert exc.value.diag.message_primary == 'policy "branch" for table public.bookings already exists'
    _create(demo, "public.tasks", "branch", "true")  # the same name on another table is fine
    assert [r[4] for r in _policies(demo)] == ["true", "true"]


# --- dropping ---------------------------------------------------------------------------------------


def test_drop_policy(demo: str) -> None:
    _create(demo, "public.bookings", "a", "true")
    _create(demo, "public.bookings", "b", "false")
    _exec(demo, "select realtime.drop_policy('public.bookings', 'a')")
    assert [r[2] for r in _policies(demo)] == ["b"]
    with pytest.raises(errors.UndefinedObject) as exc:
        _exec(demo, "select realtime.drop_policy('public.bookings', 'a')")
    assert exc.value.diag.message_primary == 'policy "a" for table public.bookings does not exist'
    _exec(demo, "select realtime.drop_policy('public.bookings', 'a', if_exists => true)")
    _exec(demo, "select realtime.drop_policy('public.bookings', 'a', true)")
    assert [r[2] for r in _policies(demo)] == ["b"]


def test_dropped_table_leaves_no_policy_behind(demo: str) -> None:
    _exec(demo, "create table public.gone (id int primary key, k int)")
    _create(demo, "public.gone", "k", "k = 1")
    _create(demo, "public.bookings", "b", "true")
    _exec(demo, "select pg_create_logical_replication_slot('pol_drop', 'wal2json')")
    _exec(demo, "drop table public.gone")
    assert _exec(demo, "select count(*) from realtime.row_policies") == [(1,)]
    assert [r[1] for r in _policies(demo)] == ["bookings"]
    assert _messages(demo, "pol_drop") == [{"op": "policy_changed", "table": "public.gone", "name": "k"}]
    # a whole schema, and columns (which must not touch policies)
    _exec(demo, "create schema s2; create table s2.t (id int primary key, k int)")
    _create(demo, "s2.t", "k", "true")
    _exec(demo, "alter table public.bookings drop column notes")
    _exec(demo, "drop schema s2 cascade")
    assert [(r[1], r[2]) for r in _policies(demo)] == [("bookings", "b")]


def test_view_hides_rows_of_dropped_tables_without_the_event_trigger(demo: str) -> None:
    """Where the sql_drop trigger is missing (non-superuser migrator), the view still works."""
    _exec(demo, "create table public.gone (id int primary key, k int)")
    _create(demo, "public.gone", "k", "k = 1")
    _exec(demo, "alter event trigger realtime_drop_policy_tables disable")
    _exec(demo, "drop table public.gone")
    assert _exec(demo, "select count(*) from realtime.row_policies") == [(1,)]
    assert _policies(demo) == []
    assert _exec(demo, "select count(*) from realtime.policies where table_name::text ~ '^[0-9]+$'") == [(0,)]


def test_drop_schema_realtime_is_not_blocked(demo: str) -> None:
    _create(demo, "public.bookings", "b", "true")
    _exec(demo, "drop schema realtime cascade")
    assert _exec(demo, "select to_regclass('realtime.row_policies')") == [(None,)]


def test_renamed_table_keeps_its_policies(demo: str) -> None:
    _create(demo, "public.tasks", "assignee", "assignee_id = auth.uid()")
    _exec(demo, "alter table public.tasks rename to todo")
    assert [(r[1], r[2]) for r in _policies(demo)] == [("todo", "assignee")]


# --- privileges -------------------------------------------------------------------------------------


def test_non_owner_cannot_create_or_drop(demo: str, login_role: tuple[str, str]) -> None:
    _, dsn = login_role
    _create(demo, "public.bookings", "branch", "true")
    with pytest.raises(errors.InsufficientPrivilege, match="must be owner of table bookings"):
        _create(dsn, "public.bookings", "mine", "true")
    with pytest.raises(errors.InsufficientPrivilege, match="must be owner of table bookings"):
        _exec(dsn, "select realtime.drop_policy('public.bookings', 'branch')")
    # Plain DML on the catalog is held to the same rule (row level security).
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        _exec(
            dsn,
            "insert into realtime.row_policies (tbl, name, using_expr, roles) "
            "values ('public.bookings', 'mine', 'true', '{authenticated}')",
        )
    _exec(dsn, "delete from realtime.row_policies")
    with pytest.raises(errors.InsufficientPrivilege):
        _exec(dsn, "update realtime.row_policies set using_expr = 'true'")
    # ... while everyone may read the policies (the relay may run as a non-owner role).
    assert [r[2] for r in _policies(dsn)] == ["branch"]
    assert len(_exec(dsn, "select * from realtime.row_policies")) == 1


def test_table_owner_may_manage_its_policies(demo: str, login_role: tuple[str, str]) -> None:
    role, dsn = login_role
    _exec(
        demo,
        "create table public.owned (id int primary key, owner_id uuid); "
        f"alter table public.owned owner to {role}",
    )
    _create(dsn, "public.owned", "own", "owner_id = auth.uid()")
    assert _exec(demo, "select name, created_by::text from realtime.policies") == [("own", role)]
    _exec(dsn, "select realtime.drop_policy('public.owned', 'own')")
    assert _policies(demo) == []


# --- auth helpers -----------------------------------------------------------------------------------


def test_auth_helpers_read_the_request_claims(demo: str) -> None:
    claims = json.dumps({"sub": U1, "role": "authenticated", "branch_id": 3})
    with psycopg.connect(demo) as conn:  # a transaction: set_config(..., true) is local to it
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        row = conn.execute("select auth.uid()::text, auth.role(), auth.jwt()").fetchone()
    assert row == (U1, "authenticated", json.loads(claims))
    # Without claims, and with the legacy per-claim settings.
    assert _exec(demo, "select auth.uid(), auth.role(), auth.jwt()") == [(None, None, None)]
    with psycopg.connect(demo) as conn:
        conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (U1,))
        conn.execute("select set_config('request.jwt.claim.role', 'anon', true)")
        conn.execute("select set_config('request.jwt.claim', %s, true)", ('{"sub": "x"}',))
        row = conn.execute("select auth.uid()::text, auth.role(), auth.jwt()->>'sub'").fetchone()
    assert row == (U1, "anon", "x")
    kinds = _exec(
        demo,
        "select p.proname::text, p.provolatile::text, l.lanname::text, p.prorettype::regtype::text "
        "from pg_proc p join pg_language l on l.oid = p.prolang "
        "where p.pronamespace = 'auth'::regnamespace order by 1",
    )
    assert kinds == [("jwt", "s", "sql", "jsonb"), ("role", "s", "sql", "text"), ("uid", "s", "sql", "uuid")]


def test_existing_auth_helpers_are_left_untouched(pg_dsn: str) -> None:
    fixed = "11111111-1111-4111-8111-111111111111"
    _exec(
        pg_dsn,
        "create schema auth; "
        f"create function auth.uid() returns uuid language sql stable as $$ select '{fixed}'::uuid $$",
    )
    apply_migrations(pg_dsn)
    assert _exec(pg_dsn, "select auth.uid()::text") == [(fixed,)]
    assert _exec(pg_dsn, "select auth.role(), auth.jwt()") == [(None, None)]  # the missing ones are added


# --- messages and idempotency -----------------------------------------------------------------------


def test_create_and_drop_emit_a_logical_message(demo: str) -> None:
    _exec(demo, "select pg_create_logical_replication_slot('pol_msg', 'wal2json')")
    _create(demo, "public.bookings", "branch", "branch_id = (claims->>'branch_id')::int")
    _exec(demo, "select realtime.drop_policy('public.bookings', 'branch')")
    _exec(demo, "select realtime.drop_policy('public.bookings', 'branch', true)")  # no-op: no message
    with pytest.raises(errors.UndefinedColumn):
        _create(demo, "public.bookings", "bad", "nope")
    with psycopg.connect(demo) as conn:  # rolled back: no message either
        conn.execute("select realtime.create_policy('public.bookings', 'rolled back', 'true')")
        conn.rollback()
    assert _messages(demo, "pol_msg") == [
        {"op": "policy_changed", "table": "public.bookings", "name": "branch"},
        {"op": "policy_changed", "table": "public.bookings", "name": "branch"},
    ]


def test_migrations_are_idempotent(demo: str) -> None:
    _create(demo, "public.bookings", "branch", "true")
    assert apply_migrations(demo) == []
    # The file itself can be re-run over an applied database without harm.
    text = (sql_dir() / "migrations" / "0003_row_policies.sql").read_text(encoding="utf-8")
    _exec(demo, text)
    _exec(demo, text)
    assert [r[2] for r in _policies(demo)] == ["branch"]
    assert _exec(
        demo, "select count(*) from pg_event_trigger where evtname = 'realtime_drop_policy_tables'"
    ) == [(1,)]
