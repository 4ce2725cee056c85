"""The trusted recorder of learner events and the supervisor's services hook it runs on."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import start_lab


def _services(home):
    from lab_hardware.home import read_json

    return read_json(home / "run" / "supervisor.json").get("services", {})


def _wait(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def test_event_from_takes_learner_and_time_from_the_lab():
    from labs.recorder import event_from

    cfg = {
        "owner": "olga",
        "shape": {"namespace": "default"},
        "namespaces": {"default": {}, "ada": {"learner": "ada"}, "grade-x1": {}},
    }
    payload = b'{"kind": "module-opened", "module": "m1", "learner": "mallory", "time": 1, "team": "t", "session": "s"}'
    ev = event_from("livelab/ada/learner/events", payload, cfg, {"ada": "blue"}, now=100.0)
    assert (ev["learner"], ev["time"], ev["team"], ev["source"]) == ("ada", 100.0, "blue", "sdk")
    assert event_from("livelab/default/learner/events", payload, cfg, {}, now=5.0)["learner"] == "olga"
    # a namespace without a registered learner (a grading job) records nothing
    assert event_from("livelab/grade-x1/learner/events", payload, cfg, {}) is None
    # the SDK may not announce checks, and garbage is refused
    assert event_from("livelab/ada/learner/events", payload.replace(b"module-opened", b"check-passed"), cfg, {}) is None
    assert event_from("livelab/ada/learner/events", b"not json", cfg, {}) is None
    assert event_from("livelab/ada/learner/events", b'{"kind": "module-opened"}', cfg, {}) is None
    assert event_from("livelab/ada/devices/x/telemetry", payload, cfg, {}) is None


def test_recorder_is_a_supervised_service_that_survives_kill_9(fresh_lab):
    """Killed -9, the recorder comes back (supervisor services hook) and an announcement made
    meanwhile is stored (persistent session); 'down' stops it with the lab."""
    from lab_hardware.home import pid_alive, read_json
    from lab_hardware.runtime import lab
    from labs import Lab
    from labs.learning_events import EventStore

    home = fresh_lab()
    owner = read_json(home / "lab.json")["owner"]
    svc = _services(home)["recorder"]
    assert pid_alive(svc["pid"]) and svc["pid"] in lab.lab_pids(home)
    os.kill(svc["pid"], signal.SIGKILL)
    with Lab.connect("m3-bundles", home=home, course="c", version="1.0.0"):
        pass
    new = _wait(lambda: (s := _services(home).get("recorder")) and s["pid"] != svc["pid"] and s)
    assert new and new["restarts"] >= 1 and pid_alive(new["pid"])
    with EventStore(home) as store:
        assert _wait(lambda: store.count(learner=owner, module="m3-bundles") == 2)
    pids = lab.lab_pids(home)
    lab.down(home)
    assert not [p for p in pids if pid_alive(p)]


@pytest.mark.parametrize(
    "services, msg",
    [
        ([{"name": "x"}], "argv"),
        ([{"name": "Bad Name", "argv": ["true"]}], "invalid service name"),
        ([{"name": "a", "argv": ["true"]}, {"name": "a", "argv": ["true"]}], "two lab services"),
        (["nope"], "argv"),
    ],
)
def test_bad_services_are_refused_with_one_line(tmp_path, services, msg):
    from lab_hardware.runtime.lab import LabError

    with pytest.raises(Exception) as ei:
        start_lab(tmp_path / "lab", services=services)
    assert isinstance(ei.value, (LabError, ValueError)) and msg in str(ei.value)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "lab" / "run" / "supervisor.pid").exists()
