"""Row authorization: which subscribers may see a row, from DBA policies and JWT claims.

Why pure and why shaped like this:

- A row is visible to a subscriber when any policy of the row's table that applies to the
  subscriber's role evaluates to TRUE for (row, claims).  No policy: nothing is visible
  (default deny).  ``service_role`` bypasses policies, as in Supabase.
- Policies compile (``relay.core.policies``) to an exact in-process predicate for the common
  shapes.  Anything else is *not approximated*: the verdict is :data:`ASK_POSTGRES` and the I/O
  layer evaluates the rewritten expression in Postgres for that row and those claims.
- Evaluation errors (a claim that does not cast, say) belong to that subscriber alone: the
  verdict is a :class:`Denied` carrying the error, so the fan-out can tell that subscriber and
  keep delivering to everyone else.
- Decisions are memoised per change by claims *content*: subscribers whose claims are equal
  (every user of one branch, every admin) cost one evaluation, however many they are.
- Each distinct claims gets a :class:`ClaimsPlan` per table, built once (until policies change):
  the claims-side work of every applicable policy done, policies that can never be TRUE for
  those claims dropped, and a verdict that no longer depends on the row (``service_role``, a
  role grant, no applicable policy) kept as a constant.  Why: with distinct claims (every
  subscriber its own ``sub``) the memo never hits, and re-walking the policy list per row and
  subscriber was ~20 % of the fan-out (py-spy, bench/authz.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, Protocol, TypeVar

import orjson

from relay.core.changes import RowChange
from relay.core.policies import CompiledPolicy, IndexTerm, PolicyEvalError

__all__ = [
    "ASK_POSTGRES",
    "SERVICE_ROLE",
    "Authorizer",
    "Claimant",
    "ClaimsKey",
    "ClaimsPlan",
    "Denied",
    "TableIndex",
    "Verdict",
    "claims_key",
]

SERVICE_ROLE: Final = "service_role"

S = TypeVar("S", bound=Hashable)


class _AskPostgres:
    """Singleton verdict: no in-process predicate; evaluate this policy in Postgres."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ASK_POSTGRES"


ASK_POSTGRES: Final = _AskPostgres()
_MISS: Final = object()


@dataclass(frozen=True, slots=True)
class Denied:
    """Not visible because evaluating a policy raised: reported to that subscriber only."""

    code: str
    message: str
    policy: str


Verdict = bool | Denied | _AskPostgres

ClaimsKey = bytes


def claims_key(claims: Mapping[str, Any]) -> ClaimsKey:
    """Canonical bytes of a claims object: equal claims, equal key (memo and class key).

    Copied into a bytes object of its own size: orjson's result keeps its 4 KiB write buffer
    behind it (tracemalloc: 4,097 bytes per key against 137 copied), and a key lives as long as
    its channel, so 10,000 sockets held 40 MiB of empty buffer.
    """
    return bytes(memoryview(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)))


class ClaimsPlan:
    """One claims' verdict function for one table: what is left of the policies per row.

    ``constant`` is the verdict when it does not depend on the row (then ``terms`` is empty);
    otherwise ``terms`` are the applicable policies in order, each ``(predicate, policy name,
    error)``: a row predicate that may raise :class:`PolicyEvalError`, or (predicate None) the
    error the claims themselves cause.  Only verdicts with terms count as evaluations in the
    relay's metric (``evaluations``): a constant is decided once per claims, not per row.
    """

    __slots__ = ("ask", "constant", "terms")

    def __init__(
        self,
        constant: Verdict | None,
        terms: tuple[tuple[Callable[[Mapping[str, Any]], Any] | None, str, Denied | None], ...] = (),
        ask: bool = False,
    ) -> None:
        self.constant = constant
        self.terms = terms
        self.ask = ask

    def evaluate(self, row: Mapping[str, Any]) -> Verdict:
        """The verdict for ``row``: exactly :meth:`Authorizer.verdict`'s, without its setup."""
        if self.constant is not None:
            return self.constant
        denied: Denied | None = None
        for pred, name, error in self.terms:
            if pred is None:
                if denied is None:
                    denied = error
                continue
            try:
                if pred(row) is True:
                    return True
            except PolicyEvalError as exc:
                if denied is None:
                    denied = Denied(exc.code, str(exc), name)
        if self.ask:
            return ASK_POSTGRES
        if denied is not None:
            return denied
        return False


_SERVICE_PLAN: Final = ClaimsPlan(True)


def _claims_class(keys: frozenset[str] | None, claims: Mapping[str, Any]) -> bytes | None:
    """Canonical bytes of ``claims`` restricted to ``keys`` (present or not, and the value);
    None when ``keys`` is unknown or a value has no canonical JSON (then nothing is shared)."""
    if keys is None:
        return None
    try:
        return orjson.dumps(
            [(k, k in claims, claims.get(k)) for k in sorted(keys)], option=orjson.OPT_SORT_KEYS
        )
    except TypeError:
        return None


class Authorizer:
    """The compiled policies of every table, and per-change memoised verdicts."""

    def __init__(self, policies: Iterable[CompiledPolicy] = ()) -> None:
        self._by_table: dict[tuple[str, str], tuple[CompiledPolicy, ...]] = {}
        self.version = 0
        self.evaluations = 0  # verdicts computed in the relay (metrics: relay_policy_evaluations_total)
        self.listeners: list[Callable[[], None]] = []
        self.replace(policies)

    def replace(self, policies: Iterable[CompiledPolicy]) -> None:
        """Swap in a new policy set (policy changes apply to every later change)."""
        by_table: dict[tuple[str, str], list[CompiledPolicy]] = {}
        for cp in policies:
            by_table.setdefault((cp.policy.schema, cp.policy.table), []).append(cp)
        # Claims-only policies (role grants) first: their verdict is cached per claims, so a
        # subscriber they admit costs a dict lookup per row.  Any-TRUE semantics make the order
        # irrelevant to visibility.
        self._by_table = {k: tuple(sorted(v, key=lambda cp: not cp.claims_only)) for k, v in by_table.items()}
        self._specialized_cache: dict[tuple[int, ClaimsKey], Any] = {}
        # (schema, table) -> claims key -> plan; a new dict per policy set (a fan-out still
        # holding the old one finishes its change under the policies it started with)
        self._plans: dict[tuple[str, str], dict[ClaimsKey, ClaimsPlan]] = {}
        self._plan_count = 0
        self.version += 1
        for listener in self.listeners:
            listener()

    def policies(self, schema: str, table: str) -> tuple[CompiledPolicy, ...]:
        return self._by_table.get((schema, table), ())

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_table.values())

    def verdict(
        self,
        schema: str,
        table: str,
        row: Mapping[str, Any],
        claims: Mapping[str, Any],
        key: ClaimsKey | None = None,
        fast_only: bool = False,
    ) -> Verdict:
        """Is ``row`` of ``schema.table`` visible to a subscriber with ``claims``?

        Policies are tried in order; TRUE from any applicable one wins at once.  A policy that
        needs Postgres makes the verdict :data:`ASK_POSTGRES` unless another one already said
        TRUE; an error is reported only if no other policy grants visibility.  ``fast_only``
        ignores the policies that need Postgres (the slow path combines their answers itself).
        """
        if key is not None and not fast_only:
            plan = self.plans(schema, table).get(key)
            if plan is None:
                plan = self.plan(schema, table, claims, key)
            if plan.terms:
                self.evaluations += 1
            return plan.evaluate(row)
        role = claims.get("role")
        if role == SERVICE_ROLE:
            return True
        self.evaluations += 1
        denied: Denied | None = None
        ask = False
        for cp in self._by_table.get((schema, table), ()):
            if role not in cp.policy.roles:
                continue
            fast = cp.fast
            if fast is None:
                ask = ask or not fast_only  # the slow path answers these itself
                continue
            if key is not None and cp.specialize is not None:
                spec = self._specialized(cp, cp.specialize, claims, key)
                try:
                    if spec is True or (callable(spec) and spec(row) is True):
                        return True
                except PolicyEvalError as exc:
                    spec = exc
                if isinstance(spec, PolicyEvalError) and denied is None:
                    denied = Denied(spec.code, str(spec), cp.policy.name)
                continue
            try:
                if fast(row, claims) is True:
                    return True
            except PolicyEvalError as exc:
                if denied is None:
                    denied = Denied(exc.code, str(exc), cp.policy.name)
        if ask:
            return ASK_POSTGRES
        if denied is not None:
            return denied
        return False

    def plans(self, schema: str, table: str) -> dict[ClaimsKey, ClaimsPlan]:
        """The plans built so far for ``schema.table`` under the current policies, by claims key."""
        hit = self._plans.get((schema, table))
        if hit is None:
            hit = self._plans[(schema, table)] = {}
        return hit

    def plan(self, schema: str, table: str, claims: Mapping[str, Any], key: ClaimsKey) -> ClaimsPlan:
        """Build (and keep) the :class:`ClaimsPlan` of ``claims`` (content ``key``) for a table.

        Mirrors :meth:`verdict` policy by policy: a policy whose claims-side work is TRUE makes
        the verdict TRUE for every row (any TRUE wins, whatever the other policies say); one
        that is FALSE or NULL for these claims can never grant and is dropped; an error of the
        claims' own is kept in its place, since the first error in policy order is the one
        reported.  Only row predicates remain per row.
        """
        if self._plan_count > 100_000:  # bounded like the specialisation cache
            for plans in self._plans.values():
                plans.clear()
            self._plan_count = 0
        role = claims.get("role")
        if role == SERVICE_ROLE:
            plan = _SERVICE_PLAN
        else:
            terms: list[tuple[Callable[[Mapping[str, Any]], Any] | None, str, Denied | None]] = []
            ask = False
            always = False
            for cp in self._by_table.get((schema, table), ()):
                if role not in cp.policy.roles:
                    continue
                fast, name = cp.fast, cp.policy.name
                if fast is None:
                    ask = True
                    continue
                if cp.specialize is None:
                    terms.append((_with_claims(fast, claims), name, None))
                    continue
                spec = self._specialized(cp, cp.specialize, claims, key)
                if spec is True:
                    always = True
                    break
                if isinstance(spec, PolicyEvalError):
                    terms.append((None, name, Denied(spec.code, str(spec), name)))
                elif callable(spec):
                    terms.append((spec, name, None))
            if always:
                plan = ClaimsPlan(True)
            elif not any(pred is not None for pred, _, _ in terms):
                first = next((err for _, _, err in terms if err is not None), None)
                plan = ClaimsPlan(ASK_POSTGRES if ask else first if first is not None else False)
            else:
                plan = ClaimsPlan(None, tuple(terms), ask)
        self.plans(schema, table)[key] = plan
        self._plan_count += 1
        return plan

    def _specialized(
        self,
        cp: CompiledPolicy,
        specialize: Callable[[Mapping[str, Any]], Any],
        claims: Mapping[str, Any],
        key: ClaimsKey,
    ) -> Any:
        """The policy's claims-side work for these claims, done once (until policies change).

        Casting a subscriber's ``sub`` to uuid or ``branch_id`` to int is the same for every
        row; only the comparison with the row's value remains per row.  Plan-time errors are
        cached as the error.
        """
        ck = (id(cp), key)
        hit = self._specialized_cache.get(ck, _MISS)
        if hit is not _MISS:
            return hit
        try:
            result: Any = specialize(claims)
        except PolicyEvalError as exc:
            result = exc
        if len(self._specialized_cache) > 100_000:
            self._specialized_cache.clear()
        self._specialized_cache[ck] = result
        return result

    def postgres_policies(
        self, schema: str, table: str, claims: Mapping[str, Any]
    ) -> tuple[CompiledPolicy, ...]:
        """The applicable policies that have no in-process predicate (for the slow path)."""
        role = claims.get("role")
        return tuple(
            cp
            for cp in self._by_table.get((schema, table), ())
            if cp.fast is None and role in cp.policy.roles
        )


def _with_claims(
    fast: Callable[[Mapping[str, Any], Mapping[str, Any]], Any], claims: Mapping[str, Any]
) -> Callable[[Mapping[str, Any]], Any]:
    """``fast`` bound to one claims object: a row predicate (policies without ``specialize``)."""
    return lambda row: fast(row, claims)


class Claimant(Protocol):
    """A subscriber as the verdicts see it: its claims and their canonical key."""

    @property
    def claims(self) -> Mapping[str, Any]: ...

    @property
    def claims_key(self) -> ClaimsKey: ...


_UNREAD: Mapping[str, Any] = MappingProxyType({})  # VerdictMemo: a row not built yet


class VerdictMemo:
    """Verdicts for one change, keyed by (which row, claims content).

    One change is checked against many subscribers; all subscribers with equal claims share
    one evaluation.  Lives exactly as long as the change's fan-out.
    """

    __slots__ = ("_auth", "_memo", "_plans", "_source", "rows", "schema", "table")

    def __init__(
        self,
        auth: Authorizer,
        schema: str,
        table: str,
        rows: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None] = (None, None),
        source: RowChange | None = None,
    ) -> None:
        self._auth = auth
        self.schema = schema
        self.table = table
        # ``source``: take the rows from the change, built only when a verdict reads them (a
        # verdict from the claims alone, e.g. service_role, never does: see RowChange)
        if source is not None:
            rows = (
                _UNREAD if source.has_record else None,
                _UNREAD if source.has_old_record else None,
            )
        self._source = source
        self.rows = rows  # the change's (new row, old row), for decide()
        self._memo: dict[tuple[int, ClaimsKey], Verdict] = {}
        self._plans = auth.plans(schema, table)

    def get(self, which: int, row: Mapping[str, Any], claims: Mapping[str, Any], key: ClaimsKey) -> Verdict:
        """``which`` tells rows apart (0 = new row, 1 = old row of an UPDATE).

        A verdict that does not depend on the row (a role grant, ``service_role``) comes
        straight from the claims' plan, not through the memo; an :data:`ASK_POSTGRES` one goes
        through it, since :meth:`set` records Postgres' answer there.
        """
        plan = self._plans.get(key)
        if plan is None:
            plan = self._auth.plan(self.schema, self.table, claims, key)
        c = plan.constant
        if c is not None and c is not ASK_POSTGRES:
            return c
        mk = (which, key)
        v = self._memo.get(mk)
        if v is None:
            if plan.terms:
                self._auth.evaluations += 1
            v = plan.evaluate(row)
            self._memo[mk] = v
        return v

    def decide(self, subscriber: Claimant, which: int) -> Verdict:
        """The fan-out's ``Decide``: the verdict of this change's new (0) or old (1) row.

        One call per delivery, so it is :meth:`get` inlined rather than a wrapper around it, and
        the subscriber's ``claims`` are read only to build a missing plan (the claims object is
        needed once per distinct claims and table, its key every time).
        """
        row = self.rows[which]
        if row is None:
            return False
        key = subscriber.claims_key
        plan = self._plans.get(key)
        if plan is None:
            plan = self._auth.plan(self.schema, self.table, subscriber.claims, key)
        c = plan.constant
        if c is not None and c is not ASK_POSTGRES:
            return c
        mk = (which, key)
        v = self._memo.get(mk)
        if v is None:
            if plan.terms:
                self._auth.evaluations += 1
            if row is _UNREAD:
                row = self._read(which)
            v = plan.evaluate(row)
            self._memo[mk] = v
        return v

    def _read(self, which: int) -> Mapping[str, Any]:
        """The source change's row ``which``, built now (once) and kept in ``rows``."""
        assert self._source is not None
        got = self._source.record if which == 0 else self._source.old_record
        row: Mapping[str, Any] = got if got is not None else {}
        self.rows = (row, self.rows[1]) if which == 0 else (self.rows[0], row)
        return row

    def set(self, which: int, key: ClaimsKey, verdict: Verdict) -> None:
        self._memo[(which, key)] = verdict


class TableIndex(Generic[S]):
    """Which subscribers of one table can possibly see a row: found by the row's values.

    Built from each subscriber's claims when it joins (or refreshes its token) and rebuilt when
    policies change, so a change costs lookups, not one evaluation per subscriber:

    - ``always``: ``service_role``, policies that read no column and are TRUE for the claims
      (role grants), and subscribers whose policies cannot be indexed (checked on every row);
    - ``by_key[(policy, column)][value]``: subscribers for which a top-level ``column = <claims>``
      conjunct of a policy can be TRUE only when the row's column has that value.

    The index only pre-selects; every candidate still gets the exact verdict.  A subscriber it
    leaves out has no applicable policy that could be TRUE for the row.
    """

    def __init__(self) -> None:
        self.always: set[S] = set()
        self.by_key: dict[tuple[int, str], tuple[IndexTerm, dict[Any, set[S]]]] = {}
        self._entries: dict[S, list[tuple[tuple[int, str], Any]]] = {}
        # claims-only policies decided per class of claims (see _grants); valid for one policies
        # tuple: a new one (policies changed) starts a new memo
        self._grants: dict[tuple[int, bytes], bool] = {}
        self._grants_for: tuple[CompiledPolicy, ...] | None = None

    def add(self, sub: S, claims: Mapping[str, Any], policies: tuple[CompiledPolicy, ...]) -> None:
        self.remove(sub)
        entries: list[tuple[tuple[int, str], Any]] = []
        role = claims.get("role")
        if role == SERVICE_ROLE:
            self.always.add(sub)
            self._entries[sub] = entries
            return
        for n, cp in enumerate(policies):
            if role not in cp.policy.roles:
                continue
            if cp.fast is None or not cp.index:
                if cp.claims_only and cp.fast is not None and not self._grants_rows(n, cp, claims, policies):
                    continue  # decided by claims alone: never TRUE for these claims
                self.always.add(sub)
                continue
            term = cp.index[0]
            try:
                keys = term.keys(claims)
            except PolicyEvalError:
                self.always.add(sub)  # its error must be reported on rows it would see
                continue
            slot = self.by_key.setdefault((n, term.column), (term, {}))[1]
            for k in keys:
                if k is None:
                    continue
                slot.setdefault(k, set()).add(sub)
                entries.append(((n, term.column), k))
        self._entries[sub] = entries

    def _grants_rows(
        self, n: int, cp: CompiledPolicy, claims: Mapping[str, Any], policies: tuple[CompiledPolicy, ...]
    ) -> bool:
        """Whether the claims-only policy ``n`` can be TRUE for ``claims`` (or errs: then its
        error is reported per row, so the subscriber stays a candidate).

        Decided once per class of claims — equal on the claims the policy reads
        (``cp.claim_keys``) — not once per join: with every subscriber its own ``sub``, a
        policy like ``claims->>'user_role' in ('admin', 'manager')`` has one answer for all of
        them (issue 16: ≈ 11 % of a join's CPU went to such folds and the index keys).
        """
        klass = _claims_class(cp.claim_keys, claims)
        if klass is None:
            return self._decide(cp, claims)
        if self._grants_for is not policies or len(self._grants) > 10_000:
            self._grants.clear()
            self._grants_for = policies
        hit = self._grants.get((n, klass))
        if hit is None:  # the key copied: orjson's bytes keep its 4 KiB buffer (see claims_key)
            hit = self._grants[(n, bytes(memoryview(klass)))] = self._decide(cp, claims)
        return hit

    @staticmethod
    def _decide(cp: CompiledPolicy, claims: Mapping[str, Any]) -> bool:
        assert cp.fast is not None
        try:
            return cp.fast({}, claims) is True
        except PolicyEvalError:
            return True  # errors are reported per row: keep it a candidate

    def remove(self, sub: S) -> None:
        self.always.discard(sub)
        for key, k in self._entries.pop(sub, ()):
            hit = self.by_key.get(key)
            if hit is not None:
                members = hit[1].get(k)
                if members is not None:
                    members.discard(sub)
                    if not members:
                        del hit[1][k]

    def candidates(self, row: Mapping[str, Any] | None, out: set[S]) -> None:
        """Add to ``out`` the subscribers that may see ``row``."""
        out |= self.always
        if row is None:
            return
        for term, slot in self.by_key.values():
            try:
                key = term.row_key(row.get(term.column))
            except (TypeError, ValueError, ArithmeticError):
                continue
            if key is None:
                continue
            members = slot.get(key)
            if members:
                out |= members
