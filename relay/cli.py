"""``relay`` command line: serve | migrate | demo | token | tables | tail | check.

Why argparse: it is the standard library's well-kept parser, gives ``--help`` on every
sub-command for free and adds no dependency.  Every flag overrides the matching ``RELAY_*``
variable (see :mod:`relay.config`), so the environment table in the README stays the one truth.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from relay.config import ENV_VARS, Config, ConfigError
from relay.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("relay")

EPILOG = "Environment:\n" + "\n".join(f"  {var:<26} {desc}" for var, desc in ENV_VARS.values())


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="Postgres URL (env RELAY_DATABASE_URL)")
    p.add_argument("--slot", help="replication slot name (env RELAY_SLOT, default realtime_relay)")
    p.add_argument(
        "--publication", help="publication name (env RELAY_PUBLICATION, default supabase_realtime)"
    )


def _jwt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jwt-secret", help="HS256 secret (env RELAY_JWT_SECRET)")
    p.add_argument("--jwt-public-key", help="PEM public key or file (env RELAY_JWT_PUBLIC_KEY)")
    p.add_argument("--jwt-jwks", help="JWKS JSON or file (env RELAY_JWT_JWKS)")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (env RELAY_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (env RELAY_PORT, default 4000)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Stream committed Postgres row changes to Supabase-compatible WebSocket channels.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (env RELAY_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="run the relay against RELAY_DATABASE_URL",
        epilog=EPILOG,
        formatter_class=fmt,
        description="Run the relay: migrate (unless --no-migrate), preflight, then stream and serve.",
    )
    _db_args(p)
    _jwt_args(p)
    _server_args(p)
    p.add_argument("--no-migrate", action="store_true", help="do not apply migrations at start-up")

    p = sub.add_parser(
        "migrate",
        help="apply the realtime schema migrations",
        formatter_class=fmt,
        description="Apply numbered, idempotent migrations from sql/migrations (and sql/demo with --demo).",
    )
    _db_args(p)
    p.add_argument("--demo", action="store_true", help="also apply the demo schema (sql/demo)")

    p = sub.add_parser(
        "demo",
        help="run everything locally: throwaway Postgres, demo tables, writer, relay",
        formatter_class=fmt,
        epilog=EPILOG,
        description="Start a throwaway Postgres (unless RELAY_DATABASE_URL is set), apply migrations and "
        "the demo schema, run a writer producing activity and serve the relay. Ctrl-C stops "
        "everything it started.",
    )
    _db_args(p)
    _jwt_args(p)
    _server_args(p)
    p.add_argument(
        "--rate", type=float, default=2.0, help="demo writer transactions per second (0 = no writer)"
    )

    p = sub.add_parser(
        "token",
        help="mint a development JWT (HS256)",
        formatter_class=fmt,
        description="Print an HS256 token signed with RELAY_JWT_SECRET / --jwt-secret.",
    )
    p.add_argument("--jwt-secret", help="HS256 secret (env RELAY_JWT_SECRET)")
    p.add_argument("--role", default="authenticated", help="role claim (default authenticated)")
    p.add_argument("--sub", help="sub claim (user id)")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra claim; VALUE is parsed as JSON when it can be (repeatable)",
    )
    p.add_argument("--ttl", type=int, default=3600, help="seconds until exp (default 3600)")

    p = sub.add_parser(
        "tables",
        help="enable, disable or list realtime tables",
        formatter_class=fmt,
        description="Manage which tables stream (adds them to the publication with REPLICA IDENTITY FULL).",
    )
    tsub = p.add_subparsers(dest="tables_command", metavar="ACTION", required=True)
    for name, helptext in (("enable", "enable a table"), ("disable", "disable a table")):
        tp = tsub.add_parser(name, help=helptext, description=f"{helptext.capitalize()} for realtime.")
        _db_args(tp)
        tp.add_argument("table", nargs="+", help="schema.table (schema defaults to public)")
    tp = tsub.add_parser("list", help="list enabled tables", description="List enabled tables.")
    _db_args(tp)

    p = sub.add_parser(
        "tail",
        help="print decoded changes as JSON lines",
        formatter_class=fmt,
        description="Stream changes of the enabled tables to stdout, one JSON object per line. Uses a "
        "temporary slot: it never advances or holds the relay's slot.",
    )
    _db_args(p)
    p.add_argument("--count", type=int, default=0, help="stop after N changes (0 = run until Ctrl-C)")

    p = sub.add_parser(
        "check",
        help="preflight report",
        formatter_class=fmt,
        description="Check wal_level, wal2json, privileges, publication, replica identity and slot lag.",
    )
    _db_args(p)
    return parser


def _config(args: argparse.Namespace) -> Config:
    keys = (
        "database_url",
        "slot",
        "publication",
        "jwt_secret",
        "jwt_public_key",
        "jwt_jwks",
        "host",
        "port",
        "log_level",
    )
    return Config.from_env(**{k: getattr(args, k, None) for k in keys})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, cfg.log_format)  # text or JSON lines, secrets redacted
    try:
        handler = _COMMANDS[args.command]
        return handler(args, cfg)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from relay.postgres.migrate import apply_migrations
    from relay.postgres.preflight import run_preflight
    from relay.service import run_until_stopped

    dsn = cfg.require_database()
    cfg.require_jwt()
    if not args.no_migrate:
        applied = apply_migrations(dsn, publication=cfg.publication)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    report = run_preflight(dsn, publication=cfg.publication, slot=cfg.slot)
    if not report.ok:
        print(report.render(), file=sys.stderr)
        print("relay: preflight failed; fix the items marked FAIL above", file=sys.stderr)
        return 1
    asyncio.run(run_until_stopped(cfg))
    return 0


def cmd_migrate(args: argparse.Namespace, cfg: Config) -> int:
    from relay.postgres.migrate import apply_demo_schema, apply_migrations

    applied = apply_migrations(cfg.require_database(), publication=cfg.publication)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    if args.demo:
        apply_demo_schema(cfg.require_database())
        print("demo schema applied")
    return 0


def cmd_token(args: argparse.Namespace, cfg: Config) -> int:
    from relay.core.tokens import mint

    if not cfg.jwt_secret:
        raise ConfigError("relay token needs RELAY_JWT_SECRET or --jwt-secret")
    claims: dict[str, Any] = {}
    for kv in args.claim:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ConfigError(f"--claim expects KEY=VALUE, got {kv!r}")
        try:
            claims[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            claims[key] = value
    print(mint(cfg.jwt_secret, role=args.role, sub=args.sub, ttl=args.ttl, claims=claims))
    return 0


def cmd_tables(args: argparse.Namespace, cfg: Config) -> int:
    from relay.postgres.tables import TableError, disable_table, enable_table, list_tables

    dsn = cfg.require_database()
    try:
        if args.tables_command == "list":
            rows = list_tables(dsn)
            if not rows:
                print("no tables enabled (relay tables enable public.<table>)")
            for t in rows:
                print(
                    f"{t.schema}.{t.name}\treplica identity {t.replica_identity}"
                    f"{'' if t.has_primary_key else '  (no primary key!)'}"
                )
            return 0
        fn = enable_table if args.tables_command == "enable" else disable_table
        for name in args.table:
            fn(dsn, name)
            print(f"{args.tables_command}d {name}")
        return 0
    except TableError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    from relay.postgres.preflight import run_preflight

    report = run_preflight(
        cfg.require_database(),
        publication=cfg.publication,
        slot=cfg.slot,
        resume_window=cfg.resume_window,
        resume_max_bytes=cfg.resume_max_bytes,
    )
    print(report.render())
    return 0 if report.ok else 1


def cmd_tail(args: argparse.Namespace, cfg: Config) -> int:
    return asyncio.run(_tail(cfg, args.count))


async def _tail(cfg: Config, count: int) -> int:
    import signal

    from relay.core.changes import RowChange
    from relay.core.protocol import dumps
    from relay.core.subscriptions import change_payload
    from relay.pipeline import Pipeline
    from relay.postgres.catalog import Catalog

    dsn = cfg.require_database()
    catalog = Catalog(dsn)
    await catalog.open()
    stop = asyncio.Event()
    seen = 0
    out = sys.stdout.buffer

    def sink(change: RowChange) -> None:
        nonlocal seen
        data = change_payload(change)
        out.write(dumps(data) + b"\n")
        out.flush()
        seen += 1
        if count and seen >= count:
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    slot = f"relay_tail_{secrets.token_hex(4)}"
    pipeline = Pipeline(
        dsn,
        catalog,
        sink,
        slot=slot,
        publication=cfg.publication,
        temporary_slot=True,
        poll_interval=cfg.publication_poll_interval,
    )
    try:
        await pipeline.run(stop)
    finally:
        await catalog.close()
    return 0


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from relay.demo import run_demo

    return asyncio.run(
        run_demo(cfg, rate=args.rate, port_given=args.port is not None or "RELAY_PORT" in os.environ)
    )


_COMMANDS = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "demo": cmd_demo,
    "token": cmd_token,
    "tables": cmd_tables,
    "tail": cmd_tail,
    "check": cmd_check,
}
