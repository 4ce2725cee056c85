"""A simulated edge device: one process, one device.

Why one process per device rather than several devices per process: a
hardware profile's memory cap and core count are per-process limits
(``setrlimit``, CPU affinity), a crash or a ``kill -9`` takes down exactly
one device as it would in the field, and two cores run three devices fine
because each spends most of its time waiting for its next utterance.  The
cost is start-up (~0.3 s of imports each, in parallel) and ~60 MB per device.

What a device does, in its main loop:

* reads its next utterances from the scenario stream, extracts features
  on-device and decides with onnxruntime (deterministic session options);
* attaches a signal digest to every decision and folds it into the window;
* closes an aggregation window every ``window_seconds`` and, only with
  ``telemetry`` consent, queues it in the outbox and publishes it QoS 1;
* obeys commands from ``.../cmd/<command>/<author>`` (the broker lets a user
  write only its own author level; the two-level ``.../cmd/<command>`` is the
  control plane's), refusing malformed ones, and writes every command,
  accepted or refused, to its audit chain with the author the topic proves
  (``by``; a ``by`` in the payload is ignored).  A learner's username is
  recorded as the learner's name when the control plane named it (device
  config ``learners`` or the retained ``control/learners`` topic).

Raw inputs never leave the device: no message built here contains text.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import collections
import json
import math
import logging
import os
import queue
import random
import re
import resource
import signal
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lab_hardware import digest as _digest
from lab_hardware import features, mqtt, signals, topics
from lab_hardware.audit import AuditChain
from lab_hardware.consent import ConsentError, ConsentState
from lab_hardware.modelops import federated as _federated
from lab_hardware.modelops.scrub import read_scrubbed_stream, scrub, warm_up as scrub_warm_up
from lab_hardware.modelops.slots import ALL_SIGNERS, InstallError, Slots
from lab_hardware.runtime.device_slo import DeviceSlos  # micro-SLOs (issue 14)
from lab_hardware.runtime.link import Link
from lab_hardware.runtime.outbox import Outbox
from lab_hardware.runtime.routing import Router
from lab_hardware.profiles import Profile
from lab_hardware.window import Decisions, Window

log = logging.getLogger("livelab.device")

#: Largest command payload a device reads (bundles will have their own limit).
COMMAND_LIMIT = 64 * 1024
#: Outstanding QoS 1 publishes before the device waits for PUBACKs.  Small on purpose:
#: paho rescans every outstanding message on each PUBACK (Client._update_inflight), so
#: 1000 in flight cost ~77 us per message (measured); 64 keep loopback round trips
#: covered at a few microseconds per ack.
MAX_INFLIGHT = 64
#: Probability that a user undoes a wrong decision (the false-positive proxy).
UNDO_PROBABILITY = 0.8
HEARTBEAT_S = 1.0
#: Largest install/shadow command (a base64 bundle of up to ~6 MB).
INSTALL_LIMIT = 8 * 1024 * 1024
#: Capture records per published capture message.
CAPTURE_PART = 200
#: Unsent windows above which a device deciding as fast as it can (rate 0) waits for the link.
BACKPRESSURE = 2000
AUDIT_CHUNK = 200


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYID = re.compile(r"^[0-9a-f]{16}$")


def _revocation_entry(r: Any) -> str:
    """``digest:keyid`` (one signer's copy) or ``digest:*`` (every signer's: ``all_signers``
    true, or an entry written before revocations named signers, which meant that)."""
    if not isinstance(r, dict):
        raise ValueError("a revocation must be an object with 'digest' and 'keyid'")
    digest, keyid = r.get("digest"), r.get("keyid")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ValueError("a revocation's 'digest' must be 64 lower-case hex characters")
    all_signers = r.get("all_signers", False)
    if not isinstance(all_signers, bool):
        raise ValueError("a revocation's 'all_signers' must be true or false")
    if all_signers or ("keyid" not in r and "all_signers" not in r):
        if keyid is not None:
            raise ValueError("a revocation names a 'keyid' or 'all_signers', not both")
        return f"{digest}:{ALL_SIGNERS}"
    if not isinstance(keyid, str) or not _KEYID.match(keyid):
        raise ValueError("a revocation's 'keyid' must be 16 lower-case hex characters (or say 'all_signers': true)")
    return f"{digest}:{keyid}"


def _learner_names(names: Any) -> dict[str, str]:
    if not isinstance(names, dict) or len(names) > 64:
        raise ValueError("'names' must map at most 64 broker usernames to learner names")
    out = {}
    for user, name in names.items():
        if not (isinstance(user, str) and topics.AUTHOR_RE.match(user) and user != topics.CONTROL_AUTHOR):
            raise ValueError(f"{str(user)[:64]!r} is not a learner username")
        if not (isinstance(name, str) and topics.AUTHOR_RE.match(name) and name != topics.CONTROL_AUTHOR):
            raise ValueError(f"learner name {str(name)[:64]!r} is not a valid name")
        out[user] = name
    return out


def _fresh_shadow_stats() -> dict:
    return {"decisions": 0, "diverged": 0, "errors": 0, "by_intent": {}, "shadow_by_intent": {}}


def device_ms(cpu_start: float, slowdown: float = 1.0) -> float:
    """Milliseconds of device time since ``cpu_start`` (a ``time.thread_time()`` reading):
    this thread's CPU time times the profile's inference slowdown.  Independent of how busy
    the host is, so a health check's latency budget judges the bundle, not the machine."""
    return (time.thread_time() - cpu_start) * 1000.0 * max(1.0, float(slowdown))


#: Most completions a promotion's checklist may name (one per required module).
CHECKLIST_MAX = 8


def _checklist(value: Any) -> dict | None:
    """The release checklist an install names (``labs.rollout``: who promoted it and the signed
    course completions that allowed it), checked for shape only: the device cannot verify a
    completion (the events key is the lab's secret), so it records the sender's statement
    beside the broker-proven ``by``, and the rollout tool is what enforces the checklist."""
    if value is None:
        return None

    def text(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= 128 and v.isprintable()

    bad = CommandError(
        "install 'checklist' must be {promoter, completions: [{event, learner, course, module, version, time}]}"
    )
    if not isinstance(value, dict) or set(value) != {"promoter", "completions"} or not text(value["promoter"]):
        raise bad
    comps = value["completions"]
    if not isinstance(comps, list) or not 0 < len(comps) <= CHECKLIST_MAX:
        raise bad
    out = []
    for c in comps:
        if not isinstance(c, dict) or set(c) != {"event", "learner", "course", "module", "version", "time"}:
            raise bad
        if not (isinstance(c["event"], str) and re.fullmatch(r"[0-9a-f]{64}", c["event"])):
            raise bad
        if not all(text(c[k]) for k in ("learner", "module", "version")) or not (
            c["course"] == "" or text(c["course"])
        ):
            raise bad
        t = c["time"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise bad
        out.append({k: c[k] for k in ("event", "learner", "course", "module", "version", "time")})
    return {"promoter": value["promoter"], "completions": out}


class CommandError(ValueError):
    """A command the device refuses; the message is the one-line reason."""


def apply_profile_limits(profile: Profile) -> None:
    """Memory cap and core count of the profile, applied to this process."""
    if profile.memory_mb:
        limit = profile.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if profile.cores:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[: max(1, min(profile.cores, len(cpus)))])


class Device(DeviceSlos):
    def __init__(self, config: dict[str, Any], *, clock=time.time):
        self.cfg = config
        self.clock = clock
        self.ns = topics.check_name("namespace", config["namespace"])
        self.name = topics.check_name("device", config["device"])
        self.dir = Path(config["state_dir"])
        self.dir.mkdir(parents=True, exist_ok=True)
        self.profile = Profile.from_dict(config["profile"])
        sc = config["scenario"]
        self.intents: list[str] = list(sc["intents"])
        self.models: dict[str, str] = dict(sc["models"])
        self.window_seconds = float(config.get("window_seconds") or sc["window_seconds"])
        self.window_max = int(config.get("window_max_decisions", 0))
        self.rate = float(config["rate_hz"] if config.get("rate_hz") is not None else sc["rate_hz"])
        self.batch_max = int(config.get("batch_max", 256))
        seed = zlib.crc32(f"{config.get('seed', 0)}:{self.ns}:{self.name}".encode())
        self.rng = np.random.default_rng(seed)
        self.link = Link(self.profile.link, random.Random(seed))

        texts, truth = [], []
        index = {name: i for i, name in enumerate(self.intents)}
        with open(sc["stream"], encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                texts.append(rec["text"])
                truth.append(index[rec["intent"]])
        self.texts = texts
        self.scrubbed = self._scrubbed_stream(sc)
        if self.scrubbed is None:
            # The scrubber (Presidio's analyzers, the name model) takes a few seconds of CPU to
            # import and build: done before the device connects, so it comes online able to decide
            # and the first decisions are not charged for it.
            scrub_warm_up()
        self.truth = np.asarray(truth, dtype=np.int64)
        self.pos = (int(config.get("index", 0)) * 7919) % len(texts)

        self.audit = AuditChain(self.dir / "audit.jsonl", clock=clock)
        self.consent = ConsentState.from_trail(self.audit.records())
        self.outbox = Outbox(self.dir / "outbox.sqlite", horizon=float(config.get("outbox_horizon", 10.0)), clock=clock)
        saved = self._load_state()
        self.boot = saved.get("boot", 0) + 1
        self.decision_seq = saved.get("decision_seq", 0)
        trust = config.get("home")
        self.slots = Slots(
            self.dir,
            self.models,
            self.intents,
            self.profile,
            Path(trust) if trust else None,
            clock=clock,
            namespace=self.ns,
        )
        self.slots.restore(config.get("model") or next(iter(self.models)))
        self._slo_reset()  # micro-SLOs (issue 14): the active bundle's objectives
        self.capture: dict | None = None  # an open replay capture (see _cmd_capture)
        # its own undo signals for federated adapter rounds: on the device, under telemetry consent
        self.signals = _federated.SignalBuffer(len(self.intents))
        self.federated: dict | None = None  # the round this device is taking part in
        self._on_behalf: str | None = None  # the command being handled: its unproven claim
        # broker username -> learner name, from the trusted side only (config, control topic)
        try:
            self.learner_names: dict[str, str] = _learner_names(config.get("learners") or {})
        except ValueError as exc:
            log.error("ignoring the config's learner names: %s", exc)
            self.learner_names = {}

        self.inbox: queue.Queue = queue.Queue()
        # PUBACKs, one per window: a lock-free deque, cheaper than the inbox queue
        self.acks: collections.deque[int] = collections.deque()
        self.connected = False
        self.disconnected_at = self.clock()
        self.inflight: dict[int, int] = {}
        self.audit_seq = 0
        self.stop_event = threading.Event()
        self.window = Window(self.intents, self.clock())
        self._last_state = 0.0
        self._last_prune = self.clock()
        self._last_save = 0.0
        self._rate_t0 = time.monotonic()
        self._rate_done = 0
        self.refused = 0
        self.decision_errors = 0
        self.shadow_stats = _fresh_shadow_stats()
        self.telemetry_time: float | None = None
        self.client = None
        self.router: Router | None = None  # the oracle client, made when a bundle first routes

    # ---- persistence -------------------------------------------------------------------
    def _load_state(self) -> dict:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({"boot": self.boot, "decision_seq": self.decision_seq}))
        os.replace(tmp, self.dir / "state.json")
        self._last_save = self.clock()

    @property
    def model_name(self) -> str:
        return self.slots.active.name

    @property
    def bundle_digest(self) -> str:
        return self.slots.active.digest

    # ---- MQTT --------------------------------------------------------------------------
    def _connect(self) -> None:
        b = self.cfg["broker"]
        c = mqtt.client(
            f"device.{self.ns}.{self.name}", username=b.get("username"), password=b.get("password"), clean=False
        )
        c.will_set(topics.state(self.ns, self.name), topics.encode(self._state(online=False)), qos=1, retain=True)
        c.on_connect = lambda cl, ud, flags, rc, props: self.inbox.put(("connected", rc))
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.inbox.put(("disconnected", self.clock()))
        c.on_message = lambda cl, ud, msg: self.inbox.put(("cmd", msg.topic, msg.payload))
        c.on_publish = lambda cl, ud, mid, rc, props: self.acks.append(mid)
        # paho's network loop runs in this thread (no loop_start): at thousands of QoS 1
        # messages a second, handing every publish and PUBACK across threads (socketpair
        # wake-ups, GIL hand-offs) cost more CPU than the device's own work.
        c.connect_async(b["host"], int(b["port"]), keepalive=15)
        self.client = c
        self._next_connect = 0.0
        self._backoff = 0.05

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False, seq: int | None = None) -> None:
        def go() -> None:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if seq is not None:
                self.inflight[info.mid] = seq

        self.link.send(len(payload), self.clock(), go)

    def _state(self, online: bool = True) -> dict[str, Any]:
        return {
            "schema": topics.SCHEMA_STATE,
            "namespace": self.ns,
            "device": self.name,
            "online": online,
            "pid": os.getpid(),
            "boot": self.boot,
            "time": round(self.clock(), 3),
            "model": self.model_name,
            "bundle": self.bundle_digest,
            "bundle_keyid": self.slots.active.keyid,
            "profile": self.profile.name,
            "active": self.slots.active.describe(),
            "shadow": self.slots.shadow.describe() if self.slots.shadow else None,
            "health": None
            if self.slots.health is None
            else {
                "bundle": self.slots.health.digest,
                "seen": self.slots.health.seen,
                "needed": self.slots.health.needed,
            },
            "revoked": sorted({e["digest"] for e in self.slots.revocations()}),
            "revocations": self.slots.revocations(),
            "version_floor": self.slots.floor,
            "ran": sorted(self.slots.ran),
            "capturing": self.capture is not None,
            "federated": self.federated["round"] if self.federated else None,
            "signals": self.signals.count(self.bundle_digest),  # of the bundle it runs, as a round counts them
            "consent": self.consent.as_dict(),
            "telemetry_seq": self.outbox.last_seq,
            "telemetry_time": self.telemetry_time,
            "sent_seq": self.outbox.next_send - 1,
            "decisions": self.decision_seq,
            "backlog": self.outbox.backlog(),
            "audit_length": len(self.audit),
            "refused": self.refused,
            "slo": self._slo_state(),  # micro-SLOs (issue 14)
            "routing": self.router.summary() if self.router is not None else None,
        }

    def publish_state(self) -> None:
        if self.connected:
            self._publish(topics.state(self.ns, self.name), topics.encode(self._state()), retain=True)
        self._last_state = self.clock()

    def _publish_audit(self, records: list[dict], reply_to: str | None = None) -> None:
        if not self.connected:
            return  # the chain is on disk; an 'audit' command fetches it later
        chunks = [records[i : i + AUDIT_CHUNK] for i in range(0, len(records), AUDIT_CHUNK)] or [[]]
        for i, chunk in enumerate(chunks):
            self.audit_seq += 1
            self._publish(
                topics.audit(self.ns, self.name),
                topics.encode(
                    {
                        "schema": topics.SCHEMA_AUDIT,
                        "namespace": self.ns,
                        "device": self.name,
                        "seq": self.audit_seq,
                        "reply_to": reply_to,
                        "last": i == len(chunks) - 1,
                        "records": chunk,
                    }
                ),
            )

    def _record(self, kind: str, data: dict) -> dict:
        if self._on_behalf is not None and data.get("by") is not None and kind != "refused":
            # what the sender claimed to act for: unproven, recorded beside the proven 'by'
            data = {**data, "on_behalf": self._on_behalf}
        rec = self.audit.append(kind, data)
        self._publish_audit([rec])
        return rec

    # ---- commands ----------------------------------------------------------------------
    def handle_command(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        name = parsed.get("command", "?") if parsed else "?"
        cmd_id = None
        try:
            limit = INSTALL_LIMIT if name in ("install", "shadow") else COMMAND_LIMIT
            if len(payload) > limit:
                raise CommandError(f"payload of {len(payload)} bytes exceeds the command limit of {limit} bytes")
            try:
                msg = topics.decode(payload)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            cmd_id = msg.get("id") if isinstance(msg.get("id"), str) else None
            if msg.get("schema") != topics.SCHEMA_COMMAND:
                raise CommandError(f"unknown command schema {msg.get('schema')!r}; expected {topics.SCHEMA_COMMAND}")
            if cmd_id is None or not 0 < len(cmd_id) <= 64:
                raise CommandError("command 'id' must be a string of 1-64 characters")
            if name not in topics.COMMANDS:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(topics.COMMANDS)}")
            if parsed is None:
                raise CommandError("command topic is not .../cmd/<command>[/<author>]")
            try:
                author = topics.command_author(parsed)
            except topics.TopicError as exc:
                raise CommandError(str(exc)) from None
            # who sent it is what the broker proved (the topic), never the payload's 'by'
            by = self.learner_names.get(author, author)
            claim = msg.get("on_behalf")
            self._on_behalf = (
                claim if isinstance(claim, str) and topics.AUTHOR_RE.match(claim) and claim != by else None
            )
            try:
                getattr(self, "_cmd_" + name.replace("-", "_"))(msg, cmd_id, by)
            except CommandError:
                raise
            except InstallError as exc:
                raise CommandError(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - no input may stop a device: refuse it, keep deciding
                log.exception("command %s failed", name)
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                raise CommandError(f"the device could not carry out {name}: {type(exc).__name__}: {first}") from None
        except CommandError as exc:
            self._on_behalf = None
            self.refused += 1
            log.warning("refused command on %s: %s", topic[:200], exc)
            self._record(
                "refused",
                {
                    "command": name[:64],
                    "id": cmd_id,
                    "reason": str(exc),
                    "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                },
            )
            self.publish_state()
        finally:
            self._on_behalf = None

    def _cmd_consent(self, msg: dict, cmd_id: str, by: str) -> None:
        scope, grant = msg.get("scope"), msg.get("grant")
        try:
            ConsentState().apply(scope, grant)  # validate before recording
        except ConsentError as exc:
            raise CommandError(str(exc)) from None
        changed = self.consent.apply(scope, grant)
        withdrawn = self.outbox.withdraw_unsent() if scope == "telemetry" and not grant else 0
        if scope == "telemetry" and not grant:
            self.signals.clear()  # the undo signals kept for federated rounds go with the consent
        dropped = None
        if scope == "replay-capture" and not grant and self.capture is not None:
            # everything under the scope stops at once: the open capture closes and what it
            # buffered is dropped, never published (it would leave after the revocation)
            dropped = self._close_capture("consent revoked")
        rec = self._record(
            "consent",
            {
                "id": cmd_id,
                "by": by,
                "scope": scope,
                "grant": grant,
                "changed": changed,
                "withdrawn_windows": withdrawn,
                **({"capture_closed": dropped} if dropped is not None else {}),
            },
        )
        if scope == "telemetry":
            # Consent-first: a window never mixes decisions from before and after a change.
            self.window = Window(self.intents, rec["time"])
        self.publish_state()

    def _cmd_ping(self, msg: dict, cmd_id: str, by: str) -> None:
        self._record("command", {"id": cmd_id, "by": by, "command": "ping", "ok": True})
        self.publish_state()

    def _cmd_audit(self, msg: dict, cmd_id: str, by: str) -> None:
        start = msg.get("from", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise CommandError("audit 'from' must be a non-negative integer")
        self._publish_audit(self.audit.records(start), reply_to=cmd_id)

    def _cmd_set_model(self, msg: dict, cmd_id: str, by: str) -> None:
        try:
            self.slots.set_model(msg.get("model"))
        except InstallError as exc:
            raise CommandError(str(exc)) from None
        self.window = Window(self.intents, self.clock())
        self._record(
            "model", {"id": cmd_id, "by": by, "model": self.model_name, "bundle": self.bundle_digest, "keyid": None}
        )
        self.publish_state()

    def _bundle_bytes(self, msg: dict) -> bytes:
        data = msg.get("bundle")
        if not isinstance(data, str):
            raise CommandError("'bundle' must be the bundle file, base64-encoded")
        try:
            return base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            raise CommandError("'bundle' is not valid base64") from None

    def _cmd_install(self, msg: dict, cmd_id: str, by: str) -> None:
        rollback = msg.get("rollback", False)
        if not isinstance(rollback, bool):
            raise CommandError("install 'rollback' must be true or false")
        checklist = _checklist(msg.get("checklist"))
        data = self._bundle_bytes(msg)
        t0 = time.perf_counter()
        before = self.slots.active.describe()
        try:
            slot = self.slots.install(data, rollback=rollback)
        except InstallError as exc:
            raise CommandError(f"install refused: {exc}") from None
        self.window = Window(self.intents, self.clock())
        self._record(
            "install",
            {
                "id": cmd_id,
                "by": by,
                "bundle": slot.digest,
                "keyid": slot.keyid,
                "name": slot.name,
                "version": slot.version,
                "from": before,
                "rollback": rollback,
                "install_ms": round((time.perf_counter() - t0) * 1000, 3),
                "health_decisions": self.slots.health.needed if self.slots.health else 0,
                **({"checklist": checklist} if checklist is not None else {}),
            },
        )
        self.publish_state()

    def _cmd_rollback(self, msg: dict, cmd_id: str, by: str) -> None:
        try:
            bad, good = self.slots.rollback()
        except InstallError as exc:
            raise CommandError(str(exc)) from None
        self.window = Window(self.intents, self.clock())
        self._record(
            "rollback",
            {
                "id": cmd_id,
                "by": by,
                "from": bad.describe(),
                "to": good.describe(),
                "reason": msg.get("reason") if isinstance(msg.get("reason"), str) else "requested",
            },
        )
        self.publish_state()

    def _cmd_shadow(self, msg: dict, cmd_id: str, by: str) -> None:
        if msg.get("stop") is True:
            self.slots.set_shadow(None)
            self._record("shadow", {"id": cmd_id, "by": by, "bundle": None})
        else:
            try:
                slot = self.slots.set_shadow(self._bundle_bytes(msg))
            except InstallError as exc:
                raise CommandError(f"shadow refused: {exc}") from None
            self._record(
                "shadow",
                {
                    "id": cmd_id,
                    "by": by,
                    "bundle": slot.digest,
                    "keyid": slot.keyid,
                    "name": slot.name,
                    "version": slot.version,
                },
            )
        self.window = Window(self.intents, self.clock())
        self.publish_state()

    def _cmd_capture(self, msg: dict, cmd_id: str, by: str) -> None:
        n = msg.get("decisions")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
            raise CommandError("capture 'decisions' must be an integer between 1 and 100000")
        if not self.consent.allows("replay-capture"):
            raise CommandError("no replay-capture consent on this device")
        grant = next(
            r
            for r in reversed(self.audit.records())
            if r["kind"] == "consent" and r["data"]["scope"] == "replay-capture" and r["data"]["grant"]
        )
        rec = self._record("capture", {"id": cmd_id, "by": by, "decisions": n, "capture_id": cmd_id})
        self.capture = {
            "id": cmd_id,
            "left": n,
            "records": [],
            "part": 0,
            "consent": {"index": grant["index"], "hash": grant["hash"]},
            "audit": rec["index"],
        }
        self.publish_state()

    def _cmd_federated(self, msg: dict, cmd_id: str, by: str) -> None:
        """Join a federated adapter round (``labs.federated``): fit a per-intent bias on this
        device's own undo signals and send only the new bias to the lab's Flower server.

        Refused, with the reason on the audit chain: no telemetry consent (the signals are kept
        only under it), a privacy budget this round would overspend (the lab's accountant's
        figures), too few signals of the round's bundle, a round already running."""
        fields = ("round", "server", "bundle", "rounds", "min_signals", "privacy")
        unknown = sorted(set(msg) - {"schema", "id", "on_behalf", *fields})
        if unknown:
            raise CommandError(f"federated: unknown field {unknown[0][:64]!r}")
        rid, server, bundle = msg.get("round"), msg.get("server"), msg.get("bundle")
        if not (isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", rid)):
            raise CommandError("federated 'round' must be an id of 1-64 letters, digits, '.', '_' or '-'")
        m = re.fullmatch(r"127\.0\.0\.1:([0-9]{1,5})", server) if isinstance(server, str) else None
        if m is None or not 0 < int(m[1]) < 65536:
            raise CommandError("federated 'server' must be 127.0.0.1:PORT (the lab's Flower server)")
        if not (isinstance(bundle, str) and _HEX64.match(bundle)):
            raise CommandError("federated 'bundle' must be the digest of the bundle the adapter is for")
        rounds, least = msg.get("rounds"), msg.get("min_signals")
        for key, v, hi in (("rounds", rounds, 100), ("min_signals", least, _federated.SIGNAL_LIMIT)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise CommandError(f"federated '{key}' must be an integer between 1 and {hi}")
        priv = msg.get("privacy")
        keys = ("epsilon_spent", "epsilon_after", "epsilon_budget", "delta")
        if not isinstance(priv, dict) or set(priv) != set(keys):
            raise CommandError(f"federated 'privacy' must be {{{', '.join(keys)}}}")
        for key in keys:
            v = priv[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise CommandError(f"federated privacy '{key}' must be a finite non-negative number")
        if not self.consent.allows("telemetry"):
            raise CommandError("no telemetry consent on this device: its undo signals are not shared with a round")
        if priv["epsilon_after"] > priv["epsilon_budget"]:
            raise CommandError(
                f"privacy budget spent: round {rid} would take epsilon from {priv['epsilon_spent']:.3g} to "
                f"{priv['epsilon_after']:.3g}, over this device's budget of {priv['epsilon_budget']:.3g} "
                f"(delta {priv['delta']:.3g}); not taking part"
            )
        if self.federated is not None:
            raise CommandError(f"already taking part in round {self.federated['round']}")
        probs, labels, undone = self.signals.snapshot(bundle)
        if len(labels) < int(least):
            raise CommandError(
                f"only {len(labels)} consented decisions of bundle {bundle[:12]} on this device; "
                f"round {rid} needs at least {least}"
            )
        self.federated = {"round": rid, "id": cmd_id, "by": by}
        self._record(
            "federated",
            {
                "id": cmd_id,
                "by": by,
                "round": rid,
                "server": server,
                "bundle": bundle,
                "rounds": rounds,
                "signals": int(len(labels)),
                "undone": int(undone.sum()),
                "privacy": {k: priv[k] for k in keys},
            },
        )
        link = self.profile.link
        shape = _federated.LinkShape(link.latency_ms, link.jitter_ms, link.bandwidth_kbps)
        host, port = server.rsplit(":", 1)

        def run() -> None:
            try:
                res: dict = _federated.run_client(
                    (host, int(port)),
                    (probs, labels, undone),
                    device=self.name,
                    shape=shape,
                    slowdown=self.profile.inference_slowdown,
                    seed=zlib.crc32(f"federated:{self.ns}:{self.name}:{rid}".encode()),
                )
                res["ok"] = True
            except Exception as exc:  # noqa: BLE001 - the round's failure is recorded, never fatal
                res = {"ok": False, "reason": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
            self.inbox.put(("federated-done", res))

        threading.Thread(target=run, name=f"federated-{rid}", daemon=True).start()
        self.publish_state()

    def _federated_done(self, res: dict) -> None:
        """The round's end, from the client thread: on the audit chain (bytes each way, time)."""
        fed, self.federated = self.federated, None
        if fed is None:
            return
        self._record("federated-done", {"id": None, "round": fed["round"], **res})
        self.publish_state()

    def _revocations(self, payload: bytes) -> None:
        """The control plane's retained revocation list (control-only by ACL)."""
        try:
            msg = topics.decode(payload, limit=COMMAND_LIMIT)
            if msg.get("schema") != topics.SCHEMA_REVOCATIONS or not isinstance(msg.get("revoked"), list):
                raise ValueError("not a livelab.revocations/v1 list")
            entries = {_revocation_entry(r) for r in msg["revoked"]}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.refused += 1
            self._record(
                "refused",
                {
                    "command": "revocations",
                    "id": None,
                    "reason": str(exc).splitlines()[0],
                    "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                },
            )
            return
        self._apply_revocations(entries, {"id": None, "by": topics.CONTROL_AUTHOR})

    def _cmd_revoke(self, msg: dict, cmd_id: str, by: str) -> None:
        """One revocation sent as a command (how a learner revokes: learners may not write the
        retained control list).  Recorded even when this device already held it."""
        try:
            entry = _revocation_entry(msg)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        reason = msg.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 512:
            raise CommandError("revoke 'reason' must be a string of at most 512 characters")
        self._apply_revocations({entry}, {"id": cmd_id, "by": by, "reason": reason}, always=True)

    def _apply_revocations(self, entries: set[str], who: dict, *, always: bool = False) -> None:
        new = entries - self.slots.revoked
        if not new and not always:
            return
        hit = self.slots.revoke(entries)
        shown = sorted(new or entries)
        data = {
            **who,
            "revoked": sorted({e.split(":")[0] for e in shown}),
            "entries": [
                {"digest": e.split(":")[0], "keyid": None if e.split(":")[1] == ALL_SIGNERS else e.split(":")[1]}
                for e in shown
            ],
            "active_revoked": hit,
        }
        if hit:
            try:
                bad, good = self.slots.rollback()
                data.update({"from": bad.describe(), "to": good.describe()})
            except InstallError:
                good = self.slots.set_model(next(iter(self.models)))
                data.update({"to": good.describe()})
            self.window = Window(self.intents, self.clock())
        self._record("revocation", data)
        self.publish_state()

    def _learners(self, payload: bytes) -> None:
        """Names of the namespace's learner identities, from the control plane (retained)."""
        try:
            msg = topics.decode(payload, limit=COMMAND_LIMIT)
            if msg.get("schema") != topics.SCHEMA_LEARNERS:
                raise ValueError(f"not a {topics.SCHEMA_LEARNERS} message")
            names = _learner_names(msg.get("names"))
        except (ValueError, TypeError, AttributeError) as exc:
            self.refused += 1
            self._record(
                "refused",
                {
                    "command": "learners",
                    "id": None,
                    "reason": str(exc).splitlines()[0],
                    "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                },
            )
            return
        try:
            base = _learner_names(self.cfg.get("learners") or {})
        except ValueError:
            base = {}
        self.learner_names = {**base, **names}

    # ---- deciding ----------------------------------------------------------------------
    def due(self) -> int:
        if self.rate <= 0:
            return self.batch_max
        n = int((time.monotonic() - self._rate_t0) * self.rate) - self._rate_done
        return max(0, min(n, self.batch_max))

    def _room(self, n: int) -> int:
        """A batch never overfills a window capped at ``window_max_decisions``."""
        return min(n, self.window_max - len(self.window)) if self.window_max else n

    def _scrubbed_stream(self, sc: dict) -> list[str] | None:
        """The scenario's stream already scrubbed, when the lab handed one that pairs with this
        stream and this scrubber (``scrub.read_scrubbed_stream``); else None: scrub live."""
        path = sc.get("scrubbed_stream")
        if not path:
            return None
        with open(sc["stream"], "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
        texts, why = read_scrubbed_stream(path, sha, len(self.texts))
        if texts is None:
            log.warning("scrubbing live: %s", why)
        return texts

    def decide(self, n: int) -> Decisions | None:
        """Decide the next ``n`` utterances in one batch: scrub PII, extract features,
        run the active model (and the shadow), digest every decision."""
        L = len(self.texts)
        idx = [(self.pos + i) % L for i in range(n)]
        self.pos = (self.pos + n) % L
        # Latency in the device's own time: this thread's CPU time (onnxruntime runs on the
        # calling thread: one intra-op thread), scaled by the profile's slowdown.  Wall time
        # would charge the device for the host's load (a busy grader rolled back good bundles
        # on their p99 budget); the sleep below still makes a slow profile slow to watch.
        # The clock starts after scrubbing: the scrubber is the device's privacy filter, not the
        # bundle, and a budget judges the bundle (features and model); Presidio's ~1 ms an
        # utterance put a fast bundle's 64-decision batches over a 15 ms budget.
        if self.scrubbed is not None:
            texts = [self.scrubbed[i] for i in idx]
        else:
            texts = [scrub(self.texts[i]) for i in idx]
        c0 = time.thread_time()
        x = features.extract_batch(texts)
        active = self.slots.active
        try:
            labels, probs = active.decide(x)
            if not np.isfinite(probs).all():
                raise ValueError("model produced non-finite probabilities")
        except Exception as exc:  # noqa: BLE001 - a bad bundle must not kill the device
            self.decision_errors += n
            log.warning("decision error on %s: %s", active.digest[:12], exc)
            self._health(n, n, device_ms(c0, self.profile.inference_slowdown))
            self._rate_done += n
            return None
        latency_ms = device_ms(c0, self.profile.inference_slowdown)
        if self.profile.inference_slowdown > 1:
            time.sleep((time.thread_time() - c0) * (self.profile.inference_slowdown - 1))
        # Routing to the lab oracle, only when the active bundle declares it.  After the latency
        # reading: the budget judges the bundle in device CPU time; the oracle's round trip is
        # wall time, reported apart (the window's 'oracle' field).
        edge_labels, route = labels, None
        routing = (active.manifest or {}).get("routing") if active.kind == "bundle" else None
        if routing is not None:
            labels, probs, route = self._route(x, labels, probs, routing)
        first = self.decision_seq
        digests = _digest.signal_digests(x, active.digest, first)
        wrong = labels != self.truth[idx]
        undone = wrong & (self.rng.random(n) < UNDO_PROBABILITY)
        self.decision_seq += n
        self._rate_done += n
        if self.slots.shadow is not None:
            self._shadow(x, edge_labels)
        if self.capture is not None:
            self._capture(texts, labels, undone, digests, first, active.digest)
        if self.consent.allows("telemetry"):
            self.signals.add(active.digest, probs, labels, undone)
        self._health(n, 0, latency_ms)
        d = Decisions.from_batch(labels, probs, undone, digests, first, latency_ms)
        if route is not None:
            d.route, d.edge, d.route_ms, d.fallback = route.codes, route.edge, route.rtt_ms, route.fallback
        return d

    def _route(self, x, labels, probs, routing: dict):
        """Final labels, probabilities and what routing did; never raises (offline-first)."""
        try:
            if self.router is None:
                link = Link(self.profile.link, random.Random(zlib.crc32(f"oracle:{self.ns}:{self.name}".encode())))
                self.router = Router(self.ns, self.name, self.cfg["broker"], link=link)
            return self.router.route(x, labels, probs, routing)
        except Exception as exc:  # noqa: BLE001 - routing must never cost a decision
            log.warning("routing failed, keeping the edge decisions: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return labels, probs, None

    def _health(self, n: int, errors: int, latency_ms: float) -> None:
        verdict = self.slots.observe(n, errors, latency_ms)
        if verdict is None:
            return
        self._record("health", verdict)
        if not verdict["ok"]:
            t0 = time.perf_counter()
            try:
                bad, good = self.slots.rollback()
            except InstallError as exc:
                log.error("health check failed and no rollback possible: %s", exc)
                return
            self.window = Window(self.intents, self.clock())
            self._record(
                "rollback",
                {
                    "id": None,
                    "by": "health-check",
                    "from": bad.describe(),
                    "to": good.describe(),
                    "reason": verdict["reason"],
                    "rollback_ms": round((time.perf_counter() - t0) * 1000, 3),
                },
            )
        self.publish_state()

    def _shadow(self, x: np.ndarray, labels: np.ndarray) -> None:
        try:
            s_labels, _ = self.slots.shadow.decide(x)
        except Exception as exc:  # noqa: BLE001
            log.warning("shadow error: %s", exc)
            self.shadow_stats["errors"] += len(labels)
            return
        diff = s_labels != labels
        st = self.shadow_stats
        st["decisions"] += len(labels)
        st["diverged"] += int(diff.sum())
        for lab in labels[diff].tolist():
            st["by_intent"][self.intents[lab]] = st["by_intent"].get(self.intents[lab], 0) + 1
        for lab in s_labels[diff].tolist():
            st["shadow_by_intent"][self.intents[lab]] = st["shadow_by_intent"].get(self.intents[lab], 0) + 1

    def _capture(self, texts, labels, undone, digests, first, bundle) -> None:
        cap = self.capture
        now = round(self.clock(), 6)
        take = min(cap["left"], len(texts))
        for i in range(take):
            cap["records"].append(
                {
                    "decision": first + i,
                    "time": now,
                    "text": texts[i],
                    "bundle": bundle,
                    "digest": digests[i],
                    "label": int(labels[i]),
                    "undo": bool(undone[i]),
                }
            )
        cap["left"] -= take
        if len(cap["records"]) >= CAPTURE_PART or cap["left"] == 0:
            self._flush_capture()

    def _flush_capture(self) -> None:
        cap = self.capture
        last = cap["left"] == 0
        payload = topics.encode(
            {
                "schema": topics.SCHEMA_CAPTURE,
                "namespace": self.ns,
                "device": self.name,
                "capture_id": cap["id"],
                "part": cap["part"],
                "last": last,
                "consent": cap["consent"],
                "records": cap["records"],
            }
        )
        self._publish(topics.capture(self.ns, self.name), payload)
        cap["part"] += 1
        cap["records"] = []
        if last:
            self._record("capture-done", {"capture_id": cap["id"], "parts": cap["part"], "reason": "complete"})
            self.capture = None
            self.publish_state()

    def _close_capture(self, reason: str) -> dict:
        """End the open capture now, publishing nothing more of it; returns what was dropped."""
        cap = self.capture
        self.capture = None
        closed = {"capture_id": cap["id"], "parts": cap["part"], "dropped_records": len(cap["records"])}
        self._record("capture-done", {**closed, "reason": reason})
        return closed

    def step(self) -> int:
        """Decide what is due and spread it over windows, closing each that is full or old."""
        n = self.due()
        batch = self.decide(n) if n else None
        i = 0
        while True:
            now = self.clock()
            if batch is not None and i < len(batch):
                take = self._room(len(batch) - i)
                self.window.add(batch, i, i + take)
                i += take
            if now - self.window.start >= self.window_seconds or (
                self.window_max and len(self.window) >= self.window_max
            ):
                self.close_window(now)
            if batch is None or i >= len(batch):
                return n

    def close_window(self, now: float) -> None:
        w = self.window
        self.window = Window(self.intents, now)
        if len(w) and self.consent.allows("telemetry"):
            seq = self.outbox.next_seq()
            payload = w.close(
                end=now,
                namespace=self.ns,
                device=self.name,
                seq=seq,
                model=self.model_name,
                bundle=self.bundle_digest,
                profile=self.profile.name,
            )
            if self.slots.shadow is not None:
                st = self.shadow_stats
                payload["shadow"] = {
                    "bundle": self.slots.shadow.digest,
                    "decisions": st["decisions"],
                    "diverged": st["diverged"],
                    "errors": st["errors"],
                    "divergence": round(st["diverged"] / st["decisions"], 4) if st["decisions"] else 0.0,
                    "active_by_intent": st["by_intent"],
                    "shadow_by_intent": st["shadow_by_intent"],
                }
            self.shadow_stats = _fresh_shadow_stats()
            self.outbox.add(seq, topics.encode(payload))
            self.telemetry_time = round(now, 3)
        self._slo_window(w)  # micro-SLOs (issue 14): after the window left, so it names its bundle
        if now - self._last_save > 1.0:
            self._save_state()

    def pump(self) -> None:
        if not self.connected:
            return
        room = MAX_INFLIGHT - len(self.inflight)
        if room <= 0:
            return
        topic = topics.telemetry(self.ns, self.name)
        for seq, payload in self.outbox.unsent(room):
            self._publish(topic, payload, seq=seq)
            self.outbox.mark_sent(seq)

    # ---- main loop ---------------------------------------------------------------------
    def _drain_inbox(self, timeout: float) -> None:
        acked: list[int] = []
        pop, inflight = self.acks.popleft, self.inflight
        try:
            while True:
                seq = inflight.pop(pop(), None)
                if seq is not None:
                    acked.append(seq)
        except IndexError:
            pass
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
            while True:
                kind = item[0]
                if kind == "cmd":
                    if item[1] == topics.control(self.ns, "revocations"):
                        self._revocations(item[2])
                    elif item[1] == topics.control(self.ns, "learners"):
                        self._learners(item[2])
                    else:
                        self.handle_command(item[1], item[2])
                elif kind == "federated-done":
                    self._federated_done(item[1])
                elif kind == "connected":
                    if not item[1].is_failure:
                        self._on_connected()
                    else:
                        log.error("broker refused connection: %s", item[1])
                elif kind == "disconnected":
                    if self.connected:
                        log.warning("disconnected from broker")
                        self.disconnected_at = item[1]
                    self.connected = False
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        self.outbox.ack(acked)

    def _on_connected(self) -> None:
        log.info("connected to broker")
        self.connected = True
        self.client.subscribe(
            [
                (topics.device_prefix(self.ns, self.name) + "/cmd/#", 1),
                (topics.control(self.ns, "revocations"), 1),
                (topics.control(self.ns, "learners"), 1),
            ]
        )
        self.inflight.clear()
        self.outbox.rewind(self.disconnected_at)
        self.publish_state()

    def run(self) -> int:
        self._connect()
        log.info(
            "device %s/%s up (model %s, profile %s, boot %d)",
            self.ns,
            self.name,
            self.model_name,
            self.profile.name,
            self.boot,
        )
        try:
            while not self.stop_event.is_set():
                # As fast as possible (rate 0): decide and close windows for ~2 ms between
                # rounds of publishing, so SQLite writes and inbox handling are batched.
                burst_end = time.perf_counter() + 0.002
                # Backpressure: a full outbox pauses deciding (as fast as possible only).
                while (
                    (self.rate > 0 or self.outbox.backlog() < BACKPRESSURE)
                    and self.step()
                    and self.rate <= 0
                    and time.perf_counter() < burst_end
                ):
                    pass
                now = self.clock()
                self.pump()
                self.link.due(now)
                if now - self._last_state >= HEARTBEAT_S:
                    self.publish_state()
                if now - self._last_prune >= 5.0:
                    self.outbox.prune()
                    self._last_prune = now
                self._network(self._sleep_for(now))
                self._drain_inbox(0)
        finally:
            t0 = time.monotonic()
            log.info("stopping")
            self.shutdown()
            log.info("stopped in %.2f s", time.monotonic() - t0)
        return 0

    def _network(self, timeout: float) -> None:
        """Drive paho (read, write, keepalive) for up to ``timeout`` s; reconnect with backoff."""
        c = self.client
        if c.socket() is not None:
            c.loop(timeout=timeout)
            return
        now = time.monotonic()
        if now >= self._next_connect:
            try:
                c.reconnect()
                self._backoff = 0.05
                return
            except OSError:
                self._next_connect = now + self._backoff
                self._backoff = min(1.0, self._backoff * 2)
        if timeout > 0:
            self.stop_event.wait(min(timeout, 0.05))

    def _sleep_for(self, now: float) -> float:
        if self.rate <= 0:
            return 0.0005 if self.outbox.backlog() >= BACKPRESSURE else 0.0
        wake = [self.window.start + self.window_seconds, self._last_state + HEARTBEAT_S]
        nxt = self.link.next_due()
        if nxt is not None:
            wake.append(nxt)
        until_next = (self._rate_done + 1) / self.rate - (time.monotonic() - self._rate_t0)
        return max(0.0, min(min(wake) - now, until_next, 0.05))

    def shutdown(self) -> None:
        try:
            self._save_state()
            self.outbox.flush()
            if self.client is not None and self.connected:
                deadline = time.monotonic() + 2.0
                while self.link and time.monotonic() < deadline:  # let shaped messages out
                    self.link.due(self.clock())
                    time.sleep(0.005)
                info = self.client.publish(
                    topics.state(self.ns, self.name), topics.encode(self._state(online=False)), qos=1, retain=True
                )
                deadline = time.monotonic() + 1.0
                while not info.is_published() and time.monotonic() < deadline and self.client.socket():
                    self.client.loop(timeout=0.05)
            self.outbox.close()
        finally:
            if self.router is not None:
                self.router.close()
            if self.client is not None:
                self.client.disconnect()
                if self.client.socket() is not None:
                    self.client.loop(timeout=0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab_hardware.runtime.device",
        description="Run one simulated edge device (started by the lab supervisor).",
    )
    p.add_argument("--config", required=True, help="device config JSON written by the supervisor")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = json.loads(Path(args.config).read_text())
    except (OSError, ValueError) as exc:
        print(f"livelab device: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    apply_profile_limits(Profile.from_dict(config["profile"]))
    dev = Device(config)
    signals.route({signal.SIGTERM: dev.stop_event.set, signal.SIGINT: dev.stop_event.set})
    return dev.run()


if __name__ == "__main__":
    sys.exit(main())
