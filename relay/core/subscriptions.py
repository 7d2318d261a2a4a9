"""``postgres_changes`` bindings, the index of who listens to what, and the fan-out plan.

Why pure: matching a change to subscribers is the hot path and the place correctness bugs hide
(wrong ids, DELETEs matched on the new row, a subscriber seeing rows it may not).  Here it is a
function of (change, index); the server only sends what :func:`plan` returns.

Frames are encoded once per distinct content: the change's ``data`` is serialised once, and
each ``(topic, ids, vsn)`` combination is wrapped once, however many sockets share it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from relay.core.changes import Action, Column, RowChange
from relay.core.filters import BoundFilter, Filter, FilterError, parse_filter
from relay.core.protocol import dumps, encode_push_prefix, ws_text_frame

__all__ = [
    "Binding",
    "BindingError",
    "BindingSpec",
    "Subscriber",
    "SubscriptionIndex",
    "binding_id",
    "change_payload",
    "parse_bindings",
]


class BindingError(ValueError):
    """A ``postgres_changes`` entry that cannot be subscribed; the message goes to the client."""


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """One parsed, not yet bound, ``postgres_changes`` entry."""

    event: str  # INSERT | UPDATE | DELETE | *
    schema: str
    table: str | None
    filter: Filter | None
    raw: Mapping[str, Any]
    id: int


def binding_id(event: str, schema: str, table: str | None, filter_text: str | None) -> int:
    """A stable, non-zero id: identical bindings get identical ids on every relay and socket.

    Stability is what lets subscribers with the same binding share one encoded frame, and lets
    a client that reconnects see the same ids.  Both official clients treat 0 as missing.
    """
    key = f"{event}\x00{schema}\x00{table or ''}\x00{filter_text or ''}".encode()
    return (zlib.crc32(key) & 0x7FFFFFFF) or 1


def _norm_event(v: Any) -> str:
    e = str(v).upper() if isinstance(v, str) else "*"
    return e if e in ("INSERT", "UPDATE", "DELETE") else "*"


def parse_bindings(entries: Any) -> list[BindingSpec]:
    """Parse the ``config.postgres_changes`` list of a join, in the client's order."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise BindingError("config.postgres_changes must be a list")
    out: list[BindingSpec] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise BindingError(f"postgres_changes[{i}] must be an object")
        event = _norm_event(e.get("event", "*"))
        schema = e.get("schema")
        table = e.get("table")
        if schema is None or schema == "":
            schema = "public"
        if not isinstance(schema, str) or (table is not None and not isinstance(table, str)):
            raise BindingError(f"postgres_changes[{i}]: schema and table must be strings")
        if table in ("", "*"):
            table = None
        ftext = e.get("filter")
        flt: Filter | None = None
        if ftext not in (None, ""):
            if not isinstance(ftext, str):
                raise BindingError(f"postgres_changes[{i}]: filter must be a string")
            if table is None:
                raise BindingError(f"postgres_changes[{i}]: a filter needs a table")
            try:
                flt = parse_filter(ftext)
            except FilterError as exc:
                raise BindingError(str(exc)) from None
        out.append(
            BindingSpec(
                event, schema, table, flt, e, binding_id(event, schema, table, flt.text if flt else None)
            )
        )
    return out


class Subscriber(Protocol):
    """What the index needs of a joined channel: its identity, topic, protocol and rights."""

    @property
    def topic(self) -> str: ...

    @property
    def vsn(self) -> str: ...

    def may_see(self, change: RowChange) -> bool: ...


S = TypeVar("S", bound=Subscriber)


@dataclass(frozen=True, slots=True, eq=False)
class Binding(Generic[S]):
    """A bound (filter cast to the column type) binding owned by one subscriber."""

    owner: S
    id: int
    event: str
    filter: BoundFilter | None

    def matches(self, change: RowChange) -> bool:
        if self.event != "*" and self.event != change.action.value:
            return False
        if self.filter is not None:
            # DELETE is filtered on the old row; INSERT/UPDATE on the new row.
            return self.filter.matches(change.filter_row)
        return True


@dataclass
class SubscriptionIndex(Generic[S]):
    """(schema, table) -> bindings, and schema -> table-less bindings."""

    by_table: dict[tuple[str, str], list[Binding[S]]] = field(default_factory=dict)
    by_schema: dict[str, list[Binding[S]]] = field(default_factory=dict)

    def add(self, spec: BindingSpec, owner: S, bound: BoundFilter | None) -> Binding[S]:
        b = Binding(owner, spec.id, spec.event, bound)
        if spec.table is None:
            self.by_schema.setdefault(spec.schema, []).append(b)
        else:
            self.by_table.setdefault((spec.schema, spec.table), []).append(b)
        return b

    def remove_owner(self, owner: S) -> None:
        _remove(self.by_table, owner)
        _remove(self.by_schema, owner)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_table.values()) + sum(len(v) for v in self.by_schema.values())

    def plan(self, change: RowChange) -> list[tuple[S, list[int]]]:
        """Subscribers that receive ``change`` and the ids of their bindings that matched.

        One entry per subscriber (one frame per channel per change); authorization is asked
        once per subscriber, and only when some binding matched.
        """
        bindings = self.by_table.get((change.schema, change.table), ())
        schema_wide = self.by_schema.get(change.schema, ())
        if not bindings and not schema_wide:
            return []
        per_owner: dict[int, tuple[S, list[int]]] = {}
        for group in (bindings, schema_wide):
            for b in group:
                if b.matches(change):
                    key = id(b.owner)
                    hit = per_owner.get(key)
                    if hit is None:
                        per_owner[key] = (b.owner, [b.id])
                    elif b.id not in hit[1]:
                        hit[1].append(b.id)
        return [(o, ids) for o, ids in per_owner.values() if o.may_see(change)]


K = TypeVar("K")


def _remove(d: dict[K, list[Binding[S]]], owner: S) -> None:
    for key in [k for k, bs in d.items() if any(b.owner is owner for b in bs)]:
        kept = [b for b in d[key] if b.owner is not owner]
        if kept:
            d[key] = kept
        else:
            del d[key]


# ``columns`` is the same JSON for every change of a table: encode it once per column tuple (the
# decoder shares one tuple per table layout).  Keyed by id() with the tuple kept alive.
_COLUMNS_JSON: dict[int, tuple[tuple[Column, ...], orjson.Fragment]] = {}


def _columns_json(columns: tuple[Column, ...]) -> orjson.Fragment:
    hit = _COLUMNS_JSON.get(id(columns))
    if hit is not None and hit[0] is columns:
        return hit[1]
    frag = orjson.Fragment(orjson.dumps([{"name": c.name, "type": c.type} for c in columns]))
    if len(_COLUMNS_JSON) > 4096:
        _COLUMNS_JSON.clear()
    _COLUMNS_JSON[id(columns)] = (columns, frag)
    return frag


def change_payload(change: RowChange) -> dict[str, Any]:
    """The ``data`` object of a ``postgres_changes`` frame, in the documented shape.

    ``columns`` is a pre-encoded JSON fragment: serialise with :func:`relay.core.protocol.dumps`
    (or orjson); to inspect it as data, round-trip through JSON.
    """
    data: dict[str, Any] = {
        "schema": change.schema,
        "table": change.table,
        "commit_timestamp": change.commit_timestamp,
        "type": change.action.value,
        "columns": _columns_json(change.columns),
        "errors": None,
    }
    if change.action is not Action.DELETE:
        data["record"] = change.record
    if change.action is not Action.INSERT:
        data["old_record"] = change.old_record
    return data


class FrameCache:
    """Encode-once cache for one change: ``data`` once, each (topic, ids, vsn) wrapper once."""

    __slots__ = ("_data", "_frames", "_wire", "change")

    def __init__(self, change: RowChange, data_encoder: Callable[[RowChange], bytes] | None = None) -> None:
        self.change = change
        self._data = (data_encoder or _encode_data)(change).decode()
        self._frames: dict[tuple[str, tuple[int, ...], str], str] = {}
        self._wire: dict[tuple[str, tuple[int, ...], str], bytes] = {}

    def wire(self, topic: str, ids: Iterable[int], vsn: str) -> bytes:
        """The same frame as :meth:`frame`, as ready-to-write WebSocket frame bytes."""
        key = (topic, tuple(ids), vsn)
        w = self._wire.get(key)
        if w is None:
            w = ws_text_frame(self.frame(*key).encode())
            self._wire[key] = w
        return w

    def frame(self, topic: str, ids: Iterable[int], vsn: str) -> str:
        key = (topic, tuple(ids), vsn)
        f = self._frames.get(key)
        if f is None:
            prefix, suffix = encode_push_prefix(topic, "postgres_changes", vsn)
            ids_json = ",".join(str(i) for i in key[1])
            f = f'{prefix}{{"ids":[{ids_json}],"data":{self._data}}}{suffix}'
            self._frames[key] = f
        return f


def _encode_data(change: RowChange) -> bytes:
    return dumps(change_payload(change))
