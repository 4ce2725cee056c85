"""Benchmark of the live lab (issue: the one-node live edge lab).

1. QoS 1 telemetry throughput, devices -> broker -> an independent subscriber,
   with loss counted by sequence number (target >= 10,000 msg/s, zero loss).
   Beside it, the reason for the lab's broker limits: a raw paho publisher
   through Mosquitto with its default limits vs the lab's limits.
2. Decision latency p50/p99 (feature extraction + onnxruntime + digest +
   aggregation) for the profiles ``none`` (target p99 < 5 ms) and ``rpi4``.
3. Time from ``livelab up`` (a cold CLI process) to the first telemetry window
   received by a subscriber (target < 2 s), consent granted right after up.

Run: ``.venv/bin/python bench/lab.py [--quick]``; writes bench/results/lab.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import console, median, save, table

from lab_hardware.runtime import broker as _broker
from lab_hardware.runtime import lab
from lab_hardware import mqtt, profiles
from labs import Lab, scenarios

SCENARIO = scenarios.load("voice-intents")


def _up(home: Path, **kw):
    sc = SCENARIO.materialize(home / "scenario")
    return lab.up(home, scenario=sc, **kw)


class Counter:
    """A lean QoS 1 subscriber: records (device, seq) without decoding whole payloads."""

    def __init__(self, host, port, username, password, topic):
        self.seen: dict[str, set[int]] = {}
        self.received = 0
        self.c = mqtt.client(username=username, password=password)
        self.c.on_message = self._on
        mqtt.connect(self.c, host, port)
        mqtt.subscribe_wait(self.c, topic)

    def _on(self, c, ud, m):
        self.received += 1
        p = m.payload
        i = p.index(b'"seq":') + 6
        seq = int(p[i : p.index(b",", i)])
        dev = m.topic.rsplit("/", 2)[-2]
        self.seen.setdefault(dev, set()).add(seq)

    def close(self):
        mqtt.stop(self.c)


def throughput_run(seconds: float, devices: int, per_window: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    _up(
        home,
        devices=devices,
        device_options={"window_seconds": 3600, "window_max_decisions": per_window, "rate_hz": 0, "batch_max": 64},
    )
    try:
        d = lab.descriptor(home)
        cred = lab.control_credentials(home)
        sub = Counter(
            "127.0.0.1", d["broker"]["port"], cred["username"], cred["password"], "livelab/default/devices/+/telemetry"
        )
        with Lab.connect(home=home) as sdk:
            for dev in sdk.devices:
                sdk.grant_consent(dev)
        time.sleep(0.5)
        r0, t0 = sub.received, time.perf_counter()
        time.sleep(seconds)
        r1, t1 = sub.received, time.perf_counter()
        with Lab.connect(home=home) as sdk:  # stop production, then drain
            for dev in sdk.devices:
                sdk.revoke_consent(dev, timeout=30)
            time.sleep(1.0)
            states = {dev: dict(sdk.states[dev]) for dev in sdk.devices}
        deadline = time.monotonic() + 30
        sent = {dev: st["sent_seq"] for dev, st in states.items()}
        while time.monotonic() < deadline and any(len(sub.seen.get(dev, ())) < s + 1 for dev, s in sent.items()):
            time.sleep(0.1)
        lost = sum(len(set(range(s + 1)) - sub.seen.get(dev, set())) for dev, s in sent.items())
        total_sent = sum(s + 1 for s in sent.values())
        dups = sub.received - sum(len(v) for v in sub.seen.values())
        sub.close()
        return {"msg_per_s": (r1 - r0) / (t1 - t0), "sent": total_sent, "lost": lost, "duplicates": dups}
    finally:
        lab.down(home)


def raw_paho_run(limits: bool, n: int) -> dict:
    """One paho publisher blasting n QoS 1 messages through Mosquitto to one subscriber."""
    d = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    port = _broker.free_port()
    conf = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        f"user {os.environ.get('USER') or 'root'}",
        "log_dest none",
    ]
    if limits:
        conf += [
            f"max_queued_messages {_broker.MAX_QUEUED_MESSAGES}",
            "max_queued_bytes 0",
            f"max_inflight_messages {_broker.MAX_INFLIGHT_MESSAGES}",
        ]
    (d / "m.conf").write_text("\n".join(conf) + "\n")
    proc = subprocess.Popen(
        [_broker.find_mosquitto(), "-c", str(d / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _broker.wait_listening("127.0.0.1", port, 5)
        got = set()
        done = threading.Event()
        sub = mqtt.client()
        sub.on_message = lambda c, u, m: (got.add(int(m.payload[:10])), len(got) == n and done.set())
        mqtt.connect(sub, "127.0.0.1", port)
        mqtt.subscribe_wait(sub, "bench/t")
        pub = mqtt.client()
        mqtt.connect(pub, "127.0.0.1", port)
        pad = b"x" * 800  # about a telemetry window's size
        t0 = time.perf_counter()
        infos = [pub.publish("bench/t", b"%010d" % i + pad, qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(60)
        t_pub = time.perf_counter() - t0
        done.wait(10)
        t_all = time.perf_counter() - t0
        mqtt.stop(pub)
        mqtt.stop(sub)
        return {
            "published": n,
            "received": len(got),
            "lost": n - len(got),
            "msg_per_s": len(got) / t_all,
            "publish_s": t_pub,
        }
    finally:
        proc.terminate()
        proc.wait()


def latency(profile_name: str, n: int) -> dict:
    """Per-decision wall time through the device's own decide + window path, one at a time."""
    from lab_hardware.runtime.device import Device

    home = Path(tempfile.mkdtemp(prefix="bench-lat-"))
    cfg = {
        "namespace": "default",
        "device": "dev-0",
        "index": 0,
        "state_dir": str(home / "d"),
        "broker": {"host": "127.0.0.1", "port": 1},
        "profile": profiles.load(profile_name).as_dict(),
        "scenario": SCENARIO.materialize(home / "sc"),
        "model": "candidate",
        "rate_hz": 1,
    }
    dev = Device(cfg)
    samples = []
    for _ in range(n + 50):
        t0 = time.perf_counter()
        batch = dev.decide(1)
        dev.window.add(batch)
        samples.append((time.perf_counter() - t0) * 1000)
    samples = sorted(samples[50:])
    dev.outbox.close()
    return {"n": n, "p50_ms": samples[int(0.50 * n)], "p99_ms": samples[int(0.99 * n) - 1], "max_ms": samples[-1]}


def up_to_first_window(runs: int) -> list[float]:
    out = []
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    for _ in range(runs):
        home = Path(tempfile.mkdtemp(prefix="bench-up-"))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "livelab", "--home", str(home), "up"], capture_output=True, text=True, env=env
        )
        if proc.returncode:
            raise SystemExit(proc.stderr)
        try:
            with Lab.connect(home=home) as sdk:
                sdk.grant_consent("dev-0")
                sdk.next_window("dev-0", timeout=10)
                out.append(time.perf_counter() - t0)
        finally:
            lab.down(home)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer and shorter runs (smoke test)")
    args = ap.parse_args()
    runs = 2 if args.quick else 5
    seconds = 2.0 if args.quick else 5.0

    console.rule("1. QoS 1 telemetry throughput, devices -> subscriber")
    tp = [throughput_run(seconds, devices=3, per_window=1) for _ in range(runs)]
    tp4 = [throughput_run(seconds, devices=3, per_window=4) for _ in range(max(2, runs // 2))]
    for k, rs in ((1, tp), (4, tp4)):
        for r in rs:
            console.print(
                f"  {k} decision(s)/window: {r['msg_per_s']:,.0f} msg/s  sent {r['sent']:,}  "
                f"lost {r['lost']}  dups {r['duplicates']}"
            )
    raw = {
        "default_limits": [raw_paho_run(False, 50_000) for _ in range(min(runs, 3))],
        "lab_limits": [raw_paho_run(True, 50_000) for _ in range(min(runs, 3))],
    }
    table(
        "raw paho QoS 1 publisher -> Mosquitto -> subscriber (50,000 messages)",
        ["broker limits", "median received", "median lost", "median msg/s"],
        [
            [k, median([r["received"] for r in v]), median([r["lost"] for r in v]), median([r["msg_per_s"] for r in v])]
            for k, v in raw.items()
        ],
    )

    console.rule("2. decision latency")
    lat = {
        p: [latency(p, 2000 if p == "none" else 500) for _ in range(3 if not args.quick else 1)]
        for p in ("none", "rpi4")
    }

    console.rule("3. livelab up -> first telemetry window")
    ttf = up_to_first_window(runs)

    tmed = median([r["msg_per_s"] for r in tp])
    result = {
        "throughput": {
            "runs": tp,
            "median_msg_per_s": tmed,
            "target_msg_per_s": 10_000,
            "ratio_to_target": tmed / 10_000,
            "total_lost": sum(r["lost"] for r in tp + tp4),
            "devices": 3,
            "decisions_per_window": 1,
            "seconds_per_run": seconds,
            "with_4_decisions_per_window": {"runs": tp4, "median_msg_per_s": median([r["msg_per_s"] for r in tp4])},
        },
        "raw_paho_broker_limits": raw,
        "decision_latency": {
            p: {
                "runs": v,
                "median_p50_ms": median([r["p50_ms"] for r in v]),
                "median_p99_ms": median([r["p99_ms"] for r in v]),
            }
            for p, v in lat.items()
        },
        "decision_latency_target_p99_ms_profile_none": 5.0,
        "up_to_first_window": {
            "runs_s": ttf,
            "median_s": median(ttf),
            "target_s": 2.0,
            "ratio_to_target": median(ttf) / 2.0,
            "window_seconds": SCENARIO.window_seconds,
        },
    }
    table(
        "live lab",
        ["measure", "median", "target", "ratio"],
        [
            ["telemetry msg/s, 3 devices, 1 decision/window", tmed, 10_000.0, tmed / 10_000],
            [
                "telemetry msg/s, 3 devices, 4 decisions/window",
                result["throughput"]["with_4_decisions_per_window"]["median_msg_per_s"],
                "-",
                "-",
            ],
            ["windows lost (all runs)", result["throughput"]["total_lost"], 0, "-"],
            [
                "decision p99 ms, profile none",
                result["decision_latency"]["none"]["median_p99_ms"],
                5.0,
                result["decision_latency"]["none"]["median_p99_ms"] / 5.0,
            ],
            ["decision p50 ms, profile none", result["decision_latency"]["none"]["median_p50_ms"], "-", "-"],
            ["decision p99 ms, profile rpi4", result["decision_latency"]["rpi4"]["median_p99_ms"], "-", "-"],
            ["decision p50 ms, profile rpi4", result["decision_latency"]["rpi4"]["median_p50_ms"], "-", "-"],
            ["up -> first window, s", median(ttf), 2.0, median(ttf) / 2.0],
        ],
    )
    save("lab", result)


if __name__ == "__main__":
    main()
