"""Enable, disable and list relay tables from the CLI (``relay tables ...``).

Why thin wrappers over the SQL functions rather than Python logic: the SQL functions are the one
implementation shared with DBAs who prefer ``select realtime.enable_table(...)`` in psql, and they
emit the logical message that tells a running relay about the change in commit order.  This module
only turns Postgres errors into a :class:`TableError` whose text is fit to show a user as-is.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

__all__ = ["TableError", "TableInfo", "disable_table", "enable_table", "list_tables"]


class TableError(RuntimeError):
    """A table operation failed; ``message`` and ``hint`` come from the server when it gave them."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message if not hint else f"{message}\nHINT: {hint}")
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class TableInfo:
    """One row of ``realtime.enabled_tables()``."""

    schema: str
    name: str
    replica_identity: str
    has_primary_key: bool

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


_NOT_MIGRATED_HINT = "run `relay migrate` first to create the realtime schema"


def _translate(exc: psycopg.Error) -> TableError:
    """Map a server error to a TableError, recognizing the "not migrated yet" case."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    hint = diag.message_hint
    if isinstance(exc, errors.InvalidSchemaName | errors.UndefinedFunction) and "realtime" in message:
        return TableError("the realtime schema is missing or outdated", _NOT_MIGRATED_HINT)
    return TableError(message, hint)


def _connect(dsn: str) -> psycopg.Connection[TupleRow]:
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise TableError(f"cannot connect: {str(exc).strip()}") from exc


def _call(dsn: str, query: str, name: str) -> None:
    with _connect(dsn) as conn:
        try:
            # Pass the name as text and let Postgres' regclass input parse it, so quoting and
            # search_path resolution are exactly what psql users get (and errors are Postgres's own).
            conn.execute(query, (name,))
        except psycopg.Error as exc:
            raise _translate(exc) from exc


def enable_table(dsn: str, name: str) -> None:
    """Add ``name`` (e.g. ``public.bookings``) to the relay publication with REPLICA IDENTITY FULL."""
    _call(dsn, "select realtime.enable_table(%s::text::regclass)", name)


def disable_table(dsn: str, name: str) -> None:
    """Remove ``name`` from the relay publication (no error if it was not enabled)."""
    _call(dsn, "select realtime.disable_table(%s::text::regclass)", name)


def list_tables(dsn: str) -> list[TableInfo]:
    """The enabled tables, ordered by schema and name."""
    with _connect(dsn) as conn:
        try:
            rows = conn.execute(
                "select schema_name::text, table_name::text, replica_identity, has_primary_key "
                "from realtime.enabled_tables()"
            ).fetchall()
        except psycopg.Error as exc:
            raise _translate(exc) from exc
    return [TableInfo(str(s), str(t), str(ri), bool(pk)) for s, t, ri, pk in rows]
