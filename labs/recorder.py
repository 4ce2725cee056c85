"""The trusted recorder of learner events: the lab, not the learner's kernel, writes them.

Why: time-to-signal is only honest if the events it counts cannot be written by the learner
being measured.  A learner's kernel has no database credentials and no control identity; its
SDK *announces* what happened (``module-opened``, ``lab-connected``, ``telemetry-first-seen``)
on ``livelab/<namespace>/learner/events``, which the broker lets only that namespace's
learner publish.  This process -- a lab service the supervisor runs (``config.json``
``services``), subscribed with the control identity -- turns each announcement into a
stored event:

* the ``learner`` is the namespace's registered owner (``config.json``: the learner a
  namespace was added for, or the lab's owner for its own namespace), never a payload
  field; announcements on namespaces without an owner (grading jobs) are dropped;
* the ``time`` is the recorder's own clock at arrival (a kernel cannot backdate an opening);
* only the SDK's kinds are accepted here: checks and completions come from the grader;
* the learner's registered team wins over the payload's.

A persistent MQTT session (fixed client id, QoS 1) keeps announcements made while the
recorder restarts; the store's idempotent ids (key: the SDK's kernel session) make a
redelivered message harmless.

    python -m labs.recorder --home DIR
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lab_hardware import home as _home
from lab_hardware import mqtt, signals, topics

log = logging.getLogger("livelab.recorder")

#: What a learner's kernel may announce (the rest is the grader's to write).
SDK_KINDS = ("module-opened", "lab-connected", "telemetry-first-seen")
#: Payload fields copied into the event (everything else is the recorder's).
_COPIED = ("module", "course", "version")
#: File the recorder writes once subscribed (the supervisor waits for it before "ready").
READY_FILE = "run/recorder.ready"
TOPIC = "livelab/+/learner/events"


def service(name: str = "recorder") -> dict[str, Any]:
    """The supervisor service entry that runs the recorder (``lab.up(services=[...])``)."""
    return {"name": name, "argv": ["{python}", "-m", "labs.recorder", "--home", "{home}"], "ready_file": READY_FILE}


def owners(cfg: dict[str, Any]) -> dict[str, str]:
    """Namespace -> the learner it belongs to, from the lab's config (the lab's truth)."""
    out = {ns: spec["learner"] for ns, spec in cfg.get("namespaces", {}).items() if spec.get("learner")}
    own = (cfg.get("shape") or {}).get("namespace")
    if own and cfg.get("owner") and own not in out:
        out[own] = cfg["owner"]
    return out


def event_from(
    topic: str, payload: bytes, cfg: dict[str, Any], teams: dict[str, str], now: float | None = None
) -> dict[str, Any] | None:
    """The event to store for one announcement, or None (with the reason logged) to drop it."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != topics.ROOT or parts[2:] != ["learner", "events"]:
        return None
    ns = parts[1]
    learner = owners(cfg).get(ns)
    if learner is None:
        log.debug("announcement on %s dropped: namespace %s has no registered learner", topic, ns)
        return None
    try:
        data = topics.decode(payload, limit=64 * 1024)
    except ValueError as exc:
        log.warning("announcement on %s refused: %s", topic, exc)
        return None
    kind = data.get("kind")
    if kind not in SDK_KINDS:
        log.warning("announcement on %s refused: kind %r is not the SDK's to announce", topic, kind)
        return None
    if not isinstance(data.get("module"), str) or not data["module"]:
        log.warning("announcement on %s refused: no module", topic)
        return None
    ev: dict[str, Any] = {k: str(data[k]) for k in _COPIED if isinstance(data.get(k), (str, int, float))}
    session = str(data.get("session") or "")[:64]
    team = teams.get(learner) or (data.get("team") if isinstance(data.get("team"), str) else "") or ""
    ev.update(
        {
            "kind": kind,
            "learner": learner,
            "team": team[:64],
            "source": "sdk",
            "time": time.time() if now is None else now,
            "key": f"session:{session}",
            "detail": {"namespace": ns, "recorded_by": "recorder"},
        }
    )
    return ev


class Recorder:
    """Subscribes to every namespace's learner announcements and writes them to the store."""

    def __init__(self, home: str | os.PathLike, *, events_url: str | None = None):
        self.home = _home.resolve(home)
        self.events_url = events_url
        self._cfg_mtime = 0.0
        self.cfg: dict[str, Any] = {}
        self.teams: dict[str, str] = {}
        self._reload()
        self._store = None
        self._lock = threading.Lock()
        self.written = 0
        self.stopping = threading.Event()
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        cred = _home.read_json(self.home / "secrets" / "control.json")
        self.client = mqtt.client(
            f"recorder.{digest}", username=cred["username"], password=cred["password"], clean=False
        )
        self._queue: queue.Queue = queue.Queue()
        self._subscribed = threading.Event()
        self.client.on_message = self._on_message
        # (re)connecting (re)subscribes; the SUBACK says the recorder listens
        self.client.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = self._on_subscribe
        # acknowledge an announcement only once it is stored: a recorder killed in between
        # gets it again from its persistent session (the store's ids make that harmless)
        self.client.manual_ack_set(True)

    def _reload(self) -> None:
        """Re-read config.json (and the learners' teams) when it changed: learners come and go."""
        path = self.home / "config.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._cfg_mtime:
            return
        self.cfg = _home.read_json(path)
        self._cfg_mtime = mtime
        try:
            reg = _home.read_json(self.home / "learners.json")
            self.teams = {n: (e.get("team") or "") for n, e in reg.get("learners", {}).items()}
        except (OSError, ValueError):
            self.teams = {}

    def _store_open(self):
        if self._store is None:
            from labs.learning_events import EventStore

            self._store = EventStore(self.events_url or self.home)
        return self._store

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(code.is_failure for code in reason_codes):
            log.error("the broker refused the recorder's subscription to %s", TOPIC)
            return
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        # arrival time is the event's time; the store is written off paho's network thread
        self._queue.put((time.time(), msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def _write(self, arrived: float, topic: str, payload: bytes, mid: int = 0, qos: int = 0) -> None:
        with self._lock:
            self._reload()
            ev = event_from(topic, payload, self.cfg, self.teams, now=arrived)
            if ev is not None:
                try:
                    self.written += self._store_open().write([ev])
                except Exception as exc:  # noqa: BLE001 - a refused event is logged; the lab keeps serving
                    log.warning("event from %s not stored: %s", topic, str(exc).splitlines()[0])
        if qos:
            self.client.ack(mid, qos)

    def run(self, ready_timeout: float = 120.0) -> None:
        """Record until ``stopping`` is set; writes the ready file once subscribed."""
        self._store_open()  # open (and create) the store before the first announcement arrives
        b = self.cfg["broker"]
        mqtt.connect(self.client, b["host"], int(b["port"]))
        try:
            if not self._subscribed.wait(ready_timeout):
                raise mqtt.ConnectError(f"the broker did not acknowledge the subscription to {TOPIC}")
            ready = self.home / READY_FILE
            ready.parent.mkdir(parents=True, exist_ok=True)
            ready.write_text(str(os.getpid()))
            log.info("recording learner events of %s", self.home)
            while not self.stopping.is_set():
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                self._write(*item)
        finally:
            while not self._queue.empty():  # what arrived before the stop
                self._write(*self._queue.get_nowait())
            mqtt.stop(self.client)
            if self._store is not None:
                self._store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m labs.recorder",
        description="Record learners' SDK announcements as learning events (a lab service; 'livelab up' runs it).",
    )
    p.add_argument("--home", required=True)
    p.add_argument("--events", help="events store URL (default: $LIVELAB_EVENTS_URL, else the lab's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rec = Recorder(Path(args.home), events_url=args.events)
    signals.route({signal.SIGTERM: rec.stopping.set, signal.SIGINT: rec.stopping.set})
    rec.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
