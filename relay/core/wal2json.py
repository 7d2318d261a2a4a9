"""Decode wal2json format-version 2 messages into :mod:`relay.core.changes` values.

Why pure: the replication stream hands us one JSON document per WAL message; everything from
here on is deterministic and tested from captured fixtures, without Postgres.

Options the relay starts wal2json with (see :data:`WAL2JSON_OPTIONS`): ``include-timestamp``,
``include-pk``, ``include-type-oids``, ``include-lsn`` and ``include-transaction`` — so a
``B`` message already carries the transaction's commit LSN, which is what gives every change a
position (commit LSN, index) before the transaction ends — and ``include-xids``: every row
message then carries its transaction's id, which a snapshot on join compares with its Postgres
snapshot (visibility is decided by xid, not LSN).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from relay.core.changes import (
    DECODE_FAILED,
    Action,
    Begin,
    Column,
    Commit,
    Lsn,
    Message,
    RowChange,
    column_error,
)
from relay.core.position import commit_of, index_of
from relay.core.sqltypes.arrays import identity
from relay.core.sqltypes.output import Converter, TypeRegistry, commit_timestamp, numeric_text

__all__ = ["NUMBERS_AS_TEXT", "WAL2JSON_OPTIONS", "DecodeError", "Decoder", "wal2json_options"]

WAL2JSON_OPTIONS: dict[str, str] = {
    "format-version": "2",
    "include-transaction": "1",
    "include-timestamp": "1",
    "include-pk": "1",
    "include-type-oids": "1",
    "include-types": "1",
    "include-lsn": "1",
    "include-xids": "1",
}

#: wal2json 2.6+ option: numbers as exact strings, NaN/Infinity included (2.5 prints those as
#: ``null`` and rejects the option; the pipeline then starts without it).
NUMBERS_AS_TEXT = "numeric-data-types-as-string"

_ACTIONS = {"I": Action.INSERT, "U": Action.UPDATE, "D": Action.DELETE}


class DecodeError(ValueError):
    """A wal2json message the relay cannot interpret (a bug or an unsupported wal2json)."""


def wal2json_options(
    tables: list[tuple[str, str]],
    msg_prefixes: tuple[str, ...] = ("realtime",),
    numbers_as_text: bool = False,
) -> dict[str, str]:
    """The option set for START_REPLICATION, restricted to ``tables`` and our message prefixes.

    wal2json's ``add-tables`` parser (2.x) splits the list on ``,`` and on unescaped
    whitespace, splits each entry on the first ``.``, reads a leading ``*`` as a wildcard, and
    drops a ``\\`` before any character, keeping that character.  :func:`_esc` escapes
    exactly those characters, so any identifier Postgres accepts names itself and only
    itself.  An empty table list would mean "all tables" to wal2json, so we then filter on a name
    no table can have.
    """
    opts = dict(WAL2JSON_OPTIONS)
    if numbers_as_text:
        opts[NUMBERS_AS_TEXT] = "1"
    if tables:
        opts["add-tables"] = ",".join(f"{_esc(s)}.{_esc(t)}" for s, t in tables)
    else:
        opts["add-tables"] = "relay\\.no\\.table.none"
    opts["add-msg-prefixes"] = ",".join(msg_prefixes)
    return opts


# The characters wal2json's add-tables parser gives a meaning: separators, the escape itself,
# the wildcard, and what C's isspace() counts as whitespace (it ends an entry).
_ADD_TABLES_SPECIAL = frozenset(",.\\* \t\n\v\f\r")


def _esc(name: str) -> str:
    return "".join("\\" + ch if ch in _ADD_TABLES_SPECIAL else ch for ch in name)


class Decoder:
    """Stateful decoder: remembers the open transaction to number its changes."""

    def __init__(self, types: TypeRegistry | None = None) -> None:
        self.types = types or TypeRegistry()
        self._commit_lsn = Lsn(0)
        self._timestamp = ""
        self._index = 0
        self._xid: int | None = None
        self._layouts: dict[tuple[str, str, int], _Layout] = {}
        self._end_text: str | None = None
        self._end_lsn = Lsn(0)
        self._ts_text = ""

    def decode(self, data: bytes | str) -> Begin | Commit | RowChange | Message | None:
        """Decode one message; returns None for messages the relay ignores (e.g. TRUNCATE)."""
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            try:
                msg = json.loads(data, parse_float=Decimal)
            except ValueError as exc:
                raise DecodeError(f"not JSON: {exc}") from exc
        if not isinstance(msg, dict):
            raise DecodeError("wal2json message is not an object")
        action = msg.get("action")
        if action in ("I", "U", "D"):
            raw = data.encode() if isinstance(data, str) else bytes(data)
            if _NUMERIC_MARK in raw and not self.types.numbers_as_text:  # as text: already exact
                _exact_numerics(msg, raw)
            return self._row(msg, _ACTIONS[action], raw)
        if action == "B":
            lsn = Lsn.parse(msg["lsn"]) if "lsn" in msg else Lsn(0)
            nxt = msg.get("nextlsn")
            end = Lsn.parse(nxt) if nxt else lsn
            self._commit_lsn = lsn
            self._end_text, self._end_lsn = nxt, end
            self._ts_text = msg.get("timestamp", "")
            self._timestamp = commit_timestamp(self._ts_text)
            self._index = 0
            self._xid = msg.get("xid")
            return Begin(self._xid, lsn, end, self._timestamp)
        if action == "C":
            # B already carried the same lsn/nextlsn/timestamp: reuse what was parsed there
            lsn = self._commit_lsn
            nxt = msg.get("nextlsn")
            end = self._end_lsn if nxt == self._end_text else (Lsn.parse(nxt) if nxt else lsn)
            ts_text = msg.get("timestamp")
            ts = self._timestamp if ts_text is None or ts_text == self._ts_text else commit_timestamp(ts_text)
            return Commit(lsn, end, ts)
        if action == "M":
            lsn = Lsn.parse(msg["lsn"]) if "lsn" in msg else Lsn(0)
            return Message(
                prefix=str(msg.get("prefix", "")),
                content=str(msg.get("content", "")),
                transactional=bool(msg.get("transactional", False)),
                lsn=lsn,
            )
        if action == "T":
            return None  # TRUNCATE: not a row event clients subscribe to
        raise DecodeError(f"unknown wal2json action {action!r}")

    def _layout(self, schema: str, table: str, cols: list[dict[str, Any]]) -> _Layout:
        """The cached column layout of a table for this message's column list.

        Resolving types and building :class:`Column` objects per column per row was most of the
        decoder's cost; a table's layout only changes with DDL, which the check below notices
        (names and type oids are compared on every row, in two C-level list comparisons).
        """
        key = (schema, table, len(cols))
        lay = self._layouts.get(key)
        names = [c["name"] for c in cols]
        oids = [c.get("typeoid") for c in cols]
        if lay is not None and lay.names == names and lay.oids == oids:
            return lay
        resolved = [self.types.resolve(c.get("typeoid"), c.get("type", "")) for c in cols]
        lay = _Layout(
            names,
            oids,
            tuple(Column(n, t) for n, (t, _) in zip(names, resolved, strict=True)),
            {n: t for n, (t, _) in zip(names, resolved, strict=True)},
            [(n, conv) for n, (_, conv) in zip(names, resolved, strict=True) if conv is not identity],
        )
        if len(self._layouts) > 4096:
            self._layouts.clear()
        self._layouts[key] = lay
        return lay

    def replay(self, raw: bytes, seq: int, timestamp: str) -> RowChange:
        """Decode a row message again from the replay log, at its original position."""
        self._commit_lsn = Lsn(commit_of(seq))
        self._index = index_of(seq)
        self._timestamp = timestamp
        change = self.decode(raw)
        if type(change) is not RowChange:
            raise DecodeError("replay log entry is not a row message")
        return change

    def _row(self, msg: dict[str, Any], action: Action, raw: bytes = b"") -> RowChange:
        try:
            schema = msg["schema"]
            table = msg["table"]
        except KeyError as exc:
            raise DecodeError(f"row message without {exc}") from exc
        cols_raw = msg.get("columns")
        ident_raw = msg.get("identity")
        record: dict[str, Any] | None = None
        old: dict[str, Any] | None = None
        lay: _Layout | None = None
        errors: list[str] = []
        if cols_raw is not None:
            lay = self._layout(schema, table, cols_raw)
            record = _values(cols_raw, lay, errors)
        if ident_raw is not None:
            ilay = self._layout(schema, table, ident_raw)
            old = _values(ident_raw, ilay, errors)
            if lay is None or len(ilay.names) > len(lay.names):
                lay = ilay
                if record is not None and old is not None:
                    # wal2json leaves unchanged TOASTed values out of an UPDATE's new row; with
                    # REPLICA IDENTITY FULL the old row has them, and unchanged means equal.
                    record = {n: (record[n] if n in record else old[n]) for n in ilay.names}
        if lay is None:
            raise DecodeError("row message without columns or identity")
        change = RowChange(
            schema,
            table,
            action,
            lay.columns,
            record if action is not Action.DELETE else None,
            old if action is not Action.INSERT else None,
            self._timestamp,
            self._commit_lsn,
            self._index,
            lay.pk_of(msg.get("pk")),
            lay.column_types,
            raw,
            errors or None,
        )
        xid = msg.get("xid")
        if type(xid) is int:
            change.xid = xid
        self._index += 1
        return change


class _Layout:
    """Per-table decoding plan: names, oids, shared Column tuple, types, converters."""

    __slots__ = ("_pk", "_pk_names", "column_types", "columns", "convs", "names", "oids")

    def __init__(
        self,
        names: list[str],
        oids: list[Any],
        columns: tuple[Column, ...],
        column_types: dict[str, str],
        convs: list[tuple[str, Converter]],
    ) -> None:
        self.names = names
        self.oids = oids
        self.columns = columns
        self.column_types = column_types
        self.convs = convs
        self._pk_names: list[str] | None = None
        self._pk: tuple[str, ...] = ()

    def pk_of(self, pk: list[dict[str, Any]] | None) -> tuple[str, ...]:
        """The primary key column names, cached while the key stays the same."""
        if not pk:
            return ()
        names = [p["name"] for p in pk]
        if names != self._pk_names:
            self._pk_names = names
            self._pk = tuple(names)
        return self._pk


def _values(cols: list[dict[str, Any]], lay: _Layout, errors: list[str]) -> dict[str, Any]:
    """Column values keyed by name; only the columns whose type needs it are converted.

    A value whose conversion fails becomes ``None`` with a marker in ``errors``: one odd value
    must not stop the stream (the exception used to end replication, and the retry hit it again).
    """
    out = dict(zip(lay.names, [c.get("value") for c in cols], strict=True))
    for name, conv in lay.convs:
        v = out[name]
        if v is not None:
            try:
                out[name] = conv(v)
            except Exception as exc:
                out[name] = None
                marker = column_error(DECODE_FAILED, name, exc)
                if marker not in errors:
                    errors.append(marker)
    return out


_NUMERIC_MARK = b'"typeoid":1700,"value":'


def _exact_numerics(msg: dict[str, Any], raw: bytes) -> None:
    """Replace numeric values that a double cannot hold by their exact value from the text.

    wal2json 2.5 prints numerics bare (``"value":12.50``) and the JSON parser makes doubles of
    them, which keep ~15 significant digits: ``0.10000000000000001`` or a 20-digit integer
    would silently change.  Texts of at most 15 characters are always exact as parsed; longer
    ones are re-read: integers become Python ints (unbounded), decimals stay floats only when
    the float prints back as the same value, otherwise they become ``Decimal``.  Numeric columns
    appear in the text in the same order as in ``columns`` then ``identity``.
    """
    texts: list[bytes] = []
    find = raw.find
    pos = find(_NUMERIC_MARK)
    while pos >= 0:
        start = pos + len(_NUMERIC_MARK)
        end = start
        n = len(raw)
        while end < n and raw[end] not in b",}":
            end += 1
        texts.append(raw[start:end])
        pos = find(_NUMERIC_MARK, end)
    if all(len(t) <= 15 for t in texts):
        return
    it = iter(texts)
    for key in ("columns", "identity"):
        for c in msg.get(key) or ():
            if c.get("typeoid") != 1700:
                continue
            text = next(it, b"null")
            if len(text) > 15 and c.get("value") is not None and text[:1] != b'"':
                c["value"] = _exact_number(text.decode())


def _exact_number(text: str) -> Any:
    """int, float or Decimal, as :func:`~relay.core.sqltypes.output.numeric_text` (past 64 bits: Decimal)."""
    return numeric_text(text)
