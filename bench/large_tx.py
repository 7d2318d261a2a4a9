"""One huge transaction through ``relay serve``: relay peak RSS and rows/s against Postgres itself.

Not part of CI (tests/integration/test_large_tx.py is the assertion; this prints numbers).  Run
from the repository root (the package must be importable: ``make bench``, an installed venv, or
``PYTHONPATH=.``)::

    python bench/large_tx.py [--rows 1000000] [--resume-max-bytes BYTES]

What it does, in one run on a throwaway local cluster (migrations + one three-column table):

1. creates a wal2json slot for the baseline, then starts ``relay serve`` as a subprocess (its
   RSS is then its own) with one WebSocket subscriber in this process (``service_role``);
2. inserts ``--rows`` rows in ONE transaction and times it until the commit returned
   (baseline 1: what Postgres needs to write the transaction);
3. counts every row on the socket (each id exactly once, positions increasing, one commit LSN)
   and times commit -> last row, while sampling the relay's VmRSS from ``/proc`` (and reading
   its VmHWM at the end); the subscriber is the cheap client of ``bench/wsload.py``, and its CPU
   and run-queue wait are printed next to the relay's, so the output says which side was the
   limit (a subscriber slower than the relay is dropped by it as a slow consumer, by design);
4. stops the relay, then decodes the same transaction from the baseline slot with
   ``pg_logical_slot_get_changes`` and the relay's own wal2json options, counted in SQL and
   thrown away (baseline 2: Postgres + wal2json alone, with no client and no network).

Why these baselines: absolute rows/s depend on the machine; the ratios say how much of the cost
is the relay.  Decoding happens only after the commit (wal2json does not stream in-progress
transactions), so the relay's time is measured from the commit too.  The baseline decode runs
after the relay stopped, so the two never compete for CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scenario lives in the test support package
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from tablerow import emit  # noqa: E402

from relay.core.wal2json import wal2json_options  # noqa: E402
from relay.postgres.cluster import LocalCluster  # noqa: E402
from tests.support.large_tx import MIB, TABLE, measure, prepare_table, relay_serve, rss_curve  # noqa: E402

SLOT_RELAY = "bench_large_tx_relay"
SLOT_BASELINE = "bench_large_tx_baseline"
# The relay's replication session settings (relay/postgres/replication.py), for a like-for-like decode.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres"


def prepare(dsn: str) -> None:
    """Migrations, the table (enabled for the relay), and the baseline slot before any row."""
    prepare_table(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (SLOT_BASELINE,))


# -- baseline 2: Postgres + wal2json alone -------------------------------------------------------
def decode_baseline(dsn: str, n: int) -> float:
    """Seconds to decode the transaction from the baseline slot with the relay's options, counted."""
    opts = wal2json_options([("public", TABLE)], ("realtime",))
    args = ", ".join("%s, %s" for _ in opts)
    params: list[str] = [SLOT_BASELINE]
    for k, v in opts.items():
        params += [k, v]
    with psycopg.connect(dsn, autocommit=True, options=SESSION_OPTIONS) as conn:
        t0 = time.perf_counter()
        row = conn.execute(
            'select count(*) filter (where data like \'{"action":"I"%%\') '
            f"from pg_logical_slot_get_changes(%s, NULL, NULL, {args})",
            params,
        ).fetchone()
        elapsed = time.perf_counter() - t0
    if row is None or row[0] != n:
        raise RuntimeError(f"baseline decoded {row} rows, expected {n}")
    return elapsed


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the one transaction")
    ap.add_argument(
        "--resume-max-bytes",
        type=int,
        default=None,
        help="RELAY_RESUME_MAX_BYTES for the relay (default: the relay's own, 64 MiB)",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed for delivery")
    ap.add_argument("--aim-mib", type=float, default=300, help="peak RSS aim, reported (not enforced)")
    args = ap.parse_args(argv)
    n: int = args.rows
    env = {} if args.resume_max_bytes is None else {"RELAY_RESUME_MAX_BYTES": str(args.resume_max_bytes)}

    with LocalCluster() as pg:
        dsn = pg.dsn()
        prepare(dsn)
        assert pg.base_dir is not None
        log_path = pg.base_dir / "relay.log"
        with relay_serve(dsn, log_path, env, slot=SLOT_RELAY) as (proc, port):
            run = measure(proc, port, dsn, n, args.timeout)
            alive = proc.poll() is None
        if not alive:
            print(log_path.read_text()[-4000:], file=sys.stderr)
        decode_s = decode_baseline(dsn, n)

    t = run.tally
    insert_s = run.committed - run.insert_started
    relay_s = t.last_at - run.committed
    first_s = t.first_at - run.committed if t.first_at else float("nan")
    peak, base = run.peak_kib / 1024, run.baseline_kib / 1024
    print(f"rows in one transaction : {n:,} ({t.frame_bytes / MIB:.0f} MiB of frames delivered)")
    print(
        f"delivery                : {'complete' if t.complete else 'INCOMPLETE'} "
        f"({t.rows:,} rows, {t.duplicates + t.out_of_range} duplicates/out of range, "
        f"{t.out_of_order} out of order, "
        f"{len(t.commit_lsns)} commit LSN(s))"
    )
    print(
        f"relay RSS               : baseline {base:.1f} MiB, peak {peak:.1f} MiB "
        f"(growth {peak - base:.1f} MiB)"
    )
    print(
        f"                          VmHWM {run.hwm_kib / 1024:.1f} MiB; aim <= {args.aim_mib:.0f} MiB: "
        f"{'met' if peak <= args.aim_mib else 'NOT met'}"
    )
    print(f"relay RSS over delivery : {rss_curve(run.samples, run.insert_started, t.last_at, 16)} (MiB)")
    print(f"(1) insert + commit     : {insert_s:.2f} s = {n / insert_s:,.0f} rows/s")
    print(
        f"(2) wal2json decode only: {decode_s:.2f} s = {n / decode_s:,.0f} rows/s "
        "(pg_logical_slot_get_changes, counted in SQL)"
    )
    print(
        f"(3) relay, commit->last : {relay_s:.2f} s = {t.rows / relay_s:,.0f} rows/s "
        f"(first row after {first_s:.2f} s)"
    )
    wall = t.last_at - run.insert_started
    rows = max(1, t.rows)
    print(
        f"relay CPU               : {run.relay.share(wall)} "
        f"({run.relay.cpu / rows * 1e6:.1f} us/row; over insert -> last row, {wall:.1f} s)"
    )
    print(
        f"subscriber CPU          : {run.subscriber.share(wall)} "
        f"({run.subscriber.cpu / rows * 1e6:.1f} us/row; reads and checks every frame)"
    )
    print(f"ratio relay / decode    : {decode_s / relay_s:.2f}  (1.0 = as fast as Postgres decodes)")
    print(f"ratio relay / insert    : {insert_s / relay_s:.2f}  (1.0 = delivers as fast as Postgres writes)")
    if not (t.complete and alive):
        print("bench invalid: the transaction was not delivered completely: not printing a rate")
        return 1
    emit(
        "large_tx",
        f"{t.rows / relay_s:,.0f} rows/s, peak RSS {peak:.0f} MiB (CPU: relay "
        f"{100 * run.relay.cpu / wall:.0f} %, subscriber {100 * run.subscriber.cpu / wall:.0f} % of a core)",
        f"pg_logical_slot_get_changes {n / decode_s:,.0f} rows/s",
        round(decode_s / relay_s, 3),
        ">= 0.5x, <= 300 MiB",
        rows=n,
        peak_mib=round(peak, 1),
        relay_cpu_s=round(run.relay.cpu, 2),
        relay_wait_s=None if run.relay.wait is None else round(run.relay.wait, 2),
        subscriber_cpu_s=round(run.subscriber.cpu, 2),
        subscriber_wait_s=None if run.subscriber.wait is None else round(run.subscriber.wait, 2),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
