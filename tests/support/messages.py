"""Read the relay's logical messages (prefix ``realtime``) from a wal2json test slot."""

from __future__ import annotations

import json

import psycopg


def realtime_messages(dsn: str, slot: str, ops: tuple[str, ...]) -> list[dict[str, object]]:
    """Contents of the transactional ``realtime`` messages with one of ``ops``, consumed from ``slot``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select data from pg_logical_slot_get_changes(%s, null, null, "
            "'format-version', '2', 'add-msg-prefixes', 'realtime')",
            (slot,),
        ).fetchall()
    out: list[dict[str, object]] = []
    for (data,) in rows:
        msg = json.loads(str(data))
        if msg["action"] == "M":
            assert msg["prefix"] == "realtime"
            assert msg["transactional"] is True
            content = json.loads(msg["content"])
            if content["op"] in ops:
                out.append(content)
    return out
