"""Policies never run with the relay's privileges (issue 11 item 8).

The relay connects as a superuser here, as in most tests and many deployments: exactly the case
where executing a table owner's policy SQL as the relay's role hands that owner superuser.  Every
test uses real, non-superuser roles (cluster-wide, so uniquely named and dropped afterwards).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from relay.postgres.migrate import apply_migrations, sql_dir
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

PW = "pw-0123456789"


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)  # None: a file with format() '%' signs is no template
        return cur.fetchall() if cur.description else []


def _is_super(dsn: str, role: str) -> bool:
    return bool(_exec(dsn, "select rolsuper from pg_roles where rolname = %s", (role,))[0][0])


@pytest.fixture()
def roles(pg_dsn: str) -> Iterator[list[str]]:
    """Names for throwaway login roles; whatever the test creates under them is dropped after."""
    names = [f"adv_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        yield names
    finally:
        for name in names:
            if _exec(pg_dsn, "select 1 from pg_roles where rolname = %s", (name,)):
                _exec(pg_dsn, f"drop owned by {name} cascade")
                _exec(pg_dsn, f"drop role {name}")


@pytest.fixture()
def attack(pg_dsn: str, roles: list[str]) -> tuple[str, str]:
    """The attack of the issue, up to the point where the relay evaluates the policy.

    A non-superuser owns schema ``advs`` and table ``advs.t``, writes ``advs.evil()`` (plpgsql
    making its caller's role superuser... if the caller may) and a policy calling it.  Returns
    (owner role, owner DSN).
    """
    apply_migrations(pg_dsn)
    owner = roles[0]
    _exec(pg_dsn, f"create role {owner} login password '{PW}'")
    _exec(pg_dsn, f"create schema advs authorization {owner}")
    # The DBA let policies on advs tables be evaluated in Postgres at all (docs/authorization.md):
    # without it evaluation stops earlier (no USAGE on advs), which would prove less.
    _exec(pg_dsn, "grant usage on schema advs to realtime_policy_eval")
    odsn = make_conninfo(pg_dsn, user=owner, password=PW)
    _exec(odsn, "create table advs.t (id int primary key, note text)")
    _exec(
        odsn,
        "create function advs.evil() returns boolean language plpgsql as "
        f"$$ begin alter role {owner} superuser; return true; end $$",
    )
    _exec(odsn, "select realtime.create_policy('advs.t', 'evil', 'advs.evil()')")
    _exec(pg_dsn, "select realtime.enable_table('advs.t')")
    assert not _is_super(pg_dsn, owner)
    return owner, odsn


async def test_owner_cannot_escalate_through_a_policy(pg_dsn: str, attack: tuple[str, str]) -> None:
    owner, odsn = attack
    binding = [{"event": "*", "schema": "advs", "table": "t"}]
    async with (
        running_relay(pg_dsn, demo=False) as relay,
        PhoenixClient.connect(relay, token("authenticated", sub=str(uuid.uuid4()))) as client,
    ):
        deadline = time.monotonic() + 5
        while not (cps := relay.server.authorizer.policies("advs", "t")):
            assert time.monotonic() < deadline, "policy not loaded"
            await asyncio.sleep(0.05)
        assert cps[0].fast is None  # a function call: evaluated in Postgres
        await client.join("advs", binding)
        await asyncio.to_thread(_exec, odsn, "insert into advs.t values (1, 'x')")
        changes: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not changes and time.monotonic() < deadline:
            changes = [m for m in await client.collect(0.5) if m["event"] == "postgres_changes"]
    assert not _is_super(pg_dsn, owner)
    # Not silence: the subscriber is told the policy failed, and why.
    assert len(changes) == 1, changes
    data = changes[0]["payload"]["data"]
    assert data["record"] == {}
    (err,) = data["errors"]
    assert err.startswith("PolicyError 42501: ") and "(policy evil)" in err, err


def test_evaluating_the_policy_in_sql_does_not_escalate(pg_dsn: str, attack: tuple[str, str]) -> None:
    """The same through the function the relay calls, with the error Postgres gives."""
    owner, _ = attack
    rows = _exec(
        pg_dsn,
        "select idx, result, error from realtime.eval_policy('advs.evil()', 'advs.t', "
        """'{"id": 1, "note": "x"}', array['{"role": "authenticated"}'::jsonb])""",
    )
    assert rows == [
        (1, None, "42501: must be superuser to alter superuser roles or change superuser attribute")
    ]
    assert not _is_super(pg_dsn, owner)


def test_policy_code_cannot_reset_role(pg_dsn: str, attack: tuple[str, str]) -> None:
    """After a plain SET ROLE the code could RESET ROLE back to the superuser session user."""
    owner, odsn = attack
    _exec(
        odsn,
        "create function advs.unmask() returns boolean language plpgsql as $$ begin "
        "perform pg_catalog.set_config('role', 'none', true); "
        f"alter role {owner} superuser; return true; end $$",
    )
    rows = _exec(
        pg_dsn,
        "select error from realtime.eval_policy('advs.unmask()', 'advs.t', '{}', array['{}'::jsonb])",
    )
    assert rows == [('42501: cannot set parameter "role" within security-definer function',)]
    assert not _is_super(pg_dsn, owner)


def test_non_owner_cannot_create_or_insert_policies(
    pg_dsn: str, roles: list[str], attack: tuple[str, str]
) -> None:
    _, odsn = attack
    intruder = roles[1]
    _exec(pg_dsn, f"create role {intruder} login password '{PW}'")
    idsn = make_conninfo(pg_dsn, user=intruder, password=PW)
    _exec(odsn, f"grant usage on schema advs to {intruder}")  # may see the table, not own it
    with pytest.raises(errors.InsufficientPrivilege, match="must be owner of table t"):
        _exec(idsn, "select realtime.create_policy('advs.t', 'mine', 'true')")
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        _exec(
            idsn,
            "insert into realtime.row_policies (tbl, name, using_expr, roles) "
            "values ('advs.t', 'mine', 'true', '{authenticated}')",
        )
    with pytest.raises(errors.InsufficientPrivilege):
        _exec(idsn, "select realtime.drop_policy('advs.t', 'evil')")
    # Nor may anyone but the relay call the sandbox to run SQL as the evaluation role.
    with pytest.raises(errors.InsufficientPrivilege, match="eval_policy_sandboxed"):
        _exec(idsn, """select * from realtime.eval_policy('true', 'advs.t', '{}', array['{}'::jsonb])""")
    assert [r[0] for r in _exec(pg_dsn, "select name from realtime.row_policies")] == ["evil"]


def test_search_path_hijack_does_not_run_elevated(pg_dsn: str, roles: list[str], attack: Any) -> None:
    """A schema named after the relay's role comes first on its default search_path ("$user").

    The DBA's policy calls ``is_staff(claims)`` (their ``public.is_staff``) unqualified; the owner
    plants ``"<relay role>".is_staff(jsonb)``.  Evaluation must resolve the DBA's function (the
    sandbox pins its search_path) and the planted one must never run as the relay.
    """
    owner, odsn = attack
    relay_role = str(_exec(pg_dsn, "select current_user")[0][0])
    _exec(
        pg_dsn, f"grant create on database {psycopg.conninfo.conninfo_to_dict(pg_dsn)['dbname']} to {owner}"
    )
    _exec(odsn, f'create schema "{relay_role}"')
    _exec(odsn, f'grant usage on schema "{relay_role}" to public')
    _exec(
        odsn,
        f'create function "{relay_role}".is_staff(c jsonb) returns boolean language plpgsql as '
        f"$$ begin alter role {owner} superuser; return true; end $$",
    )
    _exec(odsn, f'grant execute on function "{relay_role}".is_staff(jsonb) to public')
    _exec(pg_dsn, "create table public.notes (id int primary key)")
    _exec(
        pg_dsn,
        "create function public.is_staff(c jsonb) returns boolean language sql as $$ select c ? 'staff' $$",
    )
    _exec(pg_dsn, "select realtime.create_policy('public.notes', 'staff', 'is_staff(claims)')")
    rows = _exec(
        pg_dsn,
        "select idx, result, error from realtime.eval_policy('is_staff(claims)', 'public.notes', "
        """'{"id": 1}', array['{"staff": 1}'::jsonb, '{}'::jsonb])""",
    )
    assert rows == [(1, True, None), (2, False, None)]
    assert not _is_super(pg_dsn, owner)


def test_policy_code_cannot_unlock_the_sandbox(pg_dsn: str, attack: tuple[str, str]) -> None:
    """Policy code runs as the sandbox functions' owner, so it may ALTER them: the relay-facing
    functions notice before the next evaluation and refuse, instead of running as the caller."""
    owner, odsn = attack
    _exec(
        odsn,
        "create function advs.unlock() returns boolean language plpgsql as $$ begin "
        "alter function realtime.eval_policy_sandboxed(text, regclass, jsonb, jsonb[]) security invoker; "
        "return true; end $$",
    )
    call = """select * from realtime.eval_policy(%s, 'advs.t', '{"id": 1}', array['{}'::jsonb])"""
    assert _exec(pg_dsn, call, ("advs.unlock()",)) == [(1, True, None)]  # it did alter it...
    with pytest.raises(errors.InsufficientPrivilege, match="policy sandbox altered"):
        _exec(pg_dsn, call, ("advs.evil()",))  # ...so nothing runs any more
    _exec(pg_dsn, "select realtime.create_topic_policy('open', 'read', 'true')")
    rows = _exec(
        pg_dsn,
        """select allowed, error from realtime.eval_topic_policies('x', '{"role": "authenticated"}')""",
    )
    assert rows[0][0] is False and "open: 42501: policy sandbox altered" in rows[0][1]
    assert not _is_super(pg_dsn, owner)
    # The documented repair: the sandbox part of the migration, run again by the migrating role.
    _exec(pg_dsn, (sql_dir() / "migrations" / "0007_policy_sandbox.sql").read_text(encoding="utf-8"))
    assert _exec(pg_dsn, call, ("true",)) == [(1, True, None)]


def test_topic_policies_run_sandboxed(pg_dsn: str, roles: list[str], attack: tuple[str, str]) -> None:
    """Topic policies belong to no table: whoever may write them must not gain the relay's rights."""
    owner, odsn = attack
    _exec(pg_dsn, f"grant insert, delete on realtime.topic_policies to {owner}")
    _exec(odsn, "select realtime.create_topic_policy('evil', 'read', 'advs.evil()')")
    _exec(pg_dsn, "create table public.members (topic text)")
    _exec(pg_dsn, "insert into public.members values ('room')")
    _exec(
        pg_dsn,
        "select realtime.create_topic_policy('members', 'write', "
        "'exists (select 1 from public.members m where m.topic = topic)')",
    )
    rows = _exec(
        pg_dsn, """select * from realtime.eval_topic_policies('room', '{"role": "authenticated"}')"""
    )
    assert not _is_super(pg_dsn, owner)
    denied = "members: 42501: permission denied for table members"
    assert rows == [
        (
            "read",
            "broadcast",
            False,
            "evil: 42501: must be superuser to alter superuser roles or change superuser attribute",
        ),
        (
            "read",
            "presence",
            False,
            "evil: 42501: must be superuser to alter superuser roles or change superuser attribute",
        ),
        ("write", "broadcast", False, denied),
        ("write", "presence", False, denied),
    ]
    # Reading a table is the DBA's grant to the evaluation role, not the relay's own right.
    _exec(pg_dsn, "grant select on public.members to realtime_policy_eval")
    rows = _exec(
        pg_dsn, """select * from realtime.eval_topic_policies('room', '{"role": "authenticated"}')"""
    )
    assert rows[2:] == [("write", "broadcast", True, None), ("write", "presence", True, None)]


def test_preflight_names_the_missing_schema_grant(pg_dsn: str, attack: tuple[str, str]) -> None:
    """Without USAGE on advs every change of advs.t is a PolicyError: `relay check` says which GRANT."""
    from relay.postgres.preflight import run_preflight

    _exec(pg_dsn, "revoke usage on schema advs from realtime_policy_eval")
    check = run_preflight(pg_dsn, publication="supabase_realtime", slot="s").by_name("policy grants")
    assert check is not None and check.status == "warn"
    assert check.message.endswith("GRANT USAGE ON SCHEMA advs TO realtime_policy_eval")
    _exec(pg_dsn, "grant usage on schema advs to realtime_policy_eval")
    assert run_preflight(pg_dsn, publication="supabase_realtime", slot="s").by_name("policy grants") is None


def test_policies_compile_with_the_evaluation_search_path(pg_dsn: str, attack: tuple[str, str]) -> None:
    """A name found only through the author's search_path would fail at every evaluation: refused now."""
    owner, odsn = attack
    _exec(pg_dsn, f"grant insert, delete on realtime.topic_policies to {owner}")
    _exec(
        odsn, "create function advs.is_member(c jsonb) returns boolean language sql as $$ select c ? 'm' $$"
    )
    with psycopg.connect(odsn, autocommit=True) as conn:
        conn.execute("set search_path = advs, public")
        with pytest.raises(errors.UndefinedFunction, match=r"function is_member\(jsonb\) does not exist"):
            conn.execute("select realtime.create_policy('t', 'members', 'is_member(claims)')")
        with pytest.raises(errors.UndefinedFunction, match=r"function is_member\(jsonb\) does not exist"):
            conn.execute("select realtime.create_topic_policy('members', 'read', 'is_member(claims)')")
        # The table is still found through the caller's search_path; qualified names compile.
        conn.execute("select realtime.create_policy('t', 'members', 'advs.is_member(claims)')")
    rows = _exec(
        pg_dsn,
        "select * from realtime.eval_policy('advs.is_member(claims)', 'advs.t', '{}', "
        """array['{"m": 1}'::jsonb, '{}'::jsonb])""",
    )
    assert rows == [(1, True, None), (2, False, None)]
