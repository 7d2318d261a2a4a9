"""Keys for Postgres' special values that sort past every ordinary one (NaN, +-infinity)."""

from __future__ import annotations

from typing import Final

__all__ = ["INFINITIES", "NAN", "NEG_INF", "POS_INF", "Extreme"]


class Extreme:
    """Postgres' special values that sort past every ordinary one: float/numeric ``NaN`` (which,
    unlike IEEE, *equals* itself and is the greatest value) and date/time ``±infinity``.

    ``rank`` orders the extremes among themselves (NaN above +infinity); ordinary values count as
    rank 0.  Python falls back to these reflected methods when a float/Decimal/datetime returns
    ``NotImplemented``, so plain values keep their fast native comparisons.
    """

    __slots__ = ("_name", "_rank")

    def __init__(self, name: str, rank: int) -> None:
        self._name = name
        self._rank = rank

    def _other_rank(self, other: object) -> int:
        return other._rank if isinstance(other, Extreme) else 0

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return hash(self._name)

    def __lt__(self, other: object) -> bool:
        return self._rank < self._other_rank(other)

    def __le__(self, other: object) -> bool:
        return self._rank <= self._other_rank(other)

    def __gt__(self, other: object) -> bool:
        return self._rank > self._other_rank(other)

    def __ge__(self, other: object) -> bool:
        return self._rank >= self._other_rank(other)

    def __repr__(self) -> str:
        return self._name


NAN: Final = Extreme("NaN", 2)
POS_INF: Final = Extreme("infinity", 1)
NEG_INF: Final = Extreme("-infinity", -1)
INFINITIES: Final = {"infinity": POS_INF, "+infinity": POS_INF, "-infinity": NEG_INF}
