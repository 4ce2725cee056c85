# Reads files as bytes, installs bundle bytes, counts shadow windows by (device, seq).
# %% key
if not KEY.is_file():
    keys.new_key(WORK, "author")
KEYID = keys.trust(HOME, WORK / "keys" / "author.pub")
# %% bundle
adapter_bytes = adapter.make(list(lab.intents), {DEFECT: -3})
Path(WORK, "adapter.json").write_bytes(adapter_bytes)
FIXED = bundle.build(MODELS["candidate"], WORK / "intents-fixed-1.1.0.lbundle", name="intents-fixed",
                     version="1.1.0", adapter=WORK / "adapter.json", compute={"health_decisions": 50})
FIXED = bundle.sign(FIXED, KEY)
fixed = bundle.verify(FIXED.read_bytes(), keys.trusted(HOME))
# %% shadow
lab.shadow(CANARY, FIXED.read_bytes())
lab.grant_consent(CANARY, "telemetry")
got = {}
for w in lab.telemetry(CANARY, timeout=3):
    if "shadow" in w:
        got[(w["device"], w["seq"])] = w
    if len(got) >= 10:
        break
shadowed = list(got.values())
lab.shadow(CANARY)
diverged_from = Counter()
for w in shadowed:
    diverged_from.update(w["shadow"]["active_by_intent"])
# %% install
lab.install(CANARY, FIXED.read_bytes())
verdict = health_verdict(CANARY, fixed.digest)
# %% rollback
BAD = WORK / "intents-fixed-1.2.0.lbundle"
bundle.sign(bundle.build(MODELS["candidate"], BAD, name="intents-fixed", version="1.2.0",
                         adapter=WORK / "adapter.json",
                         compute={"health_decisions": 50, "latency_budget_ms": 0.001}), KEY)
bad = bundle.read(BAD.read_bytes())
lab.install(CANARY, BAD.read_bytes())
bad_verdict = health_verdict(CANARY, bad.digest)
# %% revoke
lab.revoke(bad.digest, reason="fails the latency SLO on " + CANARY)
try:
    lab.install("dev-2", BAD.read_bytes())
except CommandRefused as exc:
    refusal = str(exc)
else:
    refusal = None
