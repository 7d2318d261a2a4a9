"""User broadcasts: what one member sends to the others of a topic, in each wire form.

Why pure: a broadcast arrives in four shapes (a vsn 1.0.0 object, a vsn 2.0.0 array, a binary
kind 3 frame, a ``realtime.send`` message from the WAL, or the REST endpoint) and leaves in three
(vsn 1.0.0 text, vsn 2.0.0 text, binary kind 4).  Parsing and encoding here are deterministic and
tested without sockets; :class:`BroadcastFrames` encodes each form once per message, however many
members receive it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any

import orjson

from relay.core.errors import Code, RelayError
from relay.core.payload_limits import PayloadLimits, check_depth, check_json, check_size
from relay.core.protocol import (
    BINARY_ENCODING,
    JSON_ENCODING,
    BinaryPush,
    dumps,
    encode_push_prefix,
    encode_user_broadcast,
    ws_binary_frame,
    ws_text_frame,
)

__all__ = [
    "Broadcast",
    "BroadcastError",
    "BroadcastFrames",
    "checked",
    "db_message_time",
    "event_name",
    "from_binary",
    "from_db_message",
    "from_push",
]


class BroadcastError(RelayError, ValueError):
    """A broadcast that cannot be sent; ``str()`` is safe to show the sender."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_BROADCAST, message)

    @property
    def reason(self) -> str:
        return f"invalid broadcast: {self}"


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One user message.  ``raw`` is the payload's bytes when they arrived as bytes (kind 3)."""

    event: str
    value: Any = None  # the JSON payload (None for an opaque binary payload)
    raw: bytes | None = None
    encoding: int = JSON_ENCODING
    # Supabase's ``meta`` for database broadcasts: ``{"id": <uuid>}``, plus ``"replayed": true``
    # when sent again to a channel that joined with ``broadcast.replay``.
    meta: dict[str, Any] | None = None

    @property
    def is_binary(self) -> bool:
        return self.encoding == BINARY_ENCODING

    def json_bytes(self) -> bytes:
        """The payload as JSON bytes (binary payloads as ``{"base64": ...}``)."""
        if self.encoding == JSON_ENCODING:
            return self.raw if self.raw is not None else dumps(self.value)
        return dumps(self._binary_as_json())

    def text_payload(self) -> dict[str, Any]:
        """The ``broadcast`` event payload for text clients.

        JSON cannot carry bytes, so a binary payload reaches text clients base64-encoded, with
        ``meta.encoding = "base64"`` saying so (vsn 2.0.0 clients get the bytes as they are).
        """
        if self.encoding == JSON_ENCODING:
            value = self.value if self.raw is None else orjson.Fragment(self.raw)
            out = {"type": "broadcast", "event": self.event, "payload": value}
            if self.meta:
                out["meta"] = self.meta
            return out
        return {
            "type": "broadcast",
            "event": self.event,
            "payload": self._binary_as_json(),
            "meta": {**(self.meta or {}), "encoding": "base64"},
        }

    def replayed(self) -> Broadcast:
        """The same message marked as a replay (``meta.replayed``), as Supabase marks them."""
        return replace(self, meta={**(self.meta or {}), "replayed": True})

    def size(self) -> int:
        """Approximate bytes held for this message (payload and event), for memory bounds."""
        return len(self.raw) if self.raw is not None else len(dumps(self.value)) + len(self.event)

    def _binary_as_json(self) -> dict[str, str]:
        return {"base64": base64.b64encode(self.raw or b"").decode()}


def event_name(v: Any) -> str:
    """A broadcast event name: non-empty, and short enough for the binary format's one-byte length."""
    if not isinstance(v, str) or not v:
        raise BroadcastError('a broadcast needs an "event" (a non-empty string)')
    if len(v.encode()) > 255:
        raise BroadcastError("broadcast event names are limited to 255 bytes")
    return v


def from_push(payload: Any) -> Broadcast:
    """A text ``broadcast`` push: ``{"type": "broadcast", "event": E, "payload": P}``."""
    if not isinstance(payload, dict):
        raise BroadcastError('a broadcast payload is an object {"type": "broadcast", "event", "payload"}')
    kind = payload.get("type", "broadcast")
    if kind != "broadcast":
        raise BroadcastError(f'a broadcast has "type": "broadcast", not {kind!r}')
    return Broadcast(event_name(payload.get("event")), payload.get("payload", {}))


def from_binary(push: BinaryPush) -> Broadcast:
    """A kind 3 push: the payload bytes pass through untouched (JSON was already checked)."""
    event = event_name(push.event)
    if push.encoding == JSON_ENCODING:
        return Broadcast(event, push.value, push.payload or b"{}", JSON_ENCODING)
    return Broadcast(event, None, push.payload, BINARY_ENCODING)


def from_db_message(msg: dict[str, Any]) -> tuple[str, bool, Broadcast]:
    """``realtime.send`` / ``send_binary``'s logical message: ``(channel name, private, message)``.

    Since migration 0010 the message carries Supabase's ``id`` (a uuid, sent as ``meta.id``);
    ``send_binary`` sends its bytes base64-encoded with ``"binary": true``, and they leave as
    binary again (kind 4 to vsn 2.0.0 clients, ``{"base64": ...}`` to text clients).
    """
    topic = msg.get("topic")
    if not isinstance(topic, str) or not topic:
        raise BroadcastError("realtime.send message without a topic")
    private = msg.get("private", True)
    if not isinstance(private, bool):
        raise BroadcastError("realtime.send message with a non-boolean private flag")
    mid = msg.get("id")
    meta = {"id": mid} if isinstance(mid, str) and mid else None
    event = event_name(msg.get("event"))
    payload = msg.get("payload")
    if msg.get("binary") is True:
        if not isinstance(payload, str):
            raise BroadcastError("realtime.send_binary message without base64 bytes")
        try:
            raw = base64.b64decode(payload, validate=True)
        except ValueError:
            raise BroadcastError("realtime.send_binary message with malformed base64") from None
        return topic.removeprefix("realtime:"), private, Broadcast(event, None, raw, BINARY_ENCODING, meta)
    return (
        topic.removeprefix("realtime:"),
        private,
        Broadcast(event, {} if payload is None else payload, meta=meta),
    )


def db_message_time(msg: dict[str, Any]) -> int | None:
    """When a database broadcast was sent (ms since the epoch), for ``broadcast.replay.since``."""
    ts = msg.get("ts")
    return int(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None


def checked(msg: Broadcast, limits: PayloadLimits) -> Broadcast:
    """``msg`` within ``limits`` (else :class:`~relay.core.payload_limits.PayloadRejected`).

    A JSON value is encoded here, once, and the bytes travel with the message: every form sent
    to members is built from them, so nothing can fail to encode after the sender was told ok.
    Bytes that arrived as bytes (kind 3, REST octet-stream) are measured as they are.
    """
    if msg.raw is not None:
        check_size(len(msg.raw), limits)
        if msg.encoding == JSON_ENCODING:
            check_depth(msg.value, limits)
        return msg
    return Broadcast(msg.event, msg.value, check_json(msg.value, limits), msg.encoding, msg.meta)


class BroadcastFrames:
    """Encode-once cache of one broadcast to one topic, per client form.

    ``get(vsn, framed)`` returns what a socket queues: ``str`` for a text message, ``bytes`` for
    a binary one (unframed, sent with ``send_bytes``), or complete WebSocket frame bytes when
    ``framed`` (the socket writes prebuilt frames to its transport).
    """

    __slots__ = ("_cache", "msg", "topic")

    def __init__(self, topic: str, msg: Broadcast) -> None:
        self.topic = topic
        self.msg = msg
        self._cache: dict[tuple[str, bool], bytes | str] = {}

    def get(self, vsn: str, framed: bool) -> bytes | str:
        key = (vsn, framed)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self._build(vsn, framed)
        return out

    def _build(self, vsn: str, framed: bool) -> bytes | str:
        if vsn == "2.0.0":
            msg = self.msg
            payload = msg.raw if msg.raw is not None else dumps(msg.value)
            meta = dumps(msg.meta) if msg.meta else b""
            binary = encode_user_broadcast(self.topic, msg.event, payload, msg.encoding, meta)
            if binary is not None:
                return ws_binary_frame(binary) if framed else binary
        prefix, suffix = encode_push_prefix(self.topic, "broadcast", vsn)
        text = prefix.encode() + dumps(self.msg.text_payload()) + suffix.encode()
        return ws_text_frame(text) if framed else text.decode()
