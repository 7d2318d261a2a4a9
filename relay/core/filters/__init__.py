"""Row filters of postgres_changes subscriptions, as Supabase Realtime takes them.

A filter is one or more comma-separated conditions, ANDed (Supabase Realtime PR #1912, and what
realtime-js's ``postgresChangesFilter()`` builds): ``value=gte.b,value=lte.d``.  Each condition is
``column=[not.]operator.operand`` in PostgREST's syntax; see :func:`parse_filter` for the grammar
and docs/protocol.md for the operator table.

Why a module of its own, and why it is pure: every change the relay decodes is matched against
every subscription on its table, so matching is the hottest loop of the relay, and it must agree
with what Postgres itself would have answered for ``column <op> operand::column_type``.  Keeping it
free of I/O lets us test those semantics exhaustively from plain dicts.

The work is split in two so that the per-row cost stays tiny:

* :func:`parse_filter` checks the syntax once, when a client subscribes, and yields a
  :class:`Filter` of :class:`Condition` s holding the raw textual operand(s).
* :meth:`Filter.bind` casts the operand(s) to the columns' Postgres types once (that is where
  ``id=eq.abc`` on an ``int4`` column is rejected) and compiles a :class:`BoundFilter` whose
  ``matches`` is a closure specialised for the operator and the type: for ``int``/``text``
  columns it is a dict lookup, a type check and one comparison.  The server first has Postgres
  itself cast the operands (``canonical``, see :meth:`Filter.casts`), so what is accepted, and
  what ``now`` or ``1e3`` mean, is exactly what Postgres decides; the key functions of
  :mod:`relay.core.sqltypes.keys` then only read Postgres' canonical output.

Values are compared as *keys*: each supported type has a converter from the operand text and one
from the decoded row value (see :mod:`relay.core.changes`) to a Python value that orders and
compares like the Postgres type does.  Deliberate approximations, all documented at the converter:
``text`` orders by code point (Postgres orders by the column's collation); types the relay does not
know (enums, domains, ``interval``, ``inet``...) are compared as text, so their ordering may differ
from Postgres'; json/jsonb values are kept as Postgres's text (:class:`relay.core.sqltypes.RawJson`),
so JSON ``null`` is told from SQL ``NULL`` and matches ``eq.null``, and a json value nested too
deeply to parse never matches; scalar ``uuid`` row strings are trusted to be lowercase (as Postgres
prints them); date/time values Python cannot represent (BC, year > 9999) never match, and
sub-microsecond digits are truncated where Postgres would round.  ``ilike`` lowercases with Python's
``str.lower`` (Postgres uses the collation's), and ``match``/``imatch`` accept the common subset of
POSIX and Python regular expressions (see :mod:`relay.core.filters.patterns`).

The package: :mod:`.grammar` parses, :mod:`.model` holds parsed filters and binds them to types,
:mod:`.matching` compiles the row tests, :mod:`.patterns` the like/match operators; the type rules
(casts, keys, type names) live in :mod:`relay.core.sqltypes`.
"""

from relay.core.filters.base import MAX_CONDITIONS, MAX_IN_VALUES, MAX_PATTERN_LENGTH, OPERATORS, FilterError
from relay.core.filters.grammar import parse_filter
from relay.core.filters.model import BoundCondition, BoundFilter, Condition, Filter
from relay.core.sqltypes.keys import PG_CAST_TYPES
from relay.core.sqltypes.names import normalize_type_name

__all__ = [
    "MAX_CONDITIONS",
    "MAX_IN_VALUES",
    "MAX_PATTERN_LENGTH",
    "OPERATORS",
    "PG_CAST_TYPES",
    "BoundCondition",
    "BoundFilter",
    "Condition",
    "Filter",
    "FilterError",
    "normalize_type_name",
    "parse_filter",
]
