"""Benchmark of deterministic replay (issue: scrubbed captures and deterministic replay).

1. Replay throughput, records/s, through the scenario's feature extraction,
   model and signal digests, on ONE core: the sandbox process is pinned to one
   CPU (``os.sched_setaffinity``) with one onnxruntime thread, over a replay of
   >= 100,000 records synthesised as devices capture them (scrub -> features
   -> candidate model -> digest, stored with ``store_capture`` in parts and
   built with ``replay.build``).  Median of 5 sandboxed runs (target >= 50,000
   records/s, in-sandbox processing: read + check the replay, features, model,
   digests, output).  Beside it the end-to-end wall time of each run,
   including process start under ``unshare -rn`` and imports.  Every run's
   output sha256 must be identical (byte-identical replay), or the benchmark
   fails.
2. Scrubbing cost per utterance over the scenario stream (target <= 5 us on
   average), and separately for utterances with and without PII.

Run: ``.venv/bin/python bench/replay.py [--records N] [--runs K]``; writes bench/results/replay.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import console, median, save, table

import numpy as np

from lab_hardware import audit, digest, features, inference
from lab_hardware.modelops import replay, scrub
from lab_hardware import home as _home
from labs import scenarios

SC = scenarios.load("voice-intents")
NS, DEV = "default", "dev-0"
PART = 10_000


def synthesise(home: Path, n: int, model: Path) -> dict:
    """Store ``n`` capture records as a device would publish them; build the replay."""
    chain = audit.AuditChain(_home.device_dir(home, NS, DEV) / "audit.jsonl")
    grant = chain.append(
        "consent",
        {
            "id": "bench",
            "by": "bench",
            "scope": "replay-capture",
            "grant": True,
            "changed": True,
            "withdrawn_windows": 0,
        },
    )
    stream = SC.stream(n)
    t0 = time.perf_counter()
    texts = [scrub.scrub(r["text"]) for r in stream]
    truth = np.array([SC.intents.index(r["intent"]) for r in stream])
    x = features.extract_batch(texts)
    labels, _ = inference.Model(model).predict(x)
    bd = digest.file_digest(model)
    digests = digest.signal_digests(x, bd, 0)
    device_s = time.perf_counter() - t0
    t_start = grant["time"] + 1
    records = [
        {
            "decision": i,
            "time": round(t_start + i * 0.02, 6),
            "text": texts[i],
            "bundle": bd,
            "digest": digests[i],
            "label": int(labels[i]),
            "undo": bool(labels[i] != truth[i]),
        }
        for i in range(n)
    ]
    t0 = time.perf_counter()
    parts = [records[i : i + PART] for i in range(0, n, PART)]
    for k, part in enumerate(parts):
        replay.store_capture(
            home,
            {
                "schema": replay.SCHEMA_CAPTURE,
                "namespace": NS,
                "device": DEV,
                "capture_id": "bench",
                "part": k,
                "last": k == len(parts) - 1,
                "consent": {"index": grant["index"], "hash": grant["hash"]},
                "records": part,
            },
        )
    store_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = replay.build(home, NS, DEV, home / "bench.lreplay")
    build_s = time.perf_counter() - t0
    return {
        "path": path,
        "records": n,
        "bytes": path.stat().st_size,
        "device_side_s": device_s,
        "store_s": store_s,
        "build_s": build_s,
        "undone": sum(r["undo"] for r in records),
    }


def scrub_cost(n: int, repeats: int) -> dict:
    recs = SC.stream(n)
    groups = {
        "all": [r["text"] for r in recs],
        "with_pii": [r["text"] for r in recs if r["pii"]],
        "without_pii": [r["text"] for r in recs if not r["pii"]],
    }
    out = {}
    for name, texts in groups.items():
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for t in texts:
                scrub.scrub(t)
            samples.append((time.perf_counter() - t0) / len(texts) * 1e6)
        out[name] = {"utterances": len(texts), "runs_us": samples, "median_us": median(samples)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000, help="replay size (default 100,000)")
    ap.add_argument("--runs", type=int, default=5, help="sandboxed runs (default 5)")
    args = ap.parse_args()
    cpu = max(os.sched_getaffinity(0))
    model = SC.models["candidate"]

    console.rule(f"1. replay throughput: {args.records:,} records, one core (cpu {cpu}), threads=1")
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        home = Path(tmp)
        syn = synthesise(home, args.records, model)
        console.print(
            f"  replay {syn['bytes'] / 1e6:.1f} MB; device side {syn['device_side_s']:.2f} s, "
            f"store {syn['store_s']:.2f} s, build {syn['build_s']:.2f} s"
        )
        runs = []
        for i in range(args.runs):
            r = replay.run(syn["path"], model, home / f"out{i}.jsonl", threads=1, cpu=cpu)
            runs.append(
                {
                    k: r[k]
                    for k in (
                        "records",
                        "seconds",
                        "records_per_s",
                        "wall_seconds",
                        "output_sha256",
                        "network_isolated",
                        "digest_matches",
                        "model_load_seconds",
                    )
                }
            )
            console.print(
                f"  run {i + 1}: {r['records_per_s']:,.0f} records/s in the sandbox "
                f"({r['seconds']:.3f} s), wall {r['wall_seconds']:.3f} s, sha256 {r['output_sha256'][:16]}, "
                f"digests {r['digest_matches']:,}/{r['records']:,}, isolated {r['network_isolated']}"
            )
    hashes = {r["output_sha256"] for r in runs}
    identical = len(hashes) == 1
    all_digests = all(r["digest_matches"] == r["records"] for r in runs)
    rate = median([r["records_per_s"] for r in runs])
    wall = median([r["wall_seconds"] for r in runs])
    e2e = args.records / wall

    console.rule("2. scrubbing cost per utterance (scenario stream, 20,000 utterances)")
    sc = scrub_cost(20_000, 5)

    target = 50_000
    result = {
        "replay": {
            "records": args.records,
            "replay_bytes": syn["bytes"],
            "runs": runs,
            "cpu": cpu,
            "threads": 1,
            "median_records_per_s_in_sandbox": rate,
            "median_wall_seconds": wall,
            "median_records_per_s_end_to_end": e2e,
            "target_records_per_s": target,
            "ratio_to_target": rate / target,
            "byte_identical": identical,
            "output_sha256": sorted(hashes),
            "all_digests_match": all_digests,
            "network_isolated": all(r["network_isolated"] for r in runs),
            "synthesis": {k: syn[k] for k in ("device_side_s", "store_s", "build_s", "undone")},
        },
        "scrub": {**sc, "target_us": 5.0, "ratio_to_target": sc["all"]["median_us"] / 5.0},
    }
    table(
        "deterministic replay",
        ["measure", "median", "target", "ratio"],
        [
            ["replay records/s in sandbox (1 core)", rate, float(target), rate / target],
            ["replay records/s end to end (with process start)", e2e, "-", "-"],
            ["replay wall time, s", wall, "-", "-"],
            ["byte-identical outputs over runs", "yes" if identical else "NO", "yes", "-"],
            ["signal digests reproduced", "all" if all_digests else "NOT ALL", "all", "-"],
            ["network isolated (unshare -rn)", "yes" if result["replay"]["network_isolated"] else "no", "yes", "-"],
            ["scrub us/utterance (stream)", sc["all"]["median_us"], 5.0, sc["all"]["median_us"] / 5.0],
            ["scrub us/utterance with PII", sc["with_pii"]["median_us"], "-", "-"],
            ["scrub us/utterance without PII", sc["without_pii"]["median_us"], "-", "-"],
        ],
    )
    save("replay", result)
    if not identical or not all_digests:
        console.print("[red]FAILED: replay outputs differ between runs or digests do not match[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
