"""Row policies: DBA-written SQL predicates over a changed row and a subscriber's JWT claims.

A policy's ``using`` text is one boolean SQL expression over the table's columns and ``claims``
(the subscriber's claims as ``jsonb``), optionally through Supabase's helpers ``auth.uid()``,
``auth.role()`` and ``auth.jwt()``.  A row is visible when a policy evaluates to TRUE.

Why this module exists, and why it is pure: every change is checked against every subscriber, so
asking Postgres each time would cost a round trip per change and per distinct identity.  The
common shapes (tenant/branch membership, ownership, role grants, IN lists, AND/OR/NOT) are
therefore compiled into an in-process predicate, and everything else is evaluated by Postgres
(:attr:`CompiledPolicy.fast` is ``None``).  Nothing is approximated: a shape is on the fast path
only when its Postgres semantics are modelled exactly, including errors.

What "exactly" means here.  The relay's reference is the *rewritten* expression
(:attr:`CompiledPolicy.sql`, with ``auth.*`` replaced by reads of ``claims``) evaluated the way
the slow path evaluates it: ``select (<sql>) from jsonb_populate_record(null::t, $1) as t,
(select $2::jsonb as claims) c`` with the claims bound as a parameter (``realtime.eval_policy``).
In that query the claims are a constant for the planner, so Postgres evaluates every claims-only
subexpression *at plan time* (``eval_const_expressions``), left to right, and only the parts that
read the row at run time.  That decides when a bad claim raises: ``status = 'x' AND branch_id =
(claims->>'b')::int`` raises for ``b = "abc"`` even for rows whose status is not ``'x'``, whereas
``auth.role() = 'admin' AND ...`` with a non-admin role is folded to FALSE before the cast is
reached.  The fast path reproduces this in two phases: :meth:`.fold.Bool.fold` is the planner's
constant folding (claims only, may raise, short-circuits AND/OR only on constant arms) and the
residual it returns is the executor (reads the row; only ``= ANY (select
jsonb_array_elements_text(...))`` can raise there, because the planner never folds a sub-select).
Parse analysis comes before both and shapes what is folded: ``x IN (a, b, ...)`` becomes one
``x = ANY (ARRAY[...])`` of the literal items followed by a separate, OR-ed ``x = item`` for each
item that reads ``claims`` (still a column of ``c`` at that stage), so folding stops casting the
claims items once one of them settles the list (:class:`.fold.InList`).

One consequence is worth knowing: the *original* expression, where ``auth.uid()`` reads a setting
at run time, may short-circuit differently from the rewritten one when a claim is malformed
(``status = 'open' OR owner = auth.uid()`` with ``sub = "abc"``: TRUE for an open row in the
original, an error in the rewritten form).  Postgres documents evaluation order as undefined; the
relay follows the rewritten form consistently on both of its paths.

The input functions (text to int2/int4/int8/numeric/uuid/bool) are those of PostgreSQL 15, the
version the project targets and the equivalence tests run against.  Other major versions differ
in corners of claims *input*: 13 rejects numeric ``Infinity``, 16 accepts ``0x1F`` and ``1_000``
as integers and numerics.  Claims are seen as Postgres sees ``orjson.dumps(claims)`` (how the
slow path sends them): floats print as orjson prints them, non-finite floats become JSON
``null``.  Text equality is byte equality, which holds for deterministic collations (every
database default; a column declared with a nondeterministic ICU collation would differ);
ordering on text is never on the fast path because it depends on the collation.

Deliberately off the fast path (evaluated by Postgres): any function other than the ``auth.*``
helpers (including the ``(select auth.uid())`` idiom), other sub-selects, casts of columns or to
other types, arithmetic, LIKE, jsonb comparisons, float/timestamp/enum comparisons, and columns
whose type the caller did not give.

The package follows those responsibilities: :mod:`.model` (public types and errors), :mod:`.sql`
(parse and rewrite), :mod:`.claims` (claims as jsonb), :mod:`.families` (modelled types, row
keys), :mod:`.fold` (the evaluation model), :mod:`.build` (parse tree -> model) and
:mod:`.compile` (index terms, :func:`compile_policy`).  Input functions and comparison keys come
from :mod:`relay.core.sqltypes`, shared with filters.
"""

from relay.core.policies.compile import compile_policy
from relay.core.policies.model import (
    CompiledPolicy,
    FastPredicate,
    IndexTerm,
    Policy,
    PolicyError,
    PolicyEvalError,
)

__all__ = [
    "CompiledPolicy",
    "FastPredicate",
    "IndexTerm",
    "Policy",
    "PolicyError",
    "PolicyEvalError",
    "compile_policy",
]
