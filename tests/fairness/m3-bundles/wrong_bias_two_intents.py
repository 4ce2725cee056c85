# Lowers the defect intent and, "to be safe", a second intent as well.
# base: ok_paths
# %% bundle
adapter_path = WORK / "adapter.json"
other = next(i for i in lab.intents if i != DEFECT)
adapter_path.write_bytes(adapter.make(lab.intents, {DEFECT: -3.0, other: -0.5}))
FIXED = WORK / "intents-fixed-1.1.0.lbundle"
bundle.build(MODELS["candidate"], FIXED, name="intents-fixed", version="1.1.0", adapter=adapter_path,
             compute={"health_decisions": 50})
bundle.sign(FIXED, KEY)
fixed = bundle.verify(FIXED, keys.trusted(HOME))
