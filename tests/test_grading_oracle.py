"""The ``oracle`` check (module m5-hybrid-oracle) on real lab evidence.

A live lab with the oracle: a routing bundle with a ``retrain`` divergence objective is installed
on a canary, the objective burns its budget, consented captures are retrained into a bundle that
names the alert's ``retrain-suggested`` record, and the signed result is canaried.  The check
judges that from the audit chains on disk, the bundle files, the replay store and the grader's
own observer (``grading.isolation.Observer``).  Doing nothing, routing without an objective,
a forged retraining provenance and a retrained bundle sent to every device are judged too, each
failure with a message that says what to do.  Real Mosquitto, oracle, devices and onnxruntime.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from grading.checks import run as run_check
from grading.checks.base import CheckContext, judge, load_checks
from grading.isolation import Observer
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys, replay
from lab_hardware.runtime import lab
from labs import Lab, scenarios
from tests.conftest import start_lab
from tests.mqtt_helpers import wait_for

SC = scenarios.load("voice-intents")
ROUTING = {"margin_threshold": 0.3, "timeout_ms": 200, "max_share": 0.5}
AGREE = {
    "name": "agree-call",
    "indicator": "divergence",
    "intent": "call",
    "objective": 0.95,
    "period_windows": 120,
    "policy": "retrain",
}
CANARY = "dev-1"


@pytest.fixture(scope="module")
def olab(tmp_path_factory, mosquitto_available):
    home = tmp_path_factory.mktemp("olab")
    start_lab(home, oracle=True, device_options={"window_seconds": 0.3})
    work = tmp_path_factory.mktemp("owork")
    keys.new_key(work, "author")
    keys.trust(home, work / "keys" / "author.pub")
    try:
        with Lab.connect(home=home) as sdk:
            yield home, sdk, work
    finally:
        lab.down(home)


def _signed(work: Path, version: str, **kw) -> Path:
    out = work / f"intents-{version}.lbundle"
    _bundle.build(SC.models["candidate"], out, name="intents", version=version, compute={"health_decisions": 20}, **kw)
    return _bundle.sign(out, work / "keys" / "author.key")


def _judge(home: Path, sdk: Lab, work: Path, since: float, messages=None) -> dict:
    (spec,) = load_checks(["oracle"])
    ctx = CheckContext(
        home=home,
        namespace=sdk.namespace,
        devices=sdk.devices,
        learner=sdk.conn.learner_name or "",
        module="m5-hybrid-oracle",
        started=since,
        ended=time.time(),
        messages=messages,
        artifacts=work,
    )
    return judge(spec, ctx)


def _items(row: dict) -> dict[str, dict]:
    return {i["name"]: i for i in row["items"]}


def test_the_hybrid_loop_passes_and_each_step_is_judged_from_the_lab(olab, tmp_path):
    home, sdk, work = olab
    since = time.time()
    # nothing done yet: no points, and the message says what to do
    nothing = run_check("oracle", home=home, module="m5-hybrid-oracle", learner="someone-else", since=since)
    assert nothing["score"] == 0 and not nothing["passed"]
    assert "routing" in nothing["message"] and "lab.install" in nothing["message"]

    watcher = Observer(home, sdk.namespace, store_captures=False)  # the grader's own observer
    try:
        # routing without an objective: routed, but no SLO and no alert to judge
        plain = _signed(work, "3.0.0", routing=ROUTING)
        sdk.grant_consent(CANARY, "telemetry")
        sdk.install(CANARY, plain)
        wait_for(lambda: sum(w["oracle"]["answered"] for w in sdk.windows(CANARY) if "oracle" in w) > 0, 30, "answers")
        # the SDK's view: running routing totals per device (None without a routing bundle)
        routing = sdk.routing()
        assert routing["dev-0"] is None and wait_for(
            lambda: (sdk.routing(CANARY)[CANARY] or {}).get("answered"), 10, "totals"
        )
        with pytest.raises(ValueError, match="unknown device"):
            sdk.routing("dev-9")
        from labs.retrain import RetrainError

        for bad in ({"device": CANARY}, {"retrain": {"index": "3"}, "device": CANARY}, "dev-1#x"):
            with pytest.raises(RetrainError) as exc:
                sdk.retrain(work / "never.lbundle", version="9.0.0", device=CANARY, trigger=bad)
            assert "\n" not in str(exc.value) and "trigger" in str(exc.value)
        assert not (work / "never.lbundle").exists()
        row = _judge(home, sdk, work, since, watcher.snapshot())
        it = _items(row)
        assert it["routing-declared"]["ok"] and it["routed"]["ok"], row
        assert not it["slo-declared"]["ok"] and "divergence objective" in it["slo-declared"]["message"]
        assert not it["burn-alert"]["ok"] and "lab.wait_alert" in it["burn-alert"]["message"]
        assert not it["retrained"]["ok"] and not it["canary"]["ok"]

        # the whole loop
        routed = _signed(work, "3.1.0", routing=ROUTING, slos=[AGREE])
        sdk.install(CANARY, routed)
        alert = sdk.wait_alert(CANARY, slo="agree-call", timeout=60)
        sdk.grant_consent(CANARY, "replay-capture")
        cid = sdk.capture(CANARY, 400)
        sdk.revoke_consent(CANARY, "replay-capture")
        wait_for(
            lambda: any(c["capture_id"] == cid and c["complete"] for c in replay.list_captures(home)), 30, "capture"
        )
        new = work / "intents-retrained-3.2.0.lbundle"
        sdk.retrain(new, version="3.2.0", device=CANARY, capture_ids=[cid], trigger=alert, parent=routed)
        _bundle.sign(new, work / "keys" / "author.key")
        sdk.install(CANARY, new)
        assert sdk.wait_health(CANARY, new, timeout=60)["ok"]
        sdk.revoke_consent(CANARY, "telemetry")
        time.sleep(0.5)
        messages = watcher.snapshot()
    finally:
        watcher.close()

    row = _judge(home, sdk, work, since, messages)
    assert row["passed"] and row["score"] == row["points"] == 5, row["message"]
    it = _items(row)
    assert it["routed"]["detail"]["answered"] > 0 and it["routed"]["detail"]["routed"] > 0
    # the release gate's way (no observer): the same verdict from the chains and files
    gate = run_check(
        "oracle", home=home, module="m5-hybrid-oracle", learner=sdk.conn.learner_name or "", since=since, artifacts=work
    )
    assert gate["passed"], gate["message"]

    # a forged retraining: a capture whose records are not the stored ones, no trigger
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    m = copy.deepcopy(_bundle.read(new).manifest["provenance"])
    m["retraining"]["captures"][0]["records_sha256"] = "0" * 64
    m["retraining"]["trigger"] = None
    _bundle.build(
        SC.models["candidate"], forged_dir / "intents-9.0.0.lbundle", name="intents", version="9.0.0", provenance=m
    )
    # judged on its own (the devices' copies hold the real retraining)
    from grading.checks.oracle import _retraining_problems

    suggestions = {(CANARY, alert["retrain"]["index"]): sdk.audit_chain(CANARY).records[alert["retrain"]["index"]]}
    problems = _retraining_problems(row_ctx(home, sdk, since), m["retraining"], suggestions)
    assert any("not the ones the lab stored" in p for p in problems), problems
    assert any("trigger" in p for p in problems), problems
    assert not _retraining_problems(
        row_ctx(home, sdk, since), _bundle.read(new).manifest["provenance"]["retraining"], suggestions
    )

    # the retrained bundle sent to every device: not a canary any more
    for dev in sdk.devices:
        if dev != CANARY:
            sdk.install(dev, new)
    row = _judge(home, sdk, work, since, messages)
    assert not _items(row)["canary"]["ok"] and "every device at once" in _items(row)["canary"]["message"]


def row_ctx(home: Path, sdk: Lab, since: float) -> CheckContext:
    return CheckContext(
        home=home,
        namespace=sdk.namespace,
        devices=sdk.devices,
        learner="",
        module="m5-hybrid-oracle",
        started=since,
        ended=time.time(),
    )
