"""One anonymous socket tracking big presence metas on many channels: relay RSS growth.

Not part of CI.  Run from the repository root::

    python bench/presence_memory.py [--channels 400] [--meta-kib 200] [--env RELAY_X=...]

Why: issue 12 item 5 measured one anon socket tracking a 200 kB meta on 400 channels growing
the relay by 141 MiB.  Presence is now bounded per socket (``RELAY_MAX_SOCKET_PRESENCES``,
``RELAY_MAX_SOCKET_PRESENCE_BYTES``) and per room; this runs ``relay serve`` as a user would
(a subprocess, so its VmRSS is its own), joins ``--channels`` channels on one socket, tracks a
``--meta-kib`` meta on each, and prints how many tracks were accepted or refused (by code) and
the relay's VmRSS before and after.  Pass ``--env RELAY_MAX_SOCKET_PRESENCE_BYTES=1000000000
--env RELAY_MAX_SOCKET_PRESENCES=100000`` to see the unbounded growth for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the relay helpers live in the test support package
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from relay.core.tokens import mint  # noqa: E402
from relay.postgres.cluster import LocalCluster  # noqa: E402
from tests.support.large_tx import SECRET, prepare_table, relay_serve, status_kib  # noqa: E402


async def hostile_socket(
    port: int, pid: int, channels: int, meta_kib: int
) -> tuple[collections.Counter[str], int]:
    """Join ``channels`` rooms on one anon socket and track a big meta on each.

    Returns the replies counted by outcome and the relay's VmRSS (KiB) while the socket still
    holds what was accepted.
    """
    outcome: collections.Counter[str] = collections.Counter()
    meta = {"blob": "x" * (meta_kib * 1000)}
    params = {"apikey": mint(SECRET, role="anon"), "vsn": "1.0.0"}
    url = f"http://127.0.0.1:{port}/realtime/v1/websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, params=params) as ws:

        async def push(topic: str, event: str, payload: object, ref: str) -> dict[str, object]:
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": ref}
            await ws.send_str(orjson.dumps(frame).decode())
            while True:
                msg = await ws.receive(timeout=30)
                obj = orjson.loads(msg.data)
                if obj["event"] == "phx_reply" and obj["ref"] == ref:
                    return dict(obj["payload"])

        for i in range(channels):
            topic = f"realtime:mem-{i}"
            joined = await push(topic, "phx_join", {"config": {"presence": {"key": f"k{i}"}}}, f"j{i}")
            if joined["status"] != "ok":
                outcome[f"join refused: {joined}"] += 1
                continue
            reply = await push(
                topic, "presence", {"type": "presence", "event": "track", "payload": meta}, f"t{i}"
            )
            response = reply.get("response")
            code = response.get("code", "?") if isinstance(response, dict) else "?"
            outcome["ok" if reply["status"] == "ok" else f"refused ({code})"] += 1
        await asyncio.sleep(0.5)  # let the relay settle, then measure while the presence is held
        held = status_kib(pid, "VmRSS") or 0
    return outcome, held


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=400, help="channels joined on the one socket")
    ap.add_argument("--meta-kib", type=int, default=200, help="size of each tracked meta (kB)")
    ap.add_argument("--env", action="append", default=[], help="RELAY_X=value for the relay (repeatable)")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    with LocalCluster() as pg:
        dsn = pg.dsn()
        prepare_table(dsn)  # migrations and one enabled table: what preflight asks of a relay
        assert pg.base_dir is not None
        with relay_serve(dsn, pg.base_dir / "relay.log", env, slot="bench_presence_memory") as (proc, port):
            before = status_kib(proc.pid, "VmRSS") or 0
            outcome, held = asyncio.run(hostile_socket(port, proc.pid, args.channels, args.meta_kib))
            hwm = status_kib(proc.pid, "VmHWM") or 0
    print(f"one anon socket, {args.channels} channels, a {args.meta_kib} kB meta tracked on each")
    print(f"relay env              : {env or '(defaults)'}")
    print(f"tracks                 : {dict(outcome)}")
    print(
        f"relay VmRSS            : {before / 1024:.1f} MiB before, {held / 1024:.1f} MiB with the socket's "
        f"presence held (growth {(held - before) / 1024:.1f} MiB; VmHWM {hwm / 1024:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
