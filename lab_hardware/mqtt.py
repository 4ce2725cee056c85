"""Small helpers around paho-mqtt 2.x shared by devices, the SDK and tools."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt


class ConnectError(RuntimeError):
    """Could not connect or authenticate; the message says which."""


def client(
    client_id: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    clean: bool = True,
    protocol: int = mqtt.MQTTv311,
) -> mqtt.Client:
    """A paho client (callback API v2) with livelab's defaults for QoS 1 throughput."""
    cid = client_id or f"livelab-{uuid.uuid4().hex[:12]}"
    kwargs = {"clean_session": clean} if protocol != mqtt.MQTTv5 else {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol, **kwargs)
    if username is not None:
        c.username_pw_set(username, password)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(min_delay=0.05, max_delay=1)
    return c


def connect(c: mqtt.Client, host: str, port: int, *, timeout: float = 5.0, keepalive: int = 30) -> None:
    """Connect and start the network thread; raise ConnectError on refusal or timeout."""
    done = threading.Event()
    result: dict = {}
    previous = c.on_connect

    def on_connect(cl, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        done.set()
        if previous is not None:
            previous(cl, userdata, flags, reason_code, properties)

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=keepalive)
    except OSError as exc:
        raise ConnectError(f"cannot reach MQTT broker at {host}:{port}: {exc.strerror or exc}") from None
    c.loop_start()
    if not done.wait(timeout):
        _loop_stop(c)
        raise ConnectError(f"MQTT broker at {host}:{port} did not answer within {timeout:.0f} s")
    c.on_connect = previous
    rc = result["rc"]
    if rc.is_failure:
        _loop_stop(c)
        c.disconnect()
        raise ConnectError(f"MQTT broker at {host}:{port} refused the connection: {rc}")


def subscribe_wait(c: mqtt.Client, topic: str, qos: int = 1, timeout: float = 5.0) -> None:
    """Subscribe and wait for the SUBACK; ConnectError if the broker refuses it (ACL)."""
    acks: dict[int, list] = {}
    cond = threading.Condition()
    previous = c.on_subscribe

    def on_subscribe(cl, userdata, mid, reason_codes, properties):
        # may run before subscribe() below has even returned its mid: keep every ack
        with cond:
            acks[mid] = reason_codes
            cond.notify_all()
        if previous is not None:
            previous(cl, userdata, mid, reason_codes, properties)

    c.on_subscribe = on_subscribe
    try:
        rc, mid = c.subscribe(topic, qos=qos)
        with cond:
            ok = cond.wait_for(lambda: mid in acks, timeout)
    finally:
        c.on_subscribe = previous
    if rc != mqtt.MQTT_ERR_SUCCESS or not ok:
        raise ConnectError(f"subscription to {topic!r} was not acknowledged")
    if any(code.is_failure for code in acks[mid]):
        raise ConnectError(f"subscription to {topic!r} refused by the broker (not authorised)")


def stop(c: mqtt.Client) -> None:
    try:
        c.disconnect()
    finally:
        _loop_stop(c)


def _loop_stop(c: mqtt.Client) -> None:
    """``c.loop_stop()``, without paho's race (its issue #872): ``loop_stop`` reads the
    network thread twice, and the thread sets it to None as it ends (on a disconnect, or a
    refused connection), so it can raise AttributeError on a thread that has already ended.
    Then there is nothing left to stop."""
    try:
        c.loop_stop()
    except AttributeError:
        if c._thread is not None:  # not that race: a real error
            raise


def wait_until(pred, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
