"""Building the evaluation model from the rewritten parse tree, typed like parse analysis."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, NullTestType, SubLinkType

from relay.core.policies.families import FAMILY, INPUT, INT_RANGES, NULL_TESTABLE, NUM_RANK
from relay.core.policies.fold import (
    BOOL_TESTS,
    OPS,
    AnyArray,
    ArrayOp,
    Bool,
    BoolTest,
    BoolValue,
    Cast,
    Claim,
    Column,
    Compare,
    Const,
    InList,
    Junction,
    Literal,
    Not,
    NullTest,
    Unsupported,
    Value,
)
from relay.core.policies.sql import select_clauses
from relay.core.sqltypes.inputs import CastError
from relay.core.sqltypes.names import normalize_type_name


def _string_const(node: Any) -> str | None:
    if isinstance(node, ast.A_Const) and not node.isnull and isinstance(node.val, ast.String):
        return node.val.sval
    return None


def _names(nodes: Any) -> tuple[str, ...]:
    out = []
    for n in nodes or ():
        if not isinstance(n, ast.String) or n.sval is None:
            raise Unsupported("unexpected name")
        out.append(n.sval)
    return tuple(out)


#: Type names accepted in casts, unqualified or ``pg_catalog.``-qualified (``integer`` parses to
#: ``pg_catalog.int4``); anything else (typmods, arrays, other schemas) is not modelled.
_CAST_TYPES: Final = {
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "numeric": "numeric",
    "text": "text",
    "varchar": "varchar",
    "uuid": "uuid",
    "bool": "bool",
}


def _cast_type(tn: ast.TypeName | None) -> str:
    if tn is None or tn.setof or tn.pct_type or tn.arrayBounds or tn.typmods:
        raise Unsupported("cast to a type with modifiers or to an array")
    if tn.typemod is not None and tn.typemod != -1:
        raise Unsupported("cast with a type modifier")
    names = _names(tn.names)
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if len(names) != 1 or names[0] not in _CAST_TYPES:
        raise Unsupported(f"cast to {'.'.join(names)}")
    return _CAST_TYPES[names[0]]


def _constant(node: ast.A_Const) -> Const:
    """A literal as the parser types it: int4 / int8-or-numeric / bool / unknown (strings, NULL)."""
    if node.isnull:
        return Const(None, "unknown")
    val = node.val
    if isinstance(val, ast.Integer):
        return Const(int(val.ival or 0), "int4")
    if isinstance(val, ast.Float):
        text = str(val.fval)
        digits = text.lstrip("-+")
        if digits.isdigit() and -(2**63) <= int(text) < 2**63:
            return Const(int(text), "int8")
        d = Decimal(text)
        return Const(int(d) if d == d.to_integral_value() else d, "numeric")
    if isinstance(val, ast.Boolean):
        return Const(bool(val.boolval), "bool")
    if isinstance(val, ast.String):
        return Const(val.sval or "", "unknown")
    raise Unsupported("literal of an unmodelled type")


def _coerce(v: Value, typ: str) -> Value:
    """Resolve an untyped literal (``'5'``, ``NULL``) to ``typ`` as the parser does, by running
    the input function now; a literal Postgres would reject means the policy cannot exist."""
    if v.typ != "unknown":
        return v
    assert isinstance(v, Const)
    if v.val is None:
        return Const(None, typ)
    if typ not in INPUT:
        raise Unsupported(f"literal compared with {typ}")
    try:
        return Const(INPUT[typ](v.val), typ)
    except CastError:
        raise Unsupported(f"literal {v.val!r} is not a valid {typ}") from None


def _common_type(values: list[Value]) -> str:
    """``select_common_type`` restricted to the modelled families."""
    typed = [v.typ for v in values if v.typ != "unknown"]
    if not typed:
        return "text"
    families = {FAMILY.get(t) for t in typed}
    if len(families) != 1 or None in families:
        raise Unsupported("IN list mixing types")
    family = families.pop()
    if family == "num":
        return max(typed, key=lambda t: NUM_RANK[t])
    if family == "text":
        return "text"
    return typed[0]


def _comparison(op: str, left: Value, right: Value) -> Compare:
    """``left <op> right`` typed as ``make_op`` does for the modelled families: an untyped
    literal takes the other side's type (text when both are untyped)."""
    if left.typ == "unknown" and right.typ == "unknown":
        left, right = _coerce(left, "text"), _coerce(right, "text")
    left, right = _coerce(left, right.typ), _coerce(right, left.typ)
    family = FAMILY.get(left.typ)
    if family is None or family != FAMILY.get(right.typ):
        raise Unsupported(f"comparison of {left.typ} with {right.typ}")
    if family == "text" and op not in ("=", "<>"):
        raise Unsupported("text ordering depends on the collation")
    return Compare(op, left, right)


def _has_vars(v: Value) -> bool:
    """Whether parse analysis sees a Var in ``v``: ``claims`` is one (a column of the sub-select
    that provides it), a literal or a cast of one is not."""
    while isinstance(v, Cast):
        v = v.arg
    return not isinstance(v, Const)


class Builder:
    """Turns the rewritten parse tree into the evaluation model, typing it like Postgres' parse
    analysis does for the supported shapes and raising :class:`Unsupported` for anything else."""

    def __init__(self, column_types: Mapping[str, str]) -> None:
        self.types = {name: normalize_type_name(t) for name, t in column_types.items()}
        if "claims" in self.types:
            raise Unsupported('the table has a column named "claims"')

    # -- operands

    def value(self, node: Any) -> Value:
        if isinstance(node, ast.ColumnRef):
            fields = node.fields or ()
            names = _names(fields) if all(isinstance(f, ast.String) for f in fields) else ()
            if len(names) != 1:
                raise Unsupported("qualified or * column reference")
            name = names[0]
            if name == "claims":
                return Claim((), text=False)
            typ = self.types.get(name)
            if typ is None:
                raise Unsupported(f'column "{name}" has no known type')
            return Column(name, typ)
        if isinstance(node, ast.A_Const):
            return _constant(node)
        if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP:
            op = _names(node.name)
            if op in (("->",), ("->>",)) and node.lexpr is not None:
                base = self.value(node.lexpr)
                key = _string_const(node.rexpr)
                if not isinstance(base, Claim) or base.text or key is None:
                    raise Unsupported(f"{op[0]} other than on claims with a text key")
                return Claim((*base.path, key), text=op == ("->>",))
            raise Unsupported(f"operator {' '.join(op)}")
        if isinstance(node, ast.TypeCast):
            target = _cast_type(node.typeName)
            if isinstance(node.arg, ast.A_Const):
                literal = _constant(node.arg)
                if literal.typ == "unknown":
                    return _coerce(literal, target)
                if literal.typ == target or (
                    FAMILY.get(literal.typ) == "num"
                    and target in INT_RANGES
                    and isinstance(literal.val, int)
                    and -INT_RANGES[target] <= literal.val < INT_RANGES[target]
                ):
                    return Const(literal.val, target)
                if FAMILY.get(literal.typ) == "num" and target == "numeric":
                    return Const(literal.val, target)
                raise Unsupported("cast of a literal to another type")
            arg = self.value(node.arg)
            if not arg.static:
                raise Unsupported("cast of a column")
            if arg.typ == target:
                return arg
            if FAMILY.get(arg.typ) != "text":
                raise Unsupported(f"cast from {arg.typ} to {target}")
            return Cast(arg, target)
        if isinstance(node, ast.FuncCall):
            raise Unsupported(f"function {'.'.join(_names(node.funcname))}()")
        if isinstance(node, ast.SubLink):
            raise Unsupported("sub-select as a value")
        raise Unsupported(type(node).__name__)

    # -- conditions

    def boolean(self, node: Any) -> Bool:
        if isinstance(node, ast.BoolExpr):
            args = tuple(self.boolean(a) for a in node.args or ())
            if node.boolop == BoolExprType.NOT_EXPR:
                return Not(args[0])
            return Junction(args, stop=node.boolop == BoolExprType.OR_EXPR)
        if isinstance(node, ast.NullTest):
            if node.argisrow:
                raise Unsupported("row IS NULL")
            arg = self.value(node.arg)
            if isinstance(arg, Column) and not (arg.typ in NULL_TESTABLE or arg.typ.startswith("_")):
                raise Unsupported(f"IS NULL on a {arg.typ} column")
            return NullTest(arg, negated=node.nulltesttype == NullTestType.IS_NOT_NULL)
        if isinstance(node, ast.BooleanTest):
            kind = str(getattr(node.booltesttype, "name", node.booltesttype))
            return BoolTest(self.boolean(node.arg), BOOL_TESTS[kind])
        if isinstance(node, ast.A_Expr):
            return self.expression(node)
        if isinstance(node, ast.SubLink):
            return self.sublink(node)
        if isinstance(node, ast.A_Const):
            c = _constant(node)
            if c.typ == "unknown":
                c = _coerce(c, "bool")  # type: ignore[assignment]
            if c.typ != "bool":
                raise Unsupported("a non-boolean literal as a condition")
            return Literal(c.val)
        v = self.value(node)
        if v.typ != "bool":
            raise Unsupported(f"a {v.typ} value as a condition")
        if isinstance(v, Const):
            return Literal(v.val)
        return BoolValue(v)

    def expression(self, node: ast.A_Expr) -> Bool:
        op = _names(node.name)
        if node.kind == A_Expr_Kind.AEXPR_OP:
            if len(op) != 1 or op[0] not in OPS or node.lexpr is None:
                raise Unsupported(f"operator {' '.join(op)}")
            return _comparison(op[0], self.value(node.lexpr), self.value(node.rexpr))
        if node.kind == A_Expr_Kind.AEXPR_IN:
            if op not in (("=",), ("<>",)) or not isinstance(node.rexpr, tuple):
                raise Unsupported("IN form")
            return self.in_list(self.value(node.lexpr), node.rexpr, negated=op == ("<>",))
        raise Unsupported(f"{getattr(node.kind, 'name', node.kind)} expression")

    def in_list(self, left: Value, nodes: tuple[Any, ...], negated: bool) -> InList:
        """``left [NOT] IN (nodes)`` the way ``transformAExprIn`` builds it (see :class:`InList`):
        the literals typed together with ``left`` (``select_common_type``) when they form a
        ScalarArrayOp, every other comparison typed on its own, like a plain ``=`` / ``<>``."""
        items = [self.value(item) for item in nodes]
        if any(not item.static for item in items):
            # Postgres splits items with columns into separate OR-ed comparisons.
            raise Unsupported("IN list with columns")
        literals = [item for item in items if not _has_vars(item)]
        arms: list[Bool] = []
        typed: list[Value] = []
        if len(literals) > 1:
            common = _common_type([left, *literals])
            array_left = _coerce(left, common)
            array_items = tuple(_coerce(item, common) for item in literals)
            if FAMILY.get(array_left.typ) != FAMILY.get(common) or FAMILY.get(common) is None:
                raise Unsupported("IN list of another type")
            arms.append(ArrayOp(array_left, array_items, negated))
            typed.extend(array_items)
            items = [item for item in items if _has_vars(item)]
        for item in items:
            cmp = _comparison("<>" if negated else "=", left, item)
            arms.append(cmp)
            typed.append(cmp.right)
        return InList(left, tuple(typed), negated, Junction(tuple(arms), stop=not negated))

    def sublink(self, node: ast.SubLink) -> Bool:
        if node.subLinkType != SubLinkType.ANY_SUBLINK:
            raise Unsupported("sub-select")
        if _names(node.operName) not in ((), ("=",)):
            raise Unsupported("sub-select with an operator other than =")
        left = self.value(node.testexpr)
        if not isinstance(left, Column):
            raise Unsupported("= ANY (select ...) of a non-column")
        select = node.subselect
        if not isinstance(select, ast.SelectStmt) or len(select.targetList or ()) != 1:
            raise Unsupported("sub-select shape")
        if select_clauses(select):
            raise Unsupported(f"sub-select with {', '.join(select_clauses(select))}")
        target: Any = (select.targetList or ())[0]
        expr = target.val
        typ = "text"
        if isinstance(expr, ast.TypeCast):
            typ = _cast_type(expr.typeName)
            expr = expr.arg
        if not (
            isinstance(expr, ast.FuncCall)
            and _names(expr.funcname)
            in (("jsonb_array_elements_text",), ("pg_catalog", "jsonb_array_elements_text"))
            and len(expr.args or ()) == 1
            and not (expr.agg_order or expr.agg_filter or expr.over or expr.agg_star)
            and not (expr.agg_distinct or expr.func_variadic or expr.agg_within_group)
            and not isinstance((expr.args or ())[0], ast.NamedArgExpr)
        ):
            raise Unsupported("sub-select other than jsonb_array_elements_text(claims ...)")
        array = self.value((expr.args or ())[0])
        if not isinstance(array, Claim) or array.text:
            raise Unsupported("jsonb_array_elements_text of something other than claims")
        if FAMILY.get(typ) != FAMILY.get(left.typ) or FAMILY.get(typ) is None:
            raise Unsupported(f"{left.typ} = ANY ({typ})")
        return AnyArray(left, array, typ)
