"""Inference with onnxruntime under deterministic session options.

Devices, the replay sandbox and benchmarks all build sessions here, so the
same bundle gives the same bytes everywhere: one intra-op and one inter-op
thread (no reduction-order differences), sequential execution, and basic graph
optimisations only (extended ones may fuse differently per CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lab_hardware import features


def session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    return so


class Model:
    """One loaded intent model: features in, labels and probabilities out."""

    def __init__(self, path: Path | str | bytes):
        src = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(src, sess_options=session_options(), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.intents: list[str] = json.loads(meta["intents"]) if "intents" in meta else []
        self.name = meta.get("name", "model")
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (features.DIM, None, "None"):
            raise ValueError(f"model input must be one [N, {features.DIM}] float tensor")
        self._input = inputs[0].name
        outs = [o.name for o in self.session.get_outputs()]
        self._outputs = [n for n in ("label", "probabilities") if n in outs] or outs[:2]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """labels (int64, N) and probabilities (float32, N x intents)."""
        labels, probs = self.session.run(self._outputs, {self._input: x})
        return np.asarray(labels, dtype=np.int64).reshape(-1), np.asarray(probs, dtype=np.float32)
