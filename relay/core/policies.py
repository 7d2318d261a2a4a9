"""Row policies: DBA-written SQL predicates over a changed row and a subscriber's JWT claims.

A policy's ``using`` text is one boolean SQL expression over the table's columns and ``claims``
(the subscriber's claims as ``jsonb``), optionally through Supabase's helpers ``auth.uid()``,
``auth.role()`` and ``auth.jwt()``.  A row is visible when a policy evaluates to TRUE.

Why this module exists, and why it is pure: every change is checked against every subscriber, so
asking Postgres each time would cost a round trip per change and per distinct identity.  The
common shapes (tenant/branch membership, ownership, role grants, IN lists, AND/OR/NOT) are
therefore compiled into an in-process predicate, and everything else is evaluated by Postgres
(:attr:`CompiledPolicy.fast` is ``None``).  Nothing is approximated: a shape is on the fast path
only when its Postgres semantics are modelled exactly, including errors.

What "exactly" means here.  The relay's reference is the *rewritten* expression
(:attr:`CompiledPolicy.sql`, with ``auth.*`` replaced by reads of ``claims``) evaluated the way
the slow path evaluates it: ``select (<sql>) from jsonb_populate_record(null::t, $1) as t,
(select $2::jsonb as claims) c`` with the claims bound as a parameter (``realtime.eval_policy``).
In that query the claims are a constant for the planner, so Postgres evaluates every claims-only
subexpression *at plan time* (``eval_const_expressions``), left to right, and only the parts that
read the row at run time.  That decides when a bad claim raises: ``status = 'x' AND branch_id =
(claims->>'b')::int`` raises for ``b = "abc"`` even for rows whose status is not ``'x'``, whereas
``auth.role() = 'admin' AND ...`` with a non-admin role is folded to FALSE before the cast is
reached.  The fast path reproduces this in two phases: :meth:`_Bool.fold` is the planner's
constant folding (claims only, may raise, short-circuits AND/OR only on constant arms) and the
residual it returns is the executor (reads the row; only ``= ANY (select
jsonb_array_elements_text(...))`` can raise there, because the planner never folds a sub-select).
Parse analysis comes before both and shapes what is folded: ``x IN (a, b, ...)`` becomes one
``x = ANY (ARRAY[...])`` of the literal items followed by a separate, OR-ed ``x = item`` for each
item that reads ``claims`` (still a column of ``c`` at that stage), so folding stops casting the
claims items once one of them settles the list (:class:`_InList`).

One consequence is worth knowing: the *original* expression, where ``auth.uid()`` reads a setting
at run time, may short-circuit differently from the rewritten one when a claim is malformed
(``status = 'open' OR owner = auth.uid()`` with ``sub = "abc"``: TRUE for an open row in the
original, an error in the rewritten form).  Postgres documents evaluation order as undefined; the
relay follows the rewritten form consistently on both of its paths.

The input functions (text to int2/int4/int8/numeric/uuid/bool) are those of PostgreSQL 15, the
version the project targets and the equivalence tests run against.  Other major versions differ
in corners of claims *input*: 13 rejects numeric ``Infinity``, 16 accepts ``0x1F`` and ``1_000``
as integers and numerics.  Claims are seen as Postgres sees ``orjson.dumps(claims)`` (how the
slow path sends them): floats print as orjson prints them, non-finite floats become JSON
``null``.  Text equality is byte equality, which holds for deterministic collations (every
database default; a column declared with a nondeterministic ICU collation would differ);
ordering on text is never on the fast path because it depends on the collation.

Deliberately off the fast path (evaluated by Postgres): any function other than the ``auth.*``
helpers (including the ``(select auth.uid())`` idiom), other sub-selects, casts of columns or to
other types, arithmetic, LIKE, jsonb comparisons, float/timestamp/enum comparisons, and columns
whose type the caller did not give.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import orjson
from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, NullTestType, SetOperation, SubLinkType
from pglast.parser import ParseError
from pglast.stream import RawStream

from relay.core.filters import _NAN, _numeric_key, normalize_type_name

__all__ = [
    "CompiledPolicy",
    "FastPredicate",
    "IndexTerm",
    "Policy",
    "PolicyError",
    "PolicyEvalError",
    "compile_policy",
]


# --------------------------------------------------------------------------------------------------
# Public types


class PolicyError(ValueError):
    """The policy text is not one SQL expression.  The message is meant for the DBA who wrote it.

    A :class:`ValueError` so a loader validating many inputs can catch one type.
    """


#: SQLSTATE -> the stable code the relay reports (and logs) for an evaluation error.
_CODES: Final = {
    "22P02": "invalid_text_representation",
    "22003": "numeric_value_out_of_range",
    "22023": "cannot_extract_elements",
}


class PolicyEvalError(Exception):
    """Evaluating the policy for these claims fails, and fails in Postgres too.

    The failure belongs to one subscriber (a claim that does not cast, an "array" claim that is an
    object), so it is an exception the caller turns into a per-subscriber denial rather than a
    result.  ``code`` is stable for logs and clients; ``sqlstate`` is what Postgres reports.
    """

    def __init__(self, sqlstate: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code or _CODES.get(sqlstate, sqlstate)


@dataclass(frozen=True)
class Policy:
    """One row policy as the DBA defined it: who it applies to and its ``using`` expression."""

    schema: str
    table: str
    name: str
    roles: tuple[str, ...]
    using: str


@dataclass(frozen=True)
class IndexTerm:
    """A top-level AND-ed conjunct ``column = <claims>`` (or ``= any``/``in`` over claims).

    It lets the relay look subscribers up by the row's value instead of testing each one:
    ``keys(claims)`` is every key the column must equal for the policy to possibly be TRUE (it
    raises :class:`PolicyEvalError` when the claims make the policy fail, for every row that
    reaches the term), and ``row_key(value)`` maps a decoded row value into the same domain
    (``None`` for NULL).  A row whose key is not in ``keys`` can never see TRUE from this policy.
    """

    column: str
    keys: Callable[[Mapping[str, Any]], frozenset[Any]]
    row_key: Callable[[Any], Any]


FastPredicate = Callable[[Mapping[str, Any], Mapping[str, Any]], bool | None]


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy ready for the relay.

    ``sql`` is the expression with ``auth.uid()`` / ``auth.role()`` / ``auth.jwt()`` replaced by
    reads of ``claims``, so that Postgres can evaluate it with the claims as one ``jsonb`` value in
    scope (one call covers many subscribers).  ``fast(row, claims)`` answers TRUE / FALSE /
    ``None`` (SQL NULL) exactly as that evaluation would, raising :class:`PolicyEvalError` where it
    raises; it is ``None`` when the expression is outside the shapes the relay models.
    ``claims_only`` says the decision depends on the claims alone (only ever set for fast
    policies: a slow one may read other tables).  ``columns`` are the row columns read.
    ``slow_reason`` says why a policy is not on the fast path (for logs and ``relay check``).
    ``specialize(claims)`` is ``fast`` split in two: the plan-time, claims-only part evaluated
    once (a constant verdict, or a predicate over the row; it raises where that part raises),
    so the relay can do it once per subscriber instead of once per row.
    """

    policy: Policy
    sql: str
    fast: FastPredicate | None
    claims_only: bool
    index: tuple[IndexTerm, ...]
    columns: frozenset[str]
    slow_reason: str | None = field(default=None, compare=False)
    specialize: Callable[[Mapping[str, Any]], Any] | None = field(default=None, compare=False)


# --------------------------------------------------------------------------------------------------
# Parsing and rewriting


def _parse_expression(text: str) -> ast.Node:
    """Parse ``text`` as exactly one SQL expression, with Postgres' own grammar (libpg_query).

    The text is parsed as the target of a bare ``SELECT`` (not wrapped in parentheses, so a text
    like ``a) OR (b`` cannot pass), and anything but a single unnamed target is refused: that is
    what rules out ``1; drop table x``, ``true from t`` or an empty policy.
    """
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("the policy expression is empty")
    try:
        stmts = parse_sql("SELECT " + text)
    except ParseError as exc:
        where = ""
        location = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(location, int) and location >= 7:  # a 0-based offset into "SELECT " + text
            where = f" (at character {location - 6})"
        raise PolicyError(f"not a valid SQL expression: {exc.args[0]}{where}") from None
    if len(stmts) != 1:
        raise PolicyError(f"expected one SQL expression, found {len(stmts)} statements")
    stmt = stmts[0].stmt
    if not isinstance(stmt, ast.SelectStmt):
        raise PolicyError("expected one SQL expression")
    targets = stmt.targetList or ()
    if not targets:
        raise PolicyError("the policy expression is empty")
    if _select_clauses(stmt) or len(targets) != 1:
        raise PolicyError("expected one SQL expression, not a query (no FROM, WHERE, commas, ...)")
    target = targets[0]
    if not isinstance(target, ast.ResTarget) or target.name or target.indirection or target.val is None:
        raise PolicyError("expected one SQL expression (without an AS alias)")
    if isinstance(target.val, ast.ColumnRef) and any(
        isinstance(f, ast.A_Star) for f in target.val.fields or ()
    ):
        raise PolicyError("expected one SQL expression, not *")
    val: ast.Node = target.val
    return val


_SELECT_CLAUSES: Final = (
    "distinctClause",
    "intoClause",
    "fromClause",
    "whereClause",
    "groupClause",
    "havingClause",
    "windowClause",
    "valuesLists",
    "sortClause",
    "limitOffset",
    "limitCount",
    "lockingClause",
    "withClause",
    "larg",
    "rarg",
)


def _select_clauses(stmt: ast.SelectStmt) -> list[str]:
    """The clauses of a SELECT besides its target list (a bare ``SELECT <expr>`` has none)."""
    extra = [name for name in _SELECT_CLAUSES if getattr(stmt, name, None)]
    if stmt.op is not None and stmt.op != SetOperation.SETOP_NONE:
        extra.append("op")
    return extra


def _template(sql: str) -> ast.Node:
    """A fresh parse tree of ``sql``: replacements are built by the parser itself, so the
    rewritten tree is exactly what Postgres would have parsed from the replacement text."""
    stmt: Any = parse_sql("SELECT " + sql)[0].stmt
    node = stmt.targetList[0].val
    assert isinstance(node, ast.Node)
    return node


#: auth.* helper -> its claims equivalent (Supabase's definitions with ``claims`` as the source).
_AUTH_HELPERS: Final = {
    ("auth", "uid"): "(claims ->> 'sub')::uuid",
    ("auth", "role"): "(claims ->> 'role')",
    ("auth", "jwt"): "claims",
}


def _auth_helper(node: ast.FuncCall) -> str | None:
    """The replacement text when ``node`` is a plain call of one of the helpers, else None."""
    names = tuple(getattr(n, "sval", None) for n in (node.funcname or ()))
    replacement = _AUTH_HELPERS.get(names)  # type: ignore[arg-type]
    if replacement is None or node.args or node.agg_order or node.agg_filter or node.over:
        return None
    if node.agg_star or node.agg_distinct or node.func_variadic or node.agg_within_group:
        return None
    return replacement


def _rewrite(node: Any) -> Any:
    """Replace every ``auth.uid()`` / ``auth.role()`` / ``auth.jwt()`` call, in place, anywhere in
    the tree (sub-selects included, so the slow path also sees claims only through ``claims``)."""
    if isinstance(node, tuple):
        items = tuple(_rewrite(item) for item in node)
        return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
    if not isinstance(node, ast.Node):
        return node
    if isinstance(node, ast.FuncCall):
        replacement = _auth_helper(node)
        if replacement is not None:
            return _template(replacement)
    for attr in node:
        child = getattr(node, attr)
        if isinstance(child, ast.Node | tuple):
            new = _rewrite(child)
            if new is not child:
                setattr(node, attr, new)
    return node


def _column_refs(node: Any, out: set[str]) -> set[str]:
    """Every column name the tree mentions (last component), ``claims`` excepted."""
    if isinstance(node, tuple):
        for item in node:
            _column_refs(item, out)
    elif isinstance(node, ast.Node):
        if isinstance(node, ast.ColumnRef):
            last = node.fields[-1] if node.fields else None
            if (
                isinstance(last, ast.String)
                and last.sval
                and not (len(node.fields or ()) == 1 and last.sval == "claims")
            ):
                out.add(last.sval)
        for attr in node:
            child = getattr(node, attr)
            if isinstance(child, ast.Node | tuple):
                _column_refs(child, out)
    return out


# --------------------------------------------------------------------------------------------------
# Claims as Postgres sees them: jsonb values, ``->`` / ``->>`` and their text forms


class _SqlNull:
    """A jsonb-valued expression that is SQL NULL (``claims->'missing'``), as opposed to JSON
    ``null`` (which is a jsonb scalar and, for instance, makes ``jsonb_array_elements_text`` fail)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SQL NULL"


_SQL_NULL: Final = _SqlNull()


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


def _json_text(value: Any) -> str | None:
    """``->>``'s result for a value found in the claims: strings as they are, JSON null as SQL
    NULL, everything else as jsonb prints it."""
    if isinstance(value, str):
        return value
    if value is None or value is _SQL_NULL:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float | Decimal):
        return _number_text(value)
    return _render(value)


def _get(container: Any, key: str) -> Any:
    """``container -> key``: SQL NULL when the key is missing or the container is not an object."""
    if type(container) is dict or isinstance(container, Mapping):
        value = container.get(key, _SQL_NULL)
        if isinstance(value, float) and not math.isfinite(value):
            return None  # orjson sends NaN/Infinity as null
        return value
    return _SQL_NULL


# --------------------------------------------------------------------------------------------------
# Input functions (text -> type), as PostgreSQL 15 implements them

_SPACE: Final = " \t\n\v\f\r"  # C isspace() in the C and UTF-8 locales
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(s: str) -> str:
    """``pg_strncasecmp``/``pg_tolower`` fold ASCII letters only (``str.lower`` would also fold
    the Kelvin sign to ``k``)."""
    return s.translate(_LOWER)


def _int_input(type_name: str, bits: int) -> Callable[[str], int]:
    """``int2in``/``int4in``/``int8in`` (``pg_strtoint16/32/64``).

    Surrounding whitespace and one sign are allowed; digits are ASCII only.  The range check
    happens while the digits are read, *before* trailing junk is looked at, so ``99999999999x``
    is out of range while ``2147483648x`` (the one value that only overflows when negated back)
    is a syntax error: both details are reproduced.
    """
    limit = 1 << (bits - 1)
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
            raise PolicyEvalError("22P02", f'invalid input syntax for type {type_name}: "{s}"')
        digits = s[i:j].lstrip("0")
        magnitude = (int(digits) if len(digits) <= 25 else limit + 1) if digits else 0
        if magnitude > limit:
            raise PolicyEvalError("22003", f'value "{s}" is out of range for type {type_name}')
        k = j
        while k < n and s[k] in _SPACE:
            k += 1
        if k != n:
            raise PolicyEvalError("22P02", f'invalid input syntax for type {type_name}: "{s}"')
        if magnitude == limit and not negative:
            raise PolicyEvalError("22003", f'value "{s}" is out of range for type {type_name}')
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


def _numeric_input(s: str) -> Any:
    """``numeric_in``: NaN / infinities by case-insensitive prefix, then ``set_var_from_str``.

    The exponent is read with C ``strtol`` (so whitespace and a sign may follow the ``e``), and
    the storage limits (weight, display scale) raise "value overflows numeric format" after the
    trailing-junk check, as in Postgres.  NaN becomes the shared key that equals itself.
    """
    n = len(s)
    i = 0
    while i < n and s[i] in _SPACE:
        i += 1
    head = _ascii_lower(s[i : i + 9])
    for spelling, special in _NUMERIC_SPECIALS:
        if head.startswith(spelling):
            if any(c not in _SPACE for c in s[i + len(spelling) :]):
                raise PolicyEvalError("22P02", f'invalid input syntax for type numeric: "{s}"')
            return _NAN if special is None else special
    bad = PolicyEvalError("22P02", f'invalid input syntax for type numeric: "{s}"')
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
            raise PolicyEvalError("22003", "value overflows numeric format")
        i = k
    if any(c not in _SPACE for c in s[i:]):
        raise bad
    digits = "".join(int_digits) + "".join(frac_digits)
    dscale = max(0, len(frac_digits) - exponent)
    first = next((pos for pos, c in enumerate(digits) if c != "0"), None)
    if first is None:
        if dscale > _NUMERIC_DSCALE_MAX:
            raise PolicyEvalError("22003", "value overflows numeric format")
        return Decimal(0)
    # decimal weight of the first significant digit, then in base-10000 digits as stored
    weight = (len(int_digits) - 1 + exponent - first) // 4
    if not _NUMERIC_WEIGHT_MIN <= weight <= _NUMERIC_WEIGHT_MAX or dscale > _NUMERIC_DSCALE_MAX:
        raise PolicyEvalError("22003", "value overflows numeric format")
    return Decimal(f"{'-' if negative else ''}{digits[first:]}E{exponent - len(frac_digits)}")


_UUID_CANONICAL: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid_input(s: str) -> str:
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
            raise PolicyEvalError("22P02", f'invalid input syntax for type uuid: "{s}"')
        out.append(s[i : i + 2])
        i += 2
        if i < n and s[i] == "-" and byte % 2 == 1 and byte < 15:
            i += 1
    if braces:
        if i >= n or s[i] != "}":
            raise PolicyEvalError("22P02", f'invalid input syntax for type uuid: "{s}"')
        i += 1
    if i != n:
        raise PolicyEvalError("22P02", f'invalid input syntax for type uuid: "{s}"')
    h = _ascii_lower("".join(out))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _bool_input(s: str) -> bool:
    """``boolin``: trimmed, case-insensitive, and any prefix of true/false/yes/no (at least ``of``
    for off, since ``o`` alone is ambiguous), plus exactly ``1``/``0``."""
    t = _ascii_lower(s.strip(_SPACE))
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
    raise PolicyEvalError("22P02", f'invalid input syntax for type boolean: "{s}"')


def _text_input(s: str) -> str:
    return s


#: Cast targets the fast path models: text -> value in the key domain of the type's family.
_INPUT: Final[dict[str, Callable[[str], Any]]] = {
    "int2": _int_input("smallint", 16),
    "int4": _int_input("integer", 32),
    "int8": _int_input("bigint", 64),
    "numeric": _numeric_input,
    "uuid": _uuid_input,
    "bool": _bool_input,
    "text": _text_input,
    "varchar": _text_input,
}

#: Comparison families: values of one family compare with each other by value.
_FAMILY: Final = {
    "int2": "num",
    "int4": "num",
    "int8": "num",
    "numeric": "num",
    "text": "text",
    "varchar": "text",
    "uuid": "uuid",
    "bool": "bool",
}
_NUM_RANK: Final = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3}
_INT_RANGES: Final = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}

#: Column types whose decoded value is None exactly when the SQL value is NULL, so ``IS [NOT]
#: NULL`` is exact.  json/jsonb are not (JSON null decodes to None too), nor are composites
#: (``row IS NULL`` is true when all fields are NULL) or unknown types (domains over them).
#: Arrays (``_`` type names) always are: an array value is never "a row of NULLs".
_NULL_TESTABLE: Final = frozenset(
    (
        *_FAMILY,
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


def _row_converter(column: str, typ: str) -> Callable[[Any], Any]:
    """Decoded row value -> key comparable with cast claims (``None`` for NULL).

    Rows come from the relay's decoder (ints, exact numerics, lowercase uuid strings...); a value
    outside that model fails closed with ``invalid_row_value`` rather than being guessed at.
    """
    family = _FAMILY.get(typ)
    if typ in _INT_RANGES:

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
                return _numeric_key(v)
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
                    return _uuid_input(v)
                except PolicyEvalError:
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


# --------------------------------------------------------------------------------------------------
# The evaluation model: value and boolean nodes, fold (plan time) and residual (run time)

Row = Mapping[str, Any]
Claims = Mapping[str, Any]
Residual = Callable[[Row], bool | None]
Folded = bool | None | Residual


class _Unsupported(Exception):
    """The expression is outside the modelled shapes: evaluate it in Postgres."""


class _Dynamic:
    __slots__ = ()


_DYNAMIC: Final = _Dynamic()  # "depends on the row": not a plan-time constant


class _Value:
    """An operand: a row column (run time) or a claims/constant expression (plan time)."""

    typ: str = "unknown"
    static: bool = True

    def value(self, claims: Claims) -> Any:
        """The value for these claims (static operands only); may raise PolicyEvalError."""
        raise NotImplementedError

    def row_value(self, row: Row) -> Any:
        """The value in this row (columns only)."""
        raise NotImplementedError

    def folded(self, claims: Claims) -> Any:
        return self.value(claims) if self.static else _DYNAMIC

    def columns(self) -> frozenset[str]:
        return frozenset()


class _Column(_Value):
    __slots__ = ("convert", "name", "typ")
    static = False

    def __init__(self, name: str, typ: str) -> None:
        self.name = name
        self.typ = typ
        self.convert = _row_converter(name, typ)

    def row_value(self, row: Row) -> Any:
        return self.convert(row.get(self.name))

    def columns(self) -> frozenset[str]:
        return frozenset((self.name,))


class _Const(_Value):
    __slots__ = ("typ", "val")

    def __init__(self, val: Any, typ: str) -> None:
        self.val = val
        self.typ = typ

    def value(self, claims: Claims) -> Any:
        return self.val


class _Claim(_Value):
    """``claims``, ``claims -> 'k' -> ...`` (jsonb) or ``... ->> 'k'`` (text)."""

    __slots__ = ("path", "text", "typ")

    def __init__(self, path: tuple[str, ...], text: bool) -> None:
        self.path = path
        self.text = text
        self.typ = "text" if text else "jsonb"

    def value(self, claims: Claims) -> Any:
        current: Any = claims
        for key in self.path:
            current = _get(current, key)
            if current is _SQL_NULL:
                break
        if self.text:
            return _json_text(current)
        return current


class _Cast(_Value):
    """``<text claims expression>::type``: the type's input function (may raise)."""

    __slots__ = ("arg", "parse", "typ")

    def __init__(self, arg: _Value, typ: str) -> None:
        self.arg = arg
        self.typ = typ
        self.parse = _INPUT[typ]

    def value(self, claims: Claims) -> Any:
        text = self.arg.value(claims)
        return None if text is None else self.parse(text)


class _Bool:
    """A boolean expression.  ``fold`` is the planner's constant folding for these claims: it
    returns TRUE/FALSE/None when the value does not depend on the row, else the run-time residual.
    """

    def fold(self, claims: Claims) -> Folded:
        raise NotImplementedError

    def columns(self) -> frozenset[str]:
        raise NotImplementedError


def _is_const(v: Folded) -> bool:
    return v is None or v is True or v is False


_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class _Compare(_Bool):
    """``a <op> b`` within one family; a NULL operand gives NULL (the operators are strict)."""

    __slots__ = ("left", "op", "right")

    def __init__(self, op: str, left: _Value, right: _Value) -> None:
        self.op = op
        self.left = left
        self.right = right

    def fold(self, claims: Claims) -> Folded:
        f = _OPS[self.op]
        lv = self.left.folded(claims)  # both sides are folded (and may raise) before NULL counts
        rv = self.right.folded(claims)
        if lv is None or rv is None:
            return None
        if lv is not _DYNAMIC and rv is not _DYNAMIC:
            return f(lv, rv)
        if lv is _DYNAMIC and rv is _DYNAMIC:
            lrow, rrow = self.left.row_value, self.right.row_value

            def both(row: Row) -> bool | None:
                a = lrow(row)
                b = rrow(row)
                return None if a is None or b is None else f(a, b)

            return both
        if lv is _DYNAMIC:
            lrow = self.left.row_value

            def left(row: Row) -> bool | None:
                a = lrow(row)
                return None if a is None else f(a, rv)

            return left
        rrow = self.right.row_value

        def right(row: Row) -> bool | None:
            b = rrow(row)
            return None if b is None else f(lv, b)

        return right

    def columns(self) -> frozenset[str]:
        return self.left.columns() | self.right.columns()


def _member(x: Any, values: Iterable[Any], negated: bool) -> bool | None:
    """``x = ANY(values)`` (or ``x <> ALL`` when negated) with SQL's NULL rules."""
    if x is None:
        return None
    saw_null = False
    for v in values:
        if v is None:
            saw_null = True
        elif x == v:
            return not negated
    return None if saw_null else negated


class _ArrayOp(_Bool):
    """``x = ANY (ARRAY[c1, c2, ...])`` (``x <> ALL`` when negated) over literals: the
    ScalarArrayOp that parse analysis makes of the literal items of an IN list.  Folded at plan
    time (``x`` first, then every item) when ``x`` is a constant, else compared at run time."""

    __slots__ = ("items", "left", "negated")

    def __init__(self, left: _Value, items: tuple[_Value, ...], negated: bool) -> None:
        self.left = left
        self.items = items
        self.negated = negated

    def fold(self, claims: Claims) -> Folded:
        x = self.left.folded(claims)
        values = [item.value(claims) for item in self.items]
        negated = self.negated
        if x is not _DYNAMIC:
            return _member(x, values, negated)
        lrow = self.left.row_value

        def run(row: Row) -> bool | None:
            return _member(lrow(row), values, negated)

        return run

    def columns(self) -> frozenset[str]:
        return self.left.columns()


class _InList(_Bool):
    """``x [NOT] IN (a, b, ...)`` over claims/constants, as parse analysis rewrites it
    (``transformAExprIn``) before the planner sees it.

    Only the items without Vars can go into one ScalarArrayOp, and ``claims`` *is* a Var (a column
    of the ``(select $2::jsonb as claims) c`` sub-select, replaced by the constant only later, when
    the planner pulls the sub-select up).  So when there are at least two literal items, they
    become ``x = ANY (ARRAY[literals])`` (:class:`_ArrayOp`), and each claims item becomes its own
    ``x = item``, OR-ed after it in list order; with fewer literals, every item is its own
    comparison, in list order.  NOT IN is the same with ``<>`` and AND.  The planner then folds
    that chain like any OR/AND (``chain``, a :class:`_Junction`): an arm that folds to TRUE (FALSE
    for NOT IN) ends it, and the claims items after it are never cast, so cannot raise.
    ``items`` are all the items, typed as in their comparison (for index keys).
    """

    __slots__ = ("chain", "items", "left", "negated")

    def __init__(self, left: _Value, items: tuple[_Value, ...], negated: bool, chain: _Bool) -> None:
        self.left = left
        self.items = items
        self.negated = negated
        self.chain = chain

    def item_values(self, claims: Claims) -> list[Any]:
        """Every item's value.  Only for a column ``x``: then no arm can fold to TRUE or FALSE,
        so Postgres folds (and casts) every item whenever it folds the IN list at all."""
        return [item.value(claims) for item in self.items]

    def fold(self, claims: Claims) -> Folded:
        return self.chain.fold(claims)

    def columns(self) -> frozenset[str]:
        return self.left.columns()


def _array_elements(array: Any, parse: Callable[[str], Any]) -> list[Any]:
    """``select jsonb_array_elements_text(array)::type``, all of it (the sub-select is hashed)."""
    if array is _SQL_NULL:
        return []
    if isinstance(array, Mapping):
        raise PolicyEvalError("22023", "cannot extract elements from an object")
    if not isinstance(array, list | tuple):
        raise PolicyEvalError("22023", "cannot extract elements from a scalar")
    out: list[Any] = []
    for element in array:
        if isinstance(element, float) and not math.isfinite(element):
            element = None
        text = _json_text(element)
        out.append(None if text is None else parse(text))
    return out


class _AnyArray(_Bool):
    """``column = ANY (select jsonb_array_elements_text(<claims jsonb>)[::type])`` (or ``IN``).

    Postgres runs the sub-select when the executor reaches it, as a *hashed* sub-plan (it is
    uncorrelated once the claims are a constant): every element is cast, so one bad element
    raises even when another one matches.  An empty set gives FALSE whatever the column holds.
    """

    __slots__ = ("array", "left", "parse")

    def __init__(self, left: _Column, array: _Claim, typ: str) -> None:
        self.left = left
        self.array = array
        self.parse = _INPUT[typ]

    def fold(self, claims: Claims) -> Folded:
        array = self.array.value(claims)
        parse = self.parse
        lrow = self.left.row_value

        def run(row: Row) -> bool | None:
            values = _array_elements(array, parse)
            if not values:
                return False
            return _member(lrow(row), values, False)

        return run

    def columns(self) -> frozenset[str]:
        return self.left.columns()


class _NullTest(_Bool):
    """``x IS [NOT] NULL``; for a jsonb claim only SQL NULL counts (JSON ``null`` is a value)."""

    __slots__ = ("arg", "negated")

    def __init__(self, arg: _Value, negated: bool) -> None:
        self.arg = arg
        self.negated = negated

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.folded(claims)
        negated = self.negated
        if v is not _DYNAMIC:
            is_null = v is _SQL_NULL if self.arg.typ == "jsonb" else v is None
            return is_null != negated
        assert isinstance(self.arg, _Column)
        name = self.arg.name

        def run(row: Row) -> bool | None:
            return (row.get(name) is None) != negated

        return run

    def columns(self) -> frozenset[str]:
        return self.arg.columns()


class _BoolValue(_Bool):
    """A boolean operand used as a condition: ``active``, ``(claims->>'is_admin')::boolean``."""

    __slots__ = ("arg",)

    def __init__(self, arg: _Value) -> None:
        self.arg = arg

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.folded(claims)
        if v is not _DYNAMIC:
            return v  # type: ignore[no-any-return]
        row_value: Residual = self.arg.row_value
        return row_value

    def columns(self) -> frozenset[str]:
        return self.arg.columns()


class _Literal(_Bool):
    __slots__ = ("val",)

    def __init__(self, val: bool | None) -> None:
        self.val = val

    def fold(self, claims: Claims) -> Folded:
        return self.val

    def columns(self) -> frozenset[str]:
        return frozenset()


def _not(v: bool | None) -> bool | None:
    return None if v is None else not v


class _Not(_Bool):
    __slots__ = ("arg",)

    def __init__(self, arg: _Bool) -> None:
        self.arg = arg

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.fold(claims)
        if _is_const(v):
            return _not(v)  # type: ignore[arg-type]
        inner: Residual = v  # type: ignore[assignment]
        return lambda row: _not(inner(row))

    def columns(self) -> frozenset[str]:
        return self.arg.columns()


_BOOL_TESTS: Final[dict[str, Callable[[bool | None], bool]]] = {
    "IS_TRUE": lambda v: v is True,
    "IS_NOT_TRUE": lambda v: v is not True,
    "IS_FALSE": lambda v: v is False,
    "IS_NOT_FALSE": lambda v: v is not False,
    "IS_UNKNOWN": lambda v: v is None,
    "IS_NOT_UNKNOWN": lambda v: v is not None,
}


class _BoolTest(_Bool):
    """``x IS [NOT] TRUE/FALSE/UNKNOWN``: never NULL."""

    __slots__ = ("arg", "test")

    def __init__(self, arg: _Bool, test: Callable[[bool | None], bool]) -> None:
        self.arg = arg
        self.test = test

    def fold(self, claims: Claims) -> Folded:
        v = self.arg.fold(claims)
        test = self.test
        if _is_const(v):
            return test(v)  # type: ignore[arg-type]
        inner: Residual = v  # type: ignore[assignment]
        return lambda row: test(inner(row))

    def columns(self) -> frozenset[str]:
        return self.arg.columns()


class _Junction(_Bool):
    """AND / OR.  Folding mirrors ``simplify_and_arguments``: arms are folded left to right, a
    constant FALSE (AND) or TRUE (OR) ends it at once (later arms are never evaluated, so cannot
    raise), constant TRUE (AND) / FALSE (OR) arms are dropped, NULL arms are remembered.  The run-
    time residual evaluates the remaining arms left to right with the same short circuit."""

    __slots__ = ("args", "stop")

    def __init__(self, args: tuple[_Bool, ...], stop: bool) -> None:
        self.args = args
        self.stop = stop  # False for AND, True for OR

    def fold(self, claims: Claims) -> Folded:
        stop = self.stop
        residual: list[Residual] = []
        saw_null = False
        for arg in self.args:
            v = arg.fold(claims)
            if v is stop:
                return stop
            if v is None:
                saw_null = True
            elif v is not True and v is not False:
                residual.append(v)
        if not residual:
            return None if saw_null else not stop
        if len(residual) == 1 and not saw_null:
            return residual[0]
        base: bool | None = None if saw_null else not stop
        arms = tuple(residual)

        def run(row: Row) -> bool | None:
            result = base
            for arm in arms:
                v = arm(row)
                if v is stop:
                    return stop
                if v is None:
                    result = None
            return result

        return run

    def columns(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for arg in self.args:
            out |= arg.columns()
        return out


# --------------------------------------------------------------------------------------------------
# Building the model from the (rewritten) parse tree


def _string_const(node: Any) -> str | None:
    if isinstance(node, ast.A_Const) and not node.isnull and isinstance(node.val, ast.String):
        return node.val.sval
    return None


def _names(nodes: Any) -> tuple[str, ...]:
    out = []
    for n in nodes or ():
        if not isinstance(n, ast.String) or n.sval is None:
            raise _Unsupported("unexpected name")
        out.append(n.sval)
    return tuple(out)


#: Type names accepted in casts, unqualified or ``pg_catalog.``-qualified (``integer`` parses to
#: ``pg_catalog.int4``); anything else (typmods, arrays, other schemas) is not modelled.
_CAST_TYPES: Final = {
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "numeric": "numeric",
    "text": "text",
    "varchar": "varchar",
    "uuid": "uuid",
    "bool": "bool",
}


def _cast_type(tn: ast.TypeName | None) -> str:
    if tn is None or tn.setof or tn.pct_type or tn.arrayBounds or tn.typmods:
        raise _Unsupported("cast to a type with modifiers or to an array")
    if tn.typemod is not None and tn.typemod != -1:
        raise _Unsupported("cast with a type modifier")
    names = _names(tn.names)
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if len(names) != 1 or names[0] not in _CAST_TYPES:
        raise _Unsupported(f"cast to {'.'.join(names)}")
    return _CAST_TYPES[names[0]]


def _constant(node: ast.A_Const) -> _Const:
    """A literal as the parser types it: int4 / int8-or-numeric / bool / unknown (strings, NULL)."""
    if node.isnull:
        return _Const(None, "unknown")
    val = node.val
    if isinstance(val, ast.Integer):
        return _Const(int(val.ival or 0), "int4")
    if isinstance(val, ast.Float):
        text = str(val.fval)
        digits = text.lstrip("-+")
        if digits.isdigit() and -(2**63) <= int(text) < 2**63:
            return _Const(int(text), "int8")
        d = Decimal(text)
        return _Const(int(d) if d == d.to_integral_value() else d, "numeric")
    if isinstance(val, ast.Boolean):
        return _Const(bool(val.boolval), "bool")
    if isinstance(val, ast.String):
        return _Const(val.sval or "", "unknown")
    raise _Unsupported("literal of an unmodelled type")


def _coerce(v: _Value, typ: str) -> _Value:
    """Resolve an untyped literal (``'5'``, ``NULL``) to ``typ`` as the parser does, by running
    the input function now; a literal Postgres would reject means the policy cannot exist."""
    if v.typ != "unknown":
        return v
    assert isinstance(v, _Const)
    if v.val is None:
        return _Const(None, typ)
    if typ not in _INPUT:
        raise _Unsupported(f"literal compared with {typ}")
    try:
        return _Const(_INPUT[typ](v.val), typ)
    except PolicyEvalError:
        raise _Unsupported(f"literal {v.val!r} is not a valid {typ}") from None


def _common_type(values: list[_Value]) -> str:
    """``select_common_type`` restricted to the modelled families."""
    typed = [v.typ for v in values if v.typ != "unknown"]
    if not typed:
        return "text"
    families = {_FAMILY.get(t) for t in typed}
    if len(families) != 1 or None in families:
        raise _Unsupported("IN list mixing types")
    family = families.pop()
    if family == "num":
        return max(typed, key=lambda t: _NUM_RANK[t])
    if family == "text":
        return "text"
    return typed[0]


def _comparison(op: str, left: _Value, right: _Value) -> _Compare:
    """``left <op> right`` typed as ``make_op`` does for the modelled families: an untyped
    literal takes the other side's type (text when both are untyped)."""
    if left.typ == "unknown" and right.typ == "unknown":
        left, right = _coerce(left, "text"), _coerce(right, "text")
    left, right = _coerce(left, right.typ), _coerce(right, left.typ)
    family = _FAMILY.get(left.typ)
    if family is None or family != _FAMILY.get(right.typ):
        raise _Unsupported(f"comparison of {left.typ} with {right.typ}")
    if family == "text" and op not in ("=", "<>"):
        raise _Unsupported("text ordering depends on the collation")
    return _Compare(op, left, right)


def _has_vars(v: _Value) -> bool:
    """Whether parse analysis sees a Var in ``v``: ``claims`` is one (a column of the sub-select
    that provides it), a literal or a cast of one is not."""
    while isinstance(v, _Cast):
        v = v.arg
    return not isinstance(v, _Const)


class _Builder:
    """Turns the rewritten parse tree into the evaluation model, typing it like Postgres' parse
    analysis does for the supported shapes and raising :class:`_Unsupported` for anything else."""

    def __init__(self, column_types: Mapping[str, str]) -> None:
        self.types = {name: normalize_type_name(t) for name, t in column_types.items()}
        if "claims" in self.types:
            raise _Unsupported('the table has a column named "claims"')

    # -- operands

    def value(self, node: Any) -> _Value:
        if isinstance(node, ast.ColumnRef):
            fields = node.fields or ()
            names = _names(fields) if all(isinstance(f, ast.String) for f in fields) else ()
            if len(names) != 1:
                raise _Unsupported("qualified or * column reference")
            name = names[0]
            if name == "claims":
                return _Claim((), text=False)
            typ = self.types.get(name)
            if typ is None:
                raise _Unsupported(f'column "{name}" has no known type')
            return _Column(name, typ)
        if isinstance(node, ast.A_Const):
            return _constant(node)
        if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP:
            op = _names(node.name)
            if op in (("->",), ("->>",)) and node.lexpr is not None:
                base = self.value(node.lexpr)
                key = _string_const(node.rexpr)
                if not isinstance(base, _Claim) or base.text or key is None:
                    raise _Unsupported(f"{op[0]} other than on claims with a text key")
                return _Claim((*base.path, key), text=op == ("->>",))
            raise _Unsupported(f"operator {' '.join(op)}")
        if isinstance(node, ast.TypeCast):
            target = _cast_type(node.typeName)
            if isinstance(node.arg, ast.A_Const):
                literal = _constant(node.arg)
                if literal.typ == "unknown":
                    return _coerce(literal, target)
                if literal.typ == target or (
                    _FAMILY.get(literal.typ) == "num"
                    and target in _INT_RANGES
                    and isinstance(literal.val, int)
                    and -_INT_RANGES[target] <= literal.val < _INT_RANGES[target]
                ):
                    return _Const(literal.val, target)
                if _FAMILY.get(literal.typ) == "num" and target == "numeric":
                    return _Const(literal.val, target)
                raise _Unsupported("cast of a literal to another type")
            arg = self.value(node.arg)
            if not arg.static:
                raise _Unsupported("cast of a column")
            if arg.typ == target:
                return arg
            if _FAMILY.get(arg.typ) != "text":
                raise _Unsupported(f"cast from {arg.typ} to {target}")
            return _Cast(arg, target)
        if isinstance(node, ast.FuncCall):
            raise _Unsupported(f"function {'.'.join(_names(node.funcname))}()")
        if isinstance(node, ast.SubLink):
            raise _Unsupported("sub-select as a value")
        raise _Unsupported(type(node).__name__)

    # -- conditions

    def boolean(self, node: Any) -> _Bool:
        if isinstance(node, ast.BoolExpr):
            args = tuple(self.boolean(a) for a in node.args or ())
            if node.boolop == BoolExprType.NOT_EXPR:
                return _Not(args[0])
            return _Junction(args, stop=node.boolop == BoolExprType.OR_EXPR)
        if isinstance(node, ast.NullTest):
            if node.argisrow:
                raise _Unsupported("row IS NULL")
            arg = self.value(node.arg)
            if isinstance(arg, _Column) and not (arg.typ in _NULL_TESTABLE or arg.typ.startswith("_")):
                raise _Unsupported(f"IS NULL on a {arg.typ} column")
            return _NullTest(arg, negated=node.nulltesttype == NullTestType.IS_NOT_NULL)
        if isinstance(node, ast.BooleanTest):
            kind = str(getattr(node.booltesttype, "name", node.booltesttype))
            return _BoolTest(self.boolean(node.arg), _BOOL_TESTS[kind])
        if isinstance(node, ast.A_Expr):
            return self.expression(node)
        if isinstance(node, ast.SubLink):
            return self.sublink(node)
        if isinstance(node, ast.A_Const):
            c = _constant(node)
            if c.typ == "unknown":
                c = _coerce(c, "bool")  # type: ignore[assignment]
            if c.typ != "bool":
                raise _Unsupported("a non-boolean literal as a condition")
            return _Literal(c.val)
        v = self.value(node)
        if v.typ != "bool":
            raise _Unsupported(f"a {v.typ} value as a condition")
        if isinstance(v, _Const):
            return _Literal(v.val)
        return _BoolValue(v)

    def expression(self, node: ast.A_Expr) -> _Bool:
        op = _names(node.name)
        if node.kind == A_Expr_Kind.AEXPR_OP:
            if len(op) != 1 or op[0] not in _OPS or node.lexpr is None:
                raise _Unsupported(f"operator {' '.join(op)}")
            return _comparison(op[0], self.value(node.lexpr), self.value(node.rexpr))
        if node.kind == A_Expr_Kind.AEXPR_IN:
            if op not in (("=",), ("<>",)) or not isinstance(node.rexpr, tuple):
                raise _Unsupported("IN form")
            return self.in_list(self.value(node.lexpr), node.rexpr, negated=op == ("<>",))
        raise _Unsupported(f"{getattr(node.kind, 'name', node.kind)} expression")

    def in_list(self, left: _Value, nodes: tuple[Any, ...], negated: bool) -> _InList:
        """``left [NOT] IN (nodes)`` the way ``transformAExprIn`` builds it (see :class:`_InList`):
        the literals typed together with ``left`` (``select_common_type``) when they form a
        ScalarArrayOp, every other comparison typed on its own, like a plain ``=`` / ``<>``."""
        items = [self.value(item) for item in nodes]
        if any(not item.static for item in items):
            # Postgres splits items with columns into separate OR-ed comparisons.
            raise _Unsupported("IN list with columns")
        literals = [item for item in items if not _has_vars(item)]
        arms: list[_Bool] = []
        typed: list[_Value] = []
        if len(literals) > 1:
            common = _common_type([left, *literals])
            array_left = _coerce(left, common)
            array_items = tuple(_coerce(item, common) for item in literals)
            if _FAMILY.get(array_left.typ) != _FAMILY.get(common) or _FAMILY.get(common) is None:
                raise _Unsupported("IN list of another type")
            arms.append(_ArrayOp(array_left, array_items, negated))
            typed.extend(array_items)
            items = [item for item in items if _has_vars(item)]
        for item in items:
            cmp = _comparison("<>" if negated else "=", left, item)
            arms.append(cmp)
            typed.append(cmp.right)
        return _InList(left, tuple(typed), negated, _Junction(tuple(arms), stop=not negated))

    def sublink(self, node: ast.SubLink) -> _Bool:
        if node.subLinkType != SubLinkType.ANY_SUBLINK:
            raise _Unsupported("sub-select")
        if _names(node.operName) not in ((), ("=",)):
            raise _Unsupported("sub-select with an operator other than =")
        left = self.value(node.testexpr)
        if not isinstance(left, _Column):
            raise _Unsupported("= ANY (select ...) of a non-column")
        select = node.subselect
        if not isinstance(select, ast.SelectStmt) or len(select.targetList or ()) != 1:
            raise _Unsupported("sub-select shape")
        if _select_clauses(select):
            raise _Unsupported(f"sub-select with {', '.join(_select_clauses(select))}")
        target: Any = (select.targetList or ())[0]
        expr = target.val
        typ = "text"
        if isinstance(expr, ast.TypeCast):
            typ = _cast_type(expr.typeName)
            expr = expr.arg
        if not (
            isinstance(expr, ast.FuncCall)
            and _names(expr.funcname)
            in (("jsonb_array_elements_text",), ("pg_catalog", "jsonb_array_elements_text"))
            and len(expr.args or ()) == 1
            and not (expr.agg_order or expr.agg_filter or expr.over or expr.agg_star)
            and not (expr.agg_distinct or expr.func_variadic or expr.agg_within_group)
            and not isinstance((expr.args or ())[0], ast.NamedArgExpr)
        ):
            raise _Unsupported("sub-select other than jsonb_array_elements_text(claims ...)")
        array = self.value((expr.args or ())[0])
        if not isinstance(array, _Claim) or array.text:
            raise _Unsupported("jsonb_array_elements_text of something other than claims")
        if _FAMILY.get(typ) != _FAMILY.get(left.typ) or _FAMILY.get(typ) is None:
            raise _Unsupported(f"{left.typ} = ANY ({typ})")
        return _AnyArray(left, array, typ)


# --------------------------------------------------------------------------------------------------
# Index terms


def _conjuncts(node: _Bool) -> list[_Bool]:
    if isinstance(node, _Junction) and not node.stop:
        out: list[_Bool] = []
        for arg in node.args:
            out.extend(_conjuncts(arg))
        return out
    return [node]


def _index_term(root: _Bool, term: _Bool) -> IndexTerm | None:
    """An :class:`IndexTerm` for ``term`` (a top-level conjunct of ``root``), if it has the shape.

    ``keys`` folds the whole policy first: that raises exactly when Postgres' planner would (for
    every row), and a constant FALSE/NULL means no row can pass.  Otherwise the term's operand(s)
    were folded without error, and their values are the keys.
    """
    column: _Column
    values: Callable[[Claims], Iterable[Any]]
    if isinstance(term, _Compare) and term.op == "=":
        if isinstance(term.left, _Column) and term.right.static:
            column, other = term.left, term.right
        elif isinstance(term.right, _Column) and term.left.static:
            column, other = term.right, term.left
        else:
            return None
        values = lambda claims: (other.value(claims),)  # noqa: E731
    elif isinstance(term, _InList) and not term.negated and isinstance(term.left, _Column):
        column = term.left
        values = term.item_values
    elif isinstance(term, _AnyArray):
        column = term.left
        array, parse = term.array, term.parse
        values = lambda claims: _array_elements(array.value(claims), parse)  # noqa: E731
    else:
        return None

    def keys(claims: Mapping[str, Any]) -> frozenset[Any]:
        if _is_const(root.fold(claims)):
            return frozenset()
        return frozenset(v for v in values(claims) if v is not None)

    return IndexTerm(column.name, keys, column.convert)


# --------------------------------------------------------------------------------------------------
# Entry point


def _predicate(root: _Bool) -> FastPredicate:
    fold = root.fold

    def fast(row: Mapping[str, Any], claims: Mapping[str, Any]) -> bool | None:
        v = fold(claims)
        if v is None or v is True or v is False:
            return v
        return v(row)

    return fast


def compile_policy(policy: Policy, column_types: Mapping[str, str]) -> CompiledPolicy:
    """Parse, rewrite and (when the shape allows) compile ``policy`` for its table.

    ``column_types`` maps the table's columns to their Postgres type names (``int4``, ``text``,
    ``_text``...).  Raises :class:`PolicyError` when ``policy.using`` is not one SQL expression.
    Unknown columns are not an error here (Postgres checked them when the policy was created); a
    column missing from ``column_types`` only keeps the policy off the fast path.
    """
    try:
        tree = _parse_expression(policy.using)
    except PolicyError as exc:
        raise PolicyError(f'policy "{policy.name}" on {policy.schema}.{policy.table}: {exc}') from None
    tree = _rewrite(tree)
    sql = RawStream()(tree)
    try:
        root = _Builder(column_types).boolean(tree)
    except _Unsupported as exc:
        known = frozenset(column_types)
        mentioned = _column_refs(tree, set())
        return CompiledPolicy(
            policy=policy,
            sql=sql,
            fast=None,
            claims_only=False,
            index=(),
            columns=frozenset(mentioned & known if known else mentioned),
            slow_reason=str(exc),
        )
    columns = root.columns()
    index = tuple(t for t in (_index_term(root, c) for c in _conjuncts(root)) if t is not None)
    return CompiledPolicy(
        policy=policy,
        sql=sql,
        fast=_predicate(root),
        claims_only=not columns,
        index=index,
        columns=columns,
        specialize=root.fold,
    )
