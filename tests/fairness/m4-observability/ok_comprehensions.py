# Comprehensions throughout; the excess against the fleet computed as a dict of pairs.
# %% compact
def compact(w):
    return [w["device"], w["seq"], w["bundle"][0:8], w["decisions"],
            list(map(lambda i: w["fp_proxy"]["undo"][i], lab.intents)), w["digest"]]
# %% trace
TRACE = []
for w in lab.telemetry(timeout=3):
    TRACE.append(compact(w))
    if min(sum(1 for t in TRACE if t[0] == d) for d in lab.devices) >= MIN_WINDOWS:
        break
# %% localize
devices = sorted({t[0] for t in TRACE})
rates = {d: {i: sum(t[4][k] for t in TRACE if t[0] == d) / sum(t[3] for t in TRACE if t[0] == d)
             for k, i in enumerate(lab.intents)} for d in devices}
excess = {(d, i): rates[d][i] - max(rates[o][i] for o in devices if o != d)
          for d in devices for i in lab.intents if i != DEFECT}
SUSPECT_DEVICE, SUSPECT_INTENT = max(excess, key=excess.get)
# %% cause
SUSPECT_BUNDLE = Counter([t[2] for t in TRACE if t[0] == SUSPECT_DEVICE]).most_common()[0][0]
chain = lab.audit_chain(SUSPECT_DEVICE)
install = [r for r in chain.records if r["kind"] == "install" and r["data"]["bundle"][:8] == SUSPECT_BUNDLE][-1]
CAUSE = "{dev}: {intent} regression caused by bundle {b} version {v} installed by {by}".format(
    dev=SUSPECT_DEVICE, intent=SUSPECT_INTENT, b=install["data"]["bundle"][:12], v=install["data"]["version"],
    by=install["data"]["by"])
# %% fix
lab.rollback(SUSPECT_DEVICE, reason=CAUSE)
for _ in range(100):
    if not lab.states[SUSPECT_DEVICE]["bundle"].startswith(SUSPECT_BUNDLE):
        break
    time.sleep(0.05)
