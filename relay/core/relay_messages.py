"""The relay's logical messages: what the SQL side says to the relay through the WAL.

Why one module: the SQL functions (``realtime.enable_table``, the policy triggers,
``realtime.send``) emit ``pg_logical_emit_message('realtime', <json>)``; the pipeline and the
service used to each know part of the vocabulary (``op`` names as strings).  Here every message
is decoded once into a typed value, so the pipeline only asks "does this change the table set?"
and the server only dispatches on types.

Pure: JSON text in, dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "MESSAGE_PREFIX",
    "DatabaseBroadcast",
    "PolicyChanged",
    "RelayMessage",
    "SnapshotFence",
    "TableSetChanged",
    "TopicPolicyChanged",
    "decode_message",
]

#: The ``prefix`` of every logical message the relay reads (wal2json's ``add-msg-prefixes``).
MESSAGE_PREFIX: Final = "realtime"

_TABLE_OPS: Final = frozenset({"enable_table", "disable_table", "publication_changed"})


@dataclass(frozen=True, slots=True)
class TableSetChanged:
    """The publication's table set changed (``op``: enable_table, disable_table, publication_changed).

    The pipeline restarts its stream after the message's transaction, in commit order.
    """

    op: str


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """Row policies changed: the policy store reloads them."""


@dataclass(frozen=True, slots=True)
class TopicPolicyChanged:
    """Topic (broadcast/presence) policies changed; ``xid`` of the changing transaction if known."""

    xid: str | None


@dataclass(frozen=True, slots=True)
class DatabaseBroadcast:
    """``realtime.send``: a broadcast from SQL.  ``body`` is the message as emitted; ``commit_lsn``
    says where it sits in commit order among the row changes."""

    body: dict[str, Any]
    commit_lsn: int


@dataclass(frozen=True, slots=True)
class SnapshotFence:
    """A snapshot on join passed this point of the WAL (a message the relay commits right after
    taking its snapshot): every transaction committed before the snapshot was taken has been
    decoded by the time the stream reaches it.  ``id`` names the snapshot."""

    id: str


RelayMessage = TableSetChanged | PolicyChanged | TopicPolicyChanged | DatabaseBroadcast | SnapshotFence


def decode_message(content: str, commit_lsn: int) -> RelayMessage | None:
    """One logical message's content as a typed message; None for what the relay does not know.

    Unknown or malformed messages are ignored rather than refused: a newer migration may emit
    messages an older relay does not understand, and the stream must go on.
    """
    try:
        msg = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict):
        return None
    op = msg.get("op")
    if op in _TABLE_OPS:
        return TableSetChanged(str(op))
    if op == "policy_changed":
        return PolicyChanged()
    if op == "topic_policy_changed":
        xid = msg.get("xid")
        return TopicPolicyChanged(xid if isinstance(xid, str) else None)
    if op == "broadcast":
        return DatabaseBroadcast(msg, commit_lsn)
    if op == "snapshot_fence" and isinstance(msg.get("id"), str):
        return SnapshotFence(msg["id"])
    return None
