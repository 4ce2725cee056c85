"""Benchmark of a federated adapter round (issue 15, point 1): wall time and bytes on the wire.

A live 3-device lab on a hardware profile (``rpi4``: 6x slower compute, a 12 ms +- 6 ms, 8 Mbit/s
link; and ``none``, the baseline: host speed, a perfect link) runs the signed candidate bundle
with telemetry consent.  Each run is one ``labs.federated.run_round`` (one aggregation round,
noise multiplier 1, clipping norm 2, all 3 devices) timed end to end as ``livelab federated
round`` runs it: the join commands over MQTT, the Flower server process starting, each device's
Flower client (gRPC through the device's link relay) fitting its bias, the noisy aggregation, the
ledger and the candidate bundle.  ``client_s`` is a device's own time from joining to its
update's acknowledgement; ``server_s`` the server process's round.

Bytes on the wire are counted per device by its link relay: every byte of the gRPC connection
(HTTP/2 frames, headers, the protobuf messages) in each direction, as sent.  ``payload`` is
the adapter the round exchanges (the bias: 6 float64 values each way).

Figures are the median of ``--runs`` rounds per profile.  Run quietly:
``nice .venv/bin/python bench/federated.py [--runs K] [--profiles rpi4,none]``;
writes bench/results/federated.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import console, median, save, table

from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys
from lab_hardware.runtime import lab as _lab
from labs import Lab, recorder, scenarios

SC = scenarios.load("voice-intents")
CREATED = "2026-12-01T12:00:00Z"


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def bench(profile: str, runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="livelab-bench-federated-") as tmp:
        home = Path(tmp) / "home"
        sc = SC.materialize(home / "scenario")
        _lab.up(
            home,
            scenario=sc,
            profile=profile,
            device_options={"window_seconds": 0.5, "rate_hz": 200},
            services=[recorder.service()],
        )
        try:
            keys.new_key(home, "author")
            keys.trust(home, home / "keys" / "author.pub")
            cand = Path(tmp) / "intents-1.2.0.lbundle"
            _bundle.build(
                SC.models["candidate"],
                cand,
                name="intents",
                version="1.2.0",
                compute={"health_decisions": 20},
                created=CREATED,
            )
            _bundle.sign(cand, home / "keys" / "author.key")
            digest = _bundle.read(cand).digest
            rows = []
            with Lab.connect(home=home) as sdk:
                for d in sdk.devices:
                    sdk.install(d, cand, timeout=30)
                    sdk.grant_consent(d, "telemetry")
                _wait(
                    lambda: all(
                        sdk.states.get(d, {}).get("bundle") == digest and sdk.states[d].get("signals", 0) >= 600
                        for d in sdk.devices
                    ),
                    120,
                    "signals",
                )
                for k in range(runs):
                    res = sdk.federated_round(
                        cand, Path(tmp) / f"r{k}.lbundle", version=f"1.2.{k + 1}", epsilon_budget=1e9, timeout=300
                    )
                    devs = res["devices"].values()
                    rows.append(
                        {
                            "round_s": res["seconds"],
                            "server_s": res["server_seconds"],
                            "client_s": median([d["client_seconds"] for d in devs]),
                            "bytes_up": median([d["bytes_sent"] for d in devs]),
                            "bytes_down": median([d["bytes_received"] for d in devs]),
                            "participants": len(res["participants"]),
                            "adapter_bytes": res["adapter_size"],
                        }
                    )
                    console.print(f"{profile} run {k + 1}: {rows[-1]}")
        finally:
            _lab.down(home)
    return {
        "profile": profile,
        "runs": runs,
        "devices": 3,
        "round_s": median([r["round_s"] for r in rows]),
        "server_s": median([r["server_s"] for r in rows]),
        "client_s": median([r["client_s"] for r in rows]),
        "bytes_up_per_device": median([r["bytes_up"] for r in rows]),
        "bytes_down_per_device": median([r["bytes_down"] for r in rows]),
        "payload_bytes_each_way": 6 * 8,
        "adapter_bytes": rows[-1]["adapter_bytes"],
        "all": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profiles", default="rpi4,none")
    args = ap.parse_args()
    results = [bench(p, args.runs) for p in args.profiles.split(",")]
    by = {r["profile"]: r for r in results}
    if "rpi4" in by and "none" in by:
        for key in ("round_s", "client_s"):
            by["rpi4"][f"{key}_vs_none"] = round(by["rpi4"][key] / by["none"][key], 3)
    table(
        "a federated adapter round: 3 devices, 1 aggregation round (median)",
        ["profile", "round s", "device s", "server s", "bytes up/device", "bytes down/device"],
        [
            [
                r["profile"],
                r["round_s"],
                r["client_s"],
                r["server_s"],
                int(r["bytes_up_per_device"]),
                int(r["bytes_down_per_device"]),
            ]
            for r in results
        ],
    )
    save("federated", {"baseline": "profile none (host speed, perfect link)", "results": results})


if __name__ == "__main__":
    main()
