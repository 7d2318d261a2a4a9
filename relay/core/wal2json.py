"""Decode wal2json format-version 2 messages into :mod:`relay.core.changes` values.

Why pure: the replication stream hands us one JSON document per WAL message; everything from
here on is deterministic and tested from captured fixtures, without Postgres.

Options the relay starts wal2json with (see :data:`WAL2JSON_OPTIONS`): ``include-timestamp``,
``include-pk``, ``include-type-oids``, ``include-lsn`` and ``include-transaction`` — so a
``B`` message already carries the transaction's commit LSN, which is what gives every change a
position (commit LSN, index) before the transaction ends.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

from relay.core.changes import Action, Begin, Column, Commit, Lsn, Message, RowChange
from relay.core.pgtypes import TypeRegistry, commit_timestamp

__all__ = ["WAL2JSON_OPTIONS", "DecodeError", "Decoder", "wal2json_options"]

WAL2JSON_OPTIONS: dict[str, str] = {
    "format-version": "2",
    "include-transaction": "1",
    "include-timestamp": "1",
    "include-pk": "1",
    "include-type-oids": "1",
    "include-types": "1",
    "include-lsn": "1",
}

_ACTIONS = {"I": Action.INSERT, "U": Action.UPDATE, "D": Action.DELETE}


class DecodeError(ValueError):
    """A wal2json message the relay cannot interpret (a bug or an unsupported wal2json)."""


def wal2json_options(tables: list[tuple[str, str]], msg_prefixes: tuple[str, ...] = ("realtime",)) -> dict[str, str]:
    """The option set for START_REPLICATION, restricted to ``tables`` and our message prefixes.

    wal2json's ``add-tables`` takes ``schema.table`` with ``\\`` escaping for ``,`` and ``.``
    inside names.  An empty table list would mean "all tables" to wal2json, so we then filter
    on a name no table can have.
    """
    opts = dict(WAL2JSON_OPTIONS)
    if tables:
        opts["add-tables"] = ",".join(f"{_esc(s)}.{_esc(t)}" for s, t in tables)
    else:
        opts["add-tables"] = "relay\\.no\\.table.none"
    opts["add-msg-prefixes"] = ",".join(msg_prefixes)
    return opts


def _esc(name: str) -> str:
    return name.replace("\\", "\\\\").replace(",", "\\,").replace(".", "\\.").replace(" ", "\\ ")


class Decoder:
    """Stateful decoder: remembers the open transaction to number its changes."""

    def __init__(self, types: TypeRegistry | None = None) -> None:
        self.types = types or TypeRegistry()
        self._commit_lsn = Lsn(0)
        self._timestamp = ""
        self._index = 0
        self._xid: int | None = None

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
            raw = data.encode() if isinstance(data, str) else data
            if _NUMERIC_MARK in raw:
                _exact_numerics(msg, raw)
            return self._row(msg, _ACTIONS[action])
        if action == "B":
            lsn = Lsn.parse(msg["lsn"]) if "lsn" in msg else Lsn(0)
            end = Lsn.parse(msg["nextlsn"]) if "nextlsn" in msg else lsn
            self._commit_lsn = lsn
            self._timestamp = commit_timestamp(msg.get("timestamp", ""))
            self._index = 0
            self._xid = msg.get("xid")
            return Begin(self._xid, lsn, end, self._timestamp)
        if action == "C":
            lsn = Lsn.parse(msg["lsn"]) if "lsn" in msg else self._commit_lsn
            end = Lsn.parse(msg["nextlsn"]) if "nextlsn" in msg else lsn
            ts = commit_timestamp(msg["timestamp"]) if "timestamp" in msg else self._timestamp
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

    def _row(self, msg: dict[str, Any], action: Action) -> RowChange:
        try:
            schema = msg["schema"]
            table = msg["table"]
        except KeyError as exc:
            raise DecodeError(f"row message without {exc}") from exc
        cols_raw = msg.get("columns")
        ident_raw = msg.get("identity")
        resolve = self.types.resolve
        columns: list[Column] = []
        column_types: dict[str, str] = {}
        record: dict[str, Any] | None = None
        old: dict[str, Any] | None = None
        if cols_raw is not None:
            record = {}
            for c in cols_raw:
                name = c["name"]
                tname, conv = resolve(c.get("typeoid"), c.get("type", ""))
                v = c.get("value")
                record[name] = None if v is None else conv(v)
                columns.append(Column(name, tname))
                column_types[name] = tname
        if ident_raw is not None:
            old = {}
            for c in ident_raw:
                name = c["name"]
                tname, conv = resolve(c.get("typeoid"), c.get("type", ""))
                v = c.get("value")
                old[name] = None if v is None else conv(v)
                if name not in column_types:
                    column_types[name] = tname
        if record is not None and old is not None and len(old) > len(record):
            # wal2json leaves unchanged TOASTed values out of an UPDATE's new row; with
            # REPLICA IDENTITY FULL the old row has them, and unchanged means equal.
            merged: dict[str, Any] = {}
            columns = []
            for c in ident_raw or ():
                name = c["name"]
                merged[name] = record[name] if name in record else old[name]
                columns.append(Column(name, column_types[name]))
            for name, v in record.items():
                if name not in merged:
                    merged[name] = v
                    columns.append(Column(name, column_types[name]))
            record = merged
        if not columns and old is not None:
            columns = [Column(n, column_types[n]) for n in old]
        pk = tuple(p["name"] for p in msg.get("pk", ()))
        change = RowChange(
            schema=schema,
            table=table,
            action=action,
            columns=tuple(columns),
            record=record if action is not Action.DELETE else None,
            old_record=old if action is not Action.INSERT else None,
            commit_timestamp=self._timestamp,
            commit_lsn=self._commit_lsn,
            index=self._index,
            pk=pk,
            column_types=column_types,
        )
        self._index += 1
        return change


_NUMERIC_MARK = b'"typeoid":1700,'
# wal2json 2.5 prints numeric values bare (``"value":12.50``); the JSON parser turns them into
# doubles.  We re-read each numeric's original text from the message instead.
_NUMERIC_RE = re.compile(rb'"typeoid":1700,"value":(null|"(?:[^"\\]|\\.)*"|[-+0-9.eE]+|[A-Za-z]+)')


def _exact_numerics(msg: dict[str, Any], raw: bytes) -> None:
    """Replace numeric column values by their exact value from the message text.

    A double keeps ~15 significant digits, so ``0.10000000000000001`` or a 20-digit integer
    would silently change.  Integers become Python ints (unbounded); decimals stay floats only
    when the float is exactly the decimal written, otherwise they become ``Decimal``.  Numeric
    columns appear in the text in the same order as in ``columns`` then ``identity``.
    """
    texts = _NUMERIC_RE.findall(raw)
    pos = 0
    for key in ("columns", "identity"):
        for c in msg.get(key) or ():
            if c.get("typeoid") != 1700:
                continue
            if pos >= len(texts):
                return
            text = texts[pos].decode()
            pos += 1
            if c.get("value") is None or text == "null" or text.startswith('"'):
                continue
            c["value"] = _exact_number(text)


def _exact_number(text: str) -> Any:
    if "." not in text and "e" not in text and "E" not in text:
        try:
            return int(text)
        except ValueError:
            return text  # NaN / Infinity spelled bare
    try:
        d = Decimal(text)
    except ArithmeticError:
        return text
    if not d.is_finite():
        return text
    f = float(d)
    return f if Decimal(repr(f)) == d else d
