"""Output conversion: oid -> ``typname``, and wal2json text -> the JSON values clients expect.

Why: wal2json prints most values with the type's text output function, while Supabase clients
expect the shapes Postgres's ``to_json`` produces (nested JSON for json/jsonb and arrays, ISO
timestamps with a ``T`` and a full ``+00:00`` offset, numbers as numbers).  The conversion is
chosen once per column type and cached, so the per-value cost is one function call.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from relay.core.sqltypes.arrays import identity, parse_array
from relay.core.sqltypes.names import name_from_format_type

__all__ = [
    "BUILTIN_TYPES",
    "Converter",
    "RawJson",
    "TypeInfo",
    "TypeRegistry",
    "commit_timestamp",
    "numeric_text",
    "timestamp_json",
    "timestamptz_json",
]

Converter = Callable[[Any], Any]


class TypeInfo:
    """What the relay needs to know of one Postgres type."""

    __slots__ = ("category", "elem_oid", "name", "oid")

    def __init__(self, oid: int, name: str, category: str = "S", elem_oid: int = 0) -> None:
        self.oid = oid
        self.name = name
        self.category = category  # pg_type.typcategory: N numeric, B bool, D datetime, A array, U user...
        self.elem_oid = elem_oid

    def __repr__(self) -> str:
        return f"TypeInfo({self.oid}, {self.name!r})"


# The types every Postgres has with fixed oids; the rest (enums, domains, extension types, their
# arrays) are loaded from pg_type by the I/O layer into the registry.
_BUILTIN: list[tuple[int, str, str, int]] = [
    (16, "bool", "B", 0),
    (17, "bytea", "U", 0),
    (18, "char", "S", 0),
    (19, "name", "S", 0),
    (20, "int8", "N", 0),
    (21, "int2", "N", 0),
    (23, "int4", "N", 0),
    (24, "regproc", "N", 0),
    (25, "text", "S", 0),
    (26, "oid", "N", 0),
    (114, "json", "U", 0),
    (142, "xml", "U", 0),
    (650, "cidr", "I", 0),
    (700, "float4", "N", 0),
    (701, "float8", "N", 0),
    (790, "money", "N", 0),
    (829, "macaddr", "U", 0),
    (869, "inet", "I", 0),
    (1042, "bpchar", "S", 0),
    (1043, "varchar", "S", 0),
    (1082, "date", "D", 0),
    (1083, "time", "D", 0),
    (1114, "timestamp", "D", 0),
    (1184, "timestamptz", "D", 0),
    (1186, "interval", "T", 0),
    (1266, "timetz", "D", 0),
    (1560, "bit", "V", 0),
    (1562, "varbit", "V", 0),
    (1700, "numeric", "N", 0),
    (2950, "uuid", "U", 0),
    (3802, "jsonb", "U", 0),
    (3614, "tsvector", "U", 0),
    (4089, "regnamespace", "N", 0),
    (2205, "regclass", "N", 0),
    (1000, "_bool", "A", 16),
    (1001, "_bytea", "A", 17),
    (1005, "_int2", "A", 21),
    (1007, "_int4", "A", 23),
    (1016, "_int8", "A", 20),
    (1009, "_text", "A", 25),
    (1015, "_varchar", "A", 1043),
    (1014, "_bpchar", "A", 1042),
    (1021, "_float4", "A", 700),
    (1022, "_float8", "A", 701),
    (1231, "_numeric", "A", 1700),
    (2951, "_uuid", "A", 2950),
    (199, "_json", "A", 114),
    (3807, "_jsonb", "A", 3802),
    (1115, "_timestamp", "A", 1114),
    (1185, "timestamptz_json", "A", 1184),
    (1182, "_date", "A", 1082),
    (1183, "_time", "A", 1083),
    (1041, "_inet", "A", 869),
    (1028, "_oid", "A", 26),
    (1003, "_name", "A", 19),
]
BUILTIN_TYPES: dict[int, TypeInfo] = {oid: TypeInfo(oid, n, c, e) for oid, n, c, e in _BUILTIN}

# wal2json's "type" is format_type() output; used only when an oid is unknown to the registry.


# -- value converters -----------------------------------------------------------------------
def timestamptz_json(v: Any) -> Any:
    """``2026-11-23 13:10:50.27+00`` -> ``2026-11-23T13:10:50.27+00:00`` (to_json's shape)."""
    if type(v) is not str or len(v) < 22 or v[10] != " ":
        return v  # infinity, -infinity, BC dates: passed through as Postgres printed them
    # the offset is +HH, +HH:MM or +HH:MM:SS; to_json always prints at least +HH:MM
    if v[-3] in "+-":
        return v[:10] + "T" + v[11:] + ":00"
    return v[:10] + "T" + v[11:]


def timestamp_json(v: Any) -> Any:
    """``2026-11-23 13:10:50.27`` -> ``2026-11-23T13:10:50.27`` (to_json's shape)."""
    if isinstance(v, str) and len(v) > 10 and v[10] == " ":
        return v[:10] + "T" + v[11:]
    return v


_timestamp = timestamp_json


_UNPARSED: Any = object()


class RawJson:
    """A json/jsonb value kept as the exact text Postgres wrote, embedded verbatim in frames.

    Why not parse it: a round trip through Python changes what Postgres stored (orjson reads
    numbers as doubles, so ``100000000000000000001`` became ``1e+20``; ``1e400`` does not parse at
    all) and recursion limits turned deep values into errors that stopped replication.  Kept as
    text, the frame encoder inserts it as an ``orjson.Fragment``: nothing recurses and every digit
    survives.  Filters that compare json content parse it lazily (:attr:`value`), exactly
    (ints unbounded, decimals as ``Decimal``), once per change.
    """

    __slots__ = ("_parsed", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parsed = _UNPARSED

    @property
    def value(self) -> Any:
        """The parsed content; ``ValueError`` when it is not JSON or too deep for Python to hold."""
        parsed = self._parsed
        if parsed is _UNPARSED:
            try:
                parsed = json.loads(self.text, parse_float=Decimal)
            except RecursionError:
                raise ValueError("json value nested too deeply to inspect") from None
            self._parsed = parsed
        return parsed

    def fragment(self) -> orjson.Fragment:
        return orjson.Fragment(self.text)

    def __eq__(self, other: object) -> bool:
        """Equal to another RawJson with equal content, or to the parsed Python value (tests)."""
        try:
            if isinstance(other, RawJson):
                return self.text == other.text or bool(self.value == other.value)
            return bool(self.value == other)
        except (ValueError, RecursionError):
            return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"RawJson({text!r})"


def _json(v: Any) -> Any:
    return RawJson(v) if type(v) is str else v


def _bool_text(v: Any) -> Any:
    if v == "t" or v == "true":
        return True
    if v == "f" or v == "false":
        return False
    return v


def _int_text(v: Any) -> Any:
    return int(v) if type(v) is str else v


def _float_text(v: Any) -> Any:
    """float4/float8 text -> float; ``NaN`` / ``Infinity`` / ``-Infinity`` stay the strings that
    ``to_json`` prints (a float NaN would be encoded as ``null``)."""
    if type(v) is not str:
        return v
    f = float(v)
    return f if f - f == 0.0 else v


# Only types whose wal2json text differs from the client shape need a per-value call: wal2json
# already prints integers, floats, numerics and booleans as JSON numbers and booleans (exact
# numerics are restored by the decoder from the message text).
_SCALAR: dict[str, Converter] = {
    "timestamptz": timestamptz_json,
    "timestamp": _timestamp,
    "json": _json,
    "jsonb": _json,
}

# With wal2json's ``numeric-data-types-as-string`` (2.6+) numbers arrive as their exact text,
# NaN/Infinity included (2.5 prints those as ``null``): these types then need converting too.
_NUMBER_TEXT: dict[str, Converter] = {
    "int2": _int_text,
    "int4": _int_text,
    "int8": _int_text,
    "oid": _int_text,
    "float4": _float_text,
    "float8": _float_text,
    "numeric": lambda v: numeric_text(v) if type(v) is str else v,
}

# Array elements come as text inside the array literal, so numbers need parsing there.
_ELEMENT: dict[str, Converter] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "oid": int,
    "float4": _float_text,
    "float8": _float_text,
    "numeric": lambda s: numeric_text(s),
    "bool": _bool_text,
    "json": _json,
    "jsonb": _json,
    "timestamptz": timestamptz_json,
    "timestamp": _timestamp,
}


#: Array converters whose elements are text as printed (no element converter): the decoder may
#: write such an array's JSON straight from a simple literal (relay/core/wal2json.py).
TEXT_ARRAYS: weakref.WeakSet[Converter] = weakref.WeakSet()

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1  # orjson encodes ints in [-2**63, 2**64 - 1]; others raise


def numeric_text(s: str) -> Any:
    """numeric text -> int, float (when it prints back as the same value) or ``Decimal``.

    Integers outside what orjson encodes become ``Decimal`` (encoded verbatim, see
    :func:`relay.core.protocol.dumps`): a 20-digit numeric once stopped replication.
    ``NaN`` / ``Infinity`` / ``-Infinity`` stay strings, as ``to_json`` prints them.
    """
    try:
        if "." not in s and "e" not in s and "E" not in s:
            v = int(s)
            return v if _INT_MIN <= v <= _INT_MAX else Decimal(s)
        d = Decimal(s)
    except (ValueError, InvalidOperation):
        return s
    if not d.is_finite():
        return s
    f = float(d)
    return f if Decimal(repr(f)) == d else d


class TypeRegistry:
    """oid -> :class:`TypeInfo`, plus a cached value converter per type.

    The I/O layer calls :meth:`update` with rows from ``pg_type``; decoding never blocks on it:
    an unknown oid falls back to the name wal2json printed.
    """

    def __init__(self, types: Iterable[TypeInfo] = (), numbers_as_text: bool = False) -> None:
        self._types: dict[int, TypeInfo] = dict(BUILTIN_TYPES)
        self._converters: dict[tuple[int, str], tuple[str, Converter]] = {}
        self._numbers_as_text = numbers_as_text
        self.update(types)

    @property
    def numbers_as_text(self) -> bool:
        """True when wal2json sends numbers as strings (``numeric-data-types-as-string``)."""
        return self._numbers_as_text

    @numbers_as_text.setter
    def numbers_as_text(self, on: bool) -> None:
        if on != self._numbers_as_text:
            self._numbers_as_text = on
            self._converters.clear()

    def update(self, types: Iterable[TypeInfo]) -> None:
        for t in types:
            self._types[t.oid] = t
        self._converters.clear()

    def __contains__(self, oid: int) -> bool:
        return oid in self._types

    def get(self, oid: int) -> TypeInfo | None:
        return self._types.get(oid)

    def resolve(self, oid: int | None, format_type: str) -> tuple[str, Converter]:
        """Return ``(typname, converter)`` for a column as wal2json described it."""
        key = (oid or 0, format_type)
        hit = self._converters.get(key)
        if hit is not None:
            return hit
        info = self._types.get(oid or 0)
        if info is not None:
            name = info.name
            elem = self._types.get(info.elem_oid) if info.category == "A" else None
            elem_name = elem.name if elem is not None else (name[1:] if name.startswith("_") else "")
            is_array = info.category == "A"
            category = info.category
        else:
            name = name_from_format_type(format_type)
            is_array = name.startswith("_")
            elem_name = name[1:] if is_array else ""
            category = "A" if is_array else "S"
        conv: Converter
        if is_array:
            elem_conv = _ELEMENT.get(elem_name, identity)
            if elem_name not in _ELEMENT and elem_name in ("bytea",):
                elem_conv = _bytea_elem

            def conv(v: Any, _e: Converter = elem_conv) -> Any:
                return parse_array(v, _e) if isinstance(v, str) else v

            if elem_conv is identity:
                TEXT_ARRAYS.add(conv)

        elif name in ("json", "jsonb") and info is not None and info.oid not in (114, 3802):
            conv = identity  # a user type that is only named json: its text is not known to be JSON
        elif self._numbers_as_text and name in _NUMBER_TEXT:
            conv = _NUMBER_TEXT[name]
        elif category == "E" or name not in _SCALAR:
            conv = identity
        else:
            conv = _SCALAR[name]
        result = (name, conv)
        self._converters[key] = result
        return result


def _bytea_elem(s: str) -> str:
    return s[2:] if s.startswith("\\x") else s


def commit_timestamp(text: str) -> str:
    """wal2json's ``2026-11-23 13:10:50.276462+00`` -> ``2026-11-23T13:10:50.276Z`` (UTC, ms).

    The replication session runs with ``TimeZone=UTC`` so the fast path is string slicing; any
    other offset is converted properly.
    """
    if len(text) >= 22 and text.endswith("+00") and text[10] == " " and text[19] == ".":
        frac = (text[20:-3] + "000")[:3]
        return f"{text[:10]}T{text[11:19]}.{frac}Z"
    if text.endswith("+00") and len(text) == 22 and text[10] == " ":
        return f"{text[:10]}T{text[11:19]}.000Z"
    try:
        dt = datetime.fromisoformat(timestamptz_json(text))
    except ValueError:
        return text
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
