# numpy for the rates matrix; the cause sentence carries the full digest.
# %% compact
def compact(w):
    entry = [w["device"], w["seq"], w["bundle"][:8], w["decisions"]]
    entry.append([w["fp_proxy"]["undo"][intent] for intent in lab.intents])
    entry.append(w["digest"])
    return entry
# %% trace
TRACE = []
need = {d: MIN_WINDOWS for d in lab.devices}
for w in lab.telemetry(timeout=3):
    TRACE.append(compact(w))
    need[w["device"]] -= 1
    if max(need.values()) <= 0:
        break
# %% localize
import numpy as np
devs = sorted({t[0] for t in TRACE})
U = np.array([np.sum([t[4] for t in TRACE if t[0] == d], axis=0) for d in devs], dtype=float)
N = np.array([sum(t[3] for t in TRACE if t[0] == d) for d in devs], dtype=float)
R = U / N[:, None]
rates = {d: {i: float(R[a, k]) for k, i in enumerate(lab.intents)} for a, d in enumerate(devs)}
best = (-np.inf, None, None)
for a, d in enumerate(devs):
    others = np.delete(R, a, axis=0).max(axis=0)
    for k, i in enumerate(lab.intents):
        if i != DEFECT and R[a, k] - others[k] > best[0]:
            best = (R[a, k] - others[k], d, i)
SUSPECT_DEVICE, SUSPECT_INTENT = best[1], best[2]
# %% cause
SUSPECT_BUNDLE = Counter(t[2] for t in TRACE if t[0] == SUSPECT_DEVICE).most_common(1)[0][0]
chain = lab.audit_chain(SUSPECT_DEVICE)
install = next(r for r in reversed(chain.records) if r["kind"] == "install"
               and r["data"]["bundle"].startswith(SUSPECT_BUNDLE))
CAUSE = (f"{install['data']['by']} installed {install['data']['name']} {install['data']['version']} "
         f"(bundle {install['data']['bundle']}) on {SUSPECT_DEVICE}; since then {SUSPECT_INTENT} is undone far more often")
# %% fix
lab.rollback(SUSPECT_DEVICE, reason=CAUSE)
t_end = time.monotonic() + 5
while lab.states[SUSPECT_DEVICE]["bundle"][:8] == SUSPECT_BUNDLE and time.monotonic() < t_end:
    time.sleep(0.05)
