"""CPU cost of decoding + encoding one change, per value kind: the hot path json/numeric take.

Not part of CI.  ``python bench/values.py [--n 2000] [--repeat 15]``.  For each row shape it times
``Decoder.decode`` of the wal2json row message plus ``FrameCache`` (the ``data`` encode and one
frame), ``--n`` changes per run, and prints the best of ``--repeat`` runs in microseconds per
change: the minimum is the number least disturbed by other processes on a shared machine.
Runs without Postgres; compare two checkouts with ``PYTHONPATH=<checkout> python bench/values.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from relay.core.subscriptions import FrameCache
from relay.core.wal2json import Decoder

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "wal2json_bookings.jsonl"


def _col(name: str, typ: str, oid: int, raw: str) -> str:
    return f'{{"name":"{name}","type":"{typ}","typeoid":{oid},"value":{raw}}}'


def _row(*cols: str) -> bytes:
    return (
        '{"action":"I","schema":"public","table":"t","columns":['
        + ",".join(cols)
        + '],"pk":[{"name":"id","type":"integer","typeoid":23}]}'
    ).encode()


_DOC = json.dumps({"status": "open", "tags": ["a", "b", "c"], "n": 12, "price": 9.5, "nested": {"x": 1}})
SHAPES: dict[str, bytes] = {
    "ints+text": _row(_col("id", "integer", 23, "1"), _col("name", "text", 25, '"hello"')),
    "jsonb small": _row(_col("id", "integer", 23, "1"), _col("j", "jsonb", 3802, json.dumps(_DOC))),
    "jsonb 20 keys": _row(
        _col("id", "integer", 23, "1"),
        _col("j", "jsonb", 3802, json.dumps(json.dumps({f"k{i}": [i, str(i), i / 3] for i in range(20)}))),
    ),
    "numeric short": _row(_col("id", "integer", 23, "1"), _col("n", "numeric", 1700, "12.50")),
    "numeric 25 digits": _row(
        _col("id", "integer", 23, "1"), _col("n", "numeric", 1700, "1234567890123.456789012345")
    ),
    "float8[]": _row(
        _col("id", "integer", 23, "1"), _col("fa", "double precision[]", 1022, '"{1.5,2,3e10}"')
    ),
}


def _bookings_row() -> bytes:
    for line in FIXTURE.read_text().splitlines():
        if '"action":"I"' in line:
            return line.encode()
    raise SystemExit("no INSERT in the fixture")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    shapes = {"bookings INSERT": _bookings_row(), **SHAPES}
    for name, msg in shapes.items():
        best = float("inf")
        for _ in range(args.repeat):
            dec = Decoder()
            dec.decode(b'{"action":"B","lsn":"0/100","nextlsn":"0/200"}')
            t0 = time.perf_counter()
            for _ in range(args.n):
                FrameCache(dec.decode(msg)).frame("realtime:bench", (1,), "1.0.0")  # type: ignore[arg-type]
            best = min(best, time.perf_counter() - t0)
        print(f"{name:18s}: {best / args.n * 1e6:7.2f} us/change")


if __name__ == "__main__":
    main()
