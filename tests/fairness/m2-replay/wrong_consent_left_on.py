# Forgets step (c): replay-capture stays granted after the capture.
# base: ok_namespace_param
# %% capture
lab.revoke_consent(DEVICE, "replay-capture")
try:
    lab.capture(DEVICE, 10)
    refused = None
except CommandRefused as e:
    refused = str(e)
lab.grant_consent(DEVICE, "replay-capture")
capture_id = lab.capture(DEVICE, 300)
