"""``relay serve`` as a subprocess on a loopback port, and waiting until it streams.

Shared by the chaos scenario (tests/support/resume_client.py, which kills and restarts it) and
the large-transaction scenario (tests/support/large_tx.py, which measures its memory): in both
the relay must be a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[2]


def relay_env(
    dsn: str, port: int, secret: str, slot: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment plus the relay's settings (``extra`` last, so it wins)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RELAY_DATABASE_URL": dsn,
        "RELAY_JWT_SECRET": secret,
        "RELAY_PORT": str(port),
        "RELAY_SLOT": slot,
        **(extra or {}),
    }


def spawn_relay(env: Mapping[str, str], logf: IO[bytes], *args: str) -> subprocess.Popen[bytes]:
    """``python -m relay serve *args``, output to a file (a pipe nobody reads would stall it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", *args],
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=ROOT,
    )


def log_tail(log_path: Path, lines: int = 60) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no relay log)"
    return "\n".join(text.splitlines()[-lines:])


async def health(session: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    """The relay's /health body, or None if it does not answer (yet)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/health") as resp:
            body = await resp.read()
            out = orjson.loads(body)
            return out if isinstance(out, dict) else None
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
        return None


async def wait_streaming(
    port: int,
    proc: subprocess.Popen[bytes] | None,
    log: Callable[[], str],
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Until /health says the replication stream runs; fails early if the process died."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"relay exited with {proc.returncode}:\n{await asyncio.to_thread(log)}")
            h = await health(session, port)
            if h is not None and h.get("status") == "ok":
                return h
            await asyncio.sleep(0.1)
    raise TimeoutError(f"relay not streaming after {timeout}s:\n{await asyncio.to_thread(log)}")
