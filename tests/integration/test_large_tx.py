"""One very large transaction through ``relay serve``: every row delivered, relay memory bounded.

The scenario (a ``relay serve`` subprocess, its RSS sampled from ``/proc``, one subscriber
counting a one-transaction insert) is in tests/support/large_tx.py, shared with
bench/large_tx.py; this module asserts on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.large_tx import MIB, Run, measure, prepare_table, relay_serve

pytestmark = pytest.mark.pg


def run_large_tx(dsn: str, log_path: Path, n: int, timeout: float, **env: str) -> Run:
    """The whole scenario against a ``relay serve`` subprocess; asserts completeness."""
    prepare_table(dsn)
    with relay_serve(dsn, log_path, env) as (proc, port):
        run = measure(proc, port, dsn, n, timeout)
        assert proc.poll() is None, f"relay died:\n{log_path.read_text()}"
    print("\n" + run.report())
    t = run.tally
    assert (t.rows, t.missing, t.duplicates, t.out_of_range, t.other_frames) == (n, 0, 0, 0, 0), (
        f"rows={t.rows} missing={t.missing} dup={t.duplicates} out_of_range={t.out_of_range} "
        f"other={t.other_frames}\n" + log_path.read_text()[-4000:]
    )
    assert t.out_of_order == 0, "positions must strictly increase"
    assert len(t.commit_lsns) == 1, f"one transaction, one commit LSN; got {sorted(t.commit_lsns)[:5]}"
    return run


@pytest.mark.timeout(120)
def test_100k_row_transaction_memory_does_not_grow_with_it(pg_dsn: str, tmp_path: Path) -> None:
    """CI-sized (~15 s): 100,000 rows in one transaction, all delivered; relay memory stays flat.

    The bound, and why it is defensible: the replay log is the one structure allowed to keep
    changes, and it is capped here at RELAY_RESUME_MAX_BYTES = 2 MiB (default 64 MiB) so that
    the cap is small next to the transaction.  We allow it twice over (the log keeps evicted
    entries referenced until its lazy compaction, so its real footprint swings between 1x and
    about 2x the cap) plus 8 MiB for the bounded in-flight state: one socket queue (at most
    RELAY_SOCKET_QUEUE_FRAMES frames, and the joined copy handed to the transport), libpq's
    input buffer and allocator slack.  That is 12 MiB.  Holding the transaction in any form
    needs far more: its frames alone are ~40 MiB (measured by the subscriber), its wal2json
    messages ~34 MiB, decoded Python rows several times that.  The test checks that margin too,
    so it cannot pass by accident with a transaction too small to tell.
    """
    n = 100_000
    resume_bytes = 2 * MIB
    run = run_large_tx(
        pg_dsn, tmp_path / "relay.log", n, timeout=90, RELAY_RESUME_MAX_BYTES=str(resume_bytes)
    )
    allowed = 2 * resume_bytes + 8 * MIB
    assert allowed * 3 < run.tally.frame_bytes, "the transaction is too small to tell growth apart"
    growth = (run.peak_kib - run.baseline_kib) * 1024
    assert growth <= allowed, (
        f"relay memory grew {growth / MIB:.1f} MiB > {allowed / MIB:.0f}\n{run.report()}"
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_million_row_transaction_bounded_rss(pg_dsn: str, tmp_path: Path) -> None:
    """The issue's target: 1,000,000 rows in one transaction, complete, relay peak RSS <= 300 MiB.

    Default configuration (64 MiB replay log), as a user would run it.  Peak is the larger of
    the sampled VmRSS and the kernel's VmHWM, so a spike between samples counts too.  Takes
    about 40 s on a 2-core machine (~40,000 rows/s, 2026-12-06).
    """
    n = 1_000_000
    run = run_large_tx(pg_dsn, tmp_path / "relay.log", n, timeout=1500)
    assert run.peak_kib <= 300 * 1024, run.report()
