"""The lab's observer: what devices really send, held against what their artifacts declare.

The supervisor runs one (a thread of its own with its own control-plane client), subscribed to
every namespace's device telemetry, captures and audit records.  It is the lab side of the
metadata trail (``lab_hardware.modelops.lineage``):

* **observations**: for each telemetry window, the fields it carries are added to the record of
  the bundle that decided it (``bundle:<digest>``), whose declaration is its manifest's
  ``privacy.telemetry_fields`` (read from the installed bundle in the device's state directory;
  a scenario model declares the platform's telemetry schema); for each capture message, its
  fields and its records' fields are added to ``capture:<ns>/<device>/<capture id>``.  The
  record is ``<home>/lineage/observed.json``, which ``livelab lineage audit`` re-checks;
* **the automated privacy audit**: the first time an artifact is seen sending a field it did
  not declare, a ``FAIL`` run event (``privacy.audit``) names the artifact, the fields and the
  device, at once;
* **device-side artifacts**: a device's ``install``, ``revocation`` and ``capture-done`` audit
  records become ``bundle.install``, ``bundle.revoke`` and ``capture`` run events, each with
  its privacy declaration (a capture's event carries the audit of what the lab saw of it).

Nothing here may disturb the lab: a message that cannot be read is skipped, an event that
cannot be delivered is recorded by the trail, and every error is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from lab_hardware import home as _home
from lab_hardware import mqtt, topics

log = logging.getLogger("livelab.observer")

#: (topic filter, QoS): telemetry at QoS 0 - an observation, not a delivery the lab owes anyone -
#: so the observer adds no acknowledgements to the lab's busiest stream.
SUBSCRIPTIONS = (
    (f"{topics.ROOT}/+/devices/+/telemetry", 0),
    (f"{topics.ROOT}/+/devices/+/capture", 1),
    (f"{topics.ROOT}/+/devices/+/audit", 1),
)
#: Messages waiting to be looked at before telemetry windows are skipped (counted as
#: ``skipped``): under a flood the audit samples telemetry rather than eat the lab's memory.
#: Captures and audit records are never skipped.
QUEUE_LIMIT = 20_000
#: Seconds between writes of the observations file (and at stop).
FLUSH_EVERY = 0.5
#: Devices named per artifact in the record (the first ones seen; the count of messages goes on).
MAX_DEVICES = 64
#: Largest payload looked at (a capture part can be a few MB).
PAYLOAD_LIMIT = 16 * 2**20


class Observer:
    def __init__(self, home: Path, client: Any):
        self.home = Path(home)
        self.client = client
        self.artifacts: dict[str, dict[str, Any]] = {}
        self._declarations: dict[tuple[str, str, str], Any] = {}
        self._trails: dict[str, Any] = {}
        self._queue: queue.Queue = queue.Queue()
        self._dirty = False
        self._last_flush = 0.0
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.emitted = 0
        self.skipped = 0
        self._load()

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.client.on_message = self._on_message
        self.client.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(list(SUBSCRIPTIONS))
        self._thread = threading.Thread(target=self._run, name="lineage-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._flush(force=True)
        for t in self._trails.values():
            t.close()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if self._queue.qsize() > QUEUE_LIMIT and msg.topic.endswith("/telemetry"):
            self.skipped += 1
            return
        self._queue.put((msg.topic, bytes(msg.payload)))

    def _run(self) -> None:
        while not self.stopping.is_set() or not self._queue.empty():
            try:
                topic, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._flush()
                continue
            try:
                self.handle(topic, payload)
            except Exception:  # noqa: BLE001 - one bad message never stops the observer
                log.exception("observer: message on %s not handled", topic)
            self._flush()

    # ---- the record --------------------------------------------------------------------
    def _load(self) -> None:
        from lab_hardware.modelops import lineage

        try:
            self.artifacts = lineage.read_observed(self.home)
        except lineage.LineageError as exc:
            log.warning("observer: starting a new record (%s)", exc)
            self.artifacts = {}

    def _flush(self, *, force: bool = False) -> None:
        if not self._dirty or (not force and time.monotonic() - self._last_flush < FLUSH_EVERY):
            return
        from lab_hardware.modelops import lineage

        try:
            _home.write_json(
                self.home / lineage.OBSERVED_FILE,
                {"schema": lineage.SCHEMA_OBSERVED, "artifacts": self.artifacts, "skipped_windows": self.skipped},
                mode=0o644,
            )
            self._dirty = False
        except OSError as exc:
            log.warning("observer: cannot write observations: %s", exc)
        self._last_flush = time.monotonic()

    # ---- messages ----------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        p = topics.parse(topic)
        if p is None:
            return
        try:
            data = topics.decode(payload, limit=PAYLOAD_LIMIT)
        except ValueError:
            return
        ns, dev, kind = p["namespace"], p["device"], p["kind"]
        if kind == "telemetry":
            digest = data.get("bundle")
            if isinstance(digest, str) and digest:
                self._observe(
                    f"bundle:{digest}",
                    "telemetry",
                    self._bundle_declaration(ns, dev, digest),
                    set(data),
                    ns,
                    dev,
                    topic,
                )
        elif kind == "capture":
            from lab_hardware.modelops import lineage

            cid = data.get("capture_id")
            if isinstance(cid, str) and cid:
                self._observe(
                    f"capture:{ns}/{dev}/{cid}",
                    "capture",
                    lineage.capture_privacy(),
                    lineage.observed_fields(data),
                    ns,
                    dev,
                    topic,
                )
        elif kind == "audit":
            for rec in data.get("records") or []:
                if isinstance(rec, dict) and isinstance(rec.get("data"), dict):
                    self._device_record(ns, dev, rec)

    def _observe(self, key: str, what: str, privacy: Any, fields: set[str], ns: str, dev: str, topic: str) -> None:
        from lab_hardware.modelops import lineage

        now = time.time()
        e = self.artifacts.get(key)
        if e is None:
            e = self.artifacts[key] = {
                "kind": what,
                "declaration": privacy.as_facet(),
                "observed": [],
                "messages": 0,
                "devices": [],
                "namespaces": [],
                "source": f"{topics.ROOT}/<ns>/devices/<device>/{what}",
                "first": now,
                "reported": [],
            }
            self._dirty = True
        e["messages"] += 1
        e["last"] = now
        new = fields - set(e["observed"])
        if new:
            e["observed"] = sorted(set(e["observed"]) | fields)
            self._dirty = True
        where = f"{ns}/{dev}"
        if where not in e["devices"] and len(e["devices"]) < MAX_DEVICES:  # grading makes many namespaces
            e["devices"] = sorted({*e["devices"], where})
            e["namespaces"] = sorted({*e["namespaces"], ns})
            self._dirty = True
        undeclared = sorted(set(fields) - set(e["declaration"]["declaredFields"]) - set(e["reported"]))
        if undeclared:  # the automated privacy audit: fail the artifact at once, once per field
            e["reported"] = sorted({*e["reported"], *undeclared})
            self._dirty = True
            name = key.split(":", 1)[1]
            self._emit(
                ns,
                "privacy.audit",
                name,
                dataset_namespace=lineage.DATASET_NAMESPACES["bundle" if what == "telemetry" else "capture"],
                privacy=lineage.Privacy.from_facet(e["declaration"]),
                observed=fields,
                messages=e["messages"],
                source=topic,
                details={"artifact": key, "device": dev, "observation": what},
            )
        else:
            self._dirty = self._dirty or e["messages"] % 50 == 1

    def _bundle_declaration(self, ns: str, dev: str, digest: str) -> Any:
        """The privacy declaration of the bundle a device runs (cached): its installed manifest,
        else the platform's telemetry schema (a scenario model, or a device elsewhere)."""
        from lab_hardware.modelops import bundle, lineage

        k = (ns, dev, digest)
        if k not in self._declarations:
            decl = lineage.telemetry_default()
            folder = _home.device_dir(self.home, ns, dev) / "bundles"
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            for n in names:
                if n.startswith(f"{digest}-") and n.endswith(bundle.SUFFIX):
                    try:
                        decl = lineage.bundle_privacy(bundle.read(folder / n).manifest)
                        break
                    except (bundle.BundleError, lineage.LineageError) as exc:
                        log.warning("observer: installed bundle %s unreadable: %s", n, exc)
            self._declarations[k] = decl
        return self._declarations[k]

    def _device_record(self, ns: str, dev: str, rec: dict[str, Any]) -> None:
        from lab_hardware.modelops import lineage

        kind, d = rec.get("kind"), rec["data"]
        base = {"namespace": ns, "device": dev, "audit_index": rec.get("index"), "audit_hash": rec.get("hash")}
        if kind == "install" and isinstance(d.get("bundle"), str):
            digest, keyid = d["bundle"], d.get("keyid")
            self._declarations.pop((ns, dev, digest), None)
            privacy = self._bundle_declaration(ns, dev, digest)
            ident = f"{digest}:{keyid}" if keyid else digest
            self._emit(
                ns,
                "bundle.install",
                f"{ident}@{ns}/{dev}",
                privacy=privacy,
                inputs=[(lineage.DATASET_NAMESPACES["bundle"], ident)],
                details={
                    **base,
                    "bundle": digest,
                    "keyid": keyid,
                    "name": d.get("name"),
                    "version": d.get("version"),
                    "by": d.get("by"),
                    "rollback": d.get("rollback"),
                },
            )
        elif kind == "revocation":
            for entry in d.get("entries") or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
                    continue
                ident = f"{entry['digest']}:{entry.get('keyid') or '*'}"
                self._emit(
                    ns,
                    "bundle.revoke",
                    f"{ident}@{ns}/{dev}",
                    privacy=None,
                    inputs=[(lineage.DATASET_NAMESPACES["bundle"], ident)],
                    details={**base, "by": d.get("by"), "active_revoked": d.get("active_revoked")},
                )
        elif kind == "capture-done" and isinstance(d.get("capture_id"), str):
            key = f"capture:{ns}/{dev}/{d['capture_id']}"
            e = self.artifacts.get(key)
            self._emit(
                ns,
                "capture",
                key.split(":", 1)[1],
                privacy=lineage.capture_privacy(),
                observed=set(e["observed"]) if e else set(),
                messages=e["messages"] if e else 0,
                source=topics.capture(ns, dev),
                details={**base, "capture_id": d["capture_id"], "parts": d.get("parts"), "reason": d.get("reason")},
            )

    def _emit(self, ns: str, kind: str, name: str, **kw: Any) -> None:
        from lab_hardware.modelops import lineage

        try:
            trail = self._trails.get(ns)
            if trail is None:
                trail = self._trails[ns] = lineage.Trail(self.home, mqtt_client=self.client, namespace=ns)
            lineage.emit_artifact(self.home, kind, name, trail=trail, lab_namespace=ns, **kw)
            self.emitted += 1
        except Exception as exc:  # noqa: BLE001 - the trail never disturbs the lab
            log.warning("observer: %s event for %s not emitted: %s", kind, name, " ".join(str(exc).split()))


def start(home: Path, host: str, port: int, username: str | None, password: str | None) -> Observer:
    """Connect a control-plane client for the observer and start it."""
    c = mqtt.client(f"observer.{Path(home).name}-{os.getpid()}"[:60], username=username, password=password)
    obs = Observer(home, c)
    obs.start()
    mqtt.connect(c, host, port)
    for t, qos in SUBSCRIPTIONS:
        mqtt.subscribe_wait(c, t, qos)
    return obs


def stop(obs: Observer) -> None:
    try:
        obs.stop()
    finally:
        mqtt.stop(obs.client)
