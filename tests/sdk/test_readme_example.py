"""The backend example of client_sdk/README.md runs as pasted against a real relay.

Why a subprocess, verbatim: an example that does not run is worse than none.  The previous
version of this test exec'd the block with its free names (``fetch_service_token``, ``handle``,
``reload_alerts``) supplied by the test, so a reader who pasted it got a ``NameError`` while the
test stayed green.  Now the first ``python`` block is written to a file unchanged and run with
``python example.py``; the only inputs are the environment variables the README names
(``RELAY_URL``, ``RELAY_TOKEN``), and what it prints is what the test checks.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.sdk.helpers import insert_alerts, until, url
from tests.support.relay import running_relay, token

pytestmark = pytest.mark.pg

README = Path(__file__).resolve().parents[2] / "client_sdk" / "README.md"


def example() -> str:
    """The README's first ``python`` block, exactly as a reader would copy it."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = str(blocks[0])
    lines = [ln for ln in code.splitlines() if ln.strip()]
    title = re.search(r"## A backend service in (\d+) lines", README.read_text())
    assert title is not None and len(lines) == int(title.group(1)), "the title counts the lines"
    return code


def live_example() -> str:
    """The block under "A live table in N lines", exactly as a reader would copy it."""
    text = README.read_text()
    found = re.search(r"## A live table in (\d+) lines\n\n```python\n(.*?)```", text, re.S)
    assert found is not None, "the README has a live table example"
    code = str(found.group(2))
    assert len([ln for ln in code.splitlines() if ln.strip()]) == int(found.group(1)), "the title counts"
    return code


@pytest.mark.parametrize("block", [example, live_example])
def test_readme_example_names_nothing_undefined(block: Any) -> None:
    """Every name the block reads is imported, defined or a builtin (no test-supplied names)."""
    tree = ast.parse(block())
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert loaded <= bound, f"undefined in the README example: {sorted(loaded - bound)}"


async def test_readme_backend_example_runs_as_pasted(pg_dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example())
    out_path = tmp_path / "out.txt"
    async with running_relay(pg_dsn) as relay:
        env = {**os.environ, "RELAY_URL": url(relay.port), "RELAY_TOKEN": token()}
        with out_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
            )
        try:
            await until(lambda: any(c.channels for c in relay.server.connections), 15, "joined")
            rows = await asyncio.to_thread(insert_alerts, pg_dsn, 3)

            def printed() -> list[tuple[str, int]]:
                got = []
                # complete lines only: the example may be writing the next one right now
                for line in out_path.read_text().split("\n")[:-1]:
                    kind, _, record = line.partition(" ")
                    if kind in ("INSERT", "UPDATE", "DELETE"):
                        got.append((kind, int(ast.literal_eval(record)["id"])))
                return got

            await until(lambda: len(printed()) >= 3, 15, "the example to print the rows")
            assert proc.returncode is None, out_path.read_text()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    assert printed() == [("INSERT", i) for i in rows], out_path.read_text()


ROW_LINE = re.compile(r"^\((\d+),\) (None|\{.*\}) (None|\{.*\})$")


async def test_readme_live_table_example_runs_as_pasted(pg_dsn: str, tmp_path: Path) -> None:
    """The live table example prints the snapshot's rows, then each change, as ``key old new``."""
    script = tmp_path / "live.py"
    script.write_text(live_example())
    out_path = tmp_path / "out.txt"
    async with running_relay(pg_dsn) as relay:
        before = await asyncio.to_thread(insert_alerts, pg_dsn, 3)
        count = await asyncio.to_thread(_count_alerts, pg_dsn)
        env = {**os.environ, "RELAY_URL": url(relay.port), "RELAY_TOKEN": token(), "PYTHONUNBUFFERED": "1"}
        with out_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
            )

        def lines() -> list[str]:
            return out_path.read_text().split("\n")[:-1]  # complete lines only

        try:
            try:
                await until(lambda: any(ln.startswith("ready:") for ln in lines()), 30, "the snapshot")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the example printed:\n{out_path.read_text()}") from None
            ready = next(ln for ln in lines() if ln.startswith("ready:"))
            assert ready == f"ready: {count} alerts", out_path.read_text()
            snapshot = [ROW_LINE.match(ln) for ln in lines()[: lines().index(ready)]]
            assert all(m is not None and m.group(2) == "None" for m in snapshot), out_path.read_text()
            keys = {int(m.group(1)) for m in snapshot if m is not None}
            assert len(keys) == count and set(before) <= keys
            after = await asyncio.to_thread(insert_alerts, pg_dsn, 2)
            await asyncio.to_thread(
                _exec, pg_dsn, "update alerts set title = 'changed' where id = %s", before[0]
            )
            await asyncio.to_thread(_exec, pg_dsn, "delete from alerts where id = %s", before[1])

            def changes() -> list[tuple[int, Any, Any]]:
                got = []
                for ln in lines()[len(snapshot) + 1 :]:
                    m = ROW_LINE.match(ln)
                    assert m is not None, ln
                    old, new = (None if g == "None" else ast.literal_eval(g) for g in m.group(2, 3))
                    got.append((int(m.group(1)), old, new))
                return got

            await until(lambda: len(changes()) >= 4, 15, "the example to print the changes")
            assert proc.returncode is None, out_path.read_text()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    got = changes()
    assert [(k, old is None, new is None) for k, old, new in got] == [
        (after[0], True, False),
        (after[1], True, False),
        (before[0], False, False),
        (before[1], False, True),
    ], out_path.read_text()
    assert got[2][2]["title"] == "changed" and got[2][1]["title"] != "changed"


def _count_alerts(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select count(*) from alerts").fetchone()
        assert row is not None
        return int(row[0])


def _exec(dsn: str, sql: str, *args: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, args)
