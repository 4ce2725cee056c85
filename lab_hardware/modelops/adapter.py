"""The optional adapter in a bundle: a per-intent logit bias on top of the model.

An adapter lets a team fix a model's calibration (the candidate's false
positives on "call", say) without retraining: ``p' = p * exp(bias)``,
renormalised.  It is data, not code, so a device can apply a signed adapter
without running anything new, and it is small (:data:`ADAPTER_BUDGET`) so it
fits a constrained link.

The arithmetic is float32 and elementwise only (multiplications, column
additions, one division): each step is correctly rounded IEEE arithmetic, so
the same probabilities give the same bytes on every CPU, with no threads and
no vectorised transcendental functions on the hot path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

SCHEMA = "livelab.adapter/v1"
#: Largest adapter.json a bundle may carry, in bytes.
ADAPTER_BUDGET = 1_000_000
#: Largest |bias| accepted: exp(+-50) keeps every product finite in float32.
BIAS_LIMIT = 50.0

_KEYS = ("schema", "intents", "logit_bias")


class AdapterError(ValueError):
    """An adapter that does not validate (one-line message)."""


@dataclass(frozen=True)
class Adapter:
    intents: tuple[str, ...]
    logit_bias: dict[str, float]
    #: exp(bias - max bias) per intent, float32, so the largest weight is exactly 1.
    weights: np.ndarray = field(repr=False, compare=False)

    @property
    def neutral(self) -> bool:
        """All biases zero: :meth:`apply` returns the probabilities unchanged."""
        return bool(np.all(self.weights == np.float32(1.0)))

    def apply(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """labels (int64 [N]) and reweighted probabilities (float32 [N, K]).

        A neutral adapter is the identity bit for bit, so adding an empty
        adapter never changes a decision.  Rows whose reweighted mass
        underflows to zero keep their original probabilities.
        """
        p = np.asarray(probs, dtype=np.float32)
        k = len(self.intents)
        if p.ndim != 2 or p.shape[1] != k:
            raise AdapterError(f"adapter expects probabilities of shape (N, {k}), got {tuple(p.shape)}")
        if self.neutral:
            out = p.copy()
        else:
            q = p * self.weights  # broadcast over rows; exact IEEE float32 products
            total = q[:, 0].copy()
            for j in range(1, k):  # fixed left-to-right order: no reduction-order differences
                total += q[:, j]
            ok = total > 0
            out = p.copy()
            out[ok] = q[ok] / total[ok, None]
        labels = np.argmax(out, axis=1).astype(np.int64) if len(out) else np.zeros(0, dtype=np.int64)
        return labels, out


def _reject_constant(name: str):
    raise AdapterError(f"adapter.json: {name} is not a finite number")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise AdapterError(f"adapter.json: duplicate key {k!r}")
        out[k] = v
    return out


def load(data: bytes, intents: list[str]) -> Adapter:
    """Validate ``adapter.json`` bytes against the model's intents (strict)."""
    if not isinstance(data, (bytes, bytearray)):
        raise AdapterError("adapter.json must be given as bytes")
    if len(data) > ADAPTER_BUDGET:
        raise AdapterError(f"adapter.json is {len(data):,} bytes, over the {ADAPTER_BUDGET:,}-byte budget")
    try:
        obj = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AdapterError(f"adapter.json is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise AdapterError("adapter.json must be a JSON object")
    unknown = sorted(set(obj) - set(_KEYS))
    if unknown:
        raise AdapterError(f"adapter.json: unknown key {unknown[0]!r}")
    for key in _KEYS:
        if key not in obj:
            raise AdapterError(f"adapter.json: missing key {key!r}")
    if obj["schema"] != SCHEMA:
        raise AdapterError(f"adapter.json: schema must be {SCHEMA!r}, not {obj['schema']!r}")
    got = obj["intents"]
    if not isinstance(got, list) or not all(isinstance(i, str) for i in got):
        raise AdapterError("adapter.json: intents must be a list of strings")
    if not got:
        raise AdapterError("adapter.json: intents must not be empty")
    if got != list(intents):
        raise AdapterError(f"adapter.json: intents ({', '.join(got)}) do not match the model's ({', '.join(intents)})")
    bias = obj["logit_bias"]
    if not isinstance(bias, dict):
        raise AdapterError("adapter.json: logit_bias must be an object of intent -> number")
    clean: dict[str, float] = {}
    for intent, value in bias.items():
        if intent not in got:
            raise AdapterError(f"adapter.json: logit_bias has unknown intent {intent!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AdapterError(f"adapter.json: logit_bias {intent!r} must be a number")
        value = float(value)
        if not math.isfinite(value) or abs(value) > BIAS_LIMIT:
            raise AdapterError(f"adapter.json: logit_bias {intent!r} must be finite and within +-{BIAS_LIMIT:g}")
        clean[intent] = value
    b = [clean.get(i, 0.0) for i in got]
    top = max(b) if b else 0.0
    # exp runs once here (float64, then rounded to float32), never on the hot path.
    weights = np.array([math.exp(v - top) for v in b], dtype=np.float32)
    return Adapter(intents=tuple(got), logit_bias=clean, weights=weights)


def make(intents: list[str], logit_bias: dict[str, float]) -> bytes:
    """Canonical ``adapter.json`` bytes for authors (validated before returning)."""
    obj = {
        "schema": SCHEMA,
        "intents": list(intents),
        "logit_bias": {
            k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in logit_bias.items()
        },
    }
    try:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"adapter.json: cannot encode ({exc})") from None
    load(data, list(intents))
    return data
