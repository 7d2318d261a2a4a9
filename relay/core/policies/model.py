"""Public types of policies: what the DBA wrote, what the relay compiled, and the errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final


class PolicyError(ValueError):
    """The policy text is not one SQL expression.  The message is meant for the DBA who wrote it.

    A :class:`ValueError` so a loader validating many inputs can catch one type.
    """


#: SQLSTATE -> the stable code the relay reports (and logs) for an evaluation error.
_CODES: Final = {
    "22P02": "invalid_text_representation",
    "22003": "numeric_value_out_of_range",
    "22023": "cannot_extract_elements",
}


class PolicyEvalError(Exception):
    """Evaluating the policy for these claims fails, and fails in Postgres too.

    The failure belongs to one subscriber (a claim that does not cast, an "array" claim that is an
    object), so it is an exception the caller turns into a per-subscriber denial rather than a
    result.  ``code`` is stable for logs and clients; ``sqlstate`` is what Postgres reports.
    """

    def __init__(self, sqlstate: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code or _CODES.get(sqlstate, sqlstate)


@dataclass(frozen=True)
class Policy:
    """One row policy as the DBA defined it: who it applies to and its ``using`` expression."""

    schema: str
    table: str
    name: str
    roles: tuple[str, ...]
    using: str


@dataclass(frozen=True)
class IndexTerm:
    """A top-level AND-ed conjunct ``column = <claims>`` (or ``= any``/``in`` over claims).

    It lets the relay look subscribers up by the row's value instead of testing each one:
    ``keys(claims)`` is every key the column must equal for the policy to possibly be TRUE (it
    raises :class:`PolicyEvalError` when the claims make the policy fail, for every row that
    reaches the term), and ``row_key(value)`` maps a decoded row value into the same domain
    (``None`` for NULL).  A row whose key is not in ``keys`` can never see TRUE from this policy.
    """

    column: str
    keys: Callable[[Mapping[str, Any]], frozenset[Any]]
    row_key: Callable[[Any], Any]


FastPredicate = Callable[[Mapping[str, Any], Mapping[str, Any]], bool | None]


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy ready for the relay.

    ``sql`` is the expression with ``auth.uid()`` / ``auth.role()`` / ``auth.jwt()`` replaced by
    reads of ``claims``, so that Postgres can evaluate it with the claims as one ``jsonb`` value in
    scope (one call covers many subscribers).  ``fast(row, claims)`` answers TRUE / FALSE /
    ``None`` (SQL NULL) exactly as that evaluation would, raising :class:`PolicyEvalError` where it
    raises; it is ``None`` when the expression is outside the shapes the relay models.
    ``claims_only`` says the decision depends on the claims alone (only ever set for fast
    policies: a slow one may read other tables).  ``columns`` are the row columns read.
    ``slow_reason`` says why a policy is not on the fast path (for logs and ``relay check``).
    ``specialize(claims)`` is ``fast`` split in two: the plan-time, claims-only part evaluated
    once (a constant verdict, or a predicate over the row; it raises where that part raises),
    so the relay can do it once per subscriber instead of once per row.  ``claim_keys``: the
    top-level claims the predicate reads, so a claims-only policy is decided once per class of
    claims equal on them (None when not known: every claim counts).
    """

    policy: Policy
    sql: str
    fast: FastPredicate | None
    claims_only: bool
    index: tuple[IndexTerm, ...]
    columns: frozenset[str]
    slow_reason: str | None = field(default=None, compare=False)
    specialize: Callable[[Mapping[str, Any]], Any] | None = field(default=None, compare=False)
    #: the top-level claims ``fast`` reads (None: unknown); claims equal on them are one class
    claim_keys: frozenset[str] | None = field(default=None, compare=False)


#: A decoded row (column -> value) and a subscriber's JWT claims, as the fast path reads them.
Row = Mapping[str, Any]
Claims = Mapping[str, Any]
