"""``relay check``: verify a database is ready for the relay, and say exactly how to fix what is not.

Why: almost every first-run failure of a logical-decoding consumer is configuration (``wal_level``,
a missing output plugin, a role without REPLICATION, a table without REPLICA IDENTITY FULL, a slot
silently retaining WAL).  Postgres reports those late and cryptically - often only once the stream
starts.  Each check here runs the cheapest probe that proves the point and, when it fails, carries
the command that fixes it.

Checks never raise: a check that errors becomes a ``fail`` with the server's message, so the report
is always complete enough to act on.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

from relay.postgres.migrate import MigrationError, migration_status

__all__ = ["Check", "PreflightReport", "run_preflight"]

Status = Literal["ok", "warn", "fail"]
Conn = psycopg.Connection[TupleRow]

MIN_SERVER_VERSION = 130000  # wal_status and max_slot_wal_keep_size arrived in 13
LAG_WARN_BYTES = 1 << 30


@dataclass(frozen=True)
class Check:
    """One preflight result; ``message`` says what was found and, if not ok, what to do."""

    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class PreflightReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """True when nothing failed (warnings do not block starting the relay)."""
        return all(c.status != "fail" for c in self.checks)

    def by_name(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def render(self) -> str:
        """Aligned text, one line per check (continuation lines indented under the message)."""
        if not self.checks:
            return ""
        labels = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}
        width = max(len(c.name) for c in self.checks)
        indent = " " * (len(labels["ok"]) + 1 + width + 2)
        lines: list[str] = []
        for c in self.checks:
            first, *rest = c.message.splitlines() or [""]
            lines.append(f"{labels[c.status]} {c.name.ljust(width)}  {first}")
            lines.extend(indent + r for r in rest)
        return "\n".join(lines)


@dataclass
class _Ctx:
    """What one check learned that later checks depend on."""

    conn: Conn
    dsn: str
    publication: str
    slot: str
    wal_level_ok: bool = False
    can_replicate: bool = False
    slot_exists: bool = False
    free_slots: int = 0
    publication_exists: bool = False
    published: list[tuple[str, str, str, bool]] = field(default_factory=list)
    resume_window: float = 300.0
    resume_max_bytes: int = 64 * 1024 * 1024


def _ident(ident: str) -> str:
    """An identifier as SQL users can paste: bare when that is unambiguous, else double-quoted."""
    plain = ident.isidentifier() and ident == ident.lower() and ident.isascii()
    return ident if plain else '"' + ident.replace('"', '""') + '"'


def _q(schema: str, table: str) -> str:
    """A qualified table name that is valid SQL, for fixes users can paste."""
    return f"{_ident(schema)}.{_ident(table)}"


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable; keeps mypy happy about the return


def _one(conn: Conn, query: str, params: tuple[object, ...] = ()) -> TupleRow:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


# -- individual checks -----------------------------------------------------------------------------


def _check_server(ctx: _Ctx) -> list[Check]:
    num, version, in_recovery = _one(
        ctx.conn,
        "select current_setting('server_version_num')::int, current_setting('server_version'), "
        "pg_is_in_recovery()",
    )
    if num < MIN_SERVER_VERSION:
        return [Check("server version", "fail", f"PostgreSQL {version}: the relay needs 13 or newer")]
    if in_recovery:
        return [
            Check(
                "server version",
                "fail",
                f"PostgreSQL {version} is a standby (in recovery): point the DSN at the primary",
            )
        ]
    return [Check("server version", "ok", f"PostgreSQL {version}")]


def _check_wal_level(ctx: _Ctx) -> list[Check]:
    (level,) = _one(ctx.conn, "select current_setting('wal_level')")
    ctx.wal_level_ok = level == "logical"
    if ctx.wal_level_ok:
        return [Check("wal_level", "ok", "logical")]
    return [
        Check(
            "wal_level",
            "fail",
            f"wal_level is {level}: set wal_level = logical in postgresql.conf and restart Postgres "
            "(ALTER SYSTEM SET wal_level = logical; then restart)",
        )
    ]


def _check_role(ctx: _Ctx) -> list[Check]:
    user, is_super, is_repl = _one(
        ctx.conn, "select rolname, rolsuper, rolreplication from pg_roles where rolname = current_user"
    )
    ctx.can_replicate = bool(is_super or is_repl)
    if is_super:
        return [Check("replication role", "ok", f"role {user} is a superuser")]
    if is_repl:
        return [Check("replication role", "ok", f"role {user} has REPLICATION")]
    ident = _ident(str(user))
    return [
        Check(
            "replication role",
            "fail",
            f"role {user} lacks the REPLICATION attribute: as a superuser run ALTER ROLE {ident} REPLICATION "
            f"(managed services: e.g. GRANT rds_replication TO {ident})",
        )
    ]


def _check_capacity(ctx: _Ctx) -> list[Check]:
    max_slots, max_senders, used_slots, used_senders, slot_exists = _one(
        ctx.conn,
        "select current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int, "
        "(select count(*) from pg_replication_slots)::int, (select count(*) from pg_stat_replication)::int, "
        "exists (select 1 from pg_replication_slots where slot_name = %s)",
        (ctx.slot,),
    )
    ctx.slot_exists = bool(slot_exists)
    ctx.free_slots = int(max_slots) - int(used_slots)
    out: list[Check] = []
    if ctx.free_slots <= 0 and not ctx.slot_exists:
        out.append(
            Check(
                "replication slots",
                "fail",
                f"all {max_slots} replication slots are in use: drop unused ones (select slot_name, active "
                "from pg_replication_slots; select pg_drop_replication_slot('<name>')) or raise "
                "max_replication_slots in postgresql.conf and restart",
            )
        )
    else:
        out.append(Check("replication slots", "ok", f"{used_slots} of {max_slots} in use"))
    if max_senders <= 0:
        out.append(
            Check(
                "wal senders",
                "fail",
                "max_wal_senders = 0: set max_wal_senders = 10 in postgresql.conf and restart Postgres",
            )
        )
    elif used_senders >= max_senders:
        out.append(
            Check(
                "wal senders",
                "warn",
                f"all {max_senders} WAL senders are busy: the relay cannot stream until one frees up; raise "
                "max_wal_senders (restart) or stop an idle consumer",
            )
        )
    else:
        out.append(Check("wal senders", "ok", f"{used_senders} of {max_senders} in use"))
    return out


def _check_wal2json(ctx: _Ctx) -> list[Check]:
    """Create (and drop) a temporary wal2json slot: the only sure way to know the plugin loads."""
    name = "wal2json plugin"
    missing = [
        why
        for ok, why in (
            (ctx.wal_level_ok, "wal_level=logical"),
            (ctx.can_replicate, "the REPLICATION attribute"),
            (ctx.free_slots > 0, "a free replication slot"),
        )
        if not ok
    ]
    if missing:
        return [Check(name, "warn", f"not verified: the probe needs {', '.join(missing)}")]
    probe = f"relay_probe_{secrets.token_hex(6)}"
    try:
        # Own connection: should the drop fail, the temporary slot still dies with this session.
        with psycopg.connect(ctx.dsn, autocommit=True, connect_timeout=10) as pconn, pconn.transaction():
            # Slot creation waits for running transactions to finish; do not hang `relay check` on one.
            pconn.execute("set local statement_timeout = '10s'")
            pconn.execute("select pg_create_logical_replication_slot(%s, 'wal2json', true)", (probe,))
            pconn.execute("select pg_drop_replication_slot(%s)", (probe,))
    except errors.QueryCanceled:
        return [
            Check(
                name,
                "warn",
                "not verified: creating a probe slot waited over 10 s for running transactions to finish "
                "(a long-running or idle-in-transaction session?); see pg_stat_activity",
            )
        ]
    except psycopg.Error as exc:
        msg = exc.diag.message_primary or str(exc)
        if "could not access file" in msg and "wal2json" in msg:
            return [
                Check(
                    name,
                    "fail",
                    "wal2json is not installed on the server: install wal2json: apt-get install "
                    "postgresql-15-wal2json (Debian/Ubuntu; match your major version), yum install "
                    "wal2json_15 (PGDG RPM), or build from https://github.com/eulerto/wal2json",
                )
            ]
        return [Check(name, "fail", f"could not create a wal2json slot: {msg}")]
    return [Check(name, "ok", "wal2json loads (probe slot created and dropped)")]


def _check_migrated(ctx: _Ctx) -> list[Check]:
    (has_table,) = _one(ctx.conn, "select to_regclass('realtime.schema_migrations') is not null")
    if not has_table:
        return [Check("realtime schema", "fail", "the realtime schema is not migrated: run `relay migrate`")]
    try:
        done, pending = migration_status(ctx.conn)
    except MigrationError as exc:
        return [Check("realtime schema", "fail", str(exc))]
    if pending:
        return [
            Check(
                "realtime schema",
                "fail",
                f"{len(pending)} migration(s) pending ({', '.join(pending)}): run `relay migrate`",
            )
        ]
    return [Check("realtime schema", "ok", f"migrated ({len(done)} migration(s) applied)")]


def _check_publication(ctx: _Ctx) -> list[Check]:
    row = ctx.conn.execute(
        "select puballtables from pg_publication where pubname = %s", (ctx.publication,)
    ).fetchone()
    ctx.publication_exists = row is not None
    if row is None:
        return [
            Check(
                "publication",
                "fail",
                f"publication {ctx.publication} does not exist: run `relay migrate` (it creates it) or "
                f"CREATE PUBLICATION {_ident(ctx.publication)}",
            )
        ]
    configured: str | None = None
    (has_settings,) = _one(ctx.conn, "select to_regclass('realtime.settings') is not null")
    if has_settings:
        srow = ctx.conn.execute("select value from realtime.settings where key = 'publication'").fetchone()
        configured = str(srow[0]) if srow else None
    if configured is not None and configured != ctx.publication:
        return [
            Check(
                "publication",
                "warn",
                f"publication {ctx.publication} exists, but realtime.settings names {configured}: "
                f"realtime.enable_table() adds tables to {configured}; run `relay migrate` with the same "
                "publication setting as the relay",
            )
        ]
    suffix = " (FOR ALL TABLES)" if row[0] else ""
    return [Check("publication", "ok", f"{ctx.publication} exists{suffix}")]


def _check_tables(ctx: _Ctx) -> list[Check]:
    if not ctx.publication_exists:
        return []
    rows = ctx.conn.execute(
        "select pt.schemaname::text, pt.tablename::text, c.relreplident::text, "
        "exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary) "
        "from pg_publication_tables pt "
        "join pg_namespace n on n.nspname = pt.schemaname "
        "join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename "
        "where pt.pubname = %s order by 1, 2",
        (ctx.publication,),
    ).fetchall()
    ctx.published = [(str(s), str(t), str(ri), bool(pk)) for s, t, ri, pk in rows]
    if not ctx.published:
        # A warning, not a failure: a fresh database has no enabled table yet, and the relay
        # serves anyway and starts streaming a table from the commit that enables it.
        return [
            Check(
                "tables",
                "warn",
                "no tables enabled yet (the relay streams each table from the commit that enables "
                "it): relay tables enable public.<table> or select realtime.enable_table('public.<table>')",
            )
        ]
    names = [_q(s, t) for s, t, _, _ in ctx.published]
    shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
    return [Check("tables", "ok", f"{len(names)} enabled: {shown}")]


def _check_replica_identity(ctx: _Ctx) -> list[Check]:
    if not ctx.published:
        return []
    kinds = {"d": "default", "i": "index", "n": "nothing", "f": "full"}
    bad = [(s, t, kinds.get(ri, ri)) for s, t, ri, _ in ctx.published if ri != "f"]
    out: list[Check] = []
    if bad:
        listed = ", ".join(f"{_q(s, t)} ({k})" for s, t, k in bad)
        fixes = "; ".join(f"ALTER TABLE {_q(s, t)} REPLICA IDENTITY FULL" for s, t, _ in bad)
        out.append(
            Check(
                "replica identity",
                "fail",
                f"not REPLICA IDENTITY FULL (UPDATE/DELETE would lack old values): {listed}. Fix: {fixes}; "
                f"or re-run select realtime.enable_table('{_q(*bad[0][:2])}') for each",
            )
        )
    else:
        out.append(Check("replica identity", "ok", "all enabled tables are REPLICA IDENTITY FULL"))
    no_pk = [_q(s, t) for s, t, _, pk in ctx.published if not pk]
    if no_pk:
        out.append(
            Check(
                "primary keys",
                "warn",
                f"published without a primary key: {', '.join(no_pk)}: add one "
                "(ALTER TABLE <t> ADD PRIMARY KEY (id)) so clients can identify rows",
            )
        )
    return out


def _check_publication_rules(ctx: _Ctx) -> list[Check]:
    """Column lists and row filters (PG 15+), which the relay applies itself (wal2json does not):
    a column list is honoured, a table with a row filter is not streamed (relay.core.publication)."""
    if not ctx.published:
        return []
    (num,) = _one(ctx.conn, "select current_setting('server_version_num')::int")
    if num < 150000:
        return []
    rows = ctx.conn.execute(
        "select p.schemaname::text, p.tablename::text, r.prattrs is not null, p.rowfilter::text "
        "from pg_publication_tables p "
        "join pg_publication pb on pb.pubname = p.pubname "
        "join pg_namespace n on n.nspname = p.schemaname "
        "join pg_class c on c.relnamespace = n.oid and c.relname = p.tablename "
        "left join pg_publication_rel r on r.prpubid = pb.oid and r.prrelid = c.oid "
        "where p.pubname = %s and (r.prattrs is not null or p.rowfilter is not null) order by 1, 2",
        (ctx.publication,),
    ).fetchall()
    out: list[Check] = []
    filtered = [(str(s), str(t), str(f)) for s, t, _, f in rows if f is not None]
    if filtered:
        listed = "; ".join(f"{_q(s, t)} WHERE {f}" for s, t, f in filtered)
        out.append(
            Check(
                "publication rules",
                "warn",
                f"not streamed: a row filter the relay cannot apply: {listed}. Joins naming these tables "
                "are refused (publication_row_filter); remove the filter "
                f"(ALTER PUBLICATION {_ident(ctx.publication)} SET TABLE ...) and use a row policy instead",
            )
        )
    listed_cols = [_q(str(s), str(t)) for s, t, cols, _ in rows if cols]
    if listed_cols:
        out.append(
            Check(
                "publication rules",
                "ok",
                f"column lists honoured (unlisted columns are never sent): {', '.join(listed_cols)}",
            )
        )
    return out


def _check_slot(ctx: _Ctx) -> list[Check]:
    row = ctx.conn.execute(
        "select s.plugin, s.slot_type, s.database, s.database = current_database(), s.active, s.active_pid, "
        "s.wal_status, (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint, s.temporary "
        "from pg_replication_slots s where s.slot_name = %s",
        (ctx.slot,),
    ).fetchone()
    if row is None:
        return [Check("slot", "ok", f"slot {ctx.slot} does not exist yet; the relay will create it on start")]
    plugin, slot_type, database, same_db, active, active_pid, wal_status, lag, temporary = row
    drop = f"select pg_drop_replication_slot('{ctx.slot}')"
    if slot_type != "logical":
        return [Check("slot", "fail", f"slot {ctx.slot} is a {slot_type} slot: choose another slot name")]
    if plugin != "wal2json":
        return [
            Check(
                "slot",
                "fail",
                f"slot {ctx.slot} uses plugin {plugin}, not wal2json: drop it ({drop}) if unused, or "
                "configure another slot name",
            )
        ]
    if not same_db:
        return [
            Check(
                "slot", "fail", f"slot {ctx.slot} belongs to database {database}: configure another slot name"
            )
        ]
    out: list[Check] = []
    if wal_status == "lost":
        out.append(
            Check(
                "slot",
                "fail",
                f"slot {ctx.slot} lost required WAL (max_slot_wal_keep_size exceeded); changes were missed. "
                f"Drop it ({drop}); the relay recreates it on start",
            )
        )
    elif active:
        out.append(
            Check(
                "slot",
                "warn",
                f"slot {ctx.slot} is in use by pid {active_pid}: another relay may be running (one consumer "
                "per slot)",
            )
        )
    elif temporary:
        out.append(Check("slot", "warn", f"slot {ctx.slot} is a temporary slot of another session"))
    else:
        out.append(Check("slot", "ok", f"slot {ctx.slot} exists (wal2json)"))
    lag_text = "unknown" if lag is None else f"{_fmt_bytes(int(lag))} ({lag} bytes)"
    lag_msg = f"lag {lag_text}, wal_status {wal_status}"
    if wal_status == "unreserved":
        out.append(
            Check(
                "slot lag",
                "warn",
                f"{lag_msg}: WAL is about to be removed; start the relay now or the slot is lost",
            )
        )
    elif lag is not None and int(lag) > LAG_WARN_BYTES:
        out.append(
            Check("slot lag", "warn", f"{lag_msg}: the slot retains much WAL; start the relay to drain it")
        )
    else:
        out.append(Check("slot lag", "ok", lag_msg))
    return out


def _check_resume_window(ctx: _Ctx) -> list[Check]:
    """The configured replay window and what the slot holds for it right now.

    The relay confirms the slot only up to the oldest change of its window, so the WAL kept is
    about the window; ``write_lag`` (the relay reports what it received as written) is how far
    its decoding trails commits, ``flush_lag`` how long the window keeps WAL.
    """
    setting = (
        f"{ctx.resume_window:g} s / {_fmt_bytes(ctx.resume_max_bytes)} "
        "(RELAY_RESUME_WINDOW / RELAY_RESUME_MAX_BYTES)"
    )
    if ctx.resume_window <= 0 or ctx.resume_max_bytes <= 0:
        return [
            Check("resume window", "ok", "resume is off (RELAY_RESUME_WINDOW=0): clients get resync_needed")
        ]
    row = ctx.conn.execute(
        "select (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint, s.active, "
        "extract(epoch from r.write_lag)::float8, extract(epoch from r.flush_lag)::float8 "
        "from pg_replication_slots s left join pg_stat_replication r on r.pid = s.active_pid "
        "where s.slot_name = %s",
        (ctx.slot,),
    ).fetchone()
    if row is None:
        return [Check("resume window", "ok", f"{setting}; the slot does not exist yet")]
    held, active, write_lag, flush_lag = row
    held_text = "unknown" if held is None else _fmt_bytes(int(held))
    if not active:
        return [
            Check(
                "resume window",
                "ok",
                f"{setting}; relay not connected: the slot holds {held_text} of WAL, decoded again (the "
                "window) when it starts",
            )
        ]
    behind = "caught up" if write_lag is None else f"decoding {float(write_lag):.1f} s behind commits"
    kept = "" if flush_lag is None else f", oldest kept change {float(flush_lag):.0f} s old"
    return [Check("resume window", "ok", f"{setting}; slot holds {held_text} of WAL{kept}; relay {behind}")]


def _check_wal_retention(ctx: _Ctx) -> list[Check]:
    (value,) = _one(ctx.conn, "select current_setting('max_slot_wal_keep_size')")
    if str(value) == "-1":
        return [
            Check(
                "wal retention",
                "warn",
                "max_slot_wal_keep_size = -1: unbounded WAL retention if the relay stops (the disk can "
                "fill); set e.g. max_slot_wal_keep_size = '10GB' in postgresql.conf and reload",
            )
        ]
    return [Check("wal retention", "ok", f"max_slot_wal_keep_size = {value}")]


def _check_policies(ctx: _Ctx) -> list[Check]:
    """Row policies per enabled table: none (default deny), in-process, or evaluated in Postgres."""
    if not ctx.published:
        return []
    if _one(ctx.conn, "select to_regclass('realtime.row_policies') is not null")[0] is not True:
        return [Check("row policies", "warn", "realtime.policies is missing: run relay migrate")]
    from relay.core.policies import Policy, PolicyError, compile_policy

    rows = ctx.conn.execute(
        "select schema_name::text, table_name::text, name::text, roles::text[], using_expr::text "
        "from realtime.policies order by 1, 2, 3"
    ).fetchall()
    by_table: dict[tuple[str, str], list[tuple[str, tuple[str, ...], str]]] = {}
    for s, t, n, roles, expr in rows:
        by_table.setdefault((str(s), str(t)), []).append((str(n), tuple(roles), str(expr)))
    lines: list[str] = []
    slow: list[str] = []
    slow_schemas: set[str] = set()
    invalid: list[str] = []
    no_policy: list[str] = []
    for s, t, _, _ in ctx.published:
        pols = by_table.get((s, t), [])
        if not pols:
            no_policy.append(_q(s, t))
            continue
        cols: dict[str, str] = dict(
            ctx.conn.execute(
                "select a.attname::text, ty.typname::text from pg_attribute a "
                "join pg_type ty on ty.oid = a.atttypid "
                "where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped",
                (_q(s, t),),
            ).fetchall()
        )
        fast = 0
        for n, roles, expr in pols:
            try:
                cp = compile_policy(Policy(s, t, n, roles, expr), cols)
            except PolicyError as exc:
                invalid.append(f"{_q(s, t)} {n!r}: {exc}")
                continue
            if cp.fast is None:
                slow.append(f"{_q(s, t)} {n!r}: {cp.slow_reason or 'outside the in-process shapes'}")
                slow_schemas.add(s)
            else:
                fast += 1
        lines.append(f"{_q(s, t)}: {len(pols)} ({fast} in-process)")
    out = [Check("row policies", "ok", "; ".join(lines) if lines else "no policies yet")]
    if no_policy:
        out.append(
            Check(
                "default deny",
                "warn",
                "no policy on "
                + ", ".join(no_policy)
                + ": only service_role receives these rows (realtime.create_policy(...) to share them)",
            )
        )
    if slow:
        out.append(
            Check(
                "slow policies",
                "warn",
                "evaluated by Postgres, one query per change: " + "; ".join(slow),
            )
        )
    if invalid:
        out.append(
            Check("invalid policies", "fail", "the relay ignores (grants nothing):\n" + "\n".join(invalid))
        )
    out.extend(_check_eval_schema_usage(ctx, slow_schemas))
    return out


def _check_eval_schema_usage(ctx: _Ctx, schemas: set[str]) -> list[Check]:
    """Policies evaluated in Postgres run as realtime_policy_eval (migration 0007), which needs
    USAGE on their table's schema: without it every such change is a PolicyError for everyone."""
    if not schemas or _one(ctx.conn, "select to_regrole('realtime_policy_eval') is null")[0]:
        return []
    missing = [
        sc
        for sc in sorted(schemas)
        if _one(ctx.conn, "select has_schema_privilege('realtime_policy_eval', %s, 'USAGE')", (sc,))[0]
        is not True
    ]
    if not missing:
        return []
    grants = "; ".join(f"GRANT USAGE ON SCHEMA {_ident(sc)} TO realtime_policy_eval" for sc in missing)
    return [
        Check(
            "policy grants",
            "warn",
            f"policies evaluated in Postgres run as realtime_policy_eval, which may not use schema "
            f"{', '.join(missing)} (subscribers get PolicyError 42501): {grants}",
        )
    ]


def _check_topic_policies(ctx: _Ctx) -> list[Check]:
    """How many private-channel policies exist; a database without migration 0006 cannot have any."""
    if _one(ctx.conn, "select to_regclass('realtime.topic_policies') is not null")[0] is not True:
        return [
            Check(
                "topic policies",
                "warn",
                "realtime.topic_policies is missing (migration 0006_topic_policies.sql): run relay migrate; "
                "private channels cannot be joined until then",
            )
        ]
    total, reads = _one(
        ctx.conn,
        "select count(*)::int, (count(*) filter (where action = 'read'))::int from realtime.topic_policies",
    )
    if not total:
        return [
            Check(
                "topic policies",
                "ok",
                "none yet: private channels deny by default (realtime.create_topic_policy(...) to allow)",
            )
        ]
    return [Check("topic policies", "ok", f"{total} ({reads} read, {total - reads} write)")]


_SANDBOX = (
    "realtime.eval_policy_sandboxed(text,regclass,jsonb,jsonb[])",
    "realtime.eval_topic_policy_sandboxed(text,text,text,jsonb)",
)


def _check_policy_sandbox(ctx: _Ctx) -> list[Check]:
    """The relay's role may call the functions that evaluate policies as realtime_policy_eval.

    Why here: without EXECUTE every policy evaluated in Postgres fails for every subscriber
    (migration 0007 revokes it from PUBLIC); better one line with the GRANT at start-up.
    """
    if _one(ctx.conn, "select to_regprocedure(%s) is null", (_SANDBOX[0],))[0]:
        return []  # not migrated yet: the realtime schema check says so
    missing = [
        sig
        for sig in _SANDBOX
        if _one(
            ctx.conn,
            "select coalesce(has_function_privilege(to_regprocedure(%s), 'EXECUTE'), false)",
            (sig,),
        )[0]
        is not True
    ]
    if missing:
        return [
            Check(
                "policy evaluation",
                "fail",
                f"role {ctx.conn.info.user} may not evaluate policies: as the migrating role run "
                f"GRANT EXECUTE ON FUNCTION {', '.join(missing)} TO {_ident(ctx.conn.info.user)} "
                "(docs/roles.md)",
            )
        ]
    return [Check("policy evaluation", "ok", "policies run as realtime_policy_eval")]


CHECKS: list[tuple[str, Callable[[_Ctx], list[Check]]]] = [
    ("server version", _check_server),
    ("wal_level", _check_wal_level),
    ("replication role", _check_role),
    ("replication slots", _check_capacity),
    ("wal2json plugin", _check_wal2json),
    ("realtime schema", _check_migrated),
    ("publication", _check_publication),
    ("tables", _check_tables),
    ("replica identity", _check_replica_identity),
    ("publication rules", _check_publication_rules),
    ("row policies", _check_policies),
    ("topic policies", _check_topic_policies),
    ("policy evaluation", _check_policy_sandbox),
    ("slot", _check_slot),
    ("resume window", _check_resume_window),
    ("wal retention", _check_wal_retention),
]


def run_preflight(
    dsn: str,
    *,
    publication: str,
    slot: str,
    resume_window: float = 300.0,
    resume_max_bytes: int = 64 * 1024 * 1024,
) -> PreflightReport:
    """Run every check against ``dsn`` for the given publication and slot names."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["unknown error"])[0]
        return PreflightReport(
            [
                Check(
                    "connect",
                    "fail",
                    f"cannot connect: {first}. Check the DSN (RELAY_DATABASE_URL), that Postgres is running "
                    "and that pg_hba.conf allows this user and host",
                )
            ]
        )
    checks: list[Check] = []
    with conn:
        info = conn.info
        checks.append(Check("connect", "ok", f"{info.user}@{info.host}:{info.port}/{info.dbname}"))
        ctx = _Ctx(
            conn=conn,
            dsn=dsn,
            publication=publication,
            slot=slot,
            resume_window=resume_window,
            resume_max_bytes=resume_max_bytes,
        )
        for name, fn in CHECKS:
            try:
                checks.extend(fn(ctx))
            except psycopg.Error as exc:
                msg = exc.diag.message_primary or str(exc)
                checks.append(Check(name, "fail", f"check could not run: {msg}"))
    return PreflightReport(checks)
