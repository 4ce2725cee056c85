# Builds the fix from the baseline model (it has fewer false positives, so why not?) with the
# adapter: signed, verified, healthy - but not the story's fix of the candidate.
# base: ok_paths
# %% bundle
adapter_path = WORK / "adapter.json"
adapter_path.write_bytes(adapter.make(lab.intents, {DEFECT: -3.0}))
FIXED = bundle.build(MODELS["baseline"], WORK / "intents-fixed-1.1.0.lbundle", name="intents-fixed",
                     version="1.1.0", adapter=adapter_path, compute={"health_decisions": 50})
bundle.sign(FIXED, KEY)
fixed = bundle.verify(FIXED, keys.trusted(HOME))
