"""The relay process's GC settings (relay/gc_policy.py): the steady fan-out starts no collection.

Why: with CPython's default thresholds a young collection landed inside nearly every fan-out of
a change to 500 subscribers (≈ 1,500 short-lived containers per change), promoted what was alive
then, and those promotions started a full collection of the whole heap every few seconds —
70-100 ms of CPU each in ``bench/latency.py --probe``, more than the p99 budget.  Each case runs
in a fresh interpreter, so that the GC state of the test process is neither read nor changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The fan-out of bench/fanout_route.py in miniature: the real SubscriptionIndex and FrameCache,
# 500 subscribers with one binding each, every change routed and its frame built per delivery.
SCRIPT = r"""
import gc, json, sys
from dataclasses import dataclass
from typing import Any
from relay.core.changes import Action, Column, Lsn, RowChange
from relay.core.subscriptions import FrameCache, SubscriptionIndex, parse_bindings
from relay.gc_policy import tune_gc

@dataclass(eq=False)
class Sub:
    topic: str
    vsn: str

if sys.argv[1] == "tuned":
    tune_gc()
index = SubscriptionIndex()
spec = parse_bindings([{"event": "*", "schema": "public", "table": "bookings"}])[0]
subs = [Sub("realtime:dash", "1.0.0") for _ in range(500)]
for s in subs:
    index.add(spec, s, None)
cols = (Column("id", "int8"), Column("status", "text"))
kept = []  # what a relay keeps per change (its replay window): a little long-lived state
before = [g["collections"] for g in gc.get_stats()]
for i in range(300):
    change = RowChange("public", "bookings", Action.INSERT, cols, {"id": i, "status": "x"}, None,
                       "2026-12-06T18:00:00Z", Lsn(1000 + i), 0, ("id",))
    deliveries, pending = index.route(change, lambda s, which: True, subs)
    assert len(deliveries) == 500 and not pending
    cache = FrameCache(change)
    frames = [cache.variant(d.kind, d.error, d.select).wire(d.sub.topic, d.ids, d.sub.vsn)
              for d in deliveries]
    kept.append((change.commit_lsn, frames[0]))
after = [g["collections"] for g in gc.get_stats()]
print(json.dumps([b - a for a, b in zip(before, after)]))
"""


def collections(mode: str) -> list[int]:
    cmd = [sys.executable, "-c", SCRIPT, mode]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    out: list[int] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_default_gc_collects_inside_the_fan_out() -> None:
    """The cause, kept visible: Python's defaults collect about once per change at this fan-out."""
    young, _, _ = collections("default")
    assert young >= 100


def test_tuned_gc_starts_no_collection_during_a_steady_fan_out() -> None:
    assert collections("tuned") == [0, 0, 0]


def test_tune_gc_freezes_the_start_up_heap() -> None:
    code = (
        "import gc; from relay.gc_policy import GEN0_THRESHOLD, tune_gc; tune_gc(); "
        "print(gc.get_freeze_count() > 1000, gc.get_threshold()[0] == GEN0_THRESHOLD, len(gc.get_objects()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert res.returncode == 0, res.stderr
    frozen, threshold, tracked = res.stdout.split()
    assert frozen == "True" and threshold == "True"
    assert int(tracked) < 1000  # what the collector still walks: nearly nothing
