"""Bundles on live devices: install, health check, automatic rollback, revocation, shadow, capture."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab_hardware.modelops import adapter as _adapter
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys
from lab_hardware.runtime import lab
from labs import CommandRefused, Lab
from labs import scenarios
from tests.conftest import start_lab

SC = scenarios.load("voice-intents")
CREATED = "2026-11-25T12:00:00Z"


def _make(
    tmp: Path, home: Path, name: str, version: str, *, model="candidate", call_bias=None, compute=None, key="author"
) -> Path:
    adapter = None
    if call_bias is not None:
        adapter = tmp / f"{name}-{version}.adapter.json"
        adapter.write_bytes(_adapter.make(list(SC.intents), {"call": call_bias}))
    out = tmp / f"{name}-{version}.lbundle"
    _bundle.build(
        SC.models[model],
        out,
        name=name,
        version=version,
        adapter=adapter,
        compute={"health_decisions": 20, **(compute or {})},
        created=CREATED,
    )
    return _bundle.sign(out, home / "keys" / f"{key}.key")


@pytest.fixture(scope="module")
def blab(tmp_path_factory, mosquitto_available):
    home = tmp_path_factory.mktemp("blab")
    start_lab(home, device_options={"window_seconds": 0.3})
    keys.new_key(home, "author")
    keys.trust(home, home / "keys" / "author.pub")
    keys.new_key(home, "stranger")  # not trusted
    tmp = tmp_path_factory.mktemp("bundles")
    b = {
        "fixed": _make(tmp, home, "intents", "1.1.0", call_bias=-3.0),
        "fixed2": _make(tmp, home, "intents", "1.2.0", call_bias=-2.5),
        "old": _make(tmp, home, "intents", "1.0.0", call_bias=-1.0),
        "slow": _make(tmp, home, "intents", "1.1.5", call_bias=-3.0, compute={"latency_budget_ms": 0.0001}),
        "stranger": _make(tmp, home, "intents", "3.0.0", key="stranger"),
        "bigmem": _make(tmp, home, "intents", "4.0.0", compute={"min_memory_mb": 4096}),
    }
    with Lab.connect(home=home) as sdk:
        yield home, sdk, b
    lab.down(home)


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _chain_kinds(sdk, dev):
    return [r["kind"] for r in sdk.audit_chain(dev).records]


def test_install_health_ok_and_telemetry_names_bundle(blab):
    home, sdk, b = blab
    digest = _bundle.read(b["fixed"]).digest
    rec = sdk.install("dev-1", b["fixed"])
    assert rec["kind"] == "install" and rec["data"]["bundle"] == digest
    assert _wait(lambda: sdk.states["dev-1"]["bundle"] == digest and sdk.states["dev-1"]["health"] is None)
    chain = sdk.audit_chain("dev-1")
    health = [r for r in chain.records if r["kind"] == "health"]
    assert health and health[-1]["data"]["ok"] and health[-1]["data"]["bundle"] == digest
    sdk.grant_consent("dev-1")
    w = next(w for w in sdk.telemetry("dev-1", timeout=5) if w["bundle"] == digest)
    assert w["model"] == "intents"
    sdk.revoke_consent("dev-1")
    st = lab.status(home)["devices"][1]
    assert st["bundle"] == digest  # livelab status shows the installed bundle


def test_failed_health_check_rolls_back_automatically(blab):
    home, sdk, b = blab
    sdk.install("dev-2", b["fixed"])
    good = _bundle.read(b["fixed"]).digest
    assert _wait(lambda: sdk.states["dev-2"]["health"] is None and sdk.states["dev-2"]["bundle"] == good)
    slow = _bundle.read(b["slow"]).digest
    sdk.install("dev-2", b["slow"])
    assert _wait(lambda: sdk.states["dev-2"]["bundle"] == good and "rollback" in _chain_kinds(sdk, "dev-2"))
    recs = sdk.audit_chain("dev-2").records
    verdict = [r for r in recs if r["kind"] == "health"][-1]["data"]
    assert verdict["bundle"] == slow and not verdict["ok"] and "latency" in verdict["reason"]
    rb = [r for r in recs if r["kind"] == "rollback"][-1]["data"]
    assert rb["from"]["digest"] == slow and rb["to"]["digest"] == good and rb["by"] == "health-check"
    assert sdk.audit_chain("dev-2").verify()


@pytest.mark.parametrize(
    "case, reason",
    [
        ("stranger", "unknown key"),
        ("tampered", "signature"),
        ("flipped-model", "model.onnx"),
        ("truncated", "truncated"),
        ("garbage", "not"),
    ],
)
def test_bad_bundles_refused_device_keeps_serving(blab, tmp_path, case, reason):
    home, sdk, b = blab
    before = sdk.states["dev-0"]["bundle"]
    data = b["fixed2"].read_bytes() if case != "stranger" else b["stranger"].read_bytes()
    if case == "tampered":  # the manifest changed after signing: the signature must fail
        data = data.replace(b'"1.2.0"', b'"9.2.0"')
    elif case == "flipped-model":
        i = data.index(_bundle.read(data).model[100:140]) + 10
        data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
    elif case == "truncated":
        data = data[: len(data) // 2]
    elif case == "garbage":
        data = b"this is not a bundle" * 10
    with pytest.raises(CommandRefused, match=reason):
        sdk.install("dev-0", data)
    assert sdk.states["dev-0"]["bundle"] == before
    assert sdk.command("dev-0", "ping")["kind"] == "command"


def test_downgrade_refused_unless_explicit_rollback(blab):
    home, sdk, b = blab
    sdk.install("dev-0", b["old"])
    sdk.install("dev-0", b["fixed2"])
    with pytest.raises(CommandRefused, match="downgrade"):
        sdk.install("dev-0", b["old"])
    rec = sdk.install("dev-0", b["old"], rollback=True)  # it ran 1.0.0 before
    assert rec["data"]["version"] == "1.0.0" and rec["data"]["rollback"] is True
    with pytest.raises(CommandRefused, match="not newer"):
        sdk.install("dev-0", b["old"])  # the same version again is no upgrade
    # 1.1.0 is newer than the active 1.0.0 but older than 1.2.0, which this device ran: version
    # protection is monotonic and survives the rollback
    with pytest.raises(CommandRefused, match="highest version this device ran"):
        sdk.install("dev-0", b["fixed"])


def test_revocation_reverts_every_device_at_once(blab):
    home, sdk, b = blab
    fixed2 = _bundle.read(b["fixed2"]).digest
    for d in ("dev-0", "dev-1", "dev-2"):
        sdk.install(d, b["fixed2"])
    assert _wait(lambda: all(sdk.states[d]["bundle"] == fixed2 for d in sdk.devices))
    sdk.revoke(fixed2, reason="test")
    assert _wait(lambda: all(sdk.states[d]["bundle"] != fixed2 for d in sdk.devices), 5)
    for d in sdk.devices:
        assert fixed2 in sdk.states[d]["revoked"]
        rec = [r for r in sdk.audit_chain(d).records if r["kind"] == "revocation"][-1]["data"]
        assert rec["active_revoked"] is True and fixed2 in rec["revoked"]
    with pytest.raises(CommandRefused, match="revoked"):
        sdk.install("dev-1", b["fixed2"])


def test_shadow_mode_reports_divergence(blab):
    home, sdk, b = blab
    sdk.set_model("dev-1", "candidate")
    sdk.shadow("dev-1", b["fixed"])
    sdk.grant_consent("dev-1")
    shadowed = [w for w in sdk.telemetry("dev-1", timeout=3, limit=12) if "shadow" in w]
    sdk.revoke_consent("dev-1")
    sdk.shadow("dev-1", None)
    assert shadowed, "no window carried a shadow report"
    decisions = sum(w["shadow"]["decisions"] for w in shadowed)
    diverged = sum(w["shadow"]["diverged"] for w in shadowed)
    assert decisions > 0 and 0 < diverged < decisions
    # the candidate's extra 'call' decisions are what the fixed bundle disagrees with
    by = {}
    for w in shadowed:
        for k, v in w["shadow"]["active_by_intent"].items():
            by[k] = by.get(k, 0) + v
    assert max(by, key=by.get) == "call"
    assert sdk.states["dev-1"]["model"] == "candidate"  # shadow decisions were not acted on


def test_incompatible_profile_refused(tmp_path, mosquitto_available):
    home = tmp_path / "pi"
    start_lab(home, profile="rpi4", devices=1)
    try:
        keys.new_key(home, "author")
        keys.trust(home, home / "keys" / "author.pub")
        big = _make(tmp_path, home, "intents", "4.0.0", compute={"min_memory_mb": 4096})
        with Lab.connect(home=home) as sdk:
            with pytest.raises(CommandRefused, match="4096"):
                sdk.install("dev-0", big)
    finally:
        lab.down(home)


def test_capture_needs_consent_and_lands_scrubbed(blab):
    home, sdk, b = blab
    sdk.revoke_consent("dev-0", "replay-capture")
    with pytest.raises(CommandRefused, match="replay-capture consent"):
        sdk.capture("dev-0", 50)
    sdk.grant_consent("dev-0", "replay-capture")
    cid = sdk.capture("dev-0", 120)
    from lab_hardware.modelops import replay

    assert _wait(
        lambda: any(c.get("capture_id") == cid and c.get("records", 0) >= 120 for c in replay.list_captures(home)), 10
    )
    import re

    text = "\n".join(p.read_text() for p in (home / "replays").rglob("*.jsonl"))
    assert not re.search(r"[\w.+-]+@[\w-]+\.\w+", text)
    assert "<" in text  # placeholders where PII was


def test_rollout_cli_canary_back_and_shadow_forward(blab):
    import json
    import subprocess
    import sys

    home, sdk, b = blab
    # fixed2 was revoked above; use a fresh version for this rollout
    tmp = b["fixed2"].parent
    rb = _make(tmp, home, "intents", "5.0.0", call_bias=-3.0)
    rdig = _bundle.read(rb).digest

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "livelab", "--home", str(home), "rollout", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    p = cli("start", str(rb), "--canary", "dev-1", "--json")
    assert p.returncode == 0, p.stderr
    assert _wait(lambda: sdk.states["dev-1"]["bundle"] == rdig)
    assert sdk.states["dev-0"]["bundle"] != rdig  # only the canary
    p = cli("start", str(rb), "--canary", "dev-2")
    assert p.returncode == 2 and "still open" in p.stderr
    p = cli("finish", "--back")
    assert p.returncode == 0, p.stderr
    assert _wait(lambda: sdk.states["dev-1"]["bundle"] != rdig)
    p = cli("start", str(rb), "--canary", "dev-2", "--shadow")
    assert p.returncode == 0, p.stderr
    assert _wait(lambda: (sdk.states["dev-2"].get("shadow") or {}).get("digest") == rdig)
    p = cli("finish", "--forward", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["rollout"]["state"] == "forward"
    assert _wait(lambda: all(sdk.states[d]["bundle"] == rdig for d in sdk.devices))
    assert sdk.states["dev-2"]["shadow"] is None
    p = cli("finish")
    assert p.returncode == 2 and "--forward" in p.stderr


def test_a_namespace_trust_store_stays_in_its_namespace(tmp_path, mosquitto_available):
    """A key trusted in one namespace's own store (what a graded submission can write) verifies
    bundles on that namespace's devices only; the namespace's removal takes it away."""
    from lab_hardware import home as _home

    home = tmp_path / "lab"
    start_lab(home, devices=1)
    try:
        keys.new_key(home, "author")
        signed = _make(tmp_path, home, "intents", "1.1.0", call_bias=-3.0)
        views = {}
        for ns in ("sub-a", "sub-b"):
            desc = lab.add_namespace(home, ns, devices=1)
            views[ns] = tmp_path / ns
            views[ns].mkdir()
            _home.write_json(views[ns] / _home.DESCRIPTOR, desc)
        assert keys.trust(keys.namespace_home(home, "sub-a"), home / "keys" / "author.pub")
        with Lab.connect(home=views["sub-a"]) as a:
            rec = a.install(a.devices[0], signed)
            assert rec["kind"] == "install"
        with Lab.connect(home=views["sub-b"]) as b:
            with pytest.raises(CommandRefused, match="unknown key|trusted"):
                b.install(b.devices[0], signed)
        with Lab.connect(home=home) as main:  # nor in the lab's own namespace
            with pytest.raises(CommandRefused, match="unknown key|trusted"):
                main.install(main.devices[0], signed)
        lab.remove_namespace(home, "sub-a", purge=True)
        assert not keys.namespace_home(home, "sub-a").exists()
    finally:
        lab.down(home)
