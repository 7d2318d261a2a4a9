"""Which types the fast path models, how they compare, and row values as keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from relay.core.policies.model import PolicyEvalError
from relay.core.sqltypes.inputs import INPUT_FUNCTIONS, CastError, uuid_input
from relay.core.sqltypes.keys import numeric_key as numeric_row_key

#: Cast targets the fast path models: text -> value in the key domain of the type's family.
INPUT: Final[dict[str, Callable[[str], Any]]] = {
    t: INPUT_FUNCTIONS[t] for t in ("int2", "int4", "int8", "numeric", "uuid", "bool", "text", "varchar")
}

#: Comparison families: values of one family compare with each other by value.
FAMILY: Final = {
    "int2": "num",
    "int4": "num",
    "int8": "num",
    "numeric": "num",
    "text": "text",
    "varchar": "text",
    "uuid": "uuid",
    "bool": "bool",
}
NUM_RANK: Final = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3}
INT_RANGES: Final = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}

#: Column types whose decoded value is None exactly when the SQL value is NULL, so ``IS [NOT]
#: NULL`` is exact.  json/jsonb are not (JSON null decodes to None too), nor are composites
#: (``row IS NULL`` is true when all fields are NULL) or unknown types (domains over them).
#: Arrays (``_`` type names) always are: an array value is never "a row of NULLs".
NULL_TESTABLE: Final = frozenset(
    (
        *FAMILY,
        "float4",
        "float8",
        "bpchar",
        "name",
        "citext",
        "bytea",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "inet",
        "cidr",
        "macaddr",
        "oid",
        "money",
    )
)


# --------------------------------------------------------------------------------------------------
# Row values -> keys


def _bad_row(column: str, value: Any) -> PolicyEvalError:
    return PolicyEvalError(
        "XX000", f'unexpected value {value!r} in column "{column}" (decoder mismatch)', "invalid_row_value"
    )


def row_converter(column: str, typ: str) -> Callable[[Any], Any]:
    """Decoded row value -> key comparable with cast claims (``None`` for NULL).

    Rows come from the relay's decoder (ints, exact numerics, lowercase uuid strings...); a value
    outside that model fails closed with ``invalid_row_value`` rather than being guessed at.
    """
    family = FAMILY.get(typ)
    if typ in INT_RANGES:

        def int_key(v: Any) -> Any:
            if type(v) is int or v is None:
                return v
            raise _bad_row(column, v)

        return int_key
    if typ == "numeric":

        def numeric_key(v: Any) -> Any:
            if v is None or type(v) is int:
                return v
            try:
                return numeric_row_key(v)
            except (ValueError, TypeError, ArithmeticError):
                raise _bad_row(column, v) from None

        return numeric_key
    if family == "text":

        def text_key(v: Any) -> Any:
            if v is None or type(v) is str:
                return v
            raise _bad_row(column, v)

        return text_key
    if typ == "uuid":

        def uuid_key(v: Any) -> Any:
            if v is None:
                return None
            if type(v) is str:
                if len(v) == 36 and v[8] == "-":
                    return v.lower()
                try:
                    return uuid_input(v)
                except CastError:
                    pass
            raise _bad_row(column, v)

        return uuid_key
    if typ == "bool":

        def bool_key(v: Any) -> Any:
            if v is None or type(v) is bool:
                return v
            raise _bad_row(column, v)

        return bool_key

    def opaque(v: Any) -> Any:
        return v

    return opaque
