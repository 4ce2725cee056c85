# Keeps the whole bundle digest in each trace entry ("more is safer"): over the entry size the
# exercise allows, and the trace no longer fits its budget.
# base: ok_tuple_unpack
# %% compact
def compact(w):
    undo = w["fp_proxy"]["undo"]
    return [w["device"], w["seq"], w["bundle"], w["decisions"], [undo[i] for i in lab.intents], w["digest"]]
# %% cause
SUSPECT_BUNDLE = Counter(t[2][:8] for t in TRACE if t[0] == SUSPECT_DEVICE).most_common(1)[0][0]
chain = lab.audit_chain(SUSPECT_DEVICE)
install = [r for r in chain.records if r["kind"] == "install" and r["data"]["bundle"].startswith(SUSPECT_BUNDLE)][-1]
d = install["data"]
CAUSE = f"bundle {d['bundle'][:16]} ({d['name']} {d['version']}, installed by {d['by']}) makes {SUSPECT_DEVICE} over-predict {SUSPECT_INTENT}"
