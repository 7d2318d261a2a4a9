"""``relay serve`` (and so each cluster worker, a ``relay serve`` of its own) tunes the GC once started.

Why: a full collection walking the start-up heap (≈ 90,000 objects: modules, the app, caches)
stopped the relay 70-100 ms of CPU several times per 10 s of fan-out (bench/latency.py
--probe), beyond the p99 budget of 20 ms.  relay/gc_policy.py freezes that heap and raises the
young threshold; this checks that the serve path applies it, in a process of its own (the
settings are per process, and the test process must keep Python's defaults).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.relay import SECRET

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, gc, json, sys
from relay.config import Config
from relay.service import run_until_stopped

seen = {}

async def started(relay):
    seen.update(frozen=gc.get_freeze_count(), threshold=gc.get_threshold()[0], tracked=len(gc.get_objects()))
    relay.stop_event.set()  # the pipeline ends, and run_until_stopped with it

cfg = Config(database_url=sys.argv[1], jwt_secret=sys.argv[2], port=0)
asyncio.run(run_until_stopped(cfg, started))
print(json.dumps(seen))
"""


def test_serve_freezes_the_start_up_heap_and_raises_the_young_threshold(pg_dsn: str) -> None:
    from relay.gc_policy import GEN0_THRESHOLD

    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, pg_dsn, SECRET],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["frozen"] > 10_000, seen  # the relay's start-up heap is no longer walked
    assert seen["tracked"] < seen["frozen"], seen
    assert seen["threshold"] == GEN0_THRESHOLD, seen
