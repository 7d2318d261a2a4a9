"""The ``relay serve --workers N`` supervisor (relay/cluster/workers.py) with real processes.

Why real child processes, and small ones: what is under test is process supervision (signals
forwarded, a SIGKILLed worker restarted under a new node id, giving up on a worker that cannot
start, no orphan when the supervisor dies), which only real processes show; a stand-in worker
of a few lines makes each case take a second instead of a relay start-up.  The real relay as a
worker is tested in tests/integration/test_workers.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from relay.cluster.workers import restart_delay, worker_env, worker_node_id
from relay.config import Config

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import os, signal, sys, time, pathlib
    out = pathlib.Path(sys.argv[1])
    node = os.environ["RELAY_NODE_ID"]
    (out / f"{node}.pid").write_text(str(os.getpid()))
    def stop(signum, frame):
        (out / f"{node}.stopped").write_text(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if os.environ.get("FAKE_WORKER_FAIL"):
        sys.exit(int(os.environ["FAKE_WORKER_FAIL"]))
    for _ in range(600):
        time.sleep(0.1)
    """
)

SUPERVISOR = textwrap.dedent(
    """
    import json, logging, os, sys
    from relay.cluster.workers import Supervisor
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    opts = json.loads(sys.argv[1])
    sup = Supervisor(
        opts["count"],
        lambda node_id: {**os.environ, "RELAY_NODE_ID": node_id},
        "n",
        command=[sys.executable, opts["worker"], opts["out"]],
        min_uptime=opts["min_uptime"],
        max_start_failures=opts["max_start_failures"],
        max_backoff=0.2,
        stop_timeout=5,
    )
    sys.exit(sup.run())
    """
)


class Run:
    """A supervisor process over the stand-in workers, and what the workers wrote."""

    def __init__(self, tmp: Path, count: int = 2, fail: int | None = None, min_uptime: float = 5.0) -> None:
        self.out = tmp / "out"
        self.out.mkdir()
        (tmp / "worker.py").write_text(WORKER)
        (tmp / "supervisor.py").write_text(SUPERVISOR)
        opts = {
            "count": count,
            "worker": str(tmp / "worker.py"),
            "out": str(self.out),
            "min_uptime": min_uptime,
            "max_start_failures": 3,
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if fail is not None:
            env["FAKE_WORKER_FAIL"] = str(fail)
        self.log = tmp / "supervisor.log"
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(tmp / "supervisor.py"), json.dumps(opts)], stderr=logf, env=env
            )

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.out.glob("*.pid") if p.read_text()}

    def wait_for(self, what: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; supervisor log:\n{self.log.read_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids().values():  # only the stand-in workers this run started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except OSError:
        return False


@pytest.fixture()
def run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(count: int = 2, fail: int | None = None) -> Run:
        r = Run(tmp_path, count, fail)
        runs.append(r)
        return r

    yield start
    for r in runs:
        r.close()


def test_killed_worker_is_restarted_under_a_new_node_id_and_sigterm_stops_all(
    run: Callable[..., Run],
) -> None:
    r = run(count=2)
    r.wait_for(lambda: set(r.pids()) == {"n-w1", "n-w2"})
    first = r.pids()
    os.kill(first["n-w2"], signal.SIGKILL)
    r.wait_for(lambda: "n-w2-r1" in r.pids())
    assert alive(first["n-w1"]), "the other worker was left alone"
    assert "worker 2 (node n-w2) ended (signal SIGKILL)" in r.log.read_text()
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(15) == 0
    # forwarded: both live workers stopped by their own SIGTERM handler, none killed
    assert (r.out / "n-w1.stopped").read_text() == "SIGTERM"
    assert (r.out / "n-w2-r1.stopped").read_text() == "SIGTERM"
    assert not (r.out / "n-w2.stopped").exists()  # the SIGKILLed one never got to run a handler


def test_sigint_is_forwarded(run: Callable[..., Run]) -> None:
    r = run(count=2)
    r.wait_for(lambda: len(r.pids()) == 2)
    r.proc.send_signal(signal.SIGINT)
    assert r.proc.wait(15) == 0
    assert {(r.out / f"{n}.stopped").read_text() for n in ("n-w1", "n-w2")} == {"SIGINT"}


def test_gives_up_with_the_workers_exit_code_when_workers_keep_failing_at_start(
    run: Callable[..., Run],
) -> None:
    r = run(count=2, fail=3)
    assert r.proc.wait(30) == 3
    log = r.log.read_text()
    assert "failed 3 times in a row" in log and "giving up" in log
    assert {"n-w1", "n-w1-r1", "n-w1-r2"} <= set(r.pids())  # 3 starts, then no fourth
    assert "n-w1-r3" not in r.pids()


def test_workers_do_not_outlive_a_killed_supervisor(run: Callable[..., Run]) -> None:
    r = run(count=2)
    r.wait_for(lambda: len(r.pids()) == 2)
    pids = list(r.pids().values())
    r.proc.kill()
    r.proc.wait(10)
    r.wait_for(lambda: not any(alive(p) for p in pids), timeout=10)


def test_restart_delay_backs_off_exponentially_up_to_the_cap() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(20) == 30.0
    assert restart_delay(3, maximum=1.5) == 1.5


def test_node_ids() -> None:
    assert worker_node_id("api-1", 2) == "api-1-w2"
    assert worker_node_id("api-1", 2, restarts=3) == "api-1-w2-r3"


def test_worker_env_carries_every_setting_including_flags() -> None:
    """A worker rebuilt from its environment has the supervisor's configuration (flags included)."""
    cfg = Config.from_env(
        {"RELAY_REDIS_URL": "redis://127.0.0.1:6390/0", "RELAY_WORKERS": "4", "RELAY_COMPRESSION": "true"},
        database_url="postgresql://u@127.0.0.1:5999/db",
        jwt_secret="s" * 40,
        port=4123,
        log_level="DEBUG",
    )
    env = worker_env(cfg, "api-w3", base={"RELAY_METRICS_TOKEN": "stale", "PATH": "/bin"})
    assert env["PATH"] == "/bin" and "RELAY_METRICS_TOKEN" not in env  # unset in cfg: not inherited
    again = Config.from_env(env)
    assert again == replace(cfg, workers=1, node_id="api-w3")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--workers", "2"], {}, "RELAY_WORKERS > 1 needs RELAY_REDIS_URL"),
        ([], {"RELAY_WORKERS": "3"}, "RELAY_WORKERS > 1 needs RELAY_REDIS_URL"),
        (
            ["--workers", "0"],
            {"RELAY_REDIS_URL": "redis://127.0.0.1:1/0"},
            "RELAY_WORKERS must be at least 1",
        ),
    ],
)
def test_serve_refuses_workers_without_redis_before_touching_anything(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Workers share one change log and their rooms through Redis: without it, exit 2 with the reason."""
    from relay.cli import main

    for var in ("RELAY_REDIS_URL", "RELAY_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    code = main(["serve", "--database-url", "postgresql://u@127.0.0.1:1/db", "--jwt-secret", "s" * 40, *argv])
    assert code == 2
    assert message in capsys.readouterr().err
