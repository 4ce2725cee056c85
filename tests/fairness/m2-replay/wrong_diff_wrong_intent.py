# Diffs for the intent the panel showed most of ("weather") instead of the scenario's defect
# intent: the counts are real but of the wrong false positives.
# base: ok_namespace_param
# %% diff
d = replay.diff(REPLAY, MODELS["candidate"], MODELS["baseline"], defect_intent="weather")
FALSE_POSITIVES, BASELINE_FALSE_POSITIVES = d["a"]["defect_false_positives"], d["b"]["defect_false_positives"]
