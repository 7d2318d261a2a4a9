"""Claims as Postgres sees them: jsonb values, ``->`` / ``->>`` and their text forms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import orjson

from relay.core.policies.model import PolicyEvalError


class _SqlNull:
    """A jsonb-valued expression that is SQL NULL (``claims->'missing'``), as opposed to JSON
    ``null`` (which is a jsonb scalar and, for instance, makes ``jsonb_array_elements_text`` fail)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SQL NULL"


SQL_NULL: Final = _SqlNull()


def _numeric_out(d: Decimal) -> str:
    """``numeric_out``: plain notation with as many decimals as the input had (its dscale)."""
    if not d.is_finite():
        return "NaN" if d.is_nan() else ("Infinity" if d > 0 else "-Infinity")
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    dscale = max(0, -exponent)
    if not d:
        return "0." + "0" * dscale if dscale else "0"  # numeric has no negative zero
    return format(d, "f")


def _number_text(value: int | float | Decimal) -> str | None:
    """How a JSON number of the claims prints from jsonb (``numeric_out`` of what was sent).

    The slow path sends ``orjson.dumps(claims)``: floats in orjson's shortest form, which keeps the
    decimals (``7.0`` prints ``7.0``, so ``::int`` rejects it), and non-finite floats as ``null``.
    """
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _numeric_out(Decimal(orjson.dumps(value).decode()))
    return _numeric_out(value)


def _escape_json(s: str) -> str:
    """``escape_json``: the few escapes jsonb output uses; other characters are kept as they are."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch < " ":
            out.append(_CONTROL_ESCAPES.get(ch) or f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_CONTROL_ESCAPES: Final = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jsonb_key_order(key: str) -> tuple[int, bytes]:
    """jsonb keeps object keys sorted by byte length, then bytewise."""
    raw = key.encode("utf-8", "surrogatepass")
    return (len(raw), raw)


def _render(value: Any) -> str:
    """``jsonb_out`` of a claims value: ``{"a": 1, "bb": [true, null]}``."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _escape_json(value)
    if isinstance(value, int | float | Decimal):
        text = _number_text(value)
        return "null" if text is None else text
    if isinstance(value, Mapping):
        items = sorted(((str(k), v) for k, v in value.items()), key=lambda kv: _jsonb_key_order(kv[0]))
        return "{" + ", ".join(f"{_escape_json(k)}: {_render(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    raise PolicyEvalError(
        "22P02", f"claims value of type {type(value).__name__} is not JSON", "invalid_claims"
    )


def json_text(value: Any) -> str | None:
    """``->>``'s result for a value found in the claims: strings as they are, JSON null as SQL
    NULL, everything else as jsonb prints it."""
    if isinstance(value, str):
        return value
    if value is None or value is SQL_NULL:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float | Decimal):
        return _number_text(value)
    return _render(value)


def json_get(container: Any, key: str) -> Any:
    """``container -> key``: SQL NULL when the key is missing or the container is not an object."""
    if type(container) is dict or isinstance(container, Mapping):
        value = container.get(key, SQL_NULL)
        if isinstance(value, float) and not math.isfinite(value):
            return None  # orjson sends NaN/Infinity as null
        return value
    return SQL_NULL
