"""Limits on user payloads (broadcast payloads, presence metas), checked where they enter.

Why at the edge: the relay stores presence metas and queues broadcasts for other clients, so a
payload it cannot write back out must be refused *before* anything is stored or sent.  orjson
reads JSON nested up to 1,024 levels but writes at most 254: a 300-level presence meta used to be
accepted, and then every later joiner of the room, the channels API and the tracker's own
departure failed to encode it.  A sender gets a clear refusal with a stable ``code`` instead.

Pure: no I/O, and nothing here recurses (the depth of hostile input must not reach Python's
recursion limit either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.core.errors import Code, RelayError
from relay.core.protocol import dumps

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MAX_DEPTH_CEILING",
    "PayloadLimits",
    "PayloadRejected",
    "check_depth",
    "check_json",
    "check_size",
    "nesting_depth",
]

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 3 * 1024 * 1024  # Supabase's default broadcast payload limit is 3,000 KB
# A stored payload is written inside up to six more levels (a frame, presence_state's
# {key: {"metas": [meta]}}, the channels API's body): the limit must stay well under orjson's 254.
MAX_DEPTH_CEILING = 200

TOO_DEEP = Code.PAYLOAD_TOO_DEEP
TOO_LARGE = Code.PAYLOAD_TOO_LARGE
INVALID = Code.PAYLOAD_INVALID


class PayloadRejected(RelayError, ValueError):
    """A payload over a limit; ``str()`` is safe to show the sender, ``code`` is stable."""


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """How deep (containers inside containers) and how large (encoded JSON bytes) a payload may be."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_bytes: int = DEFAULT_MAX_BYTES


def nesting_depth(value: Any, stop_after: int | None = None) -> int:
    """Levels of objects/arrays in ``value``: 0 for a scalar, 1 for ``{}`` or ``[1]``.

    Level by level, with lists instead of the call stack; with ``stop_after`` it returns as soon
    as the depth exceeds it (``stop_after + 1``), so a 1,000-level payload costs little.
    """
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth
        below: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below.extend(v for v in items if isinstance(v, dict | list))
        level = below
    return depth


def check_size(n: int, limits: PayloadLimits, what: str = "payload") -> None:
    if n > limits.max_bytes:
        raise PayloadRejected(
            TOO_LARGE, f"{what} size exceeds the limit of {limits.max_bytes} bytes (it has {n})"
        )


def check_depth(value: Any, limits: PayloadLimits, what: str = "payload") -> None:
    if nesting_depth(value, limits.max_depth) > limits.max_depth:
        raise PayloadRejected(TOO_DEEP, f"{what} nests deeper than the limit of {limits.max_depth} levels")


def check_json(value: Any, limits: PayloadLimits, what: str = "payload") -> bytes:
    """Check a parsed JSON value; returns its encoding (the caller keeps it: encoded once).

    Depth first: it is cheap to refuse early, and the encoder itself fails on deep values.
    """
    check_depth(value, limits, what)
    try:
        data = dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise PayloadRejected(INVALID, f"{what} cannot be encoded as JSON: {exc}") from None
    check_size(len(data), limits, what)
    return data
