"""Policy SQL: parsing one expression with Postgres' grammar and rewriting ``auth.*`` to ``claims``."""

from __future__ import annotations

from typing import Any, Final

from pglast import ast, parse_sql
from pglast.enums import SetOperation
from pglast.parser import ParseError

from relay.core.policies.model import PolicyError


def parse_expression(text: str) -> ast.Node:
    """Parse ``text`` as exactly one SQL expression, with Postgres' own grammar (libpg_query).

    The text is parsed as the target of a bare ``SELECT`` (not wrapped in parentheses, so a text
    like ``a) OR (b`` cannot pass), and anything but a single unnamed target is refused: that is
    what rules out ``1; drop table x``, ``true from t`` or an empty policy.
    """
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("the policy expression is empty")
    try:
        stmts = parse_sql("SELECT " + text)
    except ParseError as exc:
        where = ""
        location = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(location, int) and location >= 7:  # a 0-based offset into "SELECT " + text
            where = f" (at character {location - 6})"
        raise PolicyError(f"not a valid SQL expression: {exc.args[0]}{where}") from None
    if len(stmts) != 1:
        raise PolicyError(f"expected one SQL expression, found {len(stmts)} statements")
    stmt = stmts[0].stmt
    if not isinstance(stmt, ast.SelectStmt):
        raise PolicyError("expected one SQL expression")
    targets = stmt.targetList or ()
    if not targets:
        raise PolicyError("the policy expression is empty")
    if select_clauses(stmt) or len(targets) != 1:
        raise PolicyError("expected one SQL expression, not a query (no FROM, WHERE, commas, ...)")
    target = targets[0]
    if not isinstance(target, ast.ResTarget) or target.name or target.indirection or target.val is None:
        raise PolicyError("expected one SQL expression (without an AS alias)")
    if isinstance(target.val, ast.ColumnRef) and any(
        isinstance(f, ast.A_Star) for f in target.val.fields or ()
    ):
        raise PolicyError("expected one SQL expression, not *")
    val: ast.Node = target.val
    return val


_SELECT_CLAUSES: Final = (
    "distinctClause",
    "intoClause",
    "fromClause",
    "whereClause",
    "groupClause",
    "havingClause",
    "windowClause",
    "valuesLists",
    "sortClause",
    "limitOffset",
    "limitCount",
    "lockingClause",
    "withClause",
    "larg",
    "rarg",
)


def select_clauses(stmt: ast.SelectStmt) -> list[str]:
    """The clauses of a SELECT besides its target list (a bare ``SELECT <expr>`` has none)."""
    extra = [name for name in _SELECT_CLAUSES if getattr(stmt, name, None)]
    if stmt.op is not None and stmt.op != SetOperation.SETOP_NONE:
        extra.append("op")
    return extra


def _template(sql: str) -> ast.Node:
    """A fresh parse tree of ``sql``: replacements are built by the parser itself, so the
    rewritten tree is exactly what Postgres would have parsed from the replacement text."""
    stmt: Any = parse_sql("SELECT " + sql)[0].stmt
    node = stmt.targetList[0].val
    assert isinstance(node, ast.Node)
    return node


#: auth.* helper -> its claims equivalent (Supabase's definitions with ``claims`` as the source).
_AUTH_HELPERS: Final = {
    ("auth", "uid"): "(claims ->> 'sub')::uuid",
    ("auth", "role"): "(claims ->> 'role')",
    ("auth", "jwt"): "claims",
}


def _auth_helper(node: ast.FuncCall) -> str | None:
    """The replacement text when ``node`` is a plain call of one of the helpers, else None."""
    names = tuple(getattr(n, "sval", None) for n in (node.funcname or ()))
    replacement = _AUTH_HELPERS.get(names)  # type: ignore[arg-type]
    if replacement is None or node.args or node.agg_order or node.agg_filter or node.over:
        return None
    if node.agg_star or node.agg_distinct or node.func_variadic or node.agg_within_group:
        return None
    return replacement


def rewrite(node: Any) -> Any:
    """Replace every ``auth.uid()`` / ``auth.role()`` / ``auth.jwt()`` call, in place, anywhere in
    the tree (sub-selects included, so the slow path also sees claims only through ``claims``)."""
    if isinstance(node, tuple):
        items = tuple(rewrite(item) for item in node)
        return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
    if not isinstance(node, ast.Node):
        return node
    if isinstance(node, ast.FuncCall):
        replacement = _auth_helper(node)
        if replacement is not None:
            return _template(replacement)
    for attr in node:
        child = getattr(node, attr)
        if isinstance(child, ast.Node | tuple):
            new = rewrite(child)
            if new is not child:
                setattr(node, attr, new)
    return node


def column_refs(node: Any, out: set[str]) -> set[str]:
    """Every column name the tree mentions (last component), ``claims`` excepted."""
    if isinstance(node, tuple):
        for item in node:
            column_refs(item, out)
    elif isinstance(node, ast.Node):
        if isinstance(node, ast.ColumnRef):
            last = node.fields[-1] if node.fields else None
            if (
                isinstance(last, ast.String)
                and last.sval
                and not (len(node.fields or ()) == 1 and last.sval == "claims")
            ):
                out.add(last.sval)
        for attr in node:
            child = getattr(node, attr)
            if isinstance(child, ast.Node | tuple):
                column_refs(child, out)
    return out
