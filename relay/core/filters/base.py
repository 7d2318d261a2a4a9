"""Filter vocabulary shared by the filter modules: operators, limits and :class:`FilterError`."""

from __future__ import annotations

from typing import Final

from relay.core.errors import Code, RelayError
from relay.core.sqltypes.keys import ARRAY, EQUALITY, ORDERED, TEXT_KIND

#: The operators a condition may use, in the order error messages list them.  Each may be negated
#: with a ``not.`` prefix (``status=not.in.(a,b)``).
OPERATORS: Final = (
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "match", "imatch", "is", "isdistinct",
)  # fmt: skip
#: Upper bound on ``in`` list length: Supabase Realtime's limit, and a bound on per-row work.
MAX_IN_VALUES: Final = 100
#: Upper bound on ANDed conditions in one filter: a bound on per-row work a client can ask for.
MAX_CONDITIONS: Final = 20
#: Longest ``like``/``match`` pattern: patterns run per change, so their cost is bounded too.
MAX_PATTERN_LENGTH: Final = 1000

ALL_OPS: Final = frozenset(OPERATORS)
COMPARISON_OPS: Final = frozenset(("eq", "neq", "lt", "lte", "gt", "gte"))
EQUALITY_OPS: Final = frozenset(("eq", "neq", "in", "is", "isdistinct"))
ARRAY_OPS: Final = frozenset(("eq", "neq", "is", "isdistinct"))
PATTERN_OPS: Final = frozenset(("like", "ilike", "match", "imatch"))
ORDERED_OPS: Final = COMPARISON_OPS | {"in", "is", "isdistinct"}
TEXT_OPS: Final = ORDERED_OPS | PATTERN_OPS
#: Operands of these operators are values of the column's type (cast at bind time); ``like`` and
#: ``match`` take a text pattern and ``is`` a keyword.
CAST_OPS: Final = COMPARISON_OPS | {"in", "isdistinct"}
#: The operators each :attr:`relay.core.sqltypes.keys.KeyType.kind` supports.
KIND_OPS: Final = {ORDERED: ORDERED_OPS, TEXT_KIND: TEXT_OPS, EQUALITY: EQUALITY_OPS, ARRAY: ARRAY_OPS}
IS_VALUES: Final = ("null", "true", "false", "unknown")
_CLIP: Final = 200


class FilterError(RelayError, ValueError):
    """A filter the relay cannot honour.  The message is shown to the end user verbatim.

    A :class:`~relay.core.errors.RelayError` with code ``InvalidBinding`` (the reason carries the
    same ``InvalidBinding:`` prefix as a binding error), and a :class:`ValueError` so callers that
    validate several inputs can catch one type.
    """

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_BINDING, message)

    @property
    def reason(self) -> str:
        return f"InvalidBinding: {self}"


def filter_error(text: str, reason: str) -> FilterError:
    """Build the user-facing error; long filters are clipped so a 100-value list stays readable."""
    shown = text if len(text) <= _CLIP else text[: _CLIP - 1] + "…"
    return FilterError(f'invalid filter "{shown}": {reason}')


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expected_ops() -> str:
    return f'expected one of {", ".join(OPERATORS)}, optionally after "not."'
