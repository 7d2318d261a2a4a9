"""Pattern operators of filters: ``like`` / ``ilike`` / ``match`` / ``imatch`` compiled to text tests.

Why separate from matching: pattern semantics (Postgres LIKE, the POSIX regex subset that agrees
with Python's engine, bounded backtracking) are a subject of their own, checked at subscribe time.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Final

from relay.core.filters.base import MAX_PATTERN_LENGTH
from relay.core.sqltypes.inputs import CastError

__all__ = ["compile_pattern"]


def compile_pattern(op: str, pattern: str, fold: bool) -> Callable[[str], bool]:
    """The text test of a pattern operator; ``fold`` for citext, whose operators ignore case."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise CastError(f"the pattern is longer than {MAX_PATTERN_LENGTH} characters")
    ignore_case = fold or op in ("ilike", "imatch")
    if ignore_case:
        cased = next((c for c in pattern if not c.isascii() and c.lower() != c.upper()), None)
        if cased is not None:
            raise CastError(
                f'a case-insensitive pattern with "{cased}" is not supported by the relay: how Postgres '
                "folds the case of non-ASCII letters depends on the database's locale"
            )
    if op in ("like", "ilike"):
        test = _compile_like(pattern.translate(_ASCII_LOWER) if ignore_case else pattern)
        if ignore_case:
            return lambda s: test(s.translate(_ASCII_LOWER))
        return test
    regex = _compile_regex(pattern, ignore_case)
    return lambda s: regex.search(s) is not None


#: Case folding of ASCII letters only: the part of ``lower()`` every database locale agrees on.
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _compile_like(pattern: str) -> Callable[[str], bool]:
    """LIKE as Postgres reads it (``%`` any run, ``_`` one character, ``\\`` escapes the next).

    Not via a regular expression: ``%a%a%a%b`` would backtrack polynomially in Python's engine.
    The pattern is cut at ``%`` into fixed-length segments; the first must match at the start, the
    last at the end, and each middle one at its leftmost place after the previous one, which finds
    a match whenever one exists.  Each step is a linear scan.
    """
    segments: list[list[str | None]] = [[]]  # None is "_"
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise CastError("LIKE pattern must not end with escape character")
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if c == "%":
            segments.append([])
        else:
            segments[-1].append(None if c == "_" else c)
        i += 1
    if all(None not in seg for seg in segments):
        return _literal_like(["".join(x for x in seg if x is not None) for seg in segments])
    compiled = [
        re.compile("".join("." if x is None else re.escape(x) for x in seg), re.DOTALL) for seg in segments
    ]
    if len(compiled) == 1:
        only = compiled[0]
        return lambda s: only.fullmatch(s) is not None
    first, middle, last = compiled[0], compiled[1:-1], compiled[-1]
    first_len, last_len = len(segments[0]), len(segments[-1])

    def like(s: str) -> bool:
        end = len(s) - last_len
        if end < first_len or first.match(s) is None or last.fullmatch(s, end) is None:
            return False
        pos = first_len
        for seg in middle:
            m = seg.search(s, pos, end)
            if m is None:
                return False
            pos = m.end()
        return True

    return like


def _literal_like(parts: list[str]) -> Callable[[str], bool]:
    """LIKE without ``_``: the common ``abc%``, ``%abc``, ``%abc%`` are plain string methods."""
    if len(parts) == 1:
        only = parts[0]
        return lambda s: s == only
    first, middle, last = parts[0], [p for p in parts[1:-1] if p], parts[-1]
    if not middle:
        fixed = len(first) + len(last)
        return lambda s: len(s) >= fixed and s.startswith(first) and s.endswith(last)

    def like(s: str) -> bool:
        end = len(s) - len(last)
        if end < len(first) or not s.startswith(first) or not s.endswith(last):
            return False
        pos = len(first)
        for part in middle:
            pos = s.find(part, pos, end)
            if pos < 0:
                return False
            pos += len(part)
        return True

    return like


_REGEX_ESCAPES: Final = {
    "d": "[0-9]", "D": "[^0-9]", "s": "[ \\t\\n\\r\\f\\v]", "S": "[^ \\t\\n\\r\\f\\v]",
    "n": r"\n", "t": r"\t", "r": r"\r", "f": r"\f", "v": r"\v",
}  # fmt: skip
_BOUND_RE: Final = re.compile(r"\{(\d{1,9})(,(\d{1,9})?)?\}")
#: Unbounded quantifiers allowed per pattern: each can multiply Python's backtracking work.
_MAX_UNBOUNDED: Final = 4


def _compile_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """A POSIX regular expression (Postgres ``~``) as a Python one, for the subset where both agree.

    Accepted: literals, ``.``, ``^``, ``$``, groups ``(...)``/``(?:...)``, ``|``, the quantifiers
    ``* + ? {m} {m,} {m,n}`` (and their non-greedy forms), bracket expressions of characters and
    ranges (``[^a-z_]``), ``\\d \\s \\w`` (and negations), ``\\n \\t \\r \\f \\v`` and backslash
    before punctuation.  Anything else (back-references, ``[[:alpha:]]``, ``\\m``, lookaheads,
    embedded options) is refused at subscribe time rather than guessed.  Because Python's engine
    backtracks where Postgres' does not, a quantified group holding a quantifier or ``|``
    (``(a+)+``, ``(a|b)*``) and more than a few unbounded quantifiers are refused too.
    """
    out: list[str] = []
    complex_group = [False]  # per open group: holds a quantifier or an alternation
    quantifiable = False  # the previous item can take a quantifier
    prev_complex = False  # ... and it is a complex group
    unbounded = 0
    i, n = 0, len(pattern)

    def atom(text: str) -> None:
        nonlocal quantifiable, prev_complex
        out.append(text)
        quantifiable, prev_complex = True, False

    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise CastError("regular expression must not end with a backslash")
            d = pattern[i + 1]
            if d in _REGEX_ESCAPES:
                atom(_REGEX_ESCAPES[d])
            elif d.isascii() and not d.isalnum():
                atom(re.escape(d))
            elif d in "wW":
                raise CastError(
                    f'"\\{d}" is not supported by the relay: which letters it matches depends on the '
                    "database's locale; write a bracket expression such as [A-Za-z0-9_]"
                )
            else:
                raise CastError(f'regular expression escape "\\{d}" is not supported by the relay')
            i += 2
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            j += negate
            chars: list[str] = []
            if j < n and pattern[j] == "]":
                chars.append(re.escape("]"))
                j += 1
            while j < n and pattern[j] != "]":
                ch = pattern[j]
                if ch in "[\\":
                    raise CastError(
                        f'"{ch}" in a bracket expression (POSIX class, escape) is not supported by the relay'
                    )
                chars.append(ch if ch == "-" else re.escape(ch))
                j += 1
            if j >= n:
                raise CastError("unterminated bracket expression in the regular expression")
            atom("[" + ("^" if negate else "") + "".join(chars) + "]")
            i = j + 1
        elif c == "(":
            if pattern.startswith("(?:", i):
                i += 3
            elif pattern.startswith("(?", i):
                raise CastError('"(?" groups other than "(?:" are not supported by the relay')
            else:
                i += 1
            out.append("(?:")
            complex_group.append(False)
            quantifiable = False
        elif c == ")":
            if len(complex_group) == 1:
                raise CastError("unbalanced ) in the regular expression")
            inner = complex_group.pop()
            complex_group[-1] = complex_group[-1] or inner
            atom(")")
            prev_complex = inner
            i += 1
        elif c == "|":
            complex_group[-1] = True
            out.append("|")
            quantifiable = False
            i += 1
        elif c in "*+?{":
            if c == "{":
                m = _BOUND_RE.match(pattern, i)
                if m is None:
                    raise CastError(
                        'a "{" in a regular expression must start a bound like {2,5} (or write \\{)'
                    )
                lo, comma, hi = int(m.group(1)), m.group(2), m.group(3)
                if lo > 255 or (hi is not None and not lo <= int(hi) <= 255):
                    raise CastError("invalid repetition count(s) in the regular expression")
                quant, i = m.group(0), m.end()
                is_unbounded = comma is not None and hi is None
            else:
                quant, i = c, i + 1
                is_unbounded = c != "?"
            if not quantifiable:
                raise CastError("quantifier operand invalid in the regular expression")
            if prev_complex:
                raise CastError(
                    "a quantifier on a group that holds a quantifier or | is not supported by the relay"
                )
            if i < n and pattern[i] == "?":
                quant += "?"
                i += 1
            unbounded += is_unbounded
            if unbounded > _MAX_UNBOUNDED:
                raise CastError(f"at most {_MAX_UNBOUNDED} unbounded quantifiers (*, +, {{m,}}) per pattern")
            out.append(quant)
            complex_group[-1] = True
            quantifiable = False
        elif c == ".":
            atom(".")
            i += 1
        elif c == "^":
            out.append("^")
            quantifiable = False
            i += 1
        elif c == "$":
            out.append(r"\Z")
            quantifiable = False
            i += 1
        else:
            atom(re.escape(c))
            i += 1
    if len(complex_group) != 1:
        raise CastError("unbalanced ( in the regular expression")
    try:
        return re.compile("".join(out), re.DOTALL | (re.IGNORECASE | re.ASCII if ignore_case else 0))
    except re.error as exc:
        raise CastError(f"invalid regular expression: {exc}") from None
