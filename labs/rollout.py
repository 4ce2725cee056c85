"""Rollouts: a canary (a subset of devices), optionally in shadow mode, then forward or back.

The state of the namespace's current rollout lives in ``home/rollouts/current.json``
so that ``livelab rollout status`` and a later ``--forward``/``--back`` see what
``start`` did.  Each step is a device command through the SDK, so each lands on
the devices' audit chains; the devices themselves verify and health-check.

**Release checklist.**  The lab's rollout policy (``home/rollouts/policy.json``, set with
:func:`set_policy` / ``livelab rollout policy --require MODULE@VERSION``) can require that
whoever promotes a bundle beyond its canary (``finish(forward=True)``) has completed course
modules at a curriculum version at least the one named.  A completion counts only when the
lab's grader signed it (:func:`labs.learning_events.counted`): a ``module-completed`` event a
learner's kernel writes into the store itself is not one.  A refused promotion changes nothing
on the devices and is kept in the rollout's ``refusals``; an allowed one names the completions
it relied on in the rollout's state and in every install record it makes on the devices'
audit chains.  Rolling back is never blocked.

Who promotes is the learner the lab's credentials belong to (``lab.json``'s ``learner_name``,
the name the devices record as ``by`` for this identity's commands), never a name the caller
claims (``$LIVELAB_LEARNER``, ``Lab(learner=...)``).  The trust model, honestly: the checklist is
enforced by this tool, which runs as the lab's owner; the owner can edit the policy file, and
a learner with install rights can still install a bundle device by device without a rollout.
It is a release gate for the team's process, not a defence against the lab's owner.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lab_hardware.modelops import bundle as _bundle
from lab_hardware import home as _home
from labs import learning_events as _events
from labs import names as _names
from labs.sdk import CommandRefused, Lab


class RolloutError(ValueError):
    """A rollout step that cannot be taken (one-line reason)."""


def _path(home: Path) -> Path:
    return _home.resolve(home) / "rollouts" / "current.json"


#: The lab's rollout policy, beside the current rollout.
POLICY = "policy.json"
POLICY_SCHEMA = "livelab.rollout-policy/v1"


class ChecklistRefused(RolloutError):
    """A promotion the release checklist does not allow (one-line reason naming the module)."""


def _policy_path(home: Path) -> Path:
    return _home.resolve(home) / "rollouts" / POLICY


def parse_requirement(text: str, course: str = "") -> dict[str, str]:
    """``MODULE@VERSION`` (e.g. ``m3-bundles@1.2.0``) as a requirement, or a one-line RolloutError."""
    module, sep, version = text.partition("@") if isinstance(text, str) else ("", "", "")
    if not sep or not module or not version:
        raise RolloutError(f"a required module is MODULE@VERSION (e.g. m3-bundles@1.2.0), not {_names.shown(text)}")
    try:
        _names.check("module", module)
        if course:
            _names.check("course", course)
        _bundle.parse_version(version)
    except _names.NameRefused as exc:
        raise RolloutError(str(exc)) from None
    except _bundle.BundleError:
        raise RolloutError(
            f"required version {_names.shown(version)} of {module} is not semver 2.0.0 (e.g. 1.2.0)"
        ) from None
    return {"module": module, "version": version, "course": course}


def policy(home) -> dict[str, Any]:
    """The lab's rollout policy (no requirement when none was set)."""
    p = _policy_path(home)
    if not p.exists():
        return {"schema": POLICY_SCHEMA, "require": []}
    try:
        data = json.loads(p.read_text())
        reqs = [parse_requirement(f"{r['module']}@{r['version']}", r.get("course") or "") for r in data["require"]]
    except (ValueError, KeyError, TypeError, AttributeError, RolloutError) as exc:
        raise RolloutError(
            f"rollout policy {p} is unreadable ({str(exc).splitlines()[0] if str(exc) else exc!r}): "
            "set it again with 'livelab rollout policy --require MODULE@VERSION'"
        ) from None
    return {**data, "require": reqs}


def set_policy(home, require: list[str], *, course: str = "") -> dict[str, Any]:
    """Require, for every promotion beyond a canary, a signed completion of each ``MODULE@VERSION``
    (of ``course``, when given; any course otherwise).  An empty list clears the policy."""
    reqs = [parse_requirement(r, course) for r in require]
    if len(reqs) > 8:
        raise RolloutError("a rollout policy requires at most 8 modules")
    data = {"schema": POLICY_SCHEMA, "require": reqs, "set_at": time.time()}
    _home.write_json(_policy_path(home), data)
    return data


def completion(home, learner: str, req: dict[str, str]) -> dict[str, Any]:
    """The signed completion of ``req`` by ``learner`` the checklist relies on (the highest
    version at least the one required, the latest of those), or ChecklistRefused."""
    try:
        with _events.EventStore(home) as store:
            evs = store.query(
                learner=learner, module=req["module"], kind="module-completed", course=req["course"] or None
            )
    except (_events.EventStoreError, _events.EventError) as exc:
        raise ChecklistRefused(f"promotion refused: cannot read the events store ({exc})") from None
    signed = _events.counted(evs, _home.resolve(home))
    ids = {e.id for e in signed}
    unsigned = len([e for e in evs if e.id not in ids])

    def meets(ev) -> bool:
        try:
            return _bundle.compare_versions(ev.version, req["version"]) >= 0
        except _bundle.BundleError:
            return False

    ok = [e for e in signed if meets(e)]
    what = f"module {req['module']} at version >= {req['version']}" + (
        f" of course {req['course']}" if req["course"] else ""
    )
    if not ok:
        older = sorted({e.version for e in signed})[:5]
        why = (f"only at version {', '.join(older)}" if older else "no completion signed by this lab's grader") + (
            f"; {unsigned} unsigned completion(s) ignored" if unsigned else ""
        )
        raise ChecklistRefused(
            f"promotion refused by the release checklist: {learner} has not completed {what} ({why}): "
            f"complete it ('lab.submit()' in the module) and finish again"
        )
    best = max(ok, key=lambda e: (_bundle.parse_version(e.version), e.time))
    return {
        "event": best.id,
        "learner": best.learner,
        "course": best.course,
        "module": best.module,
        "version": best.version,
        "time": best.time,
    }


def checklist(lab: Lab, home) -> dict[str, Any] | None:
    """What the lab's policy asks of this promotion and the completions that satisfy it (None
    when no module is required), or ChecklistRefused naming the first module missing."""
    reqs = policy(home)["require"]
    if not reqs:
        return None
    promoter = lab.conn.learner_name
    if not promoter:
        raise ChecklistRefused(
            "promotion refused by the release checklist: this lab's credentials name no learner "
            "(lab.json has no learner_name), so no completion can be checked"
        )
    return {"promoter": promoter, "completions": [completion(home, promoter, r) for r in reqs]}


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


#: Seconds :func:`finish` waits at most for a canary's state to show its install.
STATE_WAIT_S = 30.0


def _state_since(lab: Lab, device: str, index: int, timeout: float = STATE_WAIT_S) -> None:
    """Wait (bounded) until the SDK holds a state of ``device`` published after its audit
    record ``index``: the install record answers the command, the new state comes after it,
    and a busy machine may deliver it late."""
    deadline = time.monotonic() + timeout
    while int(lab.states.get(device, {}).get("audit_length") or 0) <= index and time.monotonic() < deadline:
        time.sleep(0.02)


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
    proof = None
    if forward:
        try:
            proof = checklist(lab, home)
        except ChecklistRefused as exc:
            # nothing changes on the devices; the refusal is kept with the rollout
            state.setdefault("refusals", []).append(
                {"time": time.time(), "promoter": lab.conn.learner_name, "reason": str(exc)}
            )
            _save(home, state)
            raise
        if proof is not None:
            state["checklist"] = {**proof, "checked": time.time(), "policy": policy(home)["require"]}
    accepted = {s["device"] for s in state["steps"] if s.get("ok") and s.get("action") in ("install", "shadow")}
    since = {
        s["device"]: int(s["audit"])
        for s in state["steps"]
        if s.get("ok") and s.get("action") in ("install", "shadow") and isinstance(s.get("audit"), int)
    }
    targets = lab.devices if forward else [d for d in state["canary"] if d in accepted]
    for d in targets:
        if d in since:  # judge what it runs from a state sent after this rollout's step
            _state_since(lab, d, since[d])
        try:
            if state["mode"] == "shadow" and d in accepted:
                lab.shadow(d, None)
            if forward:
                if not _runs(lab, d, state["digest"], keyid):
                    rec = lab.install(d, state["bundle"], checklist=proof)
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
