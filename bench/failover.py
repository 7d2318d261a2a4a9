"""Capture-leader failover time in cluster mode (issue 17): SIGKILL the leader, time the takeover.

Not part of CI.  Run from the repository root::

    python bench/failover.py [--kills 20] [--nodes 3] [--pauses 0] [--dsn postgresql://...]

What is measured: from the moment the leader process is dead (SIGKILL returned) to the Redis
entry id (Redis' clock, same machine, ms) of the first row change the new leader appended to
the change log, while a writer commits rows continuously (one every ~5-30 ms).  That covers
everything a client waits for: the lease expiring (3 s), a follower noticing (polls every
0.25 s), the log check, terminating the old walsender if it still holds the slot, starting
replication from the slot's confirmed position, and the first append.  ``--pauses`` adds
frozen leaders (SIGSTOP, the partition case), timed the same way.

It is the scenario of tests/integration/test_cluster_failover.py (tests/support/cluster_chaos.py),
so the run also checks that every subscriber (resuming on whichever node it reaches) ended with
every row exactly once, in order, never told to resync.  Postgres: a throwaway local cluster
(or ``--dsn``, a superuser DSN; the run uses a fresh database of its own); Redis: a throwaway
``redis-server`` with AOF.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scenario lives in the test support package
    sys.path.insert(0, str(ROOT))

from relay.postgres.cluster import LocalCluster  # noqa: E402
from tests.support.cluster_chaos import run_cluster_chaos  # noqa: E402
from tests.support.postgres import fresh_database  # noqa: E402
from tests.support.redis_server import provide_redis  # noqa: E402


@contextlib.contextmanager
def server_dsn(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    with LocalCluster() as cluster:
        yield cluster.dsn()


def distribution(values: list[float]) -> str:
    """n, min, median, p90, max and mean of ``values`` (seconds)."""
    if not values:
        return "n=0"
    s = sorted(values)
    p90 = s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]
    return (
        f"n={len(s)} min={s[0]:.2f}s median={statistics.median(s):.2f}s p90={p90:.2f}s "
        f"max={s[-1]:.2f}s mean={statistics.fmean(s):.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time capture-leader failovers (SIGKILL) in cluster mode.")
    parser.add_argument("--kills", type=int, default=20, help="leader SIGKILLs (default 20)")
    parser.add_argument("--pauses", type=int, default=0, help="leader SIGSTOPs (frozen leader; default 0)")
    parser.add_argument("--nodes", type=int, default=3, help="relay processes (default 3)")
    parser.add_argument("--seed", type=int, help="random seed (default: RELAY_CHAOS_SEED or a fresh one)")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a throwaway cluster)")
    args = parser.parse_args(argv)
    with (
        server_dsn(args.dsn) as server,
        fresh_database(server, prefix="failover_") as dsn,
        provide_redis(appendonly=True) as redis,
    ):
        run = asyncio.run(
            run_cluster_chaos(
                dsn,
                redis.url,
                nodes=args.nodes,
                leader_kills=args.kills,
                follower_kills=0,
                leader_pauses=args.pauses,
                gap=(1.0, 2.5),
                seed=args.seed,
                failover_timeout=30.0,
                log=lambda line: print(line, flush=True),
            )
        )
    print()
    print(run.result.failure_report() if not run.ok else run.summary())
    print(f"\nfailover after SIGKILL: {distribution(run.failovers)}")
    if run.pauses:
        print(f"failover after SIGSTOP: {distribution(run.pauses)}")
    print("\nRESULT:", "ok" if run.ok else "FAILED")
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
