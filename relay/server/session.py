"""The sans-I/O side of a socket's protocol: what a client's ``phx_join`` asks for.

Why apart from the connection: reading a join (its token, bindings, resume point, broadcast and
presence options) is pure, and its rules are easy to get subtly wrong (realtime-js rebuilds
``config`` on every rejoin and keeps only four keys; booleans arrive as JSON or as strings).
Here it is one function from a frame to a typed :class:`JoinRequest`, tested without sockets;
the connection does the I/O (token check, topic policies, catalog) and answers.

What a join gets wrong is kept in the request, not raised: the connection answers refusals in
the order it checks them (the token first), as it always has.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from relay.core.broadcast_history import REPLAY_LIMIT
from relay.core.changes import parse_stream_position
from relay.core.errors import Code, RelayError
from relay.core.protocol import Frame
from relay.core.subscriptions import BindingError, BindingSpec, parse_bindings

__all__ = ["JoinRequest", "presence_key", "read_join"]


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
