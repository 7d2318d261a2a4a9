"""Comparison keys: Python values that order and compare like the Postgres type.

Each supported type has an input function (operand text -> key, :mod:`.inputs`) and a row
function (decoded row value -> key).  Comparing keys with Python's operators then answers what
Postgres' operators answer: numeric ``NaN`` equals itself and sorts above ``Infinity``
(:mod:`.extremes`), ``1 = 1.0`` for numerics and jsonb, ``character(n)`` ignores trailing spaces,
citext compares lower-cased, timestamptz compares instants.  Deliberate approximations, each
documented at its function: ``text`` orders by code point (Postgres by the column's collation);
types the relay does not know (enums, domains, ``interval``, ``inet``...) compare as text;
scalar ``uuid`` row strings are trusted to be lowercase (as Postgres prints them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

from relay.core.sqltypes.arrays import map_tree, parse_array_literal
from relay.core.sqltypes.extremes import NAN
from relay.core.sqltypes.inputs import (
    INPUT_FUNCTIONS,
    CastError,
    bool_input,
    float4_input,
    float8_input,
    numeric_input,
    text_input,
    to_float4,
    uuid_input,
)
from relay.core.sqltypes.output import RawJson
from relay.core.sqltypes.temporal import (
    date_input,
    date_key,
    time_input,
    time_key,
    timestamp_input,
    timestamp_key,
    timestamptz_input,
    timestamptz_key,
    timetz_input,
    timetz_key,
)

__all__ = [
    "ARRAY",
    "CITEXT",
    "EQUALITY",
    "JSON",
    "KEY_TYPES",
    "ORDERED",
    "OTHER",
    "PG_CAST_TYPES",
    "TEXT_KIND",
    "KeyType",
    "bool_key",
    "float_key",
    "int_key",
    "json_input",
    "json_key",
    "key_type",
    "numeric_key",
    "text_key",
    "uuid_key",
]


def _int_range_input(typ: str, lo: int, hi: int) -> Callable[[str], int]:
    """Operand parser with Postgres' range check, so ``int2`` rejects ``99999`` as Postgres does."""

    def parse(text: str) -> int:
        s = text.strip()
        if not s.isascii() or "_" in s:  # Python's int() takes "1_000"; Postgres 15 does not
            raise ValueError(text)
        value = int(s)  # rejects "1.5", as the integer input functions do
        if not lo <= value <= hi:
            raise CastError(f"out of range for {typ} ({lo}..{hi})")
        return value

    return parse


def int_key(value: Any) -> Any:
    """Row side of integer columns when the value is not already an int (the fast path)."""
    if isinstance(value, bool):
        raise TypeError("bool in an integer column")
    if isinstance(value, int | float | Decimal):
        return value  # Python compares int/float/Decimal exactly with each other
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(type(value).__name__)


def float_key(value: Any) -> Any:
    """Row side of float8 columns: floats, ints, or the strings ``NaN`` / ``Infinity``."""
    if type(value) is float:
        return NAN if value != value else value
    if type(value) is int:
        return value
    if isinstance(value, str):
        return float8_input(value)
    if isinstance(value, Decimal):
        return NAN if value.is_nan() else float(value)
    raise TypeError(type(value).__name__)


def float4_key(value: Any) -> Any:
    return to_float4(float_key(value))


def numeric_key(value: Any) -> Any:
    """Row side of numeric: ints compare exactly with Decimals as they are; floats go through
    ``str`` so that a float ``0.1`` from the decoder equals the operand ``0.1``."""
    t = type(value)
    if t is int:
        return value
    if t is Decimal:
        return NAN if value.is_nan() else value
    if t is float:
        return NAN if value != value else Decimal(repr(value))
    if isinstance(value, str):
        return numeric_input(value)
    raise TypeError(t.__name__)


def bool_key(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return bool_input(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(type(value).__name__)


def text_key(value: Any) -> str:
    """Row side of text-like and unknown types.  Keys order by code point, not by collation."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def bpchar_input(text: str) -> str:
    """``character(n)`` ignores trailing spaces when comparing, and the decoder sends them padded."""
    return text.rstrip(" ")


def bpchar_key(value: Any) -> str:
    return text_key(value).rstrip(" ")


def citext_input(text: str) -> str:
    """citext compares ``lower()``-ed values."""
    return text.lower()


def citext_key(value: Any) -> str:
    return text_key(value).lower()


def uuid_key(value: Any) -> str:
    """Canonicalise a row uuid.  Scalar ``str`` rows never get here: they are trusted to be canonical
    (Postgres prints uuids lowercase and hyphenated), which keeps ``uuid`` on the fast path."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return str(uuid.UUID(value))
    raise TypeError(type(value).__name__)


class _JsonAtom:
    """Keys for JSON ``true``/``false``/``null``: Python's ``True == 1`` must not leak into jsonb."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_JSON_TRUE: Final = _JsonAtom("true")
_JSON_FALSE: Final = _JsonAtom("false")
_JSON_NULL: Final = _JsonAtom("null")


def json_key(value: Any) -> Any:
    """A hashable key with jsonb equality: objects ignore key order, numbers compare numerically
    (``1`` = ``1.0``), and strings, numbers, booleans and null never equal each other."""
    if type(value) is RawJson:
        value = value.value  # parsed exactly, on first use; too deep: ValueError, no match
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return _JSON_TRUE if value else _JSON_FALSE
    if isinstance(value, int | Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if value is None:
        return _JSON_NULL
    if isinstance(value, list | tuple):
        return ("array", tuple(map(json_key, value)))
    if isinstance(value, dict):
        return ("object", frozenset((k, json_key(v)) for k, v in value.items()))
    raise TypeError(type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON: fall back to the string


def json_input(text: str) -> Any:
    """The operand as JSON (``eq.7``, ``eq.{"a":1}``, ``eq."x"``); like Postgres' ``::jsonb``, text
    that is not JSON (``eq.x``, ``eq.{nope``) is refused: a JSON string must be quoted."""
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError:
        raise CastError('not valid JSON (write a JSON string with double quotes, e.g. eq."x")') from None
    return json_key(value)


#: :attr:`KeyType.kind` values.
ORDERED: Final = "ordered"
TEXT_KIND: Final = "text"
EQUALITY: Final = "equality"
ARRAY: Final = "array"


@dataclass(frozen=True, slots=True)
class KeyType:
    """How values of one Postgres type become keys.

    ``parse`` casts operand text to a key (raising ``ValueError`` when the cast fails, a
    :class:`CastError` when its message is fit for users), ``coerce`` turns a decoded row value
    into a key, ``native`` names the Python type whose row values already *are* keys (so a matcher
    can skip ``coerce``), and ``kind`` what comparisons mean for the type: ``ordered`` (equality
    and ordering), ``text`` (also pattern matching), ``equality`` (json: no ordering in Postgres)
    or ``array`` (equality of whole arrays).
    """

    parse: Callable[[str], Any]  # also reads Postgres' canonical output of the type
    coerce: Callable[[Any], Any]
    native: type | None = None
    kind: str = ORDERED


_INT_KEYS: Final = {
    "int2": KeyType(INPUT_FUNCTIONS["int2"], int_key, int),
    "int4": KeyType(INPUT_FUNCTIONS["int4"], int_key, int),
    "int8": KeyType(INPUT_FUNCTIONS["int8"], int_key, int),
    # Stricter than ``oidin`` (which wraps negatives modulo 2**32); the server has Postgres cast
    # oid operands anyway, so this only reads its canonical output.
    "oid": KeyType(_int_range_input("oid", 0, 2**32 - 1), int_key, int),
}
_TEXT: Final = KeyType(text_input, text_key, str, TEXT_KIND)
CITEXT: Final = KeyType(citext_input, citext_key, None, TEXT_KIND)
#: Types the relay does not know are compared as text, but not pattern-matched: Postgres has no
#: ``~~`` for an enum or an inet, and a wrong guess would answer silently.
OTHER: Final = KeyType(text_input, text_key, str)
JSON: Final = KeyType(json_input, json_key, None, EQUALITY)

KEY_TYPES: Final[dict[str, KeyType]] = {
    **_INT_KEYS,
    "float4": KeyType(float4_input, float4_key),
    "float8": KeyType(float8_input, float_key),
    "numeric": KeyType(numeric_input, numeric_key),
    "bool": KeyType(bool_input, bool_key, bool),
    "text": _TEXT,
    "varchar": _TEXT,
    "name": _TEXT,
    "bpchar": KeyType(bpchar_input, bpchar_key),
    "citext": CITEXT,
    "uuid": KeyType(uuid_input, uuid_key, str),
    "timestamptz": KeyType(timestamptz_input, timestamptz_key),
    "timestamp": KeyType(timestamp_input, timestamp_key),
    "date": KeyType(date_input, date_key),
    "time": KeyType(time_input, time_key),
    "timetz": KeyType(timetz_input, timetz_key),
    "json": JSON,
    "jsonb": JSON,
}
#: Types whose operands the server has Postgres cast (``operand::pg_catalog.<type>``), reading the
#: canonical output back: what these accept, and what ``now`` or ``1e3`` mean, is Postgres' call.
#: All live in ``pg_catalog``, so the name is unambiguous and safe to put in SQL.
PG_CAST_TYPES: Final = frozenset(
    [t for t in KEY_TYPES if t != "citext"] + ["_" + t for t in KEY_TYPES if t != "citext"]
)


@lru_cache(maxsize=256)
def key_type(typ: str) -> KeyType:
    """The key type of a normalised type name (:func:`.names.normalize_type_name`); arrays are
    built from their element's, unknown types compare as text (:data:`OTHER`)."""
    if typ.startswith("_") and len(typ) > 1:
        element = key_type(typ[1:])
        nested = element is not JSON  # a list inside jsonb[] is a JSON value, not a dimension

        def parse(text: str) -> tuple[Any, ...]:
            return map_tree(parse_array_literal(text), element.parse, True)

        def coerce(value: Any) -> tuple[Any, ...]:
            if isinstance(value, str):
                return map_tree(parse_array_literal(value), element.coerce, True)
            return map_tree(value, element.coerce, nested)

        return KeyType(parse, coerce, None, ARRAY)
    return KEY_TYPES.get(typ, OTHER)
