"""Configuration: the only module that reads the environment.

Why one place: every variable is documented in one table (README "Configuration"), flags
override the environment, and the rest of the code receives a frozen :class:`Config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from relay.core.payload_limits import MAX_DEPTH_CEILING, PayloadLimits

__all__ = ["ENV_VARS", "LOG_LEVELS", "MIN_SECRET_BYTES", "Config", "ConfigError", "check_database_url"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# RFC 7518 3.2: an HS256 key should be at least as long as the hash output (32 bytes).
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Config:
    """Everything the relay can be told.  Defaults are safe for a local, loopback-only run."""

    database_url: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks: str | None = None
    host: str = "127.0.0.1"
    port: int = 4000
    slot: str = "realtime_relay"
    publication: str = "supabase_realtime"
    max_frame_bytes: int = 5 * 1024 * 1024
    socket_queue_frames: int = 10_000
    # user payloads (broadcast payloads, presence metas) and presence bounds: hostile input
    # is refused where it enters, with a code (docs/broadcast-presence.md#limits)
    max_payload_bytes: int = 3 * 1024 * 1024
    max_payload_depth: int = 64
    max_socket_presences: int = 100
    max_socket_presence_bytes: int = 256 * 1024
    max_room_presences: int = 10_000
    # quotas (docs/operations.md#quotas; 0 = no limit): Supabase's defaults where it has one,
    # rates per socket so that one client cannot use up everybody's share
    max_connections: int = 10_000
    max_connections_per_sub: int = 100
    max_connections_per_address: int = 0
    max_channels_per_connection: int = 100
    max_joins_per_second: float = 100.0
    max_events_per_second: float = 100.0
    max_presence_events_per_second: float = 50.0
    max_presence_keys: int = 10
    max_change_bytes: int = 1024 * 1024
    token_expiry_warning: float = 30.0
    heartbeat_timeout: float = 60.0
    handshake_timeout: float = 10.0
    publication_poll_interval: float = 1.0
    policy_poll_interval: float = 2.0
    compression: bool = False
    resume_window: float = 300.0
    resume_max_bytes: int = 64 * 1024 * 1024
    # snapshot on join (docs/protocol.md, "Snapshot on join")
    snapshot_max_rows: int = 100_000
    snapshot_timeout: float = 30.0
    log_level: str = "INFO"
    # operations (docs/operations.md)
    log_format: str = "text"
    metrics_token: str | None = None
    cors_origins: str = ""
    slot_wal_threshold: float = 0.5
    slot_check_interval: float = 10.0
    # cluster mode (docs/scale-out.md): unset = one process, everything in memory (the default)
    redis_url: str | None = None
    node_id: str | None = None
    workers: int = 1

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build from ``RELAY_*`` variables, then apply non-None ``overrides`` (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_VARS[f.name][0]
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, var, raw, f.type)
        for k, v in overrides.items():
            if v is not None:
                values[k] = v
        cfg = cls(**values)
        return cfg.resolved()

    def resolved(self) -> Config:
        """Read key material given as file paths (``@file`` or an existing path)."""
        out = self
        for name in ("jwt_public_key", "jwt_jwks", "jwt_secret"):
            v = getattr(out, name)
            if isinstance(v, str):
                path = v[1:] if v.startswith("@") else v
                if (v.startswith("@") or name != "jwt_secret") and _looks_like_path(path):
                    try:
                        text = Path(path).read_text()
                        out = (
                            replace(out, jwt_public_key=text)
                            if name == "jwt_public_key"
                            else replace(out, jwt_jwks=text)
                            if name == "jwt_jwks"
                            else replace(out, jwt_secret=text.strip())
                        )
                    except OSError as exc:
                        raise ConfigError(f"{ENV_VARS[name][0]}: cannot read {path}: {exc}") from None
        if out.resume_window < 0 or out.resume_max_bytes < 0:
            raise ConfigError("RELAY_RESUME_WINDOW and RELAY_RESUME_MAX_BYTES must not be negative")
        if not (1 <= out.max_payload_depth <= MAX_DEPTH_CEILING):
            raise ConfigError(
                f"RELAY_MAX_PAYLOAD_DEPTH must be 1..{MAX_DEPTH_CEILING} (the JSON encoder writes at most "
                f"254 levels, and frames wrap payloads), got {out.max_payload_depth}"
            )
        for name in (
            "max_payload_bytes",
            "max_socket_presences",
            "max_socket_presence_bytes",
            "max_room_presences",
        ):
            if getattr(out, name) < 1:
                raise ConfigError(f"{ENV_VARS[name][0]} must be at least 1, got {getattr(out, name)}")
        for name in (
            "max_connections",
            "max_connections_per_sub",
            "max_connections_per_address",
            "max_channels_per_connection",
            "max_joins_per_second",
            "max_events_per_second",
            "max_presence_events_per_second",
            "max_presence_keys",
            "max_change_bytes",
            "token_expiry_warning",
        ):
            if getattr(out, name) < 0:
                got = getattr(out, name)
                raise ConfigError(f"{ENV_VARS[name][0]} must not be negative (0: no limit), got {got}")
        if out.snapshot_max_rows < 1:
            raise ConfigError(f"RELAY_SNAPSHOT_MAX_ROWS must be at least 1, got {out.snapshot_max_rows}")
        if not out.snapshot_timeout > 0:
            raise ConfigError(f"RELAY_SNAPSHOT_TIMEOUT must be positive, got {out.snapshot_timeout}")
        if not out.handshake_timeout > 0:
            raise ConfigError(f"RELAY_HANDSHAKE_TIMEOUT must be positive, got {out.handshake_timeout}")
        if out.log_format not in ("text", "json"):
            raise ConfigError(f"RELAY_LOG_FORMAT must be text or json, got {out.log_format!r}")
        if not (0 < out.slot_wal_threshold <= 1):
            raise ConfigError(f"RELAY_SLOT_WAL_THRESHOLD must be in (0, 1], got {out.slot_wal_threshold}")
        if out.slot_check_interval <= 0:
            raise ConfigError(f"RELAY_SLOT_CHECK_INTERVAL must be positive, got {out.slot_check_interval}")
        if out.workers < 1:
            raise ConfigError(f"RELAY_WORKERS must be at least 1, got {out.workers}")
        if out.workers > 1 and not out.redis_url:
            raise ConfigError(
                "RELAY_WORKERS > 1 needs RELAY_REDIS_URL: workers share one change log and their rooms "
                "through Redis (docs/scale-out.md)"
            )
        if not (1 <= out.port <= 65535):
            raise ConfigError(f"RELAY_PORT must be 1..65535, got {out.port}")
        if out.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"RELAY_LOG_LEVEL / --log-level: {out.log_level!r} is not a log level; "
                f"use one of {', '.join(LOG_LEVELS)}"
            )
        return out

    @property
    def cors_origin_list(self) -> list[str]:
        """``RELAY_CORS_ORIGINS`` as a list: comma-separated origins, or ``*``."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def payload_limits(self) -> PayloadLimits:
        return PayloadLimits(self.max_payload_depth, self.max_payload_bytes)

    def require_database(self) -> str:
        """The database URL, checked for shape first so a typo never reaches a driver.

        Why: psycopg quotes a malformed DSN verbatim in its error (password included), and
        asyncpg's message does not say what a valid one looks like.
        """
        if not self.database_url:
            raise ConfigError("no database: set RELAY_DATABASE_URL (or pass --database-url)")
        check_database_url(self.database_url)
        return self.database_url

    def weak_secret(self) -> int | None:
        """Length in bytes of an HS256 secret shorter than :data:`MIN_SECRET_BYTES`, else None."""
        if self.jwt_secret is None:
            return None
        n = len(self.jwt_secret.encode())
        return n if n < MIN_SECRET_BYTES else None

    def require_jwt(self) -> None:
        if not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks):
            raise ConfigError(
                "no JWT key: set RELAY_JWT_SECRET (HS256), RELAY_JWT_PUBLIC_KEY (PEM) or RELAY_JWT_JWKS"
            )


_URL_HELP = "expected postgresql://user:password@host:5432/dbname"


def check_database_url(url: str) -> None:
    """Raise :class:`ConfigError` (naming no password) unless ``url`` is a usable Postgres URL.

    Accepted: ``postgresql://`` / ``postgres://`` URLs (what both drivers take).  A libpq
    keyword string (``host=... dbname=...``) is refused with the same hint: the relay's asyncpg
    pool cannot use it, so it would only fail later, in ``serve``.
    """
    from urllib.parse import urlsplit

    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(f"RELAY_DATABASE_URL is not a URL: {_URL_HELP}")
    if scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"RELAY_DATABASE_URL has scheme {scheme[:20]!r}: {_URL_HELP} (postgres:// works too)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a non-numeric or out-of-range port)
    except ValueError:
        raise ConfigError(f"RELAY_DATABASE_URL has an invalid host or port: {_URL_HELP}") from None


def _looks_like_path(v: str) -> bool:
    return not v.lstrip().startswith(("{", "-----")) and (os.sep in v or Path(v).exists())


def _coerce(name: str, var: str, raw: str, typ: Any) -> Any:
    t = str(typ)
    try:
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
        if t == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {t}") from None
    return raw


# field -> (environment variable, description).  README's configuration table mirrors this.
ENV_VARS: dict[str, tuple[str, str]] = {
    "database_url": (
        "RELAY_DATABASE_URL",
        "Postgres URL (serve needs REPLICATION, migrate CREATE: docs/roles.md). "
        "Unset for `relay demo`: a throwaway local cluster",
    ),
    "jwt_secret": ("RELAY_JWT_SECRET", "HS256 secret that signs client tokens"),
    "jwt_public_key": ("RELAY_JWT_PUBLIC_KEY", "PEM public key (RS256/ES256), inline or a file path"),
    "jwt_jwks": ("RELAY_JWT_JWKS", "JWKS document (inline JSON or a file path) for RS256/ES256 keys"),
    "host": ("RELAY_HOST", "Address to listen on"),
    "port": ("RELAY_PORT", "Port to listen on"),
    "slot": ("RELAY_SLOT", "Name of the persistent logical replication slot"),
    "publication": ("RELAY_PUBLICATION", "Publication whose tables are streamed"),
    "max_frame_bytes": ("RELAY_MAX_FRAME_BYTES", "Largest client frame accepted"),
    "socket_queue_frames": (
        "RELAY_SOCKET_QUEUE_FRAMES",
        "Frames queued per socket before it is dropped as too slow",
    ),
    "max_payload_bytes": (
        "RELAY_MAX_PAYLOAD_BYTES",
        "Largest broadcast payload or presence meta (encoded JSON bytes); larger ones are refused",
    ),
    "max_payload_depth": (
        "RELAY_MAX_PAYLOAD_DEPTH",
        f"Deepest nesting of objects/arrays in a broadcast payload or presence meta (1..{MAX_DEPTH_CEILING})",
    ),
    "max_socket_presences": (
        "RELAY_MAX_SOCKET_PRESENCES",
        "Presences one socket may track (over all channels)",
    ),
    "max_socket_presence_bytes": (
        "RELAY_MAX_SOCKET_PRESENCE_BYTES",
        "Encoded bytes of the presence metas one socket may track (over all channels)",
    ),
    "max_room_presences": ("RELAY_MAX_ROOM_PRESENCES", "Presences one room (topic) may hold"),
    "max_connections": ("RELAY_MAX_CONNECTIONS", "Concurrent WebSocket connections (0: no limit)"),
    "max_connections_per_sub": (
        "RELAY_MAX_CONNECTIONS_PER_SUB",
        "Concurrent connections whose connect token has the same `sub` (0: no limit)",
    ),
    "max_connections_per_address": (
        "RELAY_MAX_CONNECTIONS_PER_ADDRESS",
        "Concurrent connections from one remote address (0: no limit; behind a proxy all share one)",
    ),
    "max_channels_per_connection": (
        "RELAY_MAX_CHANNELS_PER_CONNECTION",
        "Channels one connection may have joined at once (0: no limit)",
    ),
    "max_joins_per_second": ("RELAY_MAX_JOINS_PER_SECOND", "Channel joins per second per connection"),
    "max_events_per_second": (
        "RELAY_MAX_EVENTS_PER_SECOND",
        "Broadcast messages per second per connection, and per REST caller (0: no limit)",
    ),
    "max_presence_events_per_second": (
        "RELAY_MAX_PRESENCE_EVENTS_PER_SECOND",
        "Presence track/untrack messages per second per connection (0: no limit)",
    ),
    "max_presence_keys": (
        "RELAY_MAX_PRESENCE_KEYS",
        "Keys in one tracked presence payload (0: no limit)",
    ),
    "max_change_bytes": (
        "RELAY_MAX_CHANGE_BYTES",
        "Postgres change payload size; above it values over 64 bytes are left out (0: no limit)",
    ),
    "token_expiry_warning": (
        "RELAY_TOKEN_EXPIRY_WARNING",
        "Seconds before a channel's token expires that it is sent a token_expiring system message (0: off)",
    ),
    "heartbeat_timeout": ("RELAY_HEARTBEAT_TIMEOUT", "Seconds of client silence before a socket is closed"),
    "handshake_timeout": (
        "RELAY_HANDSHAKE_TIMEOUT",
        "Seconds a connection may take to send a complete HTTP request (also the idle keep-alive)",
    ),
    "publication_poll_interval": ("RELAY_PUBLICATION_POLL", "Seconds between publication membership checks"),
    "policy_poll_interval": (
        "RELAY_POLICY_POLL",
        "Seconds between row policy reloads (also reloaded on change)",
    ),
    "compression": ("RELAY_COMPRESSION", "Allow permessage-deflate (costs CPU, disables shared frames)"),
    "resume_window": (
        "RELAY_RESUME_WINDOW",
        "Seconds of changes kept for clients that resume (0 disables resume); bounds slot WAL too",
    ),
    "resume_max_bytes": (
        "RELAY_RESUME_MAX_BYTES",
        "Memory for the resume window; the oldest changes are dropped beyond it",
    ),
    "redis_url": (
        "RELAY_REDIS_URL",
        "Cluster mode: redis://host:port/db shared by all relay nodes of one slot (unset: one process)",
    ),
    "node_id": ("RELAY_NODE_ID", "Cluster mode: this node's name (default: host name and process id)"),
    "workers": (
        "RELAY_WORKERS",
        "Processes serving the same port (SO_REUSEPORT); more than 1 needs RELAY_REDIS_URL",
    ),
    "snapshot_max_rows": (
        "RELAY_SNAPSHOT_MAX_ROWS",
        "Rows one snapshot on join may send; beyond, the binding gets snapshot_too_large",
    ),
    "snapshot_timeout": (
        "RELAY_SNAPSHOT_TIMEOUT",
        "Seconds a statement of a snapshot on join may run (statement_timeout); then snapshot_timeout",
    ),
    "log_level": ("RELAY_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    "log_format": ("RELAY_LOG_FORMAT", "text (for people) or json (one JSON object per line)"),
    "metrics_token": (
        "RELAY_METRICS_TOKEN",
        "If set, GET /metrics needs Authorization: Bearer <this token>",
    ),
    "cors_origins": (
        "RELAY_CORS_ORIGINS",
        "Browser origins allowed to call the HTTP API (comma-separated, or *); empty: none",
    ),
    "slot_wal_threshold": (
        "RELAY_SLOT_WAL_THRESHOLD",
        "Share of max_slot_wal_keep_size the slot may retain before the watchdog acts (0..1)",
    ),
    "slot_check_interval": ("RELAY_SLOT_CHECK_INTERVAL", "Seconds between slot watchdog checks"),
}
