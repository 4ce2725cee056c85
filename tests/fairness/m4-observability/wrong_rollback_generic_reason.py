# Rolls back with a generic reason: the cause stays in the notebook, not in the device's chain.
# base: ok_tuple_unpack
# %% fix
lab.rollback(SUSPECT_DEVICE, reason="regression")
deadline = time.monotonic() + 5
while time.monotonic() < deadline and lab.states[SUSPECT_DEVICE]["bundle"].startswith(SUSPECT_BUNDLE):
    time.sleep(0.1)
