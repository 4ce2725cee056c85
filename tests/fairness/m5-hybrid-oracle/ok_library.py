# The library instead of the SDK helpers: labs.retrain.build with the trigger written as DEVICE#INDEX
# and the canary's chain fetched by hand (chains=...), the health verdict polled from the audit chain
# as module 3 did, the budget read from lab.slos() without naming the device.

# %% route
ROUTING = {"max_share": 0.5, "timeout_ms": 200.0, "margin_threshold": 0.3}

# %% slo
AGREE = {"policy": "retrain", "period_windows": 120, "objective": 0.95, "intent": "call",
         "indicator": "divergence", "name": "agree-call"}

# %% install
ROUTED = WORK / f"intents-routed-{VERSION}.lbundle"
bundle.build(MODELS["candidate"], ROUTED, name="intents", version=VERSION, routing=ROUTING, slos=[AGREE],
             compute={"health_decisions": 50})
routed = bundle.read(bundle.sign(ROUTED, KEY))
lab.grant_consent(CANARY, "telemetry")
lab.install(CANARY, ROUTED)
oracle_windows = []
for w in lab.telemetry(CANARY, timeout=5):
    if w.get("oracle") is not None and w["bundle"] == routed.digest:
        oracle_windows.append(w)
    if len(oracle_windows) == 10:
        break
ROUTED_SHARE = sum(w["oracle"]["routed"] for w in oracle_windows) / sum(sum(w["counts"].values()) for w in oracle_windows)

# %% alert
ALERT = lab.wait_alert(CANARY, timeout=60)
BURN = float(ALERT["burn_rate"]["long"])
BUDGET_LEFT = float(ALERT["budget_remaining"])

# %% retrain
lab.grant_consent(CANARY, "replay-capture")
TRAIN_ID = lab.capture(CANARY, 400)
HELD_ID = lab.capture(CANARY, 300)
lab.revoke_consent(CANARY, "replay-capture")
wait_stored(TRAIN_ID, 400)
wait_stored(HELD_ID, 300)
RETRAINED = WORK / f"intents-retrained-{NEXT}.lbundle"
res = retrain.build(HOME, RETRAINED, version=NEXT, namespace=NAMESPACE, device=CANARY, capture_ids=[TRAIN_ID],
                    trigger=f"{CANARY}#{ALERT['retrain']['index']}", parent=ROUTED,
                    chains={(NAMESPACE, CANARY): lab.audit_chain(CANARY).records})

# %% drop
HELD = replay.build(HOME, lab.namespace, CANARY, WORK / "held.lreplay", capture_ids=[HELD_ID])
DROP = retrain.divergence(HELD, [str(MODELS["candidate"]), str(RETRAINED)])
OLD, NEW = DROP["models"][0], DROP["models"][-1]

# %% canary
bundle.sign(RETRAINED, KEY)
retrained = bundle.read(RETRAINED)
lab.install(CANARY, RETRAINED)
verdict = None
deadline = time.monotonic() + 30
while verdict is None and time.monotonic() < deadline:
    for rec in lab.audit_chain(CANARY).records:
        if rec["kind"] == "health" and rec["data"]["bundle"] == retrained.digest:
            verdict = rec["data"]
    time.sleep(0.3)
