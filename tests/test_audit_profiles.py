"""Audit chain tamper evidence, consent state, hardware profiles and topic names."""

from __future__ import annotations

import json

import pytest

from lab_hardware import audit, consent, profiles, topics


def _chain(tmp_path, n=5):
    ch = audit.AuditChain(tmp_path / "audit.jsonl", clock=iter(range(100, 200)).__next__)
    for i in range(n):
        ch.append("consent" if i % 2 == 0 else "command", {"scope": "telemetry", "grant": i % 4 == 0, "id": f"c{i}"})
    return ch


def test_chain_verifies_and_reloads(tmp_path):
    ch = _chain(tmp_path)
    assert audit.verify(ch.records()) and len(ch) == 5
    again = audit.AuditChain(tmp_path / "audit.jsonl")
    rec = again.append("command", {"id": "more"})
    assert rec["index"] == 5 and rec["prev"] == ch.records()[-1]["hash"]


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda rs: rs[2]["data"].update(grant=True), "altered"),
        (lambda rs: rs.pop(1), "index"),
        (lambda rs: rs.insert(4, dict(rs[3])), "index"),
        (lambda rs: rs[3].update(prev="f" * 64), "link"),
        (lambda rs: rs[0].pop("hash"), "missing"),
    ],
)
def test_tampering_is_detected(tmp_path, tamper, reason):
    records = _chain(tmp_path).records()
    records = [json.loads(json.dumps(r)) for r in records]
    tamper(records)
    v = audit.verify(records)
    assert not v and reason in v.reason and v.bad_index is not None


def test_tampered_file_refused_on_load(tmp_path):
    _chain(tmp_path)
    path = tmp_path / "audit.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"command"', '"consent"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="broken"):
        audit.AuditChain(path)


def test_torn_tail_write_is_ignored(tmp_path):
    _chain(tmp_path)
    with open(tmp_path / "audit.jsonl", "a") as fh:
        fh.write('{"index": 5, "tim')
    assert len(audit.read(tmp_path / "audit.jsonl")) == 5


def test_consent_default_deny_and_trail(tmp_path):
    st = consent.ConsentState()
    assert not st.allows("telemetry") and not st.allows("replay-capture")
    with pytest.raises(consent.ConsentError, match="unknown consent scope"):
        st.apply("everything", True)
    with pytest.raises(consent.ConsentError):
        st.apply("telemetry", "yes")
    ch = _chain(tmp_path)
    restored = consent.ConsentState.from_trail(ch.records())
    # consent records: i=0 grant True, i=2 grant False, i=4 grant True
    assert restored.allows("telemetry")
    assert len(consent.trail(ch.records())) == 3


def test_profiles_load():
    assert {"none", "rpi4"} <= set(profiles.names())
    pi = profiles.load("rpi4")
    assert pi.memory_mb > 0 and pi.inference_slowdown > 1 and pi.link.latency_ms > 0
    none = profiles.load("none")
    assert none.satisfies(pi) and not pi.satisfies(none)
    with pytest.raises(profiles.ProfileError, match="unknown hardware profile"):
        profiles.load("cray")


@pytest.mark.parametrize(
    "text, reason",
    [
        (
            'name="x"\ndescription="d"\ncores=1\nmemory_mb=1\ninference_slowdown=1.0\nturbo=true\n'
            "[link]\nlatency_ms=0\njitter_ms=0\nloss=0\nbandwidth_kbps=0\n",
            "unknown key 'turbo'",
        ),
        (
            'name="x"\ndescription="d"\ncores="four"\nmemory_mb=1\ninference_slowdown=1.0\n'
            "[link]\nlatency_ms=0\njitter_ms=0\nloss=0\nbandwidth_kbps=0\n",
            "wrong type",
        ),
        (
            'name="x"\ndescription="d"\ncores=1\nmemory_mb=1\ninference_slowdown=1.0\n'
            "[link]\nlatency_ms=0\njitter_ms=0\nloss=1.5\nbandwidth_kbps=0\n",
            "loss",
        ),
        ("name = [", "cannot read"),
    ],
)
def test_bad_profile_refused(tmp_path, text, reason):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(profiles.ProfileError, match=reason.replace("(", r"\(")) as exc:
        profiles.load_path(p)
    assert "\n" not in str(exc.value)


def test_topic_layout():
    assert topics.telemetry("ns", "dev-0") == "livelab/ns/devices/dev-0/telemetry"
    assert topics.parse("livelab/ns/devices/dev-0/cmd/consent") == {
        "namespace": "ns",
        "device": "dev-0",
        "kind": "cmd",
        "command": "consent",
    }
    assert topics.parse("livelab/ns/control/x") is None
    for bad in ("a/b", "+", "#", "UPPER", "", "x" * 70):
        with pytest.raises(topics.TopicError):
            topics.check_name("device", bad)
    with pytest.raises(ValueError, match="exceeds"):
        topics.decode(b"{}" * 10, limit=5)


def test_rpi4_device_is_capped_and_shaped(fresh_lab):
    from lab_hardware.runtime import lab
    from labs import Lab

    home = fresh_lab(profile="rpi4", devices=1, device_options={"window_seconds": 0.3})
    pid = lab.status(home)["devices"][0]["pid"]
    limits = open(f"/proc/{pid}/limits").read()
    line = next(l for l in limits.splitlines() if l.startswith("Max data size"))
    assert str(2048 * 1024 * 1024) in line
    with Lab.connect(home=home) as sdk:
        sdk.grant_consent("dev-0")
        w = sdk.next_window("dev-0", timeout=5)
        assert w["profile"] == "rpi4" and w["decisions"] > 0
