"""The sans-I/O side of a socket's protocol: client frames in, typed requests and refusals out.

Why apart from the connection: what a frame means (a heartbeat, a join, a leave, a new token, a
broadcast, a presence push) and which frames are refused with which code (malformed, too large,
binary on the wrong protocol version, an unmatched topic, an unknown event, an unreadable
broadcast) are decisions that need no socket, and are easy to get subtly wrong.  Here they are
pure functions (:func:`read_text`, :func:`read_binary`, :func:`decide`), tested without sockets,
like h11's or python-websockets' protocol objects; the connection only moves bytes, awaits I/O
(token check, topic policies, catalog) and applies what it is handed.

Reading a join (its token, bindings, resume point, broadcast and presence options) follows the
same idea: realtime-js rebuilds ``config`` on every rejoin and keeps only four keys; booleans
arrive as JSON or as strings.  :func:`read_join` turns the frame into a typed :class:`JoinRequest`.

What a join gets wrong is kept in the request, not raised: the connection answers refusals in
the order it checks them (the token first), as it always has.
"""

from __future__ import annotations

import uuid
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from relay.core.broadcast import Broadcast, BroadcastError, from_binary, from_push
from relay.core.broadcast_history import REPLAY_LIMIT
from relay.core.changes import parse_stream_position
from relay.core.errors import Code, RelayError
from relay.core.protocol import Frame, ProtocolError, parse, parse_binary, reply
from relay.core.subscriptions import BindingError, BindingSpec, parse_bindings

__all__ = [
    "AccessToken",
    "BroadcastPush",
    "FrameError",
    "Join",
    "JoinRequest",
    "Leave",
    "PresencePush",
    "Refusal",
    "Request",
    "Send",
    "decide",
    "presence_key",
    "read_binary",
    "read_join",
    "read_text",
]


# -- what a frame asks for ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """A reply the protocol dictates with no I/O (a heartbeat's): send it as is."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer ``frame`` with an error reply: ``reason`` (Supabase's text) and its ``code``."""

    frame: Frame
    reason: str
    code: Code


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that could not be read: answered on its topic and refs when they were read."""

    topic: str | None
    ref: str | None
    join_ref: str | None
    reason: str
    code: Code

    def reply(self) -> Frame:
        """The error reply (on ``phoenix`` when the topic is unknown)."""
        response = {"reason": self.reason, "code": str(self.code)}
        return reply(self.topic or "phoenix", self.ref, self.join_ref, "error", response)


@dataclass(frozen=True, slots=True)
class Join:
    """A ``phx_join`` on a ``realtime:`` topic (the connection checks quotas, token, catalog)."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Leave:
    """A ``phx_leave`` of a joined topic: send ``reply`` (ok), then close the channel."""

    frame: Frame
    reply: Frame


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A new token for a joined channel (verified by the connection)."""

    frame: Frame
    token: Any


@dataclass(frozen=True, slots=True)
class BroadcastPush:
    """A client broadcast on a joined channel, already read (text push or vsn 2.0.0 binary)."""

    frame: Frame
    message: Broadcast


@dataclass(frozen=True, slots=True)
class PresencePush:
    """A ``presence`` push (track/untrack) on a joined channel; the topic hub reads it."""

    frame: Frame


Request = Send | Refusal | FrameError | Join | Leave | AccessToken | BroadcastPush | PresencePush


def _too_large(limit: int) -> str:
    return f"frame too large: limit is {limit} bytes"


def read_text(data: str, vsn: str, limit: int) -> Frame | Refusal | FrameError:
    """Parse a text frame under the size limit (bytes, as on the wire).

    A frame over the limit is still parsed when it can be, so the refusal goes to its topic and
    ref (the client's push then fails instead of timing out); a malformed one is refused on
    what could be read of it.
    """
    # A character is 1 to 4 UTF-8 bytes: only a frame of more than limit/4 characters needs
    # encoding to know.
    too_large = len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit)
    try:
        frame = parse(data, vsn)
    except ProtocolError as exc:
        if too_large:
            return FrameError(exc.topic, exc.ref, exc.join_ref, _too_large(limit), Code.FRAME_TOO_LARGE)
        return FrameError(exc.topic, exc.ref, exc.join_ref, f"invalid message: {exc}", Code.INVALID_MESSAGE)
    if too_large:
        return Refusal(frame, _too_large(limit), Code.FRAME_TOO_LARGE)
    return frame


def decide(f: Frame, joined: Container[str]) -> Request:
    """What a parsed text frame asks for, given the socket's joined topics."""
    if f.event == "heartbeat" and f.topic == "phoenix":
        return Send(reply("phoenix", f.ref, None, "ok", {}))
    if f.event == "phx_join":
        if not f.topic.startswith("realtime:"):
            return Refusal(f, "UnknownTopic: topics are realtime:<channel name>", Code.UNKNOWN_TOPIC)
        return Join(f)
    if f.topic not in joined:
        return Refusal(f, "unmatched topic", Code.UNMATCHED_TOPIC)
    if f.event == "phx_leave":
        return Leave(f, reply(f.topic, f.ref, f.join_ref, "ok", {}))
    if f.event == "access_token":
        return AccessToken(f, f.payload.get("access_token") if isinstance(f.payload, dict) else None)
    if f.event == "broadcast":
        try:
            return BroadcastPush(f, from_push(f.payload))
        except BroadcastError as exc:
            return Refusal(f, exc.reason, exc.code)
    if f.event == "presence":
        return PresencePush(f)
    return Refusal(f, f"unknown event {f.event!r}", Code.UNKNOWN_EVENT)


def read_binary(data: bytes, vsn: str, limit: int, joined: Container[str]) -> Request:
    """A binary frame: only vsn 2.0.0 user broadcasts (kind 3) exist; anything else is refused."""
    if vsn != "2.0.0":
        reason = "binary frames are only part of protocol vsn 2.0.0 (user broadcasts)"
        return FrameError(None, None, None, reason, Code.BINARY_NOT_SUPPORTED)
    if len(data) > limit:
        return FrameError(None, None, None, _too_large(limit), Code.FRAME_TOO_LARGE)
    try:
        push = parse_binary(data)
    except ProtocolError as exc:
        reason = f"invalid binary frame: {exc}"
        return FrameError(exc.topic, exc.ref, exc.join_ref, reason, Code.INVALID_BINARY_FRAME)
    f = Frame(push.topic, "broadcast", {}, push.ref, push.join_ref)
    if push.topic not in joined:
        return Refusal(f, "unmatched topic", Code.UNMATCHED_TOPIC)
    try:
        return BroadcastPush(f, from_binary(push))
    except BroadcastError as exc:
        return Refusal(f, exc.reason, exc.code)


# -- reading a join ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A ``phx_join``, read once."""

    token: Any  # the join's access_token (checked by the connection), or None
    private: bool
    #: ``(stream id, position, as sent)`` of a resuming join, else None
    resume: tuple[str, int, str] | None
    resume_error: RelayError | None
    replay: tuple[int, int] | None  # broadcast.replay as (since, limit)
    replay_error: RelayError | None
    specs: list[BindingSpec]
    bindings_error: RelayError | None
    tx_end: bool
    bcast_self: bool
    bcast_ack: bool
    presence_key: str
    presence_enabled: bool
    replication_ready: bool


def read_join(f: Frame) -> JoinRequest:
    """Read a ``phx_join`` frame; nothing here can fail (failures are fields)."""
    payload = f.payload if isinstance(f.payload, dict) else {}
    config = payload.get("config") or {}
    if not isinstance(config, dict):
        config = {}
    resume: tuple[str, int, str] | None = None
    resume_error: RelayError | None = None
    try:
        resume = _resume_point(config)
    except ValueError as exc:
        resume_error = RelayError(Code.INVALID_RESUME, f"InvalidResume: {exc}")
    private = str(config.get("private", False)).lower() == "true"
    bcast_cfg = config.get("broadcast")
    bcast: dict[str, Any] = bcast_cfg if isinstance(bcast_cfg, dict) else {}
    replay: tuple[int, int] | None = None
    replay_error: RelayError | None = None
    try:
        replay = _replay_request(bcast.get("replay"), private)
    except ValueError as exc:
        replay_error = RelayError(Code.INVALID_REPLAY, f"InvalidReplay: {exc}")
    specs: list[BindingSpec] = []
    bindings_error: RelayError | None = None
    try:
        specs = parse_bindings(config.get("postgres_changes"))
    except BindingError as exc:
        bindings_error = RelayError(exc.code, exc.reason)
    key, enabled = presence_key(config.get("presence"))
    return JoinRequest(
        token=payload.get("access_token"),
        private=private,
        resume=resume,
        resume_error=resume_error,
        replay=replay,
        replay_error=replay_error,
        specs=specs,
        bindings_error=bindings_error,
        # realtime-js sends only broadcast/presence/postgres_changes/private in ``config``, but
        # it keeps the application's binding objects by reference: extensions may sit there.
        tx_end=config.get("tx_end") is True or any(s.raw.get("tx_end") is True for s in specs),
        bcast_self=str(bcast.get("self", False)).lower() == "true",
        bcast_ack=str(bcast.get("ack", False)).lower() == "true",
        presence_key=key,
        presence_enabled=enabled,
        replication_ready=_truthy(bcast.get("replication_ready")),
    )


def presence_key(config: Any) -> tuple[str, bool]:
    """``(key, enabled)`` from a join's ``presence`` config; an empty key gets a fresh UUID.

    A per-join UUID is what the reference server uses, so two anonymous tabs never merge.
    """
    cfg = config if isinstance(config, dict) else {}
    key = cfg.get("key")
    enabled = str(cfg.get("enabled", False)).lower() == "true"
    if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
        return str(uuid.uuid4()), enabled
    return str(key), enabled


def _truthy(value: Any) -> bool:
    """Join config booleans: JSON ``true`` or the string ``"true"`` (both clients send either)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _resume_point(config: dict[str, Any]) -> tuple[str, int, str] | None:
    """Where a resuming join continues: ``(stream id, position, as sent)``, or None for a fresh join.

    ``config.resume_from`` first, else the bindings' own.  An unchanged realtime-js rebuilds
    ``config`` at ``subscribe()`` and keeps only its four known keys, but the binding objects
    are the application's own, serialized again on every automatic rejoin; so a dashboard keeps
    ``resume_from`` up to date on its binding objects.  All bindings of a channel share one
    cursor: the earliest position given wins, so nothing any binding still needs is skipped
    (the client drops what it already has by position).
    """
    top = config.get("resume_from")
    if top is not None:
        stream, after = parse_stream_position(top)
        return stream, after, str(top)
    bindings = config.get("postgres_changes")
    found: list[tuple[int, str, str]] = []
    if isinstance(bindings, list):
        for b in bindings:
            if isinstance(b, dict) and b.get("resume_from") not in (None, ""):
                stream, after = parse_stream_position(b["resume_from"])
                found.append((after, stream, str(b["resume_from"])))
    if not found:
        return None
    after, stream, text = min(found)
    return stream, after, text


def _replay_request(value: Any, private: bool) -> tuple[int, int] | None:
    """``config.broadcast.replay = {since: <ms epoch>, limit: <1..25>}`` as ``(since, limit)``.

    As upstream: private channels only, ``limit`` is at most 25 (the default here).
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("broadcast.replay must be an object {since, limit}")
    if not private:
        raise ValueError("broadcast replay is only available on private channels")
    since, limit = value.get("since"), value.get("limit", REPLAY_LIMIT)
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise ValueError("broadcast.replay.since must be a time in milliseconds since the epoch")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= REPLAY_LIMIT:
        raise ValueError(f"broadcast.replay.limit must be an integer from 1 to {REPLAY_LIMIT}")
    return since, limit
