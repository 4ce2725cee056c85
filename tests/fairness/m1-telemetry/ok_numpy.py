# numpy arrays in lab.intents order; windows keyed by (device, seq) in a dict.
# %% quiet
import numpy as np
for d in sorted(lab.devices, reverse=True):
    lab.revoke_consent(d, "telemetry")
quiet = list(lab.telemetry(timeout=1.5))
# %% windows
for d in lab.devices:
    lab.grant_consent(d, "telemetry")
by_key = {}
for w in lab.telemetry(timeout=3):
    by_key[(w["device"], w["seq"])] = w
    if all(len([k for k in by_key if k[0] == d]) >= 12 for d in lab.devices):
        break
windows = list(by_key.values())
# %% rates
undo_rate = {}
for model in {w["model"] for w in windows}:
    ws = [w for w in windows if w["model"] == model]
    u = np.array([[w["fp_proxy"]["undo"][i] for i in lab.intents] for w in ws]).sum(axis=0)
    n = np.array([[w["counts"][i] for i in lab.intents] for w in ws]).sum(axis=0)
    r = np.divide(u, n, out=np.zeros(len(lab.intents)), where=n > 0)
    undo_rate[model] = {i: float(x) for i, x in zip(lab.intents, r)}
diff = np.array([undo_rate["candidate"][i] - undo_rate["baseline"][i] for i in lab.intents])
DEFECT_INTENT = lab.intents[int(diff.argmax())]
# %% trail
revocation = lab.revoke_consent("dev-2", "telemetry")
after = []
for w in lab.telemetry(timeout=1.5, limit=8):
    after.append(w)
chain = lab.audit_chain("dev-2")
trail = chain.consent_trail()
