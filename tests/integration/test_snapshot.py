"""Snapshot on join (issue 18): a binding's rows at one consistent point, then its live changes.

Real Postgres, real relay, raw WebSockets (the PhoenixClient).  The alerts demo table is used
where policies matter (branch members, or company-wide rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from relay.service import RunningRelay
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _alerts(dsn: str, n: int, branch: int | None = 1) -> list[int]:
    rows = _exec(
        dsn,
        "insert into alerts (branch_id, severity, kind, title) "
        "select %s, 'info', 'test', 'alert ' || g from generate_series(1, %s) g returning id",
        (branch, n),
    )
    return [int(r[0]) for r in rows]


def _binding(table: str = "alerts", **extra: Any) -> dict[str, Any]:
    return {"event": "*", "schema": "public", "table": table, "snapshot": True, **extra}


async def _snapshot(
    c: PhoenixClient, channel: str, bindings: list[dict[str, Any]], tok: str | None = None, **config: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Join with snapshot bindings: (join reply, frames up to the last marker or error, markers)."""
    reply = await c.join(channel, bindings, access_token=tok, **config)
    assert reply["payload"]["status"] == "ok", reply
    wanted = sum(1 for b in bindings if b.get("snapshot"))
    frames: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    while len(ends) < wanted:
        m = await c.recv(15)
        frames.append(m)
        p = m["payload"]
        if m["event"] == "system" and str(p.get("code", "")).startswith("snapshot_"):
            ends.append(p)
    return reply, frames, ends


async def _policy_loaded(relay: RunningRelay, name: str, timeout: float = 10.0) -> None:
    """Until the relay's policy store has loaded policy ``name`` on alerts.

    Why not a fixed sleep of one poll interval: the store reloads as soon as the stream carries
    the policy change, usually well before the interval, and a busy machine can take longer.
    """
    deadline = time.monotonic() + timeout
    while name not in {cp.policy.name for cp in relay.server.authorizer.policies("public", "alerts")}:
        assert time.monotonic() < deadline, f"policy {name!r} not loaded after {timeout} s"
        await asyncio.sleep(0.05)


def _rows(frames: list[dict[str, Any]], kind: str = "SNAPSHOT") -> list[dict[str, Any]]:
    return [
        m["payload"]["data"]
        for m in frames
        if m["event"] == "postgres_changes" and m["payload"]["data"]["type"] == kind
    ]


async def test_rows_then_marker_then_live(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        ids = await asyncio.to_thread(_alerts, pg_dsn, 5)
        async with PhoenixClient.connect(relay) as c:
            reply, frames, ends = await _snapshot(c, "snap", [_binding()])
            bid = reply["payload"]["response"]["postgres_changes"][0]["id"]
            rows = _rows(frames)
            assert sorted(r["record"]["id"] for r in rows) == ids
            assert all(r["commit_timestamp"] == rows[0]["commit_timestamp"] for r in rows)
            assert "position" not in rows[0] and "old_record" not in rows[0]
            end = ends[0]
            assert end["status"] == "ok" and end["code"] == "snapshot_complete"
            assert end["id"] == bid and end["rows"] == 5 and end["message"] == "snapshot complete: 5 rows"
            new = await asyncio.to_thread(_alerts, pg_dsn, 1)
            live = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            data = live["payload"]["data"]
            assert data["type"] == "INSERT" and data["record"]["id"] == new[0]
            assert data["position"] > end["position"]
            stats = relay.server.snapshots.stats()
            assert stats == {"started": 1, "completed": 1, "failed": 0, "running": 0}


# -- consistency under a concurrent writer ---------------------------------------------------


def _writer(dsn: str, stop: threading.Event, seed: int) -> int:
    """Insert, update (moving rows between branches and statuses) and delete alerts until
    ``stop``; some transactions do several of these.  Returns how many transactions committed."""
    rnd = random.Random(seed)
    done = 0
    with psycopg.connect(dsn, autocommit=False) as conn:
        while not stop.is_set():
            for _ in range(rnd.randint(1, 3)):
                op = rnd.random()
                branch = rnd.choice([1, 2, None])
                if op < 0.4:
                    conn.execute(
                        "insert into alerts (branch_id, severity, kind, title) values (%s, %s, 'w', %s)",
                        (branch, rnd.choice(["info", "warning", "critical"]), f"t{rnd.random():.6f}"),
                    )
                elif op < 0.8:
                    conn.execute(
                        "update alerts set status = %s, branch_id = %s, title = %s "
                        "where id = (select id from alerts order by random() limit 1)",
                        (rnd.choice(["open", "acknowledged", "resolved"]), branch, f"u{rnd.random():.6f}"),
                    )
                else:
                    conn.execute(
                        "delete from alerts where id = (select id from alerts order by random() limit 1)"
                    )
            conn.commit()
            done += 1
    return done


_SUBSCRIBERS: list[tuple[dict[str, Any], str | None, str]] = [
    ({}, None, "true"),
    ({"role": "authenticated", "branch_id": 1}, None, "branch_id = 1 or branch_id is null"),
    (
        {"role": "authenticated", "branch_id": 2},
        "status=eq.open",
        "(branch_id = 2 or branch_id is null) and status = 'open'",
    ),
    ({}, "severity=in.(info,warning)", "severity in ('info', 'warning')"),
    ({"role": "authenticated", "branch_id": 1, "user_role": "admin"}, "branch_id=eq.2", "branch_id = 2"),
]


class _Replica:
    """A client's copy of the rows it may see: snapshot rows, then the changes after the marker."""

    def __init__(self, strict: bool) -> None:
        # strict (no filter): every change after the marker must apply to exactly the state the
        # replica holds, so a change the snapshot already contained is caught, not re-applied
        self.strict = strict
        self.rows: dict[int, dict[str, Any]] = {}
        self.marker: dict[str, Any] | None = None
        self.last = ""
        self.seen: set[int] = set()

    def apply(self, m: dict[str, Any]) -> None:
        p = m["payload"]
        if m["event"] == "system" and p.get("code") == "snapshot_complete":
            self.marker = p
            self.last = p["position"]
            return
        if m["event"] != "postgres_changes":
            return
        data = p["data"]
        if data["type"] == "SNAPSHOT":
            assert self.marker is None, "a snapshot row after the marker"
            self.rows[data["record"]["id"]] = data["record"]
            return
        assert self.marker is not None, f"a change before the marker: {data}"
        assert data["position"] > self.last, (data["position"], self.last)
        self.last = data["position"]
        if self.strict:
            old, key = data.get("old_record"), (data.get("record") or data.get("old_record"))["id"]
            if data["type"] == "INSERT" or (data["type"] == "UPDATE" and set(old) == {"id"}):
                assert key not in self.rows, f"already held: {data}"  # an insert or a move into view
            else:
                assert _shape({key: self.rows[key]}) == _shape({key: old}), f"not the held state: {data}"
        if data["type"] == "DELETE":
            self.rows.pop(data["old_record"]["id"], None)
        else:
            self.rows[data["record"]["id"]] = data["record"]
            self.seen.add(data["record"]["id"])


async def _follow(c: PhoenixClient, replica: _Replica, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            m = await c.recv(0.2)
        except TimeoutError:
            continue
        replica.apply(m)


def _expected(dsn: str, where: str) -> dict[int, tuple[Any, ...]]:
    rows = _exec(dsn, f"select id, title, status, branch_id, severity from alerts where {where}")
    return {int(r[0]): tuple(r[1:]) for r in rows}


def _shape(rows: dict[int, dict[str, Any]]) -> dict[int, tuple[Any, ...]]:
    return {k: (r["title"], r["status"], r["branch_id"], r["severity"]) for k, r in rows.items()}


async def test_snapshot_then_changes_equal_the_table_under_a_concurrent_writer(pg_dsn: str) -> None:
    """Clients with different claims and filters join at different moments of a busy writer;
    each one's snapshot plus the changes after its marker equals the table as its filter and
    policies show it, once the writer has stopped and a last row has reached everyone."""
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(_alerts, pg_dsn, 40, 1)
        await asyncio.to_thread(_alerts, pg_dsn, 40, 2)
        await asyncio.to_thread(_alerts, pg_dsn, 20, None)
        stop_writer = threading.Event()
        writer = asyncio.create_task(asyncio.to_thread(_writer, pg_dsn, stop_writer, 18))
        stop = asyncio.Event()
        replicas: list[_Replica] = []
        tasks: list[asyncio.Task[None]] = []
        async with contextlib.AsyncExitStack() as stack:
            for i, (claims, flt, _) in enumerate(_SUBSCRIBERS):
                await asyncio.sleep(0.25 + 0.1 * i)
                tok = token(**claims) if claims else token()
                c = await stack.enter_async_context(PhoenixClient.connect(relay, tok))
                binding = _binding() if flt is None else _binding(filter=flt)
                reply = await c.join("s", [binding])
                assert reply["payload"]["status"] == "ok", reply
                replica = _Replica(strict=flt is None)
                replicas.append(replica)
                tasks.append(asyncio.create_task(_follow(c, replica, stop)))
            await asyncio.sleep(1.0)
            stop_writer.set()
            assert await writer > 10
            # one last transaction every subscriber sees a row of (commit order: all before it too)
            last = {
                int(r[0])
                for r in await asyncio.to_thread(
                    _exec,
                    pg_dsn,
                    "insert into alerts (branch_id, severity, kind, title, status) "
                    "values (null, 'info', 'last', 'last', 'open'), (2, 'info', 'last', 'last', 'open') "
                    "returning id",
                )
            }
            deadline = time.monotonic() + 15
            while not all(last & r.seen for r in replicas) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*tasks)
        for replica, (claims, flt, where) in zip(replicas, _SUBSCRIBERS, strict=True):
            assert replica.marker is not None, (claims, flt)
            assert last & replica.seen, (claims, flt)
            assert _shape(replica.rows) == _expected(pg_dsn, where), (claims, flt)


# -- same rules as live delivery -------------------------------------------------------------

_TYPES_DDL = """
create type snap_mood as enum ('ok', 'sad');
create table public.snap_types (
    id bigint primary key, i2 int2, i4 int4, n numeric, nn numeric, f8 float8, f4 float4,
    inf float8, b bool, t text, vc varchar(10), ch char(5), j json, jb jsonb, ia int[], ta text[],
    tz timestamptz, ts timestamp, d date, tm time, iv interval, by bytea, u uuid, m snap_mood
);
select realtime.enable_table('public.snap_types');
"""

_TYPES_ROWS = """
insert into public.snap_types values
 (1, -2, 40000, 123456789012345678901234.5678, 'NaN', 1.5, 0.1, 'Infinity', true,
  'quote " and ünïcode', 'short', 'ab', '{"a": [1, 2.50], "b": null}', '{"z": 1, "a": [true]}',
  '{1,2,3}', '{"a b",NULL,"c,d"}', '2026-11-03 09:32:55.123+02', '2026-11-03 09:32:55',
  '2026-11-03', '13:14:15', '1 day 02:03:04', '\\x0102ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'sad'),
 (2, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
  null, null, null, null, null, null, null)
"""


async def test_snapshot_rows_have_the_value_shapes_of_live_inserts(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(_exec, pg_dsn, _TYPES_DDL)
        binding = {"event": "*", "schema": "public", "table": "snap_types"}
        async with PhoenixClient.connect(relay) as live:
            deadline = time.monotonic() + 10
            while True:  # the table is streamed once the relay has seen it enabled
                reply = await live.join("types", [binding])
                if reply["payload"]["status"] == "ok" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert reply["payload"]["status"] == "ok", reply
            await asyncio.sleep(1.0)
            await asyncio.to_thread(_exec, pg_dsn, _TYPES_ROWS)
            inserts: dict[int, dict[str, Any]] = {}
            while len(inserts) < 2:
                m = await live.recv_until(lambda m: m["event"] == "postgres_changes")
                inserts[m["payload"]["data"]["record"]["id"]] = m["payload"]["data"]
        async with PhoenixClient.connect(relay) as c:
            _, frames, ends = await _snapshot(c, "snap", [dict(binding, snapshot=True)])
            assert ends[0]["rows"] == 2
            for row in _rows(frames):
                live_row = inserts[row["record"]["id"]]
                assert row["record"] == live_row["record"]
                assert row["columns"] == live_row["columns"]
                assert row["errors"] == live_row["errors"]


async def test_filter_policies_and_select_restrict_the_snapshot(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        b1 = await asyncio.to_thread(_alerts, pg_dsn, 4, 1)
        await asyncio.to_thread(_alerts, pg_dsn, 3, 2)
        company = await asyncio.to_thread(_alerts, pg_dsn, 2, None)
        await asyncio.to_thread(
            _exec, pg_dsn, "update alerts set status = 'resolved' where id = %s", (b1[0],)
        )
        branch1 = token("authenticated", branch_id=1)
        async with PhoenixClient.connect(relay, branch1) as c:
            # policy: branch 1 and company-wide rows; filter: open ones; select: title only
            binding = _binding(filter="status=eq.open", select=["title"])
            _, frames, ends = await _snapshot(c, "snap", [binding], tok=branch1)
            rows = _rows(frames)
            assert sorted(r["record"]["id"] for r in rows) == sorted(b1[1:] + company)
            assert ends[0]["rows"] == len(rows)
            assert all(set(r["record"]) == {"id", "title"} for r in rows)
            assert [c["name"] for c in rows[0]["columns"]] == ["id", "title"]
        anon = token("anon")
        async with PhoenixClient.connect(relay, anon) as c:  # no policy for anon: no rows
            _, frames, ends = await _snapshot(c, "snap", [_binding()], tok=anon)
            assert _rows(frames) == [] and ends[0]["rows"] == 0 and ends[0]["code"] == "snapshot_complete"


async def test_a_policy_evaluated_in_postgres_restricts_the_snapshot(pg_dsn: str) -> None:
    """A policy the relay cannot evaluate itself is asked of Postgres per row, as for live rows."""
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "select realtime.create_policy('public.alerts', 'auditors', "
            "$e$pg_catalog.length(title) %% 2 = 0$e$, '{auditor}')",
        )
        await asyncio.to_thread(_alerts, pg_dsn, 12, 1)  # titles 'alert 1' .. 'alert 12'
        await _policy_loaded(relay, "auditors")
        auditor = token("auditor")
        async with PhoenixClient.connect(relay, auditor) as c:
            _, frames, _ = await _snapshot(c, "snap", [_binding()], tok=auditor)
            titles = sorted(r["record"]["title"] for r in _rows(frames))
            assert titles == sorted(f"alert {i}" for i in range(10, 13)), titles
            assert relay.server.evaluator.queries > 0


async def test_row_limit(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, snapshot_max_rows=3) as relay:
        await asyncio.to_thread(_alerts, pg_dsn, 5)
        async with PhoenixClient.connect(relay) as c:
            reply, frames, ends = await _snapshot(c, "snap", [_binding()])
            end = ends[0]
            assert end["status"] == "error" and end["code"] == "snapshot_too_large"
            assert end["id"] == reply["payload"]["response"]["postgres_changes"][0]["id"]
            assert "RELAY_SNAPSHOT_MAX_ROWS" in end["message"]
            assert len(_rows(frames)) == 3
            # the channel stays joined: live changes follow
            new = await asyncio.to_thread(_alerts, pg_dsn, 1)
            m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            assert m["payload"]["data"]["record"]["id"] == new[0]


async def test_statement_timeout_while_the_table_is_locked(pg_dsn: str) -> None:
    """A DBA's ACCESS EXCLUSIVE lock holds the snapshot query: it gives up after the timeout,
    the channel stays joined and gets live changes once the lock is gone."""
    async with running_relay(pg_dsn, snapshot_timeout=1.0) as relay:
        await asyncio.to_thread(_alerts, pg_dsn, 2)
        locker: psycopg.Connection[tuple[Any, ...]] = await asyncio.to_thread(lambda: psycopg.connect(pg_dsn))
        try:
            await asyncio.to_thread(locker.execute, "lock table alerts in access exclusive mode")
            async with PhoenixClient.connect(relay) as c:
                started = time.monotonic()
                _, frames, ends = await _snapshot(c, "snap", [_binding()])
                assert ends[0]["status"] == "error" and ends[0]["code"] == "snapshot_timeout", ends
                assert 0.9 < time.monotonic() - started < 8
                assert _rows(frames) == []
                await asyncio.to_thread(locker.rollback)
                new = await asyncio.to_thread(_alerts, pg_dsn, 1)
                m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
                assert m["payload"]["data"]["record"]["id"] == new[0]
        finally:
            await asyncio.to_thread(locker.close)


async def test_pages_are_paced_by_a_slow_consumer(pg_dsn: str) -> None:
    """2,000 rows through a socket that may queue 40 frames, read slowly: the socket is never
    dropped as a slow consumer, and every row arrives once."""
    async with running_relay(pg_dsn, socket_queue_frames=40) as relay:
        ids = await asyncio.to_thread(_alerts, pg_dsn, 2000)
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join("snap", [_binding()])
            assert reply["payload"]["status"] == "ok"
            got: list[int] = []
            while True:
                m = await c.recv(10)
                if m["event"] == "postgres_changes":
                    got.append(m["payload"]["data"]["record"]["id"])
                    if len(got) % 100 == 0:
                        await asyncio.sleep(0.05)  # a slow reader
                elif m["payload"].get("code") == "snapshot_complete":
                    break
            assert sorted(got) == ids
            assert m["payload"]["rows"] == 2000
            assert c.ws.close_code is None


async def test_eq_filter_on_an_indexed_column_uses_the_index(pg_dsn: str) -> None:
    """EXPLAIN of the snapshot query the relay builds, on the demo tables with realistic sizes."""
    from relay.core.filters import parse_filter
    from relay.core.snapshot import SnapshotColumn, snapshot_query

    async with running_relay(pg_dsn):
        pass  # the demo schema
    await asyncio.to_thread(
        _exec,
        pg_dsn,
        "insert into branches (name, city) select 'b' || g, 'c' from generate_series(10, 60) g",
    )
    await asyncio.to_thread(
        _exec,
        pg_dsn,
        "insert into alerts (branch_id, severity, kind, title) "
        "select (select id from branches order by id offset mod(g, 50) limit 1), 'info', 'k', 't' || g "
        "from generate_series(1, 20000) g; analyze alerts",
    )
    cols = [("id", "int8"), ("branch_id", "int4"), ("title", "text")]
    columns = [SnapshotColumn(n, 0, t) for n, t in cols]
    for flt, types, index in (
        ("branch_id=eq.12", {"branch_id": "int4"}, "alerts_branch_id_idx"),
        ("id=in.(5,7,9)", {"id": "int8"}, "alerts_pkey"),
        ("branch_id=eq.12,title=like.t1%", {"branch_id": "int4", "title": "text"}, "alerts_branch_id_idx"),
    ):
        sql, args = snapshot_query("public", "alerts", columns, parse_filter(flt).bind(types))
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(f"prepare q as {sql}")
            literal = ", ".join("'{" + ",".join(a) + "}'" if isinstance(a, list) else f"'{a}'" for a in args)
            plan = "\n".join(r[0] for r in conn.execute(f"explain execute q({literal})").fetchall())
        assert index in plan and "Seq Scan" not in plan, (flt, plan)


async def test_a_held_update_under_a_policy_evaluated_in_postgres_follows_the_marker(pg_dsn: str) -> None:
    """An UPDATE committed while the rows are sent is held, then replayed to the snapshot binding.
    Under a policy only Postgres can evaluate, the UPDATE needs two verdicts (new row, then old
    row): with one round of evaluation it was dropped."""
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "select realtime.create_policy('public.alerts', 'auditors', "
            "$e$pg_catalog.length(title) %% 2 = 0$e$, '{auditor}')",
        )
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "insert into alerts (branch_id, severity, kind, title) "
            "select 1, 'info', 'k', 'xx' || lpad(g::text, 6, '0') from generate_series(1, 300) g",
        )
        await _policy_loaded(relay, "auditors")
        auditor = token("auditor")
        async with PhoenixClient.connect(relay, auditor) as c:
            reply = await c.join("snap", [_binding()], access_token=auditor)
            assert reply["payload"]["status"] == "ok"
            first = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            target = first["payload"]["data"]["record"]["id"]
            await asyncio.to_thread(
                _exec, pg_dsn, "update alerts set title = 'updated!' where id = %s", (target,)
            )
            marker = await c.recv_until(lambda m: m["payload"].get("code") == "snapshot_complete", 30)
            assert marker["payload"]["rows"] == 300
            upd = await c.recv_until(lambda m: m["event"] == "postgres_changes", 10)
            data = upd["payload"]["data"]
            assert data["type"] == "UPDATE" and data["record"] == dict(
                data["record"], id=target, title="updated!"
            )
            assert data["position"] > marker["payload"]["position"]


# -- a transaction in the WAL before it is visible -------------------------------------------


def _racer(dsn: str, done: threading.Event) -> None:
    """Insert a row whose commit then waits for a synchronous standby that does not exist: it is
    in the WAL (and decoded by the relay) but stays invisible to new snapshots until released."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'race', 'racer')"
            )
    finally:
        done.set()


async def test_a_transaction_decoded_before_it_is_visible_comes_after_the_marker() -> None:
    """Synchronous replication holds a committed transaction out of new snapshots while logical
    decoding already streams it.  A client joining with a snapshot then must get it after the
    marker, although the stream had decoded it before the join: the snapshot decides by xid."""
    from tests.support.clusters import own_cluster

    with own_cluster() as cluster:
        dsn = cluster.dsn()
        async with running_relay(dsn) as relay:
            ids = await asyncio.to_thread(_alerts, dsn, 3)
            async with PhoenixClient.connect(relay) as live:
                reply = await live.join("live", [{"event": "INSERT", "schema": "public", "table": "alerts"}])
                assert reply["payload"]["status"] == "ok"
                await asyncio.to_thread(_exec, dsn, "alter system set synchronous_standby_names = 'nobody'")
                await asyncio.to_thread(_exec, dsn, "select pg_reload_conf()")
                released = threading.Event()
                racer = asyncio.create_task(asyncio.to_thread(_racer, dsn, released))
                try:
                    m = await live.recv_until(
                        lambda m: (
                            m["event"] == "postgres_changes"
                            and m["payload"]["data"]["record"]["title"] == "racer"
                        )
                    )
                    racer_id = m["payload"]["data"]["record"]["id"]
                    assert not released.is_set()  # still waiting for the standby: not visible yet
                    assert _exec(dsn, "select count(*) from alerts where id = %s", (racer_id,)) == [(0,)]
                    async with PhoenixClient.connect(relay) as c:
                        _, frames, ends = await _snapshot(c, "snap", [_binding()])
                        assert sorted(r["record"]["id"] for r in _rows(frames)) == ids
                        assert ends[0]["rows"] == 3
                        after = await c.recv_until(lambda m: m["event"] == "postgres_changes")
                        data = after["payload"]["data"]
                        assert data["type"] == "INSERT" and data["record"]["id"] == racer_id
                finally:
                    await asyncio.to_thread(_exec, dsn, "alter system reset synchronous_standby_names")
                    await asyncio.to_thread(_exec, dsn, "select pg_reload_conf()")
                    await racer


async def test_a_client_that_stops_reading_loses_its_snapshot_not_its_channel(pg_dsn: str) -> None:
    """The snapshot's transaction holds back vacuum while the rows are sent: a client that stops
    reading for RELAY_SNAPSHOT_TIMEOUT ends it (snapshot_timeout); its channel stays joined."""
    async with running_relay(pg_dsn, snapshot_timeout=1.0) as relay:
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "insert into alerts (branch_id, severity, kind, title, body) "
            "select 1, 'info', 'k', 't' || g, repeat('x', 2000) from generate_series(1, 6000) g",
        )
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join("snap", [_binding()])
            assert reply["payload"]["status"] == "ok"
            # not reading: the socket's buffers fill, the relay waits, then gives the snapshot up
            # (snapshot_timeout 1 s); wait for that rather than a fixed time
            deadline = time.monotonic() + 30
            while relay.server.snapshots.stats()["failed"] == 0:
                assert time.monotonic() < deadline, "the relay never gave up on the stalled snapshot"
                await asyncio.sleep(0.05)
            end = await c.recv_until(lambda m: str(m["payload"].get("code", "")).startswith("snapshot_"), 60)
            assert end["payload"]["status"] == "error" and end["payload"]["code"] == "snapshot_timeout", end
            assert "not read in time" in end["payload"]["message"]
            new = await asyncio.to_thread(_alerts, pg_dsn, 1)
            # (a plain join's changes follow: those after its Subscribed position, then this one)
            await c.recv_until(
                lambda m: m["event"] == "postgres_changes" and m["payload"]["data"]["record"]["id"] == new[0],
                30,
            )
        assert relay.server.snapshots.stats()["failed"] == 1


async def test_without_the_replay_window_a_snapshot_is_refused_and_live_changes_flow(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, resume_window=0) as relay:
        await asyncio.to_thread(_alerts, pg_dsn, 2)
        async with PhoenixClient.connect(relay) as c:
            reply, frames, ends = await _snapshot(c, "snap", [_binding()])
            assert ends[0]["code"] == "snapshot_failed" and "RELAY_RESUME_WINDOW" in ends[0]["message"]
            assert ends[0]["id"] == reply["payload"]["response"]["postgres_changes"][0]["id"]
            assert _rows(frames) == []
            new = await asyncio.to_thread(_alerts, pg_dsn, 1)
            m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            assert m["payload"]["data"]["record"]["id"] == new[0]
