"""Date/time operands and row values as keys that order like Postgres' date/time types.

Operands here are mostly Postgres' own canonical output (the server has Postgres cast filter
operands at join); the parsers also take ISO spellings for callers without a database.  Deliberate
approximations: values Python cannot represent (BC, year > 9999) raise (and so never match), and
sub-microsecond digits are truncated where Postgres would round.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Final

from relay.core.sqltypes.extremes import INFINITIES
from relay.core.sqltypes.inputs import CastError

__all__ = [
    "date_input",
    "date_key",
    "time_input",
    "time_key",
    "timestamp_input",
    "timestamp_key",
    "timestamptz_input",
    "timestamptz_key",
    "timetz_input",
    "timetz_key",
]


def _datetime_text(text: str) -> str:
    """Let operands use ``t``/``z`` in lower case; ISO strings hold no other letters."""
    return text.strip().upper()


@lru_cache(maxsize=4096)
def _tstz_from_text(text: str) -> Any:
    """Parse a timestamptz row value.  Cached: one change is matched against every subscription of
    its table, so the same string is parsed once rather than once per filter."""
    special = INFINITIES.get(text.lower())
    if special is not None:
        return special
    value = datetime.fromisoformat(text)
    # One shared tzinfo makes comparisons ~40x cheaper than between different fixed offsets.
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _special_instant(text: str) -> datetime | None:
    """Postgres' special date/time inputs that name an instant: ``epoch``, and ``now``, ``today``,
    ``yesterday``, ``tomorrow``, which Postgres evaluates when it casts (here: when the filter is
    bound, i.e. at join; the time zone is UTC)."""
    word = text.strip().lower()
    if word == "epoch":
        return datetime(1970, 1, 1, tzinfo=UTC)
    if word not in ("now", "today", "yesterday", "tomorrow"):
        return None
    now = datetime.now(UTC)
    if word == "now":
        return now
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days={"today": 0, "yesterday": -1, "tomorrow": 1}[word])


def timestamptz_input(text: str) -> Any:
    """Aware UTC datetime (compared as instants, so offsets need not match); no offset means UTC."""
    special = _special_instant(text)
    if special is not None:
        return special
    return _tstz_from_text(_datetime_text(text))


def timestamptz_key(value: Any) -> Any:
    if type(value) is str:
        return _tstz_from_text(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    raise TypeError(type(value).__name__)


@lru_cache(maxsize=4096)
def _ts_from_text(text: str) -> Any:
    """Naive datetime; an offset is dropped, as the ``timestamp`` input function ignores it."""
    special = INFINITIES.get(text.lower())
    if special is not None:
        return special
    return datetime.fromisoformat(text).replace(tzinfo=None)


def timestamp_input(text: str) -> Any:
    special = _special_instant(text)
    if special is not None:
        return special.replace(tzinfo=None)
    return _ts_from_text(_datetime_text(text))


def timestamp_key(value: Any) -> Any:
    if type(value) is str:
        return _ts_from_text(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    raise TypeError(type(value).__name__)


def _date_from_text(text: str) -> Any:
    try:
        return date.fromisoformat(text)  # the common case first: rows are always "YYYY-MM-DD"
    except ValueError:
        special = INFINITIES.get(text.lower())
        if special is not None:
            return special
        return datetime.fromisoformat(text).date()  # "2026-01-02 10:00" is a valid date input


def date_input(text: str) -> Any:
    special = _special_instant(text)
    if special is not None:
        return special.date()
    return _date_from_text(_datetime_text(text))


def date_key(value: Any) -> Any:
    if type(value) is str:
        return _date_from_text(value)
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise TypeError(type(value).__name__)


_DAY_US: Final = 86_400_000_000
_MICROSECOND: Final = timedelta(microseconds=1)


def _time_parts(text: str) -> tuple[int, int]:
    """(microseconds since midnight, UTC offset in microseconds); Postgres allows ``24:00:00``."""
    s = text
    end_of_day = s.startswith("24")
    if end_of_day:
        s = "00" + s[2:]
    t = time.fromisoformat(s)
    micros = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    if end_of_day:
        if micros:
            raise CastError("hour 24 is only valid as 24:00:00")
        micros = _DAY_US
    offset = t.utcoffset()
    return micros, 0 if offset is None else offset // _MICROSECOND


def time_input(text: str) -> int:
    """``time`` as microseconds since midnight; an offset is ignored, as ``time_in`` does."""
    return _time_parts(_datetime_text(text))[0]


def time_key(value: Any) -> int:
    if isinstance(value, str):
        return _time_parts(value)[0]
    if isinstance(value, time):
        return _time_parts(value.isoformat())[0]
    raise TypeError(type(value).__name__)


def _timetz_of(text: str) -> tuple[int, int]:
    """Postgres orders timetz by the UTC instant, then by offset (so ``10:00+01`` != ``09:00+00``)."""
    micros, offset = _time_parts(text)
    return micros - offset, -offset


def timetz_input(text: str) -> tuple[int, int]:
    return _timetz_of(_datetime_text(text))


def timetz_key(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        return _timetz_of(value)
    if isinstance(value, time):
        return _timetz_of(value.isoformat())
    raise TypeError(type(value).__name__)
