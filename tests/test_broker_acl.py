"""The broker refuses anonymous clients and confines every identity (checked with real clients)."""

from __future__ import annotations

import json
import time

import pytest

from lab_hardware.runtime import broker, lab
from lab_hardware import mqtt, topics
from tests.mqtt_helpers import Observer, publish_raw, wait_for


def _ids(home):
    return json.loads((home / "secrets" / "identities.json").read_text())


def test_anonymous_client_refused(lab_home):
    desc = lab.descriptor(lab_home)
    c = mqtt.client()
    with pytest.raises(mqtt.ConnectError, match="refused"):
        mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])


def test_wrong_password_refused(lab_home):
    desc = lab.descriptor(lab_home)
    c = mqtt.client(username="learner.default", password="wrong")
    with pytest.raises(mqtt.ConnectError, match="refused"):
        mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])


def test_broker_listens_on_loopback_only(lab_home):
    conf = (lab_home / "broker" / "mosquitto.conf").read_text()
    port = lab.descriptor(lab_home)["broker"]["port"]
    assert f"listener {port} 127.0.0.1" in conf
    assert "allow_anonymous false" in conf
    assert "max_queued_messages 1000\n" not in conf  # never Mosquitto's lossy default


def test_learner_cannot_publish_fake_telemetry(lab_home):
    obs = Observer(lab_home)
    try:
        ids = _ids(lab_home)
        rc = publish_raw(
            lab_home,
            topics.telemetry("default", "dev-0"),
            b'{"schema":"fake"}',
            username="learner.default",
            password=ids["learner.default"],
            v5=True,
        )
        assert rc is not None and rc.value == 0x87  # Not authorized
        time.sleep(0.5)
        assert not [d for d in obs.of("telemetry", "dev-0") if d.get("schema") == "fake"]
    finally:
        obs.close()


def test_device_cannot_publish_as_another_device(lab_home):
    obs = Observer(lab_home)
    try:
        ids = _ids(lab_home)
        user = broker.device_user("default", "dev-0")
        rc = publish_raw(
            lab_home,
            topics.telemetry("default", "dev-1"),
            b'{"schema":"spoof"}',
            username=user,
            password=ids[user],
            v5=True,
        )
        assert rc.value == 0x87
        rc = publish_raw(
            lab_home, topics.command("default", "dev-1", "consent"), b"{}", username=user, password=ids[user], v5=True
        )
        assert rc.value == 0x87  # devices never issue commands
        time.sleep(0.5)
        assert not [d for d in obs.of("telemetry", "dev-1") if d.get("schema") == "spoof"]
    finally:
        obs.close()


def test_device_reads_only_its_own_commands(lab_home):
    desc = lab.descriptor(lab_home)
    ids = _ids(lab_home)
    user = broker.device_user("default", "dev-0")
    c = mqtt.client(username=user, password=ids[user])
    got = []
    c.on_message = lambda cl, ud, m: got.append(m.topic)
    mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
    try:
        mqtt.subscribe_wait(c, "livelab/default/devices/+/cmd/#")
        publish_raw(lab_home, topics.command("default", "dev-1", "ping"), b'{"x":1}')
        publish_raw(lab_home, topics.command("default", "dev-0", "nosuch"), b'{"x":1}')
        # The broker routed ping (acknowledged first) before nosuch: once nosuch is here,
        # ping would be too if the ACL let it through.
        wait_for(lambda: topics.command("default", "dev-0", "nosuch") in got, 10, "dev-0's own command")
        assert topics.command("default", "dev-1", "ping") not in got
    finally:
        mqtt.stop(c)


def test_learner_confined_to_its_namespace(lab_home):
    desc = lab.descriptor(lab_home)
    ids = _ids(lab_home)
    c = mqtt.client(username="learner.default", password=ids["learner.default"])
    got = []
    c.on_message = lambda cl, ud, m: got.append(m.topic)
    mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
    try:
        c.subscribe("livelab/#", qos=1)
        time.sleep(0.3)
        publish_raw(lab_home, "livelab/other-ns/devices/dev-0/telemetry", b'{"secret":1}')
        time.sleep(0.5)
        assert not [t for t in got if t.startswith("livelab/other-ns/")]
        rc = publish_raw(
            lab_home,
            "livelab/other-ns/devices/dev-0/cmd/consent",
            b"{}",
            username="learner.default",
            password=ids["learner.default"],
            v5=True,
        )
        assert rc.value == 0x87
    finally:
        mqtt.stop(c)


def test_qos1_limits_configured(lab_home):
    conf = (lab_home / "broker" / "mosquitto.conf").read_text()
    assert f"max_queued_messages {broker.MAX_QUEUED_MESSAGES}" in conf
    assert f"max_inflight_messages {broker.MAX_INFLIGHT_MESSAGES}" in conf


def test_a_broker_reload_that_did_not_take_is_sent_again_until_it_does(tmp_path, mosquitto_available):
    """Mosquitto clears its reload flag after re-reading its files, so a SIGHUP that arrives
    while it is still reloading is lost, and the newest identities stay unknown to it (a
    namespace added right after another: its devices refused, 'Not authorized', until some
    later change).  The lab's reload asks the broker for proof: a probe identity with a fresh
    password in each version of the files, which connects only once the broker has read that
    version; until then the SIGHUP is sent again (bounded).  Here the first SIGHUP is not sent
    at all, as if lost."""
    from lab_hardware.runtime import broker

    root, port = tmp_path / "broker", broker.free_port()
    broker.write_config(root, port, {"control": "pw-0"}, {}, probe="probe-1")
    proc = broker.start(root, port, tmp_path / "broker.log")
    try:
        broker.write_config(root, port, {"control": "pw-0", "newcomer": "pw-1"}, {}, probe="probe-2")
        with pytest.raises(mqtt.ConnectError, match="Not authorized"):
            c = mqtt.client(username="newcomer", password="pw-1")
            mqtt.connect(c, "127.0.0.1", port)
        assert broker.confirm_reload(proc, port, "probe-2", timeout=30) is True
        c = mqtt.client(username="newcomer", password="pw-1")
        mqtt.connect(c, "127.0.0.1", port)
        mqtt.stop(c)
        # the probe identity may connect, and may read nothing: no line of the ACL names it
        assert broker.PROBE_USER not in (root / "acl").read_text()
        got = []
        c = mqtt.client(username=broker.PROBE_USER, password="probe-2")
        c.on_message = lambda cl, ud, msg: got.append(msg.topic)
        mqtt.connect(c, "127.0.0.1", port)
        mqtt.subscribe_wait(c, "livelab/#")
        ctl = mqtt.client(username="control", password="pw-0")
        seen = []
        ctl.on_message = lambda cl, ud, msg: seen.append(msg.topic)
        mqtt.connect(ctl, "127.0.0.1", port)
        mqtt.subscribe_wait(ctl, "livelab/#")
        ctl.publish("livelab/probe-check", b"x", qos=1).wait_for_publish(10)
        wait_for(lambda: seen, 10, "control's own message back")
        time.sleep(0.5)  # delivered to control already: the probe would have it by now
        assert got == []
        mqtt.stop(c)
        mqtt.stop(ctl)
    finally:
        proc.terminate()
        proc.wait(10)
    # a broker that is gone: the answer is no, within the bound
    assert broker.confirm_reload(proc, port, "probe-3", timeout=2) is False


@pytest.fixture
def network_thread_ends_first(monkeypatch):
    """paho's ``loop_stop`` reads ``client._thread`` twice (``is None``, then ``.join()``), and
    the network thread sets it to None as it exits (paho issue #872).  This makes the caller's
    ``loop_stop`` lose that race every time: paho's ``threading.current_thread()`` (called
    between the two reads) waits, for the calling thread, until the network thread has ended."""
    import threading

    from paho.mqtt import client as paho

    real = threading.current_thread
    caller = threading.get_ident()
    watched: list = []

    def current_thread():
        if threading.get_ident() == caller:
            for c in watched:
                deadline = time.monotonic() + 10
                while c._thread is not None and time.monotonic() < deadline:
                    time.sleep(0.005)
        return real()

    monkeypatch.setattr(paho.threading, "current_thread", current_thread)
    return watched


def test_stopping_a_client_whose_network_thread_already_ended_does_not_raise(lab_home, network_thread_ends_first):
    """``mqtt.stop`` disconnects and then stops the network thread, which ends by itself on the
    disconnect.  When it ended first, paho raised AttributeError ('NoneType' object has no
    attribute 'join'): in the supervisor's reload probe that error was FATAL and took the
    whole lab down."""
    desc = lab.descriptor(lab_home)
    cred = lab.control_credentials(lab_home)
    c = mqtt.client(username=cred["username"], password=cred["password"])
    mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
    network_thread_ends_first.append(c)
    mqtt.stop(c)
    assert c._thread is None


def test_a_refused_connection_whose_network_thread_already_ended_raises_connect_error(
    lab_home, network_thread_ends_first
):
    """The refused-connection path stops the network thread too: the caller gets ConnectError
    (what it handles), never the race's AttributeError."""
    desc = lab.descriptor(lab_home)
    c = mqtt.client(username="learner.default", password="wrong")
    network_thread_ends_first.append(c)
    with pytest.raises(mqtt.ConnectError, match="refused"):
        orig = c.loop_stop

        def end_then_stop():  # the network thread ends on its own before loop_stop looks
            c.disconnect()
            return orig()

        c.loop_stop = end_then_stop
        mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
