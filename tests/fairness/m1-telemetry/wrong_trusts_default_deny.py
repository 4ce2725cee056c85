# Exercise 1 without revoking: "consent starts denied", so it only listens. In a lab where
# someone left telemetry granted, windows arrive (the grader starts the namespace untidy, as
# the exercise says it may be).
# base: ok_loops
# %% quiet
quiet = list(lab.telemetry(timeout=1.5))
