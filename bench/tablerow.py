"""One line per row of issue 16's table, so that ``bench/run_all.py`` can collect every row.

Each bench prints its human-readable report as before and, for every row it measured, one line
``TABLE-ROW {json}`` with the figure, the same-run baseline and the ratio.  A bench that could not
measure a row exits non-zero instead of printing one: the table only ever shows measured figures.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "TABLE-ROW "


def emit(row: str, figure: str, baseline: str, ratio: float | None, aim: str, **extra: Any) -> None:
    """Print the machine-readable line for one row (``row`` is the table's key, e.g. ``drain``)."""
    rec = {"row": row, "figure": figure, "baseline": baseline, "ratio": ratio, "aim": aim, **extra}
    print(PREFIX + json.dumps(rec, sort_keys=True), flush=True)


def parse(text: str) -> list[dict[str, Any]]:
    """The rows a bench printed, in order."""
    return [json.loads(line[len(PREFIX) :]) for line in text.splitlines() if line.startswith(PREFIX)]
