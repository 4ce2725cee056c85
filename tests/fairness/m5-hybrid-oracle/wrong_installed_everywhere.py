# Installs the retrained bundle on every device at once instead of one canary: the canary test's
# hidden part and the oracle check's canary item (installs in the audit chains).
# base: ok_loops

# %% canary
bundle.sign(RETRAINED, KEY)
retrained = bundle.read(RETRAINED)
for dev in lab.devices:
    lab.install(dev, RETRAINED)
verdict = lab.wait_health(CANARY, retrained.digest)
