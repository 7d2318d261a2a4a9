"""A throwaway local Postgres cluster with ``wal_level=logical``.

Why: the relay's README promises one command that works with no database at all, and the test
suite must run where no Docker engine exists.  Both need a real Postgres that the project starts
and stops itself.  ``initdb`` refuses to run as root, so when we are root the cluster is created
and run as the unprivileged ``postgres`` system user (or ``nobody`` as a last resort).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClusterError", "LocalCluster", "find_pg_bin", "free_port"]


class ClusterError(RuntimeError):
    """Raised when a local cluster cannot be created or started; the message says what to do."""


def find_pg_bin() -> Path:
    """Locate the directory holding ``initdb`` and ``postgres``.

    Debian keeps the server binaries under ``/usr/lib/postgresql/<ver>/bin`` and only puts
    wrappers on the PATH, so we look there first (newest version wins).
    """
    env = os.environ.get("RELAY_PG_BIN")
    if env:
        return Path(env)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for cand in candidates:
        if (cand / "initdb").exists() and (cand / "postgres").exists():
            return cand
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries not found. Install them (Debian: "
        "`apt-get install postgresql-15 postgresql-15-wal2json`) or set RELAY_DATABASE_URL."
    )


def _version_key(p: Path) -> float:
    try:
        return float(p.parent.name)
    except ValueError:
        return 0.0


def free_port() -> int:
    """Ask the kernel for a free loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run Postgres as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ClusterError("running as root and no unprivileged 'postgres' or 'nobody' user exists")


@dataclass
class LocalCluster:
    """A Postgres cluster in a temporary directory, listening on loopback only.

    Use as a context manager or call :meth:`start` / :meth:`stop`.  ``fsync`` is off because the
    data is thrown away; everything else is a normal cluster with logical decoding enabled.
    """

    port: int = 0
    base_dir: Path | None = None
    superuser: str = "postgres"
    extra_conf: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    data_dir: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _owned_base: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
            self._owned_base = True
        self.data_dir = self.base_dir / "data"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LocalCluster:
        """initdb (once) and start the server; returns when it accepts connections."""
        bindir = find_pg_bin()
        user = _run_as_user()
        assert self.base_dir is not None
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chmod(self.base_dir, 0o755)
            os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                user,
            )
            self._write_conf()
        log = self.base_dir / "postgres.log"
        cmd = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        logf = open(log, "ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                start_new_session=True,
            )
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ClusterError(f"postgres exited at start-up; log:\n{self.log_tail()}")
            if self._accepts_connections():
                return self
            time.sleep(0.1)
        self.stop()
        raise ClusterError(f"postgres did not accept connections in {timeout}s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Fast shutdown of the server this object started, then remove the directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnects clients, no waiting
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._owned_base and not self.keep and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self) -> None:
        """Crash the server (SIGKILL to postmaster and backends) keeping data: for fault tests."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)  # own session: the group is ours alone
            self._proc.wait(timeout=10)
        self._proc = None

    def shutdown(self, mode: str = "fast", timeout: float = 60.0) -> float:
        """``pg_ctl stop -m <mode>`` keeping the data (for restart tests); returns the seconds taken.

        Raises :class:`ClusterError` if the server is still up after ``timeout``: the caller
        learns that the shutdown was blocked (it then still has to stop the server).
        """
        user = _run_as_user()
        t0 = time.monotonic()
        try:
            self._run(
                [
                    str(find_pg_bin() / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-t",
                    str(int(timeout)),
                ],
                user,
            )
        except ClusterError as exc:
            raise ClusterError(f"pg_ctl stop -m {mode} did not finish in {timeout}s: {exc}") from exc
        elapsed = time.monotonic() - t0
        if self._proc is not None:
            self._proc.wait(timeout=10)  # reap the postmaster pg_ctl stopped
            self._proc = None
        return elapsed

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- connection info ------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self, lines: int = 40) -> str:
        assert self.base_dir is not None
        try:
            text = (self.base_dir / "postgres.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------------------
    def _write_conf(self) -> None:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "fsync": "off",
            "synchronous_commit": "on",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "timezone": "'UTC'",
        }
        conf.update(self.extra_conf)
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# added by relay LocalCluster\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def _accepts_connections(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
            import psycopg

            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("select 1")
                return True
            except psycopg.OperationalError:
                return False
        return False

    @staticmethod
    def _run(cmd: list[str], user: pwd.struct_passwd | None) -> None:
        res = subprocess.run(
            cmd,
            capture_output=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            cwd="/",
        )
        if res.returncode != 0:
            raise ClusterError(
                f"{Path(cmd[0]).name} failed ({res.returncode}):\n"
                + res.stdout.decode(errors="replace")
                + res.stderr.decode(errors="replace")
            )


@contextlib.contextmanager
def local_cluster(**kwargs: object) -> Iterator[LocalCluster]:
    """``with local_cluster() as pg: ...`` convenience wrapper."""
    cluster = LocalCluster(**kwargs)  # type: ignore[arg-type]
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
