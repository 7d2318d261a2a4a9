"""The built wheel alone can migrate a database (issue 11 item 13).

Why a real wheel in a fresh venv: the source checkout (and the editable install of the dev venv)
always has the SQL next to the code, so only a wheel installed where the repository is out of
reach proves the migrations ship as package data and are found through importlib.resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_relay_migrate_from_a_venv_with_only_the_wheel(tmp_path: Path, pg_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PYTHON", "VIRTUAL_ENV"))}
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(wheels)],
        tmp_path,
        env,
        300,
    )
    (wheel,) = wheels.glob("pg_change_relay-*.whl")
    venv = tmp_path / "venv"
    # The base interpreter, not the dev venv's, so nothing of the checkout is importable.
    # Without pip of its own (ensurepip costs seconds): the dev venv's pip installs into it
    # (`--python`), the wheel and its declared dependencies, and pip itself is never imported
    # by the venv's interpreter, so what `relay` finds there is the wheel's content only.
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(venv)], tmp_path, env, 120)
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    _run([*pip, "install", "-q", str(wheel)], tmp_path, env, 600)
    # cwd outside the repository: `relay` must come from site-packages, SQL included.
    where = _run([str(py), "-c", "import relay; print(relay.__file__)"], tmp_path, env, 60).stdout
    assert str(venv) in where and str(REPO) not in where
    proc = _run([str(venv / "bin" / "relay"), "migrate", "--database-url", pg_dsn], tmp_path, env, 120)
    assert "0001_realtime_schema.sql" in proc.stdout + proc.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select to_regprocedure('realtime.enable_table(regclass)') is not null, "
            "(select count(*) from realtime.schema_migrations)"
        ).fetchone()
    assert row is not None and row[0] is True
    assert row[1] == len(list((REPO / "relay" / "sql" / "migrations").glob("*.sql")))
