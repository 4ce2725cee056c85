# "Start from deny" taken to mean consent is denied already: no revocation first. Someone left
# replay-capture granted, so the 10-decision capture is not refused.
# base: ok_namespace_param
# %% capture
refused = None
try:
    lab.capture(DEVICE, 10)
except CommandRefused as e:
    refused = str(e)
lab.grant_consent(DEVICE, "replay-capture")
capture_id = lab.capture(DEVICE, 300)
lab.revoke_consent(DEVICE, "replay-capture")
