"""A realistic, seeded *untidy* start for a grading namespace.

A fresh namespace is tidier than any lab a learner meets: every consent denied, nothing left
open.  When an exercise says "someone before you may have left consent granted", a check or
hidden test that runs against a fresh namespace cannot tell a learner who revoked it from one
who did nothing (both see a device that publishes nothing).  So the grader starts each
namespace the way the exercise describes it, from the module's ``untidy`` table in
``course.toml``::

    untidy = [{ grant = "telemetry", devices = "some" }]         # a seeded subset of devices
    untidy = [{ grant = "replay-capture", devices = ["dev-1"] }]  # exactly these

Each entry grants a consent scope from the control plane (an ordinary command, so it is an
audit record and a message the observer sees, authored by someone other than the learner)
before the learner's kernel starts.  ``devices = "some"`` picks a non-empty proper subset
(every device when there is one), seeded by the grading seed and the module, so a grade is
reproducible.  Released course versions without an ``untidy`` table are graded as before.
The release gate starts each module the same way, so a reference solution that only works in
a tidy lab cannot be released.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

#: The author the seeded commands name (the topic's author wins where the broker proves one).
AUTHOR = "someone-before-you"


class UntidyError(ValueError):
    """An ``untidy`` table that cannot be applied (one line: what to change in course.toml)."""


def validate(spec: Any, where: str = "untidy") -> list[str]:
    """Problems with an ``untidy`` value (empty when it is valid)."""
    from lab_hardware.consent import SCOPES

    if spec is None:
        return []
    if not isinstance(spec, list):
        return [f'{where} must be an array of tables like {{ grant = "telemetry", devices = "some" }}']
    problems = []
    for n, e in enumerate(spec, 1):
        if not isinstance(e, dict) or set(e) != {"grant", "devices"}:
            problems.append(f"{where} entry {n} must have exactly the keys grant and devices")
            continue
        if e["grant"] not in SCOPES:
            problems.append(f"{where} entry {n}: grant {e['grant']!r} is not a consent scope ({', '.join(SCOPES)})")
        d = e["devices"]
        if not (d == "some" or (isinstance(d, list) and d and all(isinstance(x, str) for x in d))):
            problems.append(f'{where} entry {n}: devices must be "some" or a non-empty array of device names')
    return problems


def plan(spec: list[dict] | None, devices: list[str], *, seed: int = 0, module: str = "") -> list[tuple[str, str]]:
    """The (device, scope) grants an ``untidy`` table asks for, in a seeded order."""
    problems = validate(spec)
    if problems:
        raise UntidyError(problems[0])
    rng = random.Random(f"livelab-untidy:{module}:{seed}")
    out: list[tuple[str, str]] = []
    for e in spec or []:
        if e["devices"] == "some":
            k = 1 if len(devices) == 1 else rng.randint(1, len(devices) - 1)
            chosen = sorted(rng.sample(sorted(devices), k))
        else:
            chosen = [d for d in e["devices"] if d in devices]
        out += [(d, e["grant"]) for d in chosen if (d, e["grant"]) not in out]
    return out


def seed_namespace(
    home: str | Path,
    namespace: str,
    devices: list[str],
    spec: list[dict] | None,
    *,
    seed: int = 0,
    module: str = "",
    timeout: float = 10.0,
) -> list[dict]:
    """Apply ``spec`` to a namespace of a running lab; returns what was left granted, each as
    ``{"device", "scope", "audit_index"}``.  Waits for every device's audit record."""
    grants = plan(spec, devices, seed=seed, module=module)
    if not grants:
        return []
    from labs import reset

    recs = reset.send(
        home, namespace, [(d, "consent", {"scope": s, "grant": True, "by": AUTHOR}) for d, s in grants], timeout=timeout
    )
    return [{"device": d, "scope": s, "audit_index": r.get("index")} for (d, s), r in zip(grants, recs)]
