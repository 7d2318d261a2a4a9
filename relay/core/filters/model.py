"""Filters as parsed (:class:`Filter`, :class:`Condition`) and their binding to column types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core.filters.base import (
    ALL_OPS,
    CAST_OPS,
    KIND_OPS,
    MAX_IN_VALUES,
    OPERATORS,
    FilterError,
    clip,
    expected_ops,
    filter_error,
)
from relay.core.filters.matching import Matcher, compile_condition
from relay.core.filters.patterns import compile_pattern
from relay.core.sqltypes.inputs import CastError
from relay.core.sqltypes.keys import CITEXT, KEY_TYPES, PG_CAST_TYPES, key_type
from relay.core.sqltypes.names import display_type, normalize_type_name

__all__ = ["Condition", "Filter"]


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
        spec = key_type(typ)
        ops = KIND_OPS[spec.kind]
        op = self.op
        if op not in ALL_OPS:
            raise filter_error(self.text, f'unknown operator "{op}" ({expected_ops()})')
        if op not in ops or (
            op == "is"
            and self.values[:1] in (("true",), ("false",), ("unknown",))
            and spec is not KEY_TYPES["bool"]
        ):
            allowed = ", ".join(o for o in OPERATORS if o in ops)
            what = f'"is.{self.values[0]}"' if op == "is" else f'operator "{op}"'
            raise filter_error(
                self.text,
                f'{what} is not supported for column "{self.column}" of type '
                f"{display_type(typ)} (supported: {allowed})",
            )
        if op == "in":
            if not 1 <= len(self.values) <= MAX_IN_VALUES:
                raise filter_error(
                    self.text, f"an in list takes 1 to {MAX_IN_VALUES} values, got {len(self.values)}"
                )
        elif len(self.values) != 1:
            raise filter_error(self.text, f'operator "{op}" takes exactly one value, got {len(self.values)}')
        keys: list[Any] = []
        if op in CAST_OPS:
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
                        raise filter_error(
                            self.text,
                            f'value "{clip(shown)}"{where} of type {display_type(typ)} is beyond what the '
                            "relay can compare",
                        ) from None
                    detail = f": {exc.detail}" if isinstance(exc, CastError) and exc.detail else ""
                    raise filter_error(
                        self.text, f'value "{raw}"{where} is not a valid {display_type(typ)}{detail}'
                    ) from None
        elif op == "is":
            keys.append(self.values[0])
        else:
            try:
                keys.append(compile_pattern(op, self.values[0], fold=spec is CITEXT))
            except CastError as exc:
                raise filter_error(self.text, str(exc)) from None
        operands = tuple(keys)
        return BoundCondition(
            self, typ, operands, compile_condition(self.column, op, self.negated, spec, operands)
        )

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
            if c.op not in CAST_OPS:
                continue
            typ = normalize_type_name(type_of(column_types, c.column))
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
            typ = type_of(column_types, c.column)
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


def type_of(column_types: str | Mapping[str, str], column: str) -> str:
    if isinstance(column_types, str):
        return column_types
    try:
        return column_types[column]
    except KeyError:
        raise FilterError(f'column "{column}" does not exist') from None
