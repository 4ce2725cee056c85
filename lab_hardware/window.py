"""Aggregation windows: what telemetry is.

A window holds counts and histograms computed on the device over a span of
time; nothing in it identifies an utterance.  It carries per-intent decision
counts, a confidence histogram per intent, false-positive proxies (user undos
right after a decision, and low-margin decisions) and the folded signal digest
of every decision in it, so a decision can later be tied to a capture.

Windows sit on the device's hot path (thousands per second in the throughput
benchmark).  Decisions arrive as :class:`Decisions` — a batch already reduced
to plain Python lists by one numpy pass — and a window takes any slice of a
batch, so inference runs in large batches while windows stay small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lab_hardware import digest as _digest
from lab_hardware.topics import SCHEMA_TELEMETRY

#: Confidence histogram bins: [0, 0.1), ..., [0.9, 1.0].
BINS = 10
#: Top-1 minus top-2 probability below which a decision counts as low-margin.
LOW_MARGIN = 0.2
#: Fields a telemetry window may contain; anything else is a privacy bug.
ALLOWED_FIELDS = frozenset(
    {
        "schema",
        "namespace",
        "device",
        "seq",
        "model",
        "bundle",
        "start",
        "end",
        "decisions",
        "first_decision",
        "last_decision",
        "counts",
        "confidence",
        "fp_proxy",
        "latency_ms",
        "digest",
        "profile",
        "sent",
        "noise",
        "shadow",
        "oracle",
    }
)
#: Upper bounds (ms) of the oracle round-trip histogram buckets; one overflow bucket follows.
ORACLE_LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: Why routed decisions kept the edge decision (see lab_hardware/runtime/routing.py).
ORACLE_FALLBACKS = ("timeout", "shed", "refused", "offline", "error")


@dataclass
class Decisions:
    """One inference batch, reduced to what windows aggregate (plain lists, per decision)."""

    labels: list[int]
    bins: list[int]
    undone: list[bool]
    low: list[bool]
    digests: list[str]
    first_seq: int
    latency_ms: float
    # Set only when the active bundle routes to the lab oracle (manifest ``routing``):
    route: list[int] | None = None  # per decision: 0 not routed, 1 oracle agreed, 2 diverged, 3 fell back
    edge: list[int] | None = None  # the edge model's own labels (``labels`` hold the final ones)
    route_ms: float | None = None  # the batch's oracle round trip (answered requests)
    fallback: str | None = None  # why its routed decisions kept the edge decision

    @classmethod
    def from_batch(
        cls,
        labels: np.ndarray,
        probs: np.ndarray,
        undone: np.ndarray,
        digests: list[str],
        first_seq: int,
        latency_ms: float,
    ) -> "Decisions":
        n, k = probs.shape
        conf = probs[np.arange(n), labels]
        bins = np.minimum((conf * BINS).astype(np.int64), BINS - 1)
        if k > 1:
            top2 = np.partition(probs, k - 2, axis=1)[:, k - 2]
            low = (conf - top2) < LOW_MARGIN
        else:
            low = np.zeros(n, dtype=bool)
        return cls(labels.tolist(), bins.tolist(), undone.tolist(), low.tolist(), digests, first_seq, latency_ms)

    def __len__(self) -> int:
        return len(self.labels)


def _quantile(pairs: list[tuple[float, int]], q: float) -> float:
    """Quantile (nearest rank) of values given as (value, count) pairs."""
    total = sum(c for _, c in pairs)
    rank = max(1, -int(-q * total // 1))
    seen = 0
    for v, c in sorted(pairs):
        seen += c
        if seen >= rank:
            return v
    return pairs[-1][0] if pairs else 0.0


class Window:
    """Accumulates decisions until the device closes it."""

    def __init__(self, intents: list[str], start: float):
        self.intents = list(intents)
        self.start = start
        k = self.k = len(self.intents)
        self.counts = [0] * k
        self.hist = [0] * (k * BINS)
        self.undo = [0] * k
        self.low_margin = [0] * k
        self.latencies: list[tuple[float, int]] = []  # (latency of a batch, decisions from it)
        self.n = 0
        self.first: int | None = None
        self.last: int | None = None
        self.digest = ""
        self.oracle: dict[str, Any] | None = None  # routing counters, once a routed batch is added
        self.oracle_rtt: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return self.n

    def add(self, d: Decisions, start: int = 0, stop: int | None = None) -> None:
        """Add decisions ``start:stop`` of a batch."""
        stop = len(d) if stop is None else stop
        if stop <= start:
            return
        counts, hist, undo, low_margin = self.counts, self.hist, self.undo, self.low_margin
        fold = _digest.fold
        h = self.digest
        for i in range(start, stop):
            lab = d.labels[i]
            counts[lab] += 1
            hist[lab * BINS + d.bins[i]] += 1
            if d.undone[i]:
                undo[lab] += 1
            if d.low[i]:
                low_margin[lab] += 1
            h = fold(h, d.digests[i])
        self.digest = h
        if d.route is not None:
            self._add_route(d, start, stop)
        n = stop - start
        self.latencies.append((d.latency_ms, n))
        if self.first is None:
            self.first = d.first_seq + start
        self.last = d.first_seq + stop - 1
        self.n += n

    def _add_route(self, d: Decisions, start: int, stop: int) -> None:
        o = self.oracle
        if o is None:
            o = self.oracle = {
                "routed": 0,
                "answered": 0,
                "diverged": 0,
                "fallback": dict.fromkeys(ORACLE_FALLBACKS, 0),
                "by_intent": {i: {"answered": 0, "diverged": 0} for i in self.intents},
            }
        answered = 0
        route, edge = d.route or [], d.edge or []
        for i in range(start, stop):
            code = route[i]
            if not code:
                continue
            o["routed"] += 1
            if code == 3:
                o["fallback"][d.fallback or "error"] += 1
                continue
            answered += 1
            per = o["by_intent"][self.intents[edge[i]]]
            per["answered"] += 1
            if code == 2:
                o["diverged"] += 1
                per["diverged"] += 1
        o["answered"] += answered
        if answered and d.route_ms is not None:
            self.oracle_rtt.append((d.route_ms, answered))

    def _oracle_field(self) -> dict[str, Any]:
        o = self.oracle or {}
        rtt = self.oracle_rtt
        counts = [0] * (len(ORACLE_LATENCY_BUCKETS_MS) + 1)
        for v, c in rtt:
            b = next((j for j, ub in enumerate(ORACLE_LATENCY_BUCKETS_MS) if v <= ub), len(ORACLE_LATENCY_BUCKETS_MS))
            counts[b] += c
        answered = o["answered"]
        return {
            **o,
            "share": round(o["routed"] / self.n, 4) if self.n else 0.0,
            "divergence": round(o["diverged"] / answered, 4) if answered else 0.0,
            "by_intent": {
                k: {**v, "divergence": round(v["diverged"] / v["answered"], 4) if v["answered"] else 0.0}
                for k, v in o["by_intent"].items()
            },
            "latency_ms": {
                "buckets": list(ORACLE_LATENCY_BUCKETS_MS),
                "counts": counts,
                **(
                    {
                        "p50": round(_quantile(rtt, 0.50), 3),
                        "p99": round(_quantile(rtt, 0.99), 3),
                        "max": round(max(v for v, _ in rtt), 3),
                    }
                    if rtt
                    else {}
                ),
            },
        }

    def close(
        self, *, end: float, namespace: str, device: str, seq: int, model: str, bundle: str, profile: str
    ) -> dict[str, Any]:
        names = self.intents
        lat = self.latencies or [(0.0, 1)]
        hist = self.hist
        return {
            "schema": SCHEMA_TELEMETRY,
            "namespace": namespace,
            "device": device,
            "seq": seq,
            "model": model,
            "bundle": bundle,
            "profile": profile,
            "start": round(self.start, 6),
            "end": round(end, 6),
            "decisions": self.n,
            "first_decision": self.first,
            "last_decision": self.last,
            "counts": dict(zip(names, self.counts)),
            "confidence": {n: hist[i * BINS : (i + 1) * BINS] for i, n in enumerate(names)},
            "fp_proxy": {
                "undo": dict(zip(names, self.undo)),
                "low_margin": dict(zip(names, self.low_margin)),
            },
            "latency_ms": {
                "p50": round(_quantile(lat, 0.50), 4),
                "p99": round(_quantile(lat, 0.99), 4),
                "max": round(max(v for v, _ in lat), 4),
            },
            "digest": self.digest,
            **({"oracle": self._oracle_field()} if self.oracle is not None else {}),
        }
