# Routes every decision (max share 1.0) instead of at most half: the route test's hidden part checks
# the declared share, and the bundle on the devices declares it too.
# base: ok_loops

# %% route
ROUTING = {"margin_threshold": 0.3, "timeout_ms": 200, "max_share": 1.0}
