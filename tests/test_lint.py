"""Static checks as tests, so `make test` (and CI) keeps ruff and mypy --strict clean.

One place for everything: the relay, the client SDK (a separate distribution under client_sdk/),
the tests and the benchmarks. What mypy checks is configured in pyproject.toml (``files``), so
``make lint``, an editor and this test all check the same set.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["relay", "client_sdk", "tests", "bench"]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return found


@pytest.mark.parametrize(
    "args", [["check", *CHECKED], ["format", "--check", *CHECKED]], ids=["ruff-check", "ruff-format"]
)
def test_ruff(args: list[str]) -> None:
    res = subprocess.run([_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_covers_everything_checked() -> None:
    """The mypy configuration names every checked tree, so none silently drops out of the run."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    files = config["files"]
    assert [f for f in files if f != "client_sdk/relay_client"] == [c for c in CHECKED if c != "client_sdk"]
    assert "client_sdk/relay_client" in files


def test_mypy_strict() -> None:
    res = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
