"""Top frames of a py-spy profile: where the relay's time goes, as percentages.

Not part of CI.  Record the relay (in-process benches: the bench's own pid) with, for example::

    py-spy record --nonblocking --format raw -r 200 -d 20 -o prof.txt --pid <pid>
    python bench/pyspy_top.py prof.txt --within Pipeline._consume

``--within`` keeps only the samples whose stack contains that frame (e.g. the replication loop,
``RelayServer.dispatch``) and gives percentages of those; ``--without`` drops stacks (e.g.
``Connection.teardown``); line numbers are dropped so a function's samples add up.  Prints self
time (the frame on top) and inclusive time per function.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frames(stack: str) -> list[str]:
    """Function frames of one collapsed stack (root first), without process/thread and line numbers."""
    out = []
    for f in stack.split(";"):
        if f.startswith(("process ", "thread ")):
            continue
        out.append(_LINE.sub(")", f.strip()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path, help="py-spy --format raw output")
    ap.add_argument("--within", action="append", default=[], help="keep stacks containing this text")
    ap.add_argument("--without", action="append", default=[], help="drop stacks containing this text")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    selfs: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        if args.within and not any(w in stack for w in args.within):
            continue
        if any(w in stack for w in args.without):
            continue
        fs = frames(stack)
        if not fs:
            continue
        k = int(n)
        total += k
        selfs[fs[-1]] += k
        for f in set(fs):
            incl[f] += k
    if not total:
        print("no samples matched", file=sys.stderr)
        return 1
    print(f"{total} samples{' within ' + ' | '.join(args.within) if args.within else ''}")
    print("self %  function")
    for f, k in selfs.most_common(args.top):
        print(f"{100 * k / total:5.1f}  {f}")
    print("incl %  function")
    for f, k in incl.most_common(args.top):
        print(f"{100 * k / total:5.1f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
