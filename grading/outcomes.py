"""Grading outcomes: ``graded`` or ``infrastructure-error``, and events that count.

Why this module exists: a grader that scores a learner 0 because its own machine was busy
cannot be trusted.  Every failure the grading machine causes - a namespace, kernel or planted
fixture that did not come up, a check that crashed, a worker lost - is

* **detected** (:func:`classify` reads a result: a locked cell that raised the lab's
  :class:`labs.sdk.InfrastructureError` family, a kernel that never answered, a crashed
  check; an exception raised while setting up a run),
* **retried**, bounded (:func:`with_retries`, :data:`ATTEMPTS` runs in all), each time in a
  fresh namespace and kernel,
* and if it still fails, **recorded** as :data:`INFRA`: no score (``score`` is ``None``),
  nothing cached, no gradebook row, no ``check-failed`` event, and a message telling the
  learner plainly that it is not their work (:func:`infra_result`).

Events that count (``check-passed``/``check-failed``/``module-completed``...) are written
only by lab-side processes (the grading service, ``livelab grade``).  They are signed with
the lab's events key (``secrets/events.key``, mode 0600, never in a learner's view), so an
event a learner's kernel forges into the store - any learner name, any kind - is not
counted: :func:`counted` keeps only events whose signature verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Callable, Mapping

from lab_hardware.home import EVENTS_KEY as KEY_FILE, events_key  # noqa: F401  (re-exported)

# The signature itself lives beside the store (``labs`` may not import ``grading``, and a
# rollout's release checklist there reads signed completions); the names stay importable here.
from labs.learning_events import (  # noqa: F401  (re-exported)
    OUTCOME_KINDS,
    SIGNED_FIELDS,
    _statement,
    counted,
    sign,
    verifies,
)

GRADED = "graded"
INFRA = "infrastructure-error"
#: Runs of one submission before it is recorded as an infrastructure error.
ATTEMPTS = 3
#: Exceptions of the lab (not of the learner's code) when a locked cell raises them.
INFRA_ENAMES = frozenset({"InfrastructureError", "IncidentError", "LabConnectionError"})
#: Raised anywhere in a submission that lost points: a lab device answered too late (labs.sdk).
#: (Said anywhere in such a submission's output: the SDK's ``STALL_MARK``, a telemetry read
#: that a stalled lab device cut short - when the grader's observer saw a device that silent.)
DEVICE_ENAMES = frozenset({"DeviceTimeoutError"})
#: What the learner reads when the grading machine failed.
NOT_YOUR_WORK = (
    "not graded: the grading machine failed ({why}). This is not about your work and "
    "nothing was recorded against you: submit again (or ask your instructor to re-run the grading)."
)


# ---- detecting -----------------------------------------------------------------------------
def _locked(cell) -> bool:
    meta = (cell.get("metadata") or {}).get("nbgrader") or {}
    return bool(meta.get("locked")) and not meta.get("solution")


def classify(result: Mapping[str, Any]) -> str | None:
    """Why ``result`` is the grading machine's failure, or None when it is a real grade."""
    if result.get("status") == INFRA:
        return result.get("infrastructure") or "infrastructure error"
    timings = result.get("timings") or {}
    if result.get("status") == "graded" and "execute" in timings and "kernel_wait" not in timings:
        return "the notebook's kernel did not come up"
    for row in result.get("checks") or []:
        for it in row.get("items") or []:
            if it.get("name") == "check-ran" and not it.get("ok"):
                return f"the {row.get('name')} check crashed: {str(it.get('message'))[:160]}"
    text = result.get("executed")
    if not text:
        return None
    try:
        nb = json.loads(text)
    except ValueError:
        return None
    lost = result.get("score") is not None and result.get("score") < result.get("max_score", 0)
    from labs.sdk import STALL_MARK, STALL_S

    silence = max(((result.get("lab") or {}).get("device_silence_s") or {}).values(), default=0.0)

    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            gid = ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id") or f"cell {i + 1}"
            if out.get("output_type") == "stream" and lost:
                text = "".join(out.get("text") or "")
                if f"livelab: {STALL_MARK}" in text and silence >= STALL_S:
                    # a telemetry read a starved lab device cut short (labs.sdk.Lab.telemetry), and
                    # the grader's own observer saw that device silent: a line the learner's code
                    # printed without that evidence changes nothing
                    line = next(ln for ln in text.splitlines() if STALL_MARK in ln)
                    return f"a lab device stalled in {gid!r}: {line.removeprefix('livelab: ')[:160]}"
            if out.get("output_type") != "error":
                continue
            ev = str(out.get("evalue", "")).strip().splitlines()
            if out.get("ename") in INFRA_ENAMES and _locked(cell):
                return f"the module's set-up cell {gid!r} failed: {out.get('ename')}: {ev[0][:160] if ev else ''}"
            if out.get("ename") in DEVICE_ENAMES and lost:
                # a lab device too busy to answer in time cost this submission points
                return f"a lab device did not answer in time in {gid!r}: {ev[0][:160] if ev else ''}"
    return None


def infra_result(sub, ref, why: str, *, attempts: int = ATTEMPTS, tries: list[str] | None = None) -> dict:
    """The result of a submission the grading machine could not grade: no score."""
    return {
        "schema": "livelab.grade/v1",
        "status": INFRA,
        "student": sub.student,
        "assignment": sub.assignment,
        "notebook": sub.notebook,
        "score": None,
        "max_score": ref.max_score,
        "cells": [],
        "checks": [],
        "messages": [NOT_YOUR_WORK.format(why=why)],
        "infrastructure": why,
        "infra_tries": tries or [why],
        "attempts_run": attempts,
        "limits_hit": [],
        "isolation": {},
        "submission_sha256": sub.sha256,
        "reference": ref.digest,
        "executed": None,
        "feedback_html": None,
        "timings": {},
        "graded_at": time.time(),
    }


def with_retries(run: Callable[[], dict], sub, ref, attempts: int = ATTEMPTS) -> dict:
    """Run ``run`` (one grading of ``sub``) until it is a real grade, at most ``attempts``
    times; every failure of the machine (an exception, or :func:`classify`) is retried."""
    tries: list[str] = []
    for _attempt in range(1, attempts + 1):
        try:
            res = run()
        except Exception as exc:  # noqa: BLE001 - set-up failed (namespace, kernel, observer)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            tries.append(f"{type(exc).__name__}: {first}".rstrip(": "))
            continue
        why = classify(res)
        if why is None:
            if tries:
                res.setdefault("infra_retries", tries)
            return res
        tries.append(why)
    return infra_result(sub, ref, tries[-1] if tries else "unknown", attempts=attempts, tries=tries)


# ---- events that count ---------------------------------------------------------------------
def verify_columns(cols: Mapping[str, Any], key: bytes) -> list[bool]:
    """Per event of ``cols`` (columns with :data:`SIGNED_FIELDS`, ``time`` and ``detail``):
    True unless it is an outcome event whose signature does not verify."""
    ok = [True] * len(cols["kind"])
    outcome = set(OUTCOME_KINDS)
    for i, kind in enumerate(cols["kind"]):
        if kind not in outcome:
            continue
        detail = cols["detail"][i]
        if isinstance(detail, str):
            try:
                detail = json.loads(detail)
            except ValueError:
                detail = None
        sig = detail.get("sig") if isinstance(detail, dict) else None
        if not isinstance(sig, str):
            ok[i] = False
            continue
        ev = {f: cols[f][i] for f in SIGNED_FIELDS}
        ev["time"] = cols["time"][i]
        ok[i] = hmac.compare_digest(sig, hmac.new(key, _statement(ev), hashlib.sha256).hexdigest())
    return ok
