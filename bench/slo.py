"""Benchmark of micro-SLO evaluation (issue 14): what one window close costs a device.

A device with SLOs does, at every window close, ``Evaluator.observe(WindowCounts.of(w))``
(``lab_hardware/runtime/device_slo.py``): read the window's counts, split each objective's
events into good and bad, update the rolling sums of its period and of its four alert
windows, and compare burn rates with the thresholds.  This times exactly that, on windows
built the way a device builds them (voice-intents: 50 decisions/s, 0.5 s windows = 25
decisions in one batch, a few undone), for 1, 4 and 16 objectives (the most a bundle may
declare) mixing the indicators, and for a short and a workbook-sized period (the cost must
not grow with the period: the sums are running sums).  A device without SLOs pays one
attribute check per window, not measured.

Figures are microseconds per window (all objectives together), median of ``--runs`` runs of
``--windows`` windows each; ``per_slo_us`` divides by the number of objectives.

Run: ``.venv/bin/python bench/slo.py [--runs K] [--windows N]``; writes bench/results/slo.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import console, median, save, table

from lab_hardware.modelops import slo
from lab_hardware.window import Decisions, Window

INTENTS = ["weather", "timer", "music", "call", "lights", "shopping"]
KINDS = [
    {"indicator": "latency", "threshold_ms": 15.0},
    {"indicator": "undo_rate"},
    {"indicator": "undo_rate", "intent": "call"},
    {"indicator": "divergence", "intent": "call"},
]


def objectives(n: int, period: int) -> list[slo.Objective]:
    decl = [
        {"name": f"slo-{i}", "objective": 0.99, "period_windows": period, "policy": "alert", **KINDS[i % len(KINDS)]}
        for i in range(n)
    ]
    return slo.parse(decl, INTENTS)


def windows(n: int, per_window: int = 25, seed: int = 14) -> list[Window]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        labels = rng.integers(0, len(INTENTS), per_window)
        probs = rng.dirichlet(np.ones(len(INTENTS)), per_window).astype(np.float32)
        undone = rng.random(per_window) < 0.03
        d = Decisions.from_batch(
            labels, probs, undone, [f"{k:016x}"] * per_window, k * per_window, float(rng.gamma(2.0, 3.0))
        )
        w = Window(INTENTS, 0.0)
        w.add(d)
        out.append(w)
    return out


def run_once(n_slos: int, period: int, ws: list[Window]) -> float:
    ev = slo.Evaluator(objectives(n_slos, period))
    clock = time.perf_counter_ns
    t0 = clock()
    for w in ws:
        ev.observe(slo.WindowCounts.of(w))
    return (clock() - t0) / 1000 / len(ws)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--windows", type=int, default=20_000)
    args = ap.parse_args()
    ws = windows(args.windows)
    rows, results = [], []
    for period in (120, 8640):
        for n in (1, 4, 16):
            runs = [run_once(n, period, ws) for _ in range(args.runs)]
            us = median(runs)
            results.append(
                {
                    "slos": n,
                    "period_windows": period,
                    "us_per_window": round(us, 2),
                    "per_slo_us": round(us / n, 2),
                    "runs_us": [round(r, 2) for r in runs],
                }
            )
            rows.append([n, period, us, us / n])
    table("SLO evaluation per window close", ["SLOs", "period (windows)", "us / window", "us / SLO"], rows)
    save(
        "slo",
        {
            "runs": args.runs,
            "windows": args.windows,
            "decisions_per_window": 25,
            "results": results,
        },
    )
    worst = max(r["us_per_window"] for r in results)
    console.print(f"(the costliest case, {worst:.1f} us per 0.5 s window, is {worst / 5000:.4f}% of a core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
