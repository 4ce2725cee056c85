# itertools.groupby over windows sorted by model; revokes only where the device reports consent
# (reading lab.states first), which is enough: a device without consent sends nothing.
# %% quiet
for d in lab.devices:
    if lab.states[d]["consent"]["telemetry"]:
        lab.revoke_consent(d, "telemetry")
quiet = list(lab.telemetry(timeout=1.5))
# %% windows
import itertools
for d in lab.devices:
    lab.grant_consent(d, "telemetry")
windows = []
def enough():
    have = {(w["device"], w["seq"]) for w in windows}
    return all(sum(1 for dd, _ in have if dd == d) >= 12 for d in lab.devices)
stream = lab.telemetry(timeout=3)
while not enough():
    windows.append(next(stream))
# %% rates
undo_rate = {}
for model, group in itertools.groupby(sorted(windows, key=lambda w: w["model"]), key=lambda w: w["model"]):
    group = list(group)
    undo_rate[model] = {}
    for i in lab.intents:
        n = sum(w["counts"][i] for w in group)
        undo_rate[model][i] = sum(w["fp_proxy"]["undo"][i] for w in group) / n if n else 0.0
gaps = {i: undo_rate["candidate"][i] - undo_rate["baseline"][i] for i in lab.intents}
DEFECT_INTENT = max(gaps, key=gaps.get)
# %% trail
revocation = lab.revoke_consent("dev-2", "telemetry")
after = list(itertools.islice(lab.telemetry(timeout=1.5), 8))
chain = lab.audit_chain("dev-2")
trail = [r for r in chain.records if r["kind"] == "consent"]
