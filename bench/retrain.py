"""Benchmark of the retraining job (issue 14, point 3): ``labs.retrain.build`` on N captured records.

For each N, a lab home holds one consented capture of N decisions of the voice-intents stream,
made as a device makes it (scrub -> features -> the candidate model -> signal digest, the
replay-capture grant in the device's audit chain).  The job is timed end to end as
``livelab retrain build`` runs it: re-verify the capture's consent and re-check its records,
label them with the oracle (onnxruntime), train the edge model (build_models' BLAS-free
L-BFGS), convert to ONNX and write the unsigned bundle.  Figures are the median of ``--runs``
runs; the phases ``label`` (oracle) and ``train`` (fit + conversion) are timed separately on the
same inputs.  Every run of one N must give the same bundle digest (checked and reported).

Run quietly: ``nice .venv/bin/python bench/retrain.py [--runs K] [--sizes 500,2000,8000]``;
writes bench/results/retrain.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from common import console, median, save, table

from lab_hardware import audit, digest, features
from lab_hardware import home as _home
from lab_hardware.inference import Model
from lab_hardware.modelops import replay, scrub
from labs import retrain, scenarios, streams

SC = scenarios.load("voice-intents")
NS, DEV = "default", "dev-1"


def captured_home(home: Path, n: int) -> Path:
    """One consented capture of ``n`` candidate decisions, stored as the lab's collector stores it."""
    chain = audit.AuditChain(_home.device_dir(home, NS, DEV) / "audit.jsonl")
    grant = chain.append(
        "consent",
        {"id": "c1", "by": "bench", "scope": "replay-capture", "grant": True, "changed": True, "withdrawn_windows": 0},
    )
    stream = SC.stream(n)
    texts = [scrub.scrub(r["text"]) for r in stream]
    x = features.extract_batch(texts)
    labels, _ = Model(SC.models["candidate"]).predict(x)
    bd = digest.file_digest(SC.models["candidate"])
    digests = digest.signal_digests(x, bd, 0)
    recs = [
        {
            "decision": i,
            "time": round(grant["time"] + 1 + i * 0.02, 6),
            "text": texts[i],
            "bundle": bd,
            "digest": digests[i],
            "label": int(labels[i]),
            "undo": SC.intents[int(labels[i])] != stream[i]["intent"],
        }
        for i in range(n)
    ]
    part = 500
    for k in range(0, n, part):
        replay.store_capture(
            home,
            {
                "schema": replay.SCHEMA_CAPTURE,
                "namespace": NS,
                "device": DEV,
                "capture_id": "cap",
                "part": k // part,
                "last": k + part >= n,
                "consent": {"index": grant["index"], "hash": grant["hash"]},
                "records": recs[k : k + part],
            },
        )
    return home


def bench(n: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="livelab-bench-retrain-") as tmp:
        home = captured_home(Path(tmp) / "home", n)
        totals, digests = [], set()
        for k in range(runs):
            t0 = time.perf_counter()
            res = retrain.build(home, Path(tmp) / f"r{k}.lbundle", version="1.3.0")
            totals.append(time.perf_counter() - t0)
            digests.add(res["digest"])
        texts = [r["text"] for r in retrain.captures(home)[0].records]
        label_s, train_s = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            labels = retrain.label(SC.oracle_model, texts)
            label_s.append(time.perf_counter() - t0)
            records = [{"text": t, "intent": SC.intents[i]} for t, i in zip(texts, labels)]
            t0 = time.perf_counter()
            retrain.train(SC, records, oracle_sha256="0" * 64, captures_sha256="0" * 64)
            train_s.append(time.perf_counter() - t0)
    return {
        "records": n,
        "total_s": round(median(totals), 3),
        "label_s": round(median(label_s), 4),
        "train_s": round(median(train_s), 3),
        "records_per_s": round(n / median(totals), 1),
        "runs_s": [round(t, 3) for t in totals],
        "identical_bundles": len(digests) == 1,
        "digest": sorted(digests)[0],
        "agreement_with_oracle": res["agreement"],
        "training_data_digest": hashlib.sha256(streams.to_jsonl(records)).hexdigest(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="500,2000,8000", help="comma-separated record counts")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [bench(n, args.runs) for n in sizes]
    table(
        "retraining job (labs.retrain.build), median of runs",
        ["records", "total s", "oracle label ms", "fit + ONNX s", "records/s", "same bytes"],
        [
            [r["records"], r["total_s"], r["label_s"] * 1000, r["train_s"], r["records_per_s"], r["identical_bundles"]]
            for r in results
        ],
    )
    save("retrain", {"runs": args.runs, "results": results})
    console.print(json.dumps({r["records"]: r["total_s"] for r in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
