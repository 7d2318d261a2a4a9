"""Static checks of the SDK as tests: ruff and mypy --strict over client_sdk/ (and its test support).

Why here: tests/test_lint.py checks relay/, tests/ and bench/ with the repo's mypy config, whose
``packages`` cannot name the SDK (it is imported as ``relay_client`` from client_sdk/, a separate
distribution).  This runs the same tools with the SDK's own config (client_sdk/pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "client_sdk"


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return found


@pytest.mark.parametrize(
    "args",
    [
        ["check", "client_sdk", "tests/sdk", "tests/support/tcp_proxy.py"],
        ["format", "--check", "client_sdk", "tests/sdk", "tests/support/tcp_proxy.py"],
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(args: list[str]) -> None:
    res = subprocess.run([_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_sdk() -> None:
    res = subprocess.run([_tool("mypy")], cwd=SDK, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_sdk_tests_and_proxy() -> None:
    env = {**os.environ, "MYPYPATH": str(SDK)}
    res = subprocess.run(
        [_tool("mypy"), "--strict", "--follow-imports=silent", "tests/support/tcp_proxy.py", "tests/sdk"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
