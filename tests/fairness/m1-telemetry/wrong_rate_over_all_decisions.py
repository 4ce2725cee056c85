# Undo rate per intent divided by ALL the model's decisions instead of the intent's own: the
# ranking may still name the right intent, but the rates are not undone / decided.
# base: ok_counters
# %% rates
undos = collections.defaultdict(collections.Counter)
decs = collections.Counter()
for w in windows:
    undos[w["model"]].update(w["fp_proxy"]["undo"])
    decs[w["model"]] += w["decisions"]
undo_rate = {m: {i: undos[m][i] / decs[m] for i in lab.intents} for m in decs}
DEFECT_INTENT = max(lab.intents, key=lambda i: undo_rate["candidate"][i] - undo_rate["baseline"][i])
