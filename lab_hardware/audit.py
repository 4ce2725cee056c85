"""Tamper-evident audit chain: hash-linked records of what happened to a device.

Each record carries the hash of the one before it, so deleting, reordering or
editing any record breaks every hash after it.  Devices append consent
changes, commands (accepted or refused), installs and health verdicts; the
grader and the learner verify the chain rather than trust it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

GENESIS = "0" * 64
FIELDS = ("index", "time", "kind", "data", "prev")


def record_hash(record: dict[str, Any]) -> str:
    body = {k: record[k] for k in FIELDS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """Result of verifying a chain: ``ok``, how many records, and the first break."""

    ok: bool
    records: int
    bad_index: int | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def verify(records: Iterable[dict[str, Any]]) -> Verdict:
    """Check indices, links and hashes; report the first record that does not hold."""
    prev = GENESIS
    n = 0
    for expected, rec in enumerate(records):
        n = expected + 1
        if not isinstance(rec, dict) or any(k not in rec for k in (*FIELDS, "hash")):
            return Verdict(False, n, expected, f"record {expected} is missing fields")
        if rec["index"] != expected:
            return Verdict(False, n, expected, f"record {expected} has index {rec['index']}")
        if rec["prev"] != prev:
            return Verdict(False, n, expected, f"record {expected} does not link to the previous record")
        if record_hash(rec) != rec["hash"]:
            return Verdict(False, n, expected, f"record {expected} was altered (hash mismatch)")
        prev = rec["hash"]
    return Verdict(True, n)


def read(path: Path) -> list[dict[str, Any]]:
    """All records of a chain file (a torn last line from a crash is ignored)."""
    out: list[dict[str, Any]] = []
    if not Path(path).exists():
        return out
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1 :]):
                break  # torn tail write
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return out


def read_verified(path: Path) -> list[dict[str, Any]]:
    """The records of a chain file that verifies; ValueError with the one-line reason when it
    cannot be read ("cannot be read (...)") or is broken ("is broken (...)")."""
    try:
        records = read(path)
    except ValueError as exc:
        raise ValueError(f"cannot be read ({exc})") from None
    verdict = verify(records)
    if not verdict:
        raise ValueError(f"is broken ({verdict.reason})")
    return records


class AuditChain:
    """Append-only chain backed by a JSON-lines file (one per device)."""

    def __init__(self, path: Path, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        records = read(self.path)
        verdict = verify(records)
        if not verdict:
            raise ValueError(f"audit chain {self.path} is broken: {verdict.reason}")
        self._next = len(records)
        self._prev = records[-1]["hash"] if records else GENESIS
        self._records = records

    def __len__(self) -> int:
        return self._next

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records[start:])

    def append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Write one record durably (flush + fsync: records are rare, loss is not ok)."""
        with self._lock:
            rec = {"index": self._next, "time": round(self._clock(), 6), "kind": kind, "data": data, "prev": self._prev}
            rec["hash"] = record_hash(rec)
            line = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._records.append(rec)
            self._next += 1
            self._prev = rec["hash"]
            return rec
