"""The vsn 2.0.0 user-broadcast frames, built and read exactly as realtime-js does (lib/serializer.js).

Independent of relay/core/protocol.py on purpose: tests check the relay against the client's
format, not against itself.
"""

from __future__ import annotations


def kind3(
    join_ref: str, ref: str, topic: str, event: str, payload: bytes, encoding: int = 1, meta: str = ""
) -> bytes:
    """A client-to-server user broadcast push (``_encodeUserBroadcastPush``)."""
    head = bytes((3, len(join_ref), len(ref), len(topic), len(event), len(meta), encoding))
    return head + (join_ref + ref + topic + event + meta).encode() + payload


def split_kind4(data: bytes) -> tuple[str, str, str, int, bytes]:
    """A server-to-client user broadcast (``_decodeUserBroadcast``): topic, event, meta, encoding, payload."""
    if not data or data[0] != 4:
        raise AssertionError(f"expected a kind 4 user broadcast, got {data[:8]!r}")
    t, e, m, enc = data[1], data[2], data[3], data[4]
    pos = 5
    topic = data[pos : pos + t].decode()
    pos += t
    event = data[pos : pos + e].decode()
    pos += e
    meta = data[pos : pos + m].decode()
    pos += m
    return topic, event, meta, enc, bytes(data[pos:])
