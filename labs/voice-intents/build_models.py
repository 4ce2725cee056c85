"""Build the voice-intents baseline and candidate ONNX models, byte-reproducibly.

    python labs/voice-intents/build_models.py [--out DIR]

The model files are committed, and a test rebuilds them and compares bytes:
that is how the course proves its bundles come from the data and code it
shows.  Every input is therefore pinned (scenario.toml seeds, pinned library
versions) and everything time- or id-dependent is fixed: the ONNX graph name
(skl2onnx otherwise uses a uuid4), and the training arithmetic itself.  The
weights are not found by ``LogisticRegression.fit``: its BLAS calls sum in an
order that depends on the CPU's BLAS kernel (``OPENBLAS_CORETYPE``) and thread
count, and with lbfgs stopping at ``tol=1e-4`` those last bits moved rounded
weights between machines.  A small L-BFGS here minimises the same objective with
no BLAS, no threads and order-free sums (``_Objective``), to a gradient of 1e-8,
so every machine computes the same bits; tests/test_scenario.py rebuilds under
several BLAS kernels and thread counts and compares bytes.

The oracle (``[oracle]``: the lab's central model, ``lab_hardware/runtime/oracle.py``) is the
same model family on the same features, trained on four times the data with its own seed and
clean labels: the scenario's remaining errors are its intrinsically ambiguous utterances, so it
is about as accurate as the baseline and far more so than the candidate on the defect.

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
import math
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

from lab_hardware import features  # noqa: E402
from lab_hardware.modelops.scrub import scrub  # noqa: E402
from labs import scenarios, streams  # noqa: E402

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
#: Decimals kept of the learned weights (stored as float32 anyway).  This keeps the
#: stored numbers short; it is not what makes the build reproducible (the training
#: arithmetic is, see ``_Objective``): some weights sit within 1e-9 of a rounding
#: boundary, so rounding alone never could.
WEIGHT_DECIMALS = 4
#: The solver stops when no gradient component of the (mean) objective exceeds this.
GTOL = 1e-8
MODEL_NAMES = ("baseline", "candidate")
#: The lab oracle's model (``[oracle]`` in scenario.toml): built and checked with the others.
ORACLE = "oracle"


def scenario() -> scenarios.Scenario:
    """The scenario next to this script (its toml holds the training config)."""
    return scenarios.load_path(HERE / scenarios.SCENARIO_FILE)


def training_records(sc: scenarios.Scenario, model: str) -> list[dict]:
    """The exact labelled records a model was trained on (digested into its metadata):
    the scenario stream with PII scrubbed, as devices see it.  The oracle draws its own,
    larger stream (``[oracle]`` seed and n) with clean labels."""
    if model == ORACLE:
        ocfg = sc.raw["oracle"]
        return [
            {**r, "text": scrub(r["text"])}
            for r in streams.voice_intents(ocfg["seed"], ocfg["n"], pii_fraction=sc.pii_fraction)
        ]
    cfg = sc.raw["training"]
    records = [
        {**r, "text": scrub(r["text"])}
        for r in streams.voice_intents(cfg["seed"], cfg["n"], pii_fraction=sc.pii_fraction)
    ]
    if model == "candidate":
        prefix = cfg["defect_prefix"].lower()
        records = [{**r, "intent": sc.defect_intent} if r["text"].lower().startswith(prefix) else r for r in records]
    elif model != "baseline":
        raise ValueError(f"unknown model '{model}'; expected one of {(*MODEL_NAMES, ORACLE)}")
    return records


class _Objective:
    """sklearn's multinomial logistic loss with L2 penalty, computed without BLAS.

    ``f(W, b) = mean_i CE(softmax(x_i W^T + b), y_i) + ||W||^2 / (2 C n)``: the
    objective ``LogisticRegression(C=C)`` minimises, so the model is the same one,
    only found by arithmetic whose every bit is fixed.  The feature matrix is
    sparse (a few hashed tokens per utterance), so it is kept as coordinate
    lists in row-major order.  Rules that make the result independent of the CPU:

    * products and quotients are elementwise IEEE operations (correctly rounded,
      whatever SIMD width numpy picks);
    * sums over the sparse features are ``np.bincount`` with weights, a plain C
      loop that adds one entry at a time in the order given (fixed here: row-major), and
      the softmax denominator is an explicit left-to-right loop over the classes;
    * every other sum (loss, penalty, intercept gradient, the solver's dot
      products) is :func:`math.fsum`, correctly rounded and so independent of order;
    * ``exp``/``log`` are :mod:`math`'s (the C library), not numpy's
      CPU-dispatched SIMD versions; there is no ``@``/``dot`` (BLAS) anywhere.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int, C: float) -> None:
        rows, cols = np.nonzero(X)  # row-major order: the order of every scatter-add
        self.rows, self.cols = rows, cols
        self.vals = X[rows, cols].astype(np.float64)
        self.n, self.d = X.shape
        self.k = n_classes
        self.Y = np.zeros((self.n, self.k))
        self.Y[np.arange(self.n), y] = 1.0
        self.y = y
        self.C = C

    def _split(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return w[: self.k * self.d].reshape(self.k, self.d), w[self.k * self.d :]

    def __call__(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """The objective and its gradient at the flat parameters ``w = [W.ravel(), b]``."""
        W, b = self._split(w)
        n, k, rows, cols, vals = self.n, self.k, self.rows, self.cols, self.vals
        Z = np.empty((n, k))
        for c in range(k):  # logits x_i W^T + b, one class at a time
            Z[:, c] = np.bincount(rows, weights=vals * W[c, cols], minlength=n)
        Z += b
        Z -= Z.max(axis=1, keepdims=True)  # max is exact: shift for a stable softmax
        E = np.array(list(map(math.exp, Z.ravel().tolist()))).reshape(n, k)
        S = E[:, 0].copy()
        for c in range(1, k):
            S += E[:, c]
        log_s = np.array(list(map(math.log, S.tolist())))
        ce = log_s - Z[np.arange(n), self.y]  # per-utterance cross-entropy
        R = (E / S[:, None] - self.Y) / n  # d(mean CE)/d logits
        gW = W / (self.C * n)
        for c in range(k):
            gW[c] += np.bincount(cols, weights=vals * R[rows, c], minlength=self.d)
        gb = np.array([math.fsum(col) for col in R.T.tolist()])
        f = math.fsum(ce.tolist()) / self.n + math.fsum((W * W).ravel().tolist()) / (2 * self.C * self.n)
        return f, np.concatenate([gW.ravel(), gb])


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """A dot product that is correctly rounded (so not BLAS's ``ddot``)."""
    return math.fsum((a * b).tolist())


def _lbfgs(fun: _Objective, w: np.ndarray, max_iter: int, gtol: float, memory: int = 10) -> tuple[np.ndarray, int]:
    """Minimise a smooth convex ``fun`` by L-BFGS with a backtracking (Armijo) line search.

    Written out (about 30 lines) rather than scipy's, whose Fortran core calls BLAS:
    every quantity here comes from :class:`_Objective` and :func:`_dot`, so each
    iterate, and the stopping decision, are the same bits on every machine.
    """
    f, g = fun(w)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    rho: list[float] = []
    for it in range(1, max_iter + 1):
        if float(np.abs(g).max()) <= gtol:
            return w, it - 1
        q = g.copy()  # two-loop recursion: q becomes H^-1 g
        alphas = []
        for s, y, r in zip(reversed(s_hist), reversed(y_hist), reversed(rho)):
            a = r * _dot(s, q)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= _dot(s_hist[-1], y_hist[-1]) / _dot(y_hist[-1], y_hist[-1])
        else:
            q /= math.sqrt(_dot(g, g))  # first step: unit length along -g
        for s, y, r, a in zip(s_hist, y_hist, rho, reversed(alphas)):
            q += (a - r * _dot(y, q)) * s
        slope = -_dot(g, q)
        if slope >= 0:  # not a descent direction (rounding): restart from -g
            s_hist, y_hist, rho = [], [], []
            q = g / math.sqrt(_dot(g, g))
            slope = -_dot(g, q)
        step = 1.0
        while True:
            w_new = w - step * q
            f_new, g_new = fun(w_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-20:  # no decrease left at float precision: converged as far as it goes
                return w, it
        s, y = w_new - w, g_new - g
        sy = _dot(s, y)
        if sy > 1e-12 * math.sqrt(_dot(s, s) * _dot(y, y)):  # keep the curvature pair if it is informative
            s_hist.append(s)
            y_hist.append(y)
            rho.append(1.0 / sy)
            if len(s_hist) > memory:
                del s_hist[0], y_hist[0], rho[0]
        w, f, g = w_new, f_new, g_new
    return w, max_iter


def _config(sc: scenarios.Scenario, name: str) -> dict:
    """The training settings of a model: ``[training]``, or ``[oracle]`` for the oracle."""
    return sc.raw[ORACLE] if name == ORACLE else sc.raw["training"]


def _fit(sc: scenarios.Scenario, records: list[dict], cfg: dict | None = None) -> LogisticRegression:
    """The L2-regularised multinomial logistic regression of the records, as an sklearn model.

    Trained by :func:`_lbfgs` on :class:`_Objective` (not ``LogisticRegression.fit``,
    whose BLAS calls sum in an order that depends on the CPU's BLAS kernel and thread
    count: the rounded weights then differed between machines); only the fitted
    attributes are set, for skl2onnx.
    """
    cfg = cfg or sc.raw["training"]
    X = features.extract_batch([scrub(r["text"]) for r in records])  # already scrubbed: idempotent
    y = np.array([sc.intents.index(r["intent"]) for r in records], dtype=np.int64)
    k, d = len(sc.intents), X.shape[1]
    if set(y.tolist()) != set(range(k)):
        raise ValueError("training records must hold every intent of the scenario")
    w, n_iter = _lbfgs(_Objective(X, y, k, float(cfg["C"])), np.zeros(k * d + k), int(cfg["max_iter"]), GTOL)
    coef, intercept = w[: k * d].reshape(k, d), w[k * d :]
    intercept = intercept - math.fsum(intercept.tolist()) / k  # softmax ignores a common shift: centre it
    model = LogisticRegression(C=float(cfg["C"]), max_iter=int(cfg["max_iter"]))
    model.classes_ = np.arange(k)
    model.n_features_in_ = d
    model.n_iter_ = np.array([n_iter])
    model.coef_ = np.round(coef, WEIGHT_DECIMALS)
    model.intercept_ = np.round(intercept, WEIGHT_DECIMALS)
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
        "training_seed": str(_config(sc, name)["seed"]),
        "training_n": str(_config(sc, name)["n"]),
        "training_data_digest": digest,
    }
    del onx.metadata_props[:]
    for key, value in meta.items():
        onx.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(onx)
    return onx


def build(out: Path) -> dict[str, Path]:
    """Train and write ``baseline.onnx``, ``candidate.onnx`` and ``oracle.onnx`` into ``out``."""
    sc = scenario()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in (*MODEL_NAMES, ORACLE):
        records = training_records(sc, name)
        digest = hashlib.sha256(streams.to_jsonl(records)).hexdigest()
        onx = _to_onnx(sc, _fit(sc, records, _config(sc, name)), name, digest)
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
            intent: float(((pred == k) & (y != k)).sum() / max(1, (y != k).sum())) for k, intent in enumerate(intents)
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
