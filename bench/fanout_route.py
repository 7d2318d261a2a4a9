"""CPU cost of routing one change to its readers: candidates, bindings, verdicts, frames.

Not part of CI.  ``python bench/fanout_route.py [--subscribers 500 5000] [--changes 2000]``

The pure part of the authorized fan-out (relay/core: ``TableIndex``, ``SubscriptionIndex.route``,
``Authorizer`` verdicts, ``FrameCache``), in bench/authz.py's shape — three policies on
``public.bookings`` (branch, assignee, admin role), subscribers with distinct claims (5 % admins,
15 % branch managers, 80 % plain users), all on ``realtime:dash`` with a ``*`` binding — without
Postgres, sockets or the event loop: what the relay pays per delivery before the socket write.
Prints the best of ``--repeat`` runs (CPU time of the process, so that waiting for a core on a
busy machine does not count) in microseconds per delivery, and a same-run baseline: the same
subscribers as ``service_role`` (no policy work).  Compare two checkouts with
``PYTHONPATH=<checkout> python bench/fanout_route.py``.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.core.authorize import Authorizer, TableIndex, Verdict, VerdictMemo, claims_key
from relay.core.changes import Action, Column, Lsn, RowChange
from relay.core.policies import Policy, compile_policy
from relay.core.subscriptions import Decide, FrameCache, SubscriptionIndex, parse_bindings

TYPES = {"id": "int8", "branch_id": "int4", "assignee_id": "uuid", "status": "text", "price": "numeric"}
POLICIES = [
    ("branch", "branch_id = (claims->>'branch_id')::int"),
    ("assignee", "assignee_id = auth.uid()"),
    ("admins", "claims->>'user_role' = 'admin'"),
]
BRANCHES = list(range(1, 11))
COLUMNS = tuple(Column(n, t) for n, t in TYPES.items())


@dataclass(eq=False)
class Sub:
    """What the index and the feed read of a channel."""

    topic: str
    vsn: str
    claims: dict[str, Any]
    claims_key: bytes


def subscribers(n: int, rng: random.Random, service: bool) -> list[Sub]:
    out = []
    for i in range(n):
        sub = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kind, branch = i % 20, BRANCHES[i % len(BRANCHES)]
        claims: dict[str, Any] = {"role": "authenticated", "sub": sub}
        if service:
            claims["role"] = "service_role"
        elif kind == 0:
            claims["user_role"] = "admin"
        elif kind <= 3:
            claims.update(user_role="manager", branch_id=branch)
        else:
            claims["assignee_only"] = True
        out.append(Sub("realtime:dash", "1.0.0", claims, claims_key(claims)))
    return out


def changes(n: int, users: list[str], rng: random.Random) -> list[RowChange]:
    return [
        RowChange(
            "public",
            "bookings",
            Action.INSERT,
            COLUMNS,
            {
                "id": i,
                "branch_id": rng.choice(BRANCHES),
                "assignee_id": rng.choice(users),
                "status": "pending",
                "price": 10,
            },
            None,
            "2026-12-06T18:00:00Z",
            Lsn(1000 + i),
            0,
            ("id",),
        )
        for i in range(n)
    ]


Indexes = tuple[SubscriptionIndex[Sub], TableIndex[Sub]]


def indexes(subs: list[Sub], auth: Authorizer) -> Indexes:
    index: SubscriptionIndex[Sub] = SubscriptionIndex()
    ti: TableIndex[Sub] = TableIndex()
    spec = parse_bindings([{"event": "*", "schema": "public", "table": "bookings"}])[0]
    for s in subs:
        index.add(spec, s, None)
        ti.add(s, s.claims, auth.policies("public", "bookings"))
    return index, ti


def route_all(ix: Indexes, batch: Iterable[RowChange], auth: Authorizer) -> int:
    """Route every change as relay/server/feed.py does (candidates, route, one frame each)."""
    index, ti = ix
    delivered = 0
    for change in batch:
        try:  # as the feed asks
            decide: Decide[Sub] = VerdictMemo(auth, change.schema, change.table, (change.record, None)).decide
        except TypeError:  # a checkout before VerdictMemo.decide: the feed's closure then
            memo = VerdictMemo(auth, change.schema, change.table)

            def decide(s: Sub, which: int, change: RowChange = change, memo: VerdictMemo = memo) -> Verdict:
                row = change.record if which == 0 else change.old_record
                if row is None:
                    return False
                return memo.get(which, row, s.claims, s.claims_key)

        owners: set[Sub] = set()
        assert change.record is not None
        ti.candidates(change.record, owners)
        deliveries, pending = index.route(change, decide, owners)
        assert not pending
        cache = FrameCache(change)
        for d in deliveries:
            cache.variant(d.kind, d.error, d.select).wire(d.sub.topic, d.ids, d.sub.vsn)
        delivered += len(deliveries)
    return delivered


def best(subs: list[Sub], batch: list[RowChange], auth: Authorizer, repeat: int) -> tuple[float, int]:
    times = []
    delivered = 0
    ix = indexes(subs, auth)
    for _ in range(repeat):
        t0 = time.process_time()  # CPU time: waiting for a core on a busy machine does not count
        delivered = route_all(ix, batch, auth)
        times.append(time.process_time() - t0)
    return min(times), delivered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--changes", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    compiled = [
        compile_policy(Policy("public", "bookings", n, ("authenticated",), e), TYPES) for n, e in POLICIES
    ]
    for n in args.subscribers:
        rng = random.Random(7)
        users = subscribers(n, rng, service=False)
        batch = changes(args.changes, [u.claims["sub"] for u in users], rng)
        secs, delivered = best(users, batch, Authorizer(compiled), args.repeat)
        # baseline: every subscriber sees every change, no policy work (index + frames only)
        base_subs = subscribers(n, random.Random(7), service=True)
        base_changes = batch[: max(1, args.changes * 45 // n // 10)]
        bsecs, bdelivered = best(base_subs, base_changes, Authorizer(compiled), args.repeat)
        per, bper = secs / delivered * 1e6, bsecs / bdelivered * 1e6
        print(
            f"{n:>5} subscribers: {per:.2f} us per delivery ({delivered / args.changes:.1f} per change, "
            f"{secs / args.changes * 1e6:.0f} us per change); service_role baseline {bper:.2f} us per "
            f"delivery; ratio {per / bper:.2f}x"
        )


if __name__ == "__main__":
    main()
