"""Exceptions the SDK raises to the application.

Why so few: transient network trouble is never raised (the client reconnects and reports it
through ``client.status``); only what the application must act on is an exception.

    RelayClientError
    ├── ChannelError            the relay refused or ended something on a channel (``reason``)
    │   ├── JoinError           a join was refused
    │   ├── SnapshotError       a binding's snapshot failed (the channel stays joined, live)
    │   └── SendError           a broadcast / track / untrack was refused or not confirmed
    │       ├── NotJoinedError  the channel is not joined right now (offline, rejoining, closed)
    │       └── SendTimeoutError  no reply in time (also a TimeoutError)
    └── ClientClosedError
        └── GaveUpError
"""

from __future__ import annotations

from relay_client.codes import RETRYABLE_JOIN_CODES, Code

__all__ = [
    "ChannelError",
    "ClientClosedError",
    "GaveUpError",
    "JoinError",
    "NotJoinedError",
    "RelayClientError",
    "SendError",
    "SendTimeoutError",
    "SnapshotError",
]


class RelayClientError(Exception):
    """Base class of every exception raised by ``relay_client``."""


class ChannelError(RelayClientError):
    """The relay refused (or ended) something on ``channel``.

    ``reason`` is its text, for people; ``code`` (a :class:`~relay_client.codes.Code` value, or
    None from a relay that sends none, or when the SDK itself gave up) is what programs decide on.
    """

    def __init__(
        self, channel: str, reason: str, message: str | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(message or f"channel {channel!r}: {reason}")
        self.channel = channel
        self.reason = reason
        self.code = code

    @property
    def unauthorized(self) -> bool:
        """A topic policy said no (private channels): code ``Unauthorized``.

        Without a code (an older relay) the reason's ``Unauthorized:`` prefix decides.
        """
        if self.code is not None:
            return self.code == Code.UNAUTHORIZED
        return self.reason.startswith("Unauthorized:")

    @property
    def retryable(self) -> bool:
        """The same request can succeed later by itself (``UnableToConnectToProject``)."""
        return self.code in RETRYABLE_JOIN_CODES


class JoinError(ChannelError):
    """The relay refused a channel's join (bad binding, filter, token, topic policy).

    Raised by ``subscribe()`` for the first join (which is not retried); a refused rejoin is
    reported to ``subscribe`` callbacks as ``CHANNEL_ERROR`` with this error and retried with
    backoff.
    """

    def __init__(self, channel: str, reason: str, *, code: str | None = None) -> None:
        super().__init__(channel, reason, f"join of {channel!r} refused: {reason}", code=code)


class SnapshotError(ChannelError):
    """The relay could not send a binding's snapshot (``code``: ``snapshot_too_large``,
    ``snapshot_timeout`` or ``snapshot_failed``).

    Not raised: delivered like a snapshot event (to the binding's callback and to
    ``changes(snapshot=True)`` streams), because the channel stays joined and live changes of
    the binding still follow — only the initial rows are missing.  ``snapshot`` is the number
    of the join that asked (see :class:`~relay_client.types.SnapshotRow`).
    """

    def __init__(
        self, channel: str, reason: str, *, code: str | None, binding_id: int | None, snapshot: int
    ) -> None:
        super().__init__(channel, reason, f"snapshot on {channel!r} failed: {reason}", code=code)
        self.binding_id = binding_id
        self.snapshot = snapshot


class SendError(ChannelError):
    """A push on a channel (``what``: ``broadcast 'event'``, ``track``, ``untrack``) failed."""

    def __init__(self, channel: str, what: str, reason: str, *, code: str | None = None) -> None:
        super().__init__(channel, reason, f"{what} on {channel!r} failed: {reason}", code=code)
        self.what = what


class NotJoinedError(SendError):
    """The channel is not joined now: nothing is queued for sending while offline."""


class SendTimeoutError(SendError, TimeoutError):
    """The relay did not answer within the timeout (the push may or may not have been applied)."""


class ClientClosedError(RelayClientError):
    """The client was closed (``close()``) while this call waited."""


class GaveUpError(ClientClosedError):
    """Reconnection stopped (``max_retries`` reached or ``auto_reconnect=False``): the client closed."""
