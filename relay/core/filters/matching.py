"""Bound filters and their compiled row tests: the relay's hottest loop.

Everything that depends only on the filter is decided when it is bound, so a compiled test does at
most one dict lookup, one type check, (a conversion,) one comparison per row.  Keys and what they
mean per type come from :mod:`relay.core.sqltypes.keys`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

from relay.core.filters.base import COMPARISON_OPS
from relay.core.sqltypes.keys import KeyType

__all__ = ["Matcher", "compile_condition"]

Matcher = Callable[[Mapping[str, Any]], bool]


_COERCE_ERRORS: Final = (ValueError, TypeError, ArithmeticError)
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def compile_condition(
    column: str, op: str, negated: bool, spec: KeyType, operands: tuple[Any, ...]
) -> Matcher:
    """Build the row test.  Everything that depends only on the filter is decided here, so a
    closure does at most: one dict lookup, one type check, (a conversion,) one comparison.

    A row value that does not convert (a decoder surprise) compares as unknown, i.e. ``False``.
    """
    if negated or (op not in COMPARISON_OPS and op != "in"):
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
    column: str, op: str, negated: bool, spec: KeyType, operands: tuple[Any, ...]
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
