"""Exceptions the SDK raises to the application.

Why so few: transient network trouble is never raised (the client reconnects and reports it
through ``client.status``); only what the application must act on is an exception.

    RelayClientError
    ├── ChannelError            the relay refused or ended something on a channel (``reason``)
    │   ├── JoinError           a join was refused
    │   └── SendError           a broadcast / track / untrack was refused or not confirmed
    │       ├── NotJoinedError  the channel is not joined right now (offline, rejoining, closed)
    │       └── SendTimeoutError  no reply in time (also a TimeoutError)
    └── ClientClosedError
        └── GaveUpError
"""

from __future__ import annotations

__all__ = [
    "ChannelError",
    "ClientClosedError",
    "GaveUpError",
    "JoinError",
    "NotJoinedError",
    "RelayClientError",
    "SendError",
    "SendTimeoutError",
]


class RelayClientError(Exception):
    """Base class of every exception raised by ``relay_client``."""


class ChannelError(RelayClientError):
    """The relay refused (or ended) something on ``channel``; ``reason`` is its text."""

    def __init__(self, channel: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"channel {channel!r}: {reason}")
        self.channel = channel
        self.reason = reason

    @property
    def unauthorized(self) -> bool:
        """A topic policy said no (private channels): ``Unauthorized: You do not have permissions ...``."""
        return self.reason.startswith("Unauthorized:")


class JoinError(ChannelError):
    """The relay refused a channel's join (bad binding, filter, token, topic policy).

    Raised by ``subscribe()`` for the first join (which is not retried); a refused rejoin is
    reported to ``subscribe`` callbacks as ``CHANNEL_ERROR`` with this error and retried with
    backoff.
    """

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(channel, reason, f"join of {channel!r} refused: {reason}")


class SendError(ChannelError):
    """A push on a channel (``what``: ``broadcast 'event'``, ``track``, ``untrack``) failed."""

    def __init__(self, channel: str, what: str, reason: str) -> None:
        super().__init__(channel, reason, f"{what} on {channel!r} failed: {reason}")
        self.what = what


class NotJoinedError(SendError):
    """The channel is not joined now: nothing is queued for sending while offline."""


class SendTimeoutError(SendError, TimeoutError):
    """The relay did not answer within the timeout (the push may or may not have been applied)."""


class ClientClosedError(RelayClientError):
    """The client was closed (``close()``) while this call waited."""


class GaveUpError(ClientClosedError):
    """Reconnection stopped (``max_retries`` reached or ``auto_reconnect=False``): the client closed."""
