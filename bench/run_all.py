"""Every row of issue 16's performance table, measured by the benches in one go, as one table.

Not part of CI.  ``python bench/run_all.py [--full] [--only drain latency ...] [--log-dir DIR]``

Runs each bench as its own process (its own throwaway cluster, so the rows do not disturb each
other), one after the other, collects the ``TABLE-ROW`` lines they print (``bench/tablerow.py``)
and prints the table: figure, same-run baseline, ratio, aim.  The default sizes fit a shared
2-core machine in a few minutes per bench; ``--full`` uses the issue's sizes (1M-row transaction,
50,000-change backlog).  A bench that fails — including one that delivered nothing or not what
it should — shows as FAILED with its log, and this script then exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tablerow import parse

HERE = Path(__file__).resolve().parent

# (rows it measures, script, quick arguments, full arguments)
BENCHES: list[tuple[tuple[str, ...], str, list[str], list[str]]] = [
    (("drain", "catchup"), "throughput.py", ["--changes", "20000", "--seconds", "5"], ["--changes", "50000"]),
    (("large_tx",), "large_tx.py", ["--rows", "200000"], ["--rows", "1000000"]),
    (
        ("authz_500", "authz_5000"),
        "authz.py",
        ["--changes", "2000", "--subscribers", "500", "5000"],
        ["--changes", "5000", "--subscribers", "500", "5000"],
    ),
    (("idle_memory", "joins"), "idle_sockets.py", ["--sockets", "10000"], ["--sockets", "10000"]),
    (
        ("latency", "latency_pinned"),
        "latency.py",
        ["--seconds", "10", "--pin", "both"],
        ["--seconds", "30", "--pin", "both"],
    ),
    (
        ("scale_out_1", "scale_out_2", "scale_out_4"),
        "scale_out.py",
        ["--changes", "2000", "--subscribers", "500"],
        ["--changes", "5000", "--subscribers", "2000", "--rounds", "3"],
    ),
]

TITLES = {
    "drain": "backlog drain, relay -> 1 subscriber / pg_recvlogical",
    "catchup": "resuming client's catch-up (replay path) / live drain",
    "large_tx": "single large transaction, rows/s / pg_logical_slot_get_changes",
    "authz_500": "authorized fan-out, 500 subscribers, distinct claims",
    "authz_5000": "authorized fan-out, 5,000 subscribers, distinct claims",
    "idle_memory": "10,000 idle sockets: relay memory per socket",
    "joins": "10,000 idle sockets: connect + join rate",
    "latency": "commit -> client, 100 changes/s x 500 subscribers",
    "latency_pinned": "same, relay on a CPU of its own (bench/affinity.py)",
    "scale_out_1": "cluster mode (Redis), authorized fan-out, 1 fan-out process",
    "scale_out_2": "cluster mode (Redis), authorized fan-out, 2 fan-out processes",
    "scale_out_4": "cluster mode (Redis), authorized fan-out, 4 fan-out processes",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's full sizes (takes much longer)")
    ap.add_argument("--only", nargs="+", choices=sorted(TITLES), help="run only the benches of these rows")
    ap.add_argument("--log-dir", type=Path, default=Path("bench-logs"), help="each bench's full output")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per bench")
    args = ap.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    )
    measured: dict[str, dict[str, object]] = {}
    failed: dict[str, str] = {}
    for rows, script, quick, full in BENCHES:
        if args.only and not set(rows) & set(args.only):
            continue
        cmd = [sys.executable, str(HERE / script), *(full if args.full else quick)]
        log = args.log_dir / f"{Path(script).stem}.log"
        print(f"== {' '.join(cmd[1:])}  (log: {log})", flush=True)
        t0 = time.monotonic()
        try:
            res = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
            )
            out, rc = res.stdout + res.stderr, res.returncode
        except subprocess.TimeoutExpired as exc:

            def text(b: str | bytes | None) -> str:
                return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

            out, rc = f"{text(exc.stdout)}{text(exc.stderr)}\ntimed out after {args.timeout:.0f}s", -1
        log.write_text(out if isinstance(out, str) else out.decode(errors="replace"))
        got = {r["row"]: r for r in parse(out if isinstance(out, str) else "")}
        print(f"   {time.monotonic() - t0:.0f}s, exit {rc}", flush=True)
        for row in rows:
            if rc == 0 and row in got:
                measured[row] = got[row]
            else:
                last = [line for line in str(out).splitlines() if line.strip()][-1:] or ["no output"]
                failed[row] = f"FAILED (exit {rc}): {last[0][:120]}"

    print()
    print("| measure | figure | same-run baseline | ratio | aim |")
    print("|---|---|---|---|---|")
    for row, title in TITLES.items():
        if row in measured:
            r = measured[row]
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            print(f"| {title} | {r['figure']} | {r['baseline']} | {ratio} | {r['aim']} |")
        elif row in failed:
            print(f"| {title} | {failed[row]} | | | |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
