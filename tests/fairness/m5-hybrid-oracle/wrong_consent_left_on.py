# Captures and retrains correctly but never revokes replay-capture: the retrain test's hidden part
# reads the canary's consent, and the consent check's revoked-when-done item the audit chain.
# base: ok_loops

# %% retrain
lab.grant_consent(CANARY, "replay-capture")
TRAIN_ID = lab.capture(CANARY, 400)
HELD_ID = lab.capture(CANARY, 300)
wait_stored(TRAIN_ID, 400)
wait_stored(HELD_ID, 300)
RETRAINED = WORK / ("intents-retrained-" + NEXT + ".lbundle")
res = lab.retrain(RETRAINED, version=NEXT, device=CANARY, capture_ids=[TRAIN_ID], trigger=ALERT, parent=ROUTED)
