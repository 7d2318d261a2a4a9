"""``relay`` command line: serve | migrate | demo | token | tables | tail | check.

Why argparse: it is the standard library's well-kept parser, gives ``--help`` on every
sub-command for free and adds no dependency.  Every flag overrides the matching ``RELAY_*``
variable (see :mod:`relay.config`), so the environment table in the README stays the one truth.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import secrets
import socket
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson

from relay.config import ENV_VARS, LOG_LEVELS, MIN_SECRET_BYTES, Config, ConfigError
from relay.logs import configure_logging
from relay.redact import Redactor, dsn_password

__all__ = ["main"]

log = logging.getLogger("relay")

EPILOG = "Environment:\n" + "\n".join(f"  {var:<26} {desc}" for var, desc in ENV_VARS.values())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is two lines (what is wrong, where to look), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n  see: {self.prog} --help\n")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pg-change-relay")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from relay import __version__

        return __version__


def _common_args(p: argparse.ArgumentParser, default: Any) -> None:
    """Options every command takes, before or after the command name."""
    p.add_argument(
        "--log-level",
        type=_log_level,
        default=default,
        help=f"{', '.join(LOG_LEVELS)} (env RELAY_LOG_LEVEL)",
    )


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
    parser = _Parser(
        prog="relay",
        description="Stream committed Postgres row changes to Supabase-compatible WebSocket channels.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"relay {_version()}")
    _common_args(parser, None)
    # after the command name too; SUPPRESS: a sub-command without it keeps the one given before
    common = _Parser(add_help=False)
    _common_args(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the relay against RELAY_DATABASE_URL",
        epilog=EPILOG,
        formatter_class=fmt,
        description=(
            "Run the relay: apply pending migrations (unless --no-migrate; nothing to apply needs no "
            "CREATE privilege), preflight, then stream and serve."
        ),
    )
    _db_args(p)
    _jwt_args(p)
    _server_args(p)
    p.add_argument(
        "--no-migrate", action="store_true", help="do not even check for pending migrations at start-up"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="processes serving the same port with SO_REUSEPORT, supervised and restarted when they "
        "die; more than 1 needs RELAY_REDIS_URL (env RELAY_WORKERS, default 1; docs/scale-out.md)",
    )

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="apply the realtime schema migrations",
        formatter_class=fmt,
        description=(
            "Apply numbered, idempotent migrations from relay/sql/migrations "
            "(and relay/sql/demo with --demo)."
        ),
    )
    _db_args(p)
    p.add_argument("--demo", action="store_true", help="also apply the demo schema (relay/sql/demo)")

    p = sub.add_parser(
        "demo",
        parents=[common],
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
        parents=[common],
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
        parents=[common],
        help="enable, disable or list realtime tables",
        formatter_class=fmt,
        description="Manage which tables stream (adds them to the publication with REPLICA IDENTITY FULL).",
    )
    tsub = p.add_subparsers(dest="tables_command", metavar="ACTION", required=True)
    for name, helptext in (("enable", "enable a table"), ("disable", "disable a table")):
        tp = tsub.add_parser(
            name, help=helptext, description=f"{helptext.capitalize()} for realtime.", parents=[common]
        )
        _db_args(tp)
        tp.add_argument("table", nargs="+", help="schema.table (schema defaults to public)")
    tp = tsub.add_parser(
        "list", help="list enabled tables", description="List enabled tables.", parents=[common]
    )
    _db_args(tp)

    p = sub.add_parser(
        "tail",
        parents=[common],
        help="print decoded changes as JSON lines",
        formatter_class=fmt,
        description="Stream changes of the enabled tables to stdout, one JSON object per line. Uses a "
        "temporary slot: it never advances or holds the relay's slot.",
    )
    _db_args(p)
    p.add_argument("--count", type=int, default=0, help="stop after N changes (0 = run until Ctrl-C)")

    p = sub.add_parser(
        "check",
        parents=[common],
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
        "workers",
    )
    return Config.from_env(**{k: getattr(args, k, None) for k in keys})


def _redactor(args: argparse.Namespace, cfg: Config | None) -> Redactor:
    """Everything secret this run could know: DSN passwords, the JWT secret, PGPASSWORD."""
    urls = [getattr(args, "database_url", None), os.environ.get("RELAY_DATABASE_URL")]
    keys = [getattr(args, "jwt_secret", None), os.environ.get("RELAY_JWT_SECRET")]
    if cfg is not None:
        urls.append(cfg.database_url)
        keys.append(cfg.jwt_secret)
    return Redactor([*(dsn_password(u) for u in urls), *keys, os.environ.get("PGPASSWORD")])


def _setup_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Text or JSON lines (relay.logs), with this run's own secrets masked on top of the patterns."""
    configure_logging(level, fmt, scrub=redactor.scrub)
    # PyJWT warns about short HMAC keys with a multi-line warning on every use; the relay says
    # it once, on one line (warn_weak_secret)
    from jwt.warnings import InsecureKeyLengthWarning

    warnings.simplefilter("ignore", InsecureKeyLengthWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends as one or two lines on stderr, secrets masked."""
    from relay.postgres.migrate import MigrationError

    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(_redactor(args, None).scrub(f"relay: configuration error: {exc}"), file=sys.stderr)
        return 2
    redactor = _redactor(args, cfg)
    _setup_logging(cfg.log_level, cfg.log_format, redactor)
    try:
        handler = _COMMANDS[args.command]
        return handler(args, cfg)
    except ConfigError as exc:
        print(redactor.scrub(f"relay: {exc}"), file=sys.stderr)
        return 2
    except MigrationError as exc:
        # One line that says what to do (e.g. "role X may not migrate ...: run relay migrate as
        # the owner role"), not a traceback.
        print(redactor.scrub(f"relay: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.debug("%s failed", args.command, exc_info=True)  # the traceback, for --log-level DEBUG
        print(redactor.scrub(f"relay {args.command}: {explain_failure(exc, cfg)}"), file=sys.stderr)
        return 1


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def explain_failure(exc: BaseException, cfg: Config) -> str:
    """What went wrong and the fix, in at most two lines, for the failures people actually hit.

    Why by message as well as by type: the same failure comes from psycopg (migrate, check,
    tables, replication) and from asyncpg (the catalog pool of serve and tail) with different
    exception classes, and the relay wraps some of them (``replication did not start: ...``).
    """
    chain = _chain(exc)
    text = " | ".join(str(e) for e in chain).lower()
    names = " ".join(type(e).__name__ for e in chain)
    host, port, user, db = "?", "5432", "?", "?"
    if cfg.database_url:
        try:
            u = urlsplit(cfg.database_url)
            host, port = u.hostname or "localhost", str(u.port or 5432)
            user, db = u.username or "(default user)", u.path.lstrip("/") or "(default)"
        except ValueError:
            pass
    where = f"{host}:{port}"
    url_hint = "check RELAY_DATABASE_URL / --database-url"

    if any(isinstance(e, OSError) and e.errno == errno.EADDRINUSE for e in chain):
        return (
            f"cannot listen on {cfg.host}:{cfg.port}: the address is already in use.\n"
            "  fix: stop what uses that port, or choose another with --port / RELAY_PORT"
        )
    if any(isinstance(e, OSError) and e.errno == errno.EADDRNOTAVAIL for e in chain):
        return (
            f"cannot listen on {cfg.host}:{cfg.port}: no such local address.\n"
            "  fix: use an address of this machine with --host / RELAY_HOST (127.0.0.1, 0.0.0.0)"
        )
    if (
        any(isinstance(e, ConnectionRefusedError) for e in chain)
        or "connection refused" in text
        or ("connect call failed" in text)
    ):
        return (
            f"cannot connect to Postgres at {where}: connection refused.\n"
            f"  fix: is Postgres running and listening on port {port} there? {url_hint}"
        )
    if (
        any(isinstance(e, socket.gaierror) for e in chain)
        or "resolve host" in text
        or ("name or service not known" in text or "could not translate host name" in text)
    ):
        return f"cannot connect to Postgres: host {host!r} not found.\n  fix: correct the host; {url_hint}"
    if (
        "password authentication failed" in text
        or "InvalidPassword" in names
        or ("no password supplied" in text)
    ):
        return (
            f"Postgres at {where} refused the password of user {user!r}.\n"
            f"  fix: correct the user name or password; {url_hint}"
        )
    if "pg_hba.conf" in text:
        return (
            f"Postgres at {where} does not accept user {user!r} from this host (pg_hba.conf).\n"
            "  fix: add a pg_hba.conf line for this user and host (replication needs its own), then reload"
        )
    if "database" in text and "does not exist" in text:
        return f"Postgres at {where} has no database {db!r}.\n  fix: create it, or {url_hint}"
    if "role" in text and "does not exist" in text:
        return f"Postgres at {where} has no role {user!r}.\n  fix: create it (REPLICATION), or {url_hint}"
    if "invalid dsn" in text or "ClientConfigurationError" in names or "invalid connection option" in text:
        return (
            "RELAY_DATABASE_URL is not a valid Postgres URL.\n"
            "  fix: use postgresql://user:password@host:5432/dbname"
        )
    if any(isinstance(e, TimeoutError) for e in chain) or "timeout expired" in text or "timed out" in text:
        return (
            f"timed out connecting to Postgres at {where}.\n"
            f"  fix: check that the host is reachable and the port is right; {url_hint}"
        )
    if "permission denied" in text or "must be superuser" in text or "must have" in text:
        return f"{_first_line(exc)}\n  fix: run `relay check`: it names the privileges the role is missing"
    return f"{type(exc).__name__}: {_first_line(exc)}\n  (run with --log-level DEBUG for the details)"


def _database(cfg: Config) -> str:
    """The checked database URL, after one connection proved it works.

    Why probe: the commands behind it report a failed connection in their own ways (a preflight
    line, a TableError with libpq's two-line text, a replication retry loop); a probe makes the
    usual mistakes (port, host, password, database name) fail first, through explain_failure.
    """
    import psycopg

    dsn = cfg.require_database()
    psycopg.connect(dsn, connect_timeout=10).close()
    return dsn


def warn_weak_secret(cfg: Config) -> None:
    """HS256 with a short secret can be brute-forced offline from any token a client holds."""
    n = cfg.weak_secret()
    if n is not None:
        log.warning(
            "RELAY_JWT_SECRET is %d bytes; use at least %d random bytes (e.g. openssl rand -hex 32)",
            n,
            MIN_SECRET_BYTES,
        )


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from relay.cluster.workers import is_worker
    from relay.postgres.migrate import apply_migrations
    from relay.postgres.preflight import run_preflight
    from relay.service import run_until_stopped

    cfg.require_database()
    cfg.require_jwt()
    worker = is_worker()  # its supervisor logged the start-up warnings once already
    if not worker:
        warn_weak_secret(cfg)
    dsn = _database(cfg)
    if not args.no_migrate:
        applied = apply_migrations(dsn, publication=cfg.publication)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    report = run_preflight(dsn, publication=cfg.publication, slot=cfg.slot)
    for check in report.checks:
        if check.status == "warn":
            log.log(
                logging.DEBUG if worker else logging.WARNING, "preflight: %s: %s", check.name, check.message
            )
    if not report.ok:
        print(_redactor(args, cfg).scrub(report.render()), file=sys.stderr)
        print("relay: preflight failed; fix the items marked FAIL above", file=sys.stderr)
        return 1
    if cfg.workers > 1:
        from relay.cluster.workers import run_workers

        return run_workers(cfg)  # each worker is a `relay serve --no-migrate` of its own
    asyncio.run(run_until_stopped(cfg))
    return 0


def cmd_migrate(args: argparse.Namespace, cfg: Config) -> int:
    from relay.postgres.migrate import apply_demo_schema, apply_migrations

    dsn = _database(cfg)
    applied = apply_migrations(dsn, publication=cfg.publication)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    if args.demo:
        apply_demo_schema(dsn)
        print("demo schema applied")
    return 0


def cmd_token(args: argparse.Namespace, cfg: Config) -> int:
    from relay.core.tokens import mint

    if not cfg.jwt_secret:
        raise ConfigError("relay token needs RELAY_JWT_SECRET or --jwt-secret")
    warn_weak_secret(cfg)
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

    dsn = _database(cfg)
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
        print(_redactor(args, cfg).scrub(f"relay: {exc}"), file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    from relay.postgres.preflight import run_preflight

    report = run_preflight(
        _database(cfg),
        publication=cfg.publication,
        slot=cfg.slot,
        resume_window=cfg.resume_window,
        resume_max_bytes=cfg.resume_max_bytes,
    )
    print(_redactor(args, cfg).scrub(report.render()))
    return 0 if report.ok else 1


def cmd_tail(args: argparse.Namespace, cfg: Config) -> int:
    _database(cfg)
    return asyncio.run(_tail(cfg, args.count))


async def _tail(cfg: Config, count: int) -> int:
    import signal

    from relay.core.changes import RowChange
    from relay.core.protocol import dumps
    from relay.core.subscriptions import change_payload, repair_unencodable
    from relay.pipeline import ChangesOnly, Pipeline
    from relay.postgres.catalog import Catalog
    from relay.postgres.identity import read_identity

    dsn = cfg.require_database()
    # Positions as the relay gives them: a client may resume from a position read here.  The
    # stream id is the one of the relay's slot (``cfg.slot``), not of tail's temporary slot:
    # both read the same database history, and a change's commit LSN and index are the same
    # in every slot that decodes it.  Read once: tail is a look at a stream, not a consumer
    # that outlives a failover (its temporary slot would not survive one either).
    stream = (await read_identity(dsn, cfg.slot)).id

    catalog = Catalog(dsn)
    await catalog.open()
    stop = asyncio.Event()
    seen = 0
    out = sys.stdout.buffer

    def sink(change: RowChange) -> None:
        nonlocal seen
        change.stream = stream
        try:
            line = dumps(change_payload(change))
        except (TypeError, ValueError, RecursionError):
            repair_unencodable(change)  # the value goes out as null with a ColumnError, as on sockets
            line = dumps(change_payload(change))
        out.write(line + b"\n")
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
        ChangesOnly(sink),
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

    warn_weak_secret(cfg)  # (without one, the demo makes a strong secret of its own)
    if cfg.database_url:  # else a throwaway cluster
        _database(cfg)
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
