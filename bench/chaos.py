"""The chaos scenario of tests/integration/test_chaos.py, for as long as you like.

Not part of CI.  Run from the repository root::

    python bench/chaos.py --kills 50 --seconds 300 [--seed N] [--dsn postgresql://...]

Why a script as well as the test: the CI test kills the relay five times in about twenty seconds,
enough to catch a regression but not the rare interleavings (a kill between a replay's last
batch and its hand-over to live, a kill during start-up while a resume waits for the slot).
Fifty kills over five minutes find those, and the summary says exactly what was lost,
duplicated or resynced per subscriber, with the seed that repeats the run's choices.

Postgres: a throwaway local cluster (``LocalCluster``), or with ``--dsn`` an existing server's
superuser DSN; either way the run gets a fresh database of its own, dropped afterwards.  The
scenario itself (writer, resuming subscribers, SIGKILLs, checks) is
:func:`tests.support.resume_client.run_chaos`, the same code the test runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scenario lives in the test support package
    sys.path.insert(0, str(ROOT))


from relay.postgres.cluster import LocalCluster  # noqa: E402
from tests.support.postgres import fresh_database  # noqa: E402
from tests.support.resume_client import run_chaos  # noqa: E402


@contextlib.contextmanager
def server_dsn(dsn: str | None) -> Iterator[str]:
    """The given server, or a throwaway local cluster that is stopped (and removed) afterwards."""
    if dsn:
        yield dsn
        return
    with LocalCluster() as cluster:
        yield cluster.dsn()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="SIGKILL and restart the relay under resuming subscribers; report what they got."
    )
    parser.add_argument("--kills", type=int, default=50, help="relay SIGKILLs (default 50)")
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="approximate length of the chaos phase (default 300)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: RELAY_CHAOS_SEED or a fresh one)")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a throwaway cluster)")
    parser.add_argument(
        "--catch-up", type=float, default=60.0, help="seconds subscribers get to catch up at the end"
    )
    parser.add_argument(
        "--window",
        type=float,
        help="RELAY_RESUME_WINDOW seconds for the relay (default 300). Shorter than the relay stays up "
        "between kills, it makes the relay evict and advance its slot during the run",
    )
    args = parser.parse_args(argv)
    with server_dsn(args.dsn) as server, fresh_database(server, prefix="chaos_") as dsn:
        result = asyncio.run(
            run_chaos(
                dsn,
                kills=args.kills,
                seconds=args.seconds,
                seed=args.seed,
                catch_up_timeout=args.catch_up,
                resume_window=args.window,
                log=lambda line: print(line, flush=True),
            )
        )
    print()
    print(result.failure_report() if not result.ok else result.summary())
    print("\nRESULT:", "ok" if result.ok else "FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
