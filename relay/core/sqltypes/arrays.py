"""Postgres array literals: ``{1,2,NULL}``, ``{"a b","c\\"d"}``, ``{{1,2},{3,4}}``.

Two readers with different contracts: :func:`parse_array` reads what Postgres *wrote* (wal2json
output, trusted, on the hot path: never raises, returns the text unchanged when it is not an
array), :func:`parse_array_literal` reads what a client *typed* as a filter operand (strict:
raises :class:`~relay.core.sqltypes.inputs.CastError` with a message fit for the user).  Both
share the quoting rules (:func:`scan_quoted`), which filter ``in`` lists use too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from relay.core.sqltypes.inputs import CastError

__all__ = ["identity", "map_tree", "parse_array", "parse_array_literal", "scan_quoted"]

Converter = Callable[[Any], Any]


def identity(v: Any) -> Any:
    return v


def scan_quoted(s: str, i: int) -> tuple[str, int] | None:
    """Read a double-quoted item whose opening quote is at ``s[i - 1]``; backslash escapes.

    Returns the unescaped text and the index after the closing quote, or None when the quote
    is never closed.  Shared by array literals and filter ``in`` lists, which quote alike.
    """
    n = len(s)
    chars: list[str] = []
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            chars.append(s[i + 1])
            i += 2
        elif c == '"':
            return "".join(chars), i + 1
        else:
            chars.append(c)
            i += 1
    return None


def parse_array(text: str, element: Converter = identity) -> Any:
    """Parse a Postgres array literal (``{1,2,NULL}``, ``{"a b","c\\"d"}``, nested) to lists.

    Elements are converted by ``element``; unquoted ``NULL`` is ``None``.  A leading dimension
    decoration (``[0:2]={...}``) is skipped.  Returns the text unchanged if it is not an array.
    """
    if not text:
        return text
    pos = 0
    if text[0] == "[":
        eq = text.find("=")
        if eq < 0:
            return text
        pos = eq + 1
    if pos >= len(text) or text[pos] != "{":
        return text
    if pos == 0 and text[-1] == "}" and "{" not in text[1:]:
        if '"' not in text and "\\" not in text:
            # fast path: one dimension, no quoting (ints, plain words): a split does it
            if len(text) == 2:
                return []
            return [None if item == "NULL" else element(item) for item in text[1:-1].split(",")]
        try:
            return _parse_flat(text[1:-1], element)
        except ValueError:
            return text
    try:
        result, end = _parse_array_at(text, pos, element)
    except (ValueError, IndexError):
        return text
    return result if end == len(text) else text


_ARRAY_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,"{}\\]*?))\s*(,|$)')
_UNESCAPE = re.compile(r"\\(.)")


def _parse_flat(inner: str, element: Converter) -> list[Any]:
    """One-dimensional array body with quoted items: a regex tokenizer (C speed, no per-char loop)."""
    out: list[Any] = []
    pos = 0
    match = _ARRAY_TOKEN.match
    while True:
        m = match(inner, pos)
        if m is None:
            raise ValueError("malformed array literal")
        quoted, plain, sep = m.groups()
        if quoted is not None:
            out.append(element(_UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted))
        else:
            out.append(None if plain == "NULL" else element(plain))
        if not sep:
            return out
        pos = m.end()


def _parse_array_at(text: str, pos: int, element: Converter) -> tuple[list[Any], int]:
    assert text[pos] == "{"
    pos += 1
    out: list[Any] = []
    n = len(text)
    if pos < n and text[pos] == "}":
        return out, pos + 1
    while pos < n:
        c = text[pos]
        if c == "{":
            sub, pos = _parse_array_at(text, pos, element)
            out.append(sub)
        elif c == '"':
            scanned = scan_quoted(text, pos + 1)
            if scanned is None:
                raise ValueError("unterminated quoted element")
            item, pos = scanned
            out.append(element(item))
        else:
            start = pos
            while pos < n and text[pos] not in ",}":
                pos += 1
            raw = text[start:pos].strip()
            out.append(None if raw == "NULL" else element(raw))
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "}":
            return out, pos + 1
    raise ValueError("unterminated array literal")


def parse_array_literal(text: str) -> list[Any]:
    """Parse ``{1,2,NULL}`` / ``{"a b","c\\"d"}`` / ``{{1,2},{3,4}}`` into nested lists of
    ``str | None``.  Kept to what array filters need: no explicit bounds, no custom delimiters."""
    s = text.strip()
    if not s.startswith("{"):
        raise CastError("an array value looks like {1,2,3}")
    items, end = _array_items(s, 1)
    if s[end:].strip():
        raise CastError("unexpected text after the closing }")
    return items


def _array_items(s: str, i: int) -> tuple[list[Any], int]:
    """Scan the items after the ``{`` at ``i - 1``; returns them and the index past the ``}``."""
    items: list[Any] = []
    n = len(s)

    def skip(j: int) -> int:
        while j < n and s[j].isspace():
            j += 1
        return j

    i = skip(i)
    if i < n and s[i] == "}":
        return items, i + 1
    while True:
        i = skip(i)
        if i >= n:
            raise CastError("missing closing }")
        c = s[i]
        if c == "{":
            sub, i = _array_items(s, i + 1)
            items.append(sub)
        elif c == '"':
            scanned = scan_quoted(s, i + 1)
            if scanned is None:
                raise CastError("unterminated quoted element")
            item, i = scanned
            items.append(item)
        else:
            chars: list[str] = []
            escaped = False
            while i < n and s[i] not in ",}":
                c = s[i]
                if c in '{"':
                    raise CastError('unexpected { or " inside an element; quote the element')
                if c == "\\" and i + 1 < n:
                    escaped = True
                    c = s[i + 1]
                    i += 1
                chars.append(c)
                i += 1
            raw = "".join(chars).strip()
            if not raw:
                raise CastError('empty element; write "" for an empty string')
            items.append(None if not escaped and raw.upper() == "NULL" else raw)
        i = skip(i)
        if i >= n:
            raise CastError("missing closing }")
        if s[i] == "}":
            return items, i + 1
        if s[i] != ",":
            raise CastError(f'expected "," or "}}" at offset {i}')
        i += 1


def map_tree(items: Any, convert: Callable[[Any], Any], nested: bool) -> tuple[Any, ...]:
    """Convert array elements, keeping NULLs (arrays compare NULL elements as equal) and nesting."""
    if not isinstance(items, list | tuple):
        raise TypeError(type(items).__name__)
    return tuple(
        None if x is None else map_tree(x, convert, nested) if nested and isinstance(x, list) else convert(x)
        for x in items
    )
