# Keeps the newest entry per (device, seq) while collecting, then TRACE in arrival order.
# %% compact
def compact(w):
    return list((w["device"], w["seq"], w["bundle"][:8], w["decisions"],
                 [w["fp_proxy"]["undo"].get(i, 0) for i in lab.intents], w["digest"]))
# %% trace
entries = {}
for w in lab.telemetry(timeout=3):
    entries[(w["device"], w["seq"])] = compact(w)
    if all(len([k for k in entries if k[0] == d]) >= MIN_WINDOWS for d in lab.devices):
        break
TRACE = list(entries.values())
# %% localize
undos, decided = defaultdict(Counter), Counter()
for device, seq, b8, n, undo, digest in TRACE:
    decided[device] += n
    undos[device].update(dict(zip(lab.intents, undo)))
rates = {d: {i: undos[d][i] / decided[d] if decided[d] else 0.0 for i in lab.intents} for d in decided}
candidates = [(rates[d][i] - max(rates[o][i] for o in rates if o != d), d, i)
              for d in rates for i in lab.intents if i != DEFECT]
_, SUSPECT_DEVICE, SUSPECT_INTENT = sorted(candidates)[-1]
# %% cause
SUSPECT_BUNDLE = Counter(t[2] for t in TRACE if t[0] == SUSPECT_DEVICE).most_common(1)[0][0]
chain = lab.audit_chain(SUSPECT_DEVICE)
installs = [r for r in chain.records if r["kind"] == "install" and r["data"]["bundle"].startswith(SUSPECT_BUNDLE)]
install = installs[-1]
CAUSE = (f"On {SUSPECT_DEVICE} the {SUSPECT_INTENT} undo rate jumped after {install['data']['by']} installed "
         f"version {install['data']['version']}, digest {install['data']['bundle'][:8]}")
# %% fix
lab.rollback(SUSPECT_DEVICE, reason=CAUSE)
deadline = time.monotonic() + 5
while lab.states[SUSPECT_DEVICE]["bundle"].startswith(SUSPECT_BUNDLE):
    assert time.monotonic() < deadline, "the rollback did not take"
    time.sleep(0.05)
