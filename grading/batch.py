"""Fan grading out with Dask distributed: ``livelab grade <course> <module> <path>``.

* ``<course>``: an nbgrader course directory (``source/<module>/*.ipynb``) or a livelab course
  (a directory with ``course.toml``, or a course id under ``courses/``).
* ``<path>``: one notebook, an nbgrader ``submitted/`` tree
  (``submitted/<student>/<module>/*.ipynb``) or the course directory holding it.

The driver builds the private reference (once, cached), finds the submissions, skips those
whose content and release did not change since they were graded (a cache keyed by
``sha256(submission bytes + reference digest + checks)`` stored with the results), sends the
rest to Dask workers (a LocalCluster of processes by default, or ``--scheduler`` for an
existing cluster) and, as each result comes back, writes ``autograded/`` and ``feedback/``
(nbgrader's layout), the result JSON, the gradebook (here, one writer) and the events.

Why processes, one thread each: a worker grades one submission at a time and keeps the next
kernel starting (:class:`grading.sandbox.KernelPool`); two of them keep two cores busy.
Papermill and nbgrader are imported once per worker (``_warm``), not once per submission.
"""

from __future__ import annotations

from . import _fast_imports  # noqa: F401  (first: see its docstring)

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import Limits
from .reference import Reference, ReferenceError, build as build_reference
from .runner import RunOptions, Submission

log = logging.getLogger("livelab.grading.batch")

REPO = Path(__file__).resolve().parents[1]
CACHE_FORMAT = "livelab.grading-cache/v1"
#: The scheduler's HTTP server (health and metrics routes: it starts one even without a
#: dashboard) on a free port, not on 8787, where another cluster's made Dask warn "Port 8787 is
#: already in use" on every run.
NO_DASHBOARD = {"dashboard_address": "127.0.0.1:0"}


class GradeUsageError(ValueError):
    """Bad course, module or path: one line, exit code 2."""


# ---- what to grade against ---------------------------------------------------------------
@dataclass
class CourseTarget:
    kind: str  # "nbgrader" or "livelab"
    root: Path  # course directory
    module: str
    sources: list[Path]  # the module's source notebooks (one reference each)
    course_id: str
    version: str | None = None
    manifest: bytes | None = None
    module_meta: dict = field(default_factory=dict)


def resolve_course(course: str, module: str, version: str | None = None) -> CourseTarget:
    p = Path(course).expanduser()
    if not p.is_dir():
        cand = REPO / "courses" / course
        if cand.is_dir():
            p = cand
        else:
            raise GradeUsageError(
                f"course {course!r} not found: give an nbgrader course directory, "
                f"a directory with course.toml, or a course id under {REPO / 'courses'}"
            )
    p = p.resolve()
    src = p / "source" / module
    kind = "livelab" if (p / "course.toml").exists() else "nbgrader"
    manifest, meta = None, {}
    if kind == "nbgrader" and version:
        raise GradeUsageError(
            f"{p} is an nbgrader course without releases: --version applies to a "
            "livelab course (a directory with course.toml)"
        )
    if kind == "livelab":
        try:
            import tomllib

            toml = tomllib.loads((p / "course.toml").read_text())
        except (OSError, ValueError) as exc:
            raise GradeUsageError(f"{p / 'course.toml'} cannot be read: {exc}") from None
        released = _released_versions(p)
        if version is None:
            # the course's current version; while course.toml names a version being prepared
            # (not released yet), learners work on the newest release: grade against that
            current = str(toml.get("version") or toml.get("current_version") or "") or None
            version = current if current in released or not released else released[-1]
        for m in toml.get("modules", []) or []:
            if isinstance(m, dict) and m.get("id") == module:
                meta = m
        rel = p / "releases" / version if version else None
        if rel is not None and not rel.is_dir() and (p / "releases").is_dir():
            raise GradeUsageError(
                f"{p.name} has no release {version}: released versions are {', '.join(released) or 'none'}"
            )
        if rel and rel.is_dir():
            try:
                import tomllib

                toml = tomllib.loads((rel / "course.toml").read_text()) if (rel / "course.toml").exists() else toml
            except (OSError, ValueError):
                pass
            for m in toml.get("modules", []) or []:
                if isinstance(m, dict) and m.get("id") == module:
                    meta = m
            for name in ("manifest.json", "manifest.toml", "MANIFEST.json"):
                if (rel / name).exists():
                    manifest = (rel / name).read_bytes()
                    break
            for cand in (rel / "source" / module, rel / "grader" / module):
                if cand.is_dir() and list(cand.glob("*.ipynb")):
                    src = cand
                    break
    if not src.is_dir():
        have = sorted(d.name for d in (p / "source").iterdir() if d.is_dir()) if (p / "source").is_dir() else []
        raise GradeUsageError(f"module {module!r} not found in {p}: have {', '.join(have) or 'no modules'}")
    sources = sorted(x for x in src.glob("*.ipynb") if not x.name.startswith("."))
    if not sources:
        raise GradeUsageError(f"{src} holds no source notebook (.ipynb)")
    course_id = p.name
    if kind == "livelab":  # a release folder is named after its version: the id is in course.toml
        course_id = str(toml.get("id") or p.name)
    return CourseTarget(kind, p, module, sources, course_id, version, manifest, meta)


def _version_key(v: str) -> tuple:
    parts = []
    for x in v.replace("-", ".").split("."):
        parts.append((0, int(x), "") if x.isdigit() else (1, 0, x))
    return tuple(parts)


def _released_versions(course_dir: Path) -> list[str]:
    """The course's released versions, oldest first (release folders hold a manifest)."""
    rels = course_dir / "releases"
    if not rels.is_dir():
        return []
    return sorted((d.name for d in rels.iterdir() if d.is_dir() and (d / "manifest.json").exists()), key=_version_key)


# ---- what to grade -----------------------------------------------------------------------
def _course_content_dirs() -> list[str]:
    """The repository's course *content* folders (sources with hidden tests, releases): hidden
    from kernels.  ``courses/*.py`` stays visible: modules import it (e.g. courses.incidents)."""
    root = REPO / "courses"
    if not root.is_dir():
        return []
    return sorted(
        str(d) for d in root.iterdir() if d.is_dir() and not (d / "__init__.py").exists() and d.name != "__pycache__"
    )


def recorded_learner(path: Path, module: str, home: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """The learner a notebook records itself, and where that comes from: nbgrader's
    ``submitted/<student>/<module>/`` layout, or the learner home holding it
    (``labs.learners.learner_for_path``).  Never the file's name."""
    parts = path.parts
    if len(parts) >= 4 and parts[-2] == module and parts[-4] == "submitted":
        return parts[-3], f"it was submitted as {parts[-3]!r} (submitted/{parts[-3]}/{module}/)"
    try:
        from labs.learners import learner_for_path
    except ImportError:  # a lab without the learners registry: single-user
        learner_for_path = None
    if learner_for_path is not None:
        from lab_hardware.home import resolve

        try:
            who = learner_for_path(resolve(home), path)
        except Exception:  # noqa: BLE001 - no registry in this lab home
            who = None
        if who:
            return who, f"it lies in learner {who!r}'s home"
    return None, ""


def lab_owner(home: str | os.PathLike | None = None) -> str | None:
    """The single-user lab's owner (``owner`` in ``lab.json``), when no learner is registered."""
    from lab_hardware.home import DESCRIPTOR, resolve

    h = resolve(home)
    try:
        owner = json.loads((h / DESCRIPTOR).read_text()).get("owner")
    except (OSError, ValueError, AttributeError):
        return None
    try:
        from labs.learners import list_learners

        if list_learners(h):
            return None  # a team lab: each learner has a home, the owner is not the learner
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - no registry: single-user
        pass
    return owner if isinstance(owner, str) and owner else None


def check_student(name: str) -> str:
    """``--student``: a learner name (lab_hardware.topics.check_name), one line if not."""
    from lab_hardware.topics import TopicError, check_name

    try:
        return check_name("learner", name)
    except TopicError as exc:
        raise GradeUsageError(f"--student: {exc}") from None


def find_submissions(
    path: str, module: str, notebooks: list[str], *, student: str | None = None, home: str | os.PathLike | None = None
) -> tuple[list[Submission], list[str], Path | None]:
    """(submissions, skipped notes, nbgrader course dir holding them or None).

    The learner of a submission is its recorded identity (:func:`recorded_learner`); a
    ``student`` that contradicts it is refused.  A lone notebook without one is graded as
    ``student``, else as the single-user lab's owner (:func:`lab_owner`), else refused: a
    file name is never a learner."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GradeUsageError(f"{path} does not exist: give a notebook or a submitted/ tree")
    p = p.resolve()
    if student is not None:
        student = check_student(student)
    if p.is_file():
        recorded, how = recorded_learner(p, module, home)
        if recorded and student and student != recorded:
            raise GradeUsageError(f"--student {student} contradicts the notebook's own learner: {how}")
        who = recorded or student or lab_owner(home)
        if not who:
            raise GradeUsageError(
                f"{p.name} records no learner (not in submitted/<student>/{module}/ nor in a "
                "learner's home): pass --student NAME"
            )
        name = p.stem if p.stem in notebooks else notebooks[0]
        return [_load(p, who, module, name)], [], None
    root = p / "submitted" if (p / "submitted").is_dir() else p
    course_dir = root.parent if root.name == "submitted" else None
    subs, skipped = [], []
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if student is not None:  # the tree names its students: --student picks one of them
        dirs = [d for d in dirs if d.name == student]
        if not dirs:
            raise GradeUsageError(
                f"--student {student}: no such student under {root} (expected {root}/{student}/{module}/*.ipynb)"
            )
    for sdir in dirs:
        adir = sdir / module
        if not adir.is_dir():
            continue
        files = sorted(f for f in adir.iterdir() if f.is_file() and f.suffix == ".ipynb")
        if not files:
            skipped.append(f"{sdir.name}: no notebook in {adir}")
        for f in files:
            if f.stem not in notebooks:
                skipped.append(f"{sdir.name}: {f.name} is not a notebook of {module} ({', '.join(notebooks)})")
                continue
            subs.append(_load(f, sdir.name, module, f.stem))
    if not subs and not skipped:
        raise GradeUsageError(f"no submissions of {module!r} under {root} (expected {root}/<student>/{module}/*.ipynb)")
    return subs, skipped, course_dir


def _load(path: Path, student: str, module: str, notebook: str) -> Submission:
    ts = None
    tfile = path.parent / "timestamp.txt"
    if tfile.exists():
        ts = tfile.read_text().strip() or None
    return Submission(
        student=student, assignment=module, notebook=notebook, data=path.read_bytes(), path=str(path), timestamp=ts
    )


def cache_key(sub: Submission, ref: Reference, extra: str = "") -> str:
    """sha256 over the submission's bytes, the release reference digest, who submitted it
    (two learners may hand in identical files) and the checks' configuration."""
    h = hashlib.sha256()
    h.update(f"{sub.student}\0{sub.assignment}\0{sub.notebook}\0".encode())
    h.update(sub.data)
    h.update(ref.digest.encode())
    h.update(extra.encode())
    return h.hexdigest()


# ---- workers -----------------------------------------------------------------------------
def freeze_heap() -> int:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``),
    after collecting what is garbage already; returns how many objects are frozen.

    Called where a long-lived grading process has loaded what it keeps: the workers' fork
    server after its imports (its forks share those pages), each warm worker and the service
    after their warm-up.  Each full collection otherwise walks all of it -- 0.26 million objects in a
    worker, 0.25 in the service -- and writes to every object's header, so a forked worker
    copies those pages too: 0.2-0.3 s a collection, about 15 % of a warm worker's CPU and as much
    of the service's (measured with ``gc.callbacks`` over 180 submissions).  What is frozen is
    never collected: only call this on what the process keeps for its lifetime."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: the references this worker process has warmed already (a warm service's workers are asked
#: again at every run: the second time costs nothing)
_WARMED: set = set()


def _warm(opts: RunOptions, refs: list[Reference], lab: dict | bool | None = None, *, cpu: bool = False) -> dict:
    """Import the heavy modules, start this worker's first kernel, and run the sanitizers and
    the feedback template once (template compilation, gradebook reads), so the first
    submission costs what every other one does.  Once per worker and reference: a warm
    service's workers answer the next run's call at once.  (Lab modules start their
    kernels with their namespace: see grading.isolation; ``lab``, a run's lab configuration,
    also loads the module's checks and the scrubber's models they use.)  ``cpu``: with this
    worker's CPU totals so far (:func:`_cpu_worker`), a run's start for its accounting."""
    t0 = time.perf_counter()
    from . import runner

    def done() -> dict:
        return {"pid": os.getpid(), "seconds": time.perf_counter() - t0, **({"cpu": _cpu_worker()} if cpu else {})}

    if isinstance(lab, dict):
        _warm_checks(lab.get("checks") or [])
    if not lab:  # (a no-op when a kernel is ready already)
        runner.kernel_pool().prestart(runner.tests_config(opts))
    refs = [r for r in refs if ("ref", r.digest) not in _WARMED]
    if not refs:
        return done()
    import nbformat
    import papermill  # noqa: F401
    from . import engine, feedback  # noqa: F401
    from .reference import release_notebook

    for ref in refs:
        nb = nbformat.read(release_notebook(ref.ensure_local()), as_version=4)
        nb, _ = runner.sanitize(nb, ref, "warm-up")
        feedback.render(
            nb, {"score": 0.0, "max_score": ref.max_score, "notebook": ref.notebook, "cells": [], "messages": []}
        )
        _WARMED.add(("ref", ref.digest))
    return done()


def _warm_execute(opts: RunOptions, refs: list[Reference]) -> dict:
    """Grade each tests-only reference's own release notebook once, in full (sanitize, a
    kernel, the guard, scoring, feedback), on this worker: a long-lived worker's first run
    otherwise paid for what it had never run yet (the first ``livelab grade`` on a new
    service was 20-30 % slower per submission than the next, in every part).  Once per worker
    and reference; the grades are thrown away."""
    import nbformat
    from . import runner
    from .reference import release_notebook

    done = []
    for ref in refs:
        if ("execute", ref.digest) in _WARMED:
            continue
        _WARMED.add(("execute", ref.digest))
        data = nbformat.writes(nbformat.read(release_notebook(ref.ensure_local()), as_version=4)).encode()
        sub = runner.Submission("warm-up", ref.assignment, ref.notebook, data)
        _task(sub, ref, opts)  # as a run's task does (its retries and outcomes, imported now)
        done.append(ref.digest)
    return {"pid": os.getpid(), "graded": done}


def _warm_checks(names: list[str]) -> None:
    """Load the checks and what they load on first use: the scrubber's recognisers and name
    model (about 2 s the first time in a process) that the consent check reads payloads with."""
    from .checks.base import load_checks

    load_checks(names)
    if "consent" in names:
        from lab_hardware.modelops import scrub

        scrub.find("warm-up: Alice Martin, +1 415 555 0100, alice@example.com")


def _cpu_worker() -> dict:
    """CPU seconds of this worker process and of the kernels it closed (each counted when it
    was handed to be closed: nothing to wait for here)."""
    import psutil
    from . import sandbox

    me = psutil.Process().cpu_times()
    out = {"worker": me.user + me.system, "kernels": sandbox.KERNEL_CPU_SECONDS}
    fs = sandbox.ForkServer._instance
    if fs is not None and fs.proc.poll() is None:
        try:
            z = psutil.Process(fs.proc.pid).cpu_times()
            out["fork_server"] = z.user + z.system
        except psutil.Error:
            pass
    return out


def _cpu_totals(client, workers: list[dict] | None = None) -> dict[str, float]:
    """CPU seconds so far of this process (the driver) and of the workers, their kernels and
    their fork servers (for the benchmark's accounting); ``workers``: the workers' own
    totals, already asked for (:func:`_warm` with ``cpu``)."""
    import psutil

    me = psutil.Process().cpu_times()
    cpu = {"driver": me.user + me.system, "workers": 0.0, "kernels": 0.0, "fork_servers": 0.0}
    for w in workers if workers is not None else client.run(_cpu_worker).values():
        cpu["workers"] += w["worker"]
        cpu["kernels"] += w["kernels"]
        cpu["fork_servers"] += w.get("fork_server", 0.0)
    return cpu


def _shutdown_worker() -> None:
    """Close this worker's kernels and fork server before the cluster goes away."""
    from . import runner, sandbox

    if runner._POOL is not None:
        runner._POOL.close()
    if sandbox.ForkServer._instance is not None:
        sandbox.ForkServer._instance.close()
        sandbox.ForkServer._instance = None
    try:
        from .isolation import shutdown_worker_labs

        shutdown_worker_labs()
    except ImportError:
        pass


def _task(sub: Submission, ref: Reference, opts: RunOptions, lab: dict | None = None) -> dict:
    """Grade one submission on a worker; a failure of the grading machine (a kernel, namespace
    or fixture that did not come up) is retried here, and recorded as infrastructure-error
    if it persists (grading.outcomes)."""
    from . import runner
    from .outcomes import with_retries

    if lab is None:
        return with_retries(lambda: runner.grade(sub, ref, opts), sub, ref)
    from .isolation import grade_in_lab

    return with_retries(lambda: grade_in_lab(sub, ref, opts, lab), sub, ref)


# ---- the driver --------------------------------------------------------------------------
@dataclass
class BatchConfig:
    course: str
    module: str
    path: str
    out: str | None = None
    gradebook: str | None = None
    student: str | None = None
    scheduler: str | None = None
    workers: int = 2
    limits: Limits = field(default_factory=Limits)
    use_cache: bool = True
    progress: bool = True
    isolate: bool = True
    events: str | None = None  # events store (URL or lab home); None: default
    lab_home: str | None = None  # a running lab for lab modules
    checks: list[str] | None = None  # check names; None: the module's from course.toml
    seed: int = 0
    teams: dict[str, str] | None = None  # learner -> team, written on their events
    team: str | None = None  # the team of learners that ``teams`` does not name
    state: str | None = None  # grader state (private references); None: $LIVELAB_HOME/grading
    version: str | None = None  # a livelab course's release to grade against (default: current)
    attempt: int | None = None  # the learner's attempt number (lab.submit()), kept on events and results
    progress_lines: bool = False  # no terminal: one plain progress line per submission on stderr
    hide: list[str] | None = None  # paths kernels may not see, instead of the run's own (the service
    # gives the same list every run, so its prestarted kernels fit)
    prepared: bool = False  # the gradebook already has the assignment (the service's later runs)
    progress_sink: Any = None  # with progress_lines: a callable taking each line (the service's socket)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _safe(name: str) -> str:
    """A readable token (Dask keys); NOT injective: never a path (see :func:`path_id`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "_"


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def path_id(name: str) -> str:
    """The folder or file name of a student id or notebook, injectively (nbgrader's layout).

    The id itself where it is a safe path component (letters, digits, ``_``, ``-``, ``.``,
    not starting with a dot, at most 120 characters); otherwise a reversible encoding: ``%``
    and the id's UTF-8 bytes, each one outside ``[A-Za-z0-9_-]`` as ``%XX``.  Safe ids never
    contain ``%`` and encoded ones always start with it, so two ids never share a name; an id
    too long for a file name (over 200 bytes encoded) is ``%~`` and its sha256 (``~`` is never
    left as is by the encoding).
    """
    if name and len(name) <= 120 and not name.startswith(".") and all(c in _PLAIN for c in name):
        return name
    enc = "%" + "".join(chr(b) if chr(b) in _PLAIN and chr(b) != "." else f"%{b:02X}" for b in name.encode())
    if len(enc) > 200:
        return "%~" + hashlib.sha256(name.encode()).hexdigest()
    return enc


#: A submission whose grading took longer than this is logged with its phases (a stall of the
#: machine, not of the learner's code, shows in which phase it waited); the course's references
#: take 0.3-20 s each.
SLOW_SUBMISSION_S = 45.0


def slow_submission(results: list[dict], threshold: float | None = None) -> str | None:
    """One line naming the slowest submission and its phases, if it took over ``threshold`` s."""
    limit = SLOW_SUBMISSION_S if threshold is None else threshold
    timed = [r for r in results if (r.get("timings") or {}).get("total") is not None]
    if not timed:
        return None
    r = max(timed, key=lambda r: r["timings"]["total"])
    t = r["timings"]
    if t["total"] <= limit:
        return None
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(t.items(), key=lambda kv: -kv[1]) if k != "total")
    return f"slow submission: {r['student']} took {t['total']:.1f} s ({phases})"


class Driver:
    def __init__(self, cfg: BatchConfig):
        self.cfg = cfg
        self.target = resolve_course(cfg.course, cfg.module, cfg.version)
        names = [s.stem for s in self.target.sources]
        self.subs, self.skipped, self.sub_course = find_submissions(
            cfg.path, cfg.module, names, student=cfg.student, home=cfg.lab_home
        )
        if cfg.out:
            self.out = Path(cfg.out).expanduser().resolve()
        elif self.sub_course is not None:
            self.out = self.sub_course
        else:
            self.out = Path(cfg.path).expanduser().resolve().parent / "graded"
        self.work = self.out / "livelab-grading" / cfg.module
        self.work.mkdir(parents=True, exist_ok=True)
        if cfg.state:
            self.state = Path(cfg.state).expanduser().resolve()
        else:  # content-addressed references: one build per release, shared by every run
            from lab_hardware.home import resolve

            self.state = resolve(None) / "grading"
        self.db_url = (
            cfg.gradebook
            if cfg.gradebook and "://" in cfg.gradebook
            else (
                f"sqlite:///{Path(cfg.gradebook).resolve()}"
                if cfg.gradebook
                else f"sqlite:///{(self.sub_course or self.out) / 'gradebook.db'}"
            )
        )
        self.refs: dict[str, Reference] = {}
        for src in self.target.sources:
            try:
                self.refs[src.stem] = build_reference(src, cfg.module, self.state, manifest=self.target.manifest)
            except ReferenceError as exc:
                raise GradeUsageError(str(exc)) from None
        self.check_names = self._check_names()
        self.lab = self._lab_config()
        hide = {str(self.target.root), str(self.out), str(self.state)} | set(_course_content_dirs())
        if self.sub_course:
            hide.add(str(self.sub_course))
        p = Path(cfg.path).expanduser().resolve()
        hide.add(str(p if p.is_dir() else p.parent))
        if self.db_url.startswith("sqlite:///"):
            hide.add(str(Path(self.db_url[len("sqlite:///") :]).parent))
        if cfg.hide is not None:
            hide = set(cfg.hide)
        self.opts = RunOptions(limits=cfg.limits, hide=sorted(hide), isolate=cfg.isolate, seed=cfg.seed, network=False)
        self.cache_path = self.work / "cache.json"
        self.cache = self._load_cache() if cfg.use_cache else {}
        self.events_key = self._events_key()

    def _events_key(self) -> bytes | None:
        """The lab's events key, when grading for a lab: the events it writes then count."""
        from lab_hardware.home import resolve
        from .outcomes import events_key

        home = resolve(self.cfg.lab_home)
        if not (home / "config.json").exists():
            return None
        try:
            return events_key(home)
        except OSError:
            return None

    def team_of(self, student: str) -> str:
        return (self.cfg.teams or {}).get(student) or self.cfg.team or ""

    def _check_names(self) -> list[str]:
        if self.cfg.checks is not None:
            return list(self.cfg.checks)
        meta = self.target.module_meta
        names = meta.get("checks") or meta.get("grading_checks") or []
        return [n for n in names if isinstance(n, str)]

    def _lab_config(self) -> dict | None:
        if not self.check_names:
            return None
        from .checks.base import load_checks

        try:
            specs = load_checks(self.check_names)
        except KeyError as exc:
            raise GradeUsageError(str(exc).strip("'\"")) from None
        from lab_hardware.runtime import lab as _lab
        from lab_hardware.home import resolve

        home = resolve(self.cfg.lab_home)
        if not _lab.is_running(home):
            raise GradeUsageError(
                f"module {self.cfg.module!r} is graded against a live lab, and none is running "
                f"in {home}: start one with 'livelab up' (or pass --home)"
            )
        needs = [s for s in (self.target.module_meta.get("services") or []) if isinstance(s, str)]
        lacking = [s for s in needs if s not in _lab.service_names(home)]
        if lacking:
            raise GradeUsageError(
                f"module {self.cfg.module!r} needs the lab's {', '.join(lacking)}, which the lab in {home} "
                "does not run: start it with 'livelab up --oracle'"
            )
        return {
            "home": str(home),
            "module": self.cfg.module,
            "checks": self.check_names,
            "check_points": {s.name: s.points for s in specs},
            "seed": self.cfg.seed,
            "module_meta": dict(self.target.module_meta),
        }

    def _load_cache(self) -> dict:
        try:
            data = json.loads(self.cache_path.read_text())
            return data.get("entries", {}) if data.get("format") == CACHE_FORMAT else {}
        except (OSError, ValueError):
            return {}

    def _save_cache(self) -> None:
        _write_json(self.cache_path, {"format": CACHE_FORMAT, "entries": self.cache})

    def _key(self, sub: Submission) -> str:
        return cache_key(sub, self.refs[sub.notebook], ",".join(self.check_names))

    def _result_path(self, sub_or_res) -> Path:
        student = sub_or_res.student if isinstance(sub_or_res, Submission) else sub_or_res["student"]
        nb = sub_or_res.notebook if isinstance(sub_or_res, Submission) else sub_or_res["notebook"]
        att = f"__attempt-{self.cfg.attempt}" if self.cfg.attempt is not None else ""
        return self.work / "results" / path_id(student) / f"{path_id(nb)}{att}.json"

    # ---- writing ------------------------------------------------------------------------
    def _prepare_gradebook(self) -> None:
        from .gradebook import ensure_assignment

        checks = []
        if self.lab:
            from .checks.base import check_grade_id

            checks = [{"grade_id": check_grade_id(n), "points": p} for n, p in self.lab["check_points"].items()]
        for ref in self.refs.values():
            ensure_assignment(self.db_url, ref, checks)

    def _trail_grade(self, res: dict, evs: list[dict]) -> None:
        """The grade's lineage event in the lab's trail (docs/lineage.md), its learning events
        audited against the fields a grade declares.  Never fails the grade.

        The event is sent from one background thread, in order: waiting for the broker's
        acknowledgement of each (a round trip per submission) held up the driver's storing of
        the next result.  A transport failure is recorded by the trail itself (its failures
        file) and logged; the batch waits for the thread before it ends."""
        from lab_hardware.home import resolve
        from lab_hardware.modelops import lineage

        home = resolve(self.cfg.lab_home)
        if not (home / "config.json").exists():
            return  # grading for no lab: there is no lab trail to write (as with the events key)
        if getattr(self, "_lineage_pool", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            self._lineage_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lineage")
        course = f"{self.target.course_id or 'course'}@{self.target.version or '-'}"
        name = f"{course}/{res['assignment']}/{res['student']}/{res['notebook']}"
        observed = set().union(*(set(e) for e in evs)) if evs else set()
        details = {k: res.get(k) for k in ("status", "score", "max_score", "attempt")}

        def emit() -> None:
            try:
                if getattr(self, "_lineage", None) is None:
                    self._lineage = lineage.Trail(home)
                out = lineage.emit_artifact(
                    None,
                    "grade",
                    name,
                    privacy=lineage.grade_privacy(),
                    observed=observed,
                    messages=len(evs),
                    source="learning events",
                    details=details,
                    trail=self._lineage,
                )
                for f in out.failures:
                    log.warning("lineage event of %s not delivered: %s", name, f)
            except Exception as exc:  # noqa: BLE001 - the trail never fails a grade
                log.warning("lineage event of %s not emitted: %s", name, str(exc).splitlines()[0] if str(exc) else exc)

        self._lineage_pool.submit(emit)

    def _close_trail(self) -> None:
        pool = getattr(self, "_lineage_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._lineage_pool = None
        if getattr(self, "_lineage", None) is not None:
            self._lineage.close()
            self._lineage = None

    def _store(self, sub: Submission, res: dict) -> dict:
        from . import events
        from .outcomes import INFRA

        a, s, n = path_id(res["assignment"]), path_id(res["student"]), path_id(res["notebook"])
        if self.cfg.attempt is not None:
            res["attempt"] = self.cfg.attempt
        if res.get("status") == INFRA:  # no score: no gradebook row, no events, nothing cached
            slim = {k: v for k, v in res.items() if k not in ("executed", "feedback_html", "evidence")}
            _write_json(self._result_path(res), slim)
            return slim
        if res.get("executed"):
            p = self.out / "autograded" / s / a / f"{n}.ipynb"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(res["executed"])
        if res.get("feedback_html"):
            p = self.out / "feedback" / s / a / f"{n}.html"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(res["feedback_html"])
            res["feedback"] = str(p)
        try:
            self.writer.save(res)
            res["gradebook"] = self.db_url
        except Exception as exc:  # noqa: BLE001 - the result is kept; say why the gradebook is not
            res.setdefault("messages", []).append(f"gradebook not updated: {str(exc).splitlines()[0]}")
        evs = events.events_for(
            res, course=self.target.course_id, version=self.target.version, team=self.team_of(res.get("student", ""))
        )
        if self.cfg.attempt is not None:
            for e in evs:
                e["detail"] = {**(e.get("detail") or {}), "attempt": self.cfg.attempt}
                e["key"] = f"{e.get('key', '')}:attempt-{self.cfg.attempt}"
        if self.events_key is not None:
            from .outcomes import sign

            evs = sign(evs, self.events_key)
        res["events"] = self.recorder.record(evs)
        self._trail_grade(res, evs)
        for name, b64 in (res.get("evidence") or {}).items():
            import base64

            p = self.work / "evidence" / s / n / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(base64.b64decode(b64))
        slim = {k: v for k, v in res.items() if k not in ("executed", "feedback_html", "evidence")}
        _write_json(self._result_path(res), slim)
        self.cache[self._key(sub)] = {
            "student": res["student"],
            "notebook": res["notebook"],
            "score": res["score"],
            "max_score": res["max_score"],
            "result": str(self._result_path(res).relative_to(self.work)),
        }
        return slim

    # ---- running ------------------------------------------------------------------------
    def _client(self):
        from dask.distributed import Client, LocalCluster

        if self.cfg.scheduler:
            try:
                return Client(self.cfg.scheduler, timeout="10s"), None
            except (OSError, TimeoutError) as exc:
                raise GradeUsageError(
                    f"cannot reach the Dask scheduler at {self.cfg.scheduler}: {str(exc).splitlines()[0]}"
                ) from None
        from distributed.security import Security

        # TLS with throw-away certificates: lab kernels share the loopback network, and an
        # unauthenticated scheduler would run whatever a submission sent it.
        sec = Security.temporary()
        from . import forkserver

        with forkserver.configured():
            cluster = LocalCluster(
                n_workers=self.cfg.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                scheduler_kwargs=NO_DASHBOARD,
                silence_logs=logging.ERROR,
                security=sec,
                host="127.0.0.1",
                protocol="tls://",
                env=dict(os.environ),
            )
        return Client(cluster, security=sec), cluster

    def run(self, client=None) -> dict:
        """Grade; ``client``: a warm Dask client to use (the grading service's) instead of
        starting and stopping a cluster for this run."""
        t0 = time.perf_counter()
        todo, cached = [], []
        for sub in self.subs:
            entry = self.cache.get(self._key(sub))
            if entry and (self.work / entry["result"]).exists():
                cached.append(json.loads((self.work / entry["result"]).read_text()))
            else:
                todo.append(sub)
        timing: dict[str, float] = {}
        starter = None
        if todo:  # workers start (and import, and start their first kernel) meanwhile
            starter = _Starter(self, timing, client)
            starter.start()
        t = time.perf_counter()
        if not self.cfg.prepared:
            self._prepare_gradebook()
        timing["prepare"] = time.perf_counter() - t
        results: list[dict] = []
        if todo:
            results = self._grade(todo, timing, starter)
        self._save_cache()
        slow = slow_submission(results)
        if slow:
            log.warning("%s", slow)
        all_results = results + cached
        wall = time.perf_counter() - t0
        return {
            "course": self.target.course_id,
            "module": self.cfg.module,
            "version": self.target.version,
            "graded": len(results),
            "cached": len(cached),
            "skipped": self.skipped,
            "submissions": len(self.subs),
            "wall_seconds": wall,
            "timing": timing,
            "gradebook": self.db_url,
            "out": str(self.out),
            "results": sorted(
                (
                    {
                        "student": r["student"],
                        "notebook": r["notebook"],
                        "status": r["status"],
                        "score": r["score"],
                        "max_score": r["max_score"],
                        "messages": r.get("messages", []),
                        "limits_hit": r.get("limits_hit", []),
                    }
                    for r in all_results
                ),
                key=lambda r: (r["student"], r["notebook"]),
            ),
            "per_submission": [{"student": r["student"], "timings": r.get("timings", {})} for r in results],
            "isolation": next((r.get("isolation") for r in results if r.get("isolation")), {}),
        }

    def _grade(self, todo: list[Submission], timing: dict, starter: "_Starter") -> list[dict]:
        from dask.distributed import as_completed
        from .gradebook import Writer

        t = time.perf_counter()
        starter.join()
        timing["wait_for_workers"] = time.perf_counter() - t
        if starter.error is not None:
            raise starter.error
        client, cluster = starter.client, starter.cluster
        external = starter.external
        out: list[dict] = []
        self.writer = Writer(self.db_url)
        from .events import Recorder

        self.recorder = Recorder(self.cfg.events, self.work / "events.jsonl")
        try:
            t = time.perf_counter()
            futs = {}
            for sub in todo:
                fut = client.submit(
                    _task,
                    sub,
                    self.refs[sub.notebook],
                    self.opts,
                    self.lab,
                    pure=False,
                    retries=1,  # a worker lost mid-submission: once more elsewhere
                    key=f"grade-{_safe(sub.student)}-{_safe(sub.notebook)}-{os.urandom(4).hex()}",
                )
                futs[fut] = sub
            progress = (
                _progress(len(todo))
                if self.cfg.progress
                else (_lines(len(todo), self.cfg.progress_sink) if self.cfg.progress_lines else None)
            )
            try:
                for fut in as_completed(futs):
                    sub = futs[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # noqa: BLE001 - workers lost: the machine's failure, not a 0
                        from .outcomes import infra_result

                        res = infra_result(
                            sub,
                            self.refs[sub.notebook],
                            f"the grading worker was lost ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
                        )
                    out.append(self._store(sub, res))
                    if progress:
                        progress.advance(
                            f"{res['student']}: "
                            + (
                                f"{res['score']:g}/{res['max_score']:g}"
                                if res.get("score") is not None
                                else res.get("status", "?")
                            )
                        )
            finally:
                if progress:
                    progress.close()
            timing["grade"] = time.perf_counter() - t
        finally:
            self.writer.close()
            self.recorder.close()
            self._close_trail()
            t = time.perf_counter()
            parts = timing["close_parts"] = {}
            try:
                cpu = timing["cpu_seconds"] = _cpu_totals(client)
                start = timing.pop("cpu_seconds_at_start", None)
                if start is not None:  # this run's own (a warm service's totals include its past)
                    timing["cpu_seconds_run"] = {k: round(v - start.get(k, 0.0), 4) for k, v in cpu.items()}
            except Exception:  # noqa: BLE001 - accounting only
                pass
            parts["accounting"] = time.perf_counter() - t
            if external:  # the service's warm workers stay up for the next run
                timing["cluster_close"] = time.perf_counter() - t
                return out  # noqa: B012 - (added by make check's introduction: owner to review)
            try:
                client.run(_shutdown_worker)
            except Exception:  # noqa: BLE001 - workers may be gone already
                pass
            parts["shutdown_kernels"] = time.perf_counter() - t - parts["accounting"]
            t1 = time.perf_counter()
            client.close()
            parts["client_close"] = time.perf_counter() - t1
            if cluster is not None:
                t1 = time.perf_counter()
                cluster.close(timeout=10)
                parts["cluster_close"] = time.perf_counter() - t1
                from . import forkserver

                t1 = time.perf_counter()
                forkserver.stop()
                parts["forkserver_stop"] = time.perf_counter() - t1
            timing["cluster_close"] = time.perf_counter() - t
        return out


class _Starter(threading.Thread):
    """Starts the Dask cluster and warms its workers while the driver prepares the gradebook."""

    def __init__(self, driver: Driver, timing: dict, client=None):
        super().__init__(daemon=True, name="dask-starter")
        self.driver, self.timing = driver, timing
        self.client, self.cluster = client, None
        self.external = client is not None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t = time.perf_counter()
            if self.client is None:
                self.client, self.cluster = self.driver._client()
            self.timing["cluster_start"] = time.perf_counter() - t
            t = time.perf_counter()
            warm = self.client.run(_warm, self.driver.opts, list(self.driver.refs.values()), self.driver.lab, cpu=True)
            self.timing["warm"] = time.perf_counter() - t
            try:
                self.timing["cpu_seconds_at_start"] = _cpu_totals(self.client, [w["cpu"] for w in warm.values()])
            except Exception:  # noqa: BLE001 - accounting only
                pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver thread
            self.error = exc


class _progress:
    """A rich progress bar on stderr (quiet when stderr is not a terminal)."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(
            TextColumn("grading"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.p.start()
        self.task = self.p.add_task("", total=total)

    def advance(self, text: str) -> None:
        self.p.update(self.task, advance=1, description=text)

    def close(self) -> None:
        self.p.stop()


class _lines:
    """Progress without a terminal: one plain line per graded submission on stderr (for logs
    and CI, where a progress bar would be silent)."""

    def __init__(self, total: int, sink=None):
        import sys

        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.sink = sink or (lambda line: print(line, file=sys.stderr, flush=True))
        self.sink(f"grading {total} submission(s)")

    def advance(self, text: str) -> None:
        self.done += 1
        self.sink(f"[{self.done}/{self.total} {time.perf_counter() - self.t0:6.1f} s] {text}")

    def close(self) -> None:
        pass


def grade_many(cfg: BatchConfig) -> dict:
    """Grade everything ``cfg`` names; returns the summary (see :meth:`Driver.run`)."""
    return Driver(cfg).run()
