"""Benchmark of the device-side PII scrubber (issue 13): Presidio + name model vs the old rules.

Per-utterance cost of ``lab_hardware.modelops.scrub.scrub`` -- each call timed on its own --
over two workloads: the scenario stream a device plays (20,000 utterances, about 30 % with
PII) and the held-out evaluation set (5,500 utterances, most with PII, many numeric).  The
baseline is the previous scrubber (``scrub_rules.scrub``: gazetteer + regexes) on the same
utterances.  A device applies its hardware profile by stretching the measured decision time
by ``inference_slowdown`` (``runtime/device.py`` sleeps ``(slowdown - 1) x elapsed``, and the
scrub call is inside that window), so the ``rpi4`` figures are this machine's times x the
profile's factor; they are set against the scenario's per-device budget (1 / rate_hz).
Median of ``--runs`` runs of each figure; start-up (import + building the analyzers) is
reported apart, once per device process.

Run: ``.venv/bin/python bench/scrub.py [--runs K] [--n N]``; writes bench/results/scrub.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import ROOT, console, median, save, table

from lab_hardware import profiles
from labs import scenarios

SC = scenarios.load("voice-intents")


def per_utterance(fn, texts: list[str]) -> list[float]:
    """Microseconds of each call."""
    out = []
    clock = time.perf_counter_ns
    for t in texts:
        t0 = clock()
        fn(t)
        out.append((clock() - t0) / 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def startup_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); from lab_hardware.modelops import scrub; scrub.warm_up(); "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=20_000, help="scenario-stream utterances (default 20,000)")
    args = ap.parse_args()

    from lab_hardware.modelops import scrub, scrub_rules

    scrub.warm_up()
    workloads = {
        "stream": [r["text"] for r in SC.stream(args.n)],
        "eval": [
            json.loads(line)["text"]
            for line in (ROOT / "tests" / "scrub_eval.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ],
    }
    slow = {name: profiles.load(name).inference_slowdown for name in ("none", "rpi4")}
    budget_us = 1e6 / SC.rate_hz
    result: dict = {
        "workloads": {k: len(v) for k, v in workloads.items()},
        "runs": args.runs,
        "slowdown": slow,
        "rate_hz": SC.rate_hz,
        "budget_us_per_utterance": budget_us,
    }
    rows = []
    for wl, texts in workloads.items():
        for impl, fn in (("presidio", scrub.scrub), ("old rules", scrub_rules.scrub)):
            meds, p99s, means = [], [], []
            for _ in range(args.runs):
                xs = per_utterance(fn, texts)
                meds.append(median(xs))
                p99s.append(pct(xs, 0.99))
                means.append(sum(xs) / len(xs))
            fig = {
                "median_us": median(meds),
                "p99_us": median(p99s),
                "mean_us": median(means),
                "runs_median_us": meds,
                "runs_p99_us": p99s,
            }
            for prof, f in slow.items():
                fig[prof] = {
                    "median_us": fig["median_us"] * f,
                    "p99_us": fig["p99_us"] * f,
                    "mean_us": fig["mean_us"] * f,
                    "share_of_budget_p99": fig["p99_us"] * f / budget_us,
                }
            result.setdefault(wl, {})[impl] = fig
            console.print(f"  {wl:<7} {impl:<10} median {fig['median_us']:8.1f} us  p99 {fig['p99_us']:8.1f} us")
        new, old = result[wl]["presidio"], result[wl]["old rules"]
        result[wl]["ratio_vs_old"] = {k: new[k] / old[k] for k in ("median_us", "p99_us", "mean_us")}
        for prof in slow:
            rows.append(
                [
                    wl,
                    prof,
                    new[prof]["median_us"],
                    new[prof]["p99_us"],
                    old[prof]["median_us"],
                    old[prof]["p99_us"],
                    new["median_us"] / old["median_us"],
                    new["p99_us"] / old["p99_us"],
                    f"{new[prof]['share_of_budget_p99']:.1%}",
                ]
            )
    starts = [startup_seconds() for _ in range(min(args.runs, 3))]
    result["startup_s"] = {"runs": starts, "median": median(starts)}
    table(
        f"scrub cost per utterance, us (budget {budget_us:,.0f} us at {SC.rate_hz:g} Hz per device)",
        [
            "workload",
            "profile",
            "median",
            "p99",
            "old median",
            "old p99",
            "x old (median)",
            "x old (p99)",
            "p99 / budget",
        ],
        rows,
    )
    console.print(f"start-up (import + analyzers + model), median of {len(starts)}: {median(starts):.2f} s")
    save("scrub", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
