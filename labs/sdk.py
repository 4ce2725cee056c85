"""The learner SDK: ``from labs import Lab``.

A notebook finds the running lab through, in order: explicit arguments,
papermill-injected environment (``LIVELAB_BROKER_URL``, ``LIVELAB_NAMESPACE``,
``LIVELAB_USERNAME``, ``LIVELAB_PASSWORD``), or the descriptor ``lab.json`` in
``$LIVELAB_HOME`` (which the ``livelab`` kernelspec sets).  It connects with
the learner identity, which the broker confines to one namespace: the SDK
cannot see or command another learner's devices even if it tried.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from lab_hardware import audit as _audit
from lab_hardware import consent as _consent
from lab_hardware import home as _home
from lab_hardware import mqtt, topics
from lab_hardware.runtime.broker import BrokerAddress


log = logging.getLogger("livelab.sdk")

#: This kernel session: the idempotency key of its announced learning events (re-running
#: ``Lab.connect`` in one kernel records a module opening once).
_SESSION = uuid.uuid4().hex

#: Windows kept for telemetry readers (about 3 hours of a 3-device lab).
MAX_BUFFERED = 100_000
#: Alert events kept (newest).
MAX_ALERTS = 10_000
#: A lab device sends its state every second (and windows while telemetry is on): one silent
#: this long is stalled - the machine running the lab starves it (or this kernel).
STALL_S = 2.5
#: What the SDK writes (stderr) and raises when a telemetry read ended because a lab device
#: stalled; the grader reads it, in a submission that lost points, as the machine's failure.
STALL_MARK = "lab device stalled"
#: Seconds :meth:`Lab.close` waits at most for the broker to acknowledge the announcements.
ANNOUNCE_FLUSH_S = 10.0


class LabConnectionError(RuntimeError):
    """No lab could be found or reached; the message says what to do."""


class CommandRefused(RuntimeError):
    """The device refused a command; the message is its one-line reason."""


class DeviceTimeoutError(TimeoutError):
    """A lab device did not answer a command in time (``Lab.command`` and every call built on
    it).  Devices are the lab's, not the learner's: on a busy machine one may answer late.  The
    grader reads this error, in any cell of a submission that lost points, as the grading
    machine's failure: it grades again, and if it keeps happening records
    ``infrastructure-error`` (no score), never a 0 for the learner's code."""


class InfrastructureError(RuntimeError):
    """The lab itself (a device, a planted fixture, the broker), not the learner's work, failed.

    Raised by set-up code a module runs for the learner (e.g. ``courses.incidents.plant``).
    The grader recognises it in a locked cell and grades the submission again, and if it
    keeps failing records ``infrastructure-error`` - never a score - so a busy or broken grading
    machine is never a learner's 0.
    """


@dataclass
class Connection:
    host: str
    port: int
    namespace: str
    username: str | None
    password: str | None
    devices: list[str]
    intents: list[str]
    defect_intent: str | None = None
    home: str | None = None
    learner_name: str | None = None


def _find(home=None, namespace=None, broker_url=None, username=None, password=None) -> Connection:
    url = broker_url or os.environ.get("LIVELAB_BROKER_URL")
    if url:
        addr = BrokerAddress.from_url(url)
        ns = namespace or os.environ.get("LIVELAB_NAMESPACE") or "default"
        return Connection(
            addr.host,
            addr.port,
            ns,
            username or addr.username or os.environ.get("LIVELAB_USERNAME"),
            password or addr.password or os.environ.get("LIVELAB_PASSWORD"),
            [d for d in os.environ.get("LIVELAB_DEVICES", "").split(",") if d],
            [i for i in os.environ.get("LIVELAB_INTENTS", "").split(",") if i],
            os.environ.get("LIVELAB_DEFECT_INTENT") or None,
            home=str(_home.resolve(home)),
        )
    h = _home.resolve(home)
    path = h / _home.DESCRIPTOR
    if not path.exists():
        raise LabConnectionError(f"no running lab found ({path} is missing): start one with 'livelab up'")
    d = _home.read_json(path)
    if namespace and namespace != d["namespace"]:
        raise LabConnectionError(f"the lab in {h} serves namespace {d['namespace']!r}, not {namespace!r}")
    return Connection(
        d["broker"]["host"],
        d["broker"]["port"],
        d["namespace"],
        username or d["learner"]["username"],
        password or d["learner"]["password"],
        list(d["devices"]),
        list(d.get("intents") or []),
        d.get("defect_intent"),
        str(h),
        d.get("learner_name") or d.get("owner"),
    )


class Lab:
    """A connection to one namespace of a live lab."""

    def __init__(
        self,
        conn: Connection,
        *,
        module: str | None = None,
        learner: str | None = None,
        course: str | None = None,
        version: str | None = None,
        team: str | None = None,
    ):
        opened_at = time.time()
        self.conn = conn
        self.namespace = conn.namespace
        self.module = module
        # The curriculum a module notebook belongs to (its course id and released version), so
        # that time-to-signal can be compared across curriculum versions.
        self.course = course
        self.version = version
        self.learner = (
            learner or os.environ.get("LIVELAB_LEARNER") or conn.learner_name or os.environ.get("USER") or "learner"
        )
        # The learner's team, for per-team time-to-signal (``LIVELAB_TEAM`` when not given).
        self.team = team or os.environ.get("LIVELAB_TEAM") or ""
        self.states: dict[str, dict] = {}
        self._windows: list[dict] = []  # every window received, in arrival order
        self._windows_dropped = 0  # trimmed from the front of _windows
        self._alerts: list[dict] = []  # devices' alert events (micro-SLOs), in arrival order
        self._cond = threading.Condition()
        self._seen: dict[str, set[int]] = collections.defaultdict(set)
        self._replies: dict[str, list[dict]] = collections.defaultdict(list)
        self._reply_events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._listeners: list = []
        self.duplicates = 0
        self.revocations: list[dict] = []  # the control plane's retained list (read-only here)
        self._revoked_here: list[dict] = []
        self._hints_shown: dict[str, int] = {}
        self._telemetry_recorder: threading.Thread | None = None
        self._announced: list = []  # the announcements' publishes, until the broker acknowledges them
        self._heard: dict[str, float] = {}  # device -> when it last sent anything (monotonic)
        self._heard_since = time.monotonic()
        self.stalls: list[dict] = []  # telemetry reads a stalled device cut short (see STALL_MARK)
        self._client = mqtt.client(
            f"learner.{conn.namespace}-{uuid.uuid4().hex[:8]}", username=conn.username, password=conn.password
        )
        self._client.on_message = self._on_message
        try:
            mqtt.connect(self._client, conn.host, conn.port)
            pre = topics.namespace_prefix(self.namespace)
            for kind in ("state", "telemetry", "audit", "events/+"):
                mqtt.subscribe_wait(self._client, f"{pre}/devices/+/{kind}")
            mqtt.subscribe_wait(self._client, topics.control(self.namespace, "revocations"))
        except mqtt.ConnectError as exc:
            raise LabConnectionError(str(exc)) from None
        mqtt.wait_until(lambda: len(self.states) >= len(conn.devices), 2.0)
        if module:
            self._record(("module-opened", opened_at), ("lab-connected", time.time()))
            from labs.checking import install_test_marks

            install_test_marks(module)  # a visible test that passes prints its ✓ line

    def _record(self, *kinds_times: tuple[str, float]) -> None:
        """Announce learning events on ``livelab/<ns>/learner/events`` (one message each, QoS 1).

        The kernel does not write the events store: the lab's trusted recorder
        (``labs/recorder.py``) stores each announcement under the namespace's registered
        learner, with its own clock.  Idempotent per kernel session (``session``)."""
        topic = topics.namespace_prefix(self.namespace) + "/learner/events"
        for kind, t in kinds_times:
            event = {
                "schema": "livelab.event/v1",
                "kind": kind,
                "module": self.module,
                "learner": self.learner,
                "time": t,
                "session": _SESSION,
            }
            for k in ("course", "version", "team"):
                if getattr(self, k):
                    event[k] = getattr(self, k)
            try:
                info = self._client.publish(topic, topics.encode(event), qos=1)
            except (ValueError, RuntimeError) as exc:  # never fails the learner's notebook
                log.warning("could not announce %s: %s", kind, exc)
                continue
            with self._lock:
                self._announced = [i for i in self._announced if not i.is_published()] + [info]

    @classmethod
    def connect(
        cls,
        module: str | None = None,
        *,
        home=None,
        namespace: str | None = None,
        broker_url: str | None = None,
        username: str | None = None,
        password: str | None = None,
        learner: str | None = None,
        course: str | None = None,
        version: str | None = None,
        team: str | None = None,
    ) -> "Lab":
        """Connect to the running lab (see the module doc for where it is found).

        ``module`` records that the learner opened that module (a ``module-opened`` event,
        with ``course`` and its curriculum ``version`` when given, and the learner's ``team``,
        default ``$LIVELAB_TEAM``).  A name with control characters or over the length limit is
        refused first, with one line (``labs.names.NameRefused``), before any lab is looked for.
        """
        from labs import names

        names.check_all({"module": module, "learner": learner, "course": course, "version": version, "team": team})
        try:
            conn = _find(home, namespace, broker_url, username, password)
        except ValueError as exc:
            raise LabConnectionError(str(exc)) from None
        return cls(conn, module=module, learner=learner, course=course, version=version, team=team)

    # ---- incoming ----------------------------------------------------------------------
    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/control/revocations"):
            try:
                self.revocations = list(topics.decode(msg.payload).get("revoked", []))
            except ValueError:
                pass
            return
        p = topics.parse(msg.topic)
        if p is None:
            return
        try:
            data = topics.decode(msg.payload)
        except ValueError:
            return
        dev, kind = p["device"], p["kind"]
        self._heard[dev] = time.monotonic()
        if kind == "state":
            self.states[dev] = data
        elif kind == "telemetry":
            seq = data.get("seq")
            with self._cond:
                if seq in self._seen[dev]:
                    self.duplicates += 1
                    return
                self._seen[dev].add(seq)
                self._windows.append(data)
                if self.module and self._telemetry_recorder is None:  # off paho's network thread
                    self._telemetry_recorder = threading.Thread(
                        target=self._record, args=(("telemetry-first-seen", time.time()),), daemon=True
                    )
                    self._telemetry_recorder.start()
                if len(self._windows) > MAX_BUFFERED:
                    cut = len(self._windows) - MAX_BUFFERED
                    del self._windows[:cut]
                    self._windows_dropped += cut
                self._cond.notify_all()
        elif kind == "events" and p.get("event") == "alert":
            with self._cond:
                self._alerts.append(data)
                del self._alerts[:-MAX_ALERTS]
                self._cond.notify_all()
        elif kind == "audit":
            rid = data.get("reply_to")
            for rec in data.get("records", []):
                cid = rec.get("data", {}).get("id")
                if cid and cid in self._reply_events:
                    self._replies[cid].append(rec)
                    self._reply_events[cid].set()
            if rid and rid in self._reply_events:
                self._replies[rid].extend(data.get("records", []))
                if data.get("last"):
                    self._reply_events[rid].set()
        for fn in list(self._listeners):
            try:  # a failing listener must not end paho's network thread
                fn(kind, dev, data)
            except Exception:  # noqa: BLE001
                log.exception("listener %r failed", fn)

    def add_listener(self, fn) -> None:
        """Call ``fn(kind, device, payload)`` for every message (used by the widgets)."""
        self._listeners.append(fn)

    def remove_listener(self, fn) -> None:
        try:
            self._listeners.remove(fn)
        except ValueError:
            pass

    # ---- devices -----------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        return sorted(set(self.conn.devices) | set(self.states))

    @property
    def intents(self) -> list[str]:
        return self.conn.intents

    def _check_device(self, device: str) -> None:
        if device not in self.devices:
            raise ValueError(f"unknown device {device!r}; this lab has {', '.join(self.devices)}")

    def _command_topic(self, device: str, name: str) -> str:
        """``.../cmd/<name>/<my username>``: the broker lets this identity write only its own
        author level, so the device knows who sent it without believing the payload.  (An
        external broker's user that is not a valid topic level falls back to the two-level
        form, which such a broker does not confine anyway.)"""
        user = self.conn.username
        sender = user if isinstance(user, str) and topics.AUTHOR_RE.match(user) else None
        return topics.command(self.namespace, device, name, sender=sender)

    def command(self, device: str, name: str, *, timeout: float = 5.0, **args: Any) -> dict:
        """Send a command and wait for the device's audit record answering it."""
        self._check_device(device)
        args.pop("by", None)  # authorship is the broker's to prove, not the payload's
        cid = uuid.uuid4().hex
        ev = self._reply_events[cid] = threading.Event()
        payload = {"schema": topics.SCHEMA_COMMAND, "id": cid, **args}
        if self.learner != self.conn.learner_name and topics.AUTHOR_RE.match(self.learner or ""):
            # a claim the device records as such ('on_behalf'), never as who sent it
            payload["on_behalf"] = self.learner
        self._client.publish(self._command_topic(device, name), topics.encode(payload), qos=1)
        try:
            if not ev.wait(timeout):
                raise DeviceTimeoutError(
                    f"device {device} did not answer '{name}' within {timeout:.0f} s: is it online?"
                )
            recs = self._replies[cid]
        finally:
            self._reply_events.pop(cid, None)
            self._replies.pop(cid, None)
        if recs and recs[0]["kind"] == "refused":
            raise CommandRefused(f"{device} refused '{name}': {recs[0]['data']['reason']}")
        return recs[0] if recs else {}

    def grant_consent(self, device: str, scope: str = "telemetry", **kw) -> dict:
        """Allow a device to publish ``scope`` (``telemetry`` or ``replay-capture``)."""
        if scope not in _consent.SCOPES:
            raise ValueError(f"unknown consent scope {scope!r}; use one of {', '.join(_consent.SCOPES)}")
        return self.command(device, "consent", scope=scope, grant=True, **kw)

    def revoke_consent(self, device: str, scope: str = "telemetry", **kw) -> dict:
        if scope not in _consent.SCOPES:
            raise ValueError(f"unknown consent scope {scope!r}; use one of {', '.join(_consent.SCOPES)}")
        return self.command(device, "consent", scope=scope, grant=False, **kw)

    def set_model(self, device: str, model: str, **kw) -> dict:
        return self.command(device, "set-model", model=model, **kw)

    # ---- bundles -----------------------------------------------------------------------
    @staticmethod
    def _bundle_b64(bundle) -> str:
        import base64
        from pathlib import Path

        data = bundle if isinstance(bundle, bytes) else Path(bundle).read_bytes()
        return base64.b64encode(data).decode()

    def install(
        self, device: str, bundle, *, rollback: bool = False, timeout: float = 10.0, checklist: dict | None = None
    ) -> dict:
        """Send a signed bundle (path or bytes); the device verifies, installs atomically and
        starts its health check.  Raises CommandRefused with the device's one-line reason.
        ``checklist`` (a rollout's promotion: the promoter and the signed course completions it
        relied on, see :mod:`labs.rollout`) is written into the device's install record."""
        extra = {"checklist": checklist} if checklist is not None else {}
        return self.command(
            device, "install", bundle=self._bundle_b64(bundle), rollback=rollback, timeout=timeout, **extra
        )

    def rollback(self, device: str, reason: str = "requested", **kw) -> dict:
        return self.command(device, "rollback", reason=reason, **kw)

    def shadow(self, device: str, bundle=None, *, timeout: float = 10.0) -> dict:
        """Run ``bundle`` in shadow mode beside the active one (None stops shadowing)."""
        if bundle is None:
            return self.command(device, "shadow", stop=True, timeout=timeout)
        return self.command(device, "shadow", bundle=self._bundle_b64(bundle), timeout=timeout)

    def _signers_of(self, digest: str) -> set[str]:
        """Key ids of the copies of ``digest`` this namespace's devices ran or run."""
        out = set()
        for st in list(self.states.values()):
            for ident in st.get("ran") or []:
                d, _, k = ident.partition(":")
                if d == digest and k:
                    out.add(k)
            for slot in (st.get("active"), st.get("shadow")):
                if isinstance(slot, dict) and slot.get("digest") == digest and slot.get("keyid"):
                    out.add(slot["keyid"])
        return out

    def revoke(
        self, bundle, reason: str = "", *, keyid: str | None = None, all_signers: bool = False, timeout: float = 10.0
    ) -> list[dict]:
        """Revoke a bundle on every device of the namespace.

        ``bundle`` is a digest, a bundle file or a read bundle.  A revocation names the
        signer (the same content signed by another key stays installable): ``keyid``, the
        bundle's own signer, or, for a bare digest, the one signer this namespace's devices
        ran it from; ``all_signers=True`` revokes every signer's copy.  A learner's revocation
        is a ``revoke`` command to each device (the retained control list is the control
        plane's alone); the control identity updates that retained list.  Returns the
        revocations this call made and the control list holds."""
        import re

        if all_signers and keyid is not None:
            raise ValueError("say keyid=... (one signer's copy) or all_signers=True, not both")
        digest = bundle
        if not isinstance(bundle, str):
            from lab_hardware.modelops import bundle as _bundle

            b = bundle if hasattr(bundle, "digest") and hasattr(bundle, "keyid") else _bundle.read(bundle)
            digest, keyid = b.digest, keyid or b.keyid
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError("a bundle digest is 64 lower-case hex characters (see 'livelab bundle inspect')")
        if not isinstance(reason, str) or len(reason) > 512:
            raise ValueError("a revocation reason is text of at most 512 characters")
        if all_signers:
            keyid = None
        elif keyid is None:
            signers = self._signers_of(digest)
            if len(signers) != 1:
                raise ValueError(
                    f"bundle {digest[:12]} ran here signed by {len(signers)} keys: name the signer "
                    "with keyid=... (see 'livelab bundle inspect') or say all_signers=True"
                )
            keyid = signers.pop()
        if keyid is not None and not re.fullmatch(r"[0-9a-f]{16}", keyid):
            raise ValueError("a key id is 16 lower-case hex characters (see 'livelab keys list')")
        entry = {
            "digest": digest,
            "keyid": keyid,
            "all_signers": bool(all_signers),
            "reason": reason,
            "time": time.time(),
        }
        if self.conn.username == "control":
            current = [r for r in self.revocations if isinstance(r, dict)]
            key = lambda r: (r.get("digest"), r.get("keyid"), bool(r.get("all_signers")))  # noqa: E731
            if key(entry) not in {key(r) for r in current}:
                current.append(entry)
            payload = topics.encode({"schema": topics.SCHEMA_REVOCATIONS, "revoked": current})
            info = self._client.publish(topics.control(self.namespace, "revocations"), payload, qos=1, retain=True)
            info.wait_for_publish(timeout)
            self.revocations = current
            return current
        args = {"digest": digest, "reason": reason}
        args.update({"all_signers": True} if all_signers else {"keyid": keyid})
        for dev in self.devices:
            self.command(dev, "revoke", timeout=timeout, **args)
        self._revoked_here.append(entry)
        return [*[r for r in self.revocations if isinstance(r, dict)], *self._revoked_here]

    # ---- replay capture ----------------------------------------------------------------
    def capture(self, device: str, decisions: int = 200, *, wait: bool = True, timeout: float = 30.0) -> str:
        """Capture the device's next ``decisions`` inputs, scrubbed on the device, into the
        lab's replay store (needs ``replay-capture`` consent).  Returns the capture id."""
        rec = self.command(device, "capture", decisions=decisions)
        cid = rec["data"]["capture_id"]
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if (
                    self.states.get(device, {}).get("capturing") is False
                    and self.states[device].get("time", 0) > rec["time"]
                ):
                    break
                time.sleep(0.05)
            else:
                raise TimeoutError(f"capture {cid} on {device} did not finish within {timeout:.0f} s")
        return cid

    # ---- federated adapters --------------------------------------------------------------
    def federated_round(self, bundle, out, *, version: str, **kw: Any) -> dict:
        """Run a federated adapter round (``labs.federated.run_round``; docs/federated.md): the
        devices running ``bundle`` fit a per-intent bias on their own consented undo signals, the
        lab's Flower server aggregates with clipping and Gaussian noise (central DP), the privacy
        ledger charges each participant, and ``out`` is the unsigned candidate bundle.  Options:
        ``devices``, ``rounds``, ``noise_multiplier``, ``clipping_norm``, ``epsilon_budget``,
        ``delta``, ``min_signals``, ``round_id``, ``timeout``.  Returns the round's summary;
        ``labs.federated.FederatedError`` (one line) when it cannot run."""
        from labs import federated

        return federated.run_round(self, bundle, out, version=version, **kw)

    def privacy_ledger(self) -> list[dict]:
        """Each device's privacy budget: epsilon budget, spent (dp-accounting's RDP accountant
        over the rounds it took part in), left, rounds, and why it stopped participating."""
        from labs import federated

        return federated.ledger(self.conn.home or _home.resolve())

    # ---- the metadata trail (docs/lineage.md) --------------------------------------------
    def lineage(self, kind: str | None = None, artifact: str | None = None) -> list[dict]:
        """The lab's metadata trail, oldest first: one summary per OpenLineage run event (time,
        kind, artifact, state COMPLETE/FAIL, reason).  ``kind``: only events of that kind (e.g.
        ``"adapter.round"``, ``"bundle.sign"``); ``artifact``: only those whose artifact name or
        run id starts with it (at least 6 characters).  Reads ``<home>/lineage/events.jsonl``."""
        from lab_hardware.modelops import lineage

        events = lineage.read_events(self.conn.home or _home.resolve())
        if artifact is not None:
            events = lineage.find(events, artifact)
        rows = [lineage.summary(e) for e in events]
        if kind is not None:
            rows = [r for r in rows if r["kind"] == kind or r["kind"].endswith("." + kind)]
        return rows

    def privacy_audit(self, artifact: str | None = None) -> list[dict]:
        """The privacy audit of every artifact the lab observed sending (or those whose key
        starts with ``artifact``): declared fields against the fields the lab saw, ``ok`` False
        with the undeclared fields when the artifact sent more than it declared."""
        from lab_hardware.modelops import lineage

        return [
            {
                "artifact": key,
                "ok": v.ok,
                "observed": list(v.observed),
                "undeclared": list(v.undeclared),
                "messages": v.messages,
                "reason": v.reason,
            }
            for key, _entry, v in lineage.audit_all(self.conn.home or _home.resolve(), artifact=artifact)
        ]

    # ---- telemetry ---------------------------------------------------------------------
    def telemetry(
        self, device: str | None = None, *, timeout: float = 5.0, limit: int | None = None, buffered: bool = False
    ) -> Iterator[dict]:
        """Decoded aggregation windows as they arrive (duplicates dropped by seq).

        Starts with the next window to arrive (``buffered=True``: with every window
        received since connecting).  Stops after ``limit`` windows or when none
        arrived for ``timeout`` seconds.  Each call has its own cursor, so two
        readers (a widget and a loop) do not steal windows from each other.
        """
        if device is not None:
            self._check_device(device)
        with self._cond:
            cursor = self._windows_dropped if buffered else self._windows_dropped + len(self._windows)
        n = 0
        while limit is None or n < limit:
            deadline = time.monotonic() + timeout
            timed_out = False
            with self._cond:
                while True:
                    cursor = max(cursor, self._windows_dropped)
                    i = cursor - self._windows_dropped
                    while i < len(self._windows) and device is not None and self._windows[i]["device"] != device:
                        i += 1
                    cursor = i + self._windows_dropped
                    if i < len(self._windows):
                        w = self._windows[i]
                        cursor += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        timed_out = True
                        break
                    self._cond.wait(left)
            if timed_out:
                self._stalled(device, timeout)
                return
            n += 1
            yield w

    def _stalled(self, device: str | None, timeout: float) -> list[dict]:
        """After a telemetry read ended at its timeout: the devices it waited for that sent
        nothing at all (not even their state) for :data:`STALL_S` - stalled by the machine, not
        an empty stream (no consent) - recorded in ``stalls`` and said on stderr.  Only while
        this connection is up: a namespace removed under a running kernel takes the devices and
        this identity away together (the broker drops it), which is no stall."""
        if not self._client.is_connected():
            return []
        now = time.monotonic()
        found = []
        for d in [device] if device is not None else self.devices:
            if (self.states.get(d) or {}).get("online") is False:
                continue  # it said it went offline
            silent = now - self._heard.get(d, self._heard_since)
            if silent >= STALL_S:
                found.append({"device": d, "silent_s": round(silent, 2), "timeout_s": timeout, "time": time.time()})
        for s in found:
            print(
                f"livelab: {STALL_MARK}: {s['device']} sent nothing for {s['silent_s']:.1f} s (it reports every "
                f"second), so telemetry stopped at its {timeout:g} s timeout. The machine running the lab is "
                "likely overloaded: this is not your code.",
                file=sys.stderr,
            )
        self.stalls.extend(found)
        return found

    def windows(self, device: str | None = None) -> list[dict]:
        """Every window received since connecting (a snapshot; newest last)."""
        with self._cond:
            return [w for w in self._windows if device is None or w["device"] == device]

    def next_window(self, device: str | None = None, timeout: float = 5.0) -> dict:
        """One window, or TimeoutError saying why there may be none."""
        stalls = len(self.stalls)
        for w in self.telemetry(device, timeout=timeout, limit=1):
            return w
        who = device or "any device"
        if len(self.stalls) > stalls:
            names = ", ".join(s["device"] for s in self.stalls[stalls:])
            raise DeviceTimeoutError(f"no telemetry from {who} within {timeout:.0f} s: {STALL_MARK} ({names})")
        raise TimeoutError(
            f"no telemetry from {who} within {timeout:.0f} s: is telemetry consent granted (lab.grant_consent)?"
        )

    # ---- micro-SLOs --------------------------------------------------------------------
    def slos(self, device: str | None = None) -> dict[str, dict | None]:
        """Each device's micro-SLOs as its latest state reports them: the bundle they belong
        to and, per objective, the error budget remaining and the page/ticket burn rates
        (``None``: the active model declares none).  See ``docs/slo.md``."""
        if device is not None:
            self._check_device(device)
        return {d: self.states.get(d, {}).get("slo") for d in ([device] if device else self.devices)}

    def alerts(self, device: str | None = None) -> list[dict]:
        """Alert events the devices published since connecting (an SLO burning its budget;
        ``action`` says whether the device rolled back), oldest first."""
        with self._cond:
            return [a for a in self._alerts if device is None or a.get("device") == device]

    def wait_alert(self, device: str | None = None, *, slo: str | None = None, timeout: float = 30.0) -> dict:
        """The first alert event (of ``device``, of SLO ``slo``) received since connecting;
        TimeoutError if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for a in self._alerts:
                    if (device is None or a.get("device") == device) and (slo is None or a.get("slo") == slo):
                        return a
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no SLO alert from {device or 'any device'} within {timeout:.0f} s")
                self._cond.wait(left)

    def routing(self, device: str | None = None) -> dict[str, dict | None]:
        """Each device's running routing totals as its latest state reports them (decisions,
        routed, answered, diverged, fallbacks; ``None``: its bundle declares no ``routing``).
        Per-window figures are in each window's ``oracle`` field.  See ``docs/oracle.md``."""
        if device is not None:
            self._check_device(device)
        return {d: self.states.get(d, {}).get("routing") for d in ([device] if device else self.devices)}

    def wait_health(self, device: str, bundle, *, timeout: float = 30.0) -> dict:
        """The device's health-check verdict on ``bundle`` (a digest, a bundle file or a read
        bundle) once it is in the device's audit chain: the ``health`` record's data (``ok``,
        ``reason``).  TimeoutError if none came within ``timeout`` seconds."""
        digest = bundle if isinstance(bundle, str) and len(bundle) == 64 else None
        if digest is None:
            from lab_hardware.modelops import bundle as _bundle

            digest = bundle.digest if hasattr(bundle, "digest") else _bundle.read(bundle).digest
        deadline = time.monotonic() + timeout
        while True:
            for rec in reversed(self.audit_chain(device).records):
                if rec["kind"] == "health" and rec["data"].get("bundle") == digest:
                    return rec["data"]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no health verdict from {device} on {digest[:12]} within {timeout:.0f} s")
            time.sleep(0.25)

    def retrain(
        self,
        out,
        *,
        version: str,
        device: str,
        capture_ids: list[str] | None = None,
        trigger: dict | str | None = None,
        parent=None,
        name: str = "intents",
    ) -> dict:
        """Retrain an edge model from ``device``'s consented captures in the lab's replay store,
        labelled by the scenario's oracle, into the unsigned bundle ``out`` (``labs.retrain.build``,
        docs/retraining.md).  ``trigger`` is the alert event of a ``retrain`` objective (as
        ``wait_alert`` returns it) or ``DEVICE#INDEX``; ``parent`` (the diverging bundle) lends its
        routing and SLOs.  Consent and the trigger are verified against the device's audit chain
        as it sends it now.  Raises ``labs.retrain.RetrainError`` with a one-line reason."""
        from labs import retrain as _retrain

        self._check_device(device)
        if isinstance(trigger, dict):
            ref = trigger.get("retrain") or trigger.get("audit") or {}
            if not isinstance(ref, dict) or not isinstance(ref.get("index"), int) or not trigger.get("device"):
                raise _retrain.RetrainError("trigger must be an SLO alert event (lab.wait_alert) or DEVICE#INDEX")
            trigger = f"{trigger['device']}#{ref['index']}"
        devices = {device}
        if isinstance(trigger, str) and "#" in trigger:
            devices.add(trigger.split("#", 1)[0].rsplit("/", 1)[-1])
        chains = {(self.namespace, d): self.audit_chain(d).records for d in sorted(devices) if d in self.devices}
        return _retrain.build(
            self.conn.home or ".",
            out,
            version=version,
            name=name,
            namespace=self.namespace,
            device=device,
            capture_ids=capture_ids,
            trigger=trigger,
            parent=parent,
            chains=chains,
        )

    # ---- audit -------------------------------------------------------------------------
    def audit_chain(self, device: str, *, timeout: float = 5.0) -> "AuditView":
        """The device's whole audit chain, fetched over MQTT, ready to verify."""
        self._check_device(device)
        cid = uuid.uuid4().hex
        ev = self._reply_events[cid] = threading.Event()
        self._client.publish(
            self._command_topic(device, "audit"),
            topics.encode({"schema": topics.SCHEMA_COMMAND, "id": cid, "from": 0}),
            qos=1,
        )
        try:
            if not ev.wait(timeout):
                raise TimeoutError(f"device {device} did not send its audit chain within {timeout:.0f} s")
            recs = list(self._replies[cid])
        finally:
            self._reply_events.pop(cid, None)
            self._replies.pop(cid, None)
        return AuditView(device, recs)

    # ---- signal: checks and submissions (the grading service judges, not this kernel) ------
    def check(self, module: str | None = None, *, timeout: float = 60.0):
        """Ask the grading service to run this module's checks - the code that grades - on what
        the lab saw in your namespace since you opened the module; returns a report with each
        item passed or failed and what to do.  The service, not this kernel, records the
        check-passed/check-failed events."""
        from labs.checking import check

        return check(self, module, timeout=timeout)

    def submit(self, notebook=None, module: str | None = None, *, timeout: float = 600.0):
        """Send the saved notebook (default: this one) to the grading service, which grades it in
        a fresh namespace exactly as ``livelab grade`` does; returns the score and the path of the
        feedback page (written next to the notebook).  Attempts are unlimited; each is kept."""
        from labs.checking import submit

        return submit(self, notebook, module, timeout=timeout)

    # ---- hints -------------------------------------------------------------------------
    def hint(self, exercise: str) -> str:
        """The next hint for ``exercise`` (its name in the heading, e.g. ``"quiet"``), printed
        and returned: the first call shows the first hint, each further call one more.

        Hints are read from the ``hints`` table of this module in the course release the
        notebook belongs to (``course.toml``), so they version with the course."""
        hints = _hints(self.course, self.version, self.module)
        if not hints:
            text = (
                f"no hints for module {self.module or '?'} of {self.course or '?'} {self.version or ''}".rstrip()
                + ": ask your course's channel"
            )
        elif exercise not in hints:
            text = f"no exercise {exercise!r} in this module; exercises with hints: {', '.join(hints)}"
        else:
            seen = self._hints_shown.get(exercise, 0)
            steps = hints[exercise]
            n = min(seen, len(steps) - 1)
            self._hints_shown[exercise] = seen + 1
            more = " (that was the last hint)" if n == len(steps) - 1 else " (call again for the next)"
            text = f"hint {n + 1}/{len(steps)} for {exercise!r}{more}: {steps[n]}"
        print(text)
        return text

    # ---- widgets -----------------------------------------------------------------------
    def panel(self, *, watch: str | None = None):
        """An ipywidgets panel: status, consent toggles and a live telemetry chart.

        ``watch`` names an intent to highlight; by default none is (``panel.watch(intent)``
        later), so the panel never gives away what an exercise asks the learner to find."""
        from labs.widgets import LabPanel

        return LabPanel(self, watch=watch)

    def close(self) -> None:
        """Disconnect, once the broker has acknowledged this session's announcements (at most
        :data:`ANNOUNCE_FLUSH_S`): a notebook that opens a module and closes the lab at once
        keeps its ``module-opened``/``lab-connected`` events.  (paho's loop_stop does not wait
        for QoS 1 publishes; a disconnect racing the broker's acknowledgements lost one.)"""
        if self._telemetry_recorder is not None:
            self._telemetry_recorder.join(5.0)
        deadline = time.monotonic() + ANNOUNCE_FLUSH_S
        with self._lock:
            pending, self._announced = self._announced, []
        for info in pending:  # (not while the broker is gone: nothing would acknowledge them)
            while not info.is_published() and self._client.is_connected() and time.monotonic() < deadline:
                try:
                    info.wait_for_publish(min(0.1, max(0.0, deadline - time.monotonic())))
                except (ValueError, RuntimeError):  # never queued (no connection): nothing to wait for
                    break
        mqtt.stop(self._client)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _course_roots() -> list[Path]:
    roots = [Path(os.environ["LIVELAB_COURSES_DIR"])] if os.environ.get("LIVELAB_COURSES_DIR") else []
    return roots + [Path(__file__).resolve().parents[1] / "courses", Path.cwd()]


def _hints(course: str | None, version: str | None, module: str | None) -> dict[str, list[str]]:
    """``exercise -> hints`` of ``module`` in the release ``version`` of ``course`` (else the
    course's source when it is at that version, else a ``course.toml`` in the working directory,
    as ``livelab course fetch`` leaves it).  Empty when none is found: hints are optional."""
    import json
    import tomllib
    from pathlib import Path

    if not course or not module:
        return {}
    for ws in (Path.cwd(), Path.cwd().parent):  # a workspace from 'livelab course fetch'
        try:
            info = json.loads((ws / ".livelab-course.json").read_text())
        except (OSError, ValueError):
            continue
        if info.get("course") == course and (not version or info.get("version") == version):
            for m in info.get("modules") or []:
                if isinstance(m, dict) and m.get("id") == module and isinstance(m.get("hints"), dict):
                    return {k: [str(x) for x in v] for k, v in m["hints"].items() if isinstance(v, list) and v}
    candidates = []
    for root in _course_roots():
        if version:
            candidates.append(root / course / "releases" / version / "course.toml")
        candidates.append(root / course / "course.toml")
        candidates.append(root / "course.toml")
    for path in candidates:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if raw.get("id") != course or (version and raw.get("version") != version):
            continue
        for m in raw.get("modules") or []:
            if isinstance(m, dict) and m.get("id") == module and isinstance(m.get("hints"), dict):
                return {k: [str(x) for x in v] for k, v in m["hints"].items() if isinstance(v, list) and v}
        return {}
    return {}


@dataclass
class AuditView:
    device: str
    records: list[dict]

    def verify(self) -> _audit.Verdict:
        return _audit.verify(self.records)

    def consent_trail(self) -> list[dict]:
        return _consent.trail(self.records)

    def __len__(self) -> int:
        return len(self.records)
