"""Index terms and the entry point :func:`compile_policy`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pglast.stream import RawStream

from relay.core.policies.build import Builder
from relay.core.policies.fold import (
    AnyArray,
    Bool,
    Column,
    Compare,
    InList,
    Junction,
    Unsupported,
    array_elements,
    is_const,
)
from relay.core.policies.model import Claims, CompiledPolicy, FastPredicate, IndexTerm, Policy, PolicyError
from relay.core.policies.sql import column_refs, parse_expression, rewrite


def _conjuncts(node: Bool) -> list[Bool]:
    if isinstance(node, Junction) and not node.stop:
        out: list[Bool] = []
        for arg in node.args:
            out.extend(_conjuncts(arg))
        return out
    return [node]


def _index_term(root: Bool, term: Bool) -> IndexTerm | None:
    """An :class:`IndexTerm` for ``term`` (a top-level conjunct of ``root``), if it has the shape.

    ``keys`` folds the whole policy first: that raises exactly when Postgres' planner would (for
    every row), and a constant FALSE/NULL means no row can pass.  Otherwise the term's operand(s)
    were folded without error, and their values are the keys.
    """
    column: Column
    values: Callable[[Claims], Iterable[Any]]
    if isinstance(term, Compare) and term.op == "=":
        if isinstance(term.left, Column) and term.right.static:
            column, other = term.left, term.right
        elif isinstance(term.right, Column) and term.left.static:
            column, other = term.right, term.left
        else:
            return None
        values = lambda claims: (other.value(claims),)  # noqa: E731
        if root is term:
            # the whole policy is this comparison: folding it is computing ``other`` (NULL:
            # a constant, no key), so the claims-side value (a uuid cast of ``sub``, say) is
            # computed once per join instead of twice (issue 16: ≈ 5 % of a join's CPU)
            def single(claims: Mapping[str, Any]) -> frozenset[Any]:
                v = other.value(claims)
                return frozenset() if v is None else frozenset((v,))

            return IndexTerm(column.name, single, column.convert)
    elif isinstance(term, InList) and not term.negated and isinstance(term.left, Column):
        column = term.left
        values = term.item_values
    elif isinstance(term, AnyArray):
        column = term.left
        array, parse = term.array, term.parse
        values = lambda claims: array_elements(array.value(claims), parse)  # noqa: E731
    else:
        return None

    def keys(claims: Mapping[str, Any]) -> frozenset[Any]:
        if is_const(root.fold(claims)):
            return frozenset()
        return frozenset(v for v in values(claims) if v is not None)

    return IndexTerm(column.name, keys, column.convert)


# --------------------------------------------------------------------------------------------------
# Entry point


def _predicate(root: Bool) -> FastPredicate:
    fold = root.fold

    def fast(row: Mapping[str, Any], claims: Mapping[str, Any]) -> bool | None:
        v = fold(claims)
        if v is None or v is True or v is False:
            return v
        return v(row)

    return fast


def compile_policy(policy: Policy, column_types: Mapping[str, str]) -> CompiledPolicy:
    """Parse, rewrite and (when the shape allows) compile ``policy`` for its table.

    ``column_types`` maps the table's columns to their Postgres type names (``int4``, ``text``,
    ``_text``...).  Raises :class:`PolicyError` when ``policy.using`` is not one SQL expression.
    Unknown columns are not an error here (Postgres checked them when the policy was created); a
    column missing from ``column_types`` only keeps the policy off the fast path.
    """
    try:
        tree = parse_expression(policy.using)
    except PolicyError as exc:
        raise PolicyError(f'policy "{policy.name}" on {policy.schema}.{policy.table}: {exc}') from None
    tree = rewrite(tree)
    sql = RawStream()(tree)
    try:
        root = Builder(column_types).boolean(tree)
    except Unsupported as exc:
        known = frozenset(column_types)
        mentioned = column_refs(tree, set())
        return CompiledPolicy(
            policy=policy,
            sql=sql,
            fast=None,
            claims_only=False,
            index=(),
            columns=frozenset(mentioned & known if known else mentioned),
            slow_reason=str(exc),
        )
    columns = root.columns()
    index = tuple(t for t in (_index_term(root, c) for c in _conjuncts(root)) if t is not None)
    return CompiledPolicy(
        policy=policy,
        sql=sql,
        fast=_predicate(root),
        claims_only=not columns,
        index=index,
        columns=columns,
        specialize=root.fold,
        claim_keys=root.claim_keys(),
    )
