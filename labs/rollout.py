"""Rollouts: a canary (a subset of devices), optionally in shadow mode, then forward or back.

The state of the namespace's current rollout lives in ``home/rollouts/current.json``
so that ``livelab rollout status`` and a later ``--forward``/``--back`` see what
``start`` did.  Each step is a device command through the SDK, so each lands on
the devices' audit chains; the devices themselves verify and health-check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lab_hardware.modelops import bundle as _bundle
from lab_hardware import home as _home
from labs.sdk import CommandRefused, Lab


class RolloutError(ValueError):
    """A rollout step that cannot be taken (one-line reason)."""


def _path(home: Path) -> Path:
    return _home.resolve(home) / "rollouts" / "current.json"


def current(home) -> dict[str, Any] | None:
    p = _path(home)
    return json.loads(p.read_text()) if p.exists() else None


def _save(home, state: dict) -> None:
    _home.write_json(_path(home), state)


def start(lab: Lab, home, bundle: Path, canary: list[str], *, shadow: bool = False) -> dict:
    """Send the bundle to the canary devices (installed, or in shadow mode beside the active one)."""
    b = _bundle.read(Path(bundle))  # integrity first; trust is the devices' call
    unknown = [d for d in canary if d not in lab.devices]
    if not canary or unknown:
        raise RolloutError(
            f"canary must name devices of this lab ({', '.join(lab.devices)})"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    cur = current(home)
    if cur and cur["state"] == "canary":
        raise RolloutError(
            f"rollout of {cur['name']} {cur['version']} is still open: finish it with --forward or --back first"
        )
    state = {
        "bundle": str(Path(bundle).resolve()),
        "digest": b.digest,
        "keyid": b.keyid,
        "identity": b.identity,
        "name": b.name,
        "version": b.version,
        "canary": canary,
        "mode": "shadow" if shadow else "canary",
        "state": "canary",
        "started": time.time(),
        "steps": [],
        "before": {d: lab.states.get(d, {}).get("active") for d in lab.devices},
    }
    for d in canary:
        try:
            rec = lab.shadow(d, bundle) if shadow else lab.install(d, bundle)
            state["steps"].append(
                {
                    "device": d,
                    "action": "shadow" if shadow else "install",
                    "ok": True,
                    "audit": rec["index"],
                    "bundle": rec["data"].get("bundle"),
                    "keyid": rec["data"].get("keyid"),
                }
            )
        except CommandRefused as exc:
            state["steps"].append({"device": d, "action": "install", "ok": False, "reason": str(exc)})
    _save(home, state)
    return state


def _runs(lab: Lab, device: str, digest: str, keyid: str | None) -> bool:
    st = lab.states.get(device, {})
    return st.get("bundle") == digest and st.get("bundle_keyid", keyid) == keyid


def finish(lab: Lab, home, *, forward: bool) -> dict:
    """Forward: install on every device (canaries included after a shadow run). Back: undo what
    this rollout did and nothing else: a canary that accepted the bundle and still runs that
    very bundle (digest and signer) is rolled back, a shadow is stopped; a canary that refused
    it keeps what it runs (even the same content signed by another key)."""
    state = current(home)
    if not state or state["state"] != "canary":
        raise RolloutError("no open rollout: start one with 'livelab rollout start BUNDLE --canary DEV'")
    keyid = state.get("keyid")
    accepted = {s["device"] for s in state["steps"] if s.get("ok") and s.get("action") in ("install", "shadow")}
    targets = lab.devices if forward else [d for d in state["canary"] if d in accepted]
    for d in targets:
        try:
            if state["mode"] == "shadow" and d in accepted:
                lab.shadow(d, None)
            if forward:
                if not _runs(lab, d, state["digest"], keyid):
                    rec = lab.install(d, state["bundle"])
                    state["steps"].append({"device": d, "action": "install", "ok": True, "audit": rec["index"]})
            elif state["mode"] == "canary" and _runs(lab, d, state["digest"], keyid):
                rec = lab.rollback(d, reason=f"rollout of {state['name']} {state['version']} rolled back")
                state["steps"].append({"device": d, "action": "rollback", "ok": True, "audit": rec["index"]})
        except CommandRefused as exc:
            state["steps"].append(
                {"device": d, "action": "forward" if forward else "back", "ok": False, "reason": str(exc)}
            )
    state["state"] = "forward" if forward else "back"
    state["finished"] = time.time()
    _save(home, state)
    return state


def status(lab: Lab, home) -> dict:
    state = current(home) or {}
    devices = {
        d: {
            "bundle": lab.states.get(d, {}).get("bundle"),
            "model": lab.states.get(d, {}).get("model"),
            "health": lab.states.get(d, {}).get("health"),
            "shadow": lab.states.get(d, {}).get("shadow"),
            "slo": lab.states.get(d, {}).get("slo"),
        }
        for d in lab.devices
    }
    return {"rollout": state, "devices": devices}
