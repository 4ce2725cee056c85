# collections.Counter per model, a sorted() ranking, windows gathered per device one after another.
# %% quiet
import collections
[lab.revoke_consent(d, "telemetry") for d in lab.devices]
quiet = [w for w in lab.telemetry(timeout=1.5)]
# %% windows
for d in lab.devices:
    lab.grant_consent(d, "telemetry")
windows = []
for d in lab.devices:
    windows.extend(lab.telemetry(d, timeout=3, limit=12))
# %% rates
undos = collections.defaultdict(collections.Counter)
decs = collections.defaultdict(collections.Counter)
for w in windows:
    undos[w["model"]].update(w["fp_proxy"]["undo"])
    decs[w["model"]].update(w["counts"])
undo_rate = {m: {i: (undos[m][i] / decs[m][i]) if decs[m][i] > 0 else 0.0 for i in lab.intents} for m in decs}
ranking = sorted(lab.intents, key=lambda i: undo_rate["candidate"][i] - undo_rate["baseline"][i], reverse=True)
DEFECT_INTENT = ranking[0]
# %% trail
revocation = lab.revoke_consent("dev-2", scope="telemetry")
after = list(lab.telemetry(limit=8, timeout=1.5))
chain = lab.audit_chain("dev-2")
trail = chain.consent_trail()
