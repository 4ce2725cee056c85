"""Identifiers a program makes (hex ids, uuids, digests, base64 keys), from a seeded generator:
nobody's PII, whatever a recogniser without word boundaries reads inside them."""

from __future__ import annotations

import base64
import random


def machine_tokens(seed: int, rounds: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        out += [
            "%032x" % rng.getrandbits(128),
            "%08x-%04x-%04x-%04x-%012x" % tuple(rng.getrandbits(b) for b in (32, 16, 16, 16, 48)),
            "sha256:%064x" % rng.getrandbits(256),
            base64.urlsafe_b64encode(rng.getrandbits(384).to_bytes(48, "big")).decode(),
        ]
    return out
