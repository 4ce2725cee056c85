"""The lab oracle and routing, end to end: real Mosquitto, real device processes, real onnxruntime.

One lab with the oracle (a short queue, so a flood reaches it) and three devices: dev-0 routes
its ambiguous decisions (bundle with ``routing``), dev-1 runs a bundle without routing, dev-2
routes everything it may (margin threshold 1.0) under a max share of 0.25.  Every wait is on a
condition with a bound, never on elapsed time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lab_hardware import features, mqtt, profiles, topics
from lab_hardware.inference import Model
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys
from lab_hardware.runtime import broker, lab, routing
from lab_hardware.runtime.link import Link
from lab_hardware.window import ALLOWED_FIELDS
from labs import Lab, scenarios
from tests.conftest import start_lab
from tests.mqtt_helpers import Observer, publish_raw, wait_for

SC = scenarios.load("voice-intents")
CREATED = "2026-11-25T12:00:00Z"
ROUTE = {"margin_threshold": 0.5, "timeout_ms": 150, "max_share": 0.5}
ROUTE_ALL = {"margin_threshold": 1.0, "timeout_ms": 150, "max_share": 0.25}
QUEUE = 4


def _make(tmp, home, name: str, routing_: dict | None):
    out = tmp / f"{name}.lbundle"
    _bundle.build(
        SC.models["candidate"],
        out,
        name=name,
        version="1.0.0",
        compute={"health_decisions": 20},
        created=CREATED,
        routing=routing_,
    )
    return _bundle.sign(out, home / "keys" / "author.key")


@pytest.fixture(scope="module")
def olab(tmp_path_factory, mosquitto_available):
    home = tmp_path_factory.mktemp("olab")
    start_lab(home, oracle={"concurrency": 1, "queue": QUEUE}, device_options={"window_seconds": 0.3})
    pids = lab.lab_pids(home)
    try:
        keys.new_key(home, "author")
        keys.trust(home, home / "keys" / "author.pub")
        tmp = tmp_path_factory.mktemp("obundles")
        bundles = {
            "dev-0": _make(tmp, home, "routed", ROUTE),
            "dev-1": _make(tmp, home, "plain", None),
            "dev-2": _make(tmp, home, "routeall", ROUTE_ALL),
        }
        with Lab.connect(home=home) as sdk:
            for dev, path in bundles.items():
                digest = _bundle.read(path).digest
                sdk.install(dev, path)
                wait_for(
                    lambda d=dev, g=digest: sdk.states[d]["bundle"] == g and sdk.states[d]["health"] is None,
                    30,
                    f"{dev} running its bundle",
                )
                sdk.grant_consent(dev)
            yield home, sdk
    finally:
        lab.down(home)
        from lab_hardware.home import pid_alive

        assert not [p for p in pids if pid_alive(p)], "lab left processes behind"


def _ids(home):
    return json.loads((home / "secrets" / "identities.json").read_text())


class Asker:
    """A device identity's own MQTT 5 client asking the oracle directly (what a device does)."""

    def __init__(self, home, device: str):
        desc = lab.descriptor(home)
        user = broker.device_user("default", device)
        self.request = topics.oracle_request("default", device)
        self.response = topics.oracle_response("default", device)
        self.got: dict[bytes, dict] = {}
        self.cond = threading.Condition()
        self.c = mqtt.client(username=user, password=_ids(home)[user], protocol=paho.MQTTv5)
        self.c.on_message = self._on_message
        mqtt.connect(self.c, desc["broker"]["host"], desc["broker"]["port"])
        mqtt.subscribe_wait(self.c, self.response, qos=0)
        self.n = 0

    def _on_message(self, cl, ud, msg):
        corr = bytes(msg.properties.CorrelationData) if hasattr(msg.properties, "CorrelationData") else b""
        with self.cond:
            self.got[corr] = json.loads(msg.payload)
            self.cond.notify_all()

    def send(self, payload: bytes, *, response_topic: str | None = None) -> bytes:
        self.n += 1
        corr = f"t{self.n}".encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic or self.response
        props.CorrelationData = corr
        self.c.publish(self.request, payload, qos=0, properties=props)
        return corr

    def answer(self, corr: bytes, timeout: float = 10.0) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: corr in self.got, timeout), f"no oracle answer to {corr!r}"
            return self.got[corr]

    def close(self):
        mqtt.stop(self.c)


def _good(n: int = 1) -> bytes:
    x = features.extract_batch([r["text"] for r in SC.stream(n)])
    return routing.request_payload(x, 1000)


def _oracle_answers(home) -> None:
    """Wait until the oracle (perhaps just restarted) answers a good request."""
    a = Asker(home, "dev-1")
    try:

        def ok() -> bool:
            corr = a.send(_good())
            with a.cond:
                a.cond.wait_for(lambda: corr in a.got, 1.0)
            return bool(a.got.get(corr, {}).get("ok"))

        wait_for(ok, 30, "the oracle to answer")
    finally:
        a.close()


def _windows_with(sdk, dev: str | None, pred, timeout: float, what: str) -> dict:
    for w in sdk.telemetry(dev, timeout=timeout):
        if pred(w):
            return w
    raise AssertionError(f"no window of {dev} with {what} within {timeout:.0f} s")


def test_routed_decisions_are_answered_and_windows_report_them(olab):
    home, sdk = olab
    w = _windows_with(sdk, "dev-0", lambda w: (w.get("oracle") or {}).get("answered", 0) > 0, 30, "answered routes")
    o = w["oracle"]
    assert 0 < o["share"] <= 1 and o["routed"] == o["answered"] + sum(o["fallback"].values())
    assert sum(o["latency_ms"]["counts"]) == o["answered"] and o["latency_ms"]["p99"] > 0
    assert set(o["by_intent"]) == set(SC.intents)
    assert sum(v["answered"] for v in o["by_intent"].values()) == o["answered"]
    assert sum(v["diverged"] for v in o["by_intent"].values()) == o["diverged"]
    assert set(w) <= ALLOWED_FIELDS
    # no routing without a manifest that declares it: dev-1's windows have no oracle field
    w1 = sdk.next_window("dev-1", timeout=10)
    assert "oracle" not in w1
    st = lab.status(home)
    o = st["oracle"]
    assert o["enabled"] and o["alive"] and o["queue_limit"] == QUEUE and o["served"] > 0
    assert {"queue_depth", "shed", "refused", "busy"} <= set(o)
    dev0 = next(d for d in st["devices"] if d["name"] == "dev-0")
    assert dev0["routing"]["answered"] > 0 and next(d for d in st["devices"] if d["name"] == "dev-1")["routing"] is None
    cli = subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and json.loads(cli.stdout)["oracle"]["enabled"] is True


def test_the_oracle_flags_the_candidates_defect_as_divergence(olab):
    """The candidate over-predicts 'call'; the oracle does not: over routed decisions (dev-0
    and dev-2 both run it), the edge's 'call' decisions diverge from the oracle more than the
    others do."""
    home, sdk = olab
    by: dict[str, dict[str, int]] = {i: {"answered": 0, "diverged": 0} for i in SC.intents}

    def enough(w) -> bool:
        for k, v in (w.get("oracle") or {}).get("by_intent", {}).items():
            by[k]["answered"] += v["answered"]
            by[k]["diverged"] += v["diverged"]
        return by["call"]["answered"] >= 30

    _windows_with(sdk, None, enough, 90, "30 routed 'call' decisions")
    call = by["call"]["diverged"] / by["call"]["answered"]
    rest_a = sum(v["answered"] for k, v in by.items() if k != "call")
    rest = sum(v["diverged"] for k, v in by.items() if k != "call") / max(1, rest_a)
    assert call > rest, by


def test_routing_respects_max_share(olab):
    home, sdk = olab
    total = {"decisions": 0, "routed": 0}

    def enough(w) -> bool:
        total["decisions"] += w["decisions"]
        total["routed"] += (w.get("oracle") or {}).get("routed", 0)
        return total["decisions"] >= 300

    _windows_with(sdk, "dev-2", enough, 60, "300 decisions")
    # every decision is a candidate (threshold 1.0): the share budget is what binds
    assert total["routed"] <= ROUTE_ALL["max_share"] * total["decisions"] + 2, total
    assert total["routed"] >= 0.8 * ROUTE_ALL["max_share"] * total["decisions"], total


def _strings(v) -> list[str]:
    """Every string (keys included) inside a decoded JSON value."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for k, x in v.items() for s in [k, *_strings(x)]]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return []


def test_requests_carry_hashed_features_never_text(olab):
    home, sdk = olab
    obs = Observer(home, topics.oracle_request("default", "+"))
    try:
        reqs = wait_for(lambda: [d for t, d in obs.raw() if t.endswith("/dev-0")][:5], 30, "dev-0's requests")
    finally:
        obs.close()
    texts = {r["text"] for r in SC.stream(2000)}
    for req in reqs:
        assert isinstance(req, dict) and set(req) == {"schema", "features", "rows", "timeout_ms"}
        assert set(_strings(req["rows"])) <= {"i", "v"}  # only numbers under the row keys
        assert req["schema"] == topics.SCHEMA_ORACLE_REQUEST and req["features"] == features.SCHEMA
        assert not texts & {req["schema"], req["features"]}
        for row in req["rows"]:
            assert all(0 <= i < features.DIM for i in row["i"]) and len(row["i"]) == len(row["v"])


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not json", "payload is not valid JSON"),
        (b'{"schema": "livelab.oracle.request/v9"}', "unknown request schema"),
        (
            json.dumps(
                {"schema": topics.SCHEMA_ORACLE_REQUEST, "features": features.SCHEMA, "text": "call mom"}
            ).encode(),
            "unknown request key 'text'",
        ),
        (
            json.dumps(
                {"schema": topics.SCHEMA_ORACLE_REQUEST, "features": features.SCHEMA, "rows": [{"i": [600], "v": [1]}]}
            ).encode(),
            "indices must be distinct integers in [0, 512)",
        ),
        (
            json.dumps({"schema": topics.SCHEMA_ORACLE_REQUEST, "features": features.SCHEMA, "rows": []}).encode(),
            "'rows' must be a list of 1-256",
        ),
    ],
)
def test_bad_request_is_refused_with_one_line_reason_and_oracle_keeps_serving(olab, payload, reason):
    home, sdk = olab
    _oracle_answers(home)
    before = lab.status(home)["oracle"]["refused"]
    a = Asker(home, "dev-1")
    try:
        bad = a.answer(a.send(payload))
        assert bad["ok"] is False and bad["reason"].startswith("refused: ") and reason in bad["reason"], bad
        assert "\n" not in bad["reason"] and bad["schema"] == topics.SCHEMA_ORACLE_RESPONSE
        good = a.answer(a.send(_good(3)))
        assert good["ok"] is True and len(good["labels"]) == 3 and len(good["probabilities"][0]) == len(SC.intents)
    finally:
        a.close()
    wait_for(lambda: lab.status(home)["oracle"]["refused"] > before, 10, "the refusal counted in status")


def test_oracle_answers_only_on_the_askers_own_response_topic(olab):
    home, sdk = olab
    _oracle_answers(home)
    a = Asker(home, "dev-1")
    try:
        resp = a.answer(a.send(_good(), response_topic=topics.oracle_response("default", "dev-0")))
        assert (
            resp["ok"] is False
            and "ResponseTopic must be livelab/default/control/oracle/response/dev-1" in resp["reason"]
        )
    finally:
        a.close()


def test_nobody_but_the_oracle_answers_and_devices_ask_only_for_themselves(olab):
    home, sdk = olab
    ids = _ids(home)
    learner = {"username": "learner.default", "password": ids["learner.default"]}
    resp0 = topics.oracle_response("default", "dev-0")
    fake = b'{"schema":"livelab.oracle.response/v1","ok":true,"labels":[3]}'
    assert publish_raw(home, resp0, fake, v5=True, **learner).value == 0x87  # learner cannot answer
    assert publish_raw(home, topics.oracle_request("default", "dev-0"), _good(), v5=True, **learner).value == 0x87
    dev1 = broker.device_user("default", "dev-1")
    as_dev1 = {"username": dev1, "password": ids[dev1]}
    assert publish_raw(home, resp0, fake, v5=True, **as_dev1).value == 0x87  # a device cannot answer another
    assert publish_raw(home, topics.oracle_request("default", "dev-0"), _good(), v5=True, **as_dev1).value == 0x87
    # nor read another device's answers: the broker grants the subscription but delivers nothing
    desc = lab.descriptor(home)
    got: list[str] = []
    a = Asker(home, "dev-1")
    a.c.on_message = lambda cl, ud, m: (got.append(m.topic), Asker._on_message(a, cl, ud, m))
    mqtt.subscribe_wait(a.c, topics.oracle_response("default", "+"), qos=0)
    obs = Observer(home, resp0)
    try:
        # the oracle answered dev-0 after that subscription, then dev-1 (one publisher: in order)
        wait_for(lambda: obs.raw(), 30, "an answer to dev-0")
        assert a.answer(a.send(_good()))["ok"] is True
        assert got and resp0 not in got and set(got) == {a.response}
    finally:
        obs.close()
        a.close()
    assert desc


def test_flood_beyond_the_limit_is_shed_with_a_reason_and_devices_fall_back(olab):
    home, sdk = olab
    _oracle_answers(home)
    start = sdk.states["dev-0"]["routing"]["fallback"]
    fell0 = start["shed"] + start["timeout"]
    a = Asker(home, "dev-1")
    big = _good(64)
    sent: list[bytes] = []
    try:

        def flooded() -> bool:
            sent.extend(a.send(big) for _ in range(100))
            fb = sdk.states["dev-0"]["routing"]["fallback"]
            shed = [r for r in list(a.got.values()) if not r.get("ok")]
            return bool(shed) and fb["shed"] + fb["timeout"] > fell0

        wait_for(flooded, 90, "shed answers to the flood and a fallback on dev-0", interval=0.01)
        shed = [r for r in list(a.got.values()) if not r.get("ok")]
        assert all(r["reason"].startswith("shed: ") and "\n" not in r["reason"] for r in shed), shed[:3]
        assert any(r["reason"].startswith(f"shed: queue full ({QUEUE} waiting") for r in shed), shed[:3]
    finally:
        a.close()
    st = wait_for(lambda: (s := lab.status(home)["oracle"]) and s["shed"] > 0 and s, 10, "shed counted in status")
    assert st["queue_max_seen"] <= QUEUE and st["alive"]
    _oracle_answers(home)  # and it still serves
    # dev-0 never stopped deciding, and it is answered again once the flood is over
    n0 = sdk.states["dev-0"]["decisions"]
    wait_for(lambda: sdk.states["dev-0"]["decisions"] > n0 + 20, 30, "dev-0 deciding")
    _windows_with(sdk, "dev-0", lambda w: (w.get("oracle") or {}).get("answered", 0) > 0, 30, "answered routes")


def test_oracle_killed_mid_stream_devices_fall_back_and_nothing_is_lost(olab):
    """dev-2 routes a quarter of its decisions.  The supervisor restarts a killed oracle within
    a fraction of a second, which a routed request may or may not fall into: the oracle is
    killed again (the supervisor's backoff grows each time) until dev-2 reports a timed-out
    route; then it must be answered again, with every decision of every window counted once."""
    home, sdk = olab
    _oracle_answers(home)
    stream = sdk.telemetry("dev-2", timeout=60)  # one cursor: every window of dev-2 from here on
    windows = []

    def until(pred, what: str, bound: float = 90.0) -> dict:
        deadline = time.monotonic() + bound
        for w in stream:
            windows.append(w)
            if pred(w):
                return w
            if time.monotonic() > deadline:
                break
        last = windows[-1]["oracle"] if windows else None
        raise AssertionError(f"no window of dev-2 with {what} within {bound:.0f} s (last: {last})")

    until(lambda w: w["oracle"]["answered"] > 0, "answered routes")
    old = lab.status(home)["oracle"]
    killed: list[int] = []

    def timed_out(w) -> bool:
        if w["oracle"]["fallback"]["timeout"] > 0:
            return True
        st = lab.status(home)["oracle"]
        if st["alive"] and st["pid"] not in killed:
            killed.append(st["pid"])
            os.kill(st["pid"], signal.SIGKILL)
        return False

    # routed requests find no oracle: they time out and the device keeps its own decisions
    dead = until(timed_out, "timed-out routes")
    assert killed and killed[0] == old["pid"]
    # the supervisor restarts the oracle, and routed decisions are answered again
    wait_for(lambda: (s := lab.status(home)["oracle"])["pid"] not in killed and s["alive"], 30, "the restart")
    assert lab.status(home)["oracle"]["restarts"] >= old["restarts"] + len(killed)
    until(lambda w: w["seq"] > dead["seq"] and w["oracle"]["answered"] > 0, "answers again")
    # nothing lost: dev-2's windows cover every decision, in order, each counted once
    assert [w["seq"] for w in windows] == list(range(windows[0]["seq"], windows[-1]["seq"] + 1))
    for prev, w in zip(windows, windows[1:]):
        assert w["first_decision"] == prev["last_decision"] + 1, (prev["seq"], w["seq"])
    for w in windows:
        assert w["decisions"] == w["last_decision"] - w["first_decision"] + 1 == sum(w["counts"].values())
        assert w["oracle"]["routed"] == w["oracle"]["answered"] + sum(w["oracle"]["fallback"].values())


def test_requests_cross_the_profiles_uplink(olab):
    """On the rpi4 profile's Wi-Fi uplink (12 ms latency, up to 6 ms jitter) a 5 ms timeout
    cannot be met: the request is never sent and the decisions fall back as a timeout; with an
    ample timeout the answer comes, and its round trip includes the uplink's latency."""
    home, sdk = olab
    _oracle_answers(home)
    desc, ids = lab.descriptor(home), _ids(home)
    user = broker.device_user("default", "dev-1")  # dev-1 does not route: its oracle client id is free
    ident = {"host": desc["broker"]["host"], "port": desc["broker"]["port"], "username": user, "password": ids[user]}
    rpi4 = profiles.load("rpi4").link
    r = routing.Router("default", "dev-1", ident, link=Link(rpi4, random.Random(0)))
    try:
        wait_for(lambda: r.ready, 10, "the router's connection")
        x = features.extract_batch([SC.stream(1)[0]["text"]])
        labels, probs = Model(SC.models["candidate"]).predict(x)
        out, _, route = r.route(x, labels, probs, {"margin_threshold": 1.0, "timeout_ms": 5, "max_share": 1.0})
        assert route.fallback == "timeout" and r.sent == 0 and out.tolist() == labels.tolist()
        _, _, route = r.route(x, labels, probs, {"margin_threshold": 1.0, "timeout_ms": 1000, "max_share": 1.0})
        assert route.fallback is None and r.sent == 1 and route.rtt_ms >= rpi4.latency_ms
        assert route.codes[0] in (routing.AGREED, routing.DIVERGED)
    finally:
        r.close()


def test_up_with_oracle_refuses_a_scenario_without_one(tmp_path):
    sc = SC.materialize(tmp_path / "scenario")
    sc.pop("oracle_model")
    with pytest.raises(lab.LabError, match="has no oracle model"):
        lab.up(tmp_path / "home", scenario=sc, oracle=True)
    with pytest.raises(lab.LabError, match="unknown oracle option 'threads'"):
        lab.up(tmp_path / "home", scenario=SC.materialize(tmp_path / "s2"), oracle={"threads": 2})
    assert time.time()  # (nothing started: no lab to take down)
