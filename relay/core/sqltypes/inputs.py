"""Input functions: operand text -> a value of the type, accepting exactly what Postgres accepts.

Why exact: the relay decides in-process what Postgres would decide -- a filter operand cast at
bind time, a claim cast inside a policy (``(claims->>'tenant')::int``) -- and a cast that the relay
accepts where Postgres refuses (or the reverse) means a subscriber sees rows Postgres would have
hidden, or a policy raises where Postgres answers.  The functions are those of PostgreSQL 15, the
version the project targets (``tests/integration/test_sqltypes_differential.py`` checks them
against the server).  Other major versions differ in corners: 13 rejects numeric ``Infinity``, 16
accepts ``0x1F`` and ``1_000`` as integers and numerics.

Every function returns a *key* (see :mod:`relay.core.sqltypes.keys`): a Python value that compares
like the type, and raises :class:`CastError` with Postgres' message and SQLSTATE.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from relay.core.sqltypes.extremes import NAN, Extreme

__all__ = [
    "INPUT_FUNCTIONS",
    "CastError",
    "ascii_lower",
    "bool_input",
    "float4_input",
    "float8_input",
    "int_input",
    "numeric_input",
    "text_input",
    "to_float4",
    "uuid_input",
]

_UNSET: Final[Any] = object()


class CastError(ValueError):
    """Text the type's input function refuses.

    ``str(error)`` is Postgres' own message where the relay reproduces it (``invalid input syntax
    for type integer: "abc"``) and ``sqlstate`` its SQLSTATE (``22P02`` bad syntax, ``22003`` out
    of range): policies report both as Postgres would.  ``detail`` is a short explanation fit to
    show an end user after "value ... is not a valid <type>" (``None`` when the value alone says
    it all): filters show it.  A :class:`ValueError`, so callers can catch one type.
    """

    def __init__(self, message: str, sqlstate: str = "22P02", detail: str | None = _UNSET) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail: str | None = message if detail is _UNSET else detail


_SPACE: Final = " \t\n\v\f\r"  # C isspace() in the C and UTF-8 locales
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(s: str) -> str:
    """``pg_strncasecmp``/``pg_tolower`` fold ASCII letters only (``str.lower`` would also fold
    the Kelvin sign to ``k``)."""
    return s.translate(_LOWER)


def int_input(type_name: str, typname: str, bits: int) -> Callable[[str], int]:
    """``int2in``/``int4in``/``int8in`` (``pg_strtoint16/32/64``); ``type_name`` is the SQL name
    Postgres' messages use (``smallint``), ``typname`` the one the relay shows (``int2``).

    Surrounding whitespace and one sign are allowed; digits are ASCII only.  The range check
    happens while the digits are read, *before* trailing junk is looked at, so ``99999999999x``
    is out of range while ``2147483648x`` (the one value that only overflows when negated back)
    is a syntax error: both details are reproduced.
    """
    limit = 1 << (bits - 1)
    out_of_range = f"out of range for {typname} ({-limit}..{limit - 1})"
    safe_digits = len(str(limit)) - 1  # this many digits can never overflow

    def parse(s: str) -> int:
        if len(s) <= safe_digits and s.isascii() and s.isdigit():
            return int(s)  # the common case: plain digits
        n = len(s)
        i = 0
        while i < n and s[i] in _SPACE:
            i += 1
        negative = False
        if i < n and s[i] in "+-":
            negative = s[i] == "-"
            i += 1
        j = i
        while j < n and "0" <= s[j] <= "9":
            j += 1
        if j == i:
            raise CastError(f'invalid input syntax for type {type_name}: "{s}"', "22P02", None)
        digits = s[i:j].lstrip("0")
        magnitude = (int(digits) if len(digits) <= 25 else limit + 1) if digits else 0
        if magnitude > limit:
            raise CastError(f'value "{s}" is out of range for type {type_name}', "22003", out_of_range)
        k = j
        while k < n and s[k] in _SPACE:
            k += 1
        if k != n:
            raise CastError(f'invalid input syntax for type {type_name}: "{s}"', "22P02", None)
        if magnitude == limit and not negative:
            raise CastError(f'value "{s}" is out of range for type {type_name}', "22003", out_of_range)
        return -magnitude if negative else magnitude

    return parse


_NUMERIC_SPECIALS: Final = (
    ("nan", None),
    ("infinity", Decimal("Infinity")),
    ("+infinity", Decimal("Infinity")),
    ("-infinity", Decimal("-Infinity")),
    ("inf", Decimal("Infinity")),
    ("+inf", Decimal("Infinity")),
    ("-inf", Decimal("-Infinity")),
)
_INT_MAX_HALF: Final = (2**31 - 1) // 2
_NUMERIC_WEIGHT_MAX: Final = 32767
_NUMERIC_WEIGHT_MIN: Final = -32768
_NUMERIC_DSCALE_MAX: Final = 0x3FFF


def numeric_input(s: str) -> Any:
    """``numeric_in``: NaN / infinities by case-insensitive prefix, then ``set_var_from_str``.

    The exponent is read with C ``strtol`` (so whitespace and a sign may follow the ``e``), and
    the storage limits (weight, display scale) raise "value overflows numeric format" after the
    trailing-junk check, as in Postgres.  NaN becomes the shared key that equals itself.
    """
    n = len(s)
    i = 0
    while i < n and s[i] in _SPACE:
        i += 1
    head = ascii_lower(s[i : i + 9])
    for spelling, special in _NUMERIC_SPECIALS:
        if head.startswith(spelling):
            if any(c not in _SPACE for c in s[i + len(spelling) :]):
                raise CastError(f'invalid input syntax for type numeric: "{s}"', "22P02", None)
            return NAN if special is None else special
    bad = CastError(f'invalid input syntax for type numeric: "{s}"', "22P02", None)
    negative = False
    if i < n and s[i] in "+-":
        negative = s[i] == "-"
        i += 1
    have_dp = False
    if i < n and s[i] == ".":
        have_dp = True
        i += 1
    if not (i < n and "0" <= s[i] <= "9"):
        raise bad
    int_digits: list[str] = []
    frac_digits: list[str] = []
    while i < n:
        c = s[i]
        if "0" <= c <= "9":
            (frac_digits if have_dp else int_digits).append(c)
            i += 1
        elif c == ".":
            if have_dp:
                raise bad
            have_dp = True
            i += 1
        else:
            break
    exponent = 0
    if i < n and s[i] in "eE":
        i += 1
        j = i  # strtol: optional whitespace, optional sign, then at least one digit
        while j < n and s[j] in _SPACE:
            j += 1
        exp_negative = False
        if j < n and s[j] in "+-":
            exp_negative = s[j] == "-"
            j += 1
        k = j
        while k < n and "0" <= s[k] <= "9":
            k += 1
        if k == j:
            raise bad
        exp_digits = s[j:k].lstrip("0")
        exponent = (int(exp_digits) if len(exp_digits) <= 12 else 10**12) if exp_digits else 0
        if exp_negative:
            exponent = -exponent
        if exponent >= _INT_MAX_HALF or exponent <= -_INT_MAX_HALF:
            raise CastError("value overflows numeric format", "22003")
        i = k
    if any(c not in _SPACE for c in s[i:]):
        raise bad
    digits = "".join(int_digits) + "".join(frac_digits)
    dscale = max(0, len(frac_digits) - exponent)
    first = next((pos for pos, c in enumerate(digits) if c != "0"), None)
    if first is None:
        if dscale > _NUMERIC_DSCALE_MAX:
            raise CastError("value overflows numeric format", "22003")
        return Decimal(0)
    # decimal weight of the first significant digit, then in base-10000 digits as stored
    weight = (len(int_digits) - 1 + exponent - first) // 4
    if not _NUMERIC_WEIGHT_MIN <= weight <= _NUMERIC_WEIGHT_MAX or dscale > _NUMERIC_DSCALE_MAX:
        raise CastError("value overflows numeric format", "22003")
    return Decimal(f"{'-' if negative else ''}{digits[first:]}E{exponent - len(frac_digits)}")


_UUID_CANONICAL: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_input(s: str) -> str:
    """``uuid_in``: 32 hex digits, optionally in braces, with an optional ``-`` after any group of
    four; no whitespace.  Returns the canonical lowercase form (which orders like uuids do)."""
    if _UUID_CANONICAL.fullmatch(s):
        return s  # the common case: already canonical
    n = len(s)
    braces = n > 0 and s[0] == "{"
    i = 1 if braces else 0
    out: list[str] = []
    for byte in range(16):
        if i + 1 >= n or s[i] not in _HEX or s[i + 1] not in _HEX:
            raise CastError(f'invalid input syntax for type uuid: "{s}"', "22P02", None)
        out.append(s[i : i + 2])
        i += 2
        if i < n and s[i] == "-" and byte % 2 == 1 and byte < 15:
            i += 1
    if braces:
        if i >= n or s[i] != "}":
            raise CastError(f'invalid input syntax for type uuid: "{s}"', "22P02", None)
        i += 1
    if i != n:
        raise CastError(f'invalid input syntax for type uuid: "{s}"', "22P02", None)
    h = ascii_lower("".join(out))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def bool_input(s: str) -> bool:
    """``boolin``: trimmed, case-insensitive, and any prefix of true/false/yes/no (at least ``of``
    for off, since ``o`` alone is ambiguous), plus exactly ``1``/``0``."""
    t = ascii_lower(s.strip(_SPACE))
    if t:
        first = t[0]
        if first == "t" and "true".startswith(t):
            return True
        if first == "f" and "false".startswith(t):
            return False
        if first == "y" and "yes".startswith(t):
            return True
        if first == "n" and "no".startswith(t):
            return False
        if first == "o" and len(t) >= 2:
            if "on".startswith(t):
                return True
            if "off".startswith(t):
                return False
        if t == "1":
            return True
        if t == "0":
            return False
    raise CastError(f'invalid input syntax for type boolean: "{s}"', "22P02", "expected true or false")


def text_input(s: str) -> str:
    """Text operands are taken verbatim: ``name=eq. a`` looks for a leading space."""
    return s


_FLOAT4: Final = struct.Struct("f")
_FLOAT_SPECIALS: Final = frozenset(("nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf"))


def float8_input(text: str) -> Any:
    """Postgres' float8 input: ``float()`` minus what ``float8in`` refuses.

    ``float()`` also takes ``1_000`` and a signed ``-nan``, and turns ``1e999`` into infinity and
    ``1e-400`` into zero, where Postgres reports "out of range".  NaN becomes :data:`NAN`.
    """
    s = text.strip(_SPACE)
    if not s.isascii() or "_" in s or (s and (s[0].isspace() or s[-1].isspace())):  # float() strips more
        raise CastError(f'invalid input syntax for type double precision: "{text}"', "22P02", None)
    try:
        value = float(s)
    except ValueError:
        raise CastError(f'invalid input syntax for type double precision: "{text}"', "22P02", None) from None
    if value != value or value in (math.inf, -math.inf) or value == 0.0:
        lowered = s.lower()
        if lowered in _FLOAT_SPECIALS:
            return NAN if value != value else value
        if value != value or value != 0.0 or Decimal(s) != 0:
            raise CastError(
                f'"{text}" is out of range for type double precision', "22003", "out of range for float8"
            )
    return value


def to_float4(value: Any) -> Any:
    """Round to single precision, as Postgres casts a ``float4`` operand: ``0.1`` must equal the
    stored ``0.1::float4`` whichever of the two spellings the decoder produced."""
    if isinstance(value, Extreme):
        return value
    return _FLOAT4.unpack(_FLOAT4.pack(value))[0]


def float4_input(text: str) -> Any:
    """``float4in``: read as float8, then rounded; overflow and underflow are out of range."""
    value = float8_input(text)
    rounded = to_float4(value)
    if (rounded in (math.inf, -math.inf) and value not in (math.inf, -math.inf)) or (
        rounded == 0.0 and value != 0.0
    ):
        raise CastError(f'"{text}" is out of range for type real', "22003", "out of range for float4")
    return rounded


#: typname -> input function, for the types whose input the relay reproduces exactly.
INPUT_FUNCTIONS: Final[dict[str, Callable[[str], Any]]] = {
    "int2": int_input("smallint", "int2", 16),
    "int4": int_input("integer", "int4", 32),
    "int8": int_input("bigint", "int8", 64),
    "numeric": numeric_input,
    "float4": float4_input,
    "float8": float8_input,
    "uuid": uuid_input,
    "bool": bool_input,
    "text": text_input,
    "varchar": text_input,
}
