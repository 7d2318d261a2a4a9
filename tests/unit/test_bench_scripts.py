"""Smoke test of the benches (which are not run in CI): each script imports and answers --help.

The benches live outside the package and import each other (``bench/wsload.py``,
``bench/tablerow.py``); a broken import or argument parser would otherwise be found only by
whoever next measures performance.  Also checks the table-row format ``bench/run_all.py`` reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = [
    "throughput.py",
    "large_tx.py",
    "authz.py",
    "idle_sockets.py",
    "latency.py",
    "run_all.py",
    "pyspy_top.py",
    "snapshot.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_help(script: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent))
    res = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


def test_table_rows_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from tablerow import emit, parse
    finally:
        sys.path.remove(str(BENCH))
    print("some human-readable line")
    emit("drain", "5,000 changes/s", "pg_recvlogical 10,000 changes/s", 0.5, ">= 0.9x", changes=100)
    rows = parse(capsys.readouterr().out)
    assert rows == [
        {
            "row": "drain",
            "figure": "5,000 changes/s",
            "baseline": "pg_recvlogical 10,000 changes/s",
            "ratio": 0.5,
            "aim": ">= 0.9x",
            "changes": 100,
        }
    ]


def test_throughput_refuses_a_delivery_that_is_not_the_backlog() -> None:
    """The drain/catch-up rows are printed only when exactly the backlog's ids arrived."""
    sys.path.insert(0, str(BENCH))
    try:
        from throughput import _check_ids
    finally:
        sys.path.remove(str(BENCH))
    _check_ids("ok", 3, [1, 2, 3], [1, 2, 3])
    for count, got in [(0, []), (3, [1, 2]), (4, [1, 2, 3]), (3, [1, 2, 4])]:
        with pytest.raises(SystemExit, match="bench invalid"):
            _check_ids("subscriber", count, got, [1, 2, 3])
