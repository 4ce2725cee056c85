# Uses the NAMESPACE parameter (resolved by the connect cell) for replay.build, reads the refusal
# from the exception's args, compares the run files by sha256.
# %% capture
lab.revoke_consent(DEVICE, "replay-capture")
refused = None
try:
    lab.capture(DEVICE, 10)
except CommandRefused as e:
    refused = e.args[0]
lab.grant_consent(DEVICE, "replay-capture")
capture_id = lab.capture(DEVICE, 300)
lab.revoke_consent(DEVICE, "replay-capture")
# %% build
wait_stored(capture_id, 300)
REPLAY = replay.build(HOME, NAMESPACE, DEVICE, WORK / "dev-1.lreplay", capture_ids=[capture_id])
rp = replay.read(REPLAY)
# %% determinism
import hashlib
run1 = replay.run(REPLAY, MODELS["candidate"], WORK / "run1.jsonl")
run2 = replay.run(REPLAY, MODELS["candidate"], WORK / "run2.jsonl")
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
IDENTICAL = sha(WORK / "run1.jsonl") == sha(WORK / "run2.jsonl")
# %% diff
d = replay.diff(REPLAY, MODELS["candidate"], MODELS["baseline"], defect_intent=lab.conn.defect_intent)
FALSE_POSITIVES, BASELINE_FALSE_POSITIVES = d["a"]["defect_false_positives"], d["b"]["defect_false_positives"]
