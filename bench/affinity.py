"""CPU affinity for the benches: give the process under test a core that none of the bench's own
processes use.

Why: on this shared 2-core machine the relay, Postgres, the writer and the bench's client
processes all compete for the same two CPUs, so a latency figure measures the run queue as much as
the relay (issue 16's latency row: the relay waited for a CPU 39 % of the time).  Pinning the relay
to one CPU and everything else of the bench to the other removes *our* contention; other users'
processes can still be scheduled on the relay's CPU, which is why :class:`CpuTimes` measures how
busy that CPU was in total, and the benches keep reporting the relay's run-queue wait.

Linux only (``os.sched_setaffinity``).  ``sched_setaffinity`` acts on one thread, so :func:`pin`
sets every thread listed under ``/proc/<pid>/task``; threads and processes created later inherit
the affinity of their creator (a Postgres backend forked by a pinned postmaster, a thread started
by a pinned main thread).  Usage::

    plan = Pinning.split()                  # relay: the last CPU; the rest: the others
    plan.pin_relay(os.getpid())             # the relay runs in the bench's process
    plan.pin_rest_tree(postmaster_pid(data_dir))   # Postgres and every backend it forks
    p.start(); plan.pin_rest(p.pid)         # each child process, right after it starts
    ...
    plan.undo()                             # everything back to the CPUs it had before
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CpuTimes",
    "Pinning",
    "affinity",
    "descendants",
    "pin",
    "pin_tree",
    "postmaster_pid",
    "set_nice",
]


def affinity(pid: int = 0) -> set[int]:
    """The CPUs ``pid`` (0: this thread) may run on."""
    return set(os.sched_getaffinity(pid))


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def pin(pid: int, cpus: Iterable[int]) -> int:
    """Restrict every thread of process ``pid`` to ``cpus``; returns the threads pinned.

    A thread or process that ends meanwhile is skipped (not an error): the bench pins processes
    that it does not control the life of (Postgres backends).
    """
    mask = set(cpus)
    n = 0
    for tid in _threads(pid) or [pid]:
        try:
            os.sched_setaffinity(tid, mask)
            n += 1
        except (ProcessLookupError, PermissionError):
            continue
    return n


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (children, grandchildren...), from ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    for _ in range(100_000):  # bounded walk of a tree
        if not todo:
            break
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def pin_tree(pid: int, cpus: Iterable[int]) -> int:
    """Pin ``pid`` first (so what it forks from now on inherits the mask), then its descendants."""
    mask = set(cpus)
    n = pin(pid, mask)
    for c in descendants(pid):
        n += pin(c, mask)
    return n


def set_nice(pid: int, nice: int) -> str:
    """Give process ``pid`` (every thread) and, with autogroups, its session's group the niceness ``nice``.

    Why both: with ``kernel.sched_autogroup_enabled`` (on here) the scheduler first shares a CPU
    between *sessions* and only then between the processes of a session, so a thread's nice
    value alone does not make it win against another session's processes.  A negative value
    needs root.  Returns what was set, for the report.
    """
    for tid in _threads(pid) or [pid]:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue
    group = Path(f"/proc/{pid}/autogroup")
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
            group.write_text(str(nice))
            return f"nice {nice} and session {group.read_text().strip()}"
    except OSError:
        pass
    return f"nice {nice} (no autogroup)"


def postmaster_pid(data_dir: Path | str) -> int:
    """The postmaster's pid: the first line of ``postmaster.pid`` in the data directory."""
    return int((Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])


@dataclass
class CpuTimes:
    """Per-CPU time from ``/proc/stat`` between two reads: how busy a CPU was, whoever used it.

    With the relay pinned, "relay's CPU busy" minus "relay's own CPU" is what other processes
    (other users of the machine, kernel work such as the loopback's softirqs) took from it;
    ``steal`` is time the hypervisor gave the virtual CPU to another guest.
    """

    start: dict[int, list[int]] = field(default_factory=dict)

    @staticmethod
    def read() -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *vals = line.split()
                    out[int(name[3:])] = [int(v) for v in vals]
        return out

    def begin(self) -> None:
        self.start = self.read()

    def shares(self, cpus: Iterable[int]) -> tuple[float, float]:
        """``(busy, steal)`` of ``cpus`` since :meth:`begin`, as shares of their total time."""
        now = self.read()
        busy = steal = total = 0
        for c in cpus:
            d = [b - a for a, b in zip(self.start.get(c, []), now.get(c, []), strict=False)]
            if len(d) < 8:
                continue
            # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
            t = sum(d[:8])
            total += t
            busy += t - d[3] - d[4] - d[7]
            steal += d[7]
        return (busy / total, steal / total) if total else (0.0, 0.0)


@dataclass
class Pinning:
    """One CPU set for the process under test, another for everything else of the bench."""

    relay: frozenset[int]
    rest: frozenset[int]
    _before: dict[int, set[int]] = field(default_factory=dict, repr=False)
    _trees: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def split(cls, relay_cpus: int = 1) -> Pinning:
        """The last ``relay_cpus`` CPUs this process may use for the relay, the others for the rest."""
        cpus = sorted(affinity(0))
        if len(cpus) <= relay_cpus:
            raise SystemExit(f"--pin needs more than {relay_cpus} usable CPU(s); this process has {cpus}")
        return cls(frozenset(cpus[-relay_cpus:]), frozenset(cpus[:-relay_cpus]))

    def describe(self) -> str:
        return f"relay on CPU {sorted(self.relay)}, Postgres + writer + clients on CPU {sorted(self.rest)}"

    def _remember(self, pid: int) -> None:
        if pid not in self._before:
            try:
                self._before[pid] = affinity(pid)
            except ProcessLookupError:
                pass

    def pin_relay(self, pid: int) -> int:
        self._remember(pid)
        return pin(pid, self.relay)

    def pin_rest(self, pid: int) -> int:
        self._remember(pid)
        return pin(pid, self.rest)

    def pin_rest_tree(self, pid: int) -> int:
        self._remember(pid)
        self._trees.append(pid)
        return pin_tree(pid, self.rest)

    def undo(self) -> None:
        """Give every process pinned through this object the CPUs it had before (trees: all)."""
        for pid, cpus in self._before.items():
            if pid in self._trees:
                pin_tree(pid, cpus)
            else:
                pin(pid, cpus)
        self._before.clear()
        self._trees.clear()
