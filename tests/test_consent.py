"""No consent, no message: checked by an independent subscriber with control-plane rights."""

from __future__ import annotations

import json
import re
import time

from labs import Lab, streams
from tests.mqtt_helpers import Observer, wait_for

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"\(?\d{3}\)?[ -]\d{3}[ -]\d{4}")


def test_consent_gate_and_revocation(fresh_lab):
    home = fresh_lab(device_options={"window_seconds": 0.2})
    obs = Observer(home)  # control-plane rights, subscribed to livelab/#
    try:
        with Lab.connect(home=home) as sdk:
            time.sleep(1.0)
            assert obs.of("telemetry") == []  # default deny: nobody consented yet

            sdk.grant_consent("dev-0")
            sdk.next_window("dev-0", timeout=3)
            wait_for(lambda: obs.of("telemetry", "dev-0"), 10, "the observer to see dev-0's telemetry")
            time.sleep(1.0)  # (a second of windows in which the others must stay silent)
            assert obs.of("telemetry", "dev-1") == [] and obs.of("telemetry", "dev-2") == []

            # consent-first: no window mixes decisions from before the grant
            grant_time = next(r for m in obs.of("audit", "dev-0") for r in m["records"] if r["kind"] == "consent")[
                "time"
            ]
            assert all(w["start"] >= grant_time for w in obs.of("telemetry", "dev-0"))

            rec = sdk.revoke_consent("dev-0")
            assert rec["data"]["grant"] is False

            # Revocation takes effect before the next window: after the device has recorded
            # the revocation, the observer sees no further telemetry from it.
            def revoked_at():
                return [
                    i
                    for i, (t, d) in enumerate(obs.raw())
                    if t.endswith("dev-0/audit")
                    and any(r["kind"] == "consent" and r["data"]["grant"] is False for r in d["records"])
                ]

            deadline = time.monotonic() + 60
            while not revoked_at() and time.monotonic() < deadline:
                time.sleep(0.02)
            cut = revoked_at()[0]
            time.sleep(1.5)
            after = [d for t, d in obs.raw()[cut + 1 :] if t.endswith("dev-0/telemetry")]
            assert after == []
            assert sdk.states["dev-0"]["consent"]["telemetry"] is False

            chain = sdk.audit_chain("dev-0")
            assert chain.verify()
            trail = chain.consent_trail()
            assert [(r["data"]["scope"], r["data"]["grant"]) for r in trail] == [
                ("telemetry", True),
                ("telemetry", False),
            ]
    finally:
        obs.close()


def test_no_raw_input_or_pii_leaves_a_device(fresh_lab):
    home = fresh_lab(device_options={"window_seconds": 0.2})
    obs = Observer(home)
    try:
        with Lab.connect(home=home) as sdk:
            for d in sdk.devices:
                sdk.grant_consent(d)
            for d in sdk.devices:
                sdk.grant_consent(d, "replay-capture")
            wait_for(lambda: len(obs.of("telemetry")) >= 6, 30, "six telemetry windows")
            sdk.audit_chain("dev-1")
        texts = [r["text"] for r in streams.voice_intents(20261125, 2000)]
        blob = "\n".join(json.dumps(d) if isinstance(d, dict) else repr(d) for _, d in obs.raw())
        assert len(obs.of("telemetry")) >= 6
        assert not EMAIL.search(blob), EMAIL.search(blob)
        assert not PHONE.search(blob)
        names = set(streams.FIRST_NAMES) | set(streams.LAST_NAMES)
        words = set(re.findall(r"[A-Za-z]+", blob))
        assert not (names & words), names & words
        long_texts = [t for t in texts if len(t) > 25]
        assert not [t for t in long_texts[:500] if t in blob]
        from lab_hardware.window import ALLOWED_FIELDS

        for w in obs.of("telemetry"):
            assert set(w) <= ALLOWED_FIELDS
    finally:
        obs.close()
