"""Build the voice-intents baseline and candidate ONNX models, byte-reproducibly.

    python labs/voice-intents/build_models.py [--out DIR]

The model files are committed, and a test rebuilds them and compares bytes:
that is how the course proves its bundles come from the data and code it
shows.  Every input is therefore pinned (scenario.toml seeds, pinned library
versions) and everything time- or id-dependent is fixed: the ONNX graph name
(skl2onnx otherwise uses a uuid4), BLAS threads (reduction order), and the
learned weights are rounded so last-bit floating-point differences between
machines cannot change the serialized float32 values.

The candidate carries the scenario's *known defect*: its training data went
through a labelling bug that tagged every non-call utterance opening with
``[training] defect_prefix`` ("hey ") as ``call``.  The resulting model
over-predicts ``defect_intent`` on such utterances.  The bug lives in the data,
not in the model code, which is exactly what learners trace in module 4 (the
two models' ``training_data_digest`` differ).

Models are trained and evaluated on *scrubbed* text (``lab_hardware.modelops.scrub``),
exactly what devices decide on: a device scrubs PII before feature extraction,
so no model ever sees a name, e-mail address or phone number, and a replay
built from scrubbed captures reproduces the device's features bit for bit.
The training-data digest is therefore taken of the scrubbed records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script from anywhere: make the project importable
    sys.path.insert(0, str(HERE.parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from skl2onnx import convert_sklearn  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from lab_hardware import features  # noqa: E402
from lab_hardware.modelops.scrub import scrub  # noqa: E402
from labs import scenarios, streams  # noqa: E402

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
#: Decimals kept of the learned weights (stored as float32 anyway).
WEIGHT_DECIMALS = 4
MODEL_NAMES = ("baseline", "candidate")


def scenario() -> scenarios.Scenario:
    """The scenario next to this script (its toml holds the training config)."""
    return scenarios.load_path(HERE / scenarios.SCENARIO_FILE)


def training_records(sc: scenarios.Scenario, model: str) -> list[dict]:
    """The exact labelled records a model was trained on (digested into its metadata):
    the scenario stream with PII scrubbed, as devices see it."""
    cfg = sc.raw["training"]
    records = [{**r, "text": scrub(r["text"])}
               for r in streams.voice_intents(cfg["seed"], cfg["n"], pii_fraction=sc.pii_fraction)]
    if model == "candidate":
        prefix = cfg["defect_prefix"].lower()
        records = [
            {**r, "intent": sc.defect_intent} if r["text"].lower().startswith(prefix) else r
            for r in records
        ]
    elif model != "baseline":
        raise ValueError(f"unknown model '{model}'; expected one of {MODEL_NAMES}")
    return records


def _fit(sc: scenarios.Scenario, records: list[dict]) -> LogisticRegression:
    cfg = sc.raw["training"]
    X = features.extract_batch([scrub(r["text"]) for r in records])  # already scrubbed: idempotent
    y = np.array([sc.intents.index(r["intent"]) for r in records], dtype=np.int64)
    model = LogisticRegression(C=float(cfg["C"]), solver="lbfgs", max_iter=cfg["max_iter"], random_state=0)
    with threadpool_limits(limits=1):
        model.fit(X, y)
    model.coef_ = np.round(model.coef_, WEIGHT_DECIMALS)
    model.intercept_ = np.round(model.intercept_, WEIGHT_DECIMALS)
    return model


def _to_onnx(sc: scenarios.Scenario, model: LogisticRegression, name: str, digest: str) -> onnx.ModelProto:
    onx = convert_sklearn(
        model,
        name=f"livelab_{sc.name.replace('-', '_')}_{name}",
        initial_types=[("features", FloatTensorType([None, features.DIM]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx lists the default domain twice; keep one entry per domain so
    # stricter loaders accept the file (order kept: it is part of the bytes).
    seen: dict[str, int] = {}
    for op in onx.opset_import:
        seen.setdefault(op.domain, op.version)
    del onx.opset_import[:]
    for domain, version in seen.items():
        onx.opset_import.add(domain=domain, version=version)
    onx.producer_name = "livelab"
    onx.doc_string = (
        f"{sc.name} {name} intent classifier: input 'features' = "
        f"{features.SCHEMA} vectors [N, {features.DIM}]; outputs 'label' (int64 index "
        f"into the 'intents' metadata) and 'probabilities' [N, {len(sc.intents)}]."
    )
    meta = {
        "name": name,
        "scenario": sc.name,
        "intents": json.dumps(list(sc.intents), separators=(",", ":")),
        "features_schema": features.SCHEMA,
        "features_dim": str(features.DIM),
        "training_seed": str(sc.raw["training"]["seed"]),
        "training_n": str(sc.raw["training"]["n"]),
        "training_data_digest": digest,
    }
    del onx.metadata_props[:]
    for key, value in meta.items():
        onx.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(onx)
    return onx


def build(out: Path) -> dict[str, Path]:
    """Train and write ``baseline.onnx`` and ``candidate.onnx`` into ``out``."""
    sc = scenario()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in MODEL_NAMES:
        records = training_records(sc, name)
        digest = hashlib.sha256(streams.to_jsonl(records)).hexdigest()
        onx = _to_onnx(sc, _fit(sc, records), name, digest)
        path = out / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString(deterministic=True))
        paths[name] = path
    return paths


def evaluate(paths: dict[str, Path], records: list[dict], intents: tuple[str, ...]) -> dict[str, dict]:
    """Accuracy and per-intent false-positive rates of each model, via onnxruntime.

    The false-positive rate of intent k is the share of utterances that are
    not k but were predicted as k: the signal the course's telemetry shows.
    Utterances are scrubbed first, as on a device.
    """
    import onnxruntime as ort

    X = features.extract_batch([scrub(r["text"]) for r in records])
    y = np.array([intents.index(r["intent"]) for r in records])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    results: dict[str, dict] = {}
    for name, path in paths.items():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        pred = sess.run(["label"], {"features": X})[0]
        fp = {
            intent: float(((pred == k) & (y != k)).sum() / max(1, (y != k).sum()))
            for k, intent in enumerate(intents)
        }
        results[name] = {"accuracy": float((pred == y).mean()), "fp_rate": fp}
    return results


def _table(results: dict[str, dict], intents: tuple[str, ...], n: int) -> str:
    head = f"{'model':<10} {'accuracy':>8}  " + " ".join(f"{'FP ' + i:>11}" for i in intents)
    lines = [f"held-out: first {n} utterances of the scenario stream", head]
    for name, r in results.items():
        cells = " ".join(f"{r['fp_rate'][i]:>11.2%}" for i in intents)
        lines.append(f"{name:<10} {r['accuracy']:>8.2%}  {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build, then print held-out metrics so a rebuild shows its effect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "models", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = build(args.out)
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{name:<10} {path}  {path.stat().st_size} bytes  sha256 {digest}")
    sc = scenario()
    n = sc.raw["training"]["eval_n"]
    print(_table(evaluate(paths, sc.stream(n), sc.intents), sc.intents, n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
