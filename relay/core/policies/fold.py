"""The evaluation model: value and boolean nodes, fold (plan time) and residual (run time)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from relay.core.policies.claims import SQL_NULL, json_get, json_text
from relay.core.policies.families import INPUT, row_converter
from relay.core.policies.model import Claims, PolicyEvalError, Row
from relay.core.sqltypes.inputs import CastError

Residual = Callable[[Row], bool | None]
Folded = bool | None | Residual


class Unsupported(Exception):
    """The expression is outside the modelled shapes: evaluate it in Postgres."""


class _Dynamic:
    __slots__ = ()


_DYNAMIC: Final = _Dynamic()  # "depends on the row": not a plan-time constant


class Value:
    """An operand: a row column (run time) or a claims/constant expression (plan time)."""

    typ: str = "unknown"
    static: bool = True

    def value(self, claims: Claims) -> Any:
        """The value for these claims (static operands only); may raise PolicyEvalError."""
        raise NotImplementedError

    def row_value(self, row: Row) -> Any:
        """The value in this row (columns only)."""
        raise NotImplementedError

    def folded(self, claims: Claims) -> Any:
        return self.value(claims) if self.static else _DYNAMIC

    def columns(self) -> frozenset[str]:
        return frozenset()

    def claim_keys(self) -> frozenset[str] | None:
        """The top-level claims this operand reads; None: unknown (it may read any of them)."""
        return None


class Column(Value):
    __slots__ = ("convert", "name", "typ")
    static = False

    def __init__(self, name: str, typ: str) -> None:
        self.name = name
        self.typ = typ
        self.convert = row_converter(name, typ)

    def row_value(self, row: Row) -> Any:
        return self.convert(row.get(self.name))

    def columns(self) -> frozenset[str]:
        return frozenset((self.name,))

    def claim_keys(self) -> frozenset[str] | None:
        return frozenset()


class Const(Value):
    __slots__ = ("typ", "val")

    def __init__(self, val: Any, typ: str) -> None:
        self.val = val
        self.typ = typ

    def value(self, claims: Claims) -> Any:
        return self.val

    def claim_keys(self) -> frozenset[str] | None:
        return frozenset()


class Claim(Value):
    """``claims``, ``claims -> 'k' -> ...`` (jsonb) or ``... ->> 'k'`` (text)."""

    __slots__ = ("path", "text", "typ")

    def __init__(self, path: tuple[str, ...], text: bool) -> None:
        self.path = path
        self.text = text
        self.typ = "text" if text else "jsonb"

    def value(self, claims: Claims) -> Any:
        current: Any = claims
        for key in self.path:
            current = json_get(current, key)
            if current is SQL_NULL:
                break
        if self.text:
            return json_text(current)
        return current

    def claim_keys(self) -> frozenset[str] | None:
        return frozenset(self.path[:1]) if self.path else None  # ``claims`` itself: all of them


class Cast(Value):
    """``<text claims expression>::type``: the type's input function (may raise)."""

    __slots__ = ("arg", "parse", "typ")

    def __init__(self, arg: Value, typ: str) -> None:
        self.arg = arg
        self.typ = typ
        self.parse = INPUT[typ]

    def value(self, claims: Claims) -> Any:
        text = self.arg.value(claims)
        if text is None:
            return None
        try:
            return self.parse(text)
        except CastError as exc:
            raise PolicyEvalError(exc.sqlstate, str(exc)) from None

    def claim_keys(self) -> frozenset[str] | None:
        return self.arg.claim_keys()


class Bool:
    """A boolean expression.  ``fold`` is the planner's constant folding for these claims: it
    returns TRUE/FALSE/None when the value does not depend on the row, else the run-time residual.
    """

    def fold(self, claims: Claims) -> Folded:
        raise NotImplementedError

    def columns(self) -> frozenset[str]:
        raise NotImplementedError

    def claim_keys(self) -> frozenset[str] | None:
        """The top-level claims :meth:`fold` reads (None: unknown, any of them).

        Why: two claims equal on these keys fold to the same verdict, so a claims-only policy
        is decided once per such class of claims (``TableIndex.add`` at every join), not once
        per subscriber.  A node that does not say is taken to read every claim.
        """
        return None


def claim_keys_of(*parts: Value | Bool) -> frozenset[str] | None:
    """The union of the parts' claim keys; None as soon as one part's are unknown."""
    out: frozenset[str] = frozenset()
    for part in parts:
        keys = part.claim_keys()
        if keys is None:
            return None
        out |= keys
    return out


def is_const(v: Folded) -> bool:
    return v is None or v is True or v is False


OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Compare(Bool):
    """``a <op> b`` within one family; a NULL operand gives NULL (the operators are strict)."""

    __slots__ = ("left", "op", "right")

    def __init__(self, op: str, left: Value, right: Value) -> None:
        self.op = op
        self.left = left
        self.right = right

    def fold(self, claims: Claims) -> Folded:
        f = OPS[self.op]
        lv = self.left.folded(claims)  # both sides are folded (and may raise) before NULL counts
        rv = self.right.folded(claims)
        if lv is None or rv is None:
            return None
        if lv is not _DYNAMIC and rv is not _DYNAMIC:
            return f(lv, rv)
        if lv is _DYNAMIC and rv is _DYNAMIC:
            lrow, rrow = self.left.row_value, self.right.row_value

            def both(row: Row) -> bool | None:
                a = lrow(row)
                b = rrow(row)
                return None if a is None or b is None else f(a, b)

            return both
        if lv is _DYNAMIC:
            lrow = self.left.row_value

            def left(row: Row) -> bool | None:
                a = lrow(row)
                return None if a is None else f(a, rv)

            return left
        rrow = self.right.row_value

        def right(row: Row) -> bool | None:
            b = rrow(row)
            return None if b is None else f(lv, b)

        return right

    def columns(self) -> frozenset[str]:
        return self.left.columns() | self.right.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return claim_keys_of(self.left, self.right)


def _member(x: Any, values: Iterable[Any], negated: bool) -> bool | None:
    """``x = ANY(values)`` (or ``x <> ALL`` when negated) with SQL's NULL rules."""
    if x is None:
        return None
    saw_null = False
    for v in values:
        if v is None:
            saw_null = True
        elif x == v:
            return not negated
    return None if saw_null else negated


class ArrayOp(Bool):
    """``x = ANY (ARRAY[c1, c2, ...])`` (``x <> ALL`` when negated) over literals: the
    ScalarArrayOp that parse analysis makes of the literal items of an IN list.  Folded at plan
    time (``x`` first, then every item) when ``x`` is a constant, else compared at run time."""

    __slots__ = ("items", "left", "negated")

    def __init__(self, left: Value, items: tuple[Value, ...], negated: bool) -> None:
        self.left = left
        self.items = items
        self.negated = negated

    def fold(self, claims: Claims) -> Folded:
        x = self.left.folded(claims)
        values = [item.value(claims) for item in self.items]
        negated = self.negated
        if x is not _DYNAMIC:
            return _member(x, values, negated)
        lrow = self.left.row_value

        def run(row: Row) -> bool | None:
            return _member(lrow(row), values, negated)

        return run

    def columns(self) -> frozenset[str]:
        return self.left.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return claim_keys_of(self.left, *self.items)


class InList(Bool):
    """``x [NOT] IN (a, b, ...)`` over claims/constants, as parse analysis rewrites it
    (``transformAExprIn``) before the planner sees it.

    Only the items without Vars can go into one ScalarArrayOp, and ``claims`` *is* a Var (a column
    of the ``(select $2::jsonb as claims) c`` sub-select, replaced by the constant only later, when
    the planner pulls the sub-select up).  So when there are at least two literal items, they
    become ``x = ANY (ARRAY[literals])`` (:class:`ArrayOp`), and each claims item becomes its own
    ``x = item``, OR-ed after it in list order; with fewer literals, every item is its own
    comparison, in list order.  NOT IN is the same with ``<>`` and AND.  The planner then folds
    that chain like any OR/AND (``chain``, a :class:`Junction`): an arm that folds to TRUE (FALSE
    for NOT IN) ends it, and the claims items after it are never cast, so cannot raise.
    ``items`` are all the items, typed as in their comparison (for index keys).
    """

    __slots__ = ("chain", "items", "left", "negated")

    def __init__(self, left: Value, items: tuple[Value, ...], negated: bool, chain: Bool) -> None:
        self.left = left
        self.items = items
        self.negated = negated
        self.chain = chain

    def item_values(self, claims: Claims) -> list[Any]:
        """Every item's value.  Only for a column ``x``: then no arm can fold to TRUE or FALSE,
        so Postgres folds (and casts) every item whenever it folds the IN list at all."""
        return [item.value(claims) for item in self.items]

    def fold(self, claims: Claims) -> Folded:
        return self.chain.fold(claims)

    def columns(self) -> frozenset[str]:
        return self.left.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return claim_keys_of(self.left, *self.items, self.chain)


def array_elements(array: Any, parse: Callable[[str], Any]) -> list[Any]:
    """``select jsonb_array_elements_text(array)::type``, all of it (the sub-select is hashed)."""
    if array is SQL_NULL:
        return []
    if isinstance(array, Mapping):
        raise PolicyEvalError("22023", "cannot extract elements from an object")
    if not isinstance(array, list | tuple):
        raise PolicyEvalError("22023", "cannot extract elements from a scalar")
    out: list[Any] = []
    for element in array:
        if isinstance(element, float) and not math.isfinite(element):
            element = None
        text = json_text(element)
        try:
            out.append(None if text is None else parse(text))
        except CastError as exc:
            raise PolicyEvalError(exc.sqlstate, str(exc)) from None
    return out


class AnyArray(Bool):
    """``column = ANY (select jsonb_array_elements_text(<claims jsonb>)[::type])`` (or ``IN``).

    Postgres runs the sub-select when the executor reaches it, as a *hashed* sub-plan (it is
    uncorrelated once the claims are a constant): every element is cast, so one bad element
    raises even when another one matches.  An empty set gives FALSE whatever the column holds.
    """

    __slots__ = ("array", "left", "parse")

    def __init__(self, left: Column, array: Claim, typ: str) -> None:
        self.left = left
        self.array = array
        self.parse = INPUT[typ]

    def fold(self, claims: Claims) -> Folded:
        array = self.array.value(claims)
        parse = self.parse
        lrow = self.left.row_value

        def run(row: Row) -> bool | None:
            values = array_elements(array, parse)
            if not values:
                return False
            return _member(lrow(row), values, False)

        return run

    def columns(self) -> frozenset[str]:
        return self.left.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return claim_keys_of(self.left, self.array)


class NullTest(Bool):
    """``x IS [NOT] NULL``; for a jsonb claim only SQL NULL counts (JSON ``null`` is a value)."""

    __slots__ = ("arg", "negated")

    def __init__(self, arg: Value, negated: bool) -> None:
        self.arg = arg
        self.negated = negated

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.folded(claims)
        negated = self.negated
        if v is not _DYNAMIC:
            is_null = v is SQL_NULL if self.arg.typ == "jsonb" else v is None
            return is_null != negated
        assert isinstance(self.arg, Column)
        name = self.arg.name

        def run(row: Row) -> bool | None:
            return (row.get(name) is None) != negated

        return run

    def columns(self) -> frozenset[str]:
        return self.arg.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return self.arg.claim_keys()


class BoolValue(Bool):
    """A boolean operand used as a condition: ``active``, ``(claims->>'is_admin')::boolean``."""

    __slots__ = ("arg",)

    def __init__(self, arg: Value) -> None:
        self.arg = arg

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.folded(claims)
        if v is not _DYNAMIC:
            return v  # type: ignore[no-any-return]
        row_value: Residual = self.arg.row_value
        return row_value

    def columns(self) -> frozenset[str]:
        return self.arg.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return self.arg.claim_keys()


class Literal(Bool):
    __slots__ = ("val",)

    def __init__(self, val: bool | None) -> None:
        self.val = val

    def fold(self, claims: Claims) -> Folded:
        return self.val

    def columns(self) -> frozenset[str]:
        return frozenset()

    def claim_keys(self) -> frozenset[str] | None:
        return frozenset()


def _not(v: bool | None) -> bool | None:
    return None if v is None else not v


class Not(Bool):
    __slots__ = ("arg",)

    def __init__(self, arg: Bool) -> None:
        self.arg = arg

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.fold(claims)
        if is_const(v):
            return _not(v)  # type: ignore[arg-type]
        inner: Residual = v  # type: ignore[assignment]
        return lambda row: _not(inner(row))

    def columns(self) -> frozenset[str]:
        return self.arg.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return self.arg.claim_keys()


BOOL_TESTS: Final[dict[str, Callable[[bool | None], bool]]] = {
    "IS_TRUE": lambda v: v is True,
    "IS_NOT_TRUE": lambda v: v is not True,
    "IS_FALSE": lambda v: v is False,
    "IS_NOT_FALSE": lambda v: v is not False,
    "IS_UNKNOWN": lambda v: v is None,
    "IS_NOT_UNKNOWN": lambda v: v is not None,
}


class BoolTest(Bool):
    """``x IS [NOT] TRUE/FALSE/UNKNOWN``: never NULL."""

    __slots__ = ("arg", "test")

    def __init__(self, arg: Bool, test: Callable[[bool | None], bool]) -> None:
        self.arg = arg
        self.test = test

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.fold(claims)
        test = self.test
        if is_const(v):
            return test(v)  # type: ignore[arg-type]
        inner: Residual = v  # type: ignore[assignment]
        return lambda row: test(inner(row))

    def columns(self) -> frozenset[str]:
        return self.arg.columns()

    def claim_keys(self) -> frozenset[str] | None:
        return self.arg.claim_keys()


class Junction(Bool):
    """AND / OR.  Folding mirrors ``simplify_and_arguments``: arms are folded left to right, a
    constant FALSE (AND) or TRUE (OR) ends it at once (later arms are never evaluated, so cannot
    raise), constant TRUE (AND) / FALSE (OR) arms are dropped, NULL arms are remembered.  The run-
    time residual evaluates the remaining arms left to right with the same short circuit."""

    __slots__ = ("args", "stop")

    def __init__(self, args: tuple[Bool, ...], stop: bool) -> None:
        self.args = args
        self.stop = stop  # False for AND, True for OR

    def fold(self, claims: Claims) -> Folded:
        stop = self.stop
        residual: list[Residual] = []
        saw_null = False
        for arg in self.args:
            v = arg.fold(claims)
            if v is stop:
                return stop
            if v is None:
                saw_null = True
            elif v is not True and v is not False:
                residual.append(v)
        if not residual:
            return None if saw_null else not stop
        if len(residual) == 1 and not saw_null:
            return residual[0]
        base: bool | None = None if saw_null else not stop
        arms = tuple(residual)

        def run(row: Row) -> bool | None:
            result = base
            for arm in arms:
                v = arm(row)
                if v is stop:
                    return stop
                if v is None:
                    result = None
            return result

        return run

    def columns(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for arg in self.args:
            out |= arg.columns()
        return out

    def claim_keys(self) -> frozenset[str] | None:
        return claim_keys_of(*self.args)
