"""The retraining loop on a live lab: a divergence SLO with policy ``retrain`` fires, the device
records the suggestion, consented captures are labelled by the oracle, the retrained bundle
names that trigger, is signed through the existing path and installs on a device.

Real Mosquitto, the real oracle service, real device processes and onnxruntime.  The breach
does not depend on the machine's speed: it judges the candidate's known 'call' defect, which
the oracle does not share.  Every wait is on a condition, bounded.
"""

from __future__ import annotations

import pytest

from lab_hardware import audit, topics
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys, replay
from lab_hardware.runtime import lab
from labs import Lab, retrain, rollout, scenarios
from tests.conftest import start_lab
from tests.mqtt_helpers import Observer, wait_for

SC = scenarios.load("voice-intents")
CREATED = "2026-11-25T12:00:00Z"
DEV = "dev-1"
ROUTE_ALL = {"margin_threshold": 1.0, "timeout_ms": 200, "max_share": 1.0}
AGREE_CALL = {  # the candidate's 'call' answers disagree with the oracle far beyond 5%
    "name": "agree-call",
    "indicator": "divergence",
    "intent": "call",
    "objective": 0.95,
    "period_windows": 20,
    "policy": "retrain",
}


@pytest.fixture(scope="module")
def rlab(tmp_path_factory, mosquitto_available):
    home = tmp_path_factory.mktemp("rlab")
    start_lab(home, oracle=True, device_options={"window_seconds": 0.3})
    pids = lab.lab_pids(home)
    try:
        keys.new_key(home, "author")
        keys.trust(home, home / "keys" / "author.pub")
        out = tmp_path_factory.mktemp("rbundles") / "intents-1.2.0.lbundle"
        _bundle.build(
            SC.models["candidate"],
            out,
            name="intents",
            version="1.2.0",
            compute={"health_decisions": 20},
            created=CREATED,
            routing=ROUTE_ALL,
            slos=[AGREE_CALL],
        )
        with Lab.connect(home=home) as sdk:
            yield home, sdk, _bundle.sign(out, home / "keys" / "author.key")
    finally:
        lab.down(home)
        from lab_hardware.home import pid_alive

        assert not [p for p in pids if pid_alive(p)], "lab left processes behind"


def test_a_sustained_divergence_triggers_a_retraining_that_names_it(rlab, tmp_path):
    home, sdk, diverging = rlab
    digest = _bundle.read(diverging).digest
    watcher = Observer(home, topics.alert(sdk.namespace, DEV))
    try:
        sdk.install(DEV, diverging)
        event = wait_for(lambda: (watcher.of("events", DEV) or [None])[0], 90, "a retrain alert from dev-1")
    finally:
        watcher.close()
    # the alert event names both audit records; the bundle keeps running (no rollback)
    assert event["slo"] == "agree-call" and event["indicator"] == "divergence" and event["bundle"] == digest
    assert event["policy"] == "retrain" and event["action"] == "retrain"
    assert event["burn_rate"]["long"] > event["threshold"]
    chain = sdk.audit_chain(DEV)
    assert chain.verify()
    alert = chain.records[event["audit"]["index"]]
    sugg = chain.records[event["retrain"]["index"]]
    assert alert["kind"] == "slo-alert" and alert["hash"] == event["audit"]["hash"]
    assert sugg["kind"] == "retrain-suggested" and sugg["hash"] == event["retrain"]["hash"]
    d = sugg["data"]
    assert d["by"] == "slo" and d["bundle"] == digest and d["alert"] == event["audit"]
    assert d["slo"] == "agree-call" and d["intent"] == "call"
    assert d["long"]["diverged"] > 0.05 * d["long"]["answered"] > 0  # the figures behind the alert
    assert "livelab retrain build" in d["reason"]
    assert sdk.states[DEV]["bundle"] == digest and not [r for r in chain.records if r["kind"] == "rollback"]

    # consented, scrubbed captures of the diverging device
    sdk.grant_consent(DEV, "replay-capture")
    cid = sdk.capture(DEV, 400)
    wait_for(
        lambda: any(c["capture_id"] == cid and c["complete"] for c in replay.list_captures(home)),
        30,
        "dev-1's capture in the replay store",
    )
    # retrain, naming the trigger; the parent lends its routing and SLO to the canary
    out = tmp_path / "intents-1.3.0.lbundle"
    res = retrain.build(
        home, out, version="1.3.0", device=DEV, capture_ids=[cid], trigger=f"{DEV}#{sugg['index']}", parent=diverging
    )
    pv = _bundle.read(out).manifest["provenance"]
    t = pv["retraining"]["trigger"]
    assert (t["device"], t["index"], t["hash"], t["kind"]) == (DEV, sugg["index"], sugg["hash"], "retrain-suggested")
    assert pv["parent_bundle"] == digest and [c["capture_id"] for c in pv["retraining"]["captures"]] == [cid]
    grant = sdk.audit_chain(DEV).records[pv["retraining"]["captures"][0]["consent"]["index"]]
    assert grant["kind"] == "consent" and grant["data"]["scope"] == "replay-capture"
    assert res["records"] >= 400
    # a held-out replay of the same device: the retrained model diverges less than the candidate
    cid2 = sdk.capture(DEV, 300)
    wait_for(
        lambda: any(c["capture_id"] == cid2 and c["complete"] for c in replay.list_captures(home)),
        30,
        "a second capture",
    )
    held = replay.build(home, sdk.namespace, DEV, tmp_path / "held.lreplay", capture_ids=[cid2])
    cand, new = retrain.divergence(held, [SC.models["candidate"], out])["models"]
    assert new["diverged"] < cand["diverged"], (cand, new)
    # signed and canaried through the existing path: a rollout (labs/rollout.py) on one device,
    # healthy there, then forward to every device
    signed = _bundle.sign(out, home / "keys" / "author.key")
    new_digest = _bundle.read(signed).digest
    state = rollout.start(sdk, home, signed, ["dev-2"])
    assert state["digest"] == new_digest and [s["ok"] for s in state["steps"]] == [True]
    assert sdk.wait_health("dev-2", new_digest, timeout=60)["ok"]
    wait_for(
        lambda: sdk.states["dev-2"]["bundle"] == new_digest and sdk.states["dev-2"]["health"] is None,
        60,
        "dev-2 running the retrained bundle, healthy",
    )
    assert all(sdk.states[d]["bundle"] != new_digest for d in sdk.devices if d != "dev-2"), "a canary is one device"
    done = rollout.finish(sdk, home, forward=True)
    assert done["state"] == "forward" and all(s["ok"] for s in done["steps"]), done["steps"]
    wait_for(lambda: all(sdk.states[d]["bundle"] == new_digest for d in sdk.devices), 60, "the fleet on the new bundle")
    # the retrained bundle carries its parent's routing and SLO, and on the fleet it routes
    assert _bundle.read(signed).manifest["routing"] == ROUTE_ALL
    assert audit.verify(sdk.audit_chain(DEV).records)
