"""Putting a namespace's devices into a known state from the control plane.

Two users of the same few commands:

* :func:`reset` (``livelab lab reset``) returns a namespace to its scenario's state after a
  course or an experiment: consent denied for every scope, every device back on the model the
  scenario gave it (no installed bundle active, no shadow), no capture left open, the
  namespace's revocation list cleared.  Everything goes through the devices' own commands, so
  each change is an audit record like any other (nothing is edited on disk behind a device).
* :func:`send` is the primitive the grader's *untidy* start (``grading/untidy.py``) uses: it
  publishes control-plane commands and waits, bounded, for each device's audit record
  answering it.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from lab_hardware import consent as _consent
from lab_hardware import home as _home
from lab_hardware import mqtt, topics

#: Who the audit chains name for these commands when the command topic carries no author.
AUTHOR = "lab-reset"


class ResetError(RuntimeError):
    """A device did not answer or refused a reset command (one line: which and why)."""


class _Session:
    """A control-plane connection that follows one namespace's states and audit records."""

    def __init__(self, home: Path, namespace: str):
        from lab_hardware.runtime import lab as _lab

        self.home, self.namespace = Path(home), namespace
        self.states: dict[str, dict] = {}
        self.replies: dict[str, dict] = {}
        self.cond = threading.Condition()
        self.client = _lab.control_client(self.home, client_id=f"reset-{namespace}-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        pre = topics.namespace_prefix(namespace)
        mqtt.subscribe_wait(self.client, f"{pre}/devices/+/audit", qos=1)
        mqtt.subscribe_wait(self.client, f"{pre}/devices/+/state", qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        p = topics.parse(msg.topic)
        if p is None:
            return
        try:
            data = topics.decode(msg.payload)
        except ValueError:
            return
        with self.cond:
            if p["kind"] == "state":
                self.states[p["device"]] = data
            elif p["kind"] == "audit":
                for rec in data.get("records", []):
                    cid = (rec.get("data") or {}).get("id")
                    if isinstance(cid, str):
                        self.replies[cid] = rec
            self.cond.notify_all()

    def command(self, device: str, name: str, *, timeout: float = 10.0, by: str = AUTHOR, **args: Any) -> dict:
        cid = uuid.uuid4().hex
        payload = {"schema": topics.SCHEMA_COMMAND, "id": cid, "by": by, **args}
        self.client.publish(topics.command(self.namespace, device, name), topics.encode(payload), qos=1)
        deadline = time.monotonic() + timeout
        with self.cond:
            while cid not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResetError(
                        f"{device} did not answer '{name}' within {timeout:.0f} s: is it online ('livelab status')?"
                    )
                self.cond.wait(left)
            rec = self.replies.pop(cid)
        if rec.get("kind") == "refused":
            raise ResetError(f"{device} refused '{name}': {rec['data'].get('reason')}")
        return rec

    def wait_state(self, device: str, pred, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (device in self.states and pred(self.states[device])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResetError(f"{device} did not reach the expected state within {timeout:.0f} s")
                self.cond.wait(left)
            return dict(self.states[device])

    def close(self) -> None:
        mqtt.stop(self.client)


def _devices(home: Path, namespace: str) -> list[dict]:
    cfg = _home.read_json(home / "config.json")
    try:
        return list(cfg["namespaces"][namespace]["devices"])
    except KeyError:
        have = ", ".join(sorted(cfg.get("namespaces", {}))) or "none"
        raise ResetError(f"the lab in {home} has no namespace {namespace!r}; namespaces: {have}") from None


def send(
    home: str | Path, namespace: str, commands: list[tuple[str, str, dict]], *, timeout: float = 10.0
) -> list[dict]:
    """Publish ``(device, command, args)`` control-plane commands in order and return the
    audit record answering each (raises :class:`ResetError` on a refusal or no answer).
    ``args`` may carry ``by`` (the author a payload names when the topic names none)."""
    s = _Session(_home.resolve(home), namespace)
    try:
        out = []
        for device, name, args in commands:
            args = dict(args)
            by = args.pop("by", AUTHOR)
            out.append(s.command(device, name, timeout=timeout, by=by, **args))
        return out
    finally:
        s.close()


def reset(home: str | Path | None = None, namespace: str | None = None, *, timeout: float = 10.0) -> dict:
    """Return ``namespace`` (default: the lab descriptor's) to its scenario's state.

    Returns ``{"namespace", "devices": {device: [what was done, ...]}, "revocations_cleared"}``;
    a device already in that state gets no command (its list is empty).
    """
    from lab_hardware.runtime import lab as _lab

    home = _home.resolve(home)
    if not _lab.is_running(home):
        raise ResetError(f"no lab is running in {home}: start it with 'livelab up'")
    if namespace is None:
        namespace = _home.read_json(home / _home.DESCRIPTOR)["namespace"]
    devices = _devices(home, namespace)
    s = _Session(home, namespace)
    done: dict[str, list[str]] = {}
    try:
        for d in devices:
            name, model = d["name"], d.get("model")
            st = s.wait_state(name, lambda st: bool(st.get("online")), timeout)
            acts: list[str] = []
            if st.get("capturing"):
                # No command stops a capture; a one-decision capture replaces it and ends at once.
                s.command(name, "consent", scope="replay-capture", grant=True, timeout=timeout)
                s.command(name, "capture", decisions=1, timeout=timeout)
                s.wait_state(name, lambda st: st.get("capturing") is False, timeout)
                acts.append("closed the open capture")
            for scope in _consent.SCOPES:
                if (s.states[name].get("consent") or {}).get(scope):
                    s.command(name, "consent", scope=scope, grant=False, timeout=timeout)
                    acts.append(f"revoked {scope}")
            if s.states[name].get("shadow"):
                s.command(name, "shadow", stop=True, timeout=timeout)
                acts.append("stopped shadowing")
            if model and (s.states[name].get("model") != model or _is_bundle(s.states[name])):
                s.command(name, "set-model", model=model, timeout=timeout)
                acts.append(f"back on model {model}")
            done[name] = acts
        info = s.client.publish(
            topics.control(namespace, "revocations"),
            topics.encode({"schema": topics.SCHEMA_REVOCATIONS, "revoked": []}),
            qos=1,
            retain=True,
        )
        info.wait_for_publish(timeout)
    finally:
        s.close()
    return {"namespace": namespace, "devices": done, "revocations_cleared": True}


def _is_bundle(state: dict) -> bool:
    """True when the device runs an installed bundle rather than a scenario model."""
    return (state.get("active") or {}).get("kind") == "bundle"
