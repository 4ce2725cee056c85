"""The learner SDK finds the lab (descriptor or environment) and reads it honestly."""

from __future__ import annotations

import pytest

from lab_hardware.runtime import lab
from labs import Lab, LabConnectionError


def test_connect_from_descriptor_and_env(lab_home, monkeypatch):
    monkeypatch.setenv("LIVELAB_HOME", str(lab_home))
    with Lab.connect() as sdk:
        assert sdk.namespace == "default" and sdk.devices == ["dev-0", "dev-1", "dev-2"]
        assert set(sdk.states) == set(sdk.devices)
    desc = lab.descriptor(lab_home)
    url = f"mqtt://{desc['learner']['username']}:{desc['learner']['password']}@127.0.0.1:{desc['broker']['port']}"
    monkeypatch.delenv("LIVELAB_HOME")
    monkeypatch.setenv("LIVELAB_BROKER_URL", url)
    monkeypatch.setenv("LIVELAB_NAMESPACE", "default")
    with Lab.connect() as sdk:
        assert "dev-1" in sdk.devices


def test_connect_errors_are_one_line(tmp_path, lab_home, monkeypatch):
    monkeypatch.delenv("LIVELAB_BROKER_URL", raising=False)
    with pytest.raises(LabConnectionError, match="livelab up"):
        Lab.connect(home=tmp_path)
    with pytest.raises(LabConnectionError, match="namespace"):
        Lab.connect(home=lab_home, namespace="other")
    with pytest.raises(LabConnectionError, match="refused"):
        Lab.connect(home=lab_home, password="wrong")
    with pytest.raises(LabConnectionError, match="mqtt://"):
        Lab.connect(broker_url="ftp://x")


def test_telemetry_iterator_and_timeout(lab_sdk):
    lab_sdk.grant_consent("dev-2")
    got = list(lab_sdk.telemetry("dev-2", timeout=3, limit=3))
    assert [w["device"] for w in got] == ["dev-2"] * 3
    assert [w["seq"] for w in got] == sorted(w["seq"] for w in got)
    assert sum(got[0]["counts"].values()) == got[0]["decisions"] > 0
    # a second reader has its own cursor and still sees the buffered windows
    assert list(lab_sdk.telemetry("dev-2", timeout=1, limit=2, buffered=True))[0]["seq"] <= got[0]["seq"]
    lab_sdk.revoke_consent("dev-2")
    with pytest.raises(TimeoutError, match="consent"):
        lab_sdk.next_window("dev-2", timeout=1.5)


def test_a_device_that_does_not_answer_raises_device_timeout(lab_sdk):
    """A command the device does not answer in time raises DeviceTimeoutError (a TimeoutError
    the grader reads as the lab's failure, never the learner's)."""
    import os
    import signal

    from labs.sdk import DeviceTimeoutError

    pid = lab_sdk.states["dev-1"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # the lab's own device process, resumed below
    try:
        with pytest.raises(DeviceTimeoutError, match="did not answer"):
            lab_sdk.grant_consent("dev-1", timeout=1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    lab_sdk.revoke_consent("dev-1", timeout=30)  # after the late grant: the device is as it was
    assert issubclass(DeviceTimeoutError, TimeoutError)


def test_candidate_shows_false_positive_signal(lab_sdk):
    """The storyline: telemetry from candidate devices shows the defect intent's false positives."""
    for d in lab_sdk.devices:
        lab_sdk.grant_consent(d)
    undo = {d: 0 for d in lab_sdk.devices}
    decisions = {d: 0 for d in lab_sdk.devices}
    for w in lab_sdk.telemetry(timeout=3, limit=30):
        undo[w["device"]] += w["fp_proxy"]["undo"]["call"]
        decisions[w["device"]] += w["decisions"]
    models = {d: lab_sdk.states[d]["model"] for d in lab_sdk.devices}
    for d in lab_sdk.devices:
        lab_sdk.revoke_consent(d)
    rate = {d: undo[d] / max(1, decisions[d]) for d in undo}
    cand = [rate[d] for d in rate if models[d] == "candidate"]
    base = [rate[d] for d in rate if models[d] == "baseline"]
    assert min(cand) > 0.03 and max(base) < 0.02, (rate, models)


def test_telemetry_cut_short_by_a_stalled_device_says_the_lab_stalled(lab_sdk, capsys):
    """A device the host starves sends nothing at all: no window and no heartbeat (its state
    comes every second).  ``telemetry(timeout=...)`` then ends as on an empty stream, and a
    trace collected from it comes up short: a correct m4 answer loses points to machine load.
    The SDK tells the two apart.  For a stalled device it says so on stderr (STALL_MARK, which
    the grader reads as the machine's failure) and ``next_window`` raises DeviceTimeoutError.
    A device whose consent was revoked keeps its heartbeat: its stream is just empty."""
    import os
    import signal

    from labs.sdk import STALL_MARK, DeviceTimeoutError

    lab_sdk.grant_consent("dev-0", timeout=30)
    lab_sdk.next_window("dev-0", timeout=30)
    pid = lab_sdk.states["dev-0"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # the lab's own device process, resumed below
    try:
        list(lab_sdk.telemetry("dev-0", timeout=3))
        err = capsys.readouterr().err
        with pytest.raises(DeviceTimeoutError, match=STALL_MARK):
            lab_sdk.next_window("dev-0", timeout=3)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert STALL_MARK in err and "dev-0" in err, err
    assert [s["device"] for s in lab_sdk.stalls][:1] == ["dev-0"]
    capsys.readouterr()
    lab_sdk.revoke_consent("dev-0", timeout=30)
    stalls = len(lab_sdk.stalls)
    list(lab_sdk.telemetry("dev-0", timeout=3))
    with pytest.raises(TimeoutError, match="consent") as e:
        lab_sdk.next_window("dev-0", timeout=3)
    assert not isinstance(e.value, DeviceTimeoutError)
    assert len(lab_sdk.stalls) == stalls and STALL_MARK not in capsys.readouterr().err
