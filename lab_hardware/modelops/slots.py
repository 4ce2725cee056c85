"""What a device decides with: the active model, its last good predecessors, a shadow.

A device starts on one of the scenario's plain ONNX models and moves to signed
bundles by install.  Every install is verified (signature by a trusted key,
hashes, adapter budget, version monotonicity, profile), written atomically,
and then watched by a health check over the next N decisions (error rate and
a latency SLO from the bundle's manifest).  A failed verdict rolls back to
the last good model at once: the previous model stays loaded in memory, so a
rollback is a pointer swap, not a reload.  Revocation by digest drops a
bundle everywhere it is active and reverts the same way.
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
    ref: str            # scenario model name, or bundle digest
    digest: str         # what signal digests and telemetry name as 'bundle'
    name: str
    version: str | None
    runner: Any         # Model or Bundle: .predict(x) / .decide(x)
    manifest: dict | None = None

    def decide(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "bundle":
            return self.runner.decide(x)
        return self.runner.predict(x)

    def describe(self) -> dict:
        return {"kind": self.kind, "ref": self.ref, "digest": self.digest, "name": self.name,
                "version": self.version}


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
        reason = "ok" if ok else (
            f"error rate {rate:.1%} over {self.max_error_rate:.1%}" if rate > self.max_error_rate
            else f"p99 latency {p99:.2f} ms over the {self.budget_ms:.2f} ms budget")
        return {"bundle": self.digest, "ok": ok, "decisions": self.seen, "errors": self.errors,
                "error_rate": round(rate, 4), "p99_ms": round(p99, 3), "budget_ms": self.budget_ms,
                "reason": reason}


class Slots:
    def __init__(self, state_dir: Path, models: dict[str, str], intents: list[str],
                 profile: Profile, trust_dir: Path | None, clock=time.time, namespace: str | None = None):
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
        self.good: list[Slot] = []          # last good, most recent last (kept loaded)
        self.ran: set[str] = set()          # bundle digests this device has run (rollback targets)
        self.revoked: set[str] = set()
        self.shadow: Slot | None = None
        self.health: Health | None = None

    # ---- loading -----------------------------------------------------------------------
    def _model_slot(self, name: str) -> Slot:
        if name not in self.models:
            raise InstallError(f"unknown model {name!r}; available: {', '.join(self.models)}")
        path = self.models[name]
        m = Model(path)
        if m.intents and m.intents != self.intents:
            raise InstallError(f"model {name} classifies {m.intents}, the scenario has {self.intents}")
        return Slot("model", name, _digest.file_digest(path), name, None, m)

    def _bundle_slot(self, b) -> Slot:
        intents = b.manifest["io"]["intents"]
        if intents != self.intents:
            raise InstallError(f"bundle classifies {intents}, the scenario has {self.intents}")
        return Slot("bundle", b.digest, b.digest, b.manifest["name"], b.manifest["version"], b, b.manifest)

    def _load_bundle_file(self, digest: str) -> Slot:
        from lab_hardware.modelops import bundle as _bundle
        return self._bundle_slot(_bundle.read(self.bundles_dir / f"{digest}.lbundle"))

    def restore(self, default_model: str) -> None:
        """Back to what was active before a restart (or the scenario's default model)."""
        st = self._read_state()
        self.revoked = set(st.get("revoked", []))
        self.ran = set(st.get("ran", []))
        chain = st.get("good", []) + ([st["active"]] if st.get("active") else [])
        slots = []
        for ref in chain:
            try:
                s = self._model_slot(ref["ref"]) if ref["kind"] == "model" else self._load_bundle_file(ref["ref"])
            except Exception:  # noqa: BLE001 - a missing or broken file: skip, fall back below
                continue
            if s.digest not in self.revoked:
                slots.append(s)
        if not slots:
            slots = [self._model_slot(default_model if default_model in self.models else next(iter(self.models)))]
        self.active, self.good = slots[-1], slots[:-1]

    # ---- persistence -------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.dir / "slots.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}

    def save(self) -> None:
        st = {"active": {"kind": self.active.kind, "ref": self.active.ref},
              "good": [{"kind": s.kind, "ref": s.ref} for s in self.good[-5:]],
              "ran": sorted(self.ran), "revoked": sorted(self.revoked)}
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
            self.ran.add(slot.digest)

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

    def verify(self, data: bytes, *, rollback: bool = False):
        from lab_hardware.modelops import bundle as _bundle
        installed = self.active.version if self.active is not None and self.active.kind == "bundle" else None
        try:
            return _bundle.verify(data, self.trusted(), revoked=self.revoked, installed_version=installed,
                                  rollback_to=self.ran if rollback else frozenset(), profile=self.profile)
        except _bundle.BundleError as exc:
            raise InstallError(str(exc)) from None

    def install(self, data: bytes, *, rollback: bool = False) -> Slot:
        """Verify, write atomically, activate, and start the health check."""
        b = self.verify(data, rollback=rollback)
        slot = self._bundle_slot(b)       # loads the ONNX session before anything changes
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        final = self.bundles_dir / f"{b.digest}.lbundle"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._activate(slot)
        c = b.manifest["compute"]
        self.health = Health(b.digest, int(c["health_decisions"]), float(c["latency_budget_ms"]),
                             float(c["max_error_rate"]))
        self.save()
        return slot

    def rollback(self) -> tuple[Slot, Slot]:
        """Back to the most recent good model that is not revoked; returns (from, to)."""
        while self.good and self.good[-1].digest in self.revoked:
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

    def revoke(self, digests: set[str]) -> bool:
        """Record revocations; True if the active model itself was revoked."""
        new = set(digests) - self.revoked
        self.revoked |= set(digests)
        self.good = [s for s in self.good if s.digest not in self.revoked]
        if self.shadow is not None and self.shadow.digest in self.revoked:
            self.shadow = None
        if new:
            self.save()
        return self.active.digest in self.revoked

    def set_shadow(self, data: bytes | None) -> Slot | None:
        if data is None:
            self.shadow = None
            return None
        b = self.verify(data)
        self.shadow = self._bundle_slot(b)
        return self.shadow
