# The diagnosis names the device, the intent and the version, but not the bundle digest.
# base: ok_tuple_unpack
# %% cause
SUSPECT_BUNDLE = Counter(t[2] for t in TRACE if t[0] == SUSPECT_DEVICE).most_common(1)[0][0]
chain = lab.audit_chain(SUSPECT_DEVICE)
install = [r for r in chain.records if r["kind"] == "install" and r["data"]["bundle"].startswith(SUSPECT_BUNDLE)][-1]
d = install["data"]
CAUSE = f"{SUSPECT_DEVICE} over-predicts {SUSPECT_INTENT} since {d['by']} installed {d['name']} {d['version']}"
