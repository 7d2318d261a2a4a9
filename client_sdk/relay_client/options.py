"""Every knob of the client, in one validated, immutable place.

Why one dataclass: the README documents exactly these fields, the async client and the sync
facade accept them by the same names, and a bad value fails at construction with a message
rather than as odd behaviour minutes later.  Names shared with the official ``realtime``
client (``auto_reconnect``, ``params``, ``hb_interval``, ``max_retries``, ``initial_backoff``,
``timeout``) mean the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay_client.backoff import BackoffPolicy

__all__ = ["ChannelOptions", "ClientOptions"]


@dataclass(frozen=True, slots=True)
class ClientOptions:
    auto_reconnect: bool = True
    params: Mapping[str, str] = field(default_factory=dict)
    hb_interval: float = 15.0
    hb_timeout: float | None = None  # None: hb_interval (dead link noticed within 2 intervals)
    initial_backoff: float = 0.5
    max_backoff: float = 15.0
    stable_after: float = 10.0
    max_retries: int | None = None  # consecutive failed connects before giving up; None: never
    timeout: float = 10.0  # connect handshake, join/leave replies, graceful close
    queue_size: int = 1000
    token_refresh_margin: float = 60.0
    max_message_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("hb_interval", "timeout", "token_refresh_margin"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.hb_timeout is not None and self.hb_timeout <= 0:
            raise ValueError("hb_timeout must be positive")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0 (or None: retry forever)")
        if self.queue_size < 1 or self.max_message_bytes < 1:
            raise ValueError("queue_size and max_message_bytes must be at least 1")
        self.backoff  # validates the backoff fields  # noqa: B018

    @property
    def heartbeat_timeout(self) -> float:
        return self.hb_interval if self.hb_timeout is None else self.hb_timeout

    @property
    def backoff(self) -> BackoffPolicy:
        return BackoffPolicy(self.initial_backoff, self.max_backoff, self.stable_after)


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """A channel's broadcast, presence and privacy settings, sent in every join's ``config``.

    ``broadcast_self``: receive your own broadcasts.  ``broadcast_ack``: ``send_broadcast()``
    waits for the relay's ok.  ``presence_key``: the key your presence is tracked under (empty:
    the relay picks a fresh UUID per join, so it changes after a reconnect).  ``private``: join
    the private room of that name, admitted by the relay's topic policies.
    """

    broadcast_self: bool = False
    broadcast_ack: bool = False
    presence_key: str = ""
    private: bool = False

    def __post_init__(self) -> None:
        for name in ("broadcast_self", "broadcast_ack", "private"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        if not isinstance(self.presence_key, str):
            raise ValueError("presence_key must be a str")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ChannelOptions:
        """The official client's channel params: ``{"config": {"broadcast": {"self", "ack"},
        "presence": {"key"}, "private"}}``.

        ``presence.enabled`` is accepted and not needed: a join asks for presence whenever the
        channel has presence listeners or tracks.
        """
        config = params.get("config", {})
        if not isinstance(config, Mapping):
            raise ValueError('channel params are {"config": {...}}')
        known = {"broadcast", "presence", "private", "postgres_changes"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown channel config keys: {sorted(unknown)}")
        if config.get("postgres_changes"):
            raise ValueError("add postgres_changes bindings with on_postgres_changes()")
        bcast = config.get("broadcast") or {}
        presence = config.get("presence") or {}
        if not isinstance(bcast, Mapping) or not isinstance(presence, Mapping):
            raise ValueError("config.broadcast and config.presence are objects")
        return cls(
            broadcast_self=bcast.get("self", False),
            broadcast_ack=bcast.get("ack", False),
            presence_key=presence.get("key", ""),
            private=config.get("private", False),
        )
