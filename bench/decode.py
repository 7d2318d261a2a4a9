"""CPU cost of the relay's per-change path, as a ratio to bare ``orjson.loads`` of the same lines.

Not part of CI.  ``python bench/decode.py [--n 20000]``.  Uses the captured wal2json messages of
one demo ``bookings`` INSERT/UPDATE/DELETE (tests/fixtures/wal2json_bookings.jsonl), repeated, so
it runs anywhere without Postgres.  Prints microseconds per change for:

- baseline: orjson.loads of every message (B, row, C) - the floor for any JSON consumer;
- decode: Decoder.decode of every message (values converted to the clients' shapes);
- decode+frame: plus SubscriptionIndex.plan and FrameCache for one subscriber (what one change
  costs the relay before the socket write).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from relay.core.changes import RowChange
from relay.core.subscriptions import FrameCache, SubscriptionIndex, parse_bindings
from relay.core.wal2json import Decoder

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "wal2json_bookings.jsonl"


class _Sub:
    topic = "realtime:bench"
    vsn = "1.0.0"

    claims = {"role": "service_role"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="transactions to decode")
    args = ap.parse_args()
    lines = [ln.encode() for ln in FIXTURE.read_text().splitlines() if ln.strip()]
    txs = [lines[i : i + 3] for i in range(0, len(lines), 3)]  # B, row, C
    work = [m for i in range(args.n) for m in txs[i % len(txs)]]

    t0 = time.perf_counter()
    for m in work:
        orjson.loads(m)
    base = time.perf_counter() - t0

    dec = Decoder()
    t0 = time.perf_counter()
    for m in work:
        dec.decode(m)
    decode = time.perf_counter() - t0

    index: SubscriptionIndex[_Sub] = SubscriptionIndex()
    sub = _Sub()
    (spec,) = parse_bindings([{"event": "*", "schema": "public", "table": "bookings"}])
    index.add(spec, sub, None)
    dec = Decoder()
    t0 = time.perf_counter()
    for m in work:
        ev = dec.decode(m)
        if isinstance(ev, RowChange):
            cache = FrameCache(ev)
            deliveries, _ = index.route(ev, lambda sub, which: True)
            for d in deliveries:
                cache.wire(d.sub.topic, d.ids, d.sub.vsn)
    full = time.perf_counter() - t0

    n = args.n
    print(f"changes: {n}")
    print(f"baseline orjson.loads : {base / n * 1e6:7.2f} us/change")
    print(f"decode                : {decode / n * 1e6:7.2f} us/change  ({decode / base:.2f}x baseline)")
    print(f"decode + plan + frame : {full / n * 1e6:7.2f} us/change  ({full / base:.2f}x baseline)")


if __name__ == "__main__":
    main()
