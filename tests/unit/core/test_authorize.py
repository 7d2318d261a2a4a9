"""Authorizer verdicts and the TableIndex pre-selection, with real compiled policies."""

from __future__ import annotations

from typing import Any

from relay.core.authorize import ASK_POSTGRES, Authorizer, Denied, TableIndex, VerdictMemo, claims_key
from relay.core.policies import CompiledPolicy, Policy, compile_policy

TYPES = {"id": "int8", "branch_id": "int4", "assignee_id": "uuid", "status": "text"}
U1 = "00000000-0000-4000-8000-0000000000a1"


def pol(name: str, expr: str, roles: tuple[str, ...] = ("authenticated",)) -> CompiledPolicy:
    return compile_policy(Policy("public", "t", name, roles, expr), TYPES)


BRANCH = pol("branch", "branch_id = (claims->>'branch_id')::int")
OWNER = pol("owner", "assignee_id = auth.uid()")
ADMIN = pol("admin", "claims->>'user_role' = 'admin'")
SLOW = pol("slow", "length(status) > 3")


def row(branch: int = 1, assignee: str | None = None, status: str = "open") -> dict[str, Any]:
    return {"id": 1, "branch_id": branch, "assignee_id": assignee, "status": status}


def verdict(auth: Authorizer, r: dict[str, Any], claims: dict[str, Any]) -> Any:
    return auth.verdict("public", "t", r, claims, claims_key(claims))


def test_default_deny_and_service_role() -> None:
    auth = Authorizer()
    assert verdict(auth, row(), {"role": "authenticated", "branch_id": 1}) is False
    assert verdict(auth, row(), {"role": "service_role"}) is True


def test_any_applicable_policy_grants() -> None:
    auth = Authorizer([BRANCH, OWNER, ADMIN])
    assert verdict(auth, row(1), {"role": "authenticated", "branch_id": 1}) is True
    assert verdict(auth, row(2), {"role": "authenticated", "branch_id": 1}) is False
    assert verdict(auth, row(2, U1), {"role": "authenticated", "sub": U1}) is True
    assert verdict(auth, row(9), {"role": "authenticated", "user_role": "admin"}) is True
    assert verdict(auth, row(1), {"role": "anon", "branch_id": 1}) is False  # roles do not match


def test_error_is_a_denied_verdict_unless_another_policy_grants() -> None:
    auth = Authorizer([BRANCH, ADMIN])
    v = verdict(auth, row(1), {"role": "authenticated", "branch_id": "abc"})
    assert isinstance(v, Denied) and v.code == "invalid_text_representation" and v.policy == "branch"
    assert verdict(auth, row(1), {"role": "authenticated", "branch_id": "abc", "user_role": "admin"}) is True


def test_slow_policy_asks_postgres_unless_a_fast_one_grants() -> None:
    assert SLOW.fast is None
    auth = Authorizer([SLOW, BRANCH])
    assert verdict(auth, row(2), {"role": "authenticated", "branch_id": 1}) is ASK_POSTGRES
    assert verdict(auth, row(1), {"role": "authenticated", "branch_id": 1}) is True
    assert auth.postgres_policies("public", "t", {"role": "authenticated"}) == (SLOW,)


def test_claims_only_cached_and_reset_on_replace() -> None:
    auth = Authorizer([ADMIN])
    admin = {"role": "authenticated", "user_role": "admin"}
    assert verdict(auth, row(), admin) is True
    assert len(auth._specialized_cache) == 1
    assert verdict(auth, row(5), admin) is True
    assert len(auth._specialized_cache) == 1
    auth.replace([BRANCH])
    assert verdict(auth, row(), admin) is False


def test_memo_shares_equal_claims() -> None:
    auth = Authorizer([BRANCH])
    memo = VerdictMemo(auth, "public", "t")
    a = {"role": "authenticated", "branch_id": 1}
    b = {"branch_id": 1, "role": "authenticated"}  # same content, other order
    assert claims_key(a) == claims_key(b)
    assert memo.get(0, row(1), a, claims_key(a)) is True
    memo.set(0, claims_key(b), False)
    assert memo.get(0, row(1), b, claims_key(b)) is False


def test_table_index_candidates() -> None:
    policies = (BRANCH, OWNER, ADMIN, SLOW)
    ti: TableIndex[str] = TableIndex()
    ti.add("b1", {"role": "authenticated", "branch_id": 1}, policies)
    ti.add("b2", {"role": "authenticated", "branch_id": 2}, (BRANCH, OWNER, ADMIN))
    ti.add("owner", {"role": "authenticated", "sub": U1}, (BRANCH, OWNER, ADMIN))
    ti.add("admin", {"role": "authenticated", "user_role": "admin"}, (BRANCH, OWNER, ADMIN))
    ti.add("svc", {"role": "service_role"}, policies)
    ti.add("anon", {"role": "anon"}, policies)
    out: set[str] = set()
    ti.candidates(row(2, U1), out)
    # b1 has a slow policy (always checked); b2 by branch; owner by assignee; admin by role grant
    assert out == {"b1", "b2", "owner", "admin", "svc"}
    out = set()
    ti.candidates(row(3), out)
    assert out == {"b1", "admin", "svc"}
    ti.remove("b1")
    ti.remove("admin")
    out = set()
    ti.candidates(row(1), out)
    assert out == {"svc"}
    ti.add("b2", {"role": "authenticated", "branch_id": 3}, (BRANCH,))  # token refresh re-adds
    out = set()
    ti.candidates(row(2), out)
    assert "b2" not in out


def test_table_index_bad_claim_stays_candidate() -> None:
    ti: TableIndex[str] = TableIndex()
    ti.add("bad", {"role": "authenticated", "branch_id": "abc"}, (BRANCH,))
    out: set[str] = set()
    ti.candidates(row(1), out)
    assert out == {"bad"}  # so its error is reported on the rows it would see


def test_specialized_verdicts_equal_plain_evaluation() -> None:
    """Caching the claims-side work per claims never changes a verdict."""
    import itertools

    auth = Authorizer(
        [BRANCH, OWNER, ADMIN, pol("combo", "branch_id = (claims->>'b')::int and status <> 'x'")]
    )
    claims_set = [
        {"role": "authenticated", "branch_id": 1},
        {"role": "authenticated", "branch_id": "abc"},
        {"role": "authenticated", "sub": U1},
        {"role": "authenticated", "sub": "not-a-uuid"},
        {"role": "authenticated", "user_role": "admin"},
        {"role": "authenticated", "b": "2"},
        {"role": "authenticated", "b": " 7x"},
        {"role": "anon"},
    ]
    rows = [row(1), row(2, U1), row(2, None, "x"), row(7, "00000000-0000-4000-8000-0000000000ff")]
    for _ in range(2):  # second round hits the cache
        for c, r in itertools.product(claims_set, rows):
            assert auth.verdict("public", "t", r, c, claims_key(c)) == auth.verdict("public", "t", r, c)


def test_claims_key_holds_no_oversized_buffer() -> None:
    """A claims key lives as long as its channel: it must not keep orjson's 4 KiB buffer."""
    import tracemalloc

    from relay.core.authorize import claims_key

    claims = [{"role": "authenticated", "sub": f"{i:036d}", "exp": 1_900_000_000 + i} for i in range(500)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = [claims_key(c) for c in claims]
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert keys[0] == claims_key(dict(reversed(list(claims[0].items()))))  # canonical: key order
    assert per_key < 512, f"{per_key:.0f} bytes held per claims key"


class _Claimant:
    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        self.claims_key = claims_key(claims)


def test_claims_plans_equal_plain_evaluation_with_errors_and_slow_policies() -> None:
    """A claims plan gives the verdict of walking the policies, including which error is
    reported (the first in policy order) and ASK_POSTGRES when a slow policy applies."""
    import itertools

    bad_b = pol("bad_b", "branch_id = (claims->>'b')::int")  # errors when b does not cast
    orders = [
        [bad_b, BRANCH, OWNER, ADMIN],
        [BRANCH, bad_b, SLOW, OWNER],
        [ADMIN, SLOW, bad_b],
        [pol("anon_only", "branch_id = 1", roles=("anon",)), OWNER],
    ]
    claims_set = [
        {"role": "authenticated", "branch_id": 1, "b": "x"},
        {"role": "authenticated", "branch_id": "abc", "b": "y"},  # two errors: the first wins
        {"role": "authenticated", "branch_id": "abc", "b": "2"},
        {"role": "authenticated", "sub": U1, "b": "nope"},
        {"role": "authenticated", "sub": "not-a-uuid"},
        {"role": "authenticated", "user_role": "admin", "branch_id": "abc"},
        {"role": "anon"},
        {"role": "service_role"},
        {},
    ]
    rows = [row(1), row(2, U1), row(2, None, "x"), {"id": 1}]
    for policies in orders:
        auth = Authorizer(policies)
        for _ in range(2):  # second round: plans from the cache
            for c, r in itertools.product(claims_set, rows):
                plain = auth.verdict("public", "t", r, c)
                assert auth.verdict("public", "t", r, c, claims_key(c)) == plain, (policies, c, r)
                assert VerdictMemo(auth, "public", "t").get(0, r, c, claims_key(c)) == plain
                assert VerdictMemo(auth, "public", "t", (r, None)).decide(_Claimant(c), 0) == plain
                assert VerdictMemo(auth, "public", "t", (None, r)).decide(_Claimant(c), 1) == plain


def test_row_independent_verdicts_are_plan_constants() -> None:
    """One plan per distinct claims and table; a role grant, service_role and 'no applicable
    policy' need no row work at all (most of the fan-out's verdicts in bench/authz.py)."""
    auth = Authorizer([BRANCH, OWNER, ADMIN])
    admin = {"role": "authenticated", "user_role": "admin", "sub": U1}
    user = {"role": "authenticated", "sub": U1, "branch_id": 1}
    anon = {"role": "anon"}
    assert auth.plan("public", "t", admin, claims_key(admin)).constant is True
    assert auth.plan("public", "t", {"role": "service_role"}, b"svc").constant is True
    assert auth.plan("public", "t", anon, claims_key(anon)).constant is False
    plan = auth.plan("public", "t", user, claims_key(user))
    assert plan.constant is None and len(plan.terms) == 2  # branch and owner; admin never TRUE
    before = auth.evaluations
    verdict(auth, row(9), admin)
    assert auth.evaluations == before  # a constant is no row evaluation (the metric's unit)
    verdict(auth, row(), user)
    verdict(auth, row(3), user)
    assert auth.evaluations == before + 2
    assert len(auth.plans("public", "t")) == 4
    auth.replace([BRANCH])  # new policies: new plans
    assert auth.plans("public", "t") == {}
    assert verdict(auth, row(9), admin) is False


def test_memo_answer_from_postgres_overrides_ask() -> None:
    """The slow path records Postgres' verdict in the memo: a plan that says ASK_POSTGRES
    must not hide it."""
    auth = Authorizer([SLOW])
    claims = {"role": "authenticated"}
    memo = VerdictMemo(auth, "public", "t")
    assert memo.get(0, row(), claims, claims_key(claims)) is ASK_POSTGRES
    memo.set(0, claims_key(claims), True)
    assert memo.get(0, row(), claims, claims_key(claims)) is True
    assert memo.get(1, row(), claims, claims_key(claims)) is ASK_POSTGRES  # the other row


def test_claims_only_policies_are_decided_once_per_class_of_claims() -> None:
    """``TableIndex.add`` folds a claims-only policy once per class of claims (equal on the
    claims it reads), and the candidates are exactly those of deciding every subscriber."""
    import dataclasses
    import itertools

    calls = 0

    def counted(cp: CompiledPolicy) -> CompiledPolicy:
        fast = cp.fast
        assert fast is not None

        def count(row: Any, claims: Any) -> Any:
            nonlocal calls
            calls += 1
            return fast(row, claims)

        return dataclasses.replace(cp, fast=count)

    roles = pol("roles", "claims->>'user_role' in ('admin', 'manager')")
    nested = pol("nested", "(claims->'app'->>'level')::int > 2")
    whole = pol("whole", "auth.jwt() is not null")  # reads the whole claims: no class is shared
    assert roles.claim_keys == frozenset({"user_role"}) and nested.claim_keys == frozenset({"app"})
    assert OWNER.claim_keys == frozenset({"sub"}) and BRANCH.claim_keys == frozenset({"branch_id"})
    policies = (counted(roles), counted(nested), OWNER)
    claims_set: list[dict[str, Any]] = [
        {"role": "authenticated", "sub": f"00000000-0000-4000-8000-{k:012x}"} for k in range(50)
    ]
    claims_set += [
        {"role": "authenticated", "sub": U1, "user_role": "admin"},
        {"role": "authenticated", "sub": U1, "user_role": "guest"},
        {"role": "authenticated", "user_role": None},  # null is not missing: its own class
        {"role": "authenticated", "app": {"level": "3"}},
        {"role": "authenticated", "app": {"level": 1}},
        {"role": "authenticated", "app": {"level": "x"}},  # errs: stays a candidate
        {"role": "authenticated", "app": {"level": float("nan")}},
    ]
    ti: TableIndex[int] = TableIndex()
    for k, claims in enumerate(claims_set):
        ti.add(k, claims, policies)
    distinct_roles = {repr(("user_role" in c, c.get("user_role"))) for c in claims_set}
    distinct_apps = {repr(("app" in c, c.get("app"))) for c in claims_set}
    assert calls == len(distinct_roles) + len(distinct_apps)  # 4 + 5, not 2 x 57
    # the same candidates as deciding every subscriber on its own
    plain: TableIndex[int] = TableIndex()
    for k, claims in enumerate(claims_set):
        plain._grants_for = None  # a fresh memo for every add: nothing shared
        plain.add(k, claims, (roles, nested, OWNER))
    rows = [row(1, U1), row(2), row(3, "00000000-0000-4000-8000-000000000007")]
    for r in rows:
        got: set[int] = set()
        want: set[int] = set()
        ti.candidates(r, got)
        plain.candidates(r, want)
        assert got == want
    # a policy reading the whole claims (``auth.jwt()``) is decided per subscriber
    assert whole.claim_keys is None and whole.fast is not None and whole.claims_only
    before = calls
    ti2: TableIndex[int] = TableIndex()
    for k, claims in enumerate(itertools.islice(claims_set, 5)):
        ti2.add(k, claims, (counted(whole),))
    assert calls == before + 5
    out: set[int] = set()
    ti2.candidates(row(1), out)
    assert out == {0, 1, 2, 3, 4}
    # new policies (a new tuple) start a new memo
    before = calls
    ti.add(0, claims_set[0], (counted(roles), OWNER))
    assert calls == before + 1


def test_single_comparison_policy_computes_its_index_key_once() -> None:
    """``assignee_id = auth.uid()``: the key is ``sub`` cast once per join (the policy's fold
    and the key were two casts), with the same keys and the same errors as folding first."""
    from collections.abc import Iterator, Mapping

    import pytest

    from relay.core.policies import PolicyEvalError

    class Counting(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self.data, self.reads = data, 0

        def __getitem__(self, key: str) -> Any:
            return self.data[key]

        def get(self, key: str, default: Any = None) -> Any:
            self.reads += 1
            return self.data.get(key, default)

        def __iter__(self) -> Iterator[str]:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    (term,) = OWNER.index
    # a policy with more than the indexed comparison folds the whole policy first: the reference
    (both,) = pol("both", "assignee_id = auth.uid() and claims->>'x' = 'y'").index
    assert both.keys({"sub": U1, "x": "z"}) == frozenset()  # FALSE for these claims: no row
    want = both.keys({"sub": U1, "x": "y"})
    assert len(want) == 1
    claims = Counting({"role": "authenticated", "sub": U1})
    assert term.keys(claims) == want
    assert claims.reads == 1
    assert term.keys(Counting({"role": "authenticated"})) == frozenset()  # NULL: no key
    with pytest.raises(PolicyEvalError):
        term.keys({"role": "authenticated", "sub": "not-a-uuid"})
