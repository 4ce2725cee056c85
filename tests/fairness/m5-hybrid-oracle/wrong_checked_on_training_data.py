# Checks the drop on the training capture instead of the held-out one (a model always looks better
# on what it was trained on): the drop test's hidden part reads the replay's capture ids.
# base: ok_loops

# %% drop
HELD = replay.build(HOME, NAMESPACE, CANARY, WORK / "held-out.lreplay", capture_ids=[TRAIN_ID])
DROP = retrain.divergence(HELD, [MODELS["candidate"], RETRAINED])
OLD, NEW = DROP["models"]
