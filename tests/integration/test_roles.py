"""Least privilege as documented (issue 11 item 9): the SQL of docs/roles.md, run as written.

The SQL is taken from the markdown itself, so the document cannot drift from what works: an
owner role migrates, a runtime role (LOGIN REPLICATION, no CREATE) runs `relay serve` - which
must not try to migrate what is already applied - and a row reaches a subscriber through a policy
evaluated in Postgres.  Before the owner migrates, the runtime role gets one line with the fix.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from relay.cli import main
from tests.support.relay import SECRET, PhoenixClient, token
from tests.support.relay_process import log_tail, relay_env, spawn_relay, wait_streaming

pytestmark = pytest.mark.pg

DOC = Path(__file__).resolve().parents[2] / "docs" / "roles.md"


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def doc_sql() -> dict[str, str]:
    """The ```sql blocks of docs/roles.md by their ``-- run as: <role>`` first line."""
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    out: dict[str, str] = {}
    for block in blocks:
        m = re.match(r"-- run as: (\w+)", block)
        assert m, f"every sql block of {DOC.name} starts with '-- run as: <role>':\n{block}"
        out[m.group(1)] = block
    return out


def _as(dsn: str, role: str, password: str) -> str:
    """``dsn`` (a URL: asyncpg takes nothing else) for another user."""
    parts = urlsplit(dsn)
    netloc = f"{role}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _password(sql: str, role: str) -> str:
    m = re.search(rf"CREATE ROLE {role} LOGIN .*PASSWORD '([^']+)'", sql)
    assert m, f"{role} has no password in the doc"
    return m.group(1)


@pytest.fixture()
def documented_roles(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """Runs the superuser block; yields (owner DSN, runtime DSN); drops the two login roles."""
    sql = doc_sql()
    _exec(pg_dsn, sql["superuser"])
    try:
        yield (
            _as(pg_dsn, "relay_owner", _password(sql["superuser"], "relay_owner")),
            _as(pg_dsn, "relay_runtime", _password(sql["superuser"], "relay_runtime")),
        )
    finally:
        for role in ("relay_runtime", "relay_owner"):
            _exec(pg_dsn, f"drop owned by {role} cascade")
            _exec(pg_dsn, f"drop role {role}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_documented_roles_migrate_and_serve(
    pg_dsn: str, documented_roles: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, runtime = documented_roles
    # Before the owner migrated: one clear line, no traceback.
    assert main(["migrate", "--database-url", runtime]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("relay: role relay_runtime may not create the realtime schema (permission denied")
    assert "run `relay migrate` as the role that owns the realtime schema" in err

    assert main(["migrate", "--database-url", owner]) == 0
    assert "0007_policy_sandbox.sql" in capsys.readouterr().out
    assert _exec(owner, "select nspowner::regrole::text from pg_namespace where nspname = 'realtime'") == [
        ("relay_owner",)
    ]
    # Up to date: the runtime role "migrates" nothing, successfully.
    assert main(["migrate", "--database-url", runtime]) == 0
    assert "nothing (up to date)" in capsys.readouterr().out
    # Without the owner's grant, the preflight names it.
    assert main(["check", "--database-url", runtime]) == 1
    assert "GRANT EXECUTE ON FUNCTION realtime.eval_policy_sandboxed" in capsys.readouterr().out
    _exec(owner, doc_sql()["relay_owner"])

    # The DBA's table, enabled, with a policy that only Postgres can evaluate.
    _exec(pg_dsn, "create table public.items (id int primary key, note text)")
    _exec(pg_dsn, "select realtime.enable_table('public.items')")
    _exec(pg_dsn, "select realtime.create_policy('public.items', 'long notes', 'length(note) > 2')")

    port = _free_port()
    log_path = tmp_path / "relay.log"
    env = relay_env(runtime, port, SECRET, "roles_slot", {"RELAY_PUBLICATION_POLL": "0.2"})
    with log_path.open("wb") as logf:
        proc = spawn_relay(env, logf)  # no --no-migrate: serve checks, finds nothing pending
        try:
            await wait_streaming(port, proc, lambda: log_tail(log_path))
            relay = SimpleNamespace(port=port)
            async with PhoenixClient.connect(relay, token("authenticated", sub="u1")) as client:  # type: ignore[arg-type]
                await client.join("items", [{"event": "INSERT", "schema": "public", "table": "items"}])
                await asyncio.sleep(2.5)  # the policy poll (RELAY_POLICY_POLL, 2 s) has loaded it
                await asyncio.to_thread(
                    _exec, pg_dsn, "insert into public.items values (1, 'no'), (2, 'long')"
                )
                records: list[Any] = []
                deadline = time.monotonic() + 10
                while len(records) < 1 and time.monotonic() < deadline:
                    for m in await client.collect(0.5):
                        if m["event"] == "postgres_changes":
                            records.append(m["payload"]["data"])
                records += [
                    m["payload"]["data"]
                    for m in await client.collect(1.0)
                    if m["event"] == "postgres_changes"
                ]
                # A snapshot on join reads the table as the runtime role: refused clearly until
                # the grant docs/roles.md names, then served (the policy still applies).
                snap = [{"event": "*", "schema": "public", "table": "items", "snapshot": True}]
                ends = []
                for _ in range(2):
                    await client.join("snap", snap)
                    ends.append(
                        await client.recv_until(
                            lambda m: str(m["payload"].get("code", "")).startswith("snapshot_")
                        )
                    )
                    _exec(pg_dsn, "GRANT SELECT ON public.items TO relay_runtime")
                rows = [
                    m["payload"]["data"]["record"]
                    for m in client.inbox
                    if m["event"] == "postgres_changes" and m["payload"]["data"]["type"] == "SNAPSHOT"
                ]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert [(r["record"], r.get("errors")) for r in records] == [({"id": 2, "note": "long"}, None)], log_tail(
        log_path
    )
    refused, served = (e["payload"] for e in ends)
    assert refused["code"] == "snapshot_failed", refused
    assert "permission denied for table items" in refused["message"]
    assert served["code"] == "snapshot_complete" and rows == [{"id": 2, "note": "long"}], (served, rows)


def test_owner_without_the_evaluation_role_is_told_the_grant(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step 1 of the doc skipped: migration 0007 stops with the one GRANT that fixes it."""
    role = "relay_owner_" + uuid.uuid4().hex[:6]
    _exec(
        pg_dsn,
        "do $$ begin if not exists (select from pg_roles where rolname = 'realtime_policy_eval') then "
        "create role realtime_policy_eval nologin noinherit; end if; end $$",
    )
    _exec(pg_dsn, f"create role {role} login password 'pw'")
    try:
        _exec(pg_dsn, f"grant create on database {urlsplit(pg_dsn).path.lstrip('/')} to {role}")
        assert main(["migrate", "--database-url", _as(pg_dsn, role, "pw")]) == 1
        # the failure is one line; what comes before it is the migrate log (INFO lines)
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert "Traceback" not in err and all(" INFO " in ln for ln in lines[:-1]), err
        assert lines[-1] + "\n" == (
            f"relay: role {role} may not apply migration 0007_policy_sandbox.sql (role {role} is not a "
            f"member of realtime_policy_eval): as a superuser run: GRANT realtime_policy_eval TO {role} "
            "(docs/roles.md)\n"
        )
        # Once granted, the same command completes the schema.
        _exec(pg_dsn, f"grant realtime_policy_eval to {role}")
        assert main(["migrate", "--database-url", _as(pg_dsn, role, "pw")]) == 0
        assert "0007_policy_sandbox.sql" in capsys.readouterr().out
    finally:
        _exec(pg_dsn, f"drop owned by {role} cascade")
        _exec(pg_dsn, f"drop role {role}")
