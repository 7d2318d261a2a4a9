"""Row filters of postgres_changes subscriptions, as Supabase Realtime takes them.

A filter is one or more comma-separated conditions, ANDed (Supabase Realtime PR #1912, and what
realtime-js's ``postgresChangesFilter()`` builds): ``value=gte.b,value=lte.d``.  Each condition is
``column=[not.]operator.operand`` in PostgREST's syntax; see :func:`parse_filter` for the grammar
and docs/protocol.md for the operator table.

Why a module of its own, and why it is pure: every change the relay decodes is matched against
every subscription on its table, so matching is the hottest loop of the relay, and it must agree
with what Postgres itself would have answered for ``column <op> operand::column_type``.  Keeping it
free of I/O lets us test those semantics exhaustively from plain dicts.

The work is split in two so that the per-row cost stays tiny:

* :func:`parse_filter` checks the syntax once, when a client subscribes, and yields a
  :class:`Filter` of :class:`Condition` s holding the raw textual operand(s).
* :meth:`Filter.bind` casts the operand(s) to the columns' Postgres types once (that is where
  ``id=eq.abc`` on an ``int4`` column is rejected) and compiles a :class:`BoundFilter` whose
  ``matches`` is a closure specialised for the operator and the type: for ``int``/``text``
  columns it is a dict lookup, a type check and one comparison.  The server first has Postgres
  itself cast the operands (``canonical``, see :meth:`Filter.casts`), so what is accepted, and
  what ``now`` or ``1e3`` mean, is exactly what Postgres decides; the Python converters below then
  only read Postgres' canonical output.

Values are compared as *keys*: each supported type has a converter from the operand text and one
from the decoded row value (see :mod:`relay.core.changes`) to a Python value that orders and
compares like the Postgres type does.  Deliberate approximations, all documented at the converter:
``text`` orders by code point (Postgres orders by the column's collation); types the relay does not
know (enums, domains, ``interval``, ``inet``...) are compared as text, so their ordering may differ
from Postgres'; json/jsonb values are kept as Postgres's text (:class:`relay.core.pgtypes.RawJson`),
so JSON ``null`` is told from SQL ``NULL`` and matches ``eq.null``, and a json value nested too
deeply to parse never matches; scalar ``uuid`` row strings are trusted to be lowercase (as Postgres
prints them); date/time values Python cannot represent (BC, year > 9999) never match, and
sub-microsecond digits are truncated where Postgres would round.  ``ilike`` lowercases with Python's
``str.lower`` (Postgres uses the collation's), and ``match``/``imatch`` accept the common subset of
POSIX and Python regular expressions (see :func:`_compile_regex`).
"""

from __future__ import annotations

import json
import math
import operator
import re
import string
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
    "MAX_CONDITIONS",
    "MAX_IN_VALUES",
    "OPERATORS",
    "PG_CAST_TYPES",
    "BoundFilter",
    "Condition",
    "Filter",
    "FilterError",
    "normalize_type_name",
    "parse_filter",
]

#: The operators a condition may use, in the order error messages list them.  Each may be negated
#: with a ``not.`` prefix (``status=not.in.(a,b)``).
OPERATORS: Final = (
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "match", "imatch", "is", "isdistinct",
)  # fmt: skip
#: Upper bound on ``in`` list length: Supabase Realtime's limit, and a bound on per-row work.
MAX_IN_VALUES: Final = 100
#: Upper bound on ANDed conditions in one filter: a bound on per-row work a client can ask for.
MAX_CONDITIONS: Final = 20
#: Longest ``like``/``match`` pattern: patterns run per change, so their cost is bounded too.
MAX_PATTERN_LENGTH: Final = 1000

_ALL_OPS: Final = frozenset(OPERATORS)
_COMPARISON_OPS: Final = frozenset(("eq", "neq", "lt", "lte", "gt", "gte"))
_EQUALITY_OPS: Final = frozenset(("eq", "neq", "in", "is", "isdistinct"))
_ARRAY_OPS: Final = frozenset(("eq", "neq", "is", "isdistinct"))
_PATTERN_OPS: Final = frozenset(("like", "ilike", "match", "imatch"))
_ORDERED_OPS: Final = _COMPARISON_OPS | {"in", "is", "isdistinct"}
_TEXT_OPS: Final = _ORDERED_OPS | _PATTERN_OPS
#: Operands of these operators are values of the column's type (cast at bind time); ``like`` and
#: ``match`` take a text pattern and ``is`` a keyword.
_CAST_OPS: Final = _COMPARISON_OPS | {"in", "isdistinct"}
_IS_VALUES: Final = ("null", "true", "false", "unknown")
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


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expected_ops() -> str:
    return f'expected one of {", ".join(OPERATORS)}, optionally after "not."'


# --------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``column=[not.]op.operand`` of a filter, not yet tied to a column type.

    ``values`` holds the operand text, unquoted: one item for scalar operators, the list items for
    ``in``.  Casting waits for :meth:`bind` because only the table's schema knows the type.
    ``text`` is the condition as the client wrote it (for messages).
    """

    column: str
    op: str
    values: tuple[str, ...]
    text: str
    negated: bool = False

    def bind(self, column_type: str, canonical: Mapping[str, str] | None = None) -> BoundCondition:
        """Cast the operand(s) to ``column_type`` once and compile the row test.

        ``column_type`` is the column's ``typname`` (``int4``, ``_text``); the spellings of
        ``format_type`` (``integer``, ``timestamp(3) with time zone``, ``text[]``) are accepted
        too.  ``canonical`` maps operand texts to Postgres' own output for ``operand::type`` (see
        :meth:`Filter.casts`); operands found there are read from that, the others are cast by the
        relay's converters.  Raises :class:`FilterError` when an operand does not cast (``abc``
        for ``int4``) or the operator is meaningless for the type (ordering on json/jsonb or
        arrays, ``like`` on numbers), so the client learns at subscribe time rather than by
        silently receiving nothing.
        """
        typ = normalize_type_name(column_type)
        spec = _spec_for(typ)
        op = self.op
        if op not in _ALL_OPS:
            raise _error(self.text, f'unknown operator "{op}" ({_expected_ops()})')
        if op not in spec.ops or (
            op == "is"
            and self.values[:1] in (("true",), ("false",), ("unknown",))
            and spec is not _SPECS["bool"]
        ):
            allowed = ", ".join(o for o in OPERATORS if o in spec.ops)
            what = f'"is.{self.values[0]}"' if op == "is" else f'operator "{op}"'
            raise _error(
                self.text,
                f'{what} is not supported for column "{self.column}" of type '
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
        if op in _CAST_OPS:
            for position, raw in enumerate(self.values, 1):
                pg = canonical.get(raw) if canonical is not None else None
                where = f" (position {position})" if op == "in" else ""
                try:
                    keys.append(spec.parse(raw if pg is None else pg))
                except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
                    if pg is not None or isinstance(exc, RecursionError):
                        # Postgres took it, but the relay cannot compare it: BC dates, years past
                        # 9999, JSON nested deeper than Python's parser goes.
                        shown = pg if pg is not None else raw
                        raise _error(
                            self.text,
                            f'value "{_clip(shown)}"{where} of type {_display(typ)} is beyond what the '
                            "relay can compare",
                        ) from None
                    detail = f": {exc}" if isinstance(exc, _CastError) else ""
                    raise _error(
                        self.text, f'value "{raw}"{where} is not a valid {_display(typ)}{detail}'
                    ) from None
        elif op == "is":
            keys.append(self.values[0])
        else:
            try:
                keys.append(_compile_pattern(op, self.values[0], fold=spec is _CITEXT_SPEC))
            except _CastError as exc:
                raise _error(self.text, str(exc)) from None
        operands = tuple(keys)
        return BoundCondition(self, typ, operands, _compile(self.column, op, self.negated, spec, operands))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Filter:
    """A syntactically valid filter: its conditions (ANDed) and the text the client sent.

    ``column``, ``op`` and ``values`` are those of the first condition, a convenience for the
    common single-condition filter.
    """

    conditions: tuple[Condition, ...]
    text: str

    @property
    def column(self) -> str:
        return self.conditions[0].column

    @property
    def op(self) -> str:
        return self.conditions[0].op

    @property
    def values(self) -> tuple[str, ...]:
        return self.conditions[0].values

    @property
    def columns(self) -> tuple[str, ...]:
        """The distinct columns the conditions test, in order of first use."""
        return tuple(dict.fromkeys(c.column for c in self.conditions))

    def casts(self, column_types: str | Mapping[str, str]) -> list[tuple[str, str]]:
        """The distinct ``(type, operand)`` casts Postgres should perform for :meth:`bind`.

        Only built-in types the relay knows (:data:`PG_CAST_TYPES`) are listed: their names are
        unambiguous in ``pg_catalog``.  Operands of other types are compared as text anyway.
        """
        out: dict[tuple[str, str], None] = {}
        for c in self.conditions:
            if c.op not in _CAST_OPS:
                continue
            typ = normalize_type_name(_type_of(column_types, c.column))
            if typ in PG_CAST_TYPES:
                for v in c.values:
                    out[(typ, v)] = None
        return list(out)

    def bind(
        self,
        column_types: str | Mapping[str, str],
        canonical: Mapping[tuple[str, str], str] | None = None,
    ) -> BoundFilter:
        """Bind every condition to its column's type (see :meth:`Condition.bind`).

        ``column_types`` maps column names to types; a single type string is accepted when every
        condition tests the same column.  ``canonical`` maps the ``(type, operand)`` pairs of
        :meth:`casts` to Postgres' output for ``operand::type``.
        """
        bound = []
        for c in self.conditions:
            typ = _type_of(column_types, c.column)
            norm = normalize_type_name(typ)
            per_type = None
            if canonical is not None:
                per_type = {v: canonical[(norm, v)] for v in c.values if (norm, v) in canonical}
            bound.append(c.bind(typ, per_type))
        conds = tuple(bound)
        if len(conds) == 1:
            matches = conds[0].matches
        else:
            tests = tuple(b.matches for b in conds)

            def matches(row: Mapping[str, Any]) -> bool:
                for test in tests:
                    if not test(row):
                        return False
                return True

        types = tuple(b.column_type for b in conds)
        return BoundFilter(self, types[0] if len(set(types)) == 1 else ",".join(types), conds, matches)

    def __str__(self) -> str:
        return self.text


def _type_of(column_types: str | Mapping[str, str], column: str) -> str:
    if isinstance(column_types, str):
        return column_types
    try:
        return column_types[column]
    except KeyError:
        raise FilterError(f'column "{column}" does not exist') from None


def parse_filter(text: str) -> Filter:
    """Parse ``column=[not.]op.operand[,column=[not.]op.operand...]`` (PostgREST syntax).

    Conditions are separated by commas and ANDed.  In each, the column is everything before the
    first ``=`` (surrounding spaces dropped), then an optional ``not.``, then the operator up to the
    next ``.``.  A scalar operand is either double-quoted (``"a,b"``; backslash escapes any
    character, as in realtime-js's builder and PostgREST) or the text up to the next comma, verbatim
    (it may contain ``=`` and ``.``, may be empty, meaning the empty string, and ``\\,`` stands for
    a comma, as upstream's parser reads it).  ``in`` takes ``(a,b,"c,d")``: items are trimmed, and
    double quotes protect commas, parentheses, spaces or an empty string.  ``is`` takes ``null``,
    ``true``, ``false`` or ``unknown``.
    """
    if not isinstance(text, str):
        raise FilterError(f'invalid filter {text!r}: a filter must be a string like "id=eq.1"')
    conditions: list[Condition] = []
    i, n = 0, len(text)
    while True:
        cond, i = _parse_condition(text, i)
        conditions.append(cond)
        if len(conditions) > MAX_CONDITIONS:
            raise _error(text, f"too many conditions (at most {MAX_CONDITIONS})")
        if i >= n:
            return Filter(tuple(conditions), text)
        i += 1  # the comma
        if i >= n or not text[i:].strip():
            raise _error(text, "empty condition after a comma")


def _parse_condition(text: str, start: int) -> tuple[Condition, int]:
    """Parse one condition starting at ``start``; returns it and the index of the ``,`` or end."""
    eq = text.find("=", start)
    comma = text.find(",", start)
    if eq == -1 or (comma != -1 and comma < eq):
        part = text[start : comma if comma != -1 else len(text)]
        if not part.strip():
            raise _error(text, "empty condition")
        raise _error(
            text,
            f'missing "=" in "{part}" (expected column=operator.value, e.g. "id=eq.1"; commas separate '
            'conditions, so quote a value that holds one, e.g. tags=eq."{a,b}")',
        )
    column = text[start:eq].strip()
    if not column:
        raise _error(text, 'empty column name before "="')
    i = eq + 1
    negated = text.startswith("not.", i)
    if negated:
        i += 4
    dot = text.find(".", i)
    end_op = dot if dot != -1 else len(text)
    if comma != -1 and comma > eq and comma < end_op:
        end_op = comma
    op = text[i:end_op]
    if end_op == len(text) or text[end_op] != ".":
        if op in _ALL_OPS or op in ("", "not"):
            raise _error(
                text, f'missing "." after the operator (expected {column}=operator.value, e.g. eq.1)'
            )
        raise _error(text, f'unknown operator "{op}" ({_expected_ops()})')
    if op not in _ALL_OPS:
        raise _error(text, f'unknown operator "{op}" ({_expected_ops()})')
    i = end_op + 1
    if op == "in":
        values, i = _parse_in_list(text, i)
    else:
        value, i = _parse_scalar(text, i)
        if op == "is":
            word = value.lower()
            if word not in _IS_VALUES:
                raise _error(text, f'"is" takes null, true, false or unknown, not "{value}"')
            value = word
        values = (value,)
    return Condition(column, op, values, text[start:i].strip(), negated), i


def _parse_scalar(text: str, i: int) -> tuple[str, int]:
    """A scalar operand at ``i``: quoted, or verbatim up to the next unescaped comma."""
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == '"':
        scanned = scan_quoted(text, j + 1)
        if scanned is None:
            raise _error(text, "unterminated quoted value")
        value, j = scanned
        while j < n and text[j].isspace():
            j += 1
        if j < n and text[j] != ",":
            raise _error(text, "unexpected text after a quoted value (quote the whole value)")
        return value, j
    chars: list[str] = []
    while i < n:
        c = text[i]
        if c == ",":
            break
        if c == "\\" and i + 1 < n and text[i + 1] == ",":
            c = ","
            i += 1
        chars.append(c)
        i += 1
    return "".join(chars), i


def _parse_in_list(text: str, i: int) -> tuple[tuple[str, ...], int]:
    """Split ``(...)`` at ``i``; a small scanner because quoted items may hold commas or parens.

    Returns the items and the index past the closing parenthesis (and trailing spaces)."""
    n = len(text)
    if i >= n or text[i] != "(":
        raise _error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
    i += 1
    values: list[str] = []
    while True:
        while i < n and text[i].isspace():
            i += 1
        position = len(values) + 1
        if i < n and text[i] == '"':
            scanned = scan_quoted(text, i + 1)
            if scanned is None:
                raise _error(text, f"unterminated quoted value in the in list (position {position})")
            quoted, i = scanned
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] not in ",)":
                raise _error(
                    text, f"unexpected text after a quoted value in the in list (position {position})"
                )
            values.append(quoted)
        else:
            j = i
            while j < n and text[j] not in ",)":
                j += 1
            item = text[i:j].strip()
            if j >= n:
                raise _error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
            if not item:
                if text[j] == ")" and not values:
                    raise _error(text, "empty in list (give at least one value)")
                raise _error(
                    text, f'empty value in the in list (position {position}); write "" for an empty string'
                )
            if '"' in item:
                raise _error(
                    text, f"stray double quote in the in list (position {position}); quote the whole value"
                )
            if "(" in item:
                raise _error(
                    text, f'parenthesis in the in list (position {position}); quote the value, e.g. "a(b)"'
                )
            values.append(item)
            i = j
        if i >= n:
            raise _error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
        if len(values) > MAX_IN_VALUES:
            raise _error(text, f"too many values in the in list: more than {MAX_IN_VALUES}")
        if text[i] == ")":
            i += 1
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] != ",":
                raise _error(text, "unexpected text after the in list")
            return tuple(values), i
        i += 1  # the comma


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
        if not s.isascii() or "_" in s:  # Python's int() takes "1_000"; Postgres 15 does not
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


_FLOAT_SPECIALS: Final = frozenset(("nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf"))


def _float_parse(text: str) -> Any:
    """Postgres' float8 input: ``float()`` minus what ``float8in`` refuses.

    ``float()`` also takes ``1_000`` and a signed ``-nan``, and turns ``1e999`` into infinity and
    ``1e-400`` into zero, where Postgres reports "out of range".
    """
    s = text.strip()
    if not s.isascii() or "_" in s:
        raise ValueError(text)
    value = float(s)
    if value != value or value in (math.inf, -math.inf) or value == 0.0:
        lowered = s.lower()
        if lowered in _FLOAT_SPECIALS:
            return _NAN if value != value else value
        if value != value or value != 0.0 or Decimal(s) != 0:
            raise _CastError("out of range for float8")
    return value


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
    if (rounded in (math.inf, -math.inf) and value not in (math.inf, -math.inf)) or (
        rounded == 0.0 and value != 0.0
    ):
        raise _CastError("out of range for float4")
    return rounded


def _float4_key(value: Any) -> Any:
    return _to_float4(_float_key(value))


def _numeric_parse(text: str) -> Any:
    """Exact decimal; ``NaN`` becomes the key that equals itself and sorts above ``Infinity``."""
    s = text.strip()
    if not s.isascii() or "_" in s:  # Decimal() takes "1_000", "sNaN" and "NaN12"; Postgres does not
        raise ValueError(text)
    value = Decimal(s)
    if value.is_nan():
        if s.lower() != "nan":
            raise ValueError(text)
        return _NAN
    return value


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
    """The spellings ``boolin`` accepts, including unique prefixes (``tr``, ``of``)."""
    s = text.strip().lower()
    if s in _BOOLS:
        return _BOOLS[s]
    hits = {v for k, v in _BOOLS.items() if len(k) > 1 and s and k.startswith(s)}
    if len(hits) == 1 and s not in ("o",):
        return hits.pop()
    raise _CastError("expected true or false")


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


def _special_instant(text: str) -> datetime | None:
    """Postgres' special date/time inputs that name an instant: ``epoch``, and ``now``, ``today``,
    ``yesterday``, ``tomorrow``, which Postgres evaluates when it casts (here: when the filter is
    bound, i.e. at join; the time zone is UTC)."""
    word = text.strip().lower()
    if word == "epoch":
        return datetime(1970, 1, 1, tzinfo=UTC)
    if word not in ("now", "today", "yesterday", "tomorrow"):
        return None
    now = datetime.now(UTC)
    if word == "now":
        return now
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days={"today": 0, "yesterday": -1, "tomorrow": 1}[word])


def _tstz_parse(text: str) -> Any:
    """Aware UTC datetime (compared as instants, so offsets need not match); no offset means UTC."""
    special = _special_instant(text)
    if special is not None:
        return special
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
    special = _special_instant(text)
    if special is not None:
        return special.replace(tzinfo=None)
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
    special = _special_instant(text)
    if special is not None:
        return special.date()
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
    """The operand as JSON (``eq.7``, ``eq.{"a":1}``, ``eq."x"``); like Postgres' ``::jsonb``, text
    that is not JSON (``eq.x``, ``eq.{nope``) is refused: a JSON string must be quoted."""
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError:
        raise _CastError('not valid JSON (write a JSON string with double quotes, e.g. eq."x")') from None
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

    parse: Callable[[str], Any]  # also reads Postgres' canonical output of the type
    coerce: Callable[[Any], Any]
    native: type | None = None
    ops: frozenset[str] = _ORDERED_OPS


_INT_SPECS: Final = {
    typ: _TypeSpec(_int_parser(typ, lo, hi), _int_key, int)
    for typ, lo, hi in (
        ("int2", -(2**15), 2**15 - 1),
        ("int4", -(2**31), 2**31 - 1),
        ("int8", -(2**63), 2**63 - 1),
        ("oid", 0, 2**32 - 1),
    )
}
_TEXT_SPEC: Final = _TypeSpec(_text_parse, _text_key, str, _TEXT_OPS)
_CITEXT_SPEC: Final = _TypeSpec(_citext_parse, _citext_key, None, _TEXT_OPS)
#: Types the relay does not know are compared as text, but not pattern-matched: Postgres has no
#: ``~~`` for an enum or an inet, and a wrong guess would answer silently.
_OTHER_SPEC: Final = _TypeSpec(_text_parse, _text_key, str)
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
    "citext": _CITEXT_SPEC,
    "uuid": _TypeSpec(_uuid_parse, _uuid_key, str),
    "timestamptz": _TypeSpec(_tstz_parse, _tstz_key),
    "timestamp": _TypeSpec(_ts_parse, _ts_key),
    "date": _TypeSpec(_date_parse, _date_key),
    "time": _TypeSpec(_time_parse, _time_key),
    "timetz": _TypeSpec(_timetz_parse, _timetz_key),
    "json": _JSON_SPEC,
    "jsonb": _JSON_SPEC,
}
#: Types whose operands the server has Postgres cast (``operand::pg_catalog.<type>``), reading the
#: canonical output back: what these accept, and what ``now`` or ``1e3`` mean, is Postgres' call.
#: All live in ``pg_catalog``, so the name is unambiguous and safe to put in SQL.
PG_CAST_TYPES: Final = frozenset(
    [t for t in _SPECS if t != "citext"] + ["_" + t for t in _SPECS if t != "citext"]
)


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
    return _SPECS.get(typ, _OTHER_SPEC)


# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Patterns: like / ilike / match / imatch


def _compile_pattern(op: str, pattern: str, fold: bool) -> Callable[[str], bool]:
    """The text test of a pattern operator; ``fold`` for citext, whose operators ignore case."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise _CastError(f"the pattern is longer than {MAX_PATTERN_LENGTH} characters")
    ignore_case = fold or op in ("ilike", "imatch")
    if ignore_case:
        cased = next((c for c in pattern if not c.isascii() and c.lower() != c.upper()), None)
        if cased is not None:
            raise _CastError(
                f'a case-insensitive pattern with "{cased}" is not supported by the relay: how Postgres '
                "folds the case of non-ASCII letters depends on the database's locale"
            )
    if op in ("like", "ilike"):
        test = _compile_like(pattern.translate(_ASCII_LOWER) if ignore_case else pattern)
        if ignore_case:
            return lambda s: test(s.translate(_ASCII_LOWER))
        return test
    regex = _compile_regex(pattern, ignore_case)
    return lambda s: regex.search(s) is not None


#: Case folding of ASCII letters only: the part of ``lower()`` every database locale agrees on.
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _compile_like(pattern: str) -> Callable[[str], bool]:
    """LIKE as Postgres reads it (``%`` any run, ``_`` one character, ``\\`` escapes the next).

    Not via a regular expression: ``%a%a%a%b`` would backtrack polynomially in Python's engine.
    The pattern is cut at ``%`` into fixed-length segments; the first must match at the start, the
    last at the end, and each middle one at its leftmost place after the previous one, which finds
    a match whenever one exists.  Each step is a linear scan.
    """
    segments: list[list[str | None]] = [[]]  # None is "_"
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise _CastError("LIKE pattern must not end with escape character")
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if c == "%":
            segments.append([])
        else:
            segments[-1].append(None if c == "_" else c)
        i += 1
    if all(None not in seg for seg in segments):
        return _literal_like(["".join(x for x in seg if x is not None) for seg in segments])
    compiled = [
        re.compile("".join("." if x is None else re.escape(x) for x in seg), re.DOTALL) for seg in segments
    ]
    if len(compiled) == 1:
        only = compiled[0]
        return lambda s: only.fullmatch(s) is not None
    first, middle, last = compiled[0], compiled[1:-1], compiled[-1]
    first_len, last_len = len(segments[0]), len(segments[-1])

    def like(s: str) -> bool:
        end = len(s) - last_len
        if end < first_len or first.match(s) is None or last.fullmatch(s, end) is None:
            return False
        pos = first_len
        for seg in middle:
            m = seg.search(s, pos, end)
            if m is None:
                return False
            pos = m.end()
        return True

    return like


def _literal_like(parts: list[str]) -> Callable[[str], bool]:
    """LIKE without ``_``: the common ``abc%``, ``%abc``, ``%abc%`` are plain string methods."""
    if len(parts) == 1:
        only = parts[0]
        return lambda s: s == only
    first, middle, last = parts[0], [p for p in parts[1:-1] if p], parts[-1]
    if not middle:
        fixed = len(first) + len(last)
        return lambda s: len(s) >= fixed and s.startswith(first) and s.endswith(last)

    def like(s: str) -> bool:
        end = len(s) - len(last)
        if end < len(first) or not s.startswith(first) or not s.endswith(last):
            return False
        pos = len(first)
        for part in middle:
            pos = s.find(part, pos, end)
            if pos < 0:
                return False
            pos += len(part)
        return True

    return like


_REGEX_ESCAPES: Final = {
    "d": "[0-9]", "D": "[^0-9]", "s": "[ \\t\\n\\r\\f\\v]", "S": "[^ \\t\\n\\r\\f\\v]",
    "n": r"\n", "t": r"\t", "r": r"\r", "f": r"\f", "v": r"\v",
}  # fmt: skip
_BOUND_RE: Final = re.compile(r"\{(\d{1,9})(,(\d{1,9})?)?\}")
#: Unbounded quantifiers allowed per pattern: each can multiply Python's backtracking work.
_MAX_UNBOUNDED: Final = 4


def _compile_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """A POSIX regular expression (Postgres ``~``) as a Python one, for the subset where both agree.

    Accepted: literals, ``.``, ``^``, ``$``, groups ``(...)``/``(?:...)``, ``|``, the quantifiers
    ``* + ? {m} {m,} {m,n}`` (and their non-greedy forms), bracket expressions of characters and
    ranges (``[^a-z_]``), ``\\d \\s \\w`` (and negations), ``\\n \\t \\r \\f \\v`` and backslash
    before punctuation.  Anything else (back-references, ``[[:alpha:]]``, ``\\m``, lookaheads,
    embedded options) is refused at subscribe time rather than guessed.  Because Python's engine
    backtracks where Postgres' does not, a quantified group holding a quantifier or ``|``
    (``(a+)+``, ``(a|b)*``) and more than a few unbounded quantifiers are refused too.
    """
    out: list[str] = []
    complex_group = [False]  # per open group: holds a quantifier or an alternation
    quantifiable = False  # the previous item can take a quantifier
    prev_complex = False  # ... and it is a complex group
    unbounded = 0
    i, n = 0, len(pattern)

    def atom(text: str) -> None:
        nonlocal quantifiable, prev_complex
        out.append(text)
        quantifiable, prev_complex = True, False

    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise _CastError("regular expression must not end with a backslash")
            d = pattern[i + 1]
            if d in _REGEX_ESCAPES:
                atom(_REGEX_ESCAPES[d])
            elif d.isascii() and not d.isalnum():
                atom(re.escape(d))
            elif d in "wW":
                raise _CastError(
                    f'"\\{d}" is not supported by the relay: which letters it matches depends on the '
                    "database's locale; write a bracket expression such as [A-Za-z0-9_]"
                )
            else:
                raise _CastError(f'regular expression escape "\\{d}" is not supported by the relay')
            i += 2
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            j += negate
            chars: list[str] = []
            if j < n and pattern[j] == "]":
                chars.append(re.escape("]"))
                j += 1
            while j < n and pattern[j] != "]":
                ch = pattern[j]
                if ch in "[\\":
                    raise _CastError(
                        f'"{ch}" in a bracket expression (POSIX class, escape) is not supported by the relay'
                    )
                chars.append(ch if ch == "-" else re.escape(ch))
                j += 1
            if j >= n:
                raise _CastError("unterminated bracket expression in the regular expression")
            atom("[" + ("^" if negate else "") + "".join(chars) + "]")
            i = j + 1
        elif c == "(":
            if pattern.startswith("(?:", i):
                i += 3
            elif pattern.startswith("(?", i):
                raise _CastError('"(?" groups other than "(?:" are not supported by the relay')
            else:
                i += 1
            out.append("(?:")
            complex_group.append(False)
            quantifiable = False
        elif c == ")":
            if len(complex_group) == 1:
                raise _CastError("unbalanced ) in the regular expression")
            inner = complex_group.pop()
            complex_group[-1] = complex_group[-1] or inner
            atom(")")
            prev_complex = inner
            i += 1
        elif c == "|":
            complex_group[-1] = True
            out.append("|")
            quantifiable = False
            i += 1
        elif c in "*+?{":
            if c == "{":
                m = _BOUND_RE.match(pattern, i)
                if m is None:
                    raise _CastError(
                        'a "{" in a regular expression must start a bound like {2,5} (or write \\{)'
                    )
                lo, comma, hi = int(m.group(1)), m.group(2), m.group(3)
                if lo > 255 or (hi is not None and not lo <= int(hi) <= 255):
                    raise _CastError("invalid repetition count(s) in the regular expression")
                quant, i = m.group(0), m.end()
                is_unbounded = comma is not None and hi is None
            else:
                quant, i = c, i + 1
                is_unbounded = c != "?"
            if not quantifiable:
                raise _CastError("quantifier operand invalid in the regular expression")
            if prev_complex:
                raise _CastError(
                    "a quantifier on a group that holds a quantifier or | is not supported by the relay"
                )
            if i < n and pattern[i] == "?":
                quant += "?"
                i += 1
            unbounded += is_unbounded
            if unbounded > _MAX_UNBOUNDED:
                raise _CastError(f"at most {_MAX_UNBOUNDED} unbounded quantifiers (*, +, {{m,}}) per pattern")
            out.append(quant)
            complex_group[-1] = True
            quantifiable = False
        elif c == ".":
            atom(".")
            i += 1
        elif c == "^":
            out.append("^")
            quantifiable = False
            i += 1
        elif c == "$":
            out.append(r"\Z")
            quantifiable = False
            i += 1
        else:
            atom(re.escape(c))
            i += 1
    if len(complex_group) != 1:
        raise _CastError("unbalanced ( in the regular expression")
    try:
        return re.compile("".join(out), re.DOTALL | (re.IGNORECASE | re.ASCII if ignore_case else 0))
    except re.error as exc:
        raise _CastError(f"invalid regular expression: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True, slots=True)
class BoundCondition:
    """One condition cast to its column's type; ``matches`` is its compiled row test."""

    condition: Condition
    column_type: str
    operands: tuple[Any, ...] = field(repr=False, compare=False)
    matches: Matcher = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BoundFilter:
    """A filter cast to its columns' types, ready to test rows.

    ``matches(row)`` takes a decoded record (column name -> value) and answers what Postgres would
    for the AND of ``column <op> operand``: a missing column or ``None`` is SQL ``NULL``, for which
    no comparison holds (``neq`` and ``not.`` forms included; only ``is`` and ``isdistinct`` answer
    for NULL).  It is a closure compiled by :meth:`Filter.bind` and stored as an attribute, not a
    method, to save a call level on the relay's hottest path.  ``conditions`` holds the bound
    conditions; equality and hashing consider only ``filter`` and ``column_type``.
    """

    filter: Filter
    column_type: str
    conditions: tuple[BoundCondition, ...] = field(repr=False, compare=False)
    matches: Matcher = field(repr=False, compare=False)

    @property
    def operands(self) -> tuple[Any, ...]:
        """The cast operand keys of every condition, in order (for debugging and tests)."""
        return tuple(o for c in self.conditions for o in c.operands)


_COERCE_ERRORS: Final = (ValueError, TypeError, ArithmeticError)
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def _compile(column: str, op: str, negated: bool, spec: _TypeSpec, operands: tuple[Any, ...]) -> Matcher:
    """Build the row test.  Everything that depends only on the filter is decided here, so a
    closure does at most: one dict lookup, one type check, (a conversion,) one comparison.

    A row value that does not convert (a decoder surprise) compares as unknown, i.e. ``False``.
    """
    if negated or (op not in _COMPARISON_OPS and op != "in"):
        return _compile_general(column, op, negated, spec, operands)
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


def _compile_general(
    column: str, op: str, negated: bool, spec: _TypeSpec, operands: tuple[Any, ...]
) -> Matcher:
    """The row test of negated conditions and of ``like``/``match``/``is``/``isdistinct``.

    SQL's three-valued logic: for a NULL value ``col op x`` is NULL and so is ``NOT (col op x)``,
    so neither matches; only ``IS [NOT] NULL``, ``IS [NOT] TRUE/FALSE/UNKNOWN`` and ``IS [NOT]
    DISTINCT FROM`` answer true or false for NULL.
    """
    coerce = spec.coerce
    operand: Any = operands[0]
    test: Callable[[Any], bool]
    on_null: bool | None = None  # the answer for NULL before negation; None is unknown
    if op in _COMPARISONS:
        compare = _COMPARISONS[op]

        def test(key: Any) -> bool:
            return compare(key, operand)

    elif op == "in":
        choices = frozenset(operands)

        def test(key: Any) -> bool:
            return key in choices

    elif op == "isdistinct":
        on_null = True

        def test(key: Any) -> bool:
            return bool(key != operand)

    elif op == "is":
        on_null = operand in ("null", "unknown")
        truth = {"true": True, "false": False}.get(operand)

        def test(key: Any) -> bool:
            return truth is not None and key is truth

    else:  # like, ilike, match, imatch: operand is the compiled text test
        test = operand
    null_answer = on_null is not None and on_null != negated

    def match(row: Mapping[str, Any]) -> bool:
        v = row.get(column)
        if v is None:
            return null_answer
        try:
            key = coerce(v)
        except _COERCE_ERRORS:
            return False
        return test(key) != negated

    return match
