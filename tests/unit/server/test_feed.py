"""The change feed without sockets: attach, fan out once in order, tx_end, detach.

Why here: the server layer had no unit test; the feed owns the rules that make delivery exactly
once and in order (cursors) and its bookkeeping must forget a channel everywhere when it goes.
A real :class:`Connection` is used, built without a socket (no transport: frames stay queued).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from relay.config import Config
from relay.core.changes import Action, Column, Commit, Lsn, RowChange
from relay.core.subscriptions import parse_bindings
from relay.core.tokens import Verifier
from relay.postgres.catalog import Catalog
from relay.server.app import RelayServer
from relay.server.channel import Channel
from relay.server.connection import Connection

CLAIMS: dict[str, Any] = {"role": "service_role", "exp": 4102444800}


def _server() -> RelayServer:
    cfg = Config(database_url="postgresql://127.0.0.1:1/none", jwt_secret="s" * 32)
    return RelayServer(cfg, Verifier(secret=cfg.jwt_secret), Catalog(cfg.database_url or ""))


def _change(lsn: int, index: int = 0, row_id: int = 1) -> RowChange:
    return RowChange(
        "public", "t", Action.INSERT, (Column("id", "int4"),), {"id": row_id}, None,
        "2026-01-01T00:00:00.000Z", Lsn(lsn), index,
    )  # fmt: skip


def _join(server: RelayServer, topic: str = "realtime:t", tx_end: bool = False) -> tuple[Connection, Channel]:
    conn = Connection(server.services, web.WebSocketResponse(), "1.0.0", CLAIMS, "peer")
    specs = parse_bindings([{"event": "*", "schema": "public", "table": "t"}])
    chan = Channel(conn, topic, "1", CLAIMS, specs)
    chan.tx_end = tx_end
    chan.cursor = server.feed.fresh_cursor()
    conn.channels[topic] = chan
    server.feed.attach(chan, [(s, None) for s in specs])
    return conn, chan


def _frames(conn: Connection) -> list[dict[str, Any]]:
    out = [orjson.loads(item) for item in conn.queue]
    conn.queue.clear()
    return out


def test_a_change_reaches_an_attached_channel_once_and_in_order() -> None:
    server = _server()
    feed = server.feed
    conn, chan = _join(server)
    assert feed.dispatch(_change(0x200, 0, 1)) is None  # decided in-process: queued on return
    assert feed.dispatch(_change(0x200, 1, 2)) is None
    assert feed.dispatch(_change(0x200, 1, 2)) is None  # the same position again: never twice
    assert feed.dispatch(_change(0x100, 0, 3)) is None  # behind the cursor: never delivered
    frames = _frames(conn)
    assert [f["payload"]["data"]["record"]["id"] for f in frames] == [1, 2]
    assert frames[1]["payload"]["data"]["position"] == feed.position(_change(0x200, 1).seq)
    assert chan.cursor == _change(0x200, 1).seq
    assert feed.changes_seen == 4 and feed.frames_queued == 2


def test_tx_end_follows_the_commit_of_the_transaction_it_closes() -> None:
    server = _server()
    conn, _ = _join(server, tx_end=True)
    server.feed.dispatch(_change(0x300, 0, 1))
    server.feed.dispatch(_change(0x300, 1, 2))
    server.feed.on_commit(Commit(Lsn(0x300), Lsn(0x310), "2026-01-01T00:00:00.000Z"))
    frames = _frames(conn)
    assert [f["event"] for f in frames] == ["postgres_changes", "postgres_changes", "tx_end"]
    assert frames[2]["payload"]["changes"] == 2 and frames[2]["payload"]["commit_lsn"] == "0/300"


def test_detach_forgets_the_channel_everywhere() -> None:
    server = _server()
    feed = server.feed
    conn, chan = _join(server, tx_end=True)
    feed.dispatch(_change(0x400, 0, 1))
    assert chan in feed.open_tx and len(feed.index) == 1
    feed.detach(chan)
    assert chan not in feed.channels and chan not in feed.open_tx and len(feed.index) == 0
    _frames(conn)
    feed.dispatch(_change(0x500, 0, 2))
    assert _frames(conn) == []


def test_closing_a_channel_detaches_it_and_says_phx_close() -> None:
    server = _server()
    conn, chan = _join(server)
    conn.close_channel(chan)
    assert chan.closed and chan not in server.feed.channels and "realtime:t" not in conn.channels
    assert [f["event"] for f in _frames(conn)] == ["phx_close"]
