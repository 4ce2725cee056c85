"""A device's micro-SLOs: the active bundle's objectives, evaluated at every window close.

Kept apart from ``device.py`` (a mixin of :class:`lab_hardware.runtime.device.Device`) so the
device loop gains three calls, not a feature: ``_slo_reset`` at start, ``_slo_window`` when a
window closes, ``_slo_state`` in the retained state.  The evaluation itself is the pure
library :mod:`lab_hardware.modelops.slo`; this module only acts on what it says.

* The objectives are those of the *active* bundle's manifest.  They start from nothing when
  another model becomes active (install, rollback, revocation, set-model) and when the device
  restarts: an error budget belongs to one bundle on one device, in one run.
* Every window counts, consented or not: the budget judges the bundle, and nothing of the
  window leaves the device except its aggregate figures in the state message.
* When an alert starts firing (page or ticket), the SLO's policy runs: ``alert`` writes an
  ``slo-alert`` audit record and publishes it on ``.../events/alert``; ``rollback`` does the
  same and rolls back to the last good model, as a failed health check does (a ``rollback``
  record ``by`` ``slo``).  A rollback that is impossible (nothing earlier) leaves the alert.
  ``retrain`` (divergence objectives only) writes the ``slo-alert`` record, then a
  ``retrain-suggested`` record naming it with the divergence figures behind it (answers and
  disagreements over the alert's windows and the period), and publishes the alert with both
  references: the trigger that ``livelab retrain build --trigger`` names in a retrained bundle's
  provenance (docs/retraining.md).  The bundle keeps running.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lab_hardware import topics
from lab_hardware.modelops import slo as _slo
from lab_hardware.modelops.slots import InstallError
from lab_hardware.window import Window

log = logging.getLogger("livelab.device")


class DeviceSlos:
    """Mixin: needs the Device's ``slots``, ``intents``, ``clock``, ``_record``, ``_publish``,
    ``connected``, ``ns``, ``name``, ``window`` and ``publish_state``."""

    slo: _slo.Evaluator | None

    def _slo_reset(self: Any) -> None:
        """The active model's objectives, from nothing (None: it declares none)."""
        self.slo = None
        active = self.slots.active
        declared = (active.manifest or {}).get("slos") if active is not None else None
        if declared:
            try:
                self.slo = _slo.Evaluator(_slo.parse(declared, self.intents), bundle=active.digest)
            except _slo.SloError as exc:  # the bundle was verified with them: never expected
                log.error("ignoring the SLOs of bundle %s: %s", active.digest[:12], exc)

    def _slo_window(self: Any, w: Window) -> None:
        """Feed a closed window to the active bundle's objectives; run the policy of any alert."""
        if self.slo is None or self.slo.bundle != self.slots.active.digest:
            self._slo_reset()
        if self.slo is None:
            return
        ev = self.slo
        alerts = ev.observe(_slo.WindowCounts.of(w))
        for alert in alerts:
            if self.slo is not ev:
                break  # an earlier alert of this window rolled the bundle back
            self._slo_breach(alert)
        if alerts:
            self.publish_state()

    def _slo_breach(self: Any, alert: _slo.Alert) -> None:
        breaching = self.slots.active.describe()
        data: dict[str, Any] = {
            "id": None,
            "by": "slo",
            "bundle": breaching["digest"],
            "keyid": breaching["keyid"],
            **alert.as_dict(),
            "reason": alert.reason(),
        }
        rolled = None
        if alert.policy == "rollback":
            t0 = time.perf_counter()
            try:
                rolled = (*self.slots.rollback(), round((time.perf_counter() - t0) * 1000, 3))
                data["action"] = "rollback"
            except InstallError as exc:
                log.error("SLO %s breached and no rollback possible: %s", alert.slo, exc)
                data["action"] = "alert"
                data["rollback_refused"] = str(exc)
        elif alert.policy == "retrain":
            data["action"] = "retrain"
        else:
            data["action"] = "alert"
        rec = self._record("slo-alert", data)
        suggested = None
        if alert.policy == "retrain":
            figures = self.slo.trigger(alert)
            long_ = figures["long"]
            suggested = self._record(
                "retrain-suggested",
                {
                    "id": None,
                    "by": "slo",
                    "bundle": breaching["digest"],
                    "keyid": breaching["keyid"],
                    "alert": {"index": rec["index"], "hash": rec["hash"]},
                    **figures,
                    "reason": (
                        f"edge/oracle divergence {long_['diverged']}/{long_['answered']} over the last "
                        f"{long_['windows']} windows burns SLO {alert.slo}'s budget {alert.burn_long:g}x: retrain the "
                        "edge model from consented captures labelled by the oracle (livelab retrain build)"
                    ),
                },
            )
        if rolled is not None:
            bad, good, ms = rolled
            self.window = Window(self.intents, self.clock())
            self._record(
                "rollback",
                {
                    "id": None,
                    "by": "slo",
                    "from": bad.describe(),
                    "to": good.describe(),
                    "reason": alert.reason(),
                    "slo": alert.slo,
                    "rollback_ms": ms,
                },
            )
            self._slo_reset()
        if self.connected:
            self._publish(
                topics.alert(self.ns, self.name),
                topics.encode(
                    {
                        "schema": topics.SCHEMA_ALERT,
                        "namespace": self.ns,
                        "device": self.name,
                        "seq": rec["index"],  # the audit record's index: unique per device
                        "time": rec["time"],
                        "kind": "slo",
                        **{k: v for k, v in data.items() if k not in ("id", "by")},
                        "audit": {"index": rec["index"], "hash": rec["hash"]},
                        **(
                            {"retrain": {"index": suggested["index"], "hash": suggested["hash"]}}
                            if suggested is not None
                            else {}
                        ),
                    }
                ),
            )

    def _slo_state(self: Any) -> dict[str, Any] | None:
        """Budget and burn rates of each objective, for the retained state (None: none declared)."""
        if self.slo is None or self.slo.bundle != self.slots.active.digest:
            self._slo_reset()
        if self.slo is None:
            return None
        return {"bundle": self.slo.bundle, "objectives": self.slo.status()}
