"""What the metadata trail costs the artifacts it decorates.

Every artifact-making path emits one OpenLineage run event (lab_hardware/modelops/lineage.py).
This measures, against the artifact operation it decorates (``bundle.sign`` of a real bundle,
the baseline):

* building one event (openlineage-python ``event_v2`` objects, with the privacy facet);
* emitting it through a ``Trail`` kept open (what the lab's observer and a grading batch do):
  the file transport alone, and file + the lab's metadata topic (MQTT, QoS 1, acknowledged);
* ``emit_artifact`` with a fresh trail (what one ``livelab bundle sign`` command pays: open the
  transports, connect to the broker, emit, close);
* the one-off import of openlineage-python in a fresh interpreter (paid once per command);
* the lab observer's work per telemetry window (decode, fields, audit), which it does for every
  window the devices publish: at the lab's 10,000 windows/s that many microseconds are that
  many percent of a core.

Median of several runs, in microseconds per event; writes bench/results/lineage.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import median, save, table  # noqa: E402
from lab_hardware.modelops import bundle, keys, lineage  # noqa: E402
from labs import scenarios  # noqa: E402

CREATED = "2026-11-25T12:00:00Z"


def _per_event_us(fn, n: int, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200, help="events per run (default 200)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each measure (default 5)")
    ap.add_argument("--no-lab", action="store_true", help="skip the measures that need a running lab (MQTT)")
    args = ap.parse_args()
    if args.events < 1 or args.runs < 1:
        ap.error("--events and --runs must be at least 1")
    sc = scenarios.load("voice-intents")
    results: dict = {"events_per_run": args.events, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp:
        home = Path(tmp) / "lab"
        home.mkdir()
        keys.new_key(home, "author")
        src = bundle.build(
            sc.models["candidate"], Path(tmp) / "b.lbundle", name="intents", version="1.0.0", created=CREATED
        )
        info = bundle.inspect(src)
        priv = lineage.bundle_privacy(info)
        art = lineage.Artifact("bundle.sign", f"{info['digest']}:0000000000000000")
        key = home / "keys" / "author.key"

        def sign() -> None:
            bundle.sign(src, key, Path(tmp) / "signed.lbundle")

        sign()  # warm (onnxruntime is not involved: signing reads, checks and writes the tar)
        results["bundle_sign_us"] = _per_event_us(sign, max(1, args.events // 10), args.runs)

        def build() -> None:
            lineage.build_event(art, privacy=priv, details={"name": "intents"})

        build()
        results["build_event_us"] = _per_event_us(build, args.events, args.runs)

        with lineage.Trail(home) as trail:  # no lab here: the file transport alone
            assert [n for n, _ in trail.transports] == ["file"]
            results["emit_file_us"] = _per_event_us(
                lambda: trail.emit(lineage.build_event(art, privacy=priv)), args.events, args.runs
            )
        results["emit_artifact_fresh_file_us"] = _per_event_us(
            lambda: lineage.emit_artifact(home, "bundle.sign", art.name, privacy=priv),
            max(1, args.events // 4),
            args.runs,
        )

        if not args.no_lab:
            from lab_hardware.runtime import lab
            from tests.conftest import start_lab

            lhome = Path(tmp) / "live"
            start_lab(lhome, services=[])
            try:
                with lineage.Trail(lhome) as trail:
                    assert sorted(n for n, _ in trail.transports) == ["file", "mqtt"]
                    results["emit_file_mqtt_us"] = _per_event_us(
                        lambda: trail.emit(lineage.build_event(art, privacy=priv)), args.events, args.runs
                    )
                results["emit_artifact_fresh_file_mqtt_us"] = _per_event_us(
                    lambda: lineage.emit_artifact(lhome, "bundle.sign", art.name, privacy=priv),
                    max(1, args.events // 10),
                    args.runs,
                )
            finally:
                lab.down(lhome)

    # the observer's work per window (no broker: its message handler on a real-shaped window)
    from lab_hardware import topics
    from lab_hardware.runtime.observer import Observer

    intents = list(sc.intents)
    window = {
        "schema": topics.SCHEMA_TELEMETRY, "namespace": "default", "device": "dev-0", "seq": 1,
        "model": "candidate", "bundle": "b" * 64, "profile": "none", "start": 1.0, "end": 1.5,
        "decisions": 40, "first_decision": 0, "last_decision": 39,
        "counts": {i: 7 for i in intents}, "confidence": {i: [1] * 10 for i in intents},
        "fp_proxy": {"undo": {i: 0 for i in intents}, "low_margin": {i: 1 for i in intents}},
        "latency_ms": {"p50": 0.07, "p99": 0.14, "max": 0.2}, "digest": "0123456789abcdef",
    }  # fmt: skip
    payload = topics.encode(window)
    with tempfile.TemporaryDirectory(prefix="bench-observer-") as otmp:
        obs = Observer(Path(otmp), client=None)
        topic = topics.telemetry("default", "dev-0")
        results["observer_window_us"] = _per_event_us(lambda: obs.handle(topic, payload), args.events * 10, args.runs)
        results["observer_window_bytes"] = len(payload)
        results["observer_core_share_at_10k_per_s"] = results["observer_window_us"] * 10_000 / 1e6

    imports = []
    for _ in range(args.runs):
        code = (
            "import time; t = time.perf_counter(); "
            "from openlineage.client.event_v2 import RunEvent; "
            "from openlineage.client.transport.file import FileTransport; "
            "print(time.perf_counter() - t)"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        imports.append(float(res.stdout.strip()) * 1e6)
    results["import_openlineage_us"] = median(imports)

    sign_us = results["bundle_sign_us"]
    rows = [["bundle sign (the artifact operation, baseline)", sign_us, 1.0]]
    for key_, label in (
        ("build_event_us", "build one event"),
        ("emit_file_us", "emit, open trail: file"),
        ("emit_file_mqtt_us", "emit, open trail: file + metadata topic"),
        ("emit_artifact_fresh_file_us", "emit_artifact, fresh trail: file"),
        ("emit_artifact_fresh_file_mqtt_us", "emit_artifact, fresh trail: file + topic (a command)"),
        ("import_openlineage_us", "import openlineage-python (once per process)"),
        ("observer_window_us", "observer: one telemetry window (decode + audit)"),
    ):
        if key_ in results:
            results[key_.replace("_us", "_ratio_to_sign")] = results[key_] / sign_us
            rows.append([label, results[key_], results[key_] / sign_us])
    table("metadata trail: cost per event (median)", ["measure", "µs", "× bundle sign"], rows)
    save("lineage", results)


if __name__ == "__main__":
    main()
