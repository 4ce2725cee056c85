"""On-device feature extraction for the scenario's utterances.

Devices never publish raw inputs: they turn an utterance into a fixed-size
vector here, on the device, and only decisions and aggregates leave it.  The
same function runs in the replay sandbox, so it must be deterministic across
processes, platforms and Python hash seeds: tokens are hashed with CRC-32,
not ``hash()``.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

#: Width of the feature vector; part of every model's input schema.
DIM = 512
#: Schema name recorded in bundle manifests and replay files.
SCHEMA = "livelab.features.hashed-words/v1"

_TOKEN = re.compile(r"[a-z0-9']+")
_crc32 = zlib.crc32


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens plus word bigrams (bigrams carry intent phrases)."""
    words = _TOKEN.findall(text.lower())
    return words + [a + " " + b for a, b in zip(words, words[1:])]


def _indices(text: str) -> list[int]:
    return [_crc32(t.encode()) % DIM for t in tokens(text)]


def extract(text: str) -> np.ndarray:
    """One utterance -> an L2-normalised float32 vector of shape (1, DIM)."""
    return extract_batch([text])


def extract_batch(texts: list[str]) -> np.ndarray:
    """Many utterances at once (one numpy pass): shape (len(texts), DIM), float32.

    Empty utterances give an all-zero row rather than a division by zero.
    """
    rows: list[int] = []
    cols: list[int] = []
    for i, text in enumerate(texts):
        idx = _indices(text)
        cols.extend(idx)
        rows.extend([i] * len(idx))
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    if cols:
        np.add.at(out, (np.asarray(rows), np.asarray(cols)), 1.0)
    norms = np.sqrt((out * out).sum(axis=1, keepdims=True))
    np.divide(out, norms, out=out, where=norms > 0)
    return out
