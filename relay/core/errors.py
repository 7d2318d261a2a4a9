"""The relay's error model: one :class:`Code` per kind of refusal, one :class:`RelayError` root.

Why: a client must be able to act on an error without reading its text.  Every error the relay
sends — a ``phx_reply`` with ``status: "error"``, a ``system`` message with ``status: "error"``
and the informational ``system`` messages a client is expected to act on — carries one of these
codes as ``code`` beside Supabase's human ``reason`` (the official clients ignore the extra
field).  The text stays what Supabase (or this relay before codes existed) sends: clients show
it and tests compare it.

Names are Supabase Realtime's where the situation is the same (``InvalidJWTToken``,
``UnableToConnectToProject``, ...); the relay's own situations use snake_case names.  Every
member is documented in docs/protocol.md ("Error codes"), and a test holds the two together.

Pure: no I/O, imported by everything that refuses something (core, postgres, server).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Code", "RelayError"]


class Code(StrEnum):
    """Stable, documented names of everything the relay refuses or warns about."""

    # Tokens (Supabase Realtime's names; at connect, join, access_token and the HTTP API)
    MALFORMED_JWT = "MalformedJWT"
    JWT_SIGNATURE_ERROR = "JwtSignatureError"
    INVALID_JWT_TOKEN = "InvalidJWTToken"
    MISSING_JWT = "MissingJWT"
    # Joins
    UNKNOWN_TOPIC = "UnknownTopic"
    INVALID_BINDING = "InvalidBinding"
    INVALID_RESUME = "InvalidResume"
    INVALID_REPLAY = "InvalidReplay"
    TABLE_NOT_ENABLED = "table_not_enabled"
    PUBLICATION_ROW_FILTER = "publication_row_filter"
    UNABLE_TO_CONNECT_TO_PROJECT = "UnableToConnectToProject"
    UNAUTHORIZED = "Unauthorized"
    # Quotas (relay/core/quotas.py)
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_CHANNELS = "too_many_channels"
    TOO_MANY_JOINS = "too_many_joins"
    TOO_MANY_MESSAGES = "too_many_messages"
    TOO_MANY_PRESENCE_MESSAGES = "too_many_presence_messages"
    TOO_MANY_PRESENCE_KEYS = "too_many_presence_keys"
    # Payloads and presence (relay/core/payload_limits.py, relay/core/presence.py)
    PAYLOAD_TOO_DEEP = "payload_too_deep"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    PAYLOAD_INVALID = "payload_invalid"
    PRESENCE_INVALID = "presence_invalid"
    TOO_MANY_PRESENCES = "too_many_presences"
    PRESENCE_TOO_LARGE = "presence_too_large"
    ROOM_PRESENCE_FULL = "room_presence_full"
    # Frames and events
    INVALID_MESSAGE = "invalid_message"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_BINARY_FRAME = "invalid_binary_frame"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    UNMATCHED_TOPIC = "unmatched_topic"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_BROADCAST = "invalid_broadcast"
    UNSUPPORTED_VSN = "unsupported_vsn"
    # Cluster mode (docs/scale-out.md): this node lost Redis for broadcast/presence, and got it back
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    CLUSTER_RESTORED = "cluster_restored"
    # The relay's own failure handling a message (logged with a traceback and counted)
    UNKNOWN_ERROR_ON_CHANNEL = "UnknownErrorOnChannel"
    # System messages about the stream
    RESYNC_NEEDED = "resync_needed"
    BROADCAST_REPLAY_INCOMPLETE = "broadcast_replay_incomplete"
    TOKEN_EXPIRING = "token_expiring"
    # Snapshot on join (docs/protocol.md, "Snapshot on join")
    SNAPSHOT_COMPLETE = "snapshot_complete"
    SNAPSHOT_TOO_LARGE = "snapshot_too_large"
    SNAPSHOT_TIMEOUT = "snapshot_timeout"
    SNAPSHOT_FAILED = "snapshot_failed"


class RelayError(Exception):
    """A refusal the relay explains to a client: ``code`` for programs, ``reason`` for people.

    ``str(exc)`` is ``reason``, which is safe to send (it never carries a secret).  Subclasses
    keep their historical constructors and texts; what they share is that a handler can answer
    any of them the same way: ``reply_error(frame, exc.reason, exc.code)``.
    """

    def __init__(self, code: Code | str, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    @property
    def reason(self) -> str:
        return str(self)
