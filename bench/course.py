"""How long each module's reference solution takes to execute (issue: the versioned micro-course).

For each module of the flagship course's latest release, papermill runs the released source
notebook (the reference solution, visible and hidden tests included) with the ``livelab``
kernel against a live lab started with ``lab_hardware.runtime.lab.up``, exactly as the release gate
does; the four modules run in order, like a learner's path, and the whole path is repeated
``--runs`` times (default 3) against the same lab.  Reported per module: the median, min and
max wall time of the papermill run (kernel start included, about 1 s of it) and the learner's
estimate from course.toml for scale.  Every run must pass, or the benchmark fails.

Run: ``.venv/bin/python bench/course.py [--runs K] [--version V]``; writes bench/results/course.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import console, median, save, table

from courses import catalog, notebooks, release
from lab_hardware.runtime import lab as _lab

COURSE = "edge-ml-foundations"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--version", help="released version (default: the latest)")
    args = p.parse_args(argv)
    bindir = str(Path(sys.executable).parent)  # nbgrader/jupyter tools from this environment
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    c = catalog.load(COURSE)
    version = args.version or catalog.releases(c)[-1]
    manifest = catalog.read_release(c, version)
    rel = catalog.release_dir(c, version)
    times: dict[str, list[float]] = {m["id"]: [] for m in manifest["modules"]}
    with tempfile.TemporaryDirectory(prefix="livelab-bench-course-") as tmp:
        home = Path(tmp) / "lab"
        t0 = time.perf_counter()
        release._start_lab(manifest["modules"][0]["scenario"], home)
        up_s = time.perf_counter() - t0
        try:
            for run in range(args.runs):
                for m in manifest["modules"]:
                    ex = notebooks.execute(
                        rel / m["source"]["path"],
                        Path(tmp) / "runs" / f"{m['id']}-{run}.ipynb",
                        parameters={"LIVELAB_HOME": str(home), "LEARNER": f"bench-{run}", "SEED": run},
                        cwd=Path(tmp) / "work" / f"{m['id']}-{run}",
                    )
                    if not ex.ok:
                        console.print(f"[red]{m['id']} run {run + 1} failed: {ex.error}[/]")
                        return 1
                    times[m["id"]].append(ex.seconds)
                    console.print(f"run {run + 1}/{args.runs} {m['id']}: {ex.seconds:.1f} s")
        finally:
            _lab.down(home)
    rows, results = [], {}
    for m in manifest["modules"]:
        xs = times[m["id"]]
        results[m["id"]] = {
            "median_s": round(median(xs), 2),
            "min_s": round(min(xs), 2),
            "max_s": round(max(xs), 2),
            "runs_s": [round(x, 2) for x in xs],
            "estimated_minutes": m["minutes"],
        }
        rows.append([m["id"], median(xs), min(xs), max(xs), m["minutes"]])
    path_s = sum(median(times[m]) for m in times)
    rows.append(["whole course (sum of medians)", path_s, "", "", sum(m["minutes"] for m in manifest["modules"])])
    table(
        f"{COURSE} {version}: reference solution execution (papermill + livelab kernel, live lab), {args.runs} runs",
        ["module", "median s", "min s", "max s", "learner estimate (min)"],
        rows,
    )
    save(
        "course",
        {
            "course": COURSE,
            "version": version,
            "runs": args.runs,
            "lab_up_s": round(up_s, 2),
            "modules": results,
            "course_median_sum_s": round(path_s, 2),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
