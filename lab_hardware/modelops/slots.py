"""What a device decides with: the active model, its last good predecessors, a shadow.

A device starts on one of the scenario's plain ONNX models and moves to signed
bundles by install.  Every install is verified (signature by a trusted key,
hashes, adapter budget, version monotonicity, profile), written atomically,
and then watched by a health check over the next N decisions (error rate and
a latency SLO from the bundle's manifest).  A failed verdict rolls back to
the last good model at once: the previous model stays loaded in memory, so a
rollback is a pointer swap, not a reload.  Revocation drops a bundle
everywhere it is active and reverts the same way.

A bundle's identity here is its digest *and* its signer (``digest:keyid``):
the same content signed by two keys is two bundles for rollback targets,
revocations and the files kept on the device.  Before a bundle becomes
active (or shadow) its model is loaded and run on a probe input; one that
cannot load or answers nonsense is refused and the device keeps what it ran.
Version protection is monotonic: a new install must be newer than every
bundle version this device ever ran (the *floor*, kept across rollbacks and
restarts); an older one only as an explicit rollback to a bundle this device
actually ran.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab_hardware import digest as _digest
from lab_hardware.inference import Model
from lab_hardware.profiles import Profile


class InstallError(ValueError):
    """An install, shadow or rollback the device refuses (one-line reason)."""


@dataclass
class Slot:
    """One loaded model: a scenario model (``kind='model'``) or a bundle (``kind='bundle'``)."""

    kind: str
    ref: str  # scenario model name, or bundle identity (digest:keyid)
    digest: str  # what signal digests and telemetry name as 'bundle'
    name: str
    version: str | None
    runner: Any  # Model or Bundle: .predict(x) / .decide(x)
    manifest: dict | None = None
    keyid: str | None = None  # the bundle's signer (None for a scenario model)

    @property
    def identity(self) -> str:
        """What rollback targets and revocations match: ``digest:keyid`` for a bundle."""
        return identity(self.digest, self.keyid) if self.kind == "bundle" else self.digest

    def decide(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "bundle":
            return self.runner.decide(x)
        return self.runner.predict(x)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "ref": self.ref,
            "digest": self.digest,
            "keyid": self.keyid,
            "name": self.name,
            "version": self.version,
        }


def identity(digest: str, keyid: str | None) -> str:
    """A signed bundle's identity: its content digest and the key id that signed it."""
    return f"{digest}:{keyid}"


ALL_SIGNERS = "*"


def probe(runner: Any, kind: str, intents: list[str]) -> None:
    """Load the model and run it on a fixed probe batch; InstallError if it cannot.

    Why before the switch: a model whose ONNX does not load (or answers NaN, or the wrong
    shape) would otherwise become active and fail every decision until a health check
    noticed, which with a long health window may be never."""
    from lab_hardware import features

    x = np.random.default_rng(0).random((4, features.DIM), dtype=np.float32)
    try:
        labels, probs = runner.decide(x) if kind == "bundle" else runner.predict(x)
    except InstallError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        text = (str(exc).strip() or exc.__class__.__name__).splitlines()[0][:200]
        raise InstallError(f"model.onnx cannot run on a probe input ({text})") from None
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.shape != (4,) or probs.shape != (4, len(intents)):
        raise InstallError(
            f"model answers shapes {labels.shape} and {probs.shape} on a probe input, "
            f"expected (4,) and (4, {len(intents)})"
        )
    if not np.isfinite(probs).all():
        raise InstallError("model answers non-finite probabilities on a probe input")
    if ((labels < 0) | (labels >= len(intents))).any():
        raise InstallError("model answers labels outside its intents on a probe input")


@dataclass
class Health:
    """A running health check of a fresh install."""

    digest: str
    needed: int
    budget_ms: float
    max_error_rate: float
    seen: int = 0
    errors: int = 0
    latencies: list[tuple[float, int]] = field(default_factory=list)

    def observe(self, n: int, errors: int, latency_ms: float) -> None:
        self.seen += n
        self.errors += errors
        if n - errors > 0:
            self.latencies.append((latency_ms, n - errors))

    def verdict(self) -> dict | None:
        if self.seen < self.needed:
            return None
        total = sum(c for _, c in self.latencies)
        p99 = 0.0
        if total:
            rank, acc = max(1, int(np.ceil(0.99 * total))), 0
            for v, c in sorted(self.latencies):
                acc += c
                if acc >= rank:
                    p99 = v
                    break
        rate = self.errors / self.seen
        ok = rate <= self.max_error_rate and p99 <= self.budget_ms
        reason = (
            "ok"
            if ok
            else (
                f"error rate {rate:.1%} over {self.max_error_rate:.1%}"
                if rate > self.max_error_rate
                else f"p99 latency {p99:.2f} ms over the {self.budget_ms:.2f} ms budget"
            )
        )
        return {
            "bundle": self.digest,
            "ok": ok,
            "decisions": self.seen,
            "errors": self.errors,
            "error_rate": round(rate, 4),
            "p99_ms": round(p99, 3),
            "budget_ms": self.budget_ms,
            "reason": reason,
        }


class Slots:
    def __init__(
        self,
        state_dir: Path,
        models: dict[str, str],
        intents: list[str],
        profile: Profile,
        trust_dir: Path | None,
        clock=time.time,
        namespace: str | None = None,
    ):
        # trust_dir: the lab home whose trust/ holds the trusted signer keys; the namespace's
        # own trust store (keys.namespace_home) counts too
        self.dir = Path(state_dir)
        self.bundles_dir = self.dir / "bundles"
        self.models = dict(models)
        self.intents = list(intents)
        self.profile = profile
        self.trust_dir = trust_dir
        self.namespace = namespace
        self.clock = clock
        self.active: Slot | None = None
        self.good: list[Slot] = []  # last good, most recent last (kept loaded)
        self.ran: set[str] = set()  # bundle identities this device has run (rollback targets)
        self.floor: str | None = None  # highest bundle version this device ever ran
        # revocations: 'digest:keyid' (that signer's copy) or 'digest:*' (every signer's)
        self.revoked: set[str] = set()
        self.shadow: Slot | None = None
        self.health: Health | None = None

    # ---- loading -----------------------------------------------------------------------
    def _model_slot(self, name: str) -> Slot:
        if not isinstance(name, str) or not name:
            raise InstallError(f"'model' must be the name of a model, not {type(name).__name__} {str(name)[:40]!r}")
        if name not in self.models:
            raise InstallError(f"unknown model {name!r}; available: {', '.join(self.models)}")
        path = self.models[name]
        m = Model(path)
        if m.intents and m.intents != self.intents:
            raise InstallError(f"model {name} classifies {m.intents}, the scenario has {self.intents}")
        return Slot("model", name, _digest.file_digest(path), name, None, m)

    def _bundle_slot(self, b) -> Slot:
        from lab_hardware.modelops import bundle as _bundle

        intents = b.manifest["io"]["intents"]
        if intents != self.intents:
            raise InstallError(f"bundle classifies {intents}, the scenario has {self.intents}")
        try:
            b.load_model()  # the ONNX session, before anything changes
        except _bundle.BundleError as exc:
            raise InstallError(str(exc)) from None
        probe(b, "bundle", self.intents)
        return Slot(
            "bundle",
            identity(b.digest, b.keyid),
            b.digest,
            b.manifest["name"],
            b.manifest["version"],
            b,
            b.manifest,
            keyid=b.keyid,
        )

    def _bundle_file(self, ref: str) -> Path:
        return self.bundles_dir / f"{ref.replace(':', '-')}.lbundle"

    def _load_bundle_file(self, ref: str) -> Slot:
        from lab_hardware.modelops import bundle as _bundle

        b = _bundle.read(self._bundle_file(ref))
        if ":" in ref and identity(b.digest, b.keyid) != ref:
            raise InstallError(f"stored bundle {ref[:12]} does not match its name")
        return self._bundle_slot(b)

    def is_revoked(self, digest: str, keyid: str | None) -> bool:
        return f"{digest}:{ALL_SIGNERS}" in self.revoked or identity(digest, keyid) in self.revoked

    def _slot_revoked(self, s: Slot) -> bool:
        return s.kind == "bundle" and self.is_revoked(s.digest, s.keyid)

    def revocations(self) -> list[dict]:
        """The revocations this device holds: ``{"digest", "keyid"}`` (keyid None = every signer)."""
        out = []
        for e in sorted(self.revoked):
            d, _, k = e.partition(":")
            out.append({"digest": d, "keyid": None if k in ("", ALL_SIGNERS) else k})
        return out

    def restore(self, default_model: str) -> None:
        """Back to what was active before a restart (or the scenario's default model)."""
        st = self._read_state()
        # a revocation stored before identities named signers meant every signer
        self.revoked = {e if ":" in e else f"{e}:{ALL_SIGNERS}" for e in st.get("revoked", [])}
        self.ran = set(st.get("ran", []))
        self.floor = st.get("floor")
        chain = st.get("good", []) + ([st["active"]] if st.get("active") else [])
        slots = []
        for ref in chain:
            try:
                s = self._model_slot(ref["ref"]) if ref["kind"] == "model" else self._load_bundle_file(ref["ref"])
            except Exception:  # noqa: BLE001 - a missing or broken file: skip, fall back below
                continue
            if not self._slot_revoked(s):
                slots.append(s)
        if not slots:
            slots = [self._model_slot(default_model if default_model in self.models else next(iter(self.models)))]
        self.active, self.good = slots[-1], slots[:-1]
        for s in slots:  # state written before the floor was kept: what it still holds
            if s.kind == "bundle" and (self.floor is None or _version_key(s.version) > _version_key(self.floor)):
                self.floor = s.version

    # ---- persistence -------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.dir / "slots.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}

    def save(self) -> None:
        st = {
            "active": {"kind": self.active.kind, "ref": self.active.ref},
            "good": [{"kind": s.kind, "ref": s.ref} for s in self.good[-5:]],
            "ran": sorted(self.ran),
            "revoked": sorted(self.revoked),
            "floor": self.floor,
        }
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(st, sort_keys=True))
        os.replace(tmp, self._state_path())

    # ---- changes -----------------------------------------------------------------------
    def _activate(self, slot: Slot) -> None:
        if self.active is not None and self.active.digest != slot.digest:
            self.good.append(self.active)
            self.good = self.good[-5:]
        self.active = slot
        if slot.kind == "bundle":
            self.ran.add(slot.identity)
            if self.floor is None or _version_key(slot.version) > _version_key(self.floor):
                self.floor = slot.version

    def set_model(self, name: str) -> Slot:
        slot = self._model_slot(name)
        self.health = None
        self._activate(slot)
        self.save()
        return slot

    def trusted(self) -> dict:
        """The lab's and this namespace's trust stores, read at every verify (so 'livelab keys
        trust' applies at once)."""
        from lab_hardware.modelops import keys

        if self.trust_dir is None:
            return {}
        return keys.trusted(self.trust_dir, namespace=self.namespace)

    def verify(self, data: bytes, *, rollback: bool = False, versions: bool = True):
        """Everything :func:`bundle.verify` checks, against this device's trust stores, its
        revocations (by identity) and its version floor; ``versions=False`` for a shadow,
        which decides nothing and so may be any version.

        Versions: without ``rollback`` a bundle must be newer than the active one and than
        the floor (the floor's own bundle may come back: a rollout going forward again).
        With ``rollback`` an older bundle is allowed only if this device ran that very
        bundle (same digest *and* signer)."""
        from lab_hardware.modelops import bundle as _bundle

        try:
            b = _bundle.read(data)
            if self.is_revoked(b.digest, b.keyid):
                raise _bundle.BundleError(f"bundle {b.digest[:12]} signed by {b.keyid} is revoked")
            checked = _bundle.verify(b, self.trusted(), profile=self.profile)
        except _bundle.BundleError as exc:
            raise InstallError(str(exc)) from None
        if not versions:
            return checked
        v, ident = checked.version, identity(checked.digest, checked.keyid)
        ran = ident in self.ran
        installed = self.active.version if self.active is not None and self.active.kind == "bundle" else None
        to_active = _bundle.compare_versions(v, installed) if installed is not None else 1
        to_floor = _bundle.compare_versions(v, self.floor) if self.floor is not None else 1
        if rollback:
            if (to_active <= 0 or to_floor <= 0) and not ran:
                raise InstallError(
                    f"rollback refused: this device never ran bundle {checked.digest[:12]} "
                    f"{v} signed by {checked.keyid}"
                )
            return checked
        if to_active < 0:
            raise InstallError(f"version {v} is a downgrade from installed {installed}")
        if to_active == 0:
            raise InstallError(f"version {v} is not newer than installed {installed}")
        if to_floor < 0 or (to_floor == 0 and not ran):
            raise InstallError(
                f"version {v} is not newer than {self.floor}, the highest version this device "
                "ran (a downgrade: only a rollback to a bundle this device ran may be older)"
            )
        return checked

    def install(self, data: bytes, *, rollback: bool = False) -> Slot:
        """Verify, write atomically, activate, and start the health check."""
        b = self.verify(data, rollback=rollback)
        slot = self._bundle_slot(b)  # loads and probes the model before anything changes
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        final = self._bundle_file(slot.identity)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._activate(slot)
        c = b.manifest["compute"]
        self.health = Health(
            b.digest, int(c["health_decisions"]), float(c["latency_budget_ms"]), float(c["max_error_rate"])
        )
        self.save()
        return slot

    def rollback(self) -> tuple[Slot, Slot]:
        """Back to the most recent good model that is not revoked; returns (from, to)."""
        while self.good and self._slot_revoked(self.good[-1]):
            self.good.pop()
        if not self.good:
            raise InstallError("no earlier good model to roll back to")
        bad, self.active = self.active, self.good.pop()
        self.health = None
        self.save()
        return bad, self.active

    def observe(self, n: int, errors: int, latency_ms: float) -> dict | None:
        """Feed the health check; returns its verdict once, when it is reached."""
        if self.health is None:
            return None
        self.health.observe(n, errors, latency_ms)
        v = self.health.verdict()
        if v is not None:
            self.health = None
        return v

    def revoke(self, entries: set[str]) -> bool:
        """Record revocations (``digest:keyid`` or ``digest:*``); True if the active model itself
        was revoked."""
        new = set(entries) - self.revoked
        self.revoked |= set(entries)
        self.good = [s for s in self.good if not self._slot_revoked(s)]
        if self.shadow is not None and self._slot_revoked(self.shadow):
            self.shadow = None
        if new:
            self.save()
        return self._slot_revoked(self.active)

    def set_shadow(self, data: bytes | None) -> Slot | None:
        if data is None:
            self.shadow = None
            return None
        b = self.verify(data, versions=False)
        self.shadow = self._bundle_slot(b)
        return self.shadow


def _version_key(version: str | None) -> tuple:
    from lab_hardware.modelops import bundle as _bundle

    return _bundle.parse_version(version) if version else ()
