"""Running the relay in production: metrics, readiness, the slot watchdog, CORS, logs without secrets.

Everything here talks to a real relay over HTTP/WebSocket and a real Postgres; the metrics are
scraped and parsed with prometheus_client's own parser, as Prometheus would read them.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.core.tokens import mint
from relay.postgres.cluster import LocalCluster, free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import RunningRelay
from tests.support.clusters import own_cluster as own_cluster_of_the_test
from tests.support.relay import SECRET, PhoenixClient, running_relay, token
from tests.support.relay_process import log_tail, relay_env, spawn_relay, wait_streaming

pytestmark = pytest.mark.pg

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(relay: RunningRelay, headers: dict[str, str] | None = None) -> Samples:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{relay.port}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def get_json(url: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None


def _insert(dsn: str, n: int = 1) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(n):
            conn.execute(
                "insert into alerts (branch_id, severity, kind, title) values (1, 'warning', 'ops', 'm')"
            )


async def test_metrics_move_as_events_happen(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        before = await scrape(relay)
        assert val(before, "relay_replication_streaming") == 1
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join("m", [{"event": "*", "schema": "public", "table": "alerts"}])
            assert reply["payload"]["status"] == "ok"
            # a join with a token signed by someone else, and one that is not a JWT at all
            bad = mint("another-secret-0123456789-0123456789", role="authenticated", ttl=60)
            refused = await c.join("n", [], access_token=bad)
            assert refused["payload"]["status"] == "error"
            refused = await c.join("o", [], access_token="not-a-jwt")
            assert refused["payload"]["status"] == "error"
            await asyncio.to_thread(_insert, pg_dsn, 2)
            for _ in range(2):
                await c.recv_until(lambda m: m["event"] == "postgres_changes")
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{relay.port}/api/broadcast"
                body = {"messages": [{"topic": "room1", "event": "e", "payload": {"x": 1}}]}
                async with s.post(url, json=body, headers={"apikey": token()}) as resp:
                    assert resp.status == 202
                # a socket refused at connect: no token, then an expired one
                ws_url = f"http://127.0.0.1:{relay.port}/realtime/v1/websocket"
                async with s.get(ws_url) as resp:
                    assert resp.status == 403
                expired = mint(SECRET, role="authenticated", ttl=-100)
                async with s.get(ws_url, params={"apikey": expired}) as resp:
                    assert resp.status == 403
            during = await scrape(relay)
        # the socket is gone: wait until the server noticed
        deadline = time.monotonic() + 5
        while relay.server.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = await scrape(relay)

    def delta(name: str, **labels: str) -> float:
        return val(during, name, **labels) - val(before, name, **labels)

    assert delta("relay_connections_opened_total") == 1
    assert val(during, "relay_connections") == 1 and val(after, "relay_connections") == 0
    assert (
        val(after, "relay_connections_closed_total", reason="client")
        - val(before, "relay_connections_closed_total", reason="client")
        == 1
    )
    assert delta("relay_channel_joins_total", extension="postgres_changes", visibility="public") == 1
    assert delta("relay_channel_joins_total", extension="broadcast", visibility="public") == 1
    assert val(during, "relay_channels", visibility="public") == 1
    assert delta("relay_join_refusals_total", code="JwtSignatureError") == 1
    assert delta("relay_join_refusals_total", code="MalformedJWT") == 1
    assert delta("relay_token_refusals_total", reason="signature") == 1
    assert delta("relay_token_refusals_total", reason="malformed") == 1
    assert delta("relay_token_refusals_total", reason="missing") == 1
    assert delta("relay_token_refusals_total", reason="expired") == 1
    assert delta("relay_changes_decoded_total") == 2
    assert delta("relay_deliveries_total", kind="insert") == 2
    assert delta("relay_transactions_total") >= 2
    assert delta("relay_commit_to_handoff_seconds_count") >= 2
    assert 0 <= val(during, "relay_replication_lag_seconds") < 60
    assert delta("relay_broadcasts_total", source="client") == 1
    # frames: 2 join replies + system + 2 changes (at least); bytes grow with them
    assert delta("relay_frames_sent_total") >= 5
    assert delta("relay_sent_bytes_total") > 200
    # frames of the closed socket are still counted (counters never go down)
    assert val(after, "relay_frames_sent_total") >= val(during, "relay_frames_sent_total")


async def test_metrics_bearer_token(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, metrics_token="scrape-me-0123") as relay:
        url = f"http://127.0.0.1:{relay.port}/metrics"
        status, _ = await get_json(url)
        assert status == 401
        status, _ = await get_json(url, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        samples = await scrape(relay, headers={"Authorization": "Bearer scrape-me-0123"})
        assert val(samples, "relay_replication_streaming") == 1


async def test_cors_preflight_from_a_browser_origin(pg_dsn: str) -> None:
    origin = "https://dash.example.com"
    async with running_relay(pg_dsn, cors_origins=f"{origin}, https://other.example") as relay:
        base = f"http://127.0.0.1:{relay.port}"
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, apikey, content-type, x-client-info",
        }
        async with aiohttp.ClientSession() as s:
            for path in ("/api/broadcast", "/realtime/v1/api/broadcast"):
                async with s.options(base + path, headers=preflight) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["Access-Control-Allow-Origin"] == origin
                    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
                    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
                    assert "authorization" in allowed and "apikey" in allowed
            # the request itself carries the header the browser checks
            body = {"messages": [{"topic": "t", "event": "e", "payload": {}}]}
            headers = {"Origin": origin, "Authorization": f"Bearer {token()}"}
            async with s.post(base + "/api/broadcast", json=body, headers=headers) as resp:
                assert resp.status == 202
                assert resp.headers["Access-Control-Allow-Origin"] == origin
            # an origin that is not configured gets no permission
            async with s.options(
                base + "/api/broadcast", headers={**preflight, "Origin": "https://evil.example"}
            ) as resp:
                assert resp.status == 403
                assert "Access-Control-Allow-Origin" not in resp.headers


async def test_no_cors_by_default(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, aiohttp.ClientSession() as s:
        headers = {"Origin": "https://dash.example.com", "Access-Control-Request-Method": "POST"}
        async with s.options(f"http://127.0.0.1:{relay.port}/api/broadcast", headers=headers) as resp:
            assert resp.status == 405
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_token_expiry_is_audited(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        short = mint(SECRET, role="authenticated", ttl=1)
        with caplog.at_level(logging.INFO, logger="relay.audit"):
            reply = await c.join("exp", [], access_token=short)
            assert reply["payload"]["status"] == "ok"
            await c.recv_until(lambda m: m["event"] == "system" and "expired" in m["payload"]["message"])
        events = [r for r in caplog.records if r.name == "relay.audit"]
        expired = [r for r in events if getattr(r, "event", None) == "token_expired"]
        assert expired and vars(expired[0])["topic"] == "realtime:exp"
        assert short not in caplog.text


async def test_private_channel_refusal_is_counted_and_audited(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = token("authenticated", sub="u-1")
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, user) as c:
        before = await scrape(relay)
        with caplog.at_level(logging.INFO, logger="relay.audit"):
            reply = await c.join("vault", [], private=True)
        assert reply["payload"]["status"] == "error"
        after = await scrape(relay)
    code = {"code": "Unauthorized"}
    assert (
        val(after, "relay_join_refusals_total", **code) - val(before, "relay_join_refusals_total", **code)
        == 1
    )
    refused = [r for r in caplog.records if getattr(r, "event", None) == "private_channel_refused"]
    fields = vars(refused[0]) if refused else {}  # extra= fields, unknown to LogRecord's stub
    assert len(refused) == 1 and fields["topic"] == "realtime:vault" and fields["remote"] == "127.0.0.1"


# -- a cluster of the tests' own: stopped, restarted, reconfigured ------------------------
@pytest.fixture()
def own_cluster() -> Iterator[LocalCluster]:
    with own_cluster_of_the_test() as cluster:
        cluster.keep = True  # stop() must keep the data to start again
        yield cluster


async def _wait_ready(relay: RunningRelay, want: int, timeout: float = 30.0) -> dict[str, Any]:
    url = f"http://127.0.0.1:{relay.port}/ready"
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        status, body = await get_json(url)
        last = (status, body)
        if status == want:
            assert isinstance(body, dict)
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"/ready never answered {want}; last: {last}")


async def test_ready_flips_when_postgres_stops_and_returns(own_cluster: LocalCluster) -> None:
    cluster = own_cluster
    async with running_relay(cluster.dsn(), slot="ready_test") as relay:
        body = await _wait_ready(relay, 200)
        assert body == {"status": "ready"}
        await asyncio.to_thread(cluster.stop)  # a fast shutdown, data kept
        body = await _wait_ready(relay, 503)
        codes = {r["code"] for r in body["reasons"]}
        assert "replication_not_streaming" in codes or "catalog_unavailable" in codes
        # liveness is not readiness: the process is fine, restarting it would not help
        status, _ = await get_json(f"http://127.0.0.1:{relay.port}/health")
        assert status == 200
        samples = await scrape(relay)
        assert val(samples, "relay_replication_streaming") == 0
        await asyncio.to_thread(cluster.start)
        body = await _wait_ready(relay, 200, timeout=60)
        assert body == {"status": "ready"}


async def test_slot_watchdog_releases_the_replay_hold(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Retained WAL over the threshold: 503, metrics, an error log, and the slot is confirmed."""
    cluster = own_cluster
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter system set max_slot_wal_keep_size = '1GB'")
        conn.execute("select pg_reload_conf()")
    # 2 % of 1 GB is ~20 MB: two WAL segment switches pass it
    async with running_relay(dsn, slot="wd_test", slot_wal_threshold=0.02, slot_check_interval=0.2) as relay:
        body = await _wait_ready(relay, 200)
        await asyncio.to_thread(_insert, dsn, 1)
        deadline = time.monotonic() + 10
        while relay.server.changes_seen < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # idle batches: the pipeline confirms what it may

        def slot_row() -> tuple[int, int]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "select (confirmed_flush_lsn - '0/0')::int8, (pg_current_wal_lsn() - restart_lsn)::int8 "
                    "from pg_replication_slots where slot_name = 'wd_test'"
                ).fetchone()
                assert row is not None
                return int(row[0]), int(row[1])

        confirmed, _ = await asyncio.to_thread(slot_row)
        handed = int(relay.pipeline.handed_off)
        assert confirmed < handed, "the replay window should hold the slot back"
        samples = await scrape(relay)
        assert val(samples, "relay_slot_wal_over_threshold") == 0
        assert 0 < val(samples, "relay_slot_retained_wal_share") < 0.02
        assert 0 <= val(samples, "relay_replication_lag_bytes") < 1024 * 1024  # idle: all streamed

        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(3):
                conn.execute("create temporary table if not exists filler (x int)")
                conn.execute("insert into filler values (1)")
                conn.execute("select pg_switch_wal()")
        body = await _wait_ready(relay, 503)
        assert [r["code"] for r in body["reasons"]] == ["slot_wal_retained"]
        loud = [r for r in caplog.records if r.name == "relay.watchdog" and r.levelno == logging.ERROR]
        assert loud and "slot_wal_retained" in loud[0].getMessage()
        samples = await scrape(relay)
        assert val(samples, "relay_slot_wal_over_threshold") == 1
        assert val(samples, "relay_slot_retained_wal_share") >= 0.02
        assert val(samples, "relay_slot_retained_wal_bytes") >= 0.02 * 1024**3
        # the action: the relay stops holding WAL for its replay window
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            confirmed, _ = await asyncio.to_thread(slot_row)
            if confirmed >= handed:
                break
            await asyncio.sleep(0.2)
        assert confirmed >= handed


# -- a real `relay serve` process: JSON logs, audit events, and no secret anywhere ----------
@pytest.fixture()
async def passworded(pg_dsn: str) -> AsyncIterator[str]:
    """``pg_dsn`` with a password in it (trust auth ignores it; a log must never show it)."""
    await asyncio.to_thread(apply_migrations, pg_dsn)
    await asyncio.to_thread(apply_demo_schema, pg_dsn)
    yield pg_dsn.replace("postgresql://postgres@", "postgresql://postgres:Sup3r-S3cret-PW@")


async def test_json_logs_parse_and_never_hold_secrets(passworded: str, tmp_path: Path) -> None:
    dsn = passworded
    assert "Sup3r-S3cret-PW" in dsn
    port = free_port()
    env = relay_env(dsn, port, SECRET, "logs_test", {"RELAY_LOG_FORMAT": "json", "RELAY_LOG_LEVEL": "DEBUG"})
    log_path = tmp_path / "relay.log"
    tokens_used: list[str] = []
    with open(log_path, "wb") as logf:  # noqa: ASYNC230 (the child process writes it)
        proc = spawn_relay(env, logf)
        try:
            await wait_streaming(port, proc, lambda: log_tail(log_path))
            base = f"http://127.0.0.1:{port}"
            forged = mint("not-the-secret-0123456789-0123456789", role="service_role", ttl=600)
            expired = mint(SECRET, role="authenticated", ttl=-30)
            good = token()
            tokens_used += [forged, expired, good]
            async with aiohttp.ClientSession() as s:
                for bad in (forged, expired, "garbage.token.value"):
                    async with s.get(f"{base}/realtime/v1/websocket", params={"apikey": bad}) as resp:
                        assert resp.status == 403
                async with s.get(f"{base}/api/stats", headers={"Authorization": f"Bearer {good}"}) as resp:
                    assert resp.status == 200
                async with s.ws_connect(f"{base}/realtime/v1/websocket", params={"apikey": good}) as ws:
                    await ws.send_str(
                        orjson.dumps(
                            {
                                "topic": "realtime:secret-room",
                                "event": "phx_join",
                                "payload": {"config": {"private": True}, "access_token": forged},
                                "ref": "1",
                                "join_ref": "1",
                            }
                        ).decode()
                    )
                    reply = orjson.loads((await ws.receive(timeout=5)).data)
                    assert reply["payload"]["status"] == "error"
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
    text = log_path.read_text()
    records = []
    for line in text.splitlines():
        rec = orjson.loads(line)  # every line is one JSON object
        assert {"timestamp", "level", "logger", "message"} <= set(rec), rec
        records.append(rec)
    assert "Sup3r-S3cret-PW" not in text
    assert SECRET not in text
    for t in tokens_used:
        assert t not in text
        assert t.split(".")[2] not in text  # not even the signature
    audit = [r for r in records if r["logger"] == "relay.audit"]
    refused = [r for r in audit if r.get("event") == "token_refused"]
    assert {r["reason"] for r in refused} >= {"signature", "expired", "malformed"}
    assert all(r["remote"] == "127.0.0.1" for r in refused)
    assert any(r.get("event") == "service_role_http" and r["path"] == "/api/stats" for r in audit)
    joins = [r for r in audit if r.get("event") == "join_refused"]
    assert joins and joins[0]["code"] == "JwtSignatureError" and joins[0]["topic"] == "realtime:secret-room"
