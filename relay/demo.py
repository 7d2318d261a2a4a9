"""``relay demo``: the one-command experience on an embedded default.

Why: a new user should see changes flowing in a minute with nothing installed but the repo.  With
no ``RELAY_DATABASE_URL`` it starts a throwaway Postgres (``LocalCluster``), applies migrations
and the demo schema, runs the demo writer, serves the relay and prints a URL, a token and
copy-paste client snippets.  Ctrl-C stops everything it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
from dataclasses import replace

from relay.config import Config
from relay.core.tokens import mint
from relay.demo_writer import run_demo_writer
from relay.postgres.cluster import LocalCluster
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.redact import redact_dsn
from relay.service import start_relay

__all__ = ["run_demo"]

log = logging.getLogger("relay.demo")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def banner(url: str, service_token: str, user_token: str, dsn: str, embedded: bool) -> str:
    """What the demo prints: enough to subscribe from realtime-js or realtime-py right away."""
    return f"""
================================================================================
 relay demo is running{" on a throwaway Postgres" if embedded else ""}
--------------------------------------------------------------------------------
 WebSocket URL : {url}
 Postgres      : {dsn}
 service token : {service_token}
   (role service_role: receives every change; valid 24 h)
 user token    : {user_token}
   (role authenticated, branch_id 1: receives branch 1's rows under the demo policies,
    see relay/sql/demo/0002_demo_policies.sql and docs/authorization.md)

 realtime-js (node, npm i @supabase/realtime-js ws):
   const {{ RealtimeClient }} = require('@supabase/realtime-js')
   const client = new RealtimeClient('{url}',
     {{ params: {{ apikey: '{service_token}' }}, transport: require('ws') }})
   client.channel('dash')
     .on('postgres_changes', {{ event: '*', schema: 'public', table: 'bookings' }},
         (p) => console.log(p.eventType, p.new, p.old))
     .subscribe((status) => console.log(status))

 realtime-py (pip install realtime):
   import asyncio
   from realtime import AsyncRealtimeClient
   async def main():
       client = AsyncRealtimeClient('{url}', '{service_token}')
       await client.connect()
       ch = client.channel('dash')
       ch.on_postgres_changes('*', schema='public', table='bookings', filter='branch_id=eq.1',
                              callback=lambda p: print(p['data']['type'], p['data'].get('record')))
       await ch.subscribe()
       await asyncio.sleep(3600)
   asyncio.run(main())

 Ctrl-C stops the relay, the writer{" and Postgres" if embedded else ""}.
================================================================================
"""


async def run_demo(cfg: Config, *, rate: float = 2.0, port_given: bool = False) -> int:
    cluster: LocalCluster | None = None
    dsn = cfg.database_url
    if not dsn:
        print("starting a throwaway Postgres (wal_level=logical) ...", file=sys.stderr)
        cluster = await asyncio.to_thread(lambda: LocalCluster().start())
        dsn = cluster.dsn()
    try:
        applied = await asyncio.to_thread(apply_migrations, dsn, publication=cfg.publication)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        await asyncio.to_thread(apply_demo_schema, dsn)
        secret = cfg.jwt_secret
        if not (secret or cfg.jwt_public_key or cfg.jwt_jwks):
            secret = secrets.token_urlsafe(32)
        port = cfg.port
        if not port_given and not _port_free(cfg.host, port):
            port = 0
            print(f"port {cfg.port} is busy; using a free port", file=sys.stderr)
        run_cfg = replace(cfg, database_url=dsn, jwt_secret=secret, port=port)
        relay = await start_relay(run_cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        writer: asyncio.Task[int] | None = None
        if rate > 0:
            writer = asyncio.create_task(run_demo_writer(dsn, rate=rate, stop=stop))
        if secret:
            service = mint(secret, role="service_role", ttl=86400)
            user = mint(
                secret,
                role="authenticated",
                sub="00000000-0000-4000-8000-000000000001",
                ttl=86400,
                claims={"branch_id": 1},
            )
        else:
            service = user = "(sign your own token with your key)"
        # the tokens are the point of the banner; a password of RELAY_DATABASE_URL is not
        print(banner(relay.url, service, user, redact_dsn(dsn), cluster is not None), flush=True)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, relay.task}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        waiter.cancel()
        print("stopping ...", file=sys.stderr)
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 10)
        await relay.stop()
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    return 0
