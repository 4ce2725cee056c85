"""Test-side MQTT observers (real paho clients against the lab's real broker)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable

import paho.mqtt.client as mqtt_

from lab_hardware.runtime import lab
from lab_hardware import mqtt, topics


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it is truthy (returned), or fail after ``timeout`` s naming ``what``.

    The tests wait on the condition they need, never on a fixed time: under load a
    condition takes longer, and a bounded wait still ends the test if it never comes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Observer:
    """An independent subscriber with control-plane rights that records every message."""

    def __init__(self, home, topic: str = "livelab/#", *, persistent: bool = False):
        desc = lab.descriptor(home)
        cred = lab.control_credentials(home)
        cid = f"observer-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.client(cid, username=cred["username"], password=cred["password"], clean=not persistent)
        self.messages: list[tuple[str, dict | bytes]] = []
        self.lock = threading.Lock()
        self.topic = topic
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, ud, fl, rc, pr: c.subscribe(self.topic, qos=1)
        mqtt.connect(self.client, desc["broker"]["host"], desc["broker"]["port"])
        mqtt.subscribe_wait(self.client, topic)

    def _on_message(self, client, userdata, msg):
        try:
            data = json.loads(msg.payload)
        except ValueError:
            data = msg.payload
        with self.lock:
            self.messages.append((msg.topic, data))

    def of(self, kind: str, device: str | None = None) -> list[dict]:
        with self.lock:
            out = []
            for t, d in self.messages:
                p = topics.parse(t)
                if p and p["kind"] == kind and (device is None or p["device"] == device):
                    out.append(d)
            return out

    def raw(self) -> list[tuple[str, dict | bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self):
        mqtt.stop(self.client)


def publish_raw(home, topic: str, payload: bytes, *, username=None, password=None, v5=False):
    """Publish as control (default) or another identity; returns the PUBACK reason code (v5)."""
    desc = lab.descriptor(home)
    if username is None:
        cred = lab.control_credentials(home)
        username, password = cred["username"], cred["password"]
    done = threading.Event()
    out = {}
    c = mqtt.client(username=username, password=password, protocol=mqtt_.MQTTv5 if v5 else mqtt_.MQTTv311)

    def on_publish(cl, ud, mid, rc, props):
        out["rc"] = rc
        done.set()

    c.on_publish = on_publish
    mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
    c.publish(topic, payload, qos=1)
    done.wait(5)
    mqtt.stop(c)
    return out.get("rc")
