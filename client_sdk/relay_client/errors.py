"""Exceptions the SDK raises to the application.

Why so few: transient network trouble is never raised (the client reconnects and reports it
through ``client.status``); only what the application must act on is an exception.
"""

from __future__ import annotations

__all__ = ["ClientClosedError", "GaveUpError", "JoinError", "RelayClientError"]


class RelayClientError(Exception):
    """Base class of every exception raised by ``relay_client``."""


class JoinError(RelayClientError):
    """The relay refused a channel's first join (bad binding, filter, token): it will not retry."""

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"join of {channel!r} refused: {reason}")
        self.channel = channel
        self.reason = reason


class ClientClosedError(RelayClientError):
    """The client was closed (``close()``) while this call waited."""


class GaveUpError(ClientClosedError):
    """Reconnection stopped (``max_retries`` reached or ``auto_reconnect=False``): the client closed."""
