"""``livelab course release``: build the learner version with nbgrader, gate it on a live lab,
and write an immutable release.

A release happens in this order, and nothing is written under ``releases/`` until every step
passed (the release is assembled in a staging folder and renamed into place):

1. **Inputs** (bad input: :class:`ReleaseError`): ``course.toml`` is valid (minutes 15-30,
   known checks and scenario, semver), its version is the one asked for, the version is not
   released yet and is newer than every release, ``CHANGELOG.md`` has an entry for it, and
   every module's notebook is valid nbgrader source (:func:`courses.notebooks.validate_source`).
2. **Learner version**: nbgrader's own ``generate_assignment`` (through ``NbGraderAPI`` in a
   temporary nbgrader course directory) strips solutions and hidden tests, locks cells and
   computes the checksums the grader later restores locked cells by.
3. **The gate** (:class:`GateFailed`, one line per problem): against a lab started for the
   purpose with ``lab_hardware.runtime.lab.up``, papermill runs every reference solution in module
   order with the ``livelab`` kernel - each must complete without error, its visible and
   hidden tests included - and then every learner version as is, which must fail at least one
   of its tests (a learner must not pass by doing nothing).  After each run the module's
   grading checks (``grading.checks.run``: the same checks ``livelab grade`` scores, judged
   from the lab's audit chains and the files the run left) must all pass for the reference
   solution and must not all pass for the learner version.
4. **Write** ``releases/<version>/``: the released ``course.toml``, the learner notebooks, the
   stamped source notebooks (grading integrity: the grader restores locked cells from them) and
   ``manifest.json`` with every file's sha256, minutes, points and the gate's results.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import nbformat

from courses import catalog, notebooks
from courses.catalog import Course, CourseError

GATE_LEARNER = "release-gate"


def _name_gate_learner(home, name: str | None) -> None:
    """Devices record the broker-proven commands of the lab's learner identity under this name
    (audit ``by``), so the gate's runs are the gate's (None: back to the lab's owner)."""
    from lab_hardware.runtime import lab as _lab

    try:
        desc = _lab.descriptor(home)
        name = name or desc.get("learner_name")
        if name:
            _lab.name_learner(home, desc["namespace"], name)
    except Exception:  # noqa: BLE001 - an external broker or a stopped lab: records keep the username
        pass


class ReleaseError(CourseError):
    """A release refused before anything ran; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class GateFailed(ReleaseError):
    """The release gate failed: nothing was released; one line per problem."""


@dataclass
class ModuleGate:
    module: str
    reference_ok: bool = False
    reference_seconds: float = 0.0
    reference_error: str = ""
    learner_seconds: float = 0.0
    learner_tests: list[str] = field(default_factory=list)
    learner_failed_tests: list[str] = field(default_factory=list)
    checks: dict[str, Any] | str = "not run"
    learner_checks: dict[str, Any] | str = "not run"


def _quiet(_msg: str) -> None:
    pass


# ---- nbgrader ----------------------------------------------------------------------------
def _venv_on_path() -> None:
    """nbgrader runs ``alembic`` from PATH to create its gradebook: use this environment's."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def generate_assignment(nbgrader_root: Path, module_id: str) -> tuple[Path | None, str]:
    """nbgrader's ``generate_assignment`` for one module of an nbgrader course directory.

    ``nbgrader_root/source/<id>/<id>.ipynb`` -> ``nbgrader_root/release/<id>/<id>.ipynb``.
    Returns (learner notebook, "") or (None, one-line reason).
    """
    _venv_on_path()
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    cfg = Config()
    cfg.CourseDirectory.root = str(nbgrader_root)
    api = NbGraderAPI(config=cfg)
    res = api.generate_assignment(module_id, force=True, create=True)
    out = Path(nbgrader_root) / "release" / module_id / f"{module_id}.ipynb"
    if not res.get("success") or not out.exists():
        text = (res.get("error") or "") + "\n" + (res.get("log") or "")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "ERROR" in ln or "Error" in ln), lines[-1] if lines else "")
        return None, f"nbgrader generate_assignment refused it: {reason.removeprefix('[ERROR] ')}"[:400]
    return out, ""


def learner_versions(course: Course, version: str, dest: Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """Stamp each module's source with ``version`` and run nbgrader on it in ``dest``.

    Returns (stamped sources, learner notebooks, problems).
    """
    sources: dict[str, Path] = {}
    learners: dict[str, Path] = {}
    problems: list[str] = []
    for m in course.modules:
        nb = nbformat.read(str(m.notebook), as_version=4)
        notebooks.stamp(nb, course=course.id, version=version, module=m.id)
        src = dest / "source" / m.id / f"{m.id}.ipynb"
        src.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(src))
        sources[m.id] = src
        out, reason = generate_assignment(dest, m.id)
        if out is None:
            problems.append(f"{m.id}: {reason}")
            continue
        problems += notebooks.check_learner(out, notebooks.tests_of(nb), m.id)
        learners[m.id] = out
    return sources, learners, problems


# ---- the gate ----------------------------------------------------------------------------
def _grading_checks(module: catalog.Module, context: dict) -> dict[str, Any] | str:
    """Run the module's checks through ``grading.checks.run`` when the grader provides it."""
    try:
        from grading import checks as _checks
    except ImportError:
        return "grading.checks is not importable"
    run = getattr(_checks, "run", None)
    if not callable(run):
        return "grading.checks.run is not available yet"
    out: dict[str, Any] = {}
    for name in module.checks:
        try:
            res = run(name, **context)
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check
            out[name] = {"passed": False, "message": f"{type(exc).__name__}: {notebooks._first_line(exc)}"}
            continue
        if isinstance(res, dict):
            passed, msg = bool(res.get("passed")), str(res.get("message", ""))
        else:
            passed = bool(getattr(res, "passed", res))
            msg = str(getattr(res, "message", ""))
        out[name] = {"passed": passed, "message": msg}
    return out


def _seed_untidy(home: Path, m: catalog.Module, problems: list[str]) -> None:
    """Start the module the way the grader does: what its ``untidy`` table says someone left
    (grading/untidy.py), so a reference that only works in a tidy lab is not released."""
    if not m.untidy:
        return
    from grading.untidy import seed_namespace
    from lab_hardware import home as _home

    try:
        desc = _home.read_json(Path(home) / _home.DESCRIPTOR)
        seed_namespace(home, desc["namespace"], list(desc["devices"]), [dict(e) for e in m.untidy], module=m.id)
    except Exception as exc:  # noqa: BLE001 - a lab that cannot be set up fails the gate, with why
        problems.append(f"{m.id}: could not set up its untidy start: {notebooks._first_line(exc)}")


def _start_lab(scenario: str, home: Path, services: set[str] | None = None) -> None:
    """A 3-device lab of ``scenario`` with the lab services its modules need (the oracle)."""
    from lab_hardware.runtime import lab as _lab
    from labs import scenarios

    sc = scenarios.load(scenario).materialize(home / "scenario")
    _lab.up(home, scenario=sc, devices=3, oracle="oracle" in (services or set()))


def missing_services(home: Path, modules: list[catalog.Module]) -> list[str]:
    """One line per module whose lab services (course.toml ``services``) the lab in ``home`` lacks."""
    from lab_hardware.runtime import lab as _lab

    have = set(_lab.service_names(home))
    out = []
    for m in modules:
        lacking = [s for s in m.services if s not in have]
        if lacking:
            out.append(
                f"{m.id}: needs the lab's {', '.join(lacking)}, which the lab in {home} does not run: "
                "start it with 'livelab up --oracle'"
            )
    return out


def run_gate(
    course: Course,
    sources: dict[str, Path],
    learners: dict[str, Path],
    workdir: Path,
    *,
    lab_home: Path | None = None,
    progress: Callable[[str], None] = _quiet,
    cell_timeout: float = 120.0,
) -> tuple[list[ModuleGate], list[str]]:
    """Execute every reference solution, then every learner version, against a live lab.

    With ``lab_home`` the gate uses that running lab; otherwise it starts one lab per
    scenario in ``workdir`` and stops it afterwards.  Returns (per-module results, problems).

    The gate is a system identity, not a learner: the learning events its notebooks' kernels
    record are marked ``system`` (``labs.learning_events.system_identity``), and managers'
    reports leave them out.
    """
    from labs.learning_events import system_identity

    with system_identity():
        return _run_gate(
            course, sources, learners, workdir, lab_home=lab_home, progress=progress, cell_timeout=cell_timeout
        )


def _run_gate(
    course: Course,
    sources: dict[str, Path],
    learners: dict[str, Path],
    workdir: Path,
    *,
    lab_home: Path | None,
    progress: Callable[[str], None],
    cell_timeout: float,
) -> tuple[list[ModuleGate], list[str]]:
    from lab_hardware.runtime import lab as _lab

    if not catalog.kernel_installed(notebooks.KERNEL):
        return [], [f"the '{notebooks.KERNEL}' kernelspec is not installed: run 'livelab kernel install'"]
    results = {m.id: ModuleGate(m.id) for m in course.modules}
    problems: list[str] = []
    lo, hi = catalog.MINUTES
    for m in course.modules:
        if not lo <= m.minutes <= hi:
            problems.append(f"{m.id}: estimated {m.minutes} minutes is outside {lo}-{hi}")
    by_scenario: dict[str, list[catalog.Module]] = {}
    for m in course.modules:
        by_scenario.setdefault(m.scenario, []).append(m)
    for scenario, modules in by_scenario.items():
        home = Path(lab_home) if lab_home is not None else workdir / f"lab-{scenario}"
        own = lab_home is None
        if own:
            progress(f"starting a lab for scenario {scenario}")
            try:
                _start_lab(scenario, home, {s for m in modules for s in m.services})
            except Exception as exc:  # noqa: BLE001 - LabError, BrokerError: say why, release nothing
                problems.append(f"could not start a lab for scenario {scenario}: {notebooks._first_line(exc)}")
                continue
        else:
            lacking = missing_services(home, modules)
            if lacking:
                problems += lacking
                continue
        try:
            params = {"LIVELAB_HOME": str(home), "LEARNER": GATE_LEARNER, "SEED": 0}
            _name_gate_learner(home, GATE_LEARNER)
            for m in modules:
                if m.id not in sources:
                    continue
                progress(f"{m.id}: running the reference solution")
                since = time.time()
                _seed_untidy(home, m, problems)
                ex = notebooks.execute(
                    sources[m.id],
                    workdir / "runs" / m.id / "reference.ipynb",
                    parameters=params,
                    cwd=workdir / "work" / m.id / "reference",
                    cell_timeout=cell_timeout,
                )
                r = results[m.id]
                r.reference_ok, r.reference_seconds, r.reference_error = ex.ok, round(ex.seconds, 2), ex.error
                if not ex.ok:
                    problems.append(f"{m.id}: the reference solution fails: {ex.error}")
                    continue
                r.checks = _grading_checks(
                    m,
                    {
                        "module": m.id,
                        "home": str(home),
                        "namespace": None,
                        "learner": GATE_LEARNER,
                        "notebook": ex.output,
                        "since": since,
                        "artifacts": str(workdir / "work" / m.id / "reference"),
                    },
                )
                if isinstance(r.checks, dict):
                    for name, c in r.checks.items():
                        if not c["passed"]:
                            problems.append(f"{m.id}: check '{name}' fails on the reference solution: {c['message']}")
            _name_gate_learner(home, GATE_LEARNER + "-learner")
            for m in modules:
                if m.id not in learners:
                    continue
                progress(f"{m.id}: running the learner version as is")
                since = time.time()
                _seed_untidy(home, m, problems)
                ex = notebooks.execute(
                    learners[m.id],
                    workdir / "runs" / m.id / "learner.ipynb",
                    parameters={**params, "LEARNER": GATE_LEARNER + "-learner"},
                    cwd=workdir / "work" / m.id / "learner",
                    allow_errors=True,
                    cell_timeout=cell_timeout,
                )
                r = results[m.id]
                r.learner_seconds = round(ex.seconds, 2)
                r.learner_tests, r.learner_failed_tests = ex.tests, ex.failed_tests
                r.learner_checks = _grading_checks(
                    m,
                    {
                        "module": m.id,
                        "home": str(home),
                        "namespace": None,
                        "learner": GATE_LEARNER + "-learner",
                        "notebook": ex.output,
                        "since": since,
                        "artifacts": str(workdir / "work" / m.id / "learner"),
                    },
                )
                if (
                    isinstance(r.learner_checks, dict)
                    and r.learner_checks
                    and all(c["passed"] for c in r.learner_checks.values())
                ):
                    problems.append(
                        f"{m.id}: the learner version passes all its checks ({', '.join(r.learner_checks)}) as is"
                    )
                if not ex.tests:
                    problems.append(f"{m.id}: the learner version has no test cells to fail")
                elif not ex.failed_tests:
                    problems.append(
                        f"{m.id}: the learner version passes all {len(ex.tests)} of its tests as is: "
                        "a learner would get full marks without doing anything"
                    )
        finally:
            if own:
                _lab.down(home)
            else:
                _name_gate_learner(home, None)  # a lab the gate borrowed: its owner again
    return [results[m.id] for m in course.modules], problems


# ---- release -----------------------------------------------------------------------------
def input_problems(course: Course, version: str) -> list[str]:
    """Every problem with releasing ``version`` that needs no lab and no nbgrader, at once."""
    problems: list[str] = []
    try:
        catalog.check_version(version, course.id)
    except CourseError as exc:
        return [str(exc)]
    toml = course.root / catalog.COURSE_FILE
    if version != course.version:
        problems.append(f'{toml} says version = "{course.version}": set it to "{version}" before releasing {version}')
    final = catalog.release_dir(course, version)
    if final.exists():
        problems.append(
            f"{course.id} {version} is already released ({final}): releases are immutable, "
            "bump the version in course.toml and CHANGELOG.md"
        )
    else:
        from lab_hardware.modelops.bundle import compare_versions

        newer = [v for v in catalog.releases(course) if compare_versions(v, version) >= 0]
        if newer:
            problems.append(
                f"{course.id} {newer[-1]} is already released: a new release must be newer than {newer[-1]}"
            )
    try:
        catalog.changelog_entry(course, version)
    except CourseError as exc:
        problems.append(str(exc))
    for m in course.modules:
        nb_problems = notebooks.validate_source(m.notebook, m.id)
        problems += nb_problems or _hint_problems(m)  # hints name cells: only of a valid notebook
    return problems


def _hint_problems(m: catalog.Module) -> list[str]:
    """Hints must name the module's exercises (its answer cells' grade ids)."""
    if not m.hints:
        return []
    nb, _ = notebooks.read(m.notebook)
    if nb is None:
        return []
    exercises = [
        c.metadata.get("nbgrader", {}).get("grade_id")
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("solution") and not c.metadata.get("nbgrader", {}).get("grade")
    ]
    unknown = [k for k, _ in m.hints if k not in exercises]
    return [
        f"{m.id}: hints.{k} names no exercise of the module (exercises: {', '.join(e for e in exercises if e)})"
        for k in unknown
    ]


def check_inputs(course: Course, version: str) -> str:
    """Everything checked before running anything (every problem at once, as one
    :class:`ReleaseError`); returns the CHANGELOG entry."""
    problems = input_problems(course, version)
    if problems:
        raise ReleaseError(problems)
    return catalog.changelog_entry(course, version)


def check(course: str | Path | Course, *, root: Path | None = None, version: str | None = None) -> dict[str, Any]:
    """``livelab course check``: what the release would refuse before its gate, in seconds and
    without a lab - course.toml, the CHANGELOG entry, the version, every source notebook's
    nbgrader rules, the hints, and nbgrader's own ``generate_assignment`` with the learner
    version's checks - every problem listed at once.

    Returns ``{"course", "version", "problems": [...], "modules": [ids], "seconds"}``.
    A version that is released already is not a problem here when the sources are what was
    released (nothing to release); it is when they changed (bump the version).
    """
    t0 = time.perf_counter()
    try:
        c = course if isinstance(course, Course) else catalog.load(course, root=root)
    except CourseError as exc:
        return {
            "course": str(course),
            "version": version,
            "problems": [str(exc)],
            "modules": [],
            "seconds": round(time.perf_counter() - t0, 2),
        }
    version = version or c.version
    problems = input_problems(c, version)
    released = catalog.release_dir(c, version).exists()
    if released:
        problems = [p for p in problems if "already released" not in p]
        changed = _changed_since_release(c, version)
        if changed:
            problems.append(
                f"{c.id} {version} is released and the sources changed since ({', '.join(changed)}): "
                "bump the version in course.toml and add a CHANGELOG.md entry"
            )
    tmp = Path(tempfile.mkdtemp(prefix=f"livelab-check-{c.id}-"))
    try:
        _, _, nb_problems = learner_versions(c, version, tmp / "nbgrader")
        problems += [p for p in nb_problems if p not in problems]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "course": c.id,
        "version": version,
        "problems": problems,
        "modules": [m.id for m in c.modules],
        "released": released,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _changed_since_release(c: Course, version: str) -> list[str]:
    """Modules whose source differs from the released (stamped) source of ``version``."""
    out = []
    rel = catalog.release_dir(c, version)
    for m in c.modules:
        path = rel / "source" / m.id / f"{m.id}.ipynb"
        if not path.exists():
            out.append(m.id)
            continue
        nb = nbformat.read(str(m.notebook), as_version=4)
        notebooks.stamp(nb, course=c.id, version=version, module=m.id)
        old = nbformat.read(str(path), as_version=4)
        if [(x.cell_type, x.source) for x in nb.cells] != [(x.cell_type, x.source) for x in old.cells]:
            out.append(m.id)
    return out


def preview(course: str | Path | Course, module: str, out: Path | None = None, *, root: Path | None = None) -> Path:
    """``livelab course preview``: the learner version of ``module`` (nbgrader's own
    ``generate_assignment``: solutions and hidden tests stripped) rendered to one HTML file
    with nbconvert, to read a module as a learner will before releasing it.  No lab needed."""
    from nbconvert import HTMLExporter

    c = course if isinstance(course, Course) else catalog.load(course, root=root)
    m = c.module(module)
    problems = notebooks.validate_source(m.notebook, m.id)
    if problems:
        raise ReleaseError(problems)
    out = Path(out) if out is not None else Path.cwd() / f"{c.id}-{m.id}-preview.html"
    tmp = Path(tempfile.mkdtemp(prefix=f"livelab-preview-{c.id}-"))
    try:
        nbroot = tmp / "nbgrader"
        nb = nbformat.read(str(m.notebook), as_version=4)
        notebooks.stamp(nb, course=c.id, version=c.version, module=m.id)
        src = nbroot / "source" / m.id / f"{m.id}.ipynb"
        src.parent.mkdir(parents=True)
        nbformat.write(nb, str(src))
        learner, reason = generate_assignment(nbroot, m.id)
        if learner is None:
            raise ReleaseError(f"{m.id}: {reason}")
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(learner), as_version=4))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("nbgrader", "papermill", "livelab"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def release(
    course: str | Path | Course,
    version: str,
    *,
    root: Path | None = None,
    lab_home: Path | None = None,
    progress: Callable[[str], None] = _quiet,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Release ``version`` of a course (id under ``root``, or a path); returns the manifest.

    Raises :class:`ReleaseError` for bad input and :class:`GateFailed` when the gate fails;
    in both cases nothing is written under ``releases/``.  ``keep`` copies the gate's
    executed notebooks there (to look at a failure).
    """
    c = course if isinstance(course, Course) else catalog.load(course, root=root)
    t0 = time.perf_counter()
    entry = check_inputs(c, version)
    tmp = Path(tempfile.mkdtemp(prefix=f"livelab-release-{c.id}-{version}-"))
    stage = c.releases_dir / f".staging-{version}-{os.getpid()}"
    try:
        progress("building the learner version with nbgrader generate_assignment")
        sources, learners, problems = learner_versions(c, version, tmp / "nbgrader")
        if problems:
            raise ReleaseError(problems)
        gate, problems = run_gate(c, sources, learners, tmp / "gate", lab_home=lab_home, progress=progress)
        if keep is not None and (tmp / "gate" / "runs").exists():
            shutil.copytree(tmp / "gate" / "runs", Path(keep), dirs_exist_ok=True)
        if problems:
            raise GateFailed(problems)
        progress(f"writing releases/{version}")
        stage.mkdir(parents=True)
        files: dict[str, str] = {}

        def put(src: Path, rel: str) -> str:
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            files[rel] = catalog.sha256_file(dst)
            return files[rel]

        put(c.root / catalog.COURSE_FILE, catalog.COURSE_FILE)
        modules = []
        gates = {g.module: g for g in gate}
        for m in c.modules:
            src_rel = f"source/{m.id}/{m.id}.ipynb"
            lrn_rel = f"learner/{m.id}/{m.id}.ipynb"
            put(sources[m.id], src_rel)
            put(learners[m.id], lrn_rel)
            tests = notebooks.tests_of(nbformat.read(str(sources[m.id]), as_version=4))
            g = gates[m.id]
            modules.append(
                {
                    **m.as_dict(),
                    "source": {"path": src_rel, "sha256": files[src_rel]},
                    "learner": {"path": lrn_rel, "sha256": files[lrn_rel]},
                    "tests": tests,
                    **points_of(m, tests),
                    "gate": {
                        "reference": "passed",
                        "reference_seconds": g.reference_seconds,
                        "learner": f"fails {len(g.learner_failed_tests)} of {len(g.learner_tests)} tests",
                        "learner_failed_tests": g.learner_failed_tests,
                        "learner_seconds": g.learner_seconds,
                        "checks": g.checks,
                        "learner_checks": g.learner_checks,
                    },
                }
            )
        manifest = {
            "schema": catalog.SCHEMA_RELEASE,
            "course": c.id,
            "title": c.title,
            "description": c.description,
            "version": version,
            "released": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "changelog": entry,
            "minutes": c.minutes,
            "modules": modules,
            "tools": _tool_versions(),
            "gate": {
                "lab": "started with lab_hardware.runtime.lab.up (3 devices)" if lab_home is None else "existing lab",
                "learner": GATE_LEARNER,
                "seconds": round(time.perf_counter() - t0, 1),
            },
            "files": files,
        }
        (stage / catalog.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        for rel in list(files) + [catalog.MANIFEST]:
            (stage / rel).chmod(0o444)  # a hint; read_release verifies the checksums
        final = catalog.release_dir(c, version)
        if final.exists():
            raise ReleaseError(f"{c.id} {version} was released by someone else meanwhile ({final})")
        os.rename(stage, final)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def points_of(module: catalog.Module, tests: list[dict]) -> dict:
    """A module's points as ``livelab grade`` scores them: its tests' (``points``, kept as it
    was in earlier manifests), each lab check's (``check_points``: name -> points) and both
    (``total_points``)."""
    tp = float(sum(t["points"] for t in tests))
    cp: dict[str, float] = {}
    if module.checks:
        from grading.checks.base import load_checks

        try:
            cp = {spec.name: float(spec.points) for spec in load_checks(module.checks)}
        except KeyError:  # an unknown check is reported by the release's input rules
            cp = {}
    return {"points": tp, "check_points": cp, "total_points": tp + sum(cp.values())}


def gate_summary(gate: list[ModuleGate]) -> list[dict]:
    return [asdict(g) for g in gate]
