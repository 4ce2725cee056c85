"""The lab's lifecycle, CLI errors and process hygiene (real Mosquitto, real devices)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from lab_hardware.runtime import lab
from lab_hardware.home import pid_alive
from tests.conftest import start_lab

LIVELAB = [sys.executable, "-m", "livelab"]


def run_cli(*args, env=None, timeout=60):
    e = {**os.environ, **(env or {})}
    return subprocess.run([*LIVELAB, *args], capture_output=True, text=True, env=e, timeout=timeout)


def one_line_error(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_status_of_running_lab(lab_home):
    st = lab.status(lab_home)
    assert st["running"] and st["broker"]["alive"] and st["broker"]["reachable"]
    assert st["broker"]["host"] == "127.0.0.1" and st["broker"]["port"] > 0
    assert [d["name"] for d in st["devices"]] == ["dev-0", "dev-1", "dev-2"]
    for d in st["devices"]:
        assert d["online"] and d["alive"]
        assert d["consent"] == {"telemetry": False, "replay-capture": False}  # default deny
        assert len(d["bundle"]) == 64
    assert {d["model"] for d in st["devices"]} == {"baseline", "candidate"}


def test_status_json_cli(lab_home):
    proc = run_cli("--home", str(lab_home), "status", "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["broker"]["port"] == lab.descriptor(lab_home)["broker"]["port"]
    assert st["namespace"] == "default"
    assert all("telemetry_seq" in d and "consent" in d and "bundle" in d for d in st["devices"])


def test_descriptor_holds_no_control_secret(lab_home):
    desc = json.loads((lab_home / "lab.json").read_text())
    control = json.loads((lab_home / "secrets" / "control.json").read_text())
    assert desc["learner"]["username"] == "learner.default"
    assert control["password"] not in json.dumps(desc)
    assert stat.S_IMODE(os.stat(lab_home / "secrets" / "control.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(lab_home / "secrets").st_mode) == 0o700
    passwd = (lab_home / "broker" / "passwd").read_text()
    assert control["password"] not in passwd  # hashed by mosquitto_passwd


def test_second_up_reuses_running_lab(lab_home):
    desc = start_lab(lab_home)
    assert desc.get("reused") is True
    assert desc["broker"]["port"] == lab.descriptor(lab_home)["broker"]["port"]
    proc = run_cli("--home", str(lab_home), "up")
    assert proc.returncode == 0 and "reusing" in proc.stdout


def test_second_up_with_other_shape_is_refused(lab_home):
    proc = run_cli("--home", str(lab_home), "up", "--devices", "2")
    assert proc.returncode == 2
    assert "already running" in one_line_error(proc)


def test_logs_cli(lab_home):
    proc = run_cli("--home", str(lab_home), "logs", "broker")
    assert proc.returncode == 0 and "broker.log" in proc.stdout
    proc = run_cli("--home", str(lab_home), "logs", "nosuch")
    assert proc.returncode == 2 and "no log named" in one_line_error(proc)


def test_mosquitto_missing(tmp_path):
    proc = run_cli("--home", str(tmp_path / "h"), "up", env={"LIVELAB_MOSQUITTO": "/nonexistent/mosquitto"})
    assert proc.returncode == 2
    assert "mosquitto not found" in one_line_error(proc)
    assert not (tmp_path / "h" / "lab.json").exists()


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_cli("--home", str(tmp_path / "h"), "up", "--port", str(port))
    assert proc.returncode == 2
    assert f"port {port}" in one_line_error(proc) and "in use" in proc.stderr


def test_state_directory_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli("--home", str(blocker / "home"), "up")
    assert proc.returncode == 2
    assert "not writable" in one_line_error(proc)


@pytest.mark.parametrize(
    "args, expect",
    [
        (["up", "--scenario", "nope"], "unknown scenario"),
        (["up", "--profile", "nope"], "unknown hardware profile"),
        (["up", "--devices", "0"], "--devices"),
        (["up", "--namespace", "Bad/NS"], "invalid namespace"),
        (["up", "--broker-url", "http://x"], "mqtt://"),
        (["consent", "grant", "dev-0"], "no running lab"),
    ],
)
def test_bad_usage_one_line(tmp_path, args, expect):
    proc = run_cli("--home", str(tmp_path / "h"), *args)
    assert proc.returncode == 2
    assert expect in one_line_error(proc)


def test_unknown_subcommand_exit_2():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2


def test_status_and_down_without_lab(tmp_path):
    proc = run_cli("--home", str(tmp_path), "status")
    assert proc.returncode == 1 and "no lab running" in proc.stdout
    proc = run_cli("--home", str(tmp_path), "down")
    assert proc.returncode == 0 and "no lab running" in proc.stdout


def test_down_leaves_no_process(fresh_lab):
    home = fresh_lab()
    pids = lab.lab_pids(home)
    assert len(pids) == 6  # supervisor, broker, recorder (a lab service), 3 devices
    assert all(pid_alive(p) for p in pids)
    proc = run_cli("--home", str(home), "down")
    assert proc.returncode == 0
    assert [p for p in pids if pid_alive(p)] == []
    assert not (home / "lab.json").exists()


def test_down_after_supervisor_killed(fresh_lab):
    """Even if the supervisor dies with -9, down stops the broker and devices it left."""
    home = fresh_lab()
    pids = lab.lab_pids(home)
    sup = int((home / "run" / "supervisor.pid").read_text())
    os.kill(sup, 9)
    time.sleep(0.2)
    lab.down(home)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [p for p in pids if p != sup and pid_alive(p)]:
        time.sleep(0.05)
    assert [p for p in pids if p != sup and pid_alive(p)] == []


def test_device_crash_is_restarted_with_consent_kept(fresh_lab):
    from labs import Lab

    home = fresh_lab()
    with Lab.connect(home=home) as sdk:
        sdk.grant_consent("dev-1")
        first = sdk.next_window("dev-1", timeout=5)["seq"]
        old = lab.status(home)["devices"][1]["pid"]
        os.kill(old, 9)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = sdk.states.get("dev-1", {})
            if st.get("online") and st.get("pid") != old:
                break
            time.sleep(0.05)
        assert sdk.states["dev-1"]["pid"] != old
        assert sdk.states["dev-1"]["consent"]["telemetry"] is True  # restored from the trail
        assert sdk.states["dev-1"]["boot"] == 2
        later = sdk.next_window("dev-1", timeout=30)["seq"]
        assert later > first  # the sequence continues, never reused
    assert lab.status(home)["devices"][1]["restarts"] == 1


def test_a_namespace_whose_device_does_not_come_online_says_which_and_why(lab_home):
    """``add_namespace`` waits (bounded) for each new device to announce itself online; when one
    does not, the one-line error names the device, what the supervisor knows of its process and
    the last line of the device's own log (the supervisor's log alone said 'configuration
    reloaded'), the namespace is taken back out, and the lab keeps serving."""
    with pytest.raises(lab.LabError) as err:
        lab.add_namespace(lab_home, "slowpoke", devices=1, timeout=0.0)
    msg = str(err.value)
    assert "\n" not in msg
    assert "namespace 'slowpoke'" in msg and "dev-0: " in msg, msg
    assert any(s in msg for s in ("not started", "running (pid", "exited", "announced online")), msg
    assert "its log: " in msg, msg
    cfg = json.loads((lab_home / "config.json").read_text())
    assert "slowpoke" not in cfg["namespaces"]
    d = lab.add_namespace(lab_home, "slowpoke", devices=1)  # the name is free again, and it serves
    assert d["devices"] == ["dev-0"]
    lab.remove_namespace(lab_home, "slowpoke")


def test_a_namespace_removed_and_added_again_within_one_reload_runs_with_its_new_credentials(lab_home):
    """Removing a namespace and adding it again before the supervisor reloads (its SIGHUPs
    coalesce into one reload that sees the namespace present) must not keep the old device
    process, which holds the old namespace's broker password.  Seen in a fresh clone's
    ``make test``: the re-added namespace's device was refused ('Not authorized') for 60 s.
    The removal waits until the supervisor has applied it, and the re-added device runs with
    the identities the lab holds now."""
    import threading

    from lab_hardware.home import device_dir, read_json

    lab.add_namespace(lab_home, "again", devices=1)
    run = lambda: read_json(lab_home / "run" / "supervisor.json")  # noqa: E731
    old = run()["devices"]["again/dev-0"]["pid"]
    sup = int((lab_home / "run" / "supervisor.pid").read_text())
    errors: dict[str, BaseException] = {}

    def call(name, fn, *a, **kw):
        try:
            fn(*a, **kw)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[name] = exc

    def namespaces():
        return json.loads((lab_home / "config.json").read_text())["namespaces"]

    def wait(pred, what):
        deadline = time.monotonic() + 30
        while not pred():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    os.kill(sup, signal.SIGSTOP)  # resumed below, whatever happens
    try:
        remover = threading.Thread(
            target=call, args=("remove", lab.remove_namespace, lab_home, "again"), kwargs={"timeout": 30}
        )
        remover.start()
        wait(lambda: "again" not in namespaces(), "remove_namespace did not write the lab's config")
        adder = threading.Thread(
            target=call, args=("add", lab.add_namespace, lab_home, "again"), kwargs={"devices": 1, "timeout": 60}
        )
        adder.start()
        wait(lambda: "again" in namespaces(), "add_namespace did not write the lab's config")
    finally:
        os.kill(sup, signal.SIGCONT)
    remover.join(90)
    adder.join(90)
    assert not remover.is_alive() and not adder.is_alive()
    assert not errors, errors
    new = run()["devices"]["again/dev-0"]["pid"]
    assert new != old, "the re-added namespace still runs the removed one's device process"
    user = read_json(device_dir(lab_home, "again", "dev-0") / "config.json")["broker"]["username"]
    password = read_json(device_dir(lab_home, "again", "dev-0") / "config.json")["broker"]["password"]
    assert password == read_json(lab_home / "secrets" / "identities.json")[user]
    lab.remove_namespace(lab_home, "again")


def _signal_for(pid: int, sig: int, seconds: float) -> None:
    """Send ``sig`` to ``pid`` as fast as possible for ``seconds`` (until it is gone)."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def test_a_burst_of_reload_and_stop_signals_never_wedges_the_supervisor(fresh_lab):
    """Python runs a signal handler on the main thread between two bytecodes - also inside an
    earlier handler.  The supervisor's handlers used to call ``Event.set()``, which takes the
    event's lock: a SIGHUP arriving while the previous SIGHUP's handler held it deadlocked the
    supervisor for good (py-spy: five nested ``Event.set`` frames over ``Popen.wait``).  Seen as a
    fairness run that hung: graders add and remove a namespace per submission, each with a
    SIGHUP.  After a burst of SIGHUPs the supervisor still applies a namespace change, and after
    a burst of SIGTERMs (Ctrl-C pressed twice) it still stops its lab."""
    home = fresh_lab()
    sup = int((home / "run" / "supervisor.pid").read_text())
    _signal_for(sup, signal.SIGHUP, 3.0)
    lab.add_namespace(home, "after-burst", devices=1, timeout=60)
    assert "after-burst/dev-0" in json.loads((home / "run" / "supervisor.json").read_text())["devices"]
    pids = lab.lab_pids(home)
    _signal_for(sup, signal.SIGTERM, 1.0)
    deadline = time.monotonic() + 60  # a bound for a busy machine; it stops in about a second
    while time.monotonic() < deadline and pid_alive(sup):
        time.sleep(0.05)
    assert not pid_alive(sup), "the supervisor did not stop after a burst of SIGTERMs"
    while time.monotonic() < deadline and [p for p in pids if pid_alive(p)]:
        time.sleep(0.05)
    assert [p for p in pids if pid_alive(p)] == []


def test_a_reload_that_fails_is_logged_and_the_lab_keeps_serving(fresh_lab):
    """A reload that raises (here: config.json cut short by a crashed writer) used to be FATAL:
    the supervisor stopped the broker and every device.  It is an error line in the
    supervisor's log; the lab serves on with what it had, and the next good reload applies."""
    from lab_hardware.home import read_json

    home = fresh_lab()
    pids = lab.lab_pids(home)
    sup = int((home / "run" / "supervisor.pid").read_text())
    good = (home / "config.json").read_text()
    (home / "config.json").write_text(good[: len(good) // 2])
    os.kill(sup, signal.SIGHUP)
    log = home / "logs" / "supervisor.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(w in log.read_text() for w in ("reload failed", "FATAL")):
        time.sleep(0.05)
    text = log.read_text()
    assert "reload failed" in text and "FATAL" not in text, text[-2000:]
    assert all(pid_alive(p) for p in pids)
    (home / "config.json").write_text(good)
    lab.add_namespace(home, "after-bad-reload", devices=1, timeout=60)
    assert "after-bad-reload/dev-0" in read_json(home / "run" / "supervisor.json")["devices"]
