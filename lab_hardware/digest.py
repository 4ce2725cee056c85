"""Signal digests: a short hash attached to every decision.

A digest binds the exact feature vector, the bundle that decided and the
decision's sequence number.  Given a consented capture of the input, anyone can
recompute the features and check that this capture is the input behind that
decision — without the device ever publishing the input itself.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: Hex characters kept: 64 bits is plenty to tell decisions apart in a lab.
LENGTH = 16


def signal_digest(features: np.ndarray, bundle_digest: str, seq: int) -> str:
    """Digest of one decision (features as little-endian float32 bytes)."""
    return signal_digests(np.asarray(features, dtype="<f4").reshape(1, -1), bundle_digest, seq)[0]


def signal_digests(features: np.ndarray, bundle_digest: str, first_seq: int) -> list[str]:
    """Digests of a batch of decisions numbered ``first_seq``, ``first_seq + 1``, ...

    Same bytes as :func:`signal_digest` row by row; one conversion for the batch.
    """
    x = np.ascontiguousarray(features, dtype="<f4")
    tail = bundle_digest.encode()
    sha = hashlib.sha256
    raw = x.tobytes()
    width = x.shape[1] * 4
    return [
        sha(raw[i * width : (i + 1) * width] + tail + (first_seq + i).to_bytes(8, "little")).hexdigest()[:LENGTH]
        for i in range(x.shape[0])
    ]


def fold(window_hash: str, digest: str) -> str:
    """Chain decision digests into one per window (order-sensitive)."""
    return hashlib.sha256((window_hash + digest).encode()).hexdigest()[:LENGTH]


def file_digest(path) -> str:
    """sha256 of a file, the identity of a model or bundle."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
