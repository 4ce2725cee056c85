"""kill -9 of the broker mid-stream: zero aggregation windows lost end to end."""

from __future__ import annotations

import os
import signal
import time

from lab_hardware.runtime import lab
from labs import Lab
from tests.mqtt_helpers import Observer, wait_for


def _seqs(obs, device):
    return [w["seq"] for w in obs.of("telemetry", device)]


def _broker_pid(home):
    return lab.status(home)["broker"]["pid"]


def _seq_now(home) -> dict[str, int]:
    return {d["name"]: d["telemetry_seq"] or 0 for d in lab.status(home)["devices"]}


def _wait_more_windows(home, n: int, timeout: float = 60) -> None:
    """Wait until every device has published ``n`` more windows (not a fixed time: under
    load windows come late, and the test needs windows before, during and after)."""
    start = _seq_now(home)
    wait_for(
        lambda: all(v >= start[d] + n for d, v in _seq_now(home).items()),
        timeout,
        f"{n} more windows from every device",
    )


def _wait_saved(home, since: float, timeout: float = 30) -> None:
    """Wait until the broker has saved its persistence file after ``since`` (its autosave)."""
    db = home / "broker" / "data" / "mosquitto.db"
    wait_for(lambda: db.exists() and db.stat().st_mtime > since, timeout, "the broker's autosave")


def _wait_broker_back(home, old_pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = lab.status(home, timeout=0.5)
        if st["broker"]["pid"] != old_pid and st["broker"]["reachable"]:
            return st
        time.sleep(0.1)
    raise AssertionError("broker did not come back")


def test_broker_kill9_loses_no_window(fresh_lab):
    home = fresh_lab(device_options={"window_seconds": 0.05})
    obs = Observer(home, "livelab/+/devices/+/telemetry", persistent=True)
    try:
        with Lab.connect(home=home) as sdk:
            for d in sdk.devices:
                sdk.grant_consent(d)
        _wait_more_windows(home, 10)
        _wait_saved(home, time.time() + 0.01)  # the observer's session is persisted

        # 1. crash: kill -9, the supervisor restarts it at once on the same port
        pid = _broker_pid(home)
        os.kill(pid, signal.SIGKILL)
        st = _wait_broker_back(home, pid)
        assert st["broker"]["restarts"] == 1

        # 2. a longer outage: the broker stays dead for 2 s (supervisor paused)
        _wait_more_windows(home, 10)
        sup = int((home / "run" / "supervisor.pid").read_text())
        pid = _broker_pid(home)
        before_outage = _seq_now(home)
        os.kill(sup, signal.SIGSTOP)
        try:
            os.kill(pid, signal.SIGKILL)
            time.sleep(2.0)
        finally:
            os.kill(sup, signal.SIGCONT)
        _wait_broker_back(home, pid)
        _wait_more_windows(home, 10)

        final = {d["name"]: d["telemetry_seq"] for d in lab.status(home)["devices"]}
        assert all(final[d] >= before_outage[d] + 10 >= 30 for d in final), (before_outage, final)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(set(range(final[d] + 1)) <= set(_seqs(obs, d)) for d in final):
                break
            time.sleep(0.1)
        for d, last in final.items():
            got = set(_seqs(obs, d))
            missing = sorted(set(range(last + 1)) - got)
            assert missing == [], f"{d}: lost windows {missing[:20]} (of {last + 1})"
        dups = sum(len(_seqs(obs, d)) - len(set(_seqs(obs, d))) for d in final)
        print(f"windows {sum(v + 1 for v in final.values())}, duplicates dropped by seq: {dups}")
    finally:
        obs.close()
