"""The ``relay`` command line as a user runs it: subprocesses against a real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import psycopg
import pytest

from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.relay import SECRET

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parents[2]


def relay_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    res = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"relay {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["serve"],
        ["migrate"],
        ["demo"],
        ["token"],
        ["tables"],
        ["tables", "enable"],
        ["tables", "list"],
        ["tail"],
        ["check"],
    ],
)
def test_help_everywhere(cmd: list[str]) -> None:
    res = relay_cmd(*cmd, "--help", check=True)
    assert "usage: relay" in res.stdout


def test_token_command() -> None:
    res = relay_cmd(
        "token",
        "--role",
        "authenticated",
        "--sub",
        "u1",
        "--claim",
        "branch_id=7",
        "--claim",
        "branches=[1,2]",
        "--claim",
        "name=bob",
        "--ttl",
        "60",
        env={"RELAY_JWT_SECRET": SECRET},
        check=True,
    )
    claims = jwt.decode(res.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["role"] == "authenticated" and claims["sub"] == "u1"
    assert claims["branch_id"] == 7 and claims["branches"] == [1, 2] and claims["name"] == "bob"
    assert 55 <= claims["exp"] - time.time() <= 61
    bad = relay_cmd("token", "--claim", "novalue", env={"RELAY_JWT_SECRET": SECRET})
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    nosecret = relay_cmd("token", env={"RELAY_JWT_SECRET": ""})
    assert nosecret.returncode == 2 and "RELAY_JWT_SECRET" in nosecret.stderr


def test_migrate_tables_check(pg_dsn: str) -> None:
    env = {"RELAY_DATABASE_URL": pg_dsn}
    out = relay_cmd("migrate", env=env, check=True).stdout
    assert "applied" in out
    assert "nothing" in relay_cmd("migrate", env=env, check=True).stdout
    res = relay_cmd("check", env=env)  # a fresh database: a warning, not a failure
    assert res.returncode == 0 and "[warn] tables" in res.stdout and "no tables enabled" in res.stdout
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("create table public.things (id int primary key, v text)")
        conn.execute("create table public.nopk (v text)")
    relay_cmd("tables", "enable", "public.things", env=env, check=True)
    listed = relay_cmd("tables", "list", env=env, check=True).stdout
    assert "public.things" in listed and "full" in listed
    bad = relay_cmd("tables", "enable", "public.nopk", env=env)
    assert bad.returncode == 1 and "no primary key" in bad.stderr
    missing = relay_cmd("tables", "enable", "public.nope", env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    res = relay_cmd("check", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    relay_cmd("tables", "disable", "public.things", env=env, check=True)
    assert "public.things" not in relay_cmd("tables", "list", env=env, check=True).stdout


def test_serve_without_database_is_a_clear_error() -> None:
    res = relay_cmd("serve", env={"RELAY_DATABASE_URL": "", "RELAY_JWT_SECRET": SECRET})
    assert res.returncode == 2 and "RELAY_DATABASE_URL" in res.stderr


def test_tail_prints_json_lines(pg_dsn: str) -> None:
    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DATABASE_URL": pg_dsn}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "tail", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        # keep writing until tail has attached its temporary slot and printed two changes
        while proc.poll() is None and time.monotonic() < deadline:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(
                    "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'x', 'tail')"
                )
            time.sleep(0.3)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == 2, err
    assert lines[0]["table"] == "alerts" and lines[0]["type"] == "INSERT" and "position" in lines[0]
    with psycopg.connect(pg_dsn) as conn:  # the temporary slot is gone with its connection
        assert conn.execute(
            "select count(*) from pg_replication_slots where slot_name like 'relay_tail_%'"
        ).fetchone() == (0,)


def test_serve_against_existing_database(pg_dsn: str) -> None:
    """`relay migrate` + `relay serve` on a given RELAY_DATABASE_URL, then enable any table."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("create table public.orders (id int primary key, total numeric)")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RELAY_DATABASE_URL": pg_dsn,
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_PORT": str(_free_port()),
        "RELAY_SLOT": "serve_test",
    }
    relay_cmd("migrate", env=env, check=True)
    relay_cmd("tables", "enable", "public.orders", env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        got = asyncio.run(_subscribe_and_write(int(env["RELAY_PORT"]), pg_dsn))
        assert got["record"] == {"id": 1, "total": 9.5}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out


def test_readme_quickstart_on_a_fresh_database(pg_dsn: str) -> None:
    """`relay migrate && relay check && relay serve` with no table enabled yet: it serves, and
    the first row after `relay tables enable` arrives."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RELAY_DATABASE_URL": pg_dsn,
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_PORT": str(_free_port()),
        "RELAY_SLOT": "fresh_test",
    }
    relay_cmd("migrate", env=env, check=True)
    relay_cmd("check", env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        got = asyncio.run(_enable_subscribe_and_write(int(env["RELAY_PORT"]), pg_dsn, env))
        assert got["record"] == {"id": 1, "total": 9.5}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "no tables enabled" in out  # serve said why nothing streams yet


async def _enable_subscribe_and_write(port: int, dsn: str, env: dict[str, str]) -> dict[str, Any]:
    """Once the relay streams (with no table), create and enable one, then subscribe and write."""
    from tests.support.relay_process import wait_streaming

    health = await wait_streaming(port, None, lambda: "")
    assert health["tables"] == [] and health["streaming"] is True

    def enable() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table public.orders (id int primary key, total numeric)")
        relay_cmd("tables", "enable", "public.orders", env=env, check=True)

    await asyncio.to_thread(enable)
    return await _subscribe_and_write(port, dsn)


def _free_port() -> int:
    from relay.postgres.cluster import free_port

    return free_port()


async def _subscribe_and_write(port: int, dsn: str) -> dict[str, Any]:
    from relay.core.tokens import mint

    url = f"http://127.0.0.1:{port}/realtime/v1/websocket"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{port}/health") as r:
                    if (await r.json())["status"] == "ok":
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("relay serve did not become healthy")
            await asyncio.sleep(0.2)
        async with s.ws_connect(url, params={"apikey": mint(SECRET, role="service_role")}) as ws:
            await ws.send_json(
                {
                    "topic": "realtime:o",
                    "event": "phx_join",
                    "ref": "1",
                    "payload": {
                        "config": {
                            "postgres_changes": [{"event": "*", "schema": "public", "table": "orders"}]
                        }
                    },
                }
            )
            reply = await ws.receive_json(timeout=10)
            assert reply["payload"]["status"] == "ok", reply
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("insert into public.orders values (1, 9.5)")
            while True:
                m = await ws.receive_json(timeout=10)
                if m["event"] == "postgres_changes":
                    return dict(m["payload"]["data"])


def test_demo_command_end_to_end() -> None:
    """`relay demo` with no database: throwaway Postgres, writer, banner; Ctrl-C cleans up."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DATABASE_URL": "", "RELAY_PORT": str(_free_port())}
    env.pop("RELAY_JWT_SECRET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--rate", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 90
        while "service token" not in banner or "Ctrl-C" not in banner:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"no banner; stderr:\n{proc.stderr.read() if proc.stderr else ''}")
            banner += line
        url = re.search(r"WebSocket URL : (\S+)", banner)
        tok = re.search(r"service token : (\S+)", banner)
        dsn = re.search(r"Postgres      : (\S+)", banner)
        assert url and tok and dsn
        got = asyncio.run(_first_booking_change(url.group(1), tok.group(1)))
        assert got["table"] in {"bookings"} and got["type"] in {"INSERT", "UPDATE", "DELETE"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    with pytest.raises(psycopg.OperationalError):  # the throwaway Postgres is gone
        psycopg.connect(dsn.group(1), connect_timeout=2)


async def _first_booking_change(url: str, tok: str) -> dict[str, Any]:
    ws_url = url.replace("ws://", "http://") + "/websocket"
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(ws_url, params={"apikey": tok, "vsn": "1.0.0"}) as ws,
    ):
        await ws.send_json(
            {
                "topic": "realtime:d",
                "event": "phx_join",
                "ref": "1",
                "payload": {
                    "config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "bookings"}]}
                },
            }
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = await ws.receive_json(timeout=30)
            if m["event"] == "postgres_changes":
                return dict(m["payload"]["data"])
    raise TimeoutError("no change from the demo writer")
