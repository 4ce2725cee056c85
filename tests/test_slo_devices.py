"""Micro-SLOs on live devices: a breach runs its policy (alert, or rollback).

Real Mosquitto, real device processes, real onnxruntime.  The breaches do not depend on how
fast the machine is: the latency objective's threshold (0.0001 ms of device CPU time) is
below what any batch costs, and the undo objective judges the candidate model's known
defect (false positives on 'call', undone by users).  Every wait is on a condition, bounded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab_hardware import audit, topics
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys
from lab_hardware.runtime import lab
from labs import Lab, scenarios
from tests.conftest import start_lab
from tests.mqtt_helpers import Observer, wait_for

SC = scenarios.load("voice-intents")
CREATED = "2026-11-25T12:00:00Z"

SLOW = {  # every decision is over 0.0001 ms: burns 100x from the first window
    "name": "p99-latency",
    "indicator": "latency",
    "threshold_ms": 0.0001,
    "objective": 0.99,
    "period_windows": 20,
}
CALL_UNDOS = {  # the candidate's false 'call' decisions are undone: far over 0.1%
    "name": "call-undos",
    "indicator": "undo_rate",
    "intent": "call",
    "objective": 0.999,
    "period_windows": 20,
    "policy": "alert",
}


def _make(tmp: Path, home: Path, version: str, slos: list | None) -> Path:
    out = tmp / f"intents-{version}.lbundle"
    _bundle.build(
        SC.models["candidate"],
        out,
        name="intents",
        version=version,
        compute={"health_decisions": 20},
        created=CREATED,
        slos=slos,
    )
    return _bundle.sign(out, home / "keys" / "author.key")


@pytest.fixture(scope="module")
def slab(tmp_path_factory, mosquitto_available):
    home = tmp_path_factory.mktemp("slab")
    start_lab(home, device_options={"window_seconds": 0.3})
    keys.new_key(home, "author")
    keys.trust(home, home / "keys" / "author.pub")
    tmp = tmp_path_factory.mktemp("bundles")
    b = {
        "plain": _make(tmp, home, "1.0.0", None),
        "alerting": _make(tmp, home, "1.1.0", [CALL_UNDOS]),
        "rollback": _make(tmp, home, "1.2.0", [{**SLOW, "policy": "rollback"}]),
    }
    try:
        with Lab.connect(home=home) as sdk:
            yield home, sdk, b
    finally:
        lab.down(home)


def _records(sdk: Lab, dev: str, kind: str) -> list[dict]:
    return [r for r in sdk.audit_chain(dev).records if r["kind"] == kind]


def test_an_alert_slo_breach_publishes_an_alert_event_and_an_audit_record(slab):
    home, sdk, b = slab
    dev = "dev-0"
    digest = _bundle.read(b["alerting"]).digest
    watcher = Observer(home, topics.alert(sdk.namespace, dev))  # independent of the SDK
    try:
        sdk.install(dev, b["alerting"])
        wait_for(lambda: watcher.of("events", dev), 60, "an alert event from dev-0")
        event = watcher.of("events", dev)[0]
    finally:
        watcher.close()
    assert event["schema"] == topics.SCHEMA_ALERT and event["kind"] == "slo"
    assert event["slo"] == "call-undos" and event["indicator"] == "undo_rate"
    assert event["bundle"] == digest and event["policy"] == "alert" and event["action"] == "alert"
    assert event["severity"] in ("page", "ticket")
    assert event["burn_rate"]["long"] > event["threshold"] and event["burn_rate"]["short"] > event["threshold"]
    assert event["budget_remaining"] < 1.0
    # the audit record it names is in the device's chain, and the chain verifies
    chain = sdk.audit_chain(dev)
    assert chain.verify()
    rec = chain.records[event["audit"]["index"]]
    assert rec["kind"] == "slo-alert" and rec["hash"] == event["audit"]["hash"]
    assert rec["data"]["by"] == "slo" and rec["data"]["slo"] == "call-undos" and rec["data"]["bundle"] == digest
    # policy 'alert' leaves the bundle running
    assert sdk.states[dev]["bundle"] == digest and not _records(sdk, dev, "rollback")
    # the budget and burn rates are in the state, the SDK and 'livelab status --json'
    assert sdk.wait_alert(dev, slo="call-undos", timeout=10)["audit"] == event["audit"]
    mine = wait_for(lambda: sdk.slos(dev)[dev], 10, "dev-0's SLO state")
    assert mine["bundle"] == digest
    (obj,) = mine["objectives"]
    assert obj["name"] == "call-undos" and obj["bad"] > 0 and obj["budget_remaining"] < 1.0
    assert set(obj["burn"]) == {"page", "ticket"} and obj["burn"]["page"]["windows"] == [2, 1]
    st = next(d for d in lab.status(home)["devices"] if d["name"] == dev)
    assert st["slo"]["bundle"] == digest and st["slo"]["objectives"][0]["name"] == "call-undos"
    # a device running a model without SLOs reports none
    assert next(d for d in lab.status(home)["devices"] if d["name"] == "dev-2")["slo"] is None
    r = subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), "status"], capture_output=True, text=True, timeout=60
    )
    assert "dev-0 SLO call-undos (undo_rate, alert): budget" in r.stdout, r.stdout + r.stderr
    assert "dev-2 SLO" not in r.stdout
    # the manager's static report shows the same budget and burn rates (docs/slo.md)
    from reports import static

    rows = static.device_slos(home)
    assert [(x["device"], x["slo"]) for x in rows] == [("dev-0", "call-undos")]
    assert rows[0]["bundle"] == digest[:12] and rows[0]["budget"] != "–" and rows[0]["page"].endswith("x")


def test_a_rollback_slo_breach_restores_the_previous_bundle(slab):
    home, sdk, b = slab
    dev = "dev-1"
    plain, bad = _bundle.read(b["plain"]).digest, _bundle.read(b["rollback"]).digest
    sdk.install(dev, b["plain"])
    wait_for(
        lambda: sdk.states[dev]["bundle"] == plain and sdk.states[dev]["health"] is None, 60, "plain bundle healthy"
    )
    watcher = Observer(home, topics.alert(sdk.namespace, dev))
    try:
        sdk.install(dev, b["rollback"])
        wait_for(lambda: watcher.of("events", dev), 60, "an alert event from dev-1")
        event = watcher.of("events", dev)[0]
    finally:
        watcher.close()
    assert event["slo"] == "p99-latency" and event["bundle"] == bad
    assert event["policy"] == "rollback" and event["action"] == "rollback" and event["severity"] == "page"
    assert event["burn_rate"] == {"long": 100.0, "short": 100.0}  # every decision over the threshold
    wait_for(lambda: sdk.states[dev]["bundle"] == plain, 30, "dev-1 back on the plain bundle")
    chain = sdk.audit_chain(dev)
    assert chain.verify()
    rb = [r for r in chain.records if r["kind"] == "rollback"][-1]
    assert rb["data"]["by"] == "slo" and rb["data"]["slo"] == "p99-latency"
    assert rb["data"]["from"]["digest"] == bad and rb["data"]["to"]["digest"] == plain
    alert = chain.records[event["audit"]["index"]]
    assert alert["kind"] == "slo-alert" and alert["index"] < rb["index"]
    # back on a bundle without SLOs: nothing reported, nothing left of the bad bundle's budget
    wait_for(lambda: sdk.states[dev].get("slo") is None, 10, "dev-1 reporting no SLOs")
    assert audit.verify(chain.records)
