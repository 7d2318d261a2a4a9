"""Phoenix channel frames as the Supabase clients speak them (vsn 1.0.0 and 2.0.0 text).

Why pure: frame parsing is where hostile input enters.  Every failure becomes a
:class:`ProtocolError` carrying a message for the client; nothing here can raise anything else on
bad input, so the socket handler never crashes on a frame.

- vsn 1.0.0: JSON objects ``{"topic","event","payload","ref","join_ref"}``; server frames carry
  ``topic, event, payload, ref`` (no ``join_ref``: realtime-py's pydantic models are strict).
- vsn 2.0.0: JSON arrays ``[join_ref, ref, topic, event, payload]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "SUPPORTED_VSN",
    "Frame",
    "ProtocolError",
    "encode",
    "encode_push_prefix",
    "parse",
    "ws_text_frame",
]

SUPPORTED_VSN = ("1.0.0", "2.0.0")


class ProtocolError(ValueError):
    """A client frame that cannot be understood; ``str()`` is safe to send back."""

    def __init__(
        self, message: str, topic: str | None = None, ref: str | None = None, join_ref: str | None = None
    ) -> None:
        super().__init__(message)
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


def ws_text_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket text frame (RFC 6455 §5.2) around ``payload``.

    Why build it ourselves: a frame shared by many subscribers is framed once and the bytes are
    written to each socket's transport as they are, batched with the socket's other pending
    frames into one write.  Only valid when no compression extension was negotiated.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def _default(obj: Any) -> Any:
    from decimal import Decimal

    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj).encode())
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson with exact Decimal support (numeric columns): the one JSON encoder of the relay."""
    return orjson.dumps(obj, default=_default)


def reply(topic: str, ref: str | None, join_ref: str | None, status: str, response: Any) -> Frame:
    """A ``phx_reply`` frame."""
    return Frame(topic, "phx_reply", {"status": status, "response": response}, ref, join_ref)
