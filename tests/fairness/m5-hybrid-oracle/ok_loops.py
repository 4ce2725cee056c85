# Explicit loops and small steps: the routing and the objective built key by key, windows read one
# at a time with lab.next_window, the share from running totals, the budget found by name.

# %% route
ROUTING = dict()
ROUTING["margin_threshold"] = 0.3
ROUTING["timeout_ms"] = 200
ROUTING["max_share"] = 0.5

# %% slo
AGREE = dict(name="agree-call", indicator="divergence", intent=lab.conn.defect_intent)
AGREE["objective"] = 0.95
AGREE["period_windows"] = 120
AGREE["policy"] = "retrain"

# %% install
out = WORK / ("intents-routed-" + VERSION + ".lbundle")
bundle.build(MODELS["candidate"], out, name="intents", version=VERSION, routing=ROUTING, slos=[AGREE],
             compute={"health_decisions": 50})
bundle.sign(out, KEY)
ROUTED = out
routed = bundle.read(ROUTED)
lab.grant_consent(CANARY, "telemetry")
lab.install(CANARY, ROUTED)
oracle_windows = []
seen = set()
while len(oracle_windows) < 10:
    w = lab.next_window(CANARY, timeout=5)
    if "oracle" in w and (w["device"], w["seq"]) not in seen:
        seen.add((w["device"], w["seq"]))
        oracle_windows.append(w)
n_routed = 0
n_decided = 0
for w in oracle_windows:
    n_routed += w["oracle"]["routed"]
    n_decided += w["decisions"]
ROUTED_SHARE = n_routed / n_decided

# %% alert
ALERT = lab.wait_alert(CANARY, slo="agree-call", timeout=60)
BURN = ALERT["burn_rate"]["long"]
BUDGET_LEFT = None
for key, value in ALERT.items():
    if key == "budget_remaining":
        BUDGET_LEFT = value

# %% retrain
lab.grant_consent(CANARY, "replay-capture")
TRAIN_ID = lab.capture(CANARY, 400)
HELD_ID = lab.capture(CANARY, 300)
lab.revoke_consent(CANARY, "replay-capture")
for cid, n in ((TRAIN_ID, 400), (HELD_ID, 300)):
    wait_stored(cid, n)
RETRAINED = WORK / ("intents-retrained-" + NEXT + ".lbundle")
res = lab.retrain(RETRAINED, version=NEXT, device=CANARY, capture_ids=[TRAIN_ID], trigger=ALERT, parent=ROUTED)

# %% drop
HELD = WORK / "held-out.lreplay"
replay.build(HOME, NAMESPACE, CANARY, HELD, capture_ids=[HELD_ID])
DROP = retrain.divergence(HELD, [MODELS["candidate"], RETRAINED])
OLD = DROP["models"][0]
NEW = DROP["models"][1]

# %% canary
bundle.sign(RETRAINED, KEY)
retrained = bundle.read(RETRAINED)
lab.install(CANARY, RETRAINED)
verdict = lab.wait_health(CANARY, RETRAINED)
