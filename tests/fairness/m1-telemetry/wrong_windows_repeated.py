# Stops as soon as the list holds 12 entries per device, counting every window it appended;
# it re-reads the buffer (buffered=True) on each pass, so the same windows are counted again.
# base: ok_loops
# %% windows
for device in lab.devices:
    lab.grant_consent(device, "telemetry")
windows = []
while not all(sum(w["device"] == d for w in windows) >= 12 for d in lab.devices):
    windows.extend(lab.telemetry(timeout=0.6, buffered=True, limit=6))
