# Plain loops and explicit counters; the defect intent by an explicit loop over the gap.
# %% quiet
for device in lab.devices:
    lab.revoke_consent(device, "telemetry")
quiet = []
for w in lab.telemetry(timeout=1.5):
    quiet.append(w)
# %% windows
for device in lab.devices:
    lab.grant_consent(device, "telemetry")
windows = []
seen = set()
for w in lab.telemetry(timeout=3):
    windows.append(w)
    seen.add((w["device"], w["seq"]))
    counts = {d: 0 for d in lab.devices}
    for d, _ in seen:
        counts[d] += 1
    if min(counts.values()) >= 12:
        break
# %% rates
totals = {}
for w in windows:
    per = totals.setdefault(w["model"], {i: [0, 0] for i in lab.intents})
    for i in lab.intents:
        per[i][0] += w["fp_proxy"]["undo"][i]
        per[i][1] += w["counts"][i]
undo_rate = {}
for model, per in totals.items():
    undo_rate[model] = {}
    for i, (u, n) in per.items():
        undo_rate[model][i] = u / n if n else 0.0
best, best_gap = None, None
for i in lab.intents:
    gap = undo_rate["candidate"][i] - undo_rate["baseline"][i]
    if best_gap is None or gap > best_gap:
        best, best_gap = i, gap
DEFECT_INTENT = best
# %% trail
revocation = lab.revoke_consent("dev-2", "telemetry")
after = []
for w in lab.telemetry(timeout=1.5):
    after.append(w)
    if len(after) == 8:
        break
chain = lab.audit_chain("dev-2")
trail = chain.consent_trail()
