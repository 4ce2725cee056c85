"""Benchmark of signed bundles on devices (issue: signed model bundles ... rollback).

1. Verify + atomic install + first decision on the new bundle, for a 1 MB bundle
   (target < 200 ms): measured through the device's own code path (Slots.install:
   signature + hashes + budget + version + profile checks, fsync'd write and rename,
   onnxruntime session from the bundle, then one decision), and end to end over MQTT
   on a live device (command published -> the device's 'install' audit record back).
2. Automatic rollback after a failed health verdict (target < 100 ms): the device
   times verdict -> rollback done itself and writes it in the rollback audit record;
   collected over several live failed installs.

Run: ``.venv/bin/python bench/bundles.py [--quick]``; writes bench/results/bundles.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from common import median, save, table

from lab_hardware.modelops import bundle as _bundle
from lab_hardware import features, profiles
from lab_hardware.modelops import keys
from lab_hardware.runtime import lab
from lab_hardware.modelops.slots import Slots
from labs import Lab, scenarios

SC = scenarios.load("voice-intents")


def padded_model(out: Path, target_bytes: int) -> Path:
    """The candidate model plus an initializer that brings the file to ~target_bytes."""
    m = onnx.load(str(SC.models["candidate"]))
    pad = target_bytes - m.ByteSize() - 200
    arr = np.random.default_rng(7).standard_normal(max(1, pad // 4)).astype(np.float32)
    m.graph.initializer.append(numpy_helper.from_array(arr, name="livelab_padding"))
    onnx.save(m, str(out))
    return out


def make_bundles(tmp: Path, home: Path, n: int, **compute) -> list[Path]:
    model = padded_model(tmp / "model-1mb.onnx", 1_000_000)
    out = []
    for i in range(n):
        p = tmp / f"b{i}.lbundle"
        _bundle.build(
            model,
            p,
            name="intents",
            version=f"1.{i}.0",
            compute={"health_decisions": 20, **compute},
            created="2026-11-25T12:00:00Z",
        )
        out.append(_bundle.sign(p, home / "keys" / "bench.key"))
    return out


def in_process(home: Path, bundles: list[Path]) -> list[float]:
    slots = Slots(home / "dev", SC.models, list(SC.intents), profiles.load("none"), home)
    slots.restore("candidate")
    x = features.extract_batch(["call my mother on the mobile"])
    times = []
    for b in bundles:
        data = b.read_bytes()
        t0 = time.perf_counter()
        slot = slots.install(data)
        slot.decide(x)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def live(home: Path, tmp: Path, runs: int) -> dict:
    lab.up(
        home,
        scenario=SC.materialize(home / "scenario"),
        devices=1,
        device_options={"window_seconds": 0.5, "rate_hz": 200},
    )
    try:
        good = make_bundles(tmp / "good", home, runs)
        slow = []
        for i in range(runs):
            p = tmp / f"slow{i}.lbundle"
            _bundle.build(
                SC.models["candidate"],
                p,
                name="slow",
                version=f"9.{i}.0",
                compute={"health_decisions": 20, "latency_budget_ms": 0.0001},
                created="2026-11-25T12:00:00Z",
            )
            slow.append(_bundle.sign(p, home / "keys" / "bench.key"))
        e2e, install_ms, rollback_ms = [], [], []
        with Lab.connect(home=home) as sdk:
            for g, s in zip(good, slow):
                t0 = time.perf_counter()
                rec = sdk.install("dev-0", g)
                e2e.append((time.perf_counter() - t0) * 1000)
                install_ms.append(rec["data"]["install_ms"])
                deadline = time.monotonic() + 10
                while sdk.states["dev-0"]["health"] is not None and time.monotonic() < deadline:
                    time.sleep(0.01)
                n0 = len(sdk.audit_chain("dev-0"))
                sdk.install("dev-0", s)
                while time.monotonic() < deadline + 10:
                    recs = sdk.audit_chain("dev-0").records[n0:]
                    rb = [r for r in recs if r["kind"] == "rollback"]
                    if rb:
                        rollback_ms.append(rb[-1]["data"]["rollback_ms"])
                        break
                    time.sleep(0.05)
        return {"install_over_mqtt_ms": e2e, "device_install_ms": install_ms, "rollback_ms": rollback_ms}
    finally:
        lab.down(home)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    runs = 3 if args.quick else 9
    tmp = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    home = tmp / "home"
    home.mkdir()
    keys.new_key(home, "bench")
    keys.trust(home, home / "keys" / "bench.pub")
    (tmp / "good").mkdir()
    bundles = make_bundles(tmp, home, runs)
    size = bundles[0].stat().st_size
    ip = in_process(home, bundles)
    live_home = tmp / "live"
    live_home.mkdir()
    keys.new_key(live_home, "bench")
    keys.trust(live_home, live_home / "keys" / "bench.pub")
    lv = live(live_home, tmp, runs)
    result = {
        "bundle_bytes": size,
        "verify_install_first_decision_ms": {
            "runs": ip,
            "median": median(ip),
            "target": 200.0,
            "ratio_to_target": median(ip) / 200.0,
        },
        "install_over_mqtt_ms": {"runs": lv["install_over_mqtt_ms"], "median": median(lv["install_over_mqtt_ms"])},
        "device_install_ms": {"runs": lv["device_install_ms"], "median": median(lv["device_install_ms"])},
        "rollback_after_failed_verdict_ms": {
            "runs": lv["rollback_ms"],
            "median": median(lv["rollback_ms"]),
            "max": max(lv["rollback_ms"]),
            "target": 100.0,
            "ratio_to_target": median(lv["rollback_ms"]) / 100.0,
        },
    }
    table(
        f"bundles ({size:,}-byte bundle, median of {runs})",
        ["measure", "median ms", "target ms"],
        [
            ["verify + atomic install + first decision (device code path)", median(ip), 200.0],
            ["install on a live device (device-side, from its audit record)", median(lv["device_install_ms"]), "-"],
            ["install over MQTT: publish -> install record received", median(lv["install_over_mqtt_ms"]), "-"],
            ["rollback after a failed health verdict (device-timed)", median(lv["rollback_ms"]), 100.0],
        ],
    )
    save("bundles", result)


if __name__ == "__main__":
    main()
