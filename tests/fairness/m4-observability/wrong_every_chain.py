# Looks for the install in every device's audit chain "to be sure": over the one-chain budget.
# base: ok_tuple_unpack
# %% cause
SUSPECT_BUNDLE = Counter(t[2] for t in TRACE if t[0] == SUSPECT_DEVICE).most_common(1)[0][0]
chains = {d: lab.audit_chain(d) for d in lab.devices}
chain = chains[SUSPECT_DEVICE]
install = [r for r in chain.records if r["kind"] == "install" and r["data"]["bundle"].startswith(SUSPECT_BUNDLE)][-1]
d = install["data"]
CAUSE = f"{SUSPECT_DEVICE} over-predicts {SUSPECT_INTENT} since {d['by']} installed {d['bundle'][:12]}"
