"""What a publication says beyond which tables are in it: actions, column lists, row filters.

Why the relay applies them itself: wal2json does not read publications at all (the relay passes
the publication's tables as ``add-tables``), so a DBA's ``CREATE PUBLICATION p FOR TABLE t (id,
name)`` meant to keep ``t.ssn`` inside the database, or ``... WHERE (active)`` meant to keep the
inactive rows inside, would otherwise both leave it through the relay.

- **Published actions** (``WITH (publish = 'insert')``) become wal2json's ``actions`` option:
  an UPDATE or DELETE the publication does not publish is never decoded.
- **Column lists** are applied to the wal2json message bytes right after they are received,
  before anything else reads them (:class:`ColumnStripper`): the decoder, the replay window, the
  cluster change log, snapshots and every subscriber see the published columns only, so there is
  no second place that could forget.  Values are kept byte for byte (msgspec ``Raw``): nothing is
  parsed into Python numbers and re-printed.
- **Row filters** cannot be applied without evaluating SQL expressions the relay does not have
  (they are arbitrary expressions over the row), so a table with one is **not streamed** at
  all: joins naming it are refused with ``publication_row_filter``, schema-wide bindings never
  see it, and the relay says so in its log and in ``relay check``.  Sending its rows unfiltered
  would leak what the DBA excluded; sending nothing without a word would be silent.  Row
  policies (docs/authorization.md) are the relay's way to restrict rows.

Pure: the rules are read from ``pg_publication_tables`` by relay.postgres.catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

try:  # a dependency; without it column-listed tables are not streamed (see ``ColumnStripper``)
    import msgspec
except ImportError:  # pragma: no cover - exercised by test_publication's no-msgspec case
    msgspec = None  # type: ignore[assignment]

__all__ = ["ROW_ACTIONS", "ColumnStripper", "PublicationRules", "stripper_available"]

Table = tuple[str, str]


ROW_ACTIONS = frozenset({"insert", "update", "delete"})


@dataclass(frozen=True)
class PublicationRules:
    """Per table: the published columns (only tables with a column list) and row filters (the
    ``WHERE`` text, only tables with one); for the publication: the row actions it publishes
    (``WITH (publish = 'insert')``).  Compared as a whole: a change restarts the stream."""

    columns: Mapping[Table, frozenset[str]] = field(default_factory=dict)
    row_filters: Mapping[Table, str] = field(default_factory=dict)
    actions: frozenset[str] = ROW_ACTIONS

    def wal2json_actions(self) -> str | None:
        """wal2json's ``actions`` option for the published actions (None: all, the default).

        wal2json does apply this one itself.  A publication of none of them (``publish =
        'truncate'``) is asked for truncates only, which the relay ignores."""
        if self.actions >= ROW_ACTIONS:
            return None
        return ",".join(a for a in ("insert", "update", "delete") if a in self.actions) or "truncate"

    def streamed(self, tables: Iterable[Table]) -> list[Table]:
        """The tables the relay streams: every published table without a row filter."""
        return [t for t in tables if t not in self.row_filters]


def stripper_available() -> bool:
    """Whether column lists can be applied (msgspec keeps values byte for byte)."""
    return msgspec is not None


if msgspec is not None:
    _decode_message = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
    _decode_columns = msgspec.json.Decoder(list[dict[str, msgspec.Raw]]).decode
    _encode = msgspec.json.encode


class ColumnStripper:
    """Removes the columns outside each table's column list from wal2json (format 2) messages.

    Cheap for every other message: a byte search for ``"table":"<name>"`` of each listed table
    decides whether a message needs parsing at all; only row messages of listed tables are
    parsed (top level and column objects as raw JSON) and written again.
    """

    __slots__ = ("_keep", "_needles")

    def __init__(self, columns: Mapping[Table, frozenset[str]]) -> None:
        if columns and msgspec is None:
            raise RuntimeError("column lists need msgspec, which is not installed")
        self._keep = dict(columns)
        self._needles = tuple({b'"table":' + orjson.dumps(t) for _, t in columns})

    def __bool__(self) -> bool:
        return bool(self._keep)

    def __call__(self, payload: bytes) -> bytes:
        """``payload`` without the unpublished columns (the same object when nothing changes)."""
        if not any(n in payload for n in self._needles):
            return payload
        msg = _decode_message(payload)
        schema, table = _text(msg.get("schema")), _text(msg.get("table"))
        keep = self._keep.get((schema, table)) if schema is not None and table is not None else None
        if keep is None:
            return payload
        changed = False
        for side in ("columns", "identity"):
            raw = msg.get(side)
            if raw is None:
                continue
            cols = _decode_columns(raw)
            kept = [c for c in cols if _text(c.get("name")) in keep]
            if len(kept) != len(cols):
                msg[side] = msgspec.Raw(_encode(kept))
                changed = True
        return _encode(msg) if changed else payload


def _text(raw: Any) -> str | None:
    """A raw JSON string's value (None for anything else)."""
    if raw is None:
        return None
    value = orjson.loads(bytes(raw))
    return value if isinstance(value, str) else None
