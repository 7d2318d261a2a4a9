"""Type names: ``format_type`` spellings, aliases and ``typname`` s mapped to one form.

Why one place: wal2json reports ``format_type`` output (``integer``, ``numeric(10,2)[]``), the
catalog speaks ``typname`` (``int4``, ``_numeric``), and callers (filters, policies, the decoder)
used to each carry a partial table of aliases.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

__all__ = ["display_type", "name_from_format_type", "normalize_type_name"]

_FORMAT_TYPE_NAMES = {
    "integer": "int4",
    "bigint": "int8",
    "smallint": "int2",
    "boolean": "bool",
    "text": "text",
    "character varying": "varchar",
    "character": "bpchar",
    "numeric": "numeric",
    "double precision": "float8",
    "real": "float4",
    "jsonb": "jsonb",
    "json": "json",
    "uuid": "uuid",
    "bytea": "bytea",
    "date": "date",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time without time zone": "time",
    "time with time zone": "timetz",
    "interval": "interval",
}


def name_from_format_type(text: str) -> str:
    """Best-effort ``typname`` from a ``format_type`` string such as ``numeric(10,2)[]``.

    The decoder's fallback for an oid the registry does not know.  Unlike
    :func:`normalize_type_name` it keeps the case of the name: a quoted user type (``"Mood"``)
    is a different ``typname`` from ``mood``, and the decoder only needs exact names.
    """
    is_array = text.endswith("[]")
    base = text[:-2] if is_array else text
    base = base.split("(", 1)[0].strip().strip('"')
    if "." in base:
        base = base.rsplit(".", 1)[1].strip('"')
    name = _FORMAT_TYPE_NAMES.get(base, base)
    return "_" + name if is_array else name


_ALIASES: Final = {
    "smallint": "int2",
    "integer": "int4",
    "int": "int4",
    "bigint": "int8",
    "real": "float4",
    "double precision": "float8",
    "float": "float8",
    "decimal": "numeric",
    "boolean": "bool",
    "character varying": "varchar",
    "character": "bpchar",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
}
_TYPMOD_RE: Final = re.compile(r"\s*\([^)]*\)")
_ARRAY_SUFFIX_RE: Final = re.compile(r"(?:\s*\[\d*\])+$")


@lru_cache(maxsize=512)
def normalize_type_name(column_type: str) -> str:
    """Map a column type to its ``typname``: ``integer[]`` -> ``_int4``, ``numeric(10,2)`` -> ``numeric``.

    wal2json reports ``format_type`` spellings while the catalog speaks ``typname``; accepting
    both here means callers never have to care which one they hold.  Schema qualifiers and quotes
    are dropped, since only built-in types get special treatment anyway.
    """
    t = column_type.strip()
    is_array = False
    suffix = _ARRAY_SUFFIX_RE.search(t)
    if suffix:
        is_array = True
        t = t[: suffix.start()]
    t = _TYPMOD_RE.sub("", t).replace('"', "").rpartition(".")[2]
    t = " ".join(t.lower().split())
    t = _ALIASES.get(t, t)
    return "_" + t if is_array else t


def display_type(typ: str) -> str:
    """How a type is named in messages: ``_int4`` reads better as ``int4[]``."""
    return typ[1:] + "[]" if typ.startswith("_") else typ
