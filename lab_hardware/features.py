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
_TOKEN_BYTES = re.compile(rb"[a-z0-9']+")
_crc32 = zlib.crc32


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens plus word bigrams (bigrams carry intent phrases)."""
    words = _TOKEN.findall(text.lower())
    return words + [a + " " + b for a, b in zip(words, words[1:])]


def _indices(text: str) -> list[int]:
    """Bucket of every token of :func:`tokens`, without building the bigram strings:
    CRC-32 continues, so crc32(b" " + b, crc32(a)) == crc32(a + b" " + b)."""
    words = _TOKEN_BYTES.findall(text.lower().encode())
    h = [_crc32(w) for w in words]
    h += [_crc32(b" " + b, ha) for ha, b in zip(h, words[1:])]
    return [x % DIM for x in h]


def extract(text: str) -> np.ndarray:
    """One utterance -> an L2-normalised float32 vector of shape (1, DIM)."""
    return extract_batch([text])


def extract_batch(texts: list[str]) -> np.ndarray:
    """Many utterances at once (one numpy pass): shape (len(texts), DIM), float32.

    Empty utterances give an all-zero row rather than a division by zero.
    """
    n = len(texts)
    flat: list[int] = []
    for i, text in enumerate(texts):
        base = i * DIM
        flat.extend([base + j for j in _indices(text)])
    counts = np.bincount(np.asarray(flat, dtype=np.int64), minlength=n * DIM)
    out = counts.reshape(n, DIM).astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    np.divide(out, norms, out=out, where=norms > 0)
    return out
