"""A real, throwaway ``redis-server`` for the cluster-mode tests (issue 17).

Why a process of our own rather than a shared server: the cluster tests restart and kill Redis
(to check what a relay does when its change log disappears), so every test gets its own server on
a free loopback port, in its own directory, stopped by PID afterwards.  Starting one takes a few
milliseconds.

With ``CI`` set, a missing ``redis-server`` binary or a server that does not come up is a test
*failure*, never a skip: a green CI run must not mean "skipped everything that needs Redis".
``make test`` installs Debian's ``redis-server`` package (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "provide_redis", "redis_binary"]


def redis_binary() -> str | None:
    """Path of ``redis-server`` (PATH first, then Debian's location), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    debian = Path("/usr/bin/redis-server")
    return str(debian) if debian.exists() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(msg: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, restartable on the same port and directory.

    ``appendonly`` chooses the persistence the cluster docs recommend (AOF with ``fsync
    everysec``); without it the server keeps nothing across a restart, which is how the tests
    show that a relay notices a Redis that lost its data.
    """

    def __init__(self, *, appendonly: bool = True, port: int | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            _unavailable("redis-server is not installed (make test installs Debian's redis-server)")
            raise AssertionError("unreachable")
        self.binary = binary
        self.appendonly = appendonly
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (again) and wait until it answers PING."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                code = self.proc.returncode
                _unavailable(f"redis-server exited at start ({code}): {err[-500:]} {self.log()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        _unavailable(f"redis-server did not answer PING within {timeout} s: {self.log()}")
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        """True when the server answers ``PING`` with ``+PONG`` (plain RESP, no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis writes its AOF and exits), then wait; SIGKILL if it does not exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash; what was not yet fsynced to the AOF is lost."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def provide_redis(*, appendonly: bool = True) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, killed and removed afterwards."""
    server = RedisServer(appendonly=appendonly)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
