"""Grading events (check passed/failed, module completed, with time) for time-to-signal.

The events store belongs to ``labs.learning_events`` (``EventStore(url_or_home).write(events)``);
this module is the grader's one door to it, imported lazily, so grading also works where the
store cannot be opened: then the events go to a JSON-lines file next to the results
(``fallback``), nothing is lost, and the summary says where they went.

Idempotency comes from the store: an event's id covers who wrote it and what it says plus
``key``, and the grader's key is the submission's sha256 with the release reference digest,
so grading the same submission again adds nothing, while a new submission is new evidence.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SCHEMA = "livelab.event/v1"


def events_for(result: dict, *, course: str | None = None, version: str | None = None, team: str = "") -> list[dict]:
    """One check-passed/check-failed event per graded item (tests and lab checks), and
    module-completed when everything passed."""
    now = min(result.get("graded_at") or time.time(), time.time())
    key = f"{result.get('submission_sha256', '')}:{result.get('reference', '')}"
    # A grader run by a system identity (the release gate, the demo's bots, a benchmark: see
    # labs.learning_events.system_identity) marks its events so that reports can leave them out.
    system = os.environ.get("LIVELAB_SYSTEM", "").strip().lower() in ("1", "true", "yes")
    base = {
        "schema": SCHEMA,
        "source": "grader",
        "module": result["assignment"],
        "learner": result["student"],
        "course": course or "",
        "version": version or "",
        "team": team,
        "key": key,
        "system": system,
    }
    out = []
    opened = (result.get("lab") or {}).get("opened_at")
    if opened:  # the notebook's own event store lives in its sandbox; the lab saw it open
        out.append({**base, "source": "lab", "kind": "module-opened", "time": float(opened)})
    for row in result.get("cells", []):
        if row.get("score") is None:  # manually graded answers are not signals yet
            continue
        passed = row["score"] >= row["max_score"]
        out.append(
            {
                **base,
                "kind": "check-passed" if passed else "check-failed",
                "time": row.get("time", now),
                "check": row.get("check") or row["grade_id"],
                "detail": {
                    "check_kind": row["kind"],
                    "score": row["score"],
                    "points": row["max_score"],
                    "message": row.get("message"),
                    "submission": result.get("submission_sha256"),
                    "notebook": result.get("notebook"),
                },
            }
        )
    if result.get("status") == "graded" and result["max_score"] > 0 and result["score"] >= result["max_score"]:
        out.append(
            {
                **base,
                "kind": "module-completed",
                "time": now,
                "detail": {"score": result["score"], "points": result["max_score"]},
            }
        )
    return out


class Recorder:
    """Writes event batches to one events store, opened once (per grading run)."""

    def __init__(self, store: str | None = None, fallback: Path | None = None):
        self.target = store
        self.fallback = fallback
        self._store = None
        self.error: str | None = None

    def _open(self):
        if self._store is None and self.error is None:
            try:
                from labs.learning_events import EventStore  # lazily: see the module doc

                self._store = EventStore(self.target)
            except Exception as exc:  # noqa: BLE001 - any reason: fall back to the file
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self._store

    def record(self, events: list[dict]) -> str:
        if not events:
            return "none"
        store = self._open()
        if store is not None:
            try:
                store.write(events)
                return "store"
            except Exception as exc:  # noqa: BLE001 - never lose a grade over the event store
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self.fallback is None:
            return "dropped"
        self.fallback.parent.mkdir(parents=True, exist_ok=True)
        with open(self.fallback, "a", encoding="utf-8") as fh:
            for e in events:
                fh.write(json.dumps({**e, "store_error": self.error}, sort_keys=True) + "\n")
        return f"file:{self.fallback}"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def record(events: list[dict], *, store: str | None = None, fallback: Path | None = None) -> str:
    """Write ``events`` to the events store (``store``: URL or lab home; None: the default),
    or append them to ``fallback`` when the store cannot take them; returns where they went."""
    r = Recorder(store, fallback)
    try:
        return r.record(events)
    finally:
        r.close()
