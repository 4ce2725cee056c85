# Names every path first, writes the adapter with open(), counts divergences by hand.
# %% key
pub = WORK / "keys" / "author.pub"
if not KEY.exists():
    keys.new_key(WORK, "author")
KEYID = keys.trust(HOME, pub)
# %% bundle
adapter_path = WORK / "adapter.json"
with open(adapter_path, "wb") as fh:
    fh.write(adapter.make(lab.intents, {DEFECT: -3.0}))
FIXED = WORK / "intents-fixed-1.1.0.lbundle"
bundle.build(MODELS["candidate"], FIXED, name="intents-fixed", version="1.1.0", adapter=adapter_path,
             compute={"health_decisions": 50})
bundle.sign(FIXED, KEY)
fixed = bundle.verify(FIXED, keys.trusted(HOME))
# %% shadow
lab.shadow(CANARY, FIXED)
lab.grant_consent(CANARY, "telemetry")
shadowed = []
for w in lab.telemetry(CANARY, timeout=3):
    if w.get("shadow"):
        shadowed.append(w)
        if len(shadowed) == 10:
            break
lab.shadow(CANARY, None)
diverged_from = Counter()
for w in shadowed:
    for intent, n in w["shadow"]["active_by_intent"].items():
        diverged_from[intent] += n
# %% install
lab.install(CANARY, FIXED)
verdict = health_verdict(CANARY, fixed.digest)
# %% rollback
BAD = WORK / "intents-fixed-1.2.0.lbundle"
bundle.build(MODELS["candidate"], BAD, name="intents-fixed", version="1.2.0", adapter=adapter_path,
             compute={"health_decisions": 50, "latency_budget_ms": 0.001})
bundle.sign(BAD, KEY)
bad = bundle.read(BAD)
lab.install(CANARY, BAD)
bad_verdict = health_verdict(CANARY, bad.digest)
# %% revoke
lab.revoke(bad.digest, reason="misses its latency SLO")
refusal = None
try:
    lab.install("dev-2", BAD)
except CommandRefused as exc:
    refusal = str(exc)
