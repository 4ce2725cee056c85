# Builds the trace entry by unpacking, localizes with plain dicts, a cause sentence in another order.
# %% compact
def compact(w):
    undo = w["fp_proxy"]["undo"]
    return [w["device"], w["seq"], w["bundle"][:8], w["decisions"], [undo[i] for i in lab.intents], w["digest"]]
# %% trace
TRACE = []
per = Counter()
for w in lab.telemetry(timeout=3):
    TRACE.append(compact(w))
    per[w["device"]] += 1
    if all(per[d] >= MIN_WINDOWS for d in lab.devices):
        break
# %% localize
decided, undos = {}, {}
for dev, seq, b8, n, undo, dg in TRACE:
    decided[dev] = decided.get(dev, 0) + n
    u = undos.setdefault(dev, [0] * len(lab.intents))
    for k, x in enumerate(undo):
        u[k] += x
rates = {d: {i: undos[d][k] / decided[d] for k, i in enumerate(lab.intents)} for d in decided}
best = None
for d in rates:
    for i in lab.intents:
        if i == DEFECT:
            continue
        ex = rates[d][i] - max(rates[o][i] for o in rates if o != d)
        if best is None or ex > best[0]:
            best = (ex, d, i)
_, SUSPECT_DEVICE, SUSPECT_INTENT = best
# %% cause
SUSPECT_BUNDLE = Counter(t[2] for t in TRACE if t[0] == SUSPECT_DEVICE).most_common(1)[0][0]
chain = lab.audit_chain(SUSPECT_DEVICE)
install = None
for r in chain.records:
    if r["kind"] == "install" and r["data"]["bundle"].startswith(SUSPECT_BUNDLE):
        install = r
d = install["data"]
CAUSE = f"bundle {d['bundle'][:16]} ({d['name']} {d['version']}, installed by {d['by']}) makes {SUSPECT_DEVICE} over-predict {SUSPECT_INTENT}"
# %% fix
lab.rollback(SUSPECT_DEVICE, reason=CAUSE)
deadline = time.monotonic() + 5
while time.monotonic() < deadline and lab.states[SUSPECT_DEVICE]["bundle"].startswith(SUSPECT_BUNDLE):
    time.sleep(0.1)
