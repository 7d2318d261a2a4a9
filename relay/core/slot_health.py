"""How close the relay's replication slot is to filling the database's disk (pure logic).

Why a watchdog: a persistent slot makes Postgres keep every WAL segment from the slot's
``restart_lsn`` on.  If the relay stops confirming (stuck, slow, or holding its replay window),
that WAL grows without bound unless ``max_slot_wal_keep_size`` caps it, and when the cap is hit
Postgres invalidates the slot.  Supabase's Realtime stops replicating at 50 % of the cap; this
relay warns, reports not-ready, and stops holding WAL for its replay window when the retained
WAL passes ``threshold`` of the cap (docs/operations.md#slot-watchdog).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SlotHealth", "assess"]


@dataclass(frozen=True)
class SlotHealth:
    """One reading of the slot.  ``share`` is None when Postgres does not cap slot WAL."""

    wal_status: str
    retained_bytes: int
    lag_bytes: int
    max_keep_bytes: int | None
    share: float | None
    over: bool
    lost: bool
    problem: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "wal_status": self.wal_status,
            "retained_bytes": self.retained_bytes,
            "lag_bytes": self.lag_bytes,
            "max_keep_bytes": self.max_keep_bytes,
            "retained_share": self.share,
            "over": 1 if self.over else 0,
            "lost": self.lost,
            "problem": self.problem,
        }


def assess(
    wal_status: str | None,
    retained_bytes: int,
    lag_bytes: int,
    max_keep_bytes: int | None,
    threshold: float,
) -> SlotHealth:
    """Judge one reading of ``pg_replication_slots``.

    ``wal_status`` None means the slot does not exist (yet): not a problem by itself, the
    pipeline creates it.  ``lost`` (or ``unreserved``, about to be lost) and a retained share
    at or above ``threshold`` are problems; ``max_keep_bytes`` None (``-1``: unlimited) gives
    no share, so only the absolute numbers are reported.
    """
    retained = max(0, retained_bytes)
    share = retained / max_keep_bytes if max_keep_bytes else None
    lost = wal_status == "lost"
    over = share is not None and share >= threshold
    problem: str | None = None
    if lost:
        problem = "slot_lost: the slot's WAL was removed (max_slot_wal_keep_size exceeded)"
    elif wal_status == "unreserved":
        problem = "slot_unreserved: the slot's WAL is about to be removed (max_slot_wal_keep_size)"
        over = True
    elif over:
        assert share is not None
        problem = (
            f"slot_wal_retained: the slot keeps {retained} bytes of WAL, {share:.0%} of "
            f"max_slot_wal_keep_size (threshold {threshold:.0%})"
        )
    return SlotHealth(
        wal_status or "missing", retained, max(0, lag_bytes), max_keep_bytes, share, over, lost, problem
    )
