# Captures in the other order, each under a consent of its own: the held-out capture first, then the
# training one, replay-capture granted and revoked around each; windows taken from the buffer after
# waiting for them (lab.windows), the share with a Counter.

# %% route
ROUTING = {"margin_threshold": 3 / 10, "timeout_ms": 200, "max_share": 1 / 2}

# %% slo
AGREE = {"name": "agree-call", "indicator": "divergence", "intent": DEFECT, "objective": 0.95,
         "period_windows": 120, "policy": "retrain"}

# %% install
ROUTED = bundle.sign(
    bundle.build(MODELS["candidate"], WORK / f"intents-routed-{VERSION}.lbundle", name="intents", version=VERSION,
                 routing=ROUTING, slos=[AGREE], compute={"health_decisions": 50}),
    KEY,
)
routed = bundle.read(ROUTED)
lab.grant_consent(CANARY, "telemetry")
lab.install(CANARY, ROUTED)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    mine = {(w["device"], w["seq"]): w for w in lab.windows(CANARY) if "oracle" in w}
    if len(mine) >= 10:
        break
    time.sleep(0.5)
oracle_windows = list(mine.values())[:10]
tally = Counter()
for w in oracle_windows:
    tally["routed"] += w["oracle"]["routed"]
    tally["decisions"] += w["decisions"]
ROUTED_SHARE = tally["routed"] / tally["decisions"]

# %% alert
ALERT = lab.wait_alert(CANARY, slo="agree-call", timeout=60)
BURN = ALERT["burn_rate"]["long"]
BUDGET_LEFT = ALERT.get("budget_remaining")

# %% retrain
lab.grant_consent(CANARY, "replay-capture")
HELD_ID = lab.capture(CANARY, 300)
lab.revoke_consent(CANARY, "replay-capture")
lab.grant_consent(CANARY, "replay-capture")
TRAIN_ID = lab.capture(CANARY, 400)
lab.revoke_consent(CANARY, "replay-capture")
wait_stored(HELD_ID, 300)
wait_stored(TRAIN_ID, 400)
RETRAINED = WORK / f"intents-retrained-{NEXT}.lbundle"
res = lab.retrain(RETRAINED, version=NEXT, device=CANARY, capture_ids=[TRAIN_ID],
                  trigger=f"{CANARY}#{ALERT['retrain']['index']}", parent=ROUTED)

# %% drop
HELD = replay.build(HOME, NAMESPACE, CANARY, WORK / "held-out.lreplay", capture_ids=[HELD_ID])
DROP = retrain.divergence(HELD, [MODELS["candidate"], RETRAINED])
OLD, NEW = DROP["models"]

# %% canary
retrained = bundle.read(bundle.sign(RETRAINED, KEY))
lab.install(CANARY, RETRAINED)
verdict = lab.wait_health(CANARY, retrained, timeout=30)
