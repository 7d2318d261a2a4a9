"""bench/affinity.py: what ``bench/latency.py --pin`` relies on to give the relay a CPU of its own.

Checked on real processes: a process tree is pinned (its existing members, and what it forks
afterwards, since the mask is inherited), and ``undo`` gives every process its CPUs back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
try:
    from affinity import CpuTimes, Pinning, affinity, descendants
finally:
    sys.path.remove(str(BENCH))

needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable CPUs")

# a parent that starts one child now, and another when told to (a line on stdin)
TREE = (
    "import subprocess, sys\n"
    "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])]\n"
    "print(kids[0].pid, flush=True)\n"
    "sys.stdin.readline()\n"
    "kids.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']))\n"
    "print(kids[1].pid, flush=True)\n"
    "sys.stdin.readline()\n"
)


@needs_two
def test_a_pinned_tree_and_its_later_children_run_on_the_rest_and_undo_restores() -> None:
    before = affinity(0)
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = int(proc.stdout.readline())
        plan = Pinning.split()
        assert plan.relay and plan.rest and not plan.relay & plan.rest
        assert plan.pin_rest_tree(proc.pid) >= 2
        assert affinity(proc.pid) == set(plan.rest)
        assert affinity(first) == set(plan.rest)
        assert first in descendants(proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        later = int(proc.stdout.readline())
        assert affinity(later) == set(plan.rest)  # forked after pinning: inherited
        plan.undo()
        assert affinity(proc.pid) == before
        assert affinity(first) == before and affinity(later) == before
    finally:
        for pid in descendants(proc.pid):
            os.kill(pid, 9)
        proc.kill()
        proc.wait(10)


@needs_two
def test_pin_relay_moves_every_thread_of_a_process() -> None:
    code = (
        "import threading, time\n"
        "for _ in range(3):\n"
        "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        plan = Pinning.split()
        assert plan.pin_relay(proc.pid) == 4  # main thread and three others
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            assert os.sched_getaffinity(int(tid)) == set(plan.relay)
        plan.undo()
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            assert os.sched_getaffinity(int(tid)) == affinity(0)
    finally:
        proc.kill()
        proc.wait(10)


def test_cpu_times_count_busy_time_of_a_cpu() -> None:
    cpus = sorted(affinity(0))
    ct = CpuTimes()
    ct.begin()
    t = time.process_time() + 0.3
    while time.process_time() < t:  # bounded: 0.3 s of CPU on some CPU of ours
        pass
    busy, steal = ct.shares(cpus)
    assert 0.0 < busy <= 1.0 and 0.0 <= steal <= 1.0
