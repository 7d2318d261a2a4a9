"""Python client for the Postgres change relay.

Same names as the official ``realtime`` client where the concept is the same
(``client.channel(name)``, ``channel.on_postgres_changes(...)``, ``subscribe()``, ``set_auth()``),
plus reconnection with backoff, dead-link detection, online/offline status, gap-free resume
and token refresh; broadcast and presence (``on_broadcast``, ``send_broadcast``, ``track``,
``presence_state``) with presence restored after every reconnect.  See README.md.
"""

from __future__ import annotations

from relay_client.channel import RealtimeChannel
from relay_client.client import RelayClient, TokenProvider
from relay_client.debounce import TableChangeCoalescer, TableChanged
from relay_client.errors import (
    ChannelError,
    ClientClosedError,
    GaveUpError,
    JoinError,
    NotJoinedError,
    RelayClientError,
    SendError,
    SendTimeoutError,
    SnapshotError,
)
from relay_client.join_state import ChannelStats
from relay_client.live import SNAPSHOT_RETRY, LiveTable
from relay_client.options import ChannelOptions, ClientOptions
from relay_client.status import ClientState, Status
from relay_client.streams import ChangeStream
from relay_client.sync import SyncChannel, SyncRelayClient
from relay_client.types import (
    Broadcast,
    Change,
    ChannelStates,
    Presence,
    PresenceEvent,
    PresenceJoin,
    PresenceLeave,
    PresenceState,
    PresenceSync,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
    ResyncNeeded,
    SnapshotComplete,
    SnapshotRow,
)

AsyncRealtimeClient = RelayClient  # the official client's name, for drop-in switching
AsyncRealtimeChannel = RealtimeChannel

__version__ = "0.1.0"

__all__ = [
    "SNAPSHOT_RETRY",
    "AsyncRealtimeChannel",
    "AsyncRealtimeClient",
    "Broadcast",
    "Change",
    "ChangeStream",
    "ChannelError",
    "ChannelOptions",
    "ChannelStates",
    "ChannelStats",
    "ClientClosedError",
    "ClientOptions",
    "ClientState",
    "GaveUpError",
    "JoinError",
    "LiveTable",
    "NotJoinedError",
    "Presence",
    "PresenceEvent",
    "PresenceJoin",
    "PresenceLeave",
    "PresenceState",
    "PresenceSync",
    "RealtimeChannel",
    "RealtimePostgresChangesListenEvent",
    "RealtimeSubscribeStates",
    "RelayClient",
    "RelayClientError",
    "ResyncNeeded",
    "SendError",
    "SendTimeoutError",
    "SnapshotComplete",
    "SnapshotError",
    "SnapshotRow",
    "Status",
    "SyncChannel",
    "SyncRelayClient",
    "TableChangeCoalescer",
    "TableChanged",
    "TokenProvider",
]
