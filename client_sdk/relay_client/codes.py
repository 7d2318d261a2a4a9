"""The relay's stable error codes, and what the SDK does with each.

Why codes and not text: the relay's ``reason`` / ``message`` texts are for people (Supabase's
wording, kept byte for byte for the official clients) and may change; every refusal also carries
a ``code`` (docs/protocol.md, "Refusals" and "Error codes"), and the SDK decides on that alone.

The values are the relay's ``relay.core.errors.Code`` (the SDK is a separate distribution and
imports nothing from the relay; tests/unit/test_contract.py holds the two lists together).

A text fallback remains in exactly two places, each only when a frame carries **no** ``code``
(relays from before codes existed): :func:`is_token_code`'s caller in ``protocol.parse_system``
(a channel closed over its token) and ``ChannelError.unauthorized`` (a topic policy said no).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "RETRYABLE_JOIN_CODES",
    "SNAPSHOT_COMPLETE",
    "SNAPSHOT_ERROR_CODES",
    "TOKEN_CODES",
    "Code",
    "is_token_code",
]


class Code(StrEnum):
    """Every code the relay sends (``code`` beside ``reason`` / ``message``)."""

    # Tokens (Supabase Realtime's names)
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
    # Quotas
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_CHANNELS = "too_many_channels"
    TOO_MANY_JOINS = "too_many_joins"
    TOO_MANY_MESSAGES = "too_many_messages"
    TOO_MANY_PRESENCE_MESSAGES = "too_many_presence_messages"
    TOO_MANY_PRESENCE_KEYS = "too_many_presence_keys"
    # Payloads and presence
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
    # Cluster mode: the node lost Redis, so broadcasts reach (and come from) its own members only
    # until ``cluster_restored`` (docs/protocol.md, Error codes)
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    CLUSTER_RESTORED = "cluster_restored"
    # The relay's own failure handling a message
    UNKNOWN_ERROR_ON_CHANNEL = "UnknownErrorOnChannel"
    # System messages about the stream
    RESYNC_NEEDED = "resync_needed"
    BROADCAST_REPLAY_INCOMPLETE = "broadcast_replay_incomplete"
    TOKEN_EXPIRING = "token_expiring"
    # Snapshots on join (docs/protocol.md, "Snapshot on join")
    SNAPSHOT_COMPLETE = "snapshot_complete"
    SNAPSHOT_TOO_LARGE = "snapshot_too_large"
    SNAPSHOT_TIMEOUT = "snapshot_timeout"
    SNAPSHOT_FAILED = "snapshot_failed"


TOKEN_CODES = frozenset(
    {Code.MALFORMED_JWT, Code.JWT_SIGNATURE_ERROR, Code.INVALID_JWT_TOKEN, Code.MISSING_JWT}
)
"""The token was refused: ask the ``token_provider`` for a new one before joining again."""

RETRYABLE_JOIN_CODES = frozenset({Code.UNABLE_TO_CONNECT_TO_PROJECT})
"""A refused join that succeeds later by itself (Postgres was unreachable): retried with backoff,
even on the first join, as the official clients do."""


SNAPSHOT_ERROR_CODES = frozenset({Code.SNAPSHOT_TOO_LARGE, Code.SNAPSHOT_TIMEOUT, Code.SNAPSHOT_FAILED})
"""A binding's snapshot failed: the channel stays joined, the binding gets live changes only."""

SNAPSHOT_COMPLETE = Code.SNAPSHOT_COMPLETE
"""``code`` of the ``system`` ok message ending a snapshot (a marker, not an error)."""


def is_token_code(code: str) -> bool:
    return code in TOKEN_CODES
