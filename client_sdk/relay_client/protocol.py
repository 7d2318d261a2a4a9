"""Phoenix frames (vsn 1.0.0) as the relay speaks them: encode, decode, build, interpret.

Why pure: this is where untrusted bytes become typed values.  Nothing here does I/O or keeps
state, so every branch is unit-tested without a socket, and the I/O code only moves frames.
Anything malformed raises :class:`ProtocolError`; nothing else escapes on bad input.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from relay_client.codes import SNAPSHOT_COMPLETE, SNAPSHOT_ERROR_CODES, is_token_code
from relay_client.types import Binding, Broadcast, Change, ResyncNeeded, SnapshotComplete, SnapshotRow

__all__ = [
    "PHOENIX",
    "VSN",
    "ChannelClosedByServer",
    "Frame",
    "OtherSystem",
    "ProtocolError",
    "Refusal",
    "Resumed",
    "SnapshotFailed",
    "Subscribed",
    "SystemEvent",
    "access_token_frame",
    "broadcast_frame",
    "decode",
    "encode",
    "heartbeat_frame",
    "is_snapshot_row",
    "join_frame",
    "leave_frame",
    "parse_broadcast",
    "parse_change",
    "parse_reply",
    "parse_snapshot_row",
    "parse_system",
    "presence_frame",
    "socket_url",
]

VSN = "1.0.0"
PHOENIX = "phoenix"
TOPIC_PREFIX = "realtime:"


class ProtocolError(ValueError):
    """A frame the SDK cannot understand."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One Phoenix message, either direction."""

    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None


# -- wire -----------------------------------------------------------------------------------
def encode(frame: Frame) -> str:
    """vsn 1.0.0 text: a JSON object with all five keys."""
    return orjson.dumps(
        {
            "topic": frame.topic,
            "event": frame.event,
            "payload": frame.payload,
            "ref": frame.ref,
            "join_ref": frame.join_ref,
        }
    ).decode()


def _ref(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str | int) and not isinstance(v, bool):
        return str(v)
    raise ProtocolError(f"bad ref {v!r}")


def decode(data: str | bytes) -> Frame:
    """Parse one server text frame."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a vsn 1.0.0 frame is a JSON object")
    topic, event = obj.get("topic"), obj.get("event")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ProtocolError("frame without topic or event")
    payload = obj.get("payload")
    return Frame(
        topic, event, {} if payload is None else payload, _ref(obj.get("ref")), _ref(obj.get("join_ref"))
    )


def socket_url(url: str) -> str:
    """The WebSocket endpoint for a relay URL, accepting what the official client accepts.

    ``http(s)://`` becomes ``ws(s)://`` and ``/websocket`` is appended unless present, so
    ``http://host:4000/realtime/v1`` and ``ws://host:4000/realtime/v1/websocket`` both work.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


# -- client frames ----------------------------------------------------------------------------
def heartbeat_frame(ref: str) -> Frame:
    return Frame(PHOENIX, "heartbeat", {}, ref)


def join_frame(
    topic: str,
    ref: str,
    join_ref: str,
    bindings: Sequence[Binding],
    access_token: str | None,
    resume_from: str | None,
    *,
    broadcast_self: bool = False,
    broadcast_ack: bool = False,
    presence_key: str = "",
    presence_enabled: bool = False,
    private: bool = False,
    snapshot: Collection[int] = (),
) -> Frame:
    """``phx_join`` for ``bindings``; ``resume_from`` asks the relay to replay what was missed.

    ``presence_enabled``: send this channel the room's ``presence_state`` and ``presence_diff``
    events from the join on (the relay also turns them on with the first ``track``).
    ``snapshot``: indexes of the bindings that ask for their current rows on this join
    (``"snapshot": true`` on the binding object, where realtime-js would carry it too).
    """
    config: dict[str, Any] = {
        "broadcast": {"ack": broadcast_ack, "self": broadcast_self},
        "presence": {"key": presence_key, "enabled": presence_enabled},
        "postgres_changes": [b.wire(i in snapshot) for i, b in enumerate(bindings)],
        "private": private,
    }
    if resume_from is not None:
        config["resume_from"] = resume_from
    payload: dict[str, Any] = {"config": config}
    if access_token is not None:
        payload["access_token"] = access_token
    return Frame(topic, "phx_join", payload, ref, join_ref)


def leave_frame(topic: str, ref: str, join_ref: str | None) -> Frame:
    return Frame(topic, "phx_leave", {}, ref, join_ref)


def access_token_frame(topic: str, ref: str, join_ref: str | None, token: str) -> Frame:
    return Frame(topic, "access_token", {"access_token": token}, ref, join_ref)


def broadcast_frame(topic: str, ref: str, join_ref: str | None, event: str, payload: Any) -> Frame:
    """A ``broadcast`` push: ``{"type": "broadcast", "event": E, "payload": P}``."""
    return Frame(topic, "broadcast", {"type": "broadcast", "event": event, "payload": payload}, ref, join_ref)


def presence_frame(topic: str, ref: str, join_ref: str | None, event: str, meta: Any = None) -> Frame:
    """A ``presence`` push: ``track`` (with the tracked state ``meta``) or ``untrack``."""
    payload: dict[str, Any] = {"type": "presence", "event": event}
    if event == "track":
        payload["payload"] = meta if meta is not None else {}
    return Frame(topic, "presence", payload, ref, join_ref)


# -- server frames ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Refusal:
    """An error reply: ``reason`` for people, ``code`` (relay_client.codes.Code) for decisions.

    ``code`` is None only from a relay that predates codes.
    """

    reason: str
    code: str | None = None


def parse_reply(payload: Any) -> tuple[bool, Any]:
    """``phx_reply`` payload -> (ok, response); an error's response is a :class:`Refusal`."""
    if not isinstance(payload, dict):
        raise ProtocolError("phx_reply payload is not an object")
    response = payload.get("response")
    if payload.get("status") == "ok":
        return True, response if response is not None else {}
    reason = response.get("reason") if isinstance(response, dict) else None
    code = response.get("code") if isinstance(response, dict) else None
    return False, Refusal(
        str(reason if reason is not None else payload.get("status", "error")), _opt_str(code)
    )


def binding_ids(response: Any, count: int) -> list[int | None]:
    """The id the relay gave each of our ``count`` bindings (join reply lists them in our order)."""
    out: list[int | None] = [None] * count
    items = response.get("postgres_changes") if isinstance(response, dict) else None
    if isinstance(items, list):
        for i, item in enumerate(items[:count]):
            bid = item.get("id") if isinstance(item, dict) else None
            if isinstance(bid, int) and not isinstance(bid, bool):
                out[i] = bid
    return out


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The join is live; a fresh join receives the changes after ``position``."""

    position: str | None


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resume caught up: ``replayed`` changes were sent; live from here, no gap."""

    position: str | None
    resumed_from: str | None
    replayed: int


@dataclass(frozen=True, slots=True)
class ChannelClosedByServer:
    """The relay is closing the channel (token expired or refused); ``phx_close`` follows.

    ``token``: closed over the token (refresh it before rejoining), decided by ``code``.
    """

    message: str
    token: bool
    code: str | None = None


@dataclass(frozen=True, slots=True)
class TokenExpiring:
    """The relay warns that the channel's token expires soon (``code: token_expiring``).

    ``expires_at``: the token's ``exp`` as the relay saw it, so a warning about a token that
    was already replaced is recognised and ignored.
    """

    message: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SnapshotFailed:
    """A binding's snapshot failed (``code`` in ``SNAPSHOT_ERROR_CODES``); live changes follow."""

    message: str
    code: str
    binding_id: int | None


@dataclass(frozen=True, slots=True)
class OtherSystem:
    """A system event the SDK has no use for (kept for logging)."""

    payload: Mapping[str, Any]


SystemEvent = (
    Subscribed
    | Resumed
    | ResyncNeeded
    | ChannelClosedByServer
    | TokenExpiring
    | SnapshotComplete
    | SnapshotFailed
    | OtherSystem
)


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def parse_system(channel: str, payload: Any, snapshot: int = 0) -> SystemEvent:
    """Interpret a ``system`` event (see docs/protocol.md, "Resume" and "Snapshot").

    ``snapshot``: the channel's number of the current snapshot join, stamped on a
    :class:`SnapshotComplete` so consumers can pair it with its rows.
    """
    if not isinstance(payload, dict):
        raise ProtocolError("system payload is not an object")
    status, message = payload.get("status"), str(payload.get("message", ""))
    code = payload.get("code")
    # Before the "Subscribed" branch: the marker is also an ok postgres_changes system message.
    if code == SNAPSHOT_COMPLETE and status == "ok":
        rows = _opt_int(payload.get("rows"))
        return SnapshotComplete(
            channel=channel,
            binding_id=_opt_int(payload.get("id")),
            rows=0 if rows is None else rows,
            position=_opt_str(payload.get("position")),
            snapshot=snapshot,
            message=message,
        )
    if isinstance(code, str) and code in SNAPSHOT_ERROR_CODES and status == "error":
        return SnapshotFailed(message, code, _opt_int(payload.get("id")))
    if payload.get("code") == "resync_needed":
        return ResyncNeeded(
            channel=channel,
            message=message,
            position=_opt_str(payload.get("position")),
            resume_from=_opt_str(payload.get("resume_from")),
            retained_from=_opt_str(payload.get("retained_from")),
        )
    if payload.get("code") == "token_expiring" and status == "ok":
        exp = payload.get("expires_at")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return TokenExpiring(message, None)
        return TokenExpiring(message, float(exp))
    if payload.get("extension") == "postgres_changes" and status == "ok":
        if "resumed_from" in payload:
            replayed = payload.get("replayed")
            return Resumed(
                _opt_str(payload.get("position")),
                _opt_str(payload.get("resumed_from")),
                replayed if isinstance(replayed, int) else 0,
            )
        return Subscribed(_opt_str(payload.get("position")))
    if status == "error" and payload.get("extension") == "system":
        code = _opt_str(payload.get("code"))
        if code is not None:
            return ChannelClosedByServer(message, token=is_token_code(code), code=code)
        # Text fallback, only for a relay that sends no code: a topic policy's refusal names the
        # topic, which may contain "token": not a token error.
        token = "token" in message.lower() and not message.startswith("Unauthorized:")
        return ChannelClosedByServer(message, token=token)
    return OtherSystem(payload)


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def parse_change(channel: str, payload: Any) -> Change:
    """A ``postgres_changes`` payload as a :class:`Change`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise ProtocolError("postgres_changes payload without data")
    data = payload["data"]
    kind = data.get("type")
    if kind not in ("INSERT", "UPDATE", "DELETE"):
        raise ProtocolError(f"unknown change type {kind!r}")
    position = data.get("position")
    if not isinstance(position, str):
        raise ProtocolError("change without a position (is this the change relay?)")
    ids = payload.get("ids")
    columns = data.get("columns")
    errors = data.get("errors")
    return Change(
        channel=channel,
        type=kind,
        schema=str(data.get("schema", "")),
        table=str(data.get("table", "")),
        commit_timestamp=str(data.get("commit_timestamp", "")),
        position=position,
        record=_mapping(data.get("record")),
        old_record=_mapping(data.get("old_record")),
        columns=tuple(c for c in columns if isinstance(c, dict)) if isinstance(columns, list) else (),
        errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
        ids=tuple(i for i in ids if isinstance(i, int)) if isinstance(ids, list) else (),
        moved_out=data.get("moved_out") is True,
    )


def parse_snapshot_row(channel: str, payload: Any, snapshot: int) -> SnapshotRow:
    """A ``postgres_changes`` payload whose ``data.type`` is ``SNAPSHOT`` as a :class:`SnapshotRow`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise ProtocolError("postgres_changes payload without data")
    data = payload["data"]
    if data.get("type") != "SNAPSHOT":
        raise ProtocolError(f"not a snapshot row: {data.get('type')!r}")
    ids = payload.get("ids")
    columns = data.get("columns")
    errors = data.get("errors")
    return SnapshotRow(
        channel=channel,
        schema=str(data.get("schema", "")),
        table=str(data.get("table", "")),
        commit_timestamp=str(data.get("commit_timestamp", "")),
        record=_mapping(data.get("record")),
        snapshot=snapshot,
        columns=tuple(c for c in columns if isinstance(c, dict)) if isinstance(columns, list) else (),
        errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
        ids=tuple(i for i in ids if isinstance(i, int)) if isinstance(ids, list) else (),
    )


def is_snapshot_row(payload: Any) -> bool:
    """Whether a ``postgres_changes`` payload is a snapshot row (``data.type == "SNAPSHOT"``)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, dict) and data.get("type") == "SNAPSHOT"


def parse_broadcast(channel: str, payload: Any) -> Broadcast:
    """A ``broadcast`` event as a :class:`Broadcast`; a base64-wrapped binary payload becomes bytes.

    On vsn 1.0.0 a binary payload (what realtime-js sends for an ``ArrayBuffer``) arrives as
    ``{"base64": "..."}`` with ``meta: {"encoding": "base64"}``: JSON has no bytes.
    """
    if not isinstance(payload, dict):
        raise ProtocolError("broadcast payload is not an object")
    event = payload.get("event")
    if not isinstance(event, str):
        raise ProtocolError("broadcast without an event")
    meta = _mapping(payload.get("meta"))
    body = payload.get("payload")
    if meta.get("encoding") == "base64":
        encoded = body.get("base64") if isinstance(body, dict) else None
        if not isinstance(encoded, str):
            raise ProtocolError('a base64 broadcast without {"base64": "..."}')
        try:
            body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"bad base64 broadcast payload: {exc}") from None
    return Broadcast(channel=channel, event=event, payload=body, meta=meta)


def topic_of(name: str) -> str:
    """``realtime:<name>``, the topic a channel name joins."""
    return name if name.startswith(TOPIC_PREFIX) else TOPIC_PREFIX + name


def name_of(topic: str) -> str:
    return topic.removeprefix(TOPIC_PREFIX)
