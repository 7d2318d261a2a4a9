"""One home for Postgres type rules: what the relay knows of Postgres types, in one package.

Why: the rules were written twice (filters and policies each had input casts for int, numeric,
bool, uuid...) and disagreed in corners; output conversion lived in a third module.  Now:

* :mod:`.names` -- type names: ``format_type`` spellings and aliases to ``typname``.
* :mod:`.output` -- wal2json text -> client JSON (the type registry, :class:`RawJson`).
* :mod:`.arrays` -- array literals, lenient (Postgres' output) and strict (user operands).
* :mod:`.inputs` -- input functions: text -> value exactly as PostgreSQL 15 accepts it.
* :mod:`.extremes`, :mod:`.temporal`, :mod:`.keys` -- comparison keys: Python values that order
  and compare like the type, for operands and for decoded row values.

Dependencies point one way: names, extremes <- inputs <- arrays <- output, temporal <- keys.
Everything here is pure (no I/O) and used by :mod:`relay.core.filters`,
:mod:`relay.core.policies`, the decoder and the catalog.
"""

from relay.core.sqltypes.arrays import parse_array, parse_array_literal, scan_quoted
from relay.core.sqltypes.extremes import NAN, Extreme
from relay.core.sqltypes.inputs import INPUT_FUNCTIONS, CastError
from relay.core.sqltypes.keys import PG_CAST_TYPES, KeyType, key_type
from relay.core.sqltypes.names import display_type, name_from_format_type, normalize_type_name
from relay.core.sqltypes.output import (
    BUILTIN_TYPES,
    Converter,
    RawJson,
    TypeInfo,
    TypeRegistry,
    commit_timestamp,
)

__all__ = [
    "BUILTIN_TYPES",
    "INPUT_FUNCTIONS",
    "NAN",
    "PG_CAST_TYPES",
    "CastError",
    "Converter",
    "Extreme",
    "KeyType",
    "RawJson",
    "TypeInfo",
    "TypeRegistry",
    "commit_timestamp",
    "display_type",
    "key_type",
    "name_from_format_type",
    "normalize_type_name",
    "parse_array",
    "parse_array_literal",
    "scan_quoted",
]
