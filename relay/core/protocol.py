"""Phoenix channel frames as the Supabase clients speak them (vsn 1.0.0 and 2.0.0 text).

Why pure: frame parsing is where hostile input enters.  Every failure becomes a
:class:`ProtocolError` carrying a message for the client; nothing here can raise anything else on
bad input, so the socket handler never crashes on a frame.

- vsn 1.0.0: JSON objects ``{"topic","event","payload","ref","join_ref"}``; server frames carry
  ``topic, event, payload, ref`` (no ``join_ref``: realtime-py's pydantic models are strict).
- vsn 2.0.0: JSON arrays ``[join_ref, ref, topic, event, payload]``; user broadcasts also travel
  as binary frames (kind 3 client to server, kind 4 server to client), which realtime-js uses for
  every broadcast it sends and is the only binary kind it decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from relay.core.errors import Code, RelayError
from relay.core.sqltypes import RawJson

__all__ = [
    "BINARY_ENCODING",
    "JSON_ENCODING",
    "SUPPORTED_VSN",
    "BinaryPush",
    "Frame",
    "ProtocolError",
    "encode",
    "encode_push_prefix",
    "encode_user_broadcast",
    "parse",
    "parse_binary",
    "ws_binary_frame",
    "ws_text_frame",
]

SUPPORTED_VSN = ("1.0.0", "2.0.0")


class ProtocolError(RelayError, ValueError):
    """A client frame that cannot be understood; ``str()`` is safe to send back."""

    def __init__(
        self, message: str, topic: str | None = None, ref: str | None = None, join_ref: str | None = None
    ) -> None:
        super().__init__(Code.INVALID_MESSAGE, message)
        self.topic = topic
        self.ref = ref
        self.join_ref = join_ref


@dataclass(frozen=True, slots=True)
class Frame:
    """One Phoenix message, either direction."""

    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None


def _ref(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str | int) and not isinstance(v, bool):
        return str(v)
    raise ProtocolError("ref and join_ref must be strings, numbers or null")


def parse(data: str | bytes, vsn: str) -> Frame:
    """Parse a client text frame for protocol version ``vsn``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if vsn == "2.0.0":
        if isinstance(obj, list):
            if len(obj) != 5:
                raise ProtocolError("a vsn 2.0.0 frame is [join_ref, ref, topic, event, payload]")
            join_ref, ref, topic, event, payload = obj
        elif isinstance(obj, dict):  # be lenient: some tools send objects on 2.0.0
            join_ref, ref = obj.get("join_ref"), obj.get("ref")
            topic, event, payload = obj.get("topic"), obj.get("event"), obj.get("payload")
        else:
            raise ProtocolError("a vsn 2.0.0 frame must be a JSON array")
    else:
        if not isinstance(obj, dict):
            raise ProtocolError("a vsn 1.0.0 frame must be a JSON object")
        join_ref, ref = obj.get("join_ref"), obj.get("ref")
        topic, event, payload = obj.get("topic"), obj.get("event"), obj.get("payload")
    try:
        jr, r = _ref(join_ref), _ref(ref)
    except ProtocolError as exc:
        raise ProtocolError(str(exc), topic if isinstance(topic, str) else None) from None
    if not isinstance(topic, str) or not topic:
        raise ProtocolError("frame has no topic", None, r, jr)
    if not isinstance(event, str) or not event:
        raise ProtocolError("frame has no event", topic, r, jr)
    if payload is None:
        payload = {}
    return Frame(topic, event, payload, r, jr)


def encode(frame: Frame, vsn: str) -> str:
    """Encode a server frame for a client of protocol version ``vsn``."""
    if vsn == "2.0.0":
        return orjson.dumps(
            [frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload],
            default=_default,
        ).decode()
    return orjson.dumps(
        {"topic": frame.topic, "event": frame.event, "payload": frame.payload, "ref": frame.ref},
        default=_default,
    ).decode()


def encode_push_prefix(topic: str, event: str, vsn: str) -> tuple[str, str]:
    """The text around a fan-out payload, so a payload encoded once can go to many topics.

    Returns ``(prefix, suffix)`` with ``prefix + payload_json + suffix`` a complete frame with
    ``ref`` (and ``join_ref``) null.
    """
    t = orjson.dumps(topic).decode()
    e = orjson.dumps(event).decode()
    if vsn == "2.0.0":
        return f"[null,null,{t},{e},", "]"
    return f'{{"topic":{t},"event":{e},"ref":null,"payload":', "}"


BINARY_ENCODING = 0  # the payload bytes are opaque (an ArrayBuffer in realtime-js)
JSON_ENCODING = 1  # the payload bytes are UTF-8 JSON
KIND_USER_BROADCAST_PUSH = 3
KIND_USER_BROADCAST = 4


@dataclass(frozen=True, slots=True)
class BinaryPush:
    """A kind 3 frame: a user broadcast pushed by a vsn 2.0.0 client (realtime-js).

    ``payload`` is the user payload's bytes as sent: JSON text when ``encoding`` is
    :data:`JSON_ENCODING` (already checked to parse; ``value`` holds the parsed value), opaque
    bytes otherwise.  ``meta`` is the optional JSON metadata object (``{}`` when absent).
    """

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    meta: dict[str, Any]
    encoding: int
    payload: bytes
    value: Any = None


def parse_binary(data: bytes) -> BinaryPush:
    """Parse a client binary frame; only kind 3 (user broadcast push) exists client to server.

    Layout: ``kind, len(join_ref), len(ref), len(topic), len(event), len(meta), encoding`` (one
    byte each), then those strings, then the payload (the rest of the frame).
    """
    if len(data) < 7:
        raise ProtocolError("binary frame too short: a user broadcast push has a 7-byte header")
    kind = data[0]
    if kind != KIND_USER_BROADCAST_PUSH:
        raise ProtocolError(
            f"unsupported binary frame kind {kind}: only kind 3 (user broadcast push) is accepted"
        )
    lengths = data[1:6]
    encoding = data[6]
    end = 7 + sum(lengths)
    if end > len(data):
        raise ProtocolError("binary frame truncated: its header lengths exceed the frame")
    fields: list[str] = []
    pos = 7
    for n in lengths:
        try:
            fields.append(data[pos : pos + n].decode())
        except UnicodeDecodeError:
            raise ProtocolError("binary frame header strings must be UTF-8") from None
        pos += n
    join_ref, ref, topic, event, meta_text = fields
    if not topic:
        raise ProtocolError("binary frame has no topic", None, ref or None, join_ref or None)
    if not event:
        raise ProtocolError("binary broadcast has no event", topic, ref or None, join_ref or None)
    meta: dict[str, Any] = {}
    if meta_text:
        try:
            parsed = orjson.loads(meta_text)
        except orjson.JSONDecodeError:
            raise ProtocolError(
                "binary broadcast metadata is not JSON", topic, ref or None, join_ref or None
            ) from None
        if not isinstance(parsed, dict):
            raise ProtocolError(
                "binary broadcast metadata must be a JSON object", topic, ref or None, join_ref or None
            )
        meta = parsed
    payload = bytes(data[end:])
    value: Any = None
    if encoding == JSON_ENCODING:
        try:
            value = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(
                f"binary broadcast payload is not JSON: {exc}", topic, ref or None, join_ref or None
            ) from None
    elif encoding != BINARY_ENCODING:
        raise ProtocolError(
            f"unknown binary payload encoding {encoding} (0 binary, 1 JSON)",
            topic,
            ref or None,
            join_ref or None,
        )
    return BinaryPush(join_ref or None, ref or None, topic, event, meta, encoding, payload, value)


def encode_user_broadcast(
    topic: str, event: str, payload: bytes, encoding: int, meta: bytes = b""
) -> bytes | None:
    """A kind 4 frame (server to vsn 2.0.0 client), or None when a field is too long for it.

    Every length is one byte, so a topic, event or meta over 255 bytes cannot be framed; the
    caller then sends the broadcast as a text frame, which realtime-js also reads.
    """
    t, e = topic.encode(), event.encode()
    if len(t) > 255 or len(e) > 255 or len(meta) > 255:
        return None
    return bytes((KIND_USER_BROADCAST, len(t), len(e), len(meta), encoding)) + t + e + meta + payload


def ws_binary_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket binary frame (opcode 2) around ``payload``."""
    return _ws_frame(0x82, payload)


def ws_text_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket text frame (RFC 6455 §5.2) around ``payload``.

    Why build it ourselves: a frame shared by many subscribers is framed once and the bytes are
    written to each socket's transport as they are, batched with the socket's other pending
    frames into one write.  Only valid when no compression extension was negotiated.
    """
    return _ws_frame(0x81, payload)


def _ws_frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def _default(obj: Any) -> Any:
    if type(obj) is RawJson:
        return obj.fragment()
    if isinstance(obj, Decimal):
        if obj.is_finite():
            # positional notation, as Postgres prints numeric: 0.000001 stays 0.000001, not 1E-6
            return orjson.Fragment(format(obj, "f"))
        return "NaN" if obj.is_nan() else ("-Infinity" if obj < 0 else "Infinity")  # to_json's
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson with exact numerics and verbatim json: the one JSON encoder of the relay.

    ``Decimal`` (long numerics) and :class:`relay.core.sqltypes.RawJson` (json/jsonb columns) are
    written as the text Postgres printed.
    """
    return orjson.dumps(obj, default=_default)


def reply(topic: str, ref: str | None, join_ref: str | None, status: str, response: Any) -> Frame:
    """A ``phx_reply`` frame."""
    return Frame(topic, "phx_reply", {"status": status, "response": response}, ref, join_ref)
