"""Shared helpers for the benchmarks: medians, a results file, a rich table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
# Benchmarks are system identities: every learning event they cause (SDK, grader) is marked
# ``system`` (labs.learning_events.system_identity), so that no manager's report counts them.
os.environ["LIVELAB_SYSTEM"] = "1"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
console = Console(highlight=False)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
    }


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    console.print(f"wrote {path.relative_to(ROOT)}")
    return path


def table(title: str, columns: list[str], rows: list[list]) -> None:
    t = Table(*columns, title=title)
    for r in rows:
        t.add_row(*[f"{x:,.2f}" if isinstance(x, float) else str(x) for x in r])
    console.print(t)
