"""Create, drop and list the relay's row policies from Python (thin wrappers over the SQL API).

Why wrappers and not Python logic: ``realtime.create_policy`` / ``drop_policy`` are the one
implementation, shared with DBAs working in psql; they check ownership, compile the expression
against the table (reporting Postgres's own errors) and emit the logical message that makes a
running relay reload in commit order.  This module only turns server errors into a
:class:`PolicySQLError` whose text is fit to show a user as-is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

__all__ = ["PolicyInfo", "PolicySQLError", "create_policy", "drop_policy", "list_policies"]

_NOT_MIGRATED_HINT = "run `relay migrate` first to create the realtime schema"


class PolicySQLError(RuntimeError):
    """A policy operation failed; ``sqlstate``, ``message`` and ``hint`` come from the server."""

    def __init__(self, message: str, hint: str | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message if not hint else f"{message}\nHINT: {hint}")
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class PolicyInfo:
    """One row of the ``realtime.policies`` view."""

    schema: str
    table: str
    name: str
    roles: tuple[str, ...]
    using_expr: str
    created_at: datetime | None
    created_by: str | None

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"


def _translate(exc: psycopg.Error) -> PolicySQLError:
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    if isinstance(exc, errors.InvalidSchemaName | errors.UndefinedFunction | errors.UndefinedTable) and (
        "realtime." in message or 'schema "realtime"' in message
    ):
        return PolicySQLError("the realtime schema is missing or outdated", _NOT_MIGRATED_HINT, diag.sqlstate)
    return PolicySQLError(message, diag.message_hint, diag.sqlstate)


def _execute(dsn: str, query: str, params: Sequence[object]) -> list[TupleRow]:
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise PolicySQLError(f"cannot connect: {str(exc).strip()}") from exc
    with conn:
        try:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise _translate(exc) from exc


def create_policy(
    dsn: str, table: str, name: str, using_expr: str, roles: Sequence[str] = ("authenticated",)
) -> None:
    """``realtime.create_policy``: ``table`` is parsed by Postgres (``public.bookings``, quoting,
    search_path), so errors are exactly what psql users see."""
    _execute(
        dsn,
        "select realtime.create_policy(%s::text::regclass, %s, %s, %s::text[])",
        (table, name, using_expr, list(roles)),
    )


def drop_policy(dsn: str, table: str, name: str, *, if_exists: bool = False) -> None:
    """``realtime.drop_policy``; a missing policy is an error unless ``if_exists``."""
    _execute(dsn, "select realtime.drop_policy(%s::text::regclass, %s, %s)", (table, name, if_exists))


def list_policies(dsn: str) -> list[PolicyInfo]:
    """The policies of existing tables, ordered by schema, table and name."""
    rows = _execute(
        dsn,
        "select schema_name::text, table_name::text, name, roles, using_expr, created_at, "
        "created_by::text from realtime.policies order by 1, 2, 3",
        (),
    )
    out: list[PolicyInfo] = []
    for s, t, n, r, e, at, by in rows:
        roles = tuple(str(x) for x in r) if isinstance(r, list) else ()
        out.append(
            PolicyInfo(
                str(s),
                str(t),
                str(n),
                roles,
                str(e),
                at if isinstance(at, datetime) else None,
                None if by is None else str(by),
            )
        )
    return out
