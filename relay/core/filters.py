"""Row filters of postgres_changes subscriptions: ``column=op.value``, as Supabase Realtime takes them.

Why a module of its own, and why it is pure: every change the relay decodes is matched against
every subscription on its table, so matching is the hottest loop of the relay, and it must agree
with what Postgres itself would have answered for ``column <op> value::column_type``.  Keeping it
free of I/O lets us test those semantics exhaustively from plain dicts.

The work is split in two so that the per-row cost stays tiny:

* :func:`parse_filter` checks the syntax once, when a client subscribes, and yields a
  :class:`Filter` holding the raw textual operand(s).
* :meth:`Filter.bind` casts the operand(s) to the column's Postgres type once (that is where
  ``id=eq.abc`` on an ``int4`` column is rejected) and compiles a :class:`BoundFilter` whose
  ``matches`` is a closure specialised for the operator and the type: for ``int``/``text``
  columns it is a dict lookup, a type check and one comparison.

Values are compared as *keys*: each supported type has a converter from the operand text and one
from the decoded row value (see :mod:`relay.core.changes`) to a Python value that orders and
compares like the Postgres type does.  Deliberate approximations, all documented at the converter:
``text`` orders by code point (Postgres orders by the column's collation); types the relay does not
know (enums, domains, ``interval``, ``inet``...) are compared as text, so their ordering may differ
from Postgres'; ``timetz``/``timestamptz`` operands without an offset are taken as UTC (Postgres
would use the session time zone); json/jsonb values are kept as Postgres's text
(:class:`relay.core.pgtypes.RawJson`), so JSON ``null`` is told from SQL ``NULL`` and matches
``eq.null``; a json value nested too deeply to parse never matches; scalar ``uuid`` row strings
are trusted to be lowercase (as Postgres prints them); date/time values Python cannot represent
(BC, year > 9999) never match, and sub-microsecond digits are truncated where Postgres would round.
"""

from __future__ import annotations

import json
import math
import operator
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

from relay.core.pgtypes import RawJson, scan_quoted

__all__ = [
    "MAX_IN_VALUES",
    "OPERATORS",
    "BoundFilter",
    "Filter",
    "FilterError",
    "normalize_type_name",
    "parse_filter",
]

#: The operators a filter may use, in the order error messages list them.
OPERATORS: Final = ("eq", "neq", "lt", "lte", "gt", "gte", "in")
#: Upper bound on ``in`` list length: Supabase Realtime's limit, and a bound on per-row work.
MAX_IN_VALUES: Final = 100

_ALL_OPS: Final = frozenset(OPERATORS)
_EQUALITY_OPS: Final = frozenset(("eq", "neq", "in"))
_ARRAY_OPS: Final = frozenset(("eq", "neq"))
_CLIP: Final = 200

Matcher = Callable[[Mapping[str, Any]], bool]


class FilterError(ValueError):
    """A filter the relay cannot honour.  The message is shown to the end user verbatim.

    It subclasses :class:`ValueError` so callers that validate several inputs can catch one type.
    """


def _error(text: str, reason: str) -> FilterError:
    """Build the user-facing error; long filters are clipped so a 100-value list stays readable."""
    shown = text if len(text) <= _CLIP else text[: _CLIP - 1] + "…"
    return FilterError(f'invalid filter "{shown}": {reason}')


# --------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class Filter:
    """A syntactically valid filter, not yet tied to a column type.

    ``values`` holds the raw operand text: one item for scalar operators, the unquoted list items
    for ``in``.  Casting waits for :meth:`bind` because only the table's schema knows the type.
    """

    column: str
    op: str
    values: tuple[str, ...]
    text: str

    def bind(self, column_type: str) -> BoundFilter:
        """Cast the operand(s) to ``column_type`` once and compile the row matcher.

        ``column_type`` is the column's ``typname`` (``int4``, ``_text``); the spellings of
        ``format_type`` (``integer``, ``timestamp(3) with time zone``, ``text[]``) are accepted
        too.  Raises :class:`FilterError` when an operand does not cast (``abc`` for ``int4``) or
        the operator is meaningless for the type (ordering on json/jsonb or arrays), so the client
        learns at subscribe time rather than by silently receiving nothing.
        """
        typ = normalize_type_name(column_type)
        spec = _spec_for(typ)
        op = self.op
        if op not in _ALL_OPS:
            raise _error(self.text, f'unknown operator "{op}" (expected one of {", ".join(OPERATORS)})')
        if op not in spec.ops:
            allowed = ", ".join(o for o in OPERATORS if o in spec.ops)
            raise _error(
                self.text,
                f'operator "{op}" is not supported for column "{self.column}" of type '
                f"{_display(typ)} (supported: {allowed})",
            )
        if op == "in":
            if not 1 <= len(self.values) <= MAX_IN_VALUES:
                raise _error(
                    self.text, f"an in list takes 1 to {MAX_IN_VALUES} values, got {len(self.values)}"
                )
        elif len(self.values) != 1:
            raise _error(self.text, f'operator "{op}" takes exactly one value, got {len(self.values)}')
        keys: list[Any] = []
        for position, raw in enumerate(self.values, 1):
            try:
                keys.append(spec.parse(raw))
            except (ValueError, TypeError, ArithmeticError) as exc:
                where = f" (position {position})" if op == "in" else ""
                detail = f": {exc}" if isinstance(exc, _CastError) else ""
                raise _error(
                    self.text, f'value "{raw}"{where} is not a valid {_display(typ)}{detail}'
                ) from None
        operands = tuple(keys)
        return BoundFilter(self, typ, operands, _compile(self.column, op, spec, operands))

    def __str__(self) -> str:
        return self.text


def parse_filter(text: str) -> Filter:
    """Parse ``column=op.value`` (PostgREST syntax, the subset Supabase Realtime accepts).

    The column is everything before the first ``=`` and the operator everything up to the next
    ``.``; the scalar operand is the rest, verbatim (it may itself contain ``=`` and ``.``, and may
    be empty, meaning the empty string).  ``in`` takes ``(a,b,"c,d")``: items are trimmed, and
    double quotes (with backslash escapes) protect commas, parentheses, spaces or an empty string.
    """
    if not isinstance(text, str):
        raise FilterError(f'invalid filter {text!r}: a filter must be a string like "id=eq.1"')
    column, sep, rest = text.partition("=")
    if not sep:
        raise _error(text, 'missing "=" (expected column=operator.value, e.g. "id=eq.1")')
    if not column:
        raise _error(text, 'empty column name before "="')
    op, dot, value = rest.partition(".")
    if not dot:
        raise _error(text, f'missing "." after the operator (expected {column}=operator.value, e.g. eq.1)')
    if op not in _ALL_OPS:
        raise _error(text, f'unknown operator "{op}" (expected one of {", ".join(OPERATORS)})')
    if op != "in":
        return Filter(column, op, (value,), text)
    if len(value) < 2 or value[0] != "(" or value[-1] != ")":
        raise _error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
    values = _parse_in_list(text, value[1:-1])
    if len(values) > MAX_IN_VALUES:
        raise _error(text, f"too many values in the in list: {len(values)} (at most {MAX_IN_VALUES})")
    return Filter(column, op, values, text)


def _parse_in_list(text: str, body: str) -> tuple[str, ...]:
    """Split the inside of ``in.(...)``; a small scanner because quoted items may hold commas."""
    if not body.strip():
        raise _error(text, "empty in list (give at least one value)")
    values: list[str] = []
    i, n = 0, len(body)
    while True:
        while i < n and body[i].isspace():
            i += 1
        position = len(values) + 1
        if i < n and body[i] == '"':
            scanned = scan_quoted(body, i + 1)
            if scanned is None:
                raise _error(text, f"unterminated quoted value in the in list (position {position})")
            quoted, i = scanned
            while i < n and body[i].isspace():
                i += 1
            if i < n and body[i] != ",":
                raise _error(
                    text, f"unexpected text after a quoted value in the in list (position {position})"
                )
            values.append(quoted)
        else:
            end = body.find(",", i)
            if end == -1:
                end = n
            item = body[i:end].strip()
            if not item:
                raise _error(
                    text, f'empty value in the in list (position {position}); write "" for an empty string'
                )
            if '"' in item:
                raise _error(
                    text, f"stray double quote in the in list (position {position}); quote the whole value"
                )
            values.append(item)
            i = end
        if i >= n:
            return tuple(values)
        i += 1  # the comma; a trailing one yields an empty item next round, which is an error


# --------------------------------------------------------------------------------------------------
# Type names

_ALIASES: Final = {
    "smallint": "int2",
    "integer": "int4",
    "int": "int4",
    "bigint": "int8",
    "real": "float4",
    "double precision": "float8",
    "float": "float8",
    "decimal": "numeric",
    "boolean": "bool",
    "character varying": "varchar",
    "character": "bpchar",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
}
_TYPMOD_RE: Final = re.compile(r"\s*\([^)]*\)")
_ARRAY_SUFFIX_RE: Final = re.compile(r"(?:\s*\[\d*\])+$")


@lru_cache(maxsize=512)
def normalize_type_name(column_type: str) -> str:
    """Map a column type to its ``typname``: ``integer[]`` -> ``_int4``, ``numeric(10,2)`` -> ``numeric``.

    wal2json reports ``format_type`` spellings while the catalog speaks ``typname``; accepting
    both here means callers never have to care which one they hold.  Schema qualifiers and quotes
    are dropped, since only built-in types get special treatment anyway.
    """
    t = column_type.strip()
    is_array = False
    suffix = _ARRAY_SUFFIX_RE.search(t)
    if suffix:
        is_array = True
        t = t[: suffix.start()]
    t = _TYPMOD_RE.sub("", t).replace('"', "").rpartition(".")[2]
    t = " ".join(t.lower().split())
    t = _ALIASES.get(t, t)
    return "_" + t if is_array else t


def _display(typ: str) -> str:
    """How a type is named in messages: ``_int4`` reads better as ``int4[]``."""
    return typ[1:] + "[]" if typ.startswith("_") else typ


# --------------------------------------------------------------------------------------------------
# Keys: values that compare like the Postgres type


class _CastError(ValueError):
    """A cast failure whose message is fit to show the user (generic ones are not shown)."""


class _Extreme:
    """Postgres' special values that sort past every ordinary one: float/numeric ``NaN`` (which,
    unlike IEEE, *equals* itself and is the greatest value) and date/time ``±infinity``.

    ``rank`` orders the extremes among themselves (NaN above +infinity); ordinary values count as
    rank 0.  Python falls back to these reflected methods when a float/Decimal/datetime returns
    ``NotImplemented``, so plain values keep their fast native comparisons.
    """

    __slots__ = ("_name", "_rank")

    def __init__(self, name: str, rank: int) -> None:
        self._name = name
        self._rank = rank

    def _other_rank(self, other: object) -> int:
        return other._rank if isinstance(other, _Extreme) else 0

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return hash(self._name)

    def __lt__(self, other: object) -> bool:
        return self._rank < self._other_rank(other)

    def __le__(self, other: object) -> bool:
        return self._rank <= self._other_rank(other)

    def __gt__(self, other: object) -> bool:
        return self._rank > self._other_rank(other)

    def __ge__(self, other: object) -> bool:
        return self._rank >= self._other_rank(other)

    def __repr__(self) -> str:
        return self._name


_NAN: Final = _Extreme("NaN", 2)
_POS_INF: Final = _Extreme("infinity", 1)
_NEG_INF: Final = _Extreme("-infinity", -1)
_INFINITIES: Final = {"infinity": _POS_INF, "+infinity": _POS_INF, "-infinity": _NEG_INF}


def _int_parser(typ: str, lo: int, hi: int) -> Callable[[str], int]:
    """Operand parser with Postgres' range check, so ``int2`` rejects ``99999`` as Postgres does."""

    def parse(text: str) -> int:
        s = text.strip()
        if not s.isascii():
            raise ValueError(text)
        value = int(s)  # rejects "1.5", as the integer input functions do
        if not lo <= value <= hi:
            raise _CastError(f"out of range for {typ} ({lo}..{hi})")
        return value

    return parse


def _int_key(value: Any) -> Any:
    """Row side of integer columns when the value is not already an int (the fast path)."""
    if isinstance(value, bool):
        raise TypeError("bool in an integer column")
    if isinstance(value, int | float | Decimal):
        return value  # Python compares int/float/Decimal exactly with each other
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(type(value).__name__)


_FLOAT4: Final = struct.Struct("f")


def _float_parse(text: str) -> Any:
    """``float()`` accepts exactly Postgres' float spellings (``NaN``, ``Infinity``, ``1e5``, ``-inf``)."""
    s = text.strip()
    if not s.isascii():
        raise ValueError(text)
    value = float(s)
    return _NAN if value != value else value


def _float_key(value: Any) -> Any:
    """Row side of float8 columns: floats, ints, or the strings ``NaN`` / ``Infinity``."""
    if type(value) is float:
        return _NAN if value != value else value
    if type(value) is int:
        return value
    if isinstance(value, str):
        return _float_parse(value)
    if isinstance(value, Decimal):
        return _NAN if value.is_nan() else float(value)
    raise TypeError(type(value).__name__)


def _to_float4(value: Any) -> Any:
    """Round to single precision, as Postgres casts a ``float4`` operand: ``0.1`` must equal the
    stored ``0.1::float4`` whichever of the two spellings the decoder produced."""
    if isinstance(value, _Extreme):
        return value
    return _FLOAT4.unpack(_FLOAT4.pack(value))[0]


def _float4_parse(text: str) -> Any:
    value = _float_parse(text)
    rounded = _to_float4(value)
    if rounded in (math.inf, -math.inf) and value not in (math.inf, -math.inf):
        raise _CastError("out of range for float4")
    return rounded


def _float4_key(value: Any) -> Any:
    return _to_float4(_float_key(value))


def _numeric_parse(text: str) -> Any:
    """Exact decimal; ``NaN`` becomes the key that equals itself and sorts above ``Infinity``."""
    s = text.strip()
    if not s.isascii():
        raise ValueError(text)
    value = Decimal(s)
    return _NAN if value.is_nan() else value


def _numeric_key(value: Any) -> Any:
    """Row side of numeric: ints compare exactly with Decimals as they are; floats go through
    ``str`` so that a float ``0.1`` from the decoder equals the operand ``0.1``."""
    t = type(value)
    if t is int:
        return value
    if t is Decimal:
        return _NAN if value.is_nan() else value
    if t is float:
        return _NAN if value != value else Decimal(repr(value))
    if isinstance(value, str):
        return _numeric_parse(value)
    raise TypeError(t.__name__)


_BOOLS: Final = {
    "true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
    "false": False, "f": False, "no": False, "n": False, "off": False, "0": False,
}  # fmt: skip


def _bool_parse(text: str) -> bool:
    """The spellings ``boolin`` accepts (it also takes unique prefixes; those are not needed)."""
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise _CastError("expected true or false") from None


def _bool_key(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _bool_parse(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(type(value).__name__)


def _text_parse(text: str) -> str:
    """Text operands are taken verbatim: ``name=eq. a`` looks for a leading space."""
    return text


def _text_key(value: Any) -> str:
    """Row side of text-like and unknown types.  Keys order by code point, not by collation."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _bpchar_parse(text: str) -> str:
    """``character(n)`` ignores trailing spaces when comparing, and the decoder sends them padded."""
    return text.rstrip(" ")


def _bpchar_key(value: Any) -> str:
    return _text_key(value).rstrip(" ")


def _citext_parse(text: str) -> str:
    """citext compares ``lower()``-ed values."""
    return text.lower()


def _citext_key(value: Any) -> str:
    return _text_key(value).lower()


def _uuid_parse(text: str) -> str:
    """Validate and canonicalise (lowercase, hyphenated); canonical strings order like uuids do."""
    return str(uuid.UUID(text.strip()))


def _uuid_key(value: Any) -> str:
    """Canonicalise a row uuid.  Scalar ``str`` rows never get here: they are trusted to be canonical
    (Postgres prints uuids lowercase and hyphenated), which keeps ``uuid`` on the fast path."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return str(uuid.UUID(value))
    raise TypeError(type(value).__name__)


def _datetime_text(text: str) -> str:
    """Let operands use ``t``/``z`` in lower case; ISO strings hold no other letters."""
    return text.strip().upper()


@lru_cache(maxsize=4096)
def _tstz_from_text(text: str) -> Any:
    """Parse a timestamptz row value.  Cached: one change is matched against every subscription of
    its table, so the same string is parsed once rather than once per filter."""
    special = _INFINITIES.get(text.lower())
    if special is not None:
        return special
    value = datetime.fromisoformat(text)
    # One shared tzinfo makes comparisons ~40x cheaper than between different fixed offsets.
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _tstz_parse(text: str) -> Any:
    """Aware UTC datetime (compared as instants, so offsets need not match); no offset means UTC."""
    return _tstz_from_text(_datetime_text(text))


def _tstz_key(value: Any) -> Any:
    if type(value) is str:
        return _tstz_from_text(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    raise TypeError(type(value).__name__)


@lru_cache(maxsize=4096)
def _ts_from_text(text: str) -> Any:
    """Naive datetime; an offset is dropped, as the ``timestamp`` input function ignores it."""
    special = _INFINITIES.get(text.lower())
    if special is not None:
        return special
    return datetime.fromisoformat(text).replace(tzinfo=None)


def _ts_parse(text: str) -> Any:
    return _ts_from_text(_datetime_text(text))


def _ts_key(value: Any) -> Any:
    if type(value) is str:
        return _ts_from_text(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    raise TypeError(type(value).__name__)


def _date_from_text(text: str) -> Any:
    try:
        return date.fromisoformat(text)  # the common case first: rows are always "YYYY-MM-DD"
    except ValueError:
        special = _INFINITIES.get(text.lower())
        if special is not None:
            return special
        return datetime.fromisoformat(text).date()  # "2026-01-02 10:00" is a valid date input


def _date_parse(text: str) -> Any:
    return _date_from_text(_datetime_text(text))


def _date_key(value: Any) -> Any:
    if type(value) is str:
        return _date_from_text(value)
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise TypeError(type(value).__name__)


_DAY_US: Final = 86_400_000_000
_MICROSECOND: Final = timedelta(microseconds=1)


def _time_parts(text: str) -> tuple[int, int]:
    """(microseconds since midnight, UTC offset in microseconds); Postgres allows ``24:00:00``."""
    s = text
    end_of_day = s.startswith("24")
    if end_of_day:
        s = "00" + s[2:]
    t = time.fromisoformat(s)
    micros = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    if end_of_day:
        if micros:
            raise _CastError("hour 24 is only valid as 24:00:00")
        micros = _DAY_US
    offset = t.utcoffset()
    return micros, 0 if offset is None else offset // _MICROSECOND


def _time_parse(text: str) -> int:
    """``time`` as microseconds since midnight; an offset is ignored, as ``time_in`` does."""
    return _time_parts(_datetime_text(text))[0]


def _time_key(value: Any) -> int:
    if isinstance(value, str):
        return _time_parts(value)[0]
    if isinstance(value, time):
        return _time_parts(value.isoformat())[0]
    raise TypeError(type(value).__name__)


def _timetz_of(text: str) -> tuple[int, int]:
    """Postgres orders timetz by the UTC instant, then by offset (so ``10:00+01`` != ``09:00+00``)."""
    micros, offset = _time_parts(text)
    return micros - offset, -offset


def _timetz_parse(text: str) -> tuple[int, int]:
    return _timetz_of(_datetime_text(text))


def _timetz_key(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        return _timetz_of(value)
    if isinstance(value, time):
        return _timetz_of(value.isoformat())
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


def _json_key(value: Any) -> Any:
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
        return ("array", tuple(map(_json_key, value)))
    if isinstance(value, dict):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    raise TypeError(type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON: fall back to the string


def _json_parse(text: str) -> Any:
    """The operand as JSON (``eq.7``, ``eq.{"a":1}``, ``eq."x"``), else as a JSON string (``eq.x``)."""
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError:
        value = text
    return _json_key(value)


def _parse_array_literal(text: str) -> list[Any]:
    """Parse ``{1,2,NULL}`` / ``{"a b","c\\"d"}`` / ``{{1,2},{3,4}}`` into nested lists of
    ``str | None``.  Kept to what array filters need: no explicit bounds, no custom delimiters."""
    s = text.strip()
    if not s.startswith("{"):
        raise _CastError("an array value looks like {1,2,3}")
    items, end = _array_items(s, 1)
    if s[end:].strip():
        raise _CastError("unexpected text after the closing }")
    return items


def _array_items(s: str, i: int) -> tuple[list[Any], int]:
    """Scan the items after the ``{`` at ``i - 1``; returns them and the index past the ``}``."""
    items: list[Any] = []
    n = len(s)

    def skip(j: int) -> int:
        while j < n and s[j].isspace():
            j += 1
        return j

    i = skip(i)
    if i < n and s[i] == "}":
        return items, i + 1
    while True:
        i = skip(i)
        if i >= n:
            raise _CastError("missing closing }")
        c = s[i]
        if c == "{":
            sub, i = _array_items(s, i + 1)
            items.append(sub)
        elif c == '"':
            scanned = scan_quoted(s, i + 1)
            if scanned is None:
                raise _CastError("unterminated quoted element")
            item, i = scanned
            items.append(item)
        else:
            chars: list[str] = []
            escaped = False
            while i < n and s[i] not in ",}":
                c = s[i]
                if c in '{"':
                    raise _CastError('unexpected { or " inside an element; quote the element')
                if c == "\\" and i + 1 < n:
                    escaped = True
                    c = s[i + 1]
                    i += 1
                chars.append(c)
                i += 1
            raw = "".join(chars).strip()
            if not raw:
                raise _CastError('empty element; write "" for an empty string')
            items.append(None if not escaped and raw.upper() == "NULL" else raw)
        i = skip(i)
        if i >= n:
            raise _CastError("missing closing }")
        if s[i] == "}":
            return items, i + 1
        if s[i] != ",":
            raise _CastError(f'expected "," or "}}" at offset {i}')
        i += 1


def _map_tree(items: Any, convert: Callable[[Any], Any], nested: bool) -> tuple[Any, ...]:
    """Convert array elements, keeping NULLs (arrays compare NULL elements as equal) and nesting."""
    if not isinstance(items, list | tuple):
        raise TypeError(type(items).__name__)
    return tuple(
        None if x is None else _map_tree(x, convert, nested) if nested and isinstance(x, list) else convert(x)
        for x in items
    )


@dataclass(frozen=True, slots=True)
class _TypeSpec:
    """How one Postgres type is filtered.

    ``parse`` casts operand text to a key (raising ``ValueError`` when the cast fails), ``coerce``
    turns a decoded row value into a key, ``native`` names the Python type whose row values already
    *are* keys (so ``matches`` can skip ``coerce``), and ``ops`` the operators the type supports.
    """

    parse: Callable[[str], Any]
    coerce: Callable[[Any], Any]
    native: type | None = None
    ops: frozenset[str] = _ALL_OPS


_INT_SPECS: Final = {
    typ: _TypeSpec(_int_parser(typ, lo, hi), _int_key, int)
    for typ, lo, hi in (
        ("int2", -(2**15), 2**15 - 1),
        ("int4", -(2**31), 2**31 - 1),
        ("int8", -(2**63), 2**63 - 1),
        ("oid", 0, 2**32 - 1),
    )
}
_TEXT_SPEC: Final = _TypeSpec(_text_parse, _text_key, str)
_JSON_SPEC: Final = _TypeSpec(_json_parse, _json_key, None, _EQUALITY_OPS)

_SPECS: Final[dict[str, _TypeSpec]] = {
    **_INT_SPECS,
    "float4": _TypeSpec(_float4_parse, _float4_key),
    "float8": _TypeSpec(_float_parse, _float_key),
    "numeric": _TypeSpec(_numeric_parse, _numeric_key),
    "bool": _TypeSpec(_bool_parse, _bool_key, bool),
    "text": _TEXT_SPEC,
    "varchar": _TEXT_SPEC,
    "name": _TEXT_SPEC,
    "bpchar": _TypeSpec(_bpchar_parse, _bpchar_key),
    "citext": _TypeSpec(_citext_parse, _citext_key),
    "uuid": _TypeSpec(_uuid_parse, _uuid_key, str),
    "timestamptz": _TypeSpec(_tstz_parse, _tstz_key),
    "timestamp": _TypeSpec(_ts_parse, _ts_key),
    "date": _TypeSpec(_date_parse, _date_key),
    "time": _TypeSpec(_time_parse, _time_key),
    "timetz": _TypeSpec(_timetz_parse, _timetz_key),
    "json": _JSON_SPEC,
    "jsonb": _JSON_SPEC,
}


@lru_cache(maxsize=256)
def _spec_for(typ: str) -> _TypeSpec:
    """The spec of a normalised type name; arrays are built from their element's spec."""
    if typ.startswith("_") and len(typ) > 1:
        element = _spec_for(typ[1:])
        nested = element is not _JSON_SPEC  # a list inside jsonb[] is a JSON value, not a dimension

        def parse(text: str) -> tuple[Any, ...]:
            return _map_tree(_parse_array_literal(text), element.parse, True)

        def coerce(value: Any) -> tuple[Any, ...]:
            if isinstance(value, str):
                return _map_tree(_parse_array_literal(value), element.coerce, True)
            return _map_tree(value, element.coerce, nested)

        return _TypeSpec(parse, coerce, None, _ARRAY_OPS)
    return _SPECS.get(typ, _TEXT_SPEC)


# --------------------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True, slots=True)
class BoundFilter:
    """A filter cast to its column's type, ready to test rows.

    ``matches(row)`` takes a decoded record (column name -> value) and answers what Postgres would
    for ``column <op> operand``: a missing column or ``None`` is SQL ``NULL``, for which no
    comparison holds (``neq`` included).  It is a closure compiled by :meth:`Filter.bind` and
    stored as an attribute, not a method, to save a call level on the relay's hottest path.
    ``operands`` holds the cast operand keys (for debugging and tests).  Build it with
    :meth:`Filter.bind`; equality and hashing consider only ``filter`` and ``column_type``.
    """

    filter: Filter
    column_type: str
    operands: tuple[Any, ...] = field(repr=False, compare=False)
    matches: Matcher = field(repr=False, compare=False)


_COERCE_ERRORS: Final = (ValueError, TypeError, ArithmeticError)
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def _compile(column: str, op: str, spec: _TypeSpec, operands: tuple[Any, ...]) -> Matcher:
    """Build the row test.  Everything that depends only on the filter is decided here, so a
    closure does at most: one dict lookup, one type check, (a conversion,) one comparison.

    A row value that does not convert (a decoder surprise) compares as unknown, i.e. ``False``.
    """
    coerce = spec.coerce
    native = spec.native

    if op == "in":
        choices = frozenset(operands)
        if native is not None:

            def match_in_native(row: Mapping[str, Any]) -> bool:
                v = row.get(column)
                if type(v) is native:
                    return v in choices
                if v is None:
                    return False
                try:
                    return coerce(v) in choices
                except _COERCE_ERRORS:
                    return False

            return match_in_native

        def match_in(row: Mapping[str, Any]) -> bool:
            v = row.get(column)
            if v is None:
                return False
            try:
                return coerce(v) in choices
            except _COERCE_ERRORS:
                return False

        return match_in

    operand: object = operands[0]
    if op == "eq" and native is not None:

        def match_eq_native(row: Mapping[str, Any]) -> bool:
            v: object = row.get(column)
            if type(v) is native:
                return v == operand
            if v is None:
                return False
            try:
                key: object = coerce(v)
            except _COERCE_ERRORS:
                return False
            return key == operand

        return match_eq_native

    compare = _COMPARISONS[op]
    if native is not None:

        def match_native(row: Mapping[str, Any]) -> bool:
            v = row.get(column)
            if type(v) is native:
                return compare(v, operand)
            if v is None:
                return False
            try:
                return compare(coerce(v), operand)
            except _COERCE_ERRORS:
                return False

        return match_native

    def match(row: Mapping[str, Any]) -> bool:
        v = row.get(column)
        if v is None:
            return False
        try:
            return compare(coerce(v), operand)
        except _COERCE_ERRORS:
            return False

    return match
