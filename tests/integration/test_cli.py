"""The ``relay`` command line as a user runs it: subprocesses against a real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jwt
import psycopg
import pytest

from relay.config import Config
from relay.postgres.identity import read_identity
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.relay import SECRET, PhoenixClient

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


def relay_cmds(runs: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess[str]]:
    """``relay_cmd(*args, env=env)`` for each run, several at a time; results in ``runs`` order.

    Why: the failure tests start a dozen independent ``relay`` processes each, and most of each
    one's time is the interpreter starting and importing; one after another they made test_cli
    the suite's slowest file.  Each run is still its own process with its own environment.
    """
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda run: relay_cmd(*run[0], env=run[1]), runs))


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
    # positions as the relay's own slot would give them (a client can resume from one): the
    # stream id of the relay's slot, not of tail's temporary one
    relay_stream = asyncio.run(read_identity(pg_dsn, Config().slot)).id
    for line in lines:
        assert re.fullmatch(rf"{relay_stream}/[0-9A-F]{{16}}:[0-9A-F]{{8}}", line["position"]), (
            relay_stream,
            line["position"],
        )
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
    async with PhoenixClient.connect(port, mint(SECRET, role="service_role")) as c:
        reply = await c.join("o", [{"event": "*", "schema": "public", "table": "orders"}])
        assert reply["payload"]["status"] == "ok", reply
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into public.orders values (1, 9.5)")
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
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
    parts = urlsplit(url)  # the banner's ws://127.0.0.1:<port>/realtime/v1
    assert parts.port is not None, url
    async with PhoenixClient.connect(parts.port, tok, path=parts.path + "/websocket") as c:
        reply = await c.join("d", [{"event": "*", "schema": "public", "table": "bookings"}])
        assert reply["payload"]["status"] == "ok", reply
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=30)
        return dict(m["payload"]["data"])


# -- failures a newcomer hits: one or two lines with the fix, and never a secret ---------------

PASSWORD = "pw-" + secrets.token_hex(8)  # unique: any occurrence in output is a leak
STRONG_SECRET = "jwt-secret-" + secrets.token_hex(16)


def _with_password(
    dsn: str, password: str = PASSWORD, *, user: str | None = None, db: str | None = None
) -> str:
    """``dsn`` with a password (the throwaway cluster trusts any), optionally another user or db."""
    u = urlsplit(dsn)
    netloc = f"{user or u.username}:{password}@{u.hostname}:{u.port}"
    return urlunsplit((u.scheme, netloc, f"/{db}" if db else u.path, u.query, u.fragment))


def _assert_short_and_clean(res: subprocess.CompletedProcess[str], *, secrets_: tuple[str, ...]) -> str:
    out = res.stdout + res.stderr
    # INFO progress lines before the failure (policies loaded, ...) are not part of the error
    lines = [ln for ln in out.splitlines() if ln.strip() and not re.match(r"\d{4}-\d\d-\d\d \S+ INFO ", ln)]
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert 1 <= len(lines) <= 2, f"{len(lines)} lines:\n{out}"
    for s in secrets_:
        assert s not in out, f"secret {s!r} leaked:\n{out}"
    return out


BAD_DSNS = {
    "refused": (f"postgresql://app:{PASSWORD}@127.0.0.1:{{port}}/db", "connection refused"),
    "unknown host": (f"postgresql://app:{PASSWORD}@no-such-host.invalid:5432/db", "not found"),
    "scheme typo": (f"postgress://app:{PASSWORD}@127.0.0.1:5432/db", "scheme 'postgress'"),
    "keyword form": (f"host=127.0.0.1 user=app password={PASSWORD}", "not a URL"),
    "bad port": (f"postgresql://app:{PASSWORD}@127.0.0.1:54x32/db", "invalid host or port"),
}
COMMANDS = [["migrate"], ["migrate", "--demo"], ["serve"], ["check"], ["tables", "list"], ["tail"], ["demo"]]


@pytest.mark.parametrize("kind", list(BAD_DSNS))
def test_bad_database_urls_fail_in_two_lines_without_the_password(kind: str) -> None:
    template, expect = BAD_DSNS[kind]
    dsn = template.format(port=_free_port())
    # every command with the URL in the environment; the --database-url flag on two of them
    runs = [(cmd, "env") for cmd in COMMANDS] + [(["migrate"], "flag"), (["tables", "list"], "flag")]
    argv = [[*cmd, "--database-url", dsn] if how == "flag" else cmd for cmd, how in runs]
    envs = [
        {"RELAY_JWT_SECRET": STRONG_SECRET, "RELAY_DATABASE_URL": dsn if how == "env" else ""}
        for _, how in runs
    ]
    # at DEBUG the traceback is logged too (that is what DEBUG is for), still without the password
    argv.append(["--log-level", "DEBUG", "check"])
    envs.append({"RELAY_DATABASE_URL": dsn})
    *results, debug = relay_cmds(list(zip(argv, envs, strict=True)))
    for args, res in zip(argv[:-1], results, strict=True):
        out = _assert_short_and_clean(res, secrets_=(PASSWORD, STRONG_SECRET))
        assert expect in out, f"relay {' '.join(args)}:\n{out}"
        assert "RELAY_DATABASE_URL" in out or "postgresql://" in out, out  # says what to fix
    out = debug.stdout + debug.stderr
    assert debug.returncode != 0 and expect in out and PASSWORD not in out, out


def test_database_failures_against_a_real_server(pg_dsn: str) -> None:
    env = {"RELAY_JWT_SECRET": STRONG_SECRET}
    cases = [
        (_with_password(pg_dsn, db="no_such_db"), "no database 'no_such_db'"),
        (_with_password(pg_dsn, user="no_such_role"), "no role 'no_such_role'"),
    ]
    runs = [
        (cmd, {**env, "RELAY_DATABASE_URL": dsn})
        for dsn, _ in cases
        for cmd in (["migrate"], ["check"], ["serve"], ["tables", "list"], ["tail"])
    ]
    expects = [expect for _, expect in cases for _ in range(5)]
    for (cmd, _), expect, res in zip(runs, expects, relay_cmds(runs), strict=True):
        assert expect in _assert_short_and_clean(res, secrets_=(PASSWORD, STRONG_SECRET)), cmd


def test_missing_jwt_secret_and_weak_secret() -> None:
    res = relay_cmd(
        "serve", env={"RELAY_DATABASE_URL": "postgresql://u@127.0.0.1:1/d", "RELAY_JWT_SECRET": ""}
    )
    assert res.returncode == 2 and "RELAY_JWT_SECRET" in _assert_short_and_clean(res, secrets_=())
    weak = "weak-" + secrets.token_hex(4)  # 13 bytes
    res = relay_cmd("token", env={"RELAY_JWT_SECRET": weak})
    assert res.returncode == 0 and weak not in res.stdout + res.stderr
    assert (
        [ln for ln in res.stderr.splitlines() if ln.strip()]
        == [ln for ln in res.stderr.splitlines() if "RELAY_JWT_SECRET is 13 bytes; use at least 32" in ln]
        != []
    ), res.stderr  # exactly our one line; PyJWT's multi-line warning is not shown
    dsn = f"postgresql://app:{PASSWORD}@127.0.0.1:{_free_port()}/db"
    res = relay_cmd("serve", env={"RELAY_JWT_SECRET": weak, "RELAY_DATABASE_URL": dsn})
    out = res.stdout + res.stderr
    assert "use at least 32" in out and "connection refused" in out and res.returncode == 1, out
    assert weak not in out and PASSWORD not in out and "Traceback" not in out
    strong = relay_cmd("token", env={"RELAY_JWT_SECRET": STRONG_SECRET}, check=True)
    assert strong.stderr == ""


def test_version_and_log_level_anywhere() -> None:
    from importlib.metadata import version

    env = {"RELAY_JWT_SECRET": STRONG_SECRET}
    no_env: dict[str, str] = {}
    runs: list[tuple[list[str], dict[str, str]]] = [
        (["--version"], no_env),
        (["--log-level", "debug", "token"], env),
        (["token", "--log-level", "WARNING"], env),
        (["tables", "list", "--log-level", "ERROR", "--help"], no_env),
        (["--log-level", "LOUD", "token"], env),
        (["token", "--log-level", "LOUD"], env),
        (["token"], {**env, "RELAY_LOG_LEVEL": "LOUD"}),
        (["serve", "--no-such-flag"], no_env),
    ]
    res_version, *fine, loud1, loud2, loud_env, bad_flag = relay_cmds(runs)
    for res in (res_version, *fine):
        assert res.returncode == 0, f"{res.args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    assert res_version.stdout.strip() == f"relay {version('pg-change-relay')}"
    for res in (loud1, loud2):
        assert res.returncode == 2 and "'LOUD' is not a log level" in _assert_short_and_clean(
            res, secrets_=()
        )
    assert loud_env.returncode == 2 and "RELAY_LOG_LEVEL" in _assert_short_and_clean(loud_env, secrets_=())
    assert bad_flag.returncode == 2 and "--no-such-flag" in _assert_short_and_clean(bad_flag, secrets_=())


def test_serve_on_a_busy_port_is_two_lines(pg_dsn: str) -> None:
    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            "RELAY_DATABASE_URL": _with_password(pg_dsn),
            "RELAY_JWT_SECRET": STRONG_SECRET,
            "RELAY_PORT": str(port),
            "RELAY_SLOT": "busy_port",
            # serve logs its preflight warnings (e.g. unbounded WAL retention on this test
            # cluster) before it binds; the failure itself must still be two lines
            "RELAY_LOG_LEVEL": "ERROR",
        }
        res = relay_cmd("serve", env=env)
    out = _assert_short_and_clean(res, secrets_=(PASSWORD, STRONG_SECRET))
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in out
    assert "--port" in out


def test_serve_logs_no_secret_with_bad_tokens(pg_dsn: str, tmp_path: Path) -> None:
    """A DEBUG-level relay, clients with bad tokens: neither tokens nor keys appear in its log."""
    from relay.core.tokens import mint

    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RELAY_DATABASE_URL": _with_password(pg_dsn),
        "RELAY_JWT_SECRET": STRONG_SECRET,
        "RELAY_PORT": str(port),
        "RELAY_SLOT": "bad_tokens",
        "RELAY_LOG_LEVEL": "DEBUG",
    }
    bad_tokens = [
        mint("another-secret-" + secrets.token_hex(16), role="service_role", ttl=60),  # wrong key
        mint(STRONG_SECRET, role="service_role", ttl=-120),  # expired
        "eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(32),  # garbage
        "not-a-jwt-" + secrets.token_hex(8),
    ]
    log_path = tmp_path / "relay.log"
    with log_path.open("w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve"], stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    try:
        refusals = asyncio.run(_connect_with_bad_tokens(port, bad_tokens))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = log_path.read_text()
    assert "relay listening" in out and refusals, out
    for s in (PASSWORD, STRONG_SECRET, *bad_tokens, *(t.split(".")[-1] for t in bad_tokens if "." in t)):
        assert s not in out, f"{s!r} leaked into the relay's log:\n{out}"


async def _connect_with_bad_tokens(port: int, tokens: list[str]) -> list[str]:
    """Handshakes and joins with each bad token; what the relay answered."""
    from relay.core.tokens import mint

    base = f"http://127.0.0.1:{port}"
    answers: list[str] = []
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with s.get(f"{base}/health") as r:
                    if (await r.json())["status"] == "ok":
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("relay serve did not become healthy")
            await asyncio.sleep(0.2)
        for tok in tokens:
            try:
                async with s.ws_connect(f"{base}/realtime/v1/websocket", params={"apikey": tok}) as ws:
                    await ws.receive(timeout=2)
                    answers.append(f"closed {ws.close_code}")
            except aiohttp.WSServerHandshakeError as exc:
                answers.append(f"HTTP {exc.status}")
            except TimeoutError:
                answers.append("accepted")
        good = mint(STRONG_SECRET, role="service_role", ttl=60)
        async with s.ws_connect(f"{base}/realtime/v1/websocket", params={"apikey": good}) as ws:
            for i, tok in enumerate(tokens):  # a bad token inside a join, then as access_token
                join = {"config": {"postgres_changes": []}, "access_token": tok}
                await ws.send_json(
                    {"topic": f"realtime:t{i}", "event": "phx_join", "ref": str(i), "payload": join}
                )
                reply = await ws.receive_json(timeout=5)
                answers.append(str(reply["payload"].get("status")))
                await ws.send_json(
                    {
                        "topic": f"realtime:t{i}",
                        "event": "access_token",
                        "ref": f"a{i}",
                        "payload": {"access_token": tok},
                    }
                )
            await asyncio.sleep(0.5)
    return answers
