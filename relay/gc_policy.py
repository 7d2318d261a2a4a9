"""Garbage-collector settings of a relay process (``relay serve``, and so each cluster worker).

Why: the relay's steady state allocates short-lived container objects per delivery (the plan's
tuples and id lists, ``Delivery`` records, frame lists) — about 1,500 per change at 500
subscribers.  CPython's default collector starts a young collection every 700 net allocations,
so one lands inside nearly every fan-out and promotes whatever of that change is still alive;
those promotions then start a *full* collection every few seconds, and a full collection walks
every tracked object of the process — ~113,000 at 500 subscribers, 90,000 of them start-up
state (modules, classes, the aiohttp app, caches) — 70-110 ms of CPU each on the 2-core bench
machine (``bench/latency.py --probe``).  Every
change that arrives meanwhile waits: at 100 changes/s x 500 subscribers a few such pauses per
10 s are more than 1 % of the deliveries, i.e. the p99.

Joins pay for it too: every socket adds a few dozen long-lived objects, so full collections ran
while sockets joined, each re-walking start-up's objects (``bench/idle_sockets.py``: 0.79 s of
full collections while 6,000 sockets joined, 0.33 s with the start-up heap frozen; 483 → 408 µs
of CPU per connect + join).

Two settings, applied once start-up is done:

- ``gc.freeze()`` moves everything alive then (after one collection, so start-up garbage is not
  kept) to the permanent generation: full collections no longer walk it.  The cost is that a
  reference cycle formed among those objects later is never collected — acceptable for
  start-up state that lives as long as the process (modules, app, configuration).
- a larger young-generation threshold: a young collection every ``GEN0_THRESHOLD`` net
  allocations, so most per-change objects are gone by the time one runs, and far fewer are
  promoted (hence far fewer full collections).  Cyclic garbage waits a little longer: at most
  that many objects, a few MiB.

Not applied by :func:`relay.service.start_relay` itself: tests and embedders run many relays in
one process, where freezing would keep every earlier relay's cyclic garbage for good.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "tune_gc"]

GEN0_THRESHOLD = 10_000


def tune_gc(gen0: int = GEN0_THRESHOLD) -> None:
    """Freeze the start-up heap and raise the young-generation threshold (see the module doc)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 1), gen1, gen2)
