"""CPU cost of the per-row authorization work: filter matching and policy verdicts.

Not part of CI.  ``python bench/filters_policies.py [--n 20000] [--repeat 9]``.  For each case it
times ``--n`` calls of the compiled row test (``BoundFilter.matches(row)``, or a policy's
``fast(row, claims)`` and its specialised residual ``specialize(claims)(row)``) and prints the
best of ``--repeat`` runs in nanoseconds per row: the minimum is the number least disturbed by
other processes on a shared machine.  Runs without Postgres; compare two checkouts with
``PYTHONPATH=<checkout> python bench/filters_policies.py`` (the public imports are the same).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from relay.core.filters import parse_filter
from relay.core.policies import Policy, compile_policy

ROW: dict[str, Any] = {
    "id": 42,
    "tenant_id": 7,
    "status": "open",
    "owner": "00000000-0000-4000-8000-0000000000a1",
    "amount": Decimal("12.50"),
    "score": 3.25,
    "active": True,
    "created_at": "2026-11-23T13:10:50.27+00:00",
    "day": "2026-11-23",
    "tags": ["a", "b"],
}
TYPES = {
    "id": "int4",
    "tenant_id": "int8",
    "status": "text",
    "owner": "uuid",
    "amount": "numeric",
    "score": "float8",
    "active": "bool",
    "created_at": "timestamptz",
    "day": "date",
    "tags": "_text",
}
FILTERS = {
    "int eq": "id=eq.42",
    "int in(10)": "id=in.(1,2,3,4,5,6,7,8,9,42)",
    "text neq": "status=neq.closed",
    "uuid eq": "owner=eq.00000000-0000-4000-8000-0000000000a1",
    "numeric gte": "amount=gte.10.5",
    "float8 lt": "score=lt.4",
    "bool is": "active=is.true",
    "tstz gt": "created_at=gt.2026-01-01T00:00:00Z",
    "date lte": "day=lte.2026-12-31",
    "text[] eq": 'tags=eq."{a,b}"',
    "like": "status=like.op%",
    "and of 3": "id=gt.1,status=eq.open,amount=lt.100",
}
CLAIMS: dict[str, Any] = {
    "sub": "00000000-0000-4000-8000-0000000000a1",
    "role": "authenticated",
    "tenant_id": "7",
    "branches": [1, 2, 3, 42],
    "is_admin": False,
}
POLICIES = {
    "owner = uid": "owner = auth.uid()",
    "tenant cast": "tenant_id = (claims->>'tenant_id')::int8",
    "any branches": "id = any (select jsonb_array_elements_text(claims->'branches')::int)",
    "or admin": "(claims->>'is_admin')::boolean or (status = 'open' and owner = auth.uid())",
    "in list": "status in ('open', 'pending', 'done') and amount >= 10",
}


def _best(fn: Callable[[], None], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    n = args.n
    rng = range(n)
    for name, text in FILTERS.items():
        matches = parse_filter(text).bind(TYPES).matches
        assert matches(ROW), name

        def run_filter(m: Callable[[Any], bool] = matches) -> None:
            for _ in rng:
                m(ROW)

        print(f"filter {name:14s}: {_best(run_filter, n, args.repeat):7.0f} ns/row")
    for name, using in POLICIES.items():
        cp = compile_policy(Policy("public", "t", name, ("authenticated",), using), TYPES)
        fast, specialize = cp.fast, cp.specialize
        assert fast is not None and specialize is not None, (name, cp.slow_reason)
        assert fast(ROW, CLAIMS) is True, name
        residual = specialize(CLAIMS)

        def run_fast(f: Any = fast) -> None:
            for _ in rng:
                f(ROW, CLAIMS)

        def run_residual(r: Any = residual) -> None:
            if callable(r):
                for _ in rng:
                    r(ROW)

        print(
            f"policy {name:14s}: fast {_best(run_fast, n, args.repeat):7.0f} ns/row, "
            f"specialised {_best(run_residual, n, args.repeat):6.0f} ns/row"
        )


if __name__ == "__main__":
    main()
