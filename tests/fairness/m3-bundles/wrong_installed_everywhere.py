# Installs the fix on every device after the shadow looked good: no canary.
# base: ok_paths
# %% install
for d in lab.devices:
    lab.install(d, FIXED)
verdict = health_verdict(CANARY, fixed.digest)
