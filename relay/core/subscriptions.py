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
from typing import Any, Final, Generic, Protocol, TypeVar

import orjson

from relay.core.authorize import ASK_POSTGRES, Denied, Verdict
from relay.core.changes import ENCODE_FAILED, Action, Column, RowChange, column_error
from relay.core.errors import Code, RelayError
from relay.core.filters import BoundFilter, Filter, FilterError, parse_filter
from relay.core.protocol import dumps, encode_push_prefix, ws_text_frame
from relay.core.quotas import trim_change_data

__all__ = [
    "TABLE_UNAVAILABLE_CODE",
    "TABLE_UNAVAILABLE_REASON",
    "Binding",
    "BindingError",
    "BindingSpec",
    "Delivery",
    "Subscriber",
    "SubscriptionIndex",
    "TableUnavailable",
    "binding_id",
    "change_payload",
    "parse_bindings",
    "snapshot_payload",
]


class BindingError(RelayError, ValueError):
    """A ``postgres_changes`` entry that cannot be subscribed; the message goes to the client."""

    def __init__(self, message: str, code: Code = Code.INVALID_BINDING) -> None:
        super().__init__(code, message)

    @property
    def reason(self) -> str:
        return f"InvalidBinding: {self}"


# One refusal for every binding outside the publication, worded like the reference server's
# (which appends the parameters; this one does not, so that the text is byte-identical
# whatever was probed).  ``code`` is stable for programs.
TABLE_UNAVAILABLE_REASON: Final = (
    "Unable to subscribe to changes with given parameters. "
    "Please check Realtime is enabled for the given connect parameters"
)
TABLE_UNAVAILABLE_CODE: Final = Code.TABLE_NOT_ENABLED


class TableUnavailable(BindingError):
    """The binding names no table (or schema) of the relay's publication.

    Raised alike for catalogs, views, missing tables and tables not enabled, and answered with
    :data:`TABLE_UNAVAILABLE_REASON` only: a different answer per case would let any token map
    the database's schemas, tables and columns.
    """

    def __init__(self) -> None:
        super().__init__(TABLE_UNAVAILABLE_REASON, TABLE_UNAVAILABLE_CODE)

    @property
    def reason(self) -> str:
        return TABLE_UNAVAILABLE_REASON


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """One parsed, not yet bound, ``postgres_changes`` entry."""

    event: str  # INSERT | UPDATE | DELETE | *
    schema: str
    table: str | None
    filter: Filter | None
    raw: Mapping[str, Any]
    id: int
    #: Columns the client wants in ``record``/``old_record``/``columns`` (the primary key always
    #: comes too); None for the whole row.  Filters and policies still see the whole row.
    select: tuple[str, ...] | None = None
    #: ``snapshot: true``: the binding asks for the table's current rows on join, before its
    #: live changes (docs/protocol.md, "Snapshot on join").  Does not change the binding's id.
    snapshot: bool = False
    #: The ``type`` of the snapshot's row frames: ``SNAPSHOT``, or ``INSERT`` for
    #: ``snapshot: "insert"`` — realtime-js builds ``new`` only for INSERT/UPDATE frames, so a
    #: browser that wants the rows' values asks for them typed as inserts.
    snapshot_type: str = "SNAPSHOT"


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
        select = _parse_select(i, e.get("select"))
        if select is not None and table is None:
            raise BindingError(f"postgres_changes[{i}]: select needs a table")
        snapshot_type = _parse_snapshot(i, e.get("snapshot"))
        snapshot = snapshot_type is not None
        if snapshot and table is None:
            raise BindingError(f"postgres_changes[{i}]: snapshot needs a table")
        out.append(
            BindingSpec(
                event,
                schema,
                table,
                flt,
                e,
                binding_id(event, schema, table, flt.text if flt else None),
                select,
                snapshot,
                snapshot_type or "SNAPSHOT",
            )
        )
    return out


def _parse_snapshot(i: int, value: Any) -> str | None:
    """``snapshot``: the row frames' ``type`` (``SNAPSHOT``, or ``INSERT`` for ``"insert"``), or
    None for no snapshot.  JSON ``true``/``false`` or the strings (clients send either for
    booleans).

    Anything else is refused rather than read as false: a client that asked for rows and
    silently got none would believe the table empty.
    """
    if value is None or value is False:
        return None
    if value is True:
        return "SNAPSHOT"
    if isinstance(value, str) and value.lower() in ("true", "false", "insert"):
        v = value.lower()
        return None if v == "false" else "INSERT" if v == "insert" else "SNAPSHOT"
    raise BindingError(f'postgres_changes[{i}]: snapshot must be true, false or "insert"')


def _parse_select(i: int, value: Any) -> tuple[str, ...] | None:
    """``select``: a list of column names (realtime-js 2.109), or a comma-separated string as
    upstream also reads it; empty means the whole row.  Column names are checked at bind."""
    if value is None:
        return None
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
        names = [n for n in names if n]
    elif isinstance(value, list) and all(isinstance(n, str) and n for n in value):
        names = list(value)
    else:
        raise BindingError(f"postgres_changes[{i}]: select must be a list of column names")
    return tuple(dict.fromkeys(names)) or None


class Subscriber(Protocol):
    """What the index needs of a joined channel: its identity, topic, protocol and rights."""

    @property
    def topic(self) -> str: ...

    @property
    def vsn(self) -> str: ...


S = TypeVar("S", bound=Subscriber)


@dataclass(frozen=True, slots=True, eq=False)
class Binding(Generic[S]):
    """A bound (filter cast to the column type) binding owned by one subscriber."""

    owner: S
    id: int
    event: str
    filter: BoundFilter | None
    select: tuple[str, ...] | None = None

    def matches(self, change: RowChange) -> bool:
        if self.event != "*" and self.event != change.action.value:
            return False
        if self.filter is not None:
            # DELETE is filtered on the old row; INSERT/UPDATE on the new row.
            return self.filter.matches(change.filter_row)
        return True

    def matches_row(self, row: Mapping[str, Any] | None) -> bool:
        return self.filter is None or (row is not None and self.filter.matches(row))


@dataclass
class SubscriptionIndex(Generic[S]):
    """(schema, table) -> bindings, and schema -> table-less bindings.

    Removal is lazy: ``remove_owner`` forgets the owner's per-owner entries at once and marks
    the lists it appears in; the lists are rebuilt once, before the next read.  Why: with N
    sockets on one table, filtering the list on every close made closing them all O(N²) (10,000
    sockets took 4.5 s of blocked event loop); now a burst of closes costs one rebuild.
    """

    by_table: dict[tuple[str, str], list[Binding[S]]] = field(default_factory=dict)
    by_schema: dict[str, list[Binding[S]]] = field(default_factory=dict)
    by_owner: dict[tuple[str, str], dict[S, list[Binding[S]]]] = field(default_factory=dict)
    # owner -> the table keys and schemas its bindings are listed under (for removal)
    _owner_keys: dict[S, tuple[set[tuple[str, str]], set[str]]] = field(default_factory=dict)
    _removed: set[int] = field(default_factory=set)  # ids of owners whose bindings await removal
    _dirty_tables: set[tuple[str, str]] = field(default_factory=set)
    _dirty_schemas: set[str] = field(default_factory=set)
    # (schema, table) -> owners with a ``select`` binding on it: every other owner's frame
    # carries the whole row, known without looking at its bindings (``_select`` per delivery)
    _selecting: dict[tuple[str, str], set[S]] = field(default_factory=dict)

    def add(self, spec: BindingSpec, owner: S, bound: BoundFilter | None) -> Binding[S]:
        if id(owner) in self._removed:  # the same owner again before the lists were rebuilt
            self._compact()
        b = Binding(owner, spec.id, spec.event, bound, spec.select)
        tables, schemas = self._owner_keys.setdefault(owner, (set(), set()))
        if spec.table is None:
            self.by_schema.setdefault(spec.schema, []).append(b)
            schemas.add(spec.schema)
        else:
            key = (spec.schema, spec.table)
            self.by_table.setdefault(key, []).append(b)
            self.by_owner.setdefault(key, {}).setdefault(owner, []).append(b)
            tables.add(key)
            if spec.select is not None:
                self._selecting.setdefault(key, set()).add(owner)
        return b

    def remove_owner(self, owner: S) -> None:
        keys = self._owner_keys.pop(owner, None)
        if keys is None:
            return
        tables, schemas = keys
        for key in tables:
            owners = self.by_owner.get(key)
            if owners is not None:
                owners.pop(owner, None)
                if not owners:
                    del self.by_owner[key]
            selecting = self._selecting.get(key)
            if selecting is not None:
                selecting.discard(owner)
                if not selecting:
                    del self._selecting[key]
        self._removed.add(id(owner))
        self._dirty_tables |= tables
        self._dirty_schemas |= schemas

    def _compact(self) -> None:
        """Drop the bindings of removed owners from the lists marked by ``remove_owner``."""
        gone = self._removed
        for key in self._dirty_tables:
            kept = [b for b in self.by_table.get(key, ()) if id(b.owner) not in gone]
            if kept:
                self.by_table[key] = kept
            else:
                self.by_table.pop(key, None)
        for schema in self._dirty_schemas:
            kept = [b for b in self.by_schema.get(schema, ()) if id(b.owner) not in gone]
            if kept:
                self.by_schema[schema] = kept
            else:
                self.by_schema.pop(schema, None)
        self._removed, self._dirty_tables, self._dirty_schemas = set(), set(), set()

    def __len__(self) -> int:
        if self._removed:
            self._compact()
        return sum(len(v) for v in self.by_table.values()) + sum(len(v) for v in self.by_schema.values())

    def plan(self, change: RowChange, owners: Iterable[S] | None = None) -> list[tuple[S, list[int]]]:
        """Subscribers whose bindings match ``change`` (event and filter), with the binding ids.

        One entry per subscriber (one frame per channel per change).  No authorization: see
        :meth:`route`.
        """
        if owners is not None and not self.by_schema.get(change.schema):
            return self._plan_owners(change, owners)
        per_owner: dict[int, tuple[S, list[int]]] = {}
        for group in self._candidates(change, owners):
            for b in group:
                if b.matches(change):
                    _add(per_owner, b.owner, b.id)
        return list(per_owner.values())

    def _plan_owners(self, change: RowChange, owners: Iterable[S]) -> list[tuple[S, list[int]]]:
        """:meth:`plan` for given owners and no schema-wide bindings: owner by owner.

        The common case of the live fan-out (the authorization index gives the owners); it
        skips gathering every owner's bindings into one list and re-grouping them by owner,
        which was most of the cost of a delivery's plan.  Output order follows ``owners``.
        """
        per = self.by_owner.get((change.schema, change.table))
        out: list[tuple[S, list[int]]] = []
        if not per:
            return out
        action = change.action.value
        for o in owners:
            bs = per.get(o)
            if bs is None:
                continue
            if len(bs) == 1:
                b = bs[0]
                if b.filter is None:  # Binding.matches inlined for the most common binding
                    if b.event == "*" or b.event == action:
                        out.append((o, [b.id]))
                elif b.matches(change):
                    out.append((o, [b.id]))
                continue
            ids: list[int] = []
            for b in bs:
                if b.id not in ids and b.matches(change):
                    ids.append(b.id)
            if ids:
                out.append((o, ids))
        return out

    def _candidates(
        self, change: RowChange, owners: Iterable[S] | None = None
    ) -> tuple[Iterable[Binding[S]], Iterable[Binding[S]]]:
        if self._removed:
            self._compact()
        key = (change.schema, change.table)
        if owners is None:
            table: Iterable[Binding[S]] = self.by_table.get(key, ())
        else:
            per_owner = self.by_owner.get(key, {})
            table = [b for o in owners for b in per_owner.get(o, ())]
        return table, self.by_schema.get(change.schema, ())

    def route(
        self, change: RowChange, decide: Decide[S], owners: Iterable[S] | None = None
    ) -> tuple[list[Delivery[S]], list[tuple[S, int]]]:
        """Who receives what for ``change``, applying row authorization.

        ``decide(subscriber, which)`` gives the verdict for the new row (``which`` 0) or the old
        row (1).  Returns the deliveries and the (subscriber, which) pairs whose verdict was
        :data:`ASK_POSTGRES`: the caller evaluates those in Postgres, records them with
        ``decide`` and routes again (nothing is delivered to a subscriber it could not decide).

        - INSERT: the new row must be visible; DELETE: the old row (REPLICA IDENTITY FULL).
        - UPDATE: a subscriber that may see the new row gets the UPDATE (with ``old_record``
          cut to the primary key when it could not see the old row: no leak of values it was
          never allowed to see).  One that could see the old row but not the new one (policy or
          filter) gets a DELETE of the old row marked ``"moved_out": true``: the row left its
          view, and it learns nothing of the new values.
        - A verdict that is an error is delivered as an ``errors`` entry to that subscriber only.

        ``owners``, when given, restricts the table's bindings to those subscribers (the
        authorization index's candidates); schema-wide bindings are always checked.
        """
        deliveries: list[Delivery[S]] = []
        pending: list[tuple[S, int]] = []
        action = change.action
        if action is not Action.UPDATE:
            which = 0 if action is Action.INSERT else 1
            selecting = self._selecting.get((change.schema, change.table))
            for owner, ids in self.plan(change, owners):
                v = decide(owner, which)
                if v is True:
                    select = self._select(change, owner, ids) if selecting and owner in selecting else None
                    deliveries.append(Delivery(owner, ids, CHANGE, None, select))
                elif isinstance(v, Denied):
                    deliveries.append(Delivery(owner, ids, ERROR, v))
                elif v is ASK_POSTGRES:
                    pending.append((owner, which))
            return deliveries, pending
        # Per subscriber, its bindings that: see the new row (U); saw the old row and their
        # filter no longer matches (F: left by filter); match both rows (P: left only if the
        # policy stops showing the row).
        u_ids: dict[int, tuple[S, list[int]]] = {}
        f_ids: dict[int, tuple[S, list[int]]] = {}
        p_ids: dict[int, tuple[S, list[int]]] = {}
        for group in self._candidates(change, owners):
            for b in group:
                if b.filter is None:  # matches either row: no need to build them (lazy rows)
                    m_new = m_old = True
                else:
                    m_new = b.matches_row(change.record)
                    m_old = b.matches_row(change.old_record)
                if b.event in ("*", "UPDATE") and m_new:
                    _add(u_ids, b.owner, b.id)
                if b.event in ("*", "UPDATE", "DELETE") and m_old:
                    _add(p_ids if m_new else f_ids, b.owner, b.id)
        for key in u_ids.keys() | f_ids.keys() | p_ids.keys():
            owner = (u_ids.get(key) or f_ids.get(key) or p_ids[key])[0]
            u = u_ids[key][1] if key in u_ids else []
            f = f_ids[key][1] if key in f_ids else []
            p = p_ids[key][1] if key in p_ids else []
            vn: Verdict | None = decide(owner, 0) if (u or p) else None
            if vn is ASK_POSTGRES:
                pending.append((owner, 0))
                continue
            vo: Verdict | None = decide(owner, 1) if (f or p or (u and vn is True)) else None
            if vo is ASK_POSTGRES:
                pending.append((owner, 1))
                continue
            delivered = False
            sent: list[int] = []
            if u and vn is True:
                kind = CHANGE if vo is True else MOVED_IN
                deliveries.append(Delivery(owner, u, kind, None, self._select(change, owner, u)))
                delivered = True
                sent = u
            if vo is True:
                out = [i for i in f if i not in sent] + (
                    [i for i in p if i not in sent] if vn is not True else []
                )
                if out:
                    deliveries.append(Delivery(owner, out, MOVED_OUT, None, self._select(change, owner, out)))
                    delivered = True
            if not delivered:
                err = vn if isinstance(vn, Denied) else vo if isinstance(vo, Denied) else None
                if err is not None:
                    deliveries.append(Delivery(owner, u or f or p, ERROR, err))
        return deliveries, pending

    def _select(self, change: RowChange, owner: S, ids: list[int]) -> tuple[str, ...] | None:
        """The columns ``owner``'s frame carries: the union of the ``select`` of its delivered
        bindings, or None (the whole row) if one of them has none."""
        selecting = self._selecting.get((change.schema, change.table))
        if selecting is None or owner not in selecting:
            return None
        per_owner = self.by_owner.get((change.schema, change.table))
        bindings = per_owner.get(owner) if per_owner is not None else None
        if not bindings or all(b.select is None for b in bindings):
            return None
        wanted: dict[str, None] = {}
        for b in bindings:
            if b.id in ids:
                if b.select is None:
                    return None
                wanted.update(dict.fromkeys(b.select))
        return tuple(wanted) if wanted else None


def _add(d: dict[int, tuple[S, list[int]]], owner: S, bid: int) -> None:
    key = id(owner)
    hit = d.get(key)
    if hit is None:
        d[key] = (owner, [bid])
    elif bid not in hit[1]:
        hit[1].append(bid)


CHANGE: Final = "change"
MOVED_OUT: Final = "moved_out"
MOVED_IN: Final = "moved_in"
ERROR: Final = "error"

Decide = Callable[[S, int], Verdict]


@dataclass(slots=True)
class Delivery(Generic[S]):
    """One frame to one subscriber: which bindings, and which variant of the change."""

    sub: S
    ids: list[int]
    kind: str = "change"
    error: Denied | None = None
    select: tuple[str, ...] | None = None


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


def change_payload(change: RowChange, raw: bool = True) -> dict[str, Any]:
    """The ``data`` object of a ``postgres_changes`` frame, in the documented shape.

    ``columns`` is a pre-encoded JSON fragment: serialise with :func:`relay.core.protocol.dumps`
    (or orjson); to inspect it as data, round-trip through JSON.  So are ``record`` and
    ``old_record`` when the decoder kept their JSON (:meth:`RowChange.record_json`) and ``raw``
    is true; ``raw=False`` gives them as dicts, for code that edits them.
    """
    data: dict[str, Any] = {
        "schema": change.schema,
        "table": change.table,
        "commit_timestamp": change.commit_timestamp,
        "type": change.action.value,
        "columns": _columns_json(change.columns),
        "errors": change.errors,
        "position": change.position,
    }
    if change.action is not Action.DELETE:
        rj = change.record_json() if raw else None
        data["record"] = orjson.Fragment(rj) if rj is not None else change.record
    if change.action is not Action.INSERT:
        oj = change.old_record_json() if raw else None
        data["old_record"] = orjson.Fragment(oj) if oj is not None else change.old_record
    return data


# (topic, ids, vsn) -> the bytes of a postgres_changes frame before and after its ``data``
_AROUND: dict[tuple[str, tuple[int, ...], str], tuple[bytes, bytes]] = {}

# (schema, table, action, columns) -> the ``data`` object's constant pieces (see _raw_data)
_DATA_HEADS: dict[tuple[str, str, Action, int], tuple[tuple[Column, ...], bytes, bytes, bytes]] = {}


def _raw_data(change: RowChange) -> bytes | None:
    """``dumps(change_payload(change))`` without the dict, when the rows are raw JSON.

    Why: per change, the payload dict and its encoding were a Python-level cost as large as
    the row's own decoding; everything but the timestamp, ``errors``, ``position`` and the rows
    is the same for every change of a table and action, so those pieces are encoded once.
    The bytes are those of the dict path, key for key (the differential tests compare them);
    None when a row is not raw JSON (then the dict path runs).
    """
    action = change.action
    if action is Action.INSERT:
        rec = change.record_json()
        if rec is None:
            return None
        rows = b',"record":' + rec + b"}"
    elif action is Action.DELETE:
        old = change.old_record_json()
        if old is None:
            return None
        rows = b',"old_record":' + old + b"}"
    else:
        rec, old = change.record_json(), change.old_record_json()
        if rec is None or old is None:
            return None
        rows = b',"record":' + rec + b',"old_record":' + old + b"}"
    columns = change.columns
    key = (change.schema, change.table, action, id(columns))
    heads = _DATA_HEADS.get(key)
    if heads is None or heads[0] is not columns:
        heads = (
            columns,
            b'{"schema":'
            + orjson.dumps(change.schema)
            + b',"table":'
            + orjson.dumps(change.table)
            + b',"commit_timestamp":',
            b',"type":"'
            + action.value.encode()
            + b'","columns":'
            + orjson.dumps(_columns_json(columns))
            + b',"errors":',
            b',"position":',
        )
        if len(_DATA_HEADS) > 4096:
            _DATA_HEADS.clear()
        _DATA_HEADS[key] = heads
    errors = change.errors
    return b"".join(
        (
            heads[1],
            orjson.dumps(change.commit_timestamp),
            heads[2],
            b"null" if errors is None else orjson.dumps(errors),
            heads[3],
            orjson.dumps(change.position),
            rows,
        )
    )


def repair_unencodable(change: RowChange) -> list[str]:
    """Replace the column values JSON cannot encode by ``None``, with an ``errors`` marker each.

    Why here, at the narrowest point: an encoding failure used to escape the fan-out and stop
    replication, and the retry failed on the same change forever.  Only the offending values are
    touched (new dicts, the old ones may be shared); returns the markers added.
    """
    added: list[str] = []
    for attr in ("record", "old_record"):
        row: dict[str, Any] | None = getattr(change, attr)
        if not row:
            continue
        bad: dict[str, BaseException] = {}
        for name, value in row.items():
            try:
                dumps(value)
            except (TypeError, ValueError, RecursionError) as error:
                bad[name] = error
        if bad:
            setattr(change, attr, {k: (None if k in bad else v) for k, v in row.items()})
            errors = change.errors if change.errors is not None else []
            for name, failure in bad.items():
                marker = column_error(ENCODE_FAILED, name, failure)
                if marker not in errors:
                    errors.append(marker)
                    added.append(marker)
            change.errors = errors
    return added


class FrameCache:
    """Encode-once cache for one change: ``data`` once, each (topic, ids, vsn) wrapper once.

    ``repaired`` lists the ``errors`` markers added because a value could not be encoded (see
    :func:`repair_unencodable`); the server counts and logs them.
    """

    __slots__ = ("_data", "_frames", "_max", "_variants", "_wire", "change", "repaired", "trimmed")

    def __init__(
        self,
        change: RowChange,
        payload: Callable[[RowChange], dict[str, Any]] | None = None,
        max_data_bytes: int = 0,
    ) -> None:
        self.change = change
        build = payload or change_payload
        self.repaired: list[str] = []
        fast = _raw_data(change) if payload is None else None
        try:
            if fast is not None:
                data, body = fast, None
            else:
                body = build(change)
                data = dumps(body)
        except (TypeError, ValueError, RecursionError):
            self.repaired = repair_unencodable(change)
            body = build(change)
            data = dumps(body)
        # Over the postgres change payload quota (0: none) large values are left out and
        # ``errors`` says so (relay/core/quotas.py): one huge row never chokes every subscriber.
        # Trimmed from the payload itself (json verbatim, numbers exact): nothing is parsed
        # back, so no depth or number can make this step fail.
        self.trimmed = bool(max_data_bytes) and len(data) > max_data_bytes
        if self.trimmed:
            if body is None or build is change_payload:  # trimming reads the rows as dicts
                body = change_payload(change, raw=False)
            data = dumps(trim_change_data(body))
        self._max = max_data_bytes
        self._data = data
        self._frames: dict[tuple[str, tuple[int, ...], str], str] | None = None
        self._wire: dict[tuple[str, tuple[int, ...], str], bytes] = {}
        self._variants: dict[str, FrameCache] | None = None

    def wire(self, topic: str, ids: Iterable[int], vsn: str) -> bytes:
        """The same frame as :meth:`frame`, as ready-to-write WebSocket frame bytes."""
        key = (topic, tuple(ids), vsn)
        w = self._wire.get(key)
        if w is None:
            # the frame's bytes straight from the encoded data (no str of it in between), around
            # it the frame's head and tail, which are the same for every change
            around = _AROUND.get(key)
            if around is None:
                prefix, suffix = encode_push_prefix(topic, "postgres_changes", vsn)
                ids_json = ",".join(map(str, key[1]))
                around = (f'{prefix}{{"ids":[{ids_json}],"data":'.encode(), b"}" + suffix.encode())
                if len(_AROUND) > 4096:
                    _AROUND.clear()
                _AROUND[key] = around
            w = ws_text_frame(around[0] + self._data + around[1])
            self._wire[key] = w
        return w

    def variant(
        self, kind: str, error: Denied | None = None, select: tuple[str, ...] | None = None
    ) -> FrameCache:
        """The cache for a variant of this change (moved out/in, error, a column selection),
        built once."""
        if kind == ERROR:
            select = None  # an error frame carries no row anyway
        if kind == CHANGE and select is None:
            return self
        key = kind if error is None else f"{kind}:{error.code}:{error.policy}"
        if select is not None:
            key = f"{key}:select:" + "\x00".join(select)
        if self._variants is None:
            self._variants = {}
        v = self._variants.get(key)
        if v is None:
            v = FrameCache(self.change, lambda ch: _variant_payload(ch, kind, error, select), self._max)
            self._variants[key] = v
        return v

    def frame(self, topic: str, ids: Iterable[int], vsn: str) -> str:
        key = (topic, tuple(ids), vsn)
        if self._frames is None:
            self._frames = {}
        f = self._frames.get(key)
        if f is None:
            prefix, suffix = encode_push_prefix(topic, "postgres_changes", vsn)
            ids_json = ",".join(str(i) for i in key[1])
            f = f'{prefix}{{"ids":[{ids_json}],"data":{self._data.decode()}}}{suffix}'
            self._frames[key] = f
        return f


def _variant_payload(
    change: RowChange, kind: str, error: Denied | None, select: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """``data`` for a moved-out DELETE, a moved-in UPDATE, a per-subscriber error, or a column
    selection (``record``/``old_record``/``columns`` cut to ``select`` plus the primary key)."""
    data = change_payload(change, raw=False)
    if select is not None:
        keep = set(select).union(change.pk)
        data["columns"] = [{"name": c.name, "type": c.type} for c in change.columns if c.name in keep]
        for side in ("record", "old_record"):
            row = data.get(side)
            if row is not None:
                data[side] = {k: v for k, v in row.items() if k in keep}
    if kind == MOVED_OUT:
        data["type"] = "DELETE"
        data.pop("record", None)
        data["moved_out"] = True
    elif kind == MOVED_IN:
        old = change.old_record or {}
        keys = change.pk or tuple(old)
        data["old_record"] = {k: old.get(k) for k in keys}
    elif kind == ERROR and error is not None:
        data["columns"] = []
        if "record" in data:
            data["record"] = {}
        if "old_record" in data:
            data["old_record"] = {}
        data["errors"] = [f"PolicyError {error.code}: {error.message} (policy {error.policy})"]
    return data


def snapshot_payload(
    kind: str,
    error: Denied | None = None,
    select: tuple[str, ...] | None = None,
    row_type: str = "SNAPSHOT",
) -> Callable[[RowChange], dict[str, Any]]:
    """``data`` of a snapshot row: the INSERT's (same columns, values, ``select`` and policy
    error handling) with ``"type": row_type`` (``SNAPSHOT``, or ``INSERT`` when the binding asked
    for ``snapshot: "insert"``) and no ``position`` (a snapshot row has none: the end marker
    carries the position live changes follow from)."""

    def build(change: RowChange) -> dict[str, Any]:
        data = _variant_payload(change, kind, error, select)
        data["type"] = row_type
        data.pop("position", None)
        data.pop("old_record", None)
        return data

    return build
