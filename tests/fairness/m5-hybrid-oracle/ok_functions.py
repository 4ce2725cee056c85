# Small helper functions: a window collector and a share function, the alert found in lab.alerts()
# after waiting, the retrained bundle's canary through the bytes of the signed file.

# %% route
def routing(margin, timeout_ms, share):
    return {"margin_threshold": margin, "timeout_ms": timeout_ms, "max_share": share}


ROUTING = routing(0.3, 200, 0.5)

# %% slo
def divergence_objective(name, intent, objective, windows):
    return {"name": name, "indicator": "divergence", "intent": intent, "objective": objective,
            "period_windows": windows, "policy": "retrain"}


AGREE = divergence_objective("agree-call", DEFECT, 0.95, 120)

# %% install
def collect(device, n):
    got = {}
    for w in lab.telemetry(device, timeout=5):
        if "oracle" in w:
            got[(w["device"], w["seq"])] = w
        if len(got) >= n:
            break
    return list(got.values())


def share(windows):
    return sum(w["oracle"]["routed"] for w in windows) / sum(w["decisions"] for w in windows)


ROUTED = WORK / f"intents-routed-{VERSION}.lbundle"
bundle.build(MODELS["candidate"], ROUTED, name="intents", version=VERSION, routing=ROUTING, slos=[AGREE],
             compute={"health_decisions": 50})
bundle.sign(ROUTED, KEY)
routed = bundle.verify(ROUTED, keys.trusted(HOME))
lab.grant_consent(CANARY, "telemetry")
lab.install(CANARY, ROUTED.read_bytes())
oracle_windows = collect(CANARY, 10)
ROUTED_SHARE = share(oracle_windows)

# %% alert
lab.wait_alert(CANARY, slo="agree-call", timeout=60)
ALERT = [a for a in lab.alerts(CANARY) if a["slo"] == "agree-call"][0]
BURN = ALERT["burn_rate"]["long"]
BUDGET_LEFT = ALERT["budget_remaining"]

# %% retrain
def captured(device, n):
    cid = lab.capture(device, n)
    wait_stored(cid, n)
    return cid


lab.grant_consent(CANARY, "replay-capture")
try:
    TRAIN_ID = captured(CANARY, 400)
    HELD_ID = captured(CANARY, 300)
finally:
    lab.revoke_consent(CANARY, "replay-capture")
RETRAINED = WORK / f"intents-retrained-{NEXT}.lbundle"
res = lab.retrain(RETRAINED, version=NEXT, device=CANARY, capture_ids=[TRAIN_ID], trigger=ALERT, parent=ROUTED)

# %% drop
HELD = replay.build(HOME, NAMESPACE, CANARY, WORK / "held-out.lreplay", capture_ids=[HELD_ID])
DROP = retrain.divergence(HELD, [MODELS["candidate"], RETRAINED])
OLD, NEW = DROP["models"]

# %% canary
bundle.sign(RETRAINED, KEY)
retrained = bundle.read(RETRAINED)
lab.install(CANARY, RETRAINED.read_bytes())
verdict = lab.wait_health(CANARY, retrained.digest)
