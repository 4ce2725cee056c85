"""A device's side of the lab oracle: route the ambiguous decisions, fall back on its own.

Why this shape: the edge model stays the decision-maker of record (offline-first).  Only when
the active bundle's manifest declares ``routing`` does a device ask the oracle, and only for
decisions whose margin (top-1 minus top-2 probability) is under ``margin_threshold``, at most
``max_share`` of its decisions, sending the hashed feature vectors of the scrubbed inputs and
nothing else.  It waits at most ``timeout_ms`` (wall clock) for the answer; without one (oracle
dead, shed, refused, broker away) it keeps its own decision.  A dead oracle costs a device at
most one timeout per routed batch, never a decision.

Requests cross the profile's simulated uplink (``Link``: latency, jitter, loss, bandwidth) as
telemetry does, on a link of their own; the answer comes back unshaped, as telemetry's acks do.
The oracle traffic uses its own MQTT 5 connection (paho's network thread), so the device's main
connection (MQTT 3.1.1, persistent session, single-threaded) is the same with or without routing.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lab_hardware import features, mqtt, topics
from lab_hardware.runtime.link import Link
from lab_hardware.window import ORACLE_FALLBACKS

log = logging.getLogger("livelab.device.routing")

#: What a routed decision became (``Route.codes``): not routed, the oracle agreed, the oracle
#: disagreed (its answer is used), no usable answer (the edge decision is kept).
NOT_ROUTED, AGREED, DIVERGED, FELL_BACK = 0, 1, 2, 3
FALLBACKS = ORACLE_FALLBACKS


def encode_rows(x: np.ndarray) -> list[dict[str, Any]]:
    """Feature vectors as sparse rows (a few dozen non-zeros of 512): what a request carries.
    float32 values survive the JSON round trip exactly (repr of the float64 of a float32)."""
    rows = []
    for r in np.asarray(x, dtype=np.float32):
        idx = np.flatnonzero(r)
        rows.append({"i": idx.tolist(), "v": [float(v) for v in r[idx]]})
    return rows


def request_payload(x: np.ndarray, timeout_ms: float | None = None) -> bytes:
    """A ``livelab.oracle.request/v1`` payload: hashed feature vectors only, never text."""
    body: dict[str, Any] = {"schema": topics.SCHEMA_ORACLE_REQUEST, "features": features.SCHEMA, "rows": encode_rows(x)}
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    return topics.encode(body)


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each decision (1.0 for a single-class model)."""
    n, k = probs.shape
    if k < 2:
        return np.ones(n, dtype=np.float32)
    part = np.partition(probs, k - 2, axis=1)
    return part[:, k - 1] - part[:, k - 2]


@dataclass
class Route:
    """What routing did to one batch."""

    codes: list[int]  # per decision: NOT_ROUTED, AGREED, DIVERGED or FELL_BACK
    edge: list[int]  # the edge model's own labels
    rtt_ms: float | None  # the request's round trip (None: nothing sent or no answer)
    fallback: str | None  # why the routed decisions kept the edge decision (one of FALLBACKS)


class _Pending:
    __slots__ = ("event", "response")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: dict | None = None


class Router:
    """The device's oracle client: one MQTT 5 connection, one outstanding request at a time."""

    def __init__(self, namespace: str, device: str, broker: dict[str, Any], *, link: Link | None = None):
        # the profile's uplink (latency, jitter, loss, bandwidth) delays each request as it delays
        # telemetry; a request the link cannot deliver within the timeout is never sent
        self.link = link if link is not None and not link.perfect else None
        self.sent = 0
        self.request_topic = topics.oracle_request(namespace, device)
        self.response_topic = topics.oracle_response(namespace, device)
        self.ready = False
        self.pending: dict[bytes, _Pending] = {}
        self.seq = itertools.count(1)
        self.credit = 0.0
        self.totals: dict[str, Any] = {
            "decisions": 0,
            "routed": 0,
            "answered": 0,
            "diverged": 0,
            "late": 0,
            "fallback": dict.fromkeys(FALLBACKS, 0),
        }
        c = mqtt.client(
            f"device.{namespace}.{device}.oracle"[:64],
            username=broker.get("username"),
            password=broker.get("password"),
            protocol=paho.MQTTv5,
        )
        c.on_connect = self._on_connect
        c.on_subscribe = lambda cl, ud, mid, rcs, pr: self._set_ready(not any(r.is_failure for r in rcs))
        c.on_disconnect = lambda *a: self._set_ready(False)
        c.on_message = self._on_message
        c.connect_async(broker["host"], int(broker["port"]), keepalive=15)
        c.loop_start()  # its own thread: paho reconnects by itself, the device never waits for it
        self.client = c

    def _set_ready(self, ok: bool) -> None:
        self.ready = ok

    def _on_connect(self, cl: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            cl.subscribe(self.response_topic, qos=0)

    def _on_message(self, cl: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        entry = self.pending.get(bytes(corr)) if corr is not None else None
        if entry is None:
            self.totals["late"] += 1  # an answer to a request already given up on
            return
        try:
            entry.response = topics.decode(bytes(msg.payload))
        except ValueError as exc:
            entry.response = {"ok": False, "reason": f"error: {exc}"}
        entry.event.set()

    def close(self) -> None:
        mqtt.stop(self.client)

    def summary(self) -> dict[str, Any]:
        t = self.totals
        return {**t, "fallback": dict(t["fallback"]), "connected": self.ready}

    def _ask(self, x: np.ndarray, timeout_ms: float) -> tuple[dict | None, float | None, str | None]:
        """(response, round trip ms, fallback reason) of one request."""
        if not self.ready:
            return None, None, "offline"
        t0 = time.perf_counter()
        payload = request_payload(x, timeout_ms)
        budget = timeout_ms / 1000.0
        if self.link is not None:
            now = time.time()
            uplink = self.link.delay(len(payload), now) - now
            if uplink >= budget:
                return None, None, "timeout"
            if uplink > 0:
                time.sleep(uplink)
        corr = next(self.seq).to_bytes(8, "big")
        entry = self.pending[corr] = _Pending()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = corr
        try:
            info = self.client.publish(self.request_topic, payload, qos=0, properties=props)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return None, None, "offline"
            self.sent += 1
            got = entry.event.wait(max(0.0, budget - (time.perf_counter() - t0)))
            rtt = (time.perf_counter() - t0) * 1000.0
        finally:
            self.pending.pop(corr, None)
        if not got or entry.response is None:
            return None, None, "timeout"
        resp = entry.response
        if not resp.get("ok"):
            reason = str(resp.get("reason", ""))
            kind = reason.split(":", 1)[0]
            return None, rtt, kind if kind in ("shed", "refused") else "error"
        labels, probs = resp.get("labels"), resp.get("probabilities")
        if not (isinstance(labels, list) and isinstance(probs, list) and len(labels) == len(probs) == len(x)):
            return None, rtt, "error"
        return resp, rtt, None

    def route(
        self, x: np.ndarray, labels: np.ndarray, probs: np.ndarray, routing: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, Route]:
        """The batch's final labels and probabilities, and what routing did.

        Candidates are the decisions under the margin threshold; the share budget is a credit of
        ``max_share`` per decision, capped at one unused decision, so over any run of batches
        routed <= max_share * decided + 1; when it binds, the lowest margins go first."""
        n = len(labels)
        edge = labels.tolist()
        self.totals["decisions"] += n
        m = margins(probs)
        cand = np.flatnonzero(m < float(routing["margin_threshold"]))
        self.credit += float(routing["max_share"]) * n
        take = min(len(cand), int(self.credit))
        self.credit = min(self.credit - take, 1.0)
        codes = [NOT_ROUTED] * n
        if take == 0:
            return labels, probs, Route(codes, edge, None, None)
        if take < len(cand):
            cand = np.sort(cand[np.argsort(m[cand], kind="stable")[:take]])
        self.totals["routed"] += take
        resp, rtt, fallback = self._ask(x[cand], float(routing["timeout_ms"]))
        if resp is None:
            self.totals["fallback"][fallback] += take
            for i in cand.tolist():
                codes[i] = FELL_BACK
            return labels, probs, Route(codes, edge, rtt, fallback)
        oracle_labels = np.asarray(resp["labels"], dtype=np.int64)
        oracle_probs = np.asarray(resp["probabilities"], dtype=np.float32)
        k = probs.shape[1]
        if oracle_probs.shape != (take, k) or ((oracle_labels < 0) | (oracle_labels >= k)).any():
            self.totals["fallback"]["error"] += take
            for i in cand.tolist():
                codes[i] = FELL_BACK
            return labels, probs, Route(codes, edge, rtt, "error")
        labels, probs = labels.copy(), probs.copy()
        diverged = oracle_labels != labels[cand]
        labels[cand] = oracle_labels
        probs[cand] = oracle_probs
        for i, d in zip(cand.tolist(), diverged.tolist()):
            codes[i] = DIVERGED if d else AGREED
        self.totals["answered"] += take
        self.totals["diverged"] += int(diverged.sum())
        return labels, probs, Route(codes, edge, rtt, None)
