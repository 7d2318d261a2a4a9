"""The 10-line backend example of client_sdk/README.md runs as written against a real relay.

Why: an example that does not run is worse than none.  The first ``python`` block of the README
is executed with its free names (``fetch_service_token``, ``handle``, ``reload_alerts``) supplied,
minus the final ``asyncio.run``; the test runs ``main()`` until the rows it inserts arrive.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.sdk.helpers import insert_alerts, until, url
from tests.support.relay import running_relay, token

pytestmark = pytest.mark.pg

README = Path(__file__).resolve().parents[2] / "client_sdk" / "README.md"


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = blocks[0]
    lines = [ln for ln in code.splitlines() if ln.strip()]
    assert len(lines) <= 10, f"the README example grew to {len(lines)} lines"
    assert lines[-1] == "asyncio.run(main())"
    return "\n".join(code.splitlines()[:-1])


async def test_readme_backend_example_runs(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    handled: list[tuple[Any, ...]] = []

    async def fetch_service_token() -> str:
        return token()

    async def handle(*args: Any) -> None:
        handled.append(args)

    async def reload_alerts() -> None:
        raise AssertionError("no resync expected")

    async with running_relay(pg_dsn) as relay:
        monkeypatch.setitem(os.environ, "RELAY_URL", url(relay.port))
        namespace: dict[str, Any] = {
            "fetch_service_token": fetch_service_token,
            "handle": handle,
            "reload_alerts": reload_alerts,
        }
        exec(compile(example(), str(README), "exec"), namespace)
        service = asyncio.create_task(namespace["main"]())
        try:
            await until(lambda: any(c.channels for c in relay.server.connections), 10, "joined")
            rows = await asyncio.to_thread(insert_alerts, pg_dsn, 3)
            await until(lambda: len(handled) == 3, 10, "the example to handle the rows")
        finally:
            service.cancel()
            await asyncio.gather(service, return_exceptions=True)
        assert [(c.type, c.record["id"]) for (c,) in handled] == [("INSERT", i) for i in rows]
