"""The lab oracle: a central, stateless scoring service that devices route ambiguous decisions to.

    python -m lab_hardware.runtime.oracle --home DIR     (run by the supervisor: 'livelab up --oracle')

Why a service beside the devices rather than a bigger edge model: a device stays decisive for
the easy cases (its own model, its own CPU) and asks for a second opinion only when its margin
is thin (``routing`` in the bundle manifest, see ``lab_hardware.runtime.device``).  The oracle
runs the scenario's central model (``scenario.oracle_model``: trained on four times the data,
with clean labels) on what the device sends, which is only the hashed feature vector of the
scrubbed input, never text.

Protocol (MQTT 5 request/response, QoS 0 both ways: a lost message is a timeout, and a device
falls back to its own decision on a timeout anyway):

* a device publishes ``livelab/<ns>/control/oracle/request/<device>`` (the broker lets only that
  device write it) with ``ResponseTopic`` = its own ``.../control/oracle/response/<device>`` (the
  only one the oracle answers on) and ``CorrelationData``; the payload is
  ``{"schema": "livelab.oracle.request/v1", "features": <features schema>, "timeout_ms": T,
  "rows": [{"i": [indices], "v": [values]}, ...]}`` (sparse feature vectors);
* the oracle answers ``{"schema": "livelab.oracle.response/v1", "ok": true, "model": <digest>,
  "labels": [...], "probabilities": [[...], ...]}`` or ``{"ok": false, "reason": "<one line>"}``
  with the same ``CorrelationData``.

Stateless and bounded: ``concurrency`` workers take requests from a queue of at most ``queue``
requests; a request that finds the queue full is *shed* at once (``ok: false``, reason
``shed: ...``), and one that waited longer than its own ``timeout_ms`` is shed unanswered-late
rather than scored for nobody.  A malformed request is refused with a one-line reason and the
oracle keeps serving.  Counters and the queue depth go to ``run/oracle.json`` every 0.2 s, which
``livelab status --json`` shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lab_hardware import digest as _digest
from lab_hardware import features, mqtt, signals, topics
from lab_hardware import home as _home
from lab_hardware.runtime import broker as _broker

log = logging.getLogger("livelab.oracle")

NAME = "oracle"
READY_FILE = "run/oracle.ready"
STATS_FILE = "run/oracle.json"
#: Defaults of the lab config's ``oracle`` object: one worker (one core), a short queue.
DEFAULTS = {"concurrency": 1, "queue": 64}
#: Largest request payload and rows per request the oracle reads.
REQUEST_LIMIT = 512 * 1024
MAX_ROWS = 256
#: Longest CorrelationData echoed back.
CORRELATION_LIMIT = 64


class RequestError(ValueError):
    """A request the oracle refuses; the message is the one-line reason sent back."""


def service(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The supervisor service entry that runs the oracle (``lab.up(oracle=True)`` adds it)."""
    spec: dict[str, Any] = {
        "name": NAME,
        "argv": ["{python}", "-m", "lab_hardware.runtime.oracle", "--home", "{home}"],
        "ready_file": READY_FILE,
    }
    if options:
        spec["env"] = {"LIVELAB_ORACLE_OPTIONS": json.dumps(check_options(options), sort_keys=True)}
    return spec


def check_options(options: dict[str, Any]) -> dict[str, int]:
    """Concurrency and queue length, validated (ValueError with a one-line reason)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown oracle option {unknown[0]!r}; known: {', '.join(DEFAULTS)}")
    out = dict(DEFAULTS)
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ValueError(f"oracle option {key!r} must be an integer between 1 and 4096")
        out[key] = value
    return out


def parse_request(payload: bytes) -> tuple[np.ndarray, float | None]:
    """The feature matrix and the request's own timeout (ms) of a request payload, or RequestError."""
    try:
        msg = topics.decode(payload, limit=REQUEST_LIMIT)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    if msg.get("schema") != topics.SCHEMA_ORACLE_REQUEST:
        raise RequestError(
            f"unknown request schema {str(msg.get('schema'))[:64]!r}; expected {topics.SCHEMA_ORACLE_REQUEST}"
        )
    if msg.get("features") != features.SCHEMA:
        raise RequestError(f"'features' must be {features.SCHEMA!r} (hashed feature vectors, never text)")
    extra = sorted(set(msg) - {"schema", "features", "rows", "timeout_ms"})
    if extra:
        raise RequestError(f"unknown request key {extra[0][:64]!r}: a request carries feature vectors only")
    timeout = msg.get("timeout_ms")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60_000
    ):
        raise RequestError("'timeout_ms' must be a number of milliseconds in (0, 60000]")
    rows = msg.get("rows")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS:
        raise RequestError(f"'rows' must be a list of 1-{MAX_ROWS} sparse feature vectors")
    x = np.zeros((len(rows), features.DIM), dtype=np.float32)
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != {"i", "v"}:
            raise RequestError(f"row {n} must be an object with 'i' (indices) and 'v' (values)")
        idx, val = row["i"], row["v"]
        if not isinstance(idx, list) or not isinstance(val, list) or len(idx) != len(val):
            raise RequestError(f"row {n}: 'i' and 'v' must be lists of the same length")
        if not all(type(i) is int and 0 <= i < features.DIM for i in idx) or len(set(idx)) != len(idx):
            raise RequestError(f"row {n}: indices must be distinct integers in [0, {features.DIM})")
        if not all(type(v) in (int, float) and math.isfinite(v) for v in val):
            raise RequestError(f"row {n}: values must be finite numbers")
        x[n, idx] = val
    return x, (float(timeout) if timeout is not None else None)


class Oracle:
    """The scoring core: a queue, workers and counters; MQTT is plugged in by ``run``."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        concurrency: int = 1,
        queue_max: int = 64,
        publish: Callable[[str, bytes, bytes | None], None] | None = None,
    ):
        from lab_hardware.inference import Model  # here: importing onnxruntime is for the server only

        self.model = Model(model_path)
        self.digest = _digest.file_digest(model_path)
        self.concurrency = concurrency
        self.queue_max = queue_max
        self.q: queue.Queue = queue.Queue(maxsize=queue_max)
        self.publish = publish  # (topic, payload, correlation) -> None
        self.lock = threading.Lock()
        self.served = 0
        self.rows = 0
        self.shed: dict[str, int] = {}
        self.refused = 0
        self.busy = 0
        self.queue_max_seen = 0
        self.service_ms: list[float] = []  # recent time from arrival to answer, for p50/p99
        self.stop_event = threading.Event()
        self.workers = [
            threading.Thread(target=self._work, name=f"oracle-worker-{i}", daemon=True) for i in range(concurrency)
        ]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    # ---- requests (called on the MQTT network thread) ------------------------------------
    def submit(self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        """Take one request: refuse it, shed it (queue full) or queue it for a worker."""
        t0 = time.perf_counter()
        who = topics.parse_oracle_request(topic)
        if who is None:
            self._refuse(None, None, f"not an oracle request topic: {topic[:120]!r}")
            return
        ns, device = who
        own = topics.oracle_response(ns, device)
        if correlation is not None and len(correlation) > CORRELATION_LIMIT:
            correlation = None
        if response_topic != own:
            # answer only on the asking device's own response topic, never where a request points
            self._refuse(own, correlation, f"ResponseTopic must be {own}")
            return
        if correlation is None:
            self._refuse(own, None, f"CorrelationData of 1-{CORRELATION_LIMIT} bytes is required")
            return
        if self.q.full():  # shed before any work: a flood must cost as little as possible
            self._shed(own, correlation, f"shed: queue full ({self.queue_max} waiting, {self.busy} serving)")
            return
        try:
            x, timeout_ms = parse_request(payload)
        except RequestError as exc:
            self._refuse(own, correlation, str(exc))
            return
        try:
            self.q.put_nowait((t0, own, correlation, x, timeout_ms))
        except queue.Full:
            self._shed(own, correlation, f"shed: queue full ({self.queue_max} waiting, {self.busy} serving)")
            return
        depth = self.q.qsize()
        if depth > self.queue_max_seen:
            self.queue_max_seen = depth

    def _refuse(self, topic: str | None, correlation: bytes | None, reason: str) -> None:
        with self.lock:
            self.refused += 1
        log.warning("refused request: %s", reason)
        if topic is not None:
            self._answer(topic, correlation, {"ok": False, "reason": f"refused: {reason}"})

    def _shed(self, topic: str, correlation: bytes, reason: str) -> None:
        key = reason.split(" (")[0]
        with self.lock:
            self.shed[key] = self.shed.get(key, 0) + 1
            total = sum(self.shed.values())
        if total == 1 or total % 1000 == 0:
            log.warning("%s (%d shed so far)", reason, total)
        self._answer(topic, correlation, {"ok": False, "reason": reason})

    def _answer(self, topic: str, correlation: bytes | None, body: dict[str, Any]) -> None:
        if self.publish is not None:
            self.publish(topic, topics.encode({"schema": topics.SCHEMA_ORACLE_RESPONSE, **body}), correlation)

    # ---- workers -------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.stop_event.is_set():
            try:
                t0, topic, correlation, x, timeout_ms = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            waited = (time.perf_counter() - t0) * 1000
            if timeout_ms is not None and waited > timeout_ms:
                self._shed(topic, correlation, f"shed: expired ({waited:.0f} ms queued, timeout {timeout_ms:g} ms)")
                continue
            with self.lock:
                self.busy += 1
            try:
                labels, probs = self.model.predict(x)
                body = {
                    "ok": True,
                    "model": self.digest,
                    "labels": labels.tolist(),
                    "probabilities": [[float(p) for p in row] for row in probs],
                }
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the service
                body = {"ok": False, "reason": f"error: {str(exc).splitlines()[0][:200] if str(exc) else exc}"}
            self._answer(topic, correlation, body)
            ms = (time.perf_counter() - t0) * 1000
            with self.lock:
                self.busy -= 1
                if body["ok"]:
                    self.served += 1
                    self.rows += len(x)
                self.service_ms.append(ms)
                if len(self.service_ms) > 4096:
                    del self.service_ms[:2048]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.service_ms)
            shed = dict(self.shed)
            out = {
                "model": self.digest,
                "concurrency": self.concurrency,
                "queue_limit": self.queue_max,
                "queue_depth": self.q.qsize(),
                "queue_max_seen": self.queue_max_seen,
                "busy": self.busy,
                "served": self.served,
                "rows": self.rows,
                "shed": sum(shed.values()),
                "shed_by_reason": shed,
                "refused": self.refused,
            }
        if lat:
            out["service_ms"] = {
                "p50": round(lat[len(lat) // 2], 3),
                "p99": round(lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)], 3),
            }
        return out


def read_stats(home: str | os.PathLike) -> dict[str, Any] | None:
    """What the running oracle last wrote to ``run/oracle.json`` (None if nothing yet)."""
    try:
        return _home.read_json(Path(home) / STATS_FILE)
    except (OSError, ValueError):
        return None


def _credentials(cfg: dict[str, Any], home: Path) -> tuple[str | None, str | None]:
    b = cfg["broker"]
    if b.get("external"):
        return b.get("username"), b.get("password")
    ids = _home.read_json(home / "secrets" / "identities.json")
    return _broker.ORACLE_USER, ids[_broker.ORACLE_USER]


def run(home: Path, stop: threading.Event) -> int:
    cfg = _home.read_json(home / "config.json")
    model_path = (cfg.get("scenario") or {}).get("oracle_model")
    if not model_path:
        log.error(
            "scenario %r has no oracle model ([oracle] in its scenario.toml)", cfg.get("scenario", {}).get("name")
        )
        return 2
    opts = check_options(json.loads(os.environ.get("LIVELAB_ORACLE_OPTIONS") or "{}"))
    user, password = _credentials(cfg, home)
    c = mqtt.client(f"oracle.{os.getpid()}", username=user, password=password, protocol=paho.MQTTv5)

    def publish(topic: str, payload: bytes, correlation: bytes | None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        c.publish(topic, payload, qos=0, properties=props)

    oracle = Oracle(model_path, concurrency=opts["concurrency"], queue_max=opts["queue"], publish=publish)
    subscribed = threading.Event()

    def on_message(cl: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        oracle.submit(
            msg.topic,
            bytes(msg.payload),
            getattr(props, "ResponseTopic", None),
            getattr(props, "CorrelationData", None),
        )

    c.on_message = on_message
    # (re)connecting subscribes again: a broker restart must not leave the oracle deaf
    c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(topics.ORACLE_REQUESTS, qos=0)
    c.on_subscribe = lambda cl, ud, mid, rcs, pr: subscribed.set()
    b = cfg["broker"]
    mqtt.connect(c, b["host"], int(b["port"]))
    oracle.start()
    try:
        if not subscribed.wait(10):
            log.error("the broker did not acknowledge the oracle's subscription")
            return 1
        stats_path = home / STATS_FILE
        _home.write_json(stats_path, {"pid": os.getpid(), "time": time.time(), **oracle.stats()})
        (home / READY_FILE).write_text(str(os.getpid()))
        log.info(
            "oracle up: model %s, %d worker(s), queue %d", oracle.digest[:12], oracle.concurrency, oracle.queue_max
        )
        while not stop.wait(0.2):
            _home.write_json(stats_path, {"pid": os.getpid(), "time": time.time(), **oracle.stats()})
        return 0
    finally:
        oracle.stop_event.set()
        mqtt.stop(c)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab_hardware.runtime.oracle",
        description="Run the lab oracle (started by the lab supervisor: 'livelab up --oracle').",
    )
    p.add_argument("--home", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signals.route({signal.SIGTERM: stop.set, signal.SIGINT: stop.set})
    try:
        return run(Path(args.home), stop)
    except (OSError, ValueError, KeyError, mqtt.ConnectError) as exc:
        log.error("oracle cannot start: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
