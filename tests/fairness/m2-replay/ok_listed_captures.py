# Finds its capture in replay.list_captures (instead of the helper), passes Paths as strings,
# and compares the runs by their reported output sha256.
# %% capture
lab.revoke_consent(DEVICE, "replay-capture")
try:
    lab.capture(DEVICE, 10)
    refused = ""
except CommandRefused as exc:
    refused = f"{exc}"
granted = lab.grant_consent(DEVICE, "replay-capture")
capture_id = lab.capture(DEVICE, 300, timeout=60)
lab.revoke_consent(DEVICE, "replay-capture")
# %% build
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    mine = [m for m in replay.list_captures(HOME) if m["capture_id"] == capture_id and m["complete"]]
    if mine and mine[0]["records"] >= 300:
        break
    time.sleep(0.2)
REPLAY = replay.build(str(HOME), lab.namespace, DEVICE, str(WORK / "dev-1.lreplay"), capture_ids=[capture_id])
rp = replay.read(REPLAY)
# %% determinism
run1 = replay.run(REPLAY, MODELS["candidate"], WORK / "run1.jsonl")
run2 = replay.run(REPLAY, MODELS["candidate"], WORK / "run2.jsonl")
IDENTICAL = run1["output_sha256"] == run2["output_sha256"] and \
    (WORK / "run1.jsonl").read_bytes() == (WORK / "run2.jsonl").read_bytes()
# %% diff
defect = lab.conn.defect_intent
d = replay.diff(REPLAY, MODELS["candidate"], MODELS["baseline"], defect_intent=defect)
FALSE_POSITIVES = int(d["a"]["defect_false_positives"])
BASELINE_FALSE_POSITIVES = int(d["b"]["defect_false_positives"])
