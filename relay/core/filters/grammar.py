"""The filter grammar: PostgREST's ``column=[not.]op.operand`` conditions, comma-separated."""

from __future__ import annotations

from relay.core.filters.base import (
    ALL_OPS,
    IS_VALUES,
    MAX_CONDITIONS,
    MAX_IN_VALUES,
    FilterError,
    expected_ops,
    filter_error,
)
from relay.core.filters.model import Condition, Filter
from relay.core.sqltypes.arrays import scan_quoted

__all__ = ["parse_filter"]


def parse_filter(text: str) -> Filter:
    """Parse ``column=[not.]op.operand[,column=[not.]op.operand...]`` (PostgREST syntax).

    Conditions are separated by commas and ANDed.  In each, the column is everything before the
    first ``=`` (surrounding spaces dropped), then an optional ``not.``, then the operator up to the
    next ``.``.  A scalar operand is either double-quoted (``"a,b"``; backslash escapes any
    character, as in realtime-js's builder and PostgREST) or the text up to the next comma, verbatim
    (it may contain ``=`` and ``.``, may be empty, meaning the empty string, and ``\\,`` stands for
    a comma, as upstream's parser reads it).  ``in`` takes ``(a,b,"c,d")``: items are trimmed, and
    double quotes protect commas, parentheses, spaces or an empty string.  ``is`` takes ``null``,
    ``true``, ``false`` or ``unknown``.
    """
    if not isinstance(text, str):
        raise FilterError(f'invalid filter {text!r}: a filter must be a string like "id=eq.1"')
    conditions: list[Condition] = []
    i, n = 0, len(text)
    while True:
        cond, i = _parse_condition(text, i)
        conditions.append(cond)
        if len(conditions) > MAX_CONDITIONS:
            raise filter_error(text, f"too many conditions (at most {MAX_CONDITIONS})")
        if i >= n:
            return Filter(tuple(conditions), text)
        i += 1  # the comma
        if i >= n or not text[i:].strip():
            raise filter_error(text, "empty condition after a comma")


def _parse_condition(text: str, start: int) -> tuple[Condition, int]:
    """Parse one condition starting at ``start``; returns it and the index of the ``,`` or end."""
    eq = text.find("=", start)
    comma = text.find(",", start)
    if eq == -1 or (comma != -1 and comma < eq):
        part = text[start : comma if comma != -1 else len(text)]
        if not part.strip():
            raise filter_error(text, "empty condition")
        raise filter_error(
            text,
            f'missing "=" in "{part}" (expected column=operator.value, e.g. "id=eq.1"; commas separate '
            'conditions, so quote a value that holds one, e.g. tags=eq."{a,b}")',
        )
    column = text[start:eq].strip()
    if not column:
        raise filter_error(text, 'empty column name before "="')
    i = eq + 1
    negated = text.startswith("not.", i)
    if negated:
        i += 4
    dot = text.find(".", i)
    end_op = dot if dot != -1 else len(text)
    if comma != -1 and comma > eq and comma < end_op:
        end_op = comma
    op = text[i:end_op]
    if end_op == len(text) or text[end_op] != ".":
        if op in ALL_OPS or op in ("", "not"):
            raise filter_error(
                text, f'missing "." after the operator (expected {column}=operator.value, e.g. eq.1)'
            )
        raise filter_error(text, f'unknown operator "{op}" ({expected_ops()})')
    if op not in ALL_OPS:
        raise filter_error(text, f'unknown operator "{op}" ({expected_ops()})')
    i = end_op + 1
    if op == "in":
        values, i = _parse_in_list(text, i)
    else:
        value, i = _parse_scalar(text, i)
        if op == "is":
            word = value.lower()
            if word not in IS_VALUES:
                raise filter_error(text, f'"is" takes null, true, false or unknown, not "{value}"')
            value = word
        values = (value,)
    return Condition(column, op, values, text[start:i].strip(), negated), i


def _parse_scalar(text: str, i: int) -> tuple[str, int]:
    """A scalar operand at ``i``: quoted, or verbatim up to the next unescaped comma."""
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == '"':
        scanned = scan_quoted(text, j + 1)
        if scanned is None:
            raise filter_error(text, "unterminated quoted value")
        value, j = scanned
        while j < n and text[j].isspace():
            j += 1
        if j < n and text[j] != ",":
            raise filter_error(text, "unexpected text after a quoted value (quote the whole value)")
        return value, j
    chars: list[str] = []
    while i < n:
        c = text[i]
        if c == ",":
            break
        if c == "\\" and i + 1 < n and text[i + 1] == ",":
            c = ","
            i += 1
        chars.append(c)
        i += 1
    return "".join(chars), i


def _parse_in_list(text: str, i: int) -> tuple[tuple[str, ...], int]:
    """Split ``(...)`` at ``i``; a small scanner because quoted items may hold commas or parens.

    Returns the items and the index past the closing parenthesis (and trailing spaces)."""
    n = len(text)
    if i >= n or text[i] != "(":
        raise filter_error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
    i += 1
    values: list[str] = []
    while True:
        while i < n and text[i].isspace():
            i += 1
        position = len(values) + 1
        if i < n and text[i] == '"':
            scanned = scan_quoted(text, i + 1)
            if scanned is None:
                raise filter_error(text, f"unterminated quoted value in the in list (position {position})")
            quoted, i = scanned
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] not in ",)":
                raise filter_error(
                    text, f"unexpected text after a quoted value in the in list (position {position})"
                )
            values.append(quoted)
        else:
            j = i
            while j < n and text[j] not in ",)":
                j += 1
            item = text[i:j].strip()
            if j >= n:
                raise filter_error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
            if not item:
                if text[j] == ")" and not values:
                    raise filter_error(text, "empty in list (give at least one value)")
                raise filter_error(
                    text, f'empty value in the in list (position {position}); write "" for an empty string'
                )
            if '"' in item:
                raise filter_error(
                    text, f"stray double quote in the in list (position {position}); quote the whole value"
                )
            if "(" in item:
                raise filter_error(
                    text, f'parenthesis in the in list (position {position}); quote the value, e.g. "a(b)"'
                )
            values.append(item)
            i = j
        if i >= n:
            raise filter_error(text, 'the in operator takes a parenthesised list, e.g. "in.(1,2,3)"')
        if len(values) > MAX_IN_VALUES:
            raise filter_error(text, f"too many values in the in list: more than {MAX_IN_VALUES}")
        if text[i] == ")":
            i += 1
            while i < n and text[i].isspace():
                i += 1
            if i < n and text[i] != ",":
                raise filter_error(text, "unexpected text after the in list")
            return tuple(values), i
        i += 1  # the comma
