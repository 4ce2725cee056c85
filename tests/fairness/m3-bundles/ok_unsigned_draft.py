# Keeps an unsigned draft of the fix beside the signed file (bundle.sign(..., out=FIXED)):
# two files with one digest, one signed and one not; the draft's name sorts first.
# %% key
try:
    keys.new_key(WORK, "author")
except Exception:
    pass  # it exists from an earlier run
KEYID = keys.trust(HOME, KEY.with_suffix(".pub"))
# %% bundle
(WORK / "adapter.json").write_bytes(adapter.make(lab.intents, {DEFECT: -3.0}))
draft = bundle.build(MODELS["candidate"], WORK / "draft-unsigned.lbundle", name="intents-fixed", version="1.1.0",
                     adapter=WORK / "adapter.json", compute={"health_decisions": 50})
FIXED = bundle.sign(draft, KEY, out=WORK / "intents-fixed-1.1.0.lbundle")
fixed = bundle.verify(FIXED, keys.trusted(HOME))
# %% shadow
lab.shadow(CANARY, FIXED)
lab.grant_consent(CANARY, "telemetry")
shadowed = [w for w in lab.telemetry(CANARY, timeout=3, limit=12) if "shadow" in w][:10]
while len(shadowed) < 10:
    w = lab.next_window(CANARY)
    if "shadow" in w:
        shadowed.append(w)
lab.shadow(CANARY, None)
diverged_from = sum((Counter(w["shadow"]["active_by_intent"]) for w in shadowed), Counter())
# %% install
rec = lab.install(CANARY, FIXED)
verdict = health_verdict(CANARY, fixed.digest, timeout=30)
# %% rollback
BAD = bundle.build(MODELS["candidate"], WORK / "intents-fixed-1.2.0.lbundle", name="intents-fixed",
                   version="1.2.0", adapter=WORK / "adapter.json",
                   compute={"health_decisions": 50, "latency_budget_ms": 0.001})
bundle.sign(BAD, KEY)
bad = bundle.read(BAD)
lab.install(CANARY, BAD)
bad_verdict = health_verdict(CANARY, bad.digest, timeout=30)
# %% revoke
lab.revoke(bad.digest, "bad latency SLO")
try:
    lab.install("dev-2", BAD)
    refusal = None
except CommandRefused as exc:
    refusal = exc.args[0]
