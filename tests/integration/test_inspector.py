"""The /inspector page in a real browser (Debian's headless Chromium driven by playwright), and
the vendored realtime-js bundle it runs on.

The browser test asserts what an operator sees: the connection indicator turns "connected",
the live counts fill in, the table picker lists the publication, and a row inserted in Postgres
(matching the filter field) appears in the changes table while a non-matching one does not.  A
screenshot is saved under tests/artifacts/ (gitignored).  With CI set, a missing Chromium or
playwright fails the test instead of skipping it (as node does for the realtime-js interop).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.interop.helpers import insert_booking
from tests.support.relay import running_relay, token

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "relay" / "server" / "static"
JS_DIR = ROOT / "tests" / "interop" / "js"
ARTIFACTS = ROOT / "tests" / "artifacts"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the inspector browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _unavailable("chromium is not installed (scripts/install-system-deps.sh installs it)")
        raise AssertionError("unreachable")
    return path


def _locked_realtime_js() -> str:
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/@supabase/realtime-js"]["version"])


def test_vendored_realtime_js_is_the_locked_version() -> None:
    first = (STATIC / "realtime-js.js").read_text().splitlines()[0]
    assert first.startswith(f"// @supabase/realtime-js {_locked_realtime_js()} (MIT"), first
    text = (STATIC / "realtime-js.js").read_text()
    assert "RealtimeClient" in text and "Permission is hereby granted" in text  # the license travels


def test_vendor_script_rebuilds_the_bundle_byte_for_byte(tmp_path: Path) -> None:
    if not (JS_DIR / "node_modules" / ".bin" / "esbuild").exists() or shutil.which("node") is None:
        _unavailable("node_modules without esbuild: run `make js`")
    out = tmp_path / "realtime-js.js"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "vendor-realtime-js.sh"), str(out)], check=True, timeout=120, cwd=ROOT
    )
    assert out.read_bytes() == (STATIC / "realtime-js.js").read_bytes(), "run scripts/vendor-realtime-js.sh"


@pytest.mark.pg
async def test_inspector_tables_need_a_service_role_token(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{relay.port}"
        async with http.get(f"{base}/inspector") as res:
            assert res.status == 200 and "script-src 'self'" in res.headers["Content-Security-Policy"]
            assert 'src="inspector/inspector.js"' in await res.text()
        async with http.get(f"{base}/inspector/realtime-js.js") as res:
            assert res.status == 200 and res.content_type == "text/javascript"
        async with http.get(f"{base}/inspector/tables") as res:
            assert res.status == 401
        headers = {"Authorization": f"Bearer {token(role='authenticated', sub='u1')}"}
        async with http.get(f"{base}/inspector/tables", headers=headers) as res:
            assert res.status == 403
        async with http.get(
            f"{base}/inspector/tables", headers={"Authorization": f"Bearer {token()}"}
        ) as res:
            assert res.status == 200 and "public.bookings" in (await res.json())["tables"]


@pytest.mark.pg
async def test_inspector_shows_a_row_inserted_in_postgres(pg_dsn: str) -> None:
    chromium = _chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
        raise AssertionError("unreachable") from None
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    async with running_relay(pg_dsn) as relay, async_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            def console(msg: Any) -> None:
                if msg.type == "error":
                    problems.append(f"console: {msg.text}")

            def response(r: Any) -> None:
                if r.status >= 400:
                    problems.append(f"HTTP {r.status} {r.url}")

            page.on("console", console)
            page.on("response", response)
            url = f"http://127.0.0.1:{relay.port}/inspector#token={token()}&table=public.bookings"
            await page.goto(url)
            await page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
            assert "token=" not in page.url  # the token left the address bar
            # (no wait_for_function: the page's CSP rightly forbids the eval it uses)
            await page.wait_for_selector("#tables option", state="attached", timeout=10_000)
            await page.fill("#filter", "branch_id=eq.2")
            await page.click("#subscribe")
            await page.wait_for_selector('#channel-status[data-status="SUBSCRIBED"]', timeout=10_000)
            skipped = await insert_booking(pg_dsn, branch=1)  # filtered out
            shown = await insert_booking(pg_dsn, branch=2)
            row = await page.wait_for_selector(f'#changes tr[data-type="INSERT"]:has-text(\'"id":{shown},\')')
            assert row is not None
            assert '"branch_id":2' in (await row.inner_text())
            for _ in range(100):  # the counts poll /health every second
                if (await page.text_content("#count-changes") or "-").isdigit() and int(
                    await page.text_content("#count-changes") or 0
                ) >= 2:
                    break
                await asyncio.sleep(0.1)
            assert int(await page.text_content("#count-changes") or 0) >= 2
            await asyncio.sleep(0.3)  # anything else (the filtered row) would have arrived by now
            texts = await page.locator("#changes tr").all_inner_texts()
            assert len(texts) == 1 and f'"id":{skipped},' not in texts[0], texts
            assert await page.text_content("#count-connections") == "1"
            await page.screenshot(path=str(ARTIFACTS / "inspector.png"), full_page=True)
        finally:
            await browser.close()
    assert problems == []
