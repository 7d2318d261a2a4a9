"""Apply the numbered SQL migrations in ``relay/sql/migrations`` and the optional demo schema.

Why a tiny home-grown migrator instead of a framework: the relay owns one small schema
(``realtime``), must be able to migrate itself at start-up, and must be safe when several relay
processes start at once.  The rules are the classic ones:

* files are ``NNNN_name.sql``, applied in version order, each in its own transaction together with
  the row recording it, so a failure leaves the database at the previous version;
* a session advisory lock serializes concurrent migrators (two relays booting together);
* an applied file is immutable: if its checksum changed we refuse, because silently skipping the
  edit and silently re-running it are both wrong.  Add a new numbered file instead.

The SQL ships inside the package (``relay/sql``, package data read through
:mod:`importlib.resources`), so ``pip install`` gives a relay that can migrate; ``RELAY_SQL_DIR``
overrides the location (a test, or a DBA trying a patched migration set).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow

__all__ = [
    "DEFAULT_PUBLICATION",
    "Migration",
    "MigrationError",
    "apply_demo_schema",
    "apply_migrations",
    "discover_migrations",
    "migration_status",
    "sql_dir",
]

log = logging.getLogger(__name__)

DEFAULT_PUBLICATION = "supabase_realtime"

# pg_advisory_lock key shared by every relay process: b"relay" read as an integer.  Any fixed
# value works as long as all migrators agree and it is unlikely to collide with an application's.
_LOCK_KEY = int.from_bytes(b"relay", "big")

_FILE_RE = re.compile(r"^(\d{4})_[A-Za-z0-9_\-]+\.sql$")

_CREATE_MIGRATIONS_TABLE = """
create schema if not exists realtime;
create table if not exists realtime.schema_migrations (
    version    int primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);
grant usage on schema realtime to public;
grant select on realtime.schema_migrations to public;
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied; the message says why and what to do."""


@dataclass(frozen=True)
class Migration:
    """One ``NNNN_name.sql`` file of the migration set (a file, or a resource of the package)."""

    version: int
    name: str
    path: Traversable
    checksum: str

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")


def sql_dir() -> Traversable:
    """The directory holding ``migrations/`` and ``demo/``.

    ``RELAY_SQL_DIR`` wins so a test or a DBA can point elsewhere; otherwise the package's own
    ``relay/sql`` (package data), found through :mod:`importlib.resources` so it works the same
    from a source checkout, an editable install and a wheel.
    """
    env = os.environ.get("RELAY_SQL_DIR")
    path: Traversable = Path(env) if env else importlib.resources.files("relay").joinpath("sql")
    if not path.is_dir():
        raise MigrationError(
            f"SQL directory not found at {path}; set RELAY_SQL_DIR to the directory containing "
            "migrations/ and demo/"
        )
    return path


def _checksum(path: Traversable) -> str:
    """sha256 of the file with line endings normalized.

    Why normalize: a checkout with CRLF line endings (git autocrlf) is the same migration, and
    refusing to start over it would be a false alarm.
    """
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def _sql_files(directory: Traversable) -> list[Traversable]:
    """The ``*.sql`` entries of ``directory`` in name order (Traversable has no glob)."""
    return sorted(
        (p for p in directory.iterdir() if p.name.endswith(".sql") and p.is_file()), key=lambda p: p.name
    )


def discover_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files in version order; rejects duplicate versions and stray ``.sql`` names."""
    mdir = (directory if directory is not None else sql_dir()) / "migrations"
    if not mdir.is_dir():
        raise MigrationError(f"migrations directory not found: {mdir}")
    found: dict[int, Migration] = {}
    for path in _sql_files(mdir):
        m = _FILE_RE.match(path.name)
        if m is None:
            raise MigrationError(
                f"unexpected file {path.name} in {mdir}: migrations must be named NNNN_name.sql"
            )
        version = int(m.group(1))
        if version in found:
            raise MigrationError(
                f"two migrations share version {version:04d}: {found[version].name} and {path.name}"
            )
        found[version] = Migration(version, path.name, path, _checksum(path))
    return [found[v] for v in sorted(found)]


@contextmanager
def _migration_lock(conn: psycopg.Connection[TupleRow]) -> Iterator[None]:
    """Hold the session advisory lock so concurrent migrators take turns rather than race."""
    conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        yield
    finally:
        # Closing the session releases the lock anyway; never let unlocking mask the real error.
        with suppress(psycopg.Error):
            if not conn.closed:
                conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _applied(conn: psycopg.Connection[TupleRow]) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the recorded migrations; empty if none were ever applied."""
    row = conn.execute("select to_regclass('realtime.schema_migrations') is not null").fetchone()
    if row is None or not row[0]:
        return {}
    rows = conn.execute("select version, name, checksum from realtime.schema_migrations").fetchall()
    return {int(str(v)): (str(n), str(c)) for v, n, c in rows}


def _no_privilege(conn: psycopg.Connection[TupleRow], what: str, exc: psycopg.Error) -> MigrationError:
    """One line naming the role, what it may not do, and the fix (docs/roles.md).

    Why: the usual cause is running ``relay migrate`` / ``relay serve`` as the least-privilege
    runtime role while a migration is pending; a traceback ending in ``permission denied for
    database`` does not say that the owner role must migrate first.
    """
    reason = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    if exc.diag.message_hint:  # the migration itself named the fix (e.g. 0007: create a role)
        return MigrationError(f"role {conn.info.user} may not {what} ({reason}): {exc.diag.message_hint}")
    return MigrationError(
        f"role {conn.info.user} may not {what} ({reason}): run `relay migrate` as the role that owns the "
        "realtime schema (see docs/roles.md); afterwards `relay serve` works as the runtime role, which "
        "needs no CREATE privilege once nothing is pending"
    )


def _prepare(conn: psycopg.Connection[TupleRow]) -> None:
    """Create the bookkeeping table, refusing a foreign ``realtime.schema_migrations``.

    Why the check: a Supabase database already has a ``realtime`` schema whose Ecto-managed
    ``schema_migrations`` has no ``checksum`` column; writing our rows there would corrupt it.
    """
    try:
        with conn.transaction():  # rolled back (grants included) if the table turns out to be foreign
            conn.execute(_CREATE_MIGRATIONS_TABLE)
            row = conn.execute(
                "select count(*) from pg_attribute where attrelid = 'realtime.schema_migrations'::regclass "
                "and attname in ('version', 'name', 'checksum') and not attisdropped"
            ).fetchone()
            if row is None or row[0] != 3:
                raise MigrationError(
                    "realtime.schema_migrations exists but was not created by this relay (is this a "
                    "Supabase database with its own Realtime service?); the relay cannot share that schema"
                )
    except errors.InsufficientPrivilege as exc:
        raise _no_privilege(conn, "create the realtime schema", exc) from exc
    except psycopg.Error as exc:
        raise MigrationError(f"cannot create the realtime schema: {exc}") from exc


def _verify_checksums(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    for mig in migrations:
        rec = applied.get(mig.version)
        if rec is not None and rec[1] != mig.checksum:
            raise MigrationError(
                f"migration {mig.name} was already applied (as {rec[0]}, checksum {rec[1][:12]}) but the "
                f"file on disk now has checksum {mig.checksum[:12]}. Applied migrations are immutable: "
                "restore the original file and put the change in a new numbered migration."
            )
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        # A newer relay migrated this database; running older code is usually fine, so only warn.
        log.warning(
            "database has migrations this relay does not know: %s (was it migrated by a newer relay?)",
            ", ".join(applied[v][0] for v in unknown),
        )


def migration_status(
    conn: psycopg.Connection[TupleRow], directory: Traversable | None = None
) -> tuple[list[str], list[str]]:
    """(applied, pending) migration file names, for ``relay check``; raises on a changed checksum."""
    migrations = discover_migrations(directory)
    applied = _applied(conn)
    _verify_checksums(migrations, applied)
    done = [m.name for m in migrations if m.version in applied]
    pending = [m.name for m in migrations if m.version not in applied]
    return done, pending


def _check_publication_name(publication: str) -> None:
    if not publication or len(publication.encode()) > 63:
        raise MigrationError(f"invalid publication name {publication!r}: must be 1-63 bytes")


def apply_migrations(dsn: str, *, publication: str = DEFAULT_PUBLICATION) -> list[str]:
    """Bring the ``realtime`` schema up to date and ensure the publication exists.

    Returns the file names applied by this call (empty when already current).  Also records the
    publication name in ``realtime.settings`` so the SQL functions and the relay agree on it, and
    creates the publication (empty) if missing.
    """
    _check_publication_name(publication)
    migrations = discover_migrations()
    done: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        if _up_to_date(conn, migrations):
            # Nothing to apply: no lock, no DDL, so the runtime role (which may not CREATE) can
            # run `relay serve` / `relay migrate` without failing on work that is already done.
            _ensure_publication(conn, publication)
            return done
        with _migration_lock(conn):
            _migrate(conn, migrations, done)
            _ensure_publication(conn, publication)
    return done


def _up_to_date(conn: psycopg.Connection[TupleRow], migrations: list[Migration]) -> bool:
    """Every migration is recorded with its checksum (read-only; False when unsure)."""
    try:
        applied = _applied(conn)
    except psycopg.Error:
        return False  # e.g. a foreign schema_migrations: the full path reports it properly
    if not all(m.version in applied for m in migrations):
        return False
    _verify_checksums(migrations, applied)
    return True


def _migrate(conn: psycopg.Connection[TupleRow], migrations: list[Migration], done: list[str]) -> None:
    """Apply the pending migrations under the lock, appending their names to ``done``."""
    _prepare(conn)
    applied = _applied(conn)
    _verify_checksums(migrations, applied)
    for mig in migrations:
        if mig.version in applied:
            continue
        log.info("applying migration %s", mig.name)
        try:
            with conn.transaction():
                conn.execute(mig.read())
                conn.execute(
                    "insert into realtime.schema_migrations (version, name, checksum) values (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
        except errors.InsufficientPrivilege as exc:
            raise _no_privilege(conn, f"apply migration {mig.name}", exc) from exc
        except psycopg.Error as exc:
            raise MigrationError(f"migration {mig.name} failed: {exc}") from exc
        done.append(mig.name)


def _ensure_publication(conn: psycopg.Connection[TupleRow], publication: str) -> None:
    """Record the publication name in realtime.settings and create it if missing.

    Writes only what differs, so an up-to-date database needs no privilege beyond reading.
    """
    try:
        with conn.transaction():
            row = conn.execute("select value from realtime.settings where key = 'publication'").fetchone()
            if row is None or row[0] != publication:
                conn.execute(
                    "insert into realtime.settings (key, value) values ('publication', %s) "
                    "on conflict (key) do update set value = excluded.value",
                    (publication,),
                )
            exists = conn.execute(
                "select 1 from pg_publication where pubname = %s", (publication,)
            ).fetchone()
            if exists is None:
                log.info("creating publication %s", publication)
                conn.execute(sql.SQL("create publication {}").format(sql.Identifier(publication)))
    except errors.InsufficientPrivilege as exc:
        raise _no_privilege(conn, f"set up publication {publication}", exc) from exc


def apply_demo_schema(dsn: str) -> None:
    """Apply ``relay/sql/demo/*.sql`` (idempotent files) in name order; migrations must be applied first.

    Why not migrate implicitly: the publication name is a deployment choice, and guessing the
    default here could overwrite the configured one.
    """
    ddir = sql_dir() / "demo"
    files = _sql_files(ddir) if ddir.is_dir() else []
    if not files:
        raise MigrationError(f"no demo SQL files in {ddir}")
    with psycopg.connect(dsn, autocommit=True) as conn, _migration_lock(conn):
        row = conn.execute("select to_regprocedure('realtime.enable_table(regclass)') is not null").fetchone()
        if row is None or not row[0]:
            raise MigrationError("the realtime schema is not migrated: run `relay migrate` first")
        for path in files:
            log.info("applying demo schema %s", path.name)
            try:
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8"))
            except psycopg.Error as exc:
                raise MigrationError(f"demo schema {path.name} failed: {exc}") from exc
