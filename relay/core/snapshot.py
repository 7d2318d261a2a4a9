"""Snapshot on join, the pure parts: the query, rows in wal2json's shape, visibility by xid.

Why these pieces are pure and here:

- **The query** is built only from the binding (schema, table, bound filter) and the catalog's
  column list: identifiers quoted, operands passed as parameters, never SQL from a client.  The
  filter goes into ``WHERE`` only where Postgres means exactly what the relay's filter means (a
  *superset* is enough: every row is still tested by the relay's own filter, as live changes
  are), so an ``eq`` on an indexed column can use the index while the relay stays exact.
- **Rows are made into wal2json row messages** (values as the type's output function prints
  them, numbers bare, booleans as JSON booleans) and decoded by the same
  :class:`~relay.core.wal2json.Decoder` as the stream: a snapshot row has exactly the value
  shapes of a live INSERT, by construction rather than by a second converter.
- **Visibility** of a streamed transaction in the snapshot is decided by its xid against
  ``pg_current_snapshot()`` (xmin, xmax, in-progress list), not by LSN: a transaction's commit
  record can be in the WAL before the transaction is visible to new snapshots (between the
  commit record and leaving the proc array, e.g. while waiting for a synchronous standby).
  wal2json prints 32-bit xids, ``pg_current_snapshot`` 64-bit ones (epoch in the high half):
  a 32-bit xid is widened to the full xid nearest the snapshot's ``xmax``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from relay.core.filters import BoundFilter

__all__ = [
    "NUMBER_OIDS",
    "PgSnapshot",
    "SnapshotColumn",
    "quote_ident",
    "row_message",
    "snapshot_query",
    "xid_of_raw",
]

#: Type oids wal2json prints as bare JSON numbers (int2, int4, int8, oid, float4, float8, numeric).
NUMBER_OIDS: Final = frozenset({20, 21, 23, 26, 700, 701, 1700})
_BOOL_OID: Final = 16
_BYTEA_OID: Final = 17
_NOT_A_NUMBER: Final = frozenset({"NaN", "Infinity", "-Infinity"})

#: Column types whose ``=`` in Postgres is exactly the relay's ``eq`` (no collation, no case
#: folding, no time-dependent operand, no json null ambiguity), and those whose ordering is too.
_EQ_TYPES: Final = frozenset({"int2", "int4", "int8", "numeric", "text", "varchar", "uuid", "bool"})
_ORDER_TYPES: Final = frozenset({"int2", "int4", "int8", "numeric"})
_ORDER_SQL: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


@dataclass(frozen=True, slots=True)
class PgSnapshot:
    """``pg_current_snapshot()``: transactions below ``xmin`` are settled, ``xmax`` and above had
    not started, those in ``xip`` were in progress.  Full 64-bit xids."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> PgSnapshot:
        """``'xmin:xmax:xip1,xip2'`` as Postgres prints a ``pg_snapshot``."""
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"not a pg_snapshot: {text!r}")
        xmin, xmax = int(parts[0]), int(parts[1])
        xip = frozenset(int(x) for x in parts[2].split(",") if x)
        return cls(xmin, xmax, xip)

    def widen(self, xid: int) -> int:
        """The full xid of a 32-bit ``xid`` seen near this snapshot (the epoch is ``xmax``'s,
        or the one before or after when that lies nearer: the counter may have wrapped)."""
        full = (self.xmax >> 32 << 32) | (xid & 0xFFFFFFFF)
        if full < self.xmax - (1 << 31):
            full += 1 << 32
        elif full >= self.xmax + (1 << 31):
            full -= 1 << 32
        return full

    def visible(self, xid: int) -> bool:
        """Whether the committed transaction ``xid`` (32-bit, from wal2json) is in the snapshot.

        ``0`` (unknown: a change decoded without ``include-xids``) counts as not visible: the
        change is then delivered, never lost.
        """
        if xid <= 0:
            return False
        full = self.widen(xid)
        return full < self.xmin or (full < self.xmax and full not in self.xip)


@dataclass(frozen=True, slots=True)
class SnapshotColumn:
    """A column as wal2json describes it: name, type oid, ``format_type`` spelling."""

    name: str
    typeoid: int
    type: str


def quote_ident(name: str) -> str:
    """An identifier quoted for SQL, whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


def snapshot_query(
    schema: str,
    table: str,
    columns: Sequence[SnapshotColumn],
    bound: BoundFilter | None,
) -> tuple[str, list[Any]]:
    """``SELECT`` of every column as its output function's text, with the exact part of the filter.

    ``format('%s', v)`` calls the type's output function (a plain ``::text`` would not: ``bool``
    and ``bpchar`` casts differ), which is what wal2json prints; NULL stays NULL.  The
    ``WHERE`` holds the conditions Postgres evaluates exactly like the relay (see
    :data:`_EQ_TYPES`), each operand a parameter cast to the column's own type so an index on
    the column applies; the rest of the filter is applied by the relay to each row.
    """
    select = ", ".join(
        f"case when {quote_ident(c.name)} is null then null "
        f"else pg_catalog.format('%s', {quote_ident(c.name)}) end"
        for c in columns
    )
    where, args = _where(bound)
    sql = f"select {select} from {quote_ident(schema)}.{quote_ident(table)}"
    if where:
        sql += " where " + " and ".join(where)
    return sql, args


def _where(bound: BoundFilter | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if bound is None:
        return where, args
    for bc in bound.conditions:
        cond = bc.condition
        typ = bc.column_type
        if cond.negated or typ not in _EQ_TYPES:
            continue
        col = quote_ident(cond.column)
        if cond.op == "eq":
            args.append(cond.values[0])
            where.append(f"{col} = ${len(args)}::text::pg_catalog.{typ}")
        elif cond.op == "in":
            args.append(list(cond.values))
            where.append(f"{col} = any(${len(args)}::text[]::pg_catalog.{typ}[])")
        elif cond.op in _ORDER_SQL and typ in _ORDER_TYPES:
            args.append(cond.values[0])
            where.append(f"{col} {_ORDER_SQL[cond.op]} ${len(args)}::text::pg_catalog.{typ}")
        elif cond.op == "is" and cond.values[0].lower() == "null":
            where.append(f"{col} is null")
    return where, args


def row_message(
    schema: str,
    table: str,
    columns: Sequence[SnapshotColumn],
    pk: Sequence[str],
    values: Sequence[str | None],
    numbers_as_text: bool,
) -> bytes:
    """A wal2json format-version 2 INSERT message for one snapshot row (output-function texts).

    Printed as wal2json prints values: numbers bare (or as strings with
    ``numeric-data-types-as-string``; wal2json 2.5 prints a NaN or infinite number as ``null``),
    booleans as ``true``/``false``, ``bytea`` as its hex digits without ``\\x``, everything else
    as a JSON string; NULL as ``null``.
    """
    cols: list[dict[str, Any]] = []
    for c, v in zip(columns, values, strict=True):
        value: Any
        if v is None:
            value = None
        elif c.typeoid in NUMBER_OIDS:
            if numbers_as_text:
                value = v
            elif v in _NOT_A_NUMBER:
                value = None
            else:
                value = orjson.Fragment(v.encode())
        elif c.typeoid == _BOOL_OID:
            value = v == "t"
        elif c.typeoid == _BYTEA_OID:
            value = v[2:] if v.startswith("\\x") else v  # wal2json leaves out the \x
        else:
            value = v
        cols.append({"name": c.name, "type": c.type, "typeoid": c.typeoid, "value": value})
    msg = {
        "action": "I",
        "schema": schema,
        "table": table,
        "columns": cols,
        "pk": [{"name": n} for n in pk],
    }
    return orjson.dumps(msg)


_XID_MARK: Final = b'"xid":'


def xid_of_raw(raw: bytes) -> int:
    """The transaction id in a retained wal2json row message (0 when it has none)."""
    at = raw.find(_XID_MARK)
    if at < 0:
        return 0
    start = end = at + len(_XID_MARK)
    while end < len(raw) and 48 <= raw[end] <= 57:
        end += 1
    return int(raw[start:end]) if end > start else 0
