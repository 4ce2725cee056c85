# Revokes only if the device reports replay-capture granted, then tries; runs via a loop.
# %% capture
if lab.states[DEVICE]["consent"]["replay-capture"]:
    lab.revoke_consent(DEVICE, "replay-capture")
    deadline = time.monotonic() + 5
    while lab.states[DEVICE]["consent"]["replay-capture"] and time.monotonic() < deadline:
        time.sleep(0.05)
try:
    lab.capture(DEVICE, 10)
    refused = None
except CommandRefused as exc:
    refused = str(exc)
lab.grant_consent(DEVICE, "replay-capture")
try:
    capture_id = lab.capture(DEVICE, 300)
finally:
    lab.revoke_consent(DEVICE, "replay-capture")
# %% build
meta = wait_stored(capture_id, 300)
REPLAY = WORK / "dev-1.lreplay"
replay.build(HOME, lab.namespace, DEVICE, REPLAY, capture_ids=[meta["capture_id"]])
rp = replay.read(REPLAY)
# %% determinism
results = {}
for k in ("run1", "run2"):
    results[k] = replay.run(REPLAY, MODELS["candidate"], WORK / f"{k}.jsonl")
run1, run2 = results["run1"], results["run2"]
IDENTICAL = (WORK / "run1.jsonl").read_bytes() == (WORK / "run2.jsonl").read_bytes()
# %% diff
d = replay.diff(REPLAY, MODELS["candidate"], MODELS["baseline"], defect_intent=lab.conn.defect_intent)
FALSE_POSITIVES = d["a"]["defect_false_positives"]
BASELINE_FALSE_POSITIVES = d["b"]["defect_false_positives"]
