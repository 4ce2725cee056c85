# Wraps build-and-sign in a function used for both releases; waits for shadow windows by count.
# %% key
if not KEY.exists():
    keys.new_key(WORK, "author")
KEYID = keys.trust(HOME, WORK / "keys" / "author.pub")
# %% bundle
def build_signed(version, **compute):
    out = WORK / f"intents-fixed-{version}.lbundle"
    bundle.build(MODELS["candidate"], out, name="intents-fixed", version=version,
                 adapter=WORK / "adapter.json", compute={"health_decisions": 50, **compute})
    bundle.sign(out, KEY)
    return out
(WORK / "adapter.json").write_bytes(adapter.make(lab.intents, {DEFECT: -3.0}))
FIXED = build_signed("1.1.0")
fixed = bundle.verify(FIXED, keys.trusted(HOME))
# %% shadow
lab.shadow(CANARY, FIXED)
lab.grant_consent(CANARY, "telemetry")
shadowed = []
stream = lab.telemetry(CANARY, timeout=3)
while len(shadowed) < 10:
    w = next(stream)
    if "shadow" in w:
        shadowed.append(w)
lab.shadow(CANARY, None)
diverged_from = Counter()
[diverged_from.update(w["shadow"]["active_by_intent"]) for w in shadowed]
# %% install
lab.install(CANARY, FIXED)
verdict = health_verdict(CANARY, fixed.digest)
# %% rollback
BAD = build_signed("1.2.0", latency_budget_ms=0.001)
bad = bundle.read(BAD)
lab.install(CANARY, BAD)
bad_verdict = health_verdict(CANARY, bad.digest)
# %% revoke
lab.revoke(bad.digest, reason="rolled back by the health check: latency")
refusal = None
try:
    lab.install("dev-2", BAD)
except CommandRefused as exc:
    refusal = str(exc)
