"""Aggregation windows: what telemetry is.

A window holds counts and histograms computed on the device over a span of
time; nothing in it identifies an utterance.  It carries per-intent decision
counts, a confidence histogram per intent, false-positive proxies (user undos
right after a decision, and low-margin decisions) and the folded signal digest
of every decision in it, so a decision can later be tied to a capture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import digest as _digest
from .topics import SCHEMA_TELEMETRY

#: Confidence histogram bins: [0, 0.1), ..., [0.9, 1.0].
BINS = 10
#: Top-1 minus top-2 probability below which a decision counts as low-margin.
LOW_MARGIN = 0.2
#: Fields a telemetry window may contain; anything else is a privacy bug.
ALLOWED_FIELDS = frozenset({
    "schema", "namespace", "device", "seq", "model", "bundle", "start", "end", "decisions",
    "first_decision", "last_decision", "counts", "confidence", "fp_proxy", "latency_ms",
    "digest", "profile", "sent", "noise",
})


class Window:
    """Accumulates decisions until the device closes it."""

    def __init__(self, intents: list[str], start: float):
        self.intents = list(intents)
        self.start = start
        k = len(self.intents)
        self.counts = np.zeros(k, dtype=np.int64)
        self.hist = np.zeros((k, BINS), dtype=np.int64)
        self.undo = np.zeros(k, dtype=np.int64)
        self.low_margin = np.zeros(k, dtype=np.int64)
        self.latencies: list[float] = []
        self.first: int | None = None
        self.last: int | None = None
        self.digest = ""

    def __len__(self) -> int:
        return int(self.counts.sum())

    def add(self, labels: np.ndarray, probs: np.ndarray, undone: np.ndarray,
            digests: list[str], first_seq: int, latency_ms: float) -> None:
        """Add a batch of decisions (vectorised: one batch may be hundreds)."""
        n = len(labels)
        if n == 0:
            return
        k = len(self.intents)
        np.add.at(self.counts, labels, 1)
        conf = probs[np.arange(n), labels]
        bins = np.minimum((conf * BINS).astype(np.int64), BINS - 1)
        np.add.at(self.hist, (labels, bins), 1)
        np.add.at(self.undo, labels[undone], 1)
        if probs.shape[1] > 1:
            top2 = np.partition(probs, k - 2, axis=1)[:, k - 2]
            np.add.at(self.low_margin, labels[(conf - top2) < LOW_MARGIN], 1)
        self.latencies.extend([latency_ms] * n)
        if self.first is None:
            self.first = first_seq
        self.last = first_seq + n - 1
        for d in digests:
            self.digest = _digest.fold(self.digest, d)

    def close(self, *, end: float, namespace: str, device: str, seq: int, model: str,
              bundle: str, profile: str) -> dict[str, Any]:
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        names = self.intents
        payload = {
            "schema": SCHEMA_TELEMETRY,
            "namespace": namespace,
            "device": device,
            "seq": seq,
            "model": model,
            "bundle": bundle,
            "profile": profile,
            "start": round(self.start, 6),
            "end": round(end, 6),
            "decisions": len(self),
            "first_decision": self.first,
            "last_decision": self.last,
            "counts": {n: int(c) for n, c in zip(names, self.counts)},
            "confidence": {n: [int(x) for x in row] for n, row in zip(names, self.hist)},
            "fp_proxy": {
                "undo": {n: int(c) for n, c in zip(names, self.undo)},
                "low_margin": {n: int(c) for n, c in zip(names, self.low_margin)},
            },
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 4),
                "p99": round(float(np.percentile(lat, 99)), 4),
                "max": round(float(lat.max()), 4),
            },
            "digest": self.digest,
        }
        assert set(payload) <= ALLOWED_FIELDS
        return payload
