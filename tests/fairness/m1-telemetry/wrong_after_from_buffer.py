# "The next 8 windows" taken from the buffer of windows already received, with dev-2's left
# out: none of them arrived after the revocation, and dev-2's silence is never observed.
# base: ok_loops
# %% trail
revocation = lab.revoke_consent("dev-2", "telemetry")
after = [w for w in lab.windows() if w["device"] != "dev-2"][-8:]
chain = lab.audit_chain("dev-2")
trail = chain.consent_trail()
