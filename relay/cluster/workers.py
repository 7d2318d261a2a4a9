"""``relay serve --workers N``: N relay processes on one port, under a small supervisor.

Why processes: one relay process uses one core for decoding, routing, authorization and socket
writes; a machine with more cores serves more sockets with more processes.  Why each worker is a
whole ``relay serve`` (with ``RELAY_WORKERS=1`` and its own ``RELAY_NODE_ID``) rather than a
forked copy of this one: a worker is then exactly a cluster node, the same thing as a relay on
another machine (docs/scale-out.md), with the same start-up checks, logging and shutdown; the
supervisor only starts, watches and stops processes and never imports the server.

Sharing the port: each worker opens its listener with ``SO_REUSEPORT`` (relay/service.py does in
cluster mode), so the kernel spreads new connections over the workers; there is no accept lock
and no proxy hop.  A connection stays with the worker that accepted it.

Supervision:

* SIGTERM / SIGINT to the supervisor are forwarded to every worker, which stops as a single relay
  does (stops listening, sends 1001 to its clients, winds down); a worker that is still there
  after ``stop_timeout`` seconds is killed.  The workers run in a session of their own, so a
  Ctrl-C in a terminal reaches them once (through the supervisor), not twice.
* If the supervisor itself dies (SIGKILL, OOM), the kernel sends SIGTERM to its workers
  (``PR_SET_PDEATHSIG`` on Linux): no orphan keeps the port.
* A worker that exits while the supervisor is not stopping is restarted after an exponential
  backoff (0.5 s doubling, at most 30 s), logged with its exit code.  A worker that had run for
  at least ``min_uptime`` seconds starts over at the shortest delay.
* A worker that fails ``max_start_failures`` times in a row within ``min_uptime`` of its start
  (a port in use, a bad setting, an unreachable database) is not a transient fault: the
  supervisor stops the others and exits non-zero (the worker's own exit code when it had one),
  so a process manager or orchestrator sees the failure instead of an endless restart loop.

Node ids: worker ``i`` of node ``<node>`` is ``<node>-w<i>``; a restarted worker is
``<node>-w<i>-r<k>`` (its ``k``-th restart), so the cluster never mistakes a new process for the
one that died (its presences and stream position are those of a dead node, to be cleaned up as
such, not inherited).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import FrameType

from tenacity import RetryCallState, Retrying, wait_exponential

from relay.config import ENV_VARS, Config

__all__ = ["Supervisor", "base_node_id", "restart_delay", "worker_env", "worker_node_id"]

log = logging.getLogger("relay.workers")

MIN_UPTIME = 10.0
MAX_START_FAILURES = 5
STOP_TIMEOUT = 20.0
_POLL = 0.1
_PR_SET_PDEATHSIG = 1


def restart_delay(failures: int, maximum: float = 30.0) -> float:
    """Seconds before restarting a worker after its ``failures``-th failure in a row (1, 2, ...).

    tenacity's exponential wait (0.5 s, 1 s, 2 s, ... capped at ``maximum``), the same library
    the capture loop backs off with; no jitter: workers of one machine do not stampede a shared
    resource by restarting together, and a deterministic delay is what the log can promise.
    """
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(1, failures)
    return float(wait_exponential(multiplier=0.5, max=maximum)(state))


def base_node_id(cfg: Config) -> str:
    """The node id the workers' ids derive from: ``RELAY_NODE_ID``, else host name and PID."""
    return cfg.node_id or f"{socket.gethostname()}-{os.getpid()}"


def worker_node_id(base: str, index: int, restarts: int = 0) -> str:
    return f"{base}-w{index}" if restarts == 0 else f"{base}-w{index}-r{restarts}"


#: Set in a worker's environment by its supervisor.  Why: the supervisor already logged the
#: start-up warnings (preflight, weak secret) once; N workers repeating each of them made one
#: finding look like N + 1 in a log pipeline.  A worker still runs the preflight (a failure still
#: stops it with the report) and logs its warnings at debug level.
WORKER_MARK = "RELAY_SUPERVISED_WORKER"


def worker_env(cfg: Config, node_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one worker: every setting of ``cfg`` as its ``RELAY_*`` variable.

    Why every setting: the supervisor's own configuration may come from flags (``--port``,
    ``--database-url``), which a worker started with an environment alone would not see.  JWT key
    material is passed as the text already read (a file path is resolved once, here).
    """
    env = dict(os.environ if base is None else base)
    for f in fields(cfg):
        var = ENV_VARS[f.name][0]
        value = getattr(cfg, f.name)
        if value is None:
            env.pop(var, None)
        elif isinstance(value, bool):
            env[var] = "true" if value else "false"
        else:
            env[var] = str(value)
    env["RELAY_WORKERS"] = "1"
    env["RELAY_NODE_ID"] = node_id
    env[WORKER_MARK] = "1"
    return env


def is_worker() -> bool:
    """Whether this process was started by a ``--workers`` supervisor (see :data:`WORKER_MARK`)."""
    return os.environ.get(WORKER_MARK) == "1"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM me when the supervisor dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # start failures in a row
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Starts ``count`` worker commands, restarts the ones that die, stops them all on a signal.

    ``command``: the worker's argv (``relay serve --no-migrate`` by default: the supervisor has
    applied the migrations once already); ``env_for(node_id)``: its environment.
    """

    def __init__(
        self,
        count: int,
        env_for: Callable[[str], Mapping[str, str]],
        base_id: str,
        *,
        command: Sequence[str] | None = None,
        min_uptime: float = MIN_UPTIME,
        max_start_failures: int = MAX_START_FAILURES,
        max_backoff: float = 30.0,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.command = list(command or [sys.executable, "-m", "relay", "serve", "--no-migrate"])
        self.env_for = env_for
        self.base_id = base_id
        self.min_uptime = min_uptime
        self.max_start_failures = max_start_failures
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.workers = [_Worker(i) for i in range(1, count + 1)]
        self._signal: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def _spawn(self, w: _Worker) -> None:
        w.node_id = worker_node_id(self.base_id, w.index, w.restarts)
        w.proc = subprocess.Popen(
            self.command,
            env=dict(self.env_for(w.node_id)),
            start_new_session=True,
            preexec_fn=_die_with_parent,  # safe: the supervisor runs no other threads
        )
        w.started = time.monotonic()
        w.restart_at = None
        log.info("worker %d started (node %s, pid %d)", w.index, w.node_id, w.proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = signum

    def run(self) -> int:
        """Supervise until a signal (exit 0 once the workers stopped) or repeated start failures."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for w in self.workers:
                self._spawn(w)
            log.info("supervising %d workers (node %s)", len(self.workers), self.base_id)
            code = self._watch()
        finally:
            self._stop_all(self._signal or signal.SIGTERM)
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code

    def _watch(self) -> int:
        while self._signal is None:
            now = time.monotonic()
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    failed = self._exited(w, w.proc.returncode, now)
                    if failed is not None:
                        return failed
                if w.restart_at is not None and now >= w.restart_at and self._signal is None:
                    self._spawn(w)
            time.sleep(_POLL)
        log.info("signal %s: stopping %d workers", signal.Signals(self._signal).name, len(self.workers))
        return 0

    def _exited(self, w: _Worker, code: int, now: float) -> int | None:
        """Schedule the restart of a worker that ended; an exit code when the supervisor gives up."""
        uptime = now - w.started
        w.proc = None
        w.exit_codes.append(code)
        w.failures = w.failures + 1 if uptime < self.min_uptime else 1
        how = _describe(code)
        if uptime < self.min_uptime and w.failures >= self.max_start_failures:
            log.error(
                "worker %d (node %s) failed %d times in a row within %.0f s of its start (last: %s); "
                "giving up: stopping all workers",
                w.index,
                w.node_id,
                w.failures,
                self.min_uptime,
                how,
            )
            return code if code > 0 else 1
        delay = restart_delay(w.failures, self.max_backoff)
        w.restarts += 1
        w.restart_at = now + delay
        log.warning(
            "worker %d (node %s) ended (%s) after %.1f s; restarting it in %.1f s as %s",
            w.index,
            w.node_id,
            how,
            uptime,
            delay,
            worker_node_id(self.base_id, w.index, w.restarts),
        )
        return None

    def _stop_all(self, signum: int) -> None:
        """Forward ``signum`` to every running worker; SIGKILL those still there after the timeout."""
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d still there after %.0f s: killing it", proc.pid, self.stop_timeout)
                proc.kill()
                proc.wait()
        for w in self.workers:
            w.proc = None


def _describe(code: int) -> str:
    """``exit code 3`` or ``signal SIGKILL`` (Popen's negative return code)."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def run_workers(cfg: Config) -> int:
    """``relay serve`` with ``RELAY_WORKERS`` > 1: supervise that many single-process relays."""
    base = base_node_id(cfg)
    supervisor = Supervisor(cfg.workers, lambda node_id: worker_env(cfg, node_id), base)
    return supervisor.run()
