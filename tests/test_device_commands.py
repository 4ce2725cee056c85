"""Bad commands are refused, written to the audit chain, and the device keeps serving."""

from __future__ import annotations

import time

import pytest

from lab_hardware import topics
from lab_hardware.runtime.device import COMMAND_LIMIT
from labs import CommandRefused
from tests.mqtt_helpers import Observer, publish_raw


def _wait_refused(obs: Observer, device: str, n_before: int, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = [r for m in obs.of("audit", device) for r in m["records"] if r["kind"] == "refused"]
        if len(recs) > n_before:
            return recs[-1]
        time.sleep(0.02)
    raise AssertionError("no refusal recorded")


BAD = [
    ("consent", b"{not json", "not valid JSON"),
    ("consent", b"[1, 2]", "must be a JSON object"),
    ("consent", b'{"schema": "livelab.command/v1", "id": "x1", "scope": "telemetry", "grant": "yes"}', "true or false"),
    (
        "consent",
        b'{"schema": "livelab.command/v1", "id": "x2", "scope": "everything", "grant": true}',
        "unknown consent scope",
    ),
    ("consent", b'{"schema": "other/v9", "id": "x3"}', "unknown command schema"),
    ("consent", b'{"schema": "livelab.command/v1", "id": 5}', "'id' must be a string"),
    ("selfdestruct", b'{"schema": "livelab.command/v1", "id": "x4"}', "unknown command"),
    ("audit", b'{"schema": "livelab.command/v1", "id": "x5", "from": -3}', "non-negative"),
    ("set-model", b'{"schema": "livelab.command/v1", "id": "x6", "model": "../../etc/passwd"}', "unknown model"),
    ("consent", b"\xff\xfe\x00garbage", "not valid JSON"),
    ("consent", b"x" * (COMMAND_LIMIT + 1), "exceeds the command limit"),
]


@pytest.mark.parametrize("command, payload, reason", BAD, ids=[r for _, _, r in BAD])
def test_bad_command_refused_and_audited(lab_home, lab_sdk, command, payload, reason):
    obs = Observer(lab_home, "livelab/default/devices/dev-2/#")
    try:
        before = len([r for m in obs.of("audit", "dev-2") for r in m["records"] if r["kind"] == "refused"])
        publish_raw(lab_home, topics.command("default", "dev-2", command), payload)
        rec = _wait_refused(obs, "dev-2", before)
        assert reason in rec["data"]["reason"]
        assert "\n" not in rec["data"]["reason"]
        assert rec["data"]["bytes"] == len(payload)
        # the device keeps serving: it still answers a good command and keeps deciding
        decisions = lab_sdk.states["dev-2"]["decisions"]
        assert lab_sdk.command("dev-2", "ping")["kind"] == "command"
        deadline = time.monotonic() + 60
        while lab_sdk.states["dev-2"]["decisions"] <= decisions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lab_sdk.states["dev-2"]["decisions"] > decisions
    finally:
        obs.close()


def test_refusals_are_in_the_verified_chain(lab_sdk):
    with pytest.raises(CommandRefused, match="unknown model"):
        lab_sdk.set_model("dev-1", "does-not-exist")
    chain = lab_sdk.audit_chain("dev-1")
    assert chain.verify()
    assert any(r["kind"] == "refused" and "unknown model" in r["data"]["reason"] for r in chain.records)


def test_sdk_rejects_bad_scope_before_sending(lab_sdk):
    with pytest.raises(ValueError, match="unknown consent scope"):
        lab_sdk.grant_consent("dev-0", "everything")
    with pytest.raises(ValueError, match="unknown device"):
        lab_sdk.grant_consent("dev-99")


def test_command_flood_does_not_stop_device(lab_home, lab_sdk):
    for i in range(200):
        publish_raw(lab_home, topics.command("default", "dev-0", "consent"), b"{bad") if i % 50 == 0 else None
    desc_before = lab_sdk.states["dev-0"]["refused"]
    # 200 malformed commands in a burst through one connection
    from lab_hardware.runtime import lab
    from lab_hardware import mqtt

    cred = lab.control_credentials(lab_home)
    d = lab.descriptor(lab_home)
    c = mqtt.client(username=cred["username"], password=cred["password"])
    mqtt.connect(c, d["broker"]["host"], d["broker"]["port"])
    infos = [c.publish(topics.command("default", "dev-0", "consent"), b"{bad", qos=1) for _ in range(200)]
    for i in infos:
        i.wait_for_publish(5)
    mqtt.stop(c)
    deadline = time.monotonic() + 60
    while lab_sdk.states["dev-0"]["refused"] < desc_before + 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab_sdk.states["dev-0"]["refused"] >= desc_before + 200
    assert lab_sdk.states["dev-0"]["online"]
    assert lab_sdk.command("dev-0", "ping")["kind"] == "command"
