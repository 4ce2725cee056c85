"""Planted incidents for the observability module: a real regression a learner has to find.

Module 4 of ``edge-ml-foundations`` opens with "a release went out to one device and users
complain". :func:`plant` makes that true against the live lab: it signs a bundle with a
release key (trusted in the lab like any other), whose adapter silently boosts one intent,
and installs it on one device under the name of a release bot, so the device's audit chain
holds an ordinary-looking install.  The bundle passes its health check (it is fast and never
errs): only the users' undos show the damage.

Why a library and not a notebook cell: the learner must not read the answer off the setup
code.  Which device and which intent are drawn from the module's seed, and the returned
:class:`Incident` keeps only salted hashes of the truth, so the notebook's hidden tests can
check an answer (:meth:`Incident.check_location`, :meth:`Incident.check_cause`) without the
answer being printable.  The grader judges from the lab itself (audit chains, telemetry).

:class:`Meter` is the module's bandwidth budget made visible: it counts what the learner
fetches beyond telemetry windows (audit chains, captures), so a hidden test can hold them to
"one device's audit chain, no captures".
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab_hardware.modelops import adapter as _adapter
from lab_hardware.modelops import bundle as _bundle
from lab_hardware import home as _home
from lab_hardware.modelops import keys as _keys
from labs import scenarios
from labs.sdk import InfrastructureError, Lab

#: Who "released" the bad bundle (the ``by`` of the install in the audit chain).
OPERATOR = "release-bot"
#: Key the release bot signs with (in the lab's ``keys/``, trusted in its trust store).
KEY_NAME = "release-bot"
#: Logit bias the planted adapter adds to the boosted intent: large enough that the boosted
#: intent's undo rate on that device stands far above the rest of the fleet within ~10 s of
#: windows, small enough that most decisions stay right (the device looks healthy).
BOOST = 4.0
BUNDLE_NAME = "intents"


class IncidentError(InfrastructureError):
    """The incident could not be planted (one line saying why): the lab's fault, not the
    learner's, so the grader grades again or records ``infrastructure-error``."""


def _h(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()


@dataclass
class Incident:
    """What was planted, kept as salted hashes so that printing it reveals nothing."""

    planted_at: float
    version: str
    _salt: str = field(repr=False)
    _device: str = field(repr=False)
    _intent: str = field(repr=False)
    _bundle8: str = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Incident(a release reached one device at {time.strftime('%H:%M:%S', time.localtime(self.planted_at))}; "
            "which device and what it broke is for you to find)"
        )

    def check_location(self, device: str, intent: str) -> bool:
        """Whether ``device`` and ``intent`` are the ones the planted bundle broke."""
        return _h(self._salt, str(device)) == self._device and _h(self._salt, str(intent)) == self._intent

    def check_cause(self, text: str) -> bool:
        """Whether ``text`` names the device, the boosted intent and the bundle (>= 8 hex digits)."""
        if not isinstance(text, str):
            return False
        words = set(re.findall(r"[A-Za-z0-9_-]+", text.lower()))
        device = any(_h(self._salt, w) == self._device for w in words)
        intent = any(_h(self._salt, w) == self._intent for w in words)
        hexes = re.findall(r"[0-9a-f]{8,64}", text.lower())
        digest = any(_h(self._salt, h[:8]) == self._bundle8 for h in hexes)
        return device and intent and digest

    def is_fixed(self, lab: Lab) -> bool:
        """True once the broken device no longer runs the planted bundle."""
        for dev in lab.devices:
            if _h(self._salt, dev) == self._device:
                active = (lab.states.get(dev) or {}).get("bundle") or ""
                return _h(self._salt, active[:8]) != self._bundle8
        return False


def _scenario_name(home: Path) -> str:
    try:
        return _home.read_json(home / _home.DESCRIPTOR).get("scenario") or "voice-intents"
    except (OSError, ValueError):
        return "voice-intents"


def _signing_key(home: Path) -> Path:
    """The release bot's key in the lab home (created once, trusted in the lab)."""
    key = home / "keys" / f"{KEY_NAME}.key"
    if not key.exists():
        try:
            _keys.new_key(home, KEY_NAME)
        except _keys.KeyringError:
            if not key.exists():  # not a concurrent creation: a real problem
                raise
    _keys.trust(home, home / "keys" / f"{KEY_NAME}.pub")
    return key


def _next_major(state: dict) -> str:
    active = state.get("active") or {}
    majors = [
        _bundle.parse_version(v)[0]
        for v in (active.get("version") if active.get("kind") == "bundle" else None, state.get("version_floor"))
        if v
    ]
    # above the highest version the device ever ran: devices refuse anything older (monotonic)
    return f"{max(majors) + 1}.0.0" if majors else "2.0.0"


def _clear_earlier(ops: Lab) -> None:
    """Roll back incidents planted by an earlier run of the module that nobody fixed, so that
    a re-run has exactly one broken device."""
    for dev in ops.devices:
        active = (ops.states.get(dev) or {}).get("active") or {}
        if active.get("kind") == "bundle" and active.get("name") == BUNDLE_NAME:
            ops.rollback(dev, reason="incident scenario reset")
            deadline = time.monotonic() + 5
            while (
                time.monotonic() < deadline
                and ((ops.states.get(dev) or {}).get("active") or {}).get("name") == BUNDLE_NAME
            ):
                time.sleep(0.05)


#: The fixture's own budget: it waits as long as the device keeps making health-check progress
#: (a busy host slows the device's decisions, it does not make the fixture wrong), up to
#: PLANT_MAX_SECONDS, and gives up only after ``timeout`` seconds without progress.
PLANT_MAX_SECONDS = 180.0
#: Installs tried before the fixture reports an infrastructure failure.
PLANT_ATTEMPTS = 3


def plant(lab: Lab, *, seed: int = 0, boost: float = BOOST, timeout: float = 20.0) -> Incident:
    """Install a signed bundle that silently boosts one intent on one device; return the Incident.

    Deterministic in ``seed`` and the namespace (which device, which intent); the
    defect intent the earlier modules fixed is never the one boosted, so the known
    defect and the incident stay apart.  Returns once the device passed the bundle's
    health check, so the learner's first windows already come from the planted bundle.
    """
    if lab.conn.home is None:
        raise IncidentError("the lab's state directory is unknown: connect with Lab.connect(home=...)")
    home = Path(lab.conn.home)
    sc = scenarios.load(_scenario_name(home))
    intents = list(lab.intents or sc.intents)
    defect = lab.conn.defect_intent or sc.defect_intent
    if len(lab.devices) < 2:
        raise IncidentError("the incident needs a lab with at least 2 devices (livelab up --devices 3)")
    rng = random.Random(f"livelab-incident:{seed}:{lab.namespace}")
    key = _signing_key(home)
    ops = Lab(lab.conn, learner=OPERATOR)
    try:
        _clear_earlier(ops)
        devices = ops.devices
        plain = [d for d in devices if ((ops.states.get(d) or {}).get("active") or {}).get("kind") == "model"]
        device = rng.choice(plain or devices)
        intent = rng.choice([i for i in intents if i != defect])
        state = ops.states.get(device) or {}
        active = state.get("active") or {}
        base = active.get("ref") if active.get("kind") == "model" and active.get("ref") in sc.models else "baseline"
        version = _next_major(state)
        with tempfile.TemporaryDirectory(prefix="livelab-incident-") as tmp:
            adapter = Path(tmp) / "adapter.json"
            adapter.write_bytes(_adapter.make(intents, {intent: float(boost)}))
            path = _bundle.build(
                sc.models[base],
                Path(tmp) / "release.lbundle",
                name=BUNDLE_NAME,
                version=version,
                adapter=adapter,
                compute={"health_decisions": 50},
                provenance={"builder": "release pipeline (nightly)"},
            )
            _bundle.sign(path, key)
            digest = _bundle.read(path).digest
            why = ""
            for _attempt in range(PLANT_ATTEMPTS):
                ops.install(device, path)
                why = _wait_healthy(ops, device, digest, timeout)
                if not why:
                    break
            else:
                raise IncidentError(
                    f"the module's planted incident did not come up on {device} "
                    f"({PLANT_ATTEMPTS} tries: {why}); this is the lab's fault, not yours"
                )
    finally:
        ops.close()
    salt = secrets.token_hex(16)
    return Incident(
        planted_at=time.time(),
        version=version,
        _salt=salt,
        _device=_h(salt, device),
        _intent=_h(salt, intent),
        _bundle8=_h(salt, digest[:8]),
    )


def _wait_healthy(ops: Lab, device: str, digest: str, timeout: float) -> str:
    """Wait until ``device`` runs ``digest`` with its health check done; '' when it does, else
    why not.  Bounded by health-check progress, not by a wall-clock guess (see PLANT_MAX_SECONDS)."""
    start = time.monotonic()
    last_progress, seen_n, seen = start, -1, False
    while True:
        st = ops.states.get(device) or {}
        now = time.monotonic()
        if st.get("bundle") == digest:
            seen = True
            health = st.get("health")
            if health is None:
                return ""
            if int(health.get("seen") or 0) > seen_n:
                seen_n, last_progress = int(health.get("seen") or 0), now
        elif seen:
            return "the planted bundle was rolled back by its health check"
        if now - last_progress > timeout:
            return f"no health-check progress for {timeout:.0f} s"
        if now - start > PLANT_MAX_SECONDS:
            return f"the health check did not finish within {PLANT_MAX_SECONDS:.0f} s"
        time.sleep(0.05)


class Meter:
    """Counts what a notebook fetches beyond telemetry: audit chains and captures.

    It wraps the ``Lab`` object's methods in place, so the learner keeps using the
    ordinary SDK calls; ``report()`` says what was spent.
    """

    def __init__(self, lab: Lab):
        self.lab = lab
        self.audit_fetches: list[str] = []
        self.audit_bytes = 0
        self.captures = 0
        audit_chain, capture = lab.audit_chain, lab.capture

        def metered_audit_chain(device, **kw):
            view = audit_chain(device, **kw)
            self.audit_fetches.append(device)
            self.audit_bytes += len(json.dumps(view.records, separators=(",", ":")))
            return view

        def metered_capture(device, *args, **kw):
            self.captures += 1
            return capture(device, *args, **kw)

        lab.audit_chain = metered_audit_chain
        lab.capture = metered_capture

    def report(self) -> dict:
        return {"audit_fetches": list(self.audit_fetches), "audit_bytes": self.audit_bytes, "captures": self.captures}


def trace_bytes(trace) -> int:
    """Size of a compact trace as it would travel: compact JSON."""
    return len(json.dumps(trace, separators=(",", ":")))
