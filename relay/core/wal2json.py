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
import os
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

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
from relay.core.protocol import dumps
from relay.core.sqltypes import output as _output
from relay.core.sqltypes.arrays import identity
from relay.core.sqltypes.output import (
    Converter,
    RawJson,
    TypeRegistry,
    commit_timestamp,
    numeric_text,
    timestamp_json,
    timestamptz_json,
)

__all__ = [
    "NUMBERS_AS_TEXT",
    "PURE_ENV",
    "WAL2JSON_OPTIONS",
    "DecodeError",
    "Decoder",
    "fast_available",
    "wal2json_options",
]

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

#: Set to ``1`` to decode with the pure-Python path (orjson into dicts) even when msgspec is
#: installed: the tests run both paths, and an operator can rule the fast path out.
PURE_ENV = "RELAY_PURE_DECODER"

_ACTIONS = {"I": Action.INSERT, "U": Action.UPDATE, "D": Action.DELETE}


class DecodeError(ValueError):
    """A wal2json message the relay cannot interpret (a bug or an unsupported wal2json)."""


# -- the typed fast path (msgspec) ------------------------------------------------------------
#
# Why: parsing every column of every row into a dict of four keys (orjson) and reading them back
# was the largest single cost of the drain.  msgspec decodes the same JSON straight into the
# structs below (no dict per column), validating the shape as it goes.  Anything the structs do
# not describe exactly (a missing or mistyped field, a number the two parsers would read
# differently, not JSON at all) falls back to the generic path, which stays the reference: same
# values, same errors.  Numbers: both parsers round decimals correctly and read integers within
# 64 bits exactly; past 64 bits orjson reads a float and msgspec an exact int, but wal2json prints
# bare numbers only for int2/int4/int8/oid/float4/float8/numeric (domains and everything else are
# quoted), so only numeric can be that long, and :func:`_exact_numerics` re-reads every numeric
# longer than 15 characters from the text on both paths.  Without msgspec (it is a dependency,
# but the relay must not need it) or with ``RELAY_PURE_DECODER=1`` only the generic path runs.
try:
    import msgspec
except ImportError:  # pragma: no cover - exercised by running with RELAY_PURE_DECODER=1
    msgspec = None  # type: ignore[assignment]

_GENERIC: Any = object()  # "let the generic path decide": returned by the typed path
_TypedDecode = Callable[[bytes | str], Any]
_typed_decode: _TypedDecode | None = None
_TYPED_ERRORS: tuple[type[BaseException], ...] = ()

if msgspec is not None:
    _UNSET: Any = msgspec.UNSET

    class _Col(msgspec.Struct, gc=False):
        name: str
        typeoid: int | None = None
        # the value's JSON text as wal2json printed it (a view of the message): see _RawRow.
        # ``type`` is left out (skipped, not allocated): only a new layout reads it (_types_of)
        value: msgspec.Raw = msgspec.Raw(b"null")

    class _ColType(msgspec.Struct, gc=False):
        type: str = ""

    class _MsgTypes(msgspec.Struct, gc=False):
        columns: list[_ColType] | None = None
        identity: list[_ColType] | None = None

    class _Pk(msgspec.Struct, gc=False):
        name: str

    class _Msg(msgspec.Struct, gc=False):
        action: Any = None
        schema: str | msgspec.UnsetType = msgspec.UNSET
        table: str | msgspec.UnsetType = msgspec.UNSET
        columns: list[_Col] | None = None
        identity: list[_Col] | None = None
        pk: list[_Pk] | None = None
        lsn: str | msgspec.UnsetType = msgspec.UNSET
        nextlsn: str | None = None
        timestamp: str | msgspec.UnsetType = msgspec.UNSET
        xid: int | None = None
        prefix: Any = ""
        content: Any = ""
        transactional: Any = False

    _typed_decode = msgspec.json.Decoder(_Msg).decode
    _types_decode = msgspec.json.Decoder(_MsgTypes).decode

    def _types_of(raw: bytes, side: str) -> list[str]:
        """The ``type`` of each column of one side of a row message (a new layout only)."""
        cols = getattr(_types_decode(raw), side)
        return [c.type for c in cols or ()]

    _TYPED_ERRORS = (msgspec.DecodeError, ValueError)  # ValueError: invalid UTF-8


def fast_available() -> bool:
    """True when the typed (msgspec) path is installed and not switched off by ``RELAY_PURE_DECODER``."""
    return _typed_decode is not None and os.environ.get(PURE_ENV, "") != "1"


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
    """Stateful decoder: remembers the open transaction to number its changes.

    ``fast``: decode with the typed msgspec path (None: when :func:`fast_available`); the
    generic path is used for whatever the typed one does not take, so the result is the same.
    """

    def __init__(self, types: TypeRegistry | None = None, fast: bool | None = None) -> None:
        self.types = types or TypeRegistry()
        self._commit_lsn = Lsn(0)
        self._timestamp = ""
        self._index = 0
        self._xid: int | None = None
        self._layouts: dict[tuple[str, str, int], _Layout] = {}
        self._end_text: str | None = None
        self._end_lsn = Lsn(0)
        self._ts_text = ""
        if fast is None:
            fast = fast_available()
        self._typed = _typed_decode if fast else None

    @property
    def fast(self) -> bool:
        """Whether this decoder uses the typed (msgspec) path."""
        return self._typed is not None

    def decode(self, data: bytes | str) -> Begin | Commit | RowChange | Message | None:
        """Decode one message; returns None for messages the relay ignores (e.g. TRUNCATE)."""
        typed = self._typed
        if typed is not None:
            try:
                msg = typed(data)
            except _TYPED_ERRORS:
                pass  # not the shape the structs describe: the generic path decides (and says why)
            else:
                event = self._decode_typed(msg, data)
                if event is not _GENERIC:
                    result: Begin | Commit | RowChange | Message | None = event  # (no cast(): hot)
                    return result
        return self._decode_generic(data)

    def _decode_typed(self, msg: Any, data: bytes | str) -> Any:
        """The typed path: same events as :meth:`_decode_generic`, or ``_GENERIC`` to defer."""
        action = msg.action
        if action in ("I", "U", "D"):
            raw = data if type(data) is bytes else (data.encode() if isinstance(data, str) else bytes(data))
            schema, table = msg.schema, msg.table
            if schema is _UNSET or table is _UNSET:
                return _GENERIC  # the generic path raises the DecodeError naming the field
            # Values are kept as raw JSON, which msgspec checks for syntax (lone surrogate
            # escapes included) but not for UTF-8: text that is not goes the generic way.
            if not raw.isascii():
                try:
                    raw.decode()
                except UnicodeDecodeError:
                    return _GENERIC
            cols, ident = msg.columns, msg.identity
            new: _RawRow | dict[str, Any] | None = None
            old: _RawRow | None = None
            lay: _Layout | None = None
            errors: list[str] = []
            if cols is not None:
                lay = self._layout(
                    schema, table, [c.name for c in cols], [c.typeoid for c in cols], (raw, "columns")
                )
                new = _RawRow.build(cols, lay, errors)
                if new is None:
                    return _GENERIC
            if ident is not None:
                ilay = self._layout(
                    schema, table, [c.name for c in ident], [c.typeoid for c in ident], (raw, "identity")
                )
                old = _RawRow.build(ident, ilay, errors)
                if old is None:
                    return _GENERIC
                if lay is None:
                    lay = ilay
                elif new is not None and len(ilay.names) > len(lay.names):
                    # an UPDATE's new row without its unchanged TOASTed values: completed from
                    # the old row, as a dict (rare: not worth a raw form)
                    lay, new = _complete(lay, ilay, cast(_RawRow, new).row(), old.row())
            pk = msg.pk
            return self._change(
                schema,
                table,
                _ACTIONS[action],
                lay,
                new,
                old,
                [p.name for p in pk] if pk else None,
                raw,
                errors,
                msg.xid,
            )
        if action == "B":
            lsn = msg.lsn
            ts = msg.timestamp
            return self._begin(
                None if lsn is _UNSET else lsn, msg.nextlsn, "" if ts is _UNSET else ts, msg.xid
            )
        if action == "C":
            ts = msg.timestamp
            return self._commit(msg.nextlsn, None if ts is _UNSET else ts)
        if action == "M":
            lsn = msg.lsn
            return self._message(None if lsn is _UNSET else lsn, msg.prefix, msg.content, msg.transactional)
        if action == "T":
            return None
        return _GENERIC

    def _decode_generic(self, data: bytes | str) -> Begin | Commit | RowChange | Message | None:
        """The reference path: orjson into dicts (``json`` with exact decimals if orjson refuses)."""
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
            if not self.types.numbers_as_text and _long_numeric(raw):
                # as text: already exact
                _exact_numerics((msg.get("columns"), msg.get("identity")), raw, _dict_value, _set_dict_value)
            return self._row(msg, _ACTIONS[action], raw)
        if action == "B":
            return self._begin(
                msg["lsn"] if "lsn" in msg else None,
                msg.get("nextlsn"),
                msg.get("timestamp", ""),
                msg.get("xid"),
            )
        if action == "C":
            return self._commit(msg.get("nextlsn"), msg.get("timestamp"))
        if action == "M":
            return self._message(
                msg["lsn"] if "lsn" in msg else None,
                msg.get("prefix", ""),
                msg.get("content", ""),
                msg.get("transactional", False),
            )
        if action == "T":
            return None  # TRUNCATE: not a row event clients subscribe to
        raise DecodeError(f"unknown wal2json action {action!r}")

    def _begin(self, lsn_text: Any, nxt: Any, ts_text: Any, xid: Any) -> Begin:
        lsn = Lsn.parse(lsn_text) if lsn_text is not None else Lsn(0)
        end = Lsn.parse(nxt) if nxt else lsn
        self._commit_lsn = lsn
        self._end_text, self._end_lsn = nxt, end
        self._ts_text = ts_text
        self._timestamp = commit_timestamp(ts_text)
        self._index = 0
        self._xid = xid
        return Begin(xid, lsn, end, self._timestamp)

    def _commit(self, nxt: Any, ts_text: Any) -> Commit:
        # B already carried the same lsn/nextlsn/timestamp: reuse what was parsed there
        lsn = self._commit_lsn
        end = self._end_lsn if nxt == self._end_text else (Lsn.parse(nxt) if nxt else lsn)
        ts = self._timestamp if ts_text is None or ts_text == self._ts_text else commit_timestamp(ts_text)
        return Commit(lsn, end, ts)

    def _message(self, lsn_text: Any, prefix: Any, content: Any, transactional: Any) -> Message:
        return Message(
            prefix=str(prefix),
            content=str(content),
            transactional=bool(transactional),
            lsn=Lsn.parse(lsn_text) if lsn_text is not None else Lsn(0),
        )

    def _layout(
        self, schema: str, table: str, names: list[str], oids: list[Any], cols: list[Any] | tuple[bytes, str]
    ) -> _Layout:
        """The cached column layout of a table for this message's column list.

        Resolving types and building :class:`Column` objects per column per row was most of the
        decoder's cost; a table's layout only changes with DDL, which the check below notices
        (names and type oids are compared on every row, in two C-level list comparisons).
        """
        key = (schema, table, len(names))
        lay = self._layouts.get(key)
        if lay is not None and lay.names == names and lay.oids == oids:
            return lay
        if isinstance(cols, tuple):  # typed path: (message, side), its types read on demand
            types = _types_of(*cols)
        else:
            types = [c.get("type", "") for c in cols]
        resolved = [self.types.resolve(o, t) for o, t in zip(oids, types, strict=True)]
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
            names = [c["name"] for c in cols_raw]
            lay = self._layout(schema, table, names, [c.get("typeoid") for c in cols_raw], cols_raw)
            record = _values([c.get("value") for c in cols_raw], lay, errors)
        if ident_raw is not None:
            inames = [c["name"] for c in ident_raw]
            ilay = self._layout(schema, table, inames, [c.get("typeoid") for c in ident_raw], ident_raw)
            old = _values([c.get("value") for c in ident_raw], ilay, errors)
            lay, record = _complete(lay, ilay, record, old)
        pk = msg.get("pk")
        return self._change(
            schema,
            table,
            action,
            lay,
            record,
            old,
            [p["name"] for p in pk] if pk else None,
            raw,
            errors,
            msg.get("xid"),
        )

    def _change(
        self,
        schema: str,
        table: str,
        action: Action,
        lay: _Layout | None,
        record: dict[str, Any] | _RawRow | None,
        old: dict[str, Any] | _RawRow | None,
        pk_names: list[str] | None,
        raw: bytes,
        errors: list[str],
        xid: Any,
    ) -> RowChange:
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
            lay.pk_of(pk_names),
            lay.column_types,
            raw,
            errors or None,
        )
        if type(xid) is int:
            change.xid = xid
        elif self._xid is not None:  # the transaction's, from its begin message
            change.xid = self._xid
        self._index += 1
        return change


def _complete(
    lay: _Layout | None, ilay: _Layout, record: dict[str, Any] | None, old: dict[str, Any] | None
) -> tuple[_Layout, dict[str, Any] | None]:
    """The row's layout and new row once the identity (old row) is known."""
    if lay is None or len(ilay.names) > len(lay.names):
        if record is not None and old is not None:
            # wal2json leaves unchanged TOASTed values out of an UPDATE's new row; with
            # REPLICA IDENTITY FULL the old row has them, and unchanged means equal.
            record = {n: (record[n] if n in record else old[n]) for n in ilay.names}
        return ilay, record
    return lay, record


class _Layout:
    """Per-table decoding plan: names, oids, shared Column tuple, types, converters."""

    __slots__ = (
        "_pk",
        "_pk_names",
        "_plan",
        "column_types",
        "columns",
        "convs",
        "names",
        "numeric",
        "oids",
    )

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
        self.numeric = 1700 in oids  # a numeric column: exact re-read of long values may apply
        self.columns = columns
        self.column_types = column_types
        self.convs = convs
        self._pk_names: list[str] | None = None
        self._pk: tuple[str, ...] = ()
        self._plan: _RawPlan | None = None

    def plan(self) -> _RawPlan:
        """How rows of this layout become client JSON from raw values (built once)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = _RawPlan(self)
        return plan

    def pk_of(self, names: list[str] | None) -> tuple[str, ...]:
        """The primary key column names, cached while the key stays the same."""
        if not names:
            return ()
        if names != self._pk_names:
            self._pk_names = names
            self._pk = tuple(names)
        return self._pk


_GENERIC_CONV = 0  # convert the parsed value, encode the result
_TSTZ = 1  # timestamptz_json on the JSON text itself
_TS = 2  # timestamp_json on the JSON text itself
_JSONV = 3  # json/jsonb: the parsed text is the JSON, as it is (RawJson)
_TEXT_ARRAY = 4  # an array of text-like elements: a simple literal is rewritten on its text

# A one-dimensional array literal whose elements Postgres left unquoted (no quote, backslash,
# brace, comma, space or control character in them), as a JSON string: its JSON is the
# elements quoted, unless one is NULL (checked apart, case-insensitively).
_SIMPLE_ARRAY = re.compile(rb'"\{[^\x00-\x20"\\{},]+(?:,[^\x00-\x20"\\{},]+)*\}"')

# A row's timestamptz values joined by newlines (which JSON strings cannot hold raw), when every
# one has the shape the replication session prints (ISO, UTC offset +HH) or is null: then
# timestamptz_json is a space -> "T" and ":00" before the closing quote, for all of them at once.
_TSTZ_ONE = rb'(?:"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?[+-]\d\d"|null)'
_TSTZ_ALL = re.compile(_TSTZ_ONE + rb"(?:\n" + _TSTZ_ONE + rb")*")


class _RawPlan:
    """Per layout: the JSON object around the values, and which values need work.

    ``template`` is ``{"<name>":`` / ``,"<name>":`` ... ``}`` with a hole after each key, so a
    row's JSON is the template with its raw values put in the holes and joined once.
    """

    __slots__ = ("convs", "numerics", "template", "tstz")

    def __init__(self, lay: _Layout) -> None:
        names = lay.names
        template: list[bytes | None] = []
        for i, name in enumerate(names):
            template.append((b"{" if i == 0 else b",") + orjson.dumps(name) + b":")
            template.append(None)
        template.append(b"}" if names else b"{}")
        self.template = template
        by_name = dict(lay.convs)
        self.convs: list[tuple[int, int, Converter]] = []  # all but timestamptz
        self.tstz: list[int] = []
        for i, name in enumerate(names):
            conv = by_name.get(name)
            if conv is None:
                continue
            if conv is timestamptz_json:
                self.tstz.append(i)
            elif conv is timestamp_json:
                self.convs.append((i, _TS, conv))
            elif conv is _output._json:
                self.convs.append((i, _JSONV, conv))
            else:
                self.convs.append((i, _TEXT_ARRAY if conv in _output.TEXT_ARRAYS else _GENERIC_CONV, conv))
        # numeric columns printed bare: exact re-read of long texts (see _exact_numerics)
        self.numerics = [
            i
            for i, (name, oid) in enumerate(zip(names, lay.oids, strict=True))
            if oid == 1700 and name not in by_name
        ]


class _RawRow:
    """One side of a row message kept as wal2json's value bytes (see :class:`RowChange`).

    Why: most values (numbers, booleans, text, uuid, null...) are already the JSON the client
    gets, so the row's JSON is the layout's template with the raw values spliced in; only the
    columns whose type has a converter are decoded and converted now (their errors must be known
    before the change is fanned out).  Timestamps, the commonest of those, are rewritten on
    their JSON text directly.  :meth:`row` builds the dict the eager decoder would have built,
    the first time something reads it.  A number JSON prints differently (``12.50`` for the
    eager ``12.5``) is the same JSON value, exactly.
    """

    __slots__ = ("_conv", "_lay", "_parts", "json")

    def __init__(
        self, lay: _Layout, parts: list[Any], conv: dict[int, Any] | None, json_bytes: bytes | None
    ) -> None:
        self._lay = lay
        self._parts = parts  # the row's JSON in pieces: keys, then raw or converted values
        self._conv = conv  # column index -> value already converted (generic converters)
        self.json = json_bytes  # None: a converted value did not encode; frames encode the dict

    @staticmethod
    def build(cols: list[Any], lay: _Layout, errors: list[str]) -> _RawRow | None:
        """The side, or None when a value must go through the generic decoder instead."""
        plan = lay.plan()
        raws = [c.value for c in cols]
        parts = plan.template.copy()
        parts[1:-1:2] = raws
        conv: dict[int, Any] | None = None
        encoded = True
        for i in plan.numerics:
            r = raws[i]
            if len(r) > 15:
                b = bytes(r)
                if len(b) > 300 or b"e" in b or b"E" in b:
                    return None  # past a double's range: the generic path reads the whole message
        tstz = plan.tstz
        if tstz:
            joined = b"\n".join([raws[i] for i in tstz])
            if _TSTZ_ALL.fullmatch(joined) is not None:
                texts = (joined + b"\n").replace(b" ", b"T").replace(b'"\n', b':00"\n').split(b"\n")
                for i, text in zip(tstz, texts, strict=False):
                    parts[2 * i + 1] = text
            else:
                for i in tstz:
                    b = bytes(raws[i])
                    # timestamptz_json on the text between the quotes (no escapes in a
                    # timestamp); the first space is the one at [10] of the text
                    if b.find(b" ") == 11 and len(b) >= 24 and b[0] == 34 and b.find(b"\\") < 0:
                        b = b.replace(b" ", b"T", 1)
                        parts[2 * i + 1] = b[:-1] + b':00"' if b[-4] in b"+-" else b
                        continue
                    if conv is None:
                        conv = {}
                    conv[i], piece = _convert(b, timestamptz_json, lay.names[i], errors)
                    if piece is None:
                        encoded = False
                    else:
                        parts[2 * i + 1] = piece
        for i, kind, fn in plan.convs:
            r = raws[i]
            if kind == _JSONV:
                text = _load(bytes(r))
                if type(text) is str:  # the json text itself goes into the frame (RawJson)
                    if conv is None:
                        conv = {}
                    conv[i] = RawJson(text)
                    parts[2 * i + 1] = text.encode()
                    continue
            elif kind == _TS:
                b = bytes(r)
                if b.find(b" ") == 11 and len(b) > 12 and b[0] == 34 and b.find(b"\\") < 0:
                    parts[2 * i + 1] = b.replace(b" ", b"T", 1)
                    continue
            elif kind == _TEXT_ARRAY:
                b = bytes(r)
                if _SIMPLE_ARRAY.fullmatch(b) is not None and b"null" not in b.lower():
                    # parse_array's list, as JSON (row() reads it back from this piece)
                    parts[2 * i + 1] = b'["' + b[2:-2].replace(b",", b'","') + b'"]'
                    continue
            if conv is None:
                conv = {}
            conv[i], piece = _convert(bytes(r), fn, lay.names[i], errors)
            if piece is None:
                encoded = False
            else:
                parts[2 * i + 1] = piece
        return _RawRow(lay, parts, conv, b"".join(parts) if encoded else None)  # type: ignore[arg-type]

    def row(self) -> dict[str, Any]:
        """The row as a dict: what :func:`_values` gives for the same message.

        One parse of the row's pieces as the frame has them (timestamps already rewritten),
        with the values converted at decode put back in place of theirs.
        """
        lay = self._lay
        parts = self._parts
        pieces = parts[1:-1:2]
        conv = self._conv
        if conv:
            for i in conv:
                pieces[i] = b"null"  # (its piece is the encoded result, perhaps deep json)
        vals = _load(b"[" + b",".join(pieces) + b"]")
        if conv:
            for i, v in conv.items():
                vals[i] = v
        for i in lay.plan().numerics:
            r = parts[2 * i + 1]
            if len(r) > 15 and vals[i] is not None:
                b = bytes(r)
                if b[:1] != b'"':
                    vals[i] = _exact_number(b.decode())
        return dict(zip(lay.names, vals, strict=False))  # (same length by construction)


def _convert(raw: bytes, fn: Converter, name: str, errors: list[str]) -> tuple[Any, bytes | None]:
    """One value the generic way: parsed, converted (a failure: None and a marker in
    ``errors``, as :func:`_values`) and encoded (None: it cannot be, the frame encoder repairs)."""
    v = _load(raw)
    if v is not None:
        try:
            v = fn(v)
        except Exception as exc:
            v = None
            marker = column_error(DECODE_FAILED, name, exc)
            if marker not in errors:
                errors.append(marker)
    try:
        return v, dumps(v)
    except (TypeError, ValueError, RecursionError):
        return v, None


def _load(text: bytes) -> Any:
    """JSON as the generic path reads it: orjson, or exact decimals where orjson refuses."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, parse_float=Decimal)


def _values(values: list[Any], lay: _Layout, errors: list[str]) -> dict[str, Any]:
    """Column values keyed by name; only the columns whose type needs it are converted.

    A value whose conversion fails becomes ``None`` with a marker in ``errors``: one odd value
    must not stop the stream (the exception used to end replication, and the retry hit it again).
    """
    out = dict(zip(lay.names, values, strict=True))
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


def _long_numeric(raw: bytes) -> bool:
    """Whether a numeric value is printed with more than 15 characters (not as a quoted text).

    Only then can a double have lost digits (:func:`_exact_numerics`).  ``bytes.find`` and a
    16-byte look per numeric column: a regular expression over the whole row cost more than the
    rest of the check (``re`` scans byte by byte).
    """
    find = raw.find
    pos = find(_NUMERIC_MARK)
    while pos >= 0:
        start = pos + len(_NUMERIC_MARK)
        head = raw[start : start + 16]
        if len(head) == 16 and head[:1] != b'"' and b"," not in head and b"}" not in head:
            return True
        pos = find(_NUMERIC_MARK, start)
    return False


def _dict_value(c: Any) -> tuple[Any, Any]:
    return c.get("typeoid"), c.get("value")


def _set_dict_value(c: Any, v: Any) -> None:
    c["value"] = v


def _exact_numerics(
    sides: tuple[Any, Any],
    raw: bytes,
    get: Callable[[Any], tuple[Any, Any]],
    put: Callable[[Any, Any], None],
) -> None:
    """Replace numeric values that a double cannot hold by their exact value from the text.

    wal2json 2.5 prints numerics bare (``"value":12.50``) and the JSON parser makes doubles of
    them, which keep ~15 significant digits: ``0.10000000000000001`` or a 20-digit integer
    would silently change.  Texts of at most 15 characters are always exact as parsed; longer
    ones are re-read: integers become Python ints (unbounded), decimals stay floats only when
    the float prints back as the same value, otherwise they become ``Decimal``.  Numeric columns
    appear in the text in the same order as in ``columns`` then ``identity`` (``sides``; ``get``
    and ``put`` read and write a column's type oid and value, dict or struct).
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
    for cols in sides:
        for c in cols or ():
            oid, value = get(c)
            if oid != 1700:
                continue
            text = next(it, b"null")
            if len(text) > 15 and value is not None and text[:1] != b'"':
                put(c, _exact_number(text.decode()))


def _exact_number(text: str) -> Any:
    """int, float or Decimal, as :func:`~relay.core.sqltypes.output.numeric_text` (past 64 bits: Decimal)."""
    return numeric_text(text)
