"""The check framework: named checks that judge what the lab really saw.

A check is a function ``(ctx: CheckContext) -> list[Item]``, registered under a name with
:func:`register` in its module ``grading/checks/<name>.py`` (loaded on first use).  It reads
evidence the submission cannot forge: the independent observer's capture of every message in
the submission's namespace, the devices' audit chains on disk, replay and bundle files
verified against the lab, never the notebook's own prints.  Each :class:`Item` is one
property with a weight and, when it fails, a message that says what to do; the check's score
is its points times the weighted share of items that hold (partial credit).

Results become nbgrader grade cells (:func:`add_check_cells`), so the gradebook, ``nbgrader
export``, the formgrader and the feedback show them like any test, and events for
time-to-signal.  :func:`run` is the entry point for callers outside a grading run (the course
release gate): it builds a context from a lab home and namespace, without an observer.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import nbformat

PREFIX = "livelab-check-"


@dataclass
class Item:
    name: str
    ok: bool
    message: str = ""  # what is wrong and what to do (shown when not ok)
    weight: float = 1.0
    detail: dict = field(default_factory=dict)
    #: evidence the other items need: when it fails the check scores 0 (nothing was done, so
    #: "nothing was violated" earns nothing)
    required: bool = False


@dataclass
class CheckSpec:
    name: str
    points: float
    fn: Callable[["CheckContext"], list[Item]]
    description: str = ""


REGISTRY: dict[str, CheckSpec] = {}


def register(name: str, points: float, description: str = ""):
    def deco(fn):
        REGISTRY[name] = CheckSpec(name, float(points), fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def load_checks(names: Iterable[str]) -> list[CheckSpec]:
    out = []
    for name in names:
        if name not in REGISTRY:
            try:
                importlib.import_module(f"grading.checks.{name}")
            except ModuleNotFoundError:
                pass
        if name not in REGISTRY:
            raise KeyError(f"unknown check {name!r}: grading/checks has {', '.join(sorted(available()))}")
        out.append(REGISTRY[name])
    return out


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_") and p.stem != "base")


def check_grade_id(name: str) -> str:
    return PREFIX + name


# ---- what a check sees ---------------------------------------------------------------------
@dataclass
class Message:
    time: float
    topic: str
    payload: bytes
    retain: bool

    @property
    def size(self) -> int:
        return len(self.payload)

    def json(self) -> dict | None:
        try:
            d = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError):
            return None
        return d if isinstance(d, dict) else None


@dataclass
class CheckContext:
    home: Path
    namespace: str
    devices: list[str]
    learner: str
    module: str
    started: float
    ended: float
    messages: list[Message] | None = None  # the observer's capture (None: no observer)
    artifacts: Path | None = None  # files the notebook left in its working directory
    module_meta: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    @property
    def observed(self) -> bool:
        return self.messages is not None

    def of(self, kind: str, device: str | None = None) -> list[tuple[Message, dict]]:
        """Observed device messages of ``kind`` (telemetry, state, audit, capture, cmd) as (msg, json)."""
        from lab_hardware import topics

        out = []
        for m in self.messages or []:
            p = topics.parse(m.topic)
            if p and p["kind"] == kind and (device is None or p["device"] == device):
                d = m.json()
                if d is not None:
                    out.append((m, d))
        return out

    def distinct(self, kind: str, device: str | None = None) -> list[dict]:
        """Observed payloads of ``kind`` counted once each, whatever the broker redelivered:
        telemetry windows by ``(device, seq)``, capture parts by ``(device, capture_id, part)``,
        anything else by its bytes.  Counts of evidence are counts of these."""
        seen: set = set()
        out = []
        for m, d in self.of(kind, device):
            if kind == "telemetry":
                key = (d.get("device"), d.get("seq"))
            elif kind == "capture":
                key = (d.get("device"), d.get("capture_id"), d.get("part"))
            else:
                key = (m.topic, m.payload)
            if key in seen:
                continue
            seen.add(key)
            out.append(d)
        return out

    def chain(self, device: str) -> list[dict]:
        """The device's audit chain as written on disk (verified by the checks that need it)."""
        key = ("chain", device)
        if key not in self.cache:
            from lab_hardware import audit
            from lab_hardware import home as _home

            path = _home.device_dir(self.home, self.namespace, device) / "audit.jsonl"
            try:
                self.cache[key] = audit.read(path)
            except ValueError:
                self.cache[key] = None  # unreadable: the checks say so
        return self.cache[key]

    def run_records(self, device: str) -> list[dict]:
        """Audit records of this run (from when the submission's namespace was created)."""
        return [r for r in (self.chain(device) or []) if r.get("time", 0) >= self.started - 1]

    def scenario(self) -> dict:
        if "scenario" not in self.cache:
            from lab_hardware import home as _home

            try:
                self.cache["scenario"] = _home.read_json(self.home / "config.json")["scenario"]
            except (OSError, ValueError, KeyError):
                from labs import scenarios

                sc = scenarios.load("voice-intents")
                self.cache["scenario"] = {
                    "intents": list(sc.intents),
                    "defect_intent": sc.defect_intent,
                    "models": {k: str(v) for k, v in sc.models.items()},
                }
        return self.cache["scenario"]

    def files(self, suffix: str) -> list[Path]:
        if self.artifacts is None or not self.artifacts.is_dir():
            return []
        return sorted(p for p in self.artifacts.rglob(f"*{suffix}") if p.is_file())


# ---- running -------------------------------------------------------------------------------
def judge(spec: CheckSpec, ctx: CheckContext) -> dict:
    t0 = time.perf_counter()
    try:
        items = spec.fn(ctx)
    except Exception as exc:  # noqa: BLE001 - a crashing check fails, with its reason, never the batch
        items = [
            Item(
                "check-ran",
                False,
                f"the {spec.name} check could not judge this submission: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            )
        ]
    total = sum(i.weight for i in items) or 1.0
    got = sum(i.weight for i in items if i.ok)
    failed = [i for i in items if not i.ok]
    score = 0.0 if any(i.required for i in failed) else round(spec.points * got / total, 4)
    return {
        "name": spec.name,
        "grade_id": check_grade_id(spec.name),
        "points": spec.points,
        "score": score,
        "passed": not failed,
        "time": time.time(),
        "seconds": round(time.perf_counter() - t0, 3),
        "message": "; ".join(f"{i.name}: {i.message}" for i in failed),
        "items": [
            {
                "name": i.name,
                "ok": i.ok,
                "weight": i.weight,
                "required": i.required,
                "message": "" if i.ok else i.message,
                "detail": i.detail,
            }
            for i in items
        ],
    }


def run_checks(specs: list[CheckSpec], lab, artifacts: dict | None = None) -> list[dict]:
    ctx = lab.context(artifacts)
    return [judge(spec, ctx) for spec in specs]


def add_check_cells(nb: nbformat.NotebookNode, rows: list[dict]) -> None:
    """Append one locked grade cell per check; its output is the check's report and its
    score (an execute_result, which nbgrader's determine_grade reads as partial credit)."""
    for row in rows:
        lines = [f"livelab check '{row['name']}': {row['score']:g} / {row['points']:g}"]
        for it in row["items"]:
            lines.append(
                f"  [{'ok' if it['ok'] else 'FAILED'}] {it['name']}" + (f": {it['message']}" if not it["ok"] else "")
            )
        cell = nbformat.v4.new_code_cell(
            f"# livelab check {row['name']}: judged by the grader from the lab's observed state",
            metadata={
                "nbgrader": {
                    "grade": True,
                    "solution": False,
                    "locked": True,
                    "grade_id": row["grade_id"],
                    "points": row["points"],
                    "schema_version": 3,
                },
                "livelab": {"check": row["name"]},
            },
        )
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n"),
            nbformat.v4.new_output(
                "execute_result", data={"text/plain": repr(float(row["score"]))}, execution_count=None
            ),
        ]
        nb.cells.append(cell)


def run(
    name: str,
    *,
    home: str | Path,
    module: str,
    namespace: str | None = None,
    learner: str = "",
    since: float | None = None,
    notebook: str | Path | None = None,
    artifacts: str | Path | None = None,
    **_: Any,
) -> dict:
    """Judge one check outside a grading run (e.g. the course release gate): from the lab's
    audit chains and the files next to ``notebook``; items that need the observer's capture
    are judged from what the audit chains and replay store show instead."""
    from lab_hardware import home as _home

    home = _home.resolve(home)
    if namespace is None:
        namespace = _home.read_json(home / _home.DESCRIPTOR)["namespace"]
    cfg = _home.read_json(home / "config.json")
    devices = [d["name"] for d in cfg["namespaces"][namespace]["devices"]]
    art = Path(artifacts) if artifacts else (Path(notebook).parent if notebook else None)
    ctx = CheckContext(
        home=home,
        namespace=namespace,
        devices=devices,
        learner=learner,
        module=module,
        started=since or 0.0,
        ended=time.time(),
        messages=None,
        artifacts=art,
    )
    (spec,) = load_checks([name])
    return judge(spec, ctx)
