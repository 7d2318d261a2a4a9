"""Logging setup: plain text for people, one JSON object per line for machines, the audit log.

Why here and not in the CLI: tests and the demo need the same formatter and the same secret
redaction as ``relay serve``.

- ``RELAY_LOG_FORMAT=json``: every record is one line of JSON (``timestamp``, ``level``,
  ``logger``, ``message``, plus context such as ``socket``, ``remote``, ``topic``, ``code``);
  a traceback is a string field, never extra lines.  Built on ``python-json-logger``.
- Context: the HTTP middleware and the WebSocket handler :func:`bind` the remote address and
  socket id for the task serving them, so every line logged while handling that request or
  socket carries them without each call site passing them.
- Audit: security events go to the ``relay.audit`` logger (:func:`audit_event`), one event
  name per line plus bounded fields (docs/operations.md#audit-log), so an operator can route
  them elsewhere with a logging handler or by filtering on ``logger``.
- Redaction: every formatted line is scrubbed of JWTs and DSN passwords before it is written.
  Call sites never log tokens, but an exception message from a driver or a library might
  carry a DSN or a token; the last line of defence is the formatter.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from relay.redact import Redactor

__all__ = ["AUDIT_LOGGER", "audit_event", "bind", "bind_context", "configure_logging", "redact"]

AUDIT_LOGGER = "relay.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "relay_log_context", default=None
)

_PATTERNS = Redactor()  # the shapes of secrets (relay.redact), no known secret values


def redact(text: str) -> str:
    """``text`` without JWTs, passwords in URLs, and ``password=...``-style values."""
    return _PATTERNS.scrub(text)


class _Bound:
    """The ``with`` block of :func:`bind`.

    A slotted object rather than a ``@contextmanager`` generator: the block of the request
    middleware lasts as long as a WebSocket, and a suspended generator with its frame costs
    ≈ 0.4 KiB per socket (issue 16, idle sockets).
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields: dict[str, Any] | None = fields
        self._token: contextvars.Token[dict[str, Any] | None] | None = None

    def __enter__(self) -> None:
        current, fields = _CONTEXT.get(), self._fields or {}
        self._token = _CONTEXT.set({**current, **fields} if current else fields)
        self._fields = None

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CONTEXT.reset(self._token)


def bind(**fields: Any) -> _Bound:
    """Add ``fields`` to every record logged by this task (and tasks it starts) inside the block."""
    return _Bound(fields)


def bind_context(**fields: Any) -> None:
    """Add ``fields`` for the rest of the running task (a request handler's own task)."""
    _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})


def context() -> dict[str, Any]:
    """The fields bound for the running task (for audit events and error reports)."""
    return dict(_CONTEXT.get() or {})


class _ContextFilter(logging.Filter):
    """Copy the bound context onto the record (explicit ``extra`` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        if ctx:
            for k, v in ctx.items():
                if not hasattr(record, k):
                    setattr(record, k, v)
        return True


class _PlainFormatter(logging.Formatter):
    scrub: Callable[[str], str] | None = None  # the run's own known secrets (relay.redact)

    def format(self, record: logging.LogRecord) -> str:
        return (self.scrub or redact)(super().format(record))


class _JsonFormatter(JsonFormatter):
    scrub: Callable[[str], str] | None = None

    def format(self, record: logging.LogRecord) -> str:
        return (self.scrub or redact)(super().format(record))


def json_formatter() -> logging.Formatter:
    return _JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
        json_ensure_ascii=False,
        json_default=_json_default,
    )


def _json_default(value: object) -> str:
    """Datetimes (the timestamp) as ISO 8601 with a ``T``; anything else as its ``str``."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def plain_formatter() -> logging.Formatter:
    return _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    stream: IO[str] | None = None,
    scrub: Callable[[str], str] | None = None,
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones); returns it.

    ``scrub`` (a :class:`relay.redact.Redactor` that also knows this run's secrets: the DSN's
    password, the JWT secret) replaces the pattern-only :func:`redact` every line goes through.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = json_formatter() if fmt == "json" else plain_formatter()
    if scrub is not None:
        formatter.scrub = scrub  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


# audit events whose level is INFO (the others are refusals: WARNING)
_INFO_EVENTS = frozenset({"service_role_http"})


def audit_event(event: str, **fields: Any) -> None:
    """One security event on the ``relay.audit`` logger.

    ``fields`` must never hold a token or a password (they are redacted anyway); the bound
    context (``remote``, ``socket``) is added.  The text form is ``<event> key=value ...`` so a
    plain-text log stays greppable.
    """
    data = {**context(), **{k: v for k, v in fields.items() if v is not None}}
    text = " ".join([event, *(f"{k}={v}" for k, v in data.items())])
    level = logging.INFO if event in _INFO_EVENTS else logging.WARNING
    # a field named like a LogRecord attribute ("name", "args", ...) would make logging raise
    extra = {(f"{k}_" if k in _RECORD_ATTRS else k): v for k, v in data.items()}
    audit_log.log(level, "%s", text, extra={"event": event, **extra})


_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "event"}
