"""Courses as content: ``course.toml``, ``CHANGELOG.md``, source notebooks and immutable releases.

A course is a hyphenated folder under ``courses/`` (content, not Python)::

    courses/<course-id>/
        course.toml                         id, title, version, ordered modules
        CHANGELOG.md                        one "## <version>" entry per released version
        source/<module-id>/<module-id>.ipynb  nbgrader source notebooks
        releases/<version>/                 written once by ``livelab course release``
            manifest.json                   checksums, minutes, points, gate results
            course.toml                     the course file as released
            learner/<module-id>/<module-id>.ipynb  what learners get (nbgrader's release version)
            source/<module-id>/<module-id>.ipynb   what grading restores locked cells from

Why strict: ``course.toml`` is read by the release gate, the grader (which checks decide a
module) and the reports (estimated minutes against actual minutes), so a typo must fail loudly
instead of silently dropping a check or a minute estimate.  Every problem is a
:class:`CourseError` with one line naming the file and what to change.

A release is immutable: :func:`read_release` verifies every file against the manifest's
sha256, so an edited release is refused rather than served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_hardware.modelops.bundle import BundleError, parse_version

#: Where the courses of this repository live (``$LIVELAB_COURSES_DIR`` or
#: ``livelab course --courses DIR`` override it).
COURSES_DIR = Path(__file__).resolve().parent
COURSE_FILE = "course.toml"
CHANGELOG = "CHANGELOG.md"
MANIFEST = "manifest.json"
SCHEMA_RELEASE = "livelab.course-release/v1"
#: Estimated minutes a module may take: micro-modules, not lectures.
MINUTES = (15, 30)
#: The grading checks modules may name (implemented in grading/checks/ under these names).
KNOWN_CHECKS = ("consent", "replay", "bundle", "observability", "oracle")
#: Lab services a module may need beyond the broker and the devices (``services`` in course.toml):
#: the release gate starts its lab with them, and the grader refuses a lab without them.
KNOWN_SERVICES = ("oracle",)

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOP = {
    "id": (str, True),
    "title": (str, True),
    "version": (str, True),
    "description": (str, False),
    "modules": (list, True),
}
_MODULE = {
    "id": (str, True),
    "title": (str, True),
    "minutes": (int, True),
    "objectives": (list, True),
    "scenario": (str, True),
    "checks": (list, True),
    "untidy": (list, False),
    "hints": (dict, False),
    "services": (list, False),
}


class CourseError(ValueError):
    """A course, changelog or release that is refused (one line: where and what to change)."""


@dataclass(frozen=True)
class Module:
    id: str
    title: str
    minutes: int
    objectives: tuple[str, ...]
    scenario: str
    checks: tuple[str, ...]
    root: Path  # the course folder
    #: how the grader starts the namespace (``grading/untidy.py``): what someone left behind
    untidy: tuple = ()
    #: exercise (solution cell grade_id) -> progressive hints (``lab.hint(name)``)
    hints: tuple = ()
    #: lab services the module needs beyond the devices (``KNOWN_SERVICES``, e.g. the oracle)
    services: tuple[str, ...] = ()

    @property
    def notebook(self) -> Path:
        """The nbgrader source notebook: ``source/<id>/<id>.ipynb``."""
        return self.root / "source" / self.id / f"{self.id}.ipynb"

    def as_dict(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "title": self.title,
            "minutes": self.minutes,
            "objectives": list(self.objectives),
            "scenario": self.scenario,
            "checks": list(self.checks),
        }
        if self.untidy:
            d["untidy"] = [dict(e) for e in self.untidy]
        if self.hints:
            d["hints"] = {k: list(v) for k, v in self.hints}
        if self.services:
            d["services"] = list(self.services)
        return d


@dataclass(frozen=True)
class Course:
    id: str
    title: str
    version: str
    description: str
    modules: tuple[Module, ...]
    root: Path

    @property
    def releases_dir(self) -> Path:
        return self.root / "releases"

    @property
    def minutes(self) -> int:
        return sum(m.minutes for m in self.modules)

    def module(self, module_id: str) -> Module:
        for m in self.modules:
            if m.id == module_id:
                return m
        raise CourseError(
            f"course {self.id} has no module {module_id!r}; modules: {', '.join(m.id for m in self.modules)}"
        )


# ---- course.toml -------------------------------------------------------------------------
def _type_name(t: type) -> str:
    return {"str": "a string", "int": "an integer", "list": "an array", "dict": "a table"}[t.__name__]


def _check_table(where: str, table: dict, schema: dict) -> None:
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise CourseError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(schema)}")
    for key, (typ, required) in schema.items():
        if key not in table:
            if required:
                raise CourseError(f"{where}: missing key {key!r}")
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise CourseError(f"{where}: {key!r} must be {_type_name(typ)}, not {type(value).__name__}")


def check_version(version: Any, where: str) -> str:
    """A semver 2.0.0 version, or a one-line CourseError."""
    try:
        parse_version(version)
    except BundleError:
        raise CourseError(f"{where}: version {version!r} is not semver 2.0.0 (e.g. 1.2.0)") from None
    return version


def _scenarios() -> list[str]:
    from labs import scenarios

    return scenarios.names()


def parse(raw: dict, path: Path) -> Course:
    """Validate a decoded ``course.toml`` (``path`` names it in messages and locates the course)."""
    where = str(path)
    _check_table(where, raw, _TOP)
    cid = raw["id"]
    if not _ID.match(cid):
        raise CourseError(f"{where}: id {cid!r} must be 1-63 lower-case letters, digits or '-'")
    if cid != path.parent.name:
        raise CourseError(f"{where}: id {cid!r} does not match its folder {path.parent.name!r}; rename one")
    if not raw["title"].strip():
        raise CourseError(f"{where}: title must not be empty")
    check_version(raw["version"], where)
    if not raw["modules"]:
        raise CourseError(f"{where}: a course needs at least one [[modules]] table")
    known_scenarios = _scenarios()
    modules, seen = [], set()
    for n, m in enumerate(raw["modules"], 1):
        if not isinstance(m, dict):
            raise CourseError(f"{where}: modules entry {n} must be a [[modules]] table")
        mwhere = f"{where} module {m.get('id', n)!r}" if isinstance(m.get("id"), str) else f"{where} module {n}"
        _check_table(mwhere, m, _MODULE)
        if not _ID.match(m["id"]):
            raise CourseError(f"{mwhere}: id must be 1-63 lower-case letters, digits or '-'")
        if m["id"] in seen:
            raise CourseError(f"{mwhere}: duplicate module id")
        seen.add(m["id"])
        lo, hi = MINUTES
        if not lo <= m["minutes"] <= hi:
            raise CourseError(
                f"{mwhere}: minutes = {m['minutes']} is outside {lo}-{hi}: a module is a "
                f"{lo}-{hi} minute micro-module (split it or fold it into another)"
            )
        if not m["objectives"] or not all(isinstance(o, str) and o.strip() for o in m["objectives"]):
            raise CourseError(f"{mwhere}: objectives must be a non-empty array of strings")
        if m["scenario"] not in known_scenarios:
            raise CourseError(
                f"{mwhere}: unknown scenario {m['scenario']!r}; available: {', '.join(known_scenarios) or 'none'}"
            )
        checks = m["checks"]
        if not checks or not all(isinstance(c, str) for c in checks):
            raise CourseError(f"{mwhere}: checks must be a non-empty array of check names")
        unknown = [c for c in checks if c not in KNOWN_CHECKS]
        if unknown:
            raise CourseError(f"{mwhere}: unknown check {unknown[0]!r}; known: {', '.join(KNOWN_CHECKS)}")
        if len(set(checks)) != len(checks):
            raise CourseError(f"{mwhere}: checks must not repeat a check")
        problems = untidy_problems(m.get("untidy"), f"{mwhere}: untidy")
        if problems:
            raise CourseError(problems[0])
        hints = m.get("hints") or {}
        bad = [
            k
            for k, v in hints.items()
            if not (isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v))
        ]
        if bad:
            raise CourseError(f"{mwhere}: hints.{bad[0]} must be a non-empty array of hint texts (first to last)")
        services = m.get("services") or []
        odd = [x for x in services if not isinstance(x, str) or x not in KNOWN_SERVICES]
        if odd or len(set(services)) != len(services):
            raise CourseError(
                f"{mwhere}: services must name lab services at most once each; known: {', '.join(KNOWN_SERVICES)}"
                + (f" (not {str(odd[0])[:40]!r})" if odd else "")
            )
        modules.append(
            Module(
                m["id"],
                m["title"],
                m["minutes"],
                tuple(m["objectives"]),
                m["scenario"],
                tuple(checks),
                path.parent,
                tuple(m.get("untidy") or ()),
                tuple((k, tuple(v)) for k, v in hints.items()),
                tuple(services),
            )
        )
    return Course(cid, raw["title"], raw["version"], raw.get("description", ""), tuple(modules), path.parent)


def untidy_problems(spec: Any, where: str) -> list[str]:
    """Problems with a module's ``untidy`` table (the grader's seeded start, grading/untidy.py)."""
    from grading.untidy import validate

    return validate(spec, where)


def default_root() -> Path:
    """``$LIVELAB_COURSES_DIR`` (shared with the reports), else this repository's ``courses/``."""
    env = os.environ.get("LIVELAB_COURSES_DIR")
    return Path(env) if env else COURSES_DIR


def _course_dir(course: str | Path, root: Path | None) -> Path:
    p = Path(course)
    if p.name == COURSE_FILE:
        return p.parent
    if p.is_dir() and (p / COURSE_FILE).exists():
        return p
    if isinstance(course, str) and "/" not in course and _ID.match(course):
        base = Path(root) if root is not None else default_root()
        d = base / course
        if (d / COURSE_FILE).exists():
            return d
        have = ", ".join(c.name for c in course_dirs(base)) or "none"
        raise CourseError(f"no course {course!r} in {base}; courses: {have}")
    raise CourseError(f"no course at {course}: expected a folder with a {COURSE_FILE}")


def course_dirs(root: Path | None = None) -> list[Path]:
    base = Path(root) if root is not None else default_root()
    return sorted(p.parent for p in base.glob(f"*/{COURSE_FILE}"))


def load(course: str | Path, *, root: Path | None = None, check_notebooks: bool = True) -> Course:
    """Load and validate a course by id (under ``root``) or path; every source notebook must exist."""
    d = _course_dir(course, root)
    path = d / COURSE_FILE
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CourseError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise CourseError(f"cannot read {path}: {exc.strerror}") from None
    c = parse(raw, path)
    if check_notebooks:
        for m in c.modules:
            if not m.notebook.is_file():
                raise CourseError(f"{path} module {m.id!r}: its source notebook {m.notebook} is missing")
    return c


# ---- CHANGELOG.md ------------------------------------------------------------------------
_ENTRY = re.compile(r"^##\s+\[?([^\]\s]+)\]?(.*)$")


def changelog(course: Course) -> dict[str, str]:
    """``version -> entry text`` from ``CHANGELOG.md`` ("## 1.1.0 - 2026-11-25" headings)."""
    path = course.root / CHANGELOG
    if not path.exists():
        return {}
    entries: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _ENTRY.match(line)
        if m:
            current = m.group(1)
            if current in entries:
                raise CourseError(f"{path}: version {current} has two entries")
            entries[current] = [line]
        elif current is not None:
            entries[current].append(line)
    return {v: "\n".join(lines).strip() for v, lines in entries.items()}


def changelog_entry(course: Course, version: str) -> str:
    """The entry for ``version``, which must exist and say something beyond its heading."""
    entry = changelog(course).get(version)
    path = course.root / CHANGELOG
    if entry is None:
        raise CourseError(
            f"{path} has no entry for {version}: add a '## {version}' section saying what changed before releasing it"
        )
    if len(entry.splitlines()) < 2 or not "".join(entry.splitlines()[1:]).strip():
        raise CourseError(f"{path}: the entry for {version} is empty: say what changed")
    return entry


# ---- releases ----------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def releases(course: Course) -> list[str]:
    """Released versions (folders with a manifest), oldest first by semver precedence."""
    d = course.releases_dir
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists():
            try:
                out.append((parse_version(p.name), p.name))
            except BundleError:
                continue
    return [v for _, v in sorted(out)]


def release_dir(course: Course, version: str) -> Path:
    return course.releases_dir / version


def read_release(course: Course, version: str, *, verify: bool = True) -> dict[str, Any]:
    """A release's manifest, after checking every file it lists against its sha256."""
    check_version(version, f"{course.id}")
    d = release_dir(course, version)
    path = d / MANIFEST
    if not path.exists():
        have = ", ".join(releases(course)) or "none yet"
        raise CourseError(f"{course.id} {version} is not released (released: {have})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise CourseError(f"{path} is not valid JSON ({exc})") from None
    if manifest.get("schema") != SCHEMA_RELEASE or manifest.get("version") != version:
        raise CourseError(f"{path} is not a {SCHEMA_RELEASE} manifest of version {version}")
    if verify:
        for rel, digest in sorted(manifest["files"].items()):
            f = d / rel
            if not f.is_file():
                raise CourseError(f"release {course.id} {version} is damaged: {rel} is missing")
            if sha256_file(f) != digest:
                raise CourseError(
                    f"release {course.id} {version} was modified after release: {rel} does "
                    "not match its checksum (releases are immutable: restore it from git)"
                )
    return manifest


def _cells(nb_path: Path) -> dict[str, dict]:
    """grade_id -> {source, points, kind} of a notebook's nbgrader cells."""
    nb = json.loads(Path(nb_path).read_text())
    out = {}
    for i, c in enumerate(nb["cells"]):
        meta = c.get("metadata", {}).get("nbgrader") or {}
        gid = meta.get("grade_id") or f"cell-{i}"
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        kind = (
            "test"
            if meta.get("grade") and not meta.get("solution")
            else "solution"
            if meta.get("solution")
            else "read-only"
            if meta.get("locked")
            else "other"
        )
        out[gid] = {"source": src, "points": meta.get("points"), "kind": kind, "position": i}
    return out


def diff(course: Course, v1: str, v2: str) -> dict[str, Any]:
    """What changed between two releases: modules, minutes, checks, points and cells by grade id."""
    a, b = read_release(course, v1), read_release(course, v2)
    ma = {m["id"]: m for m in a["modules"]}
    mb = {m["id"]: m for m in b["modules"]}
    out: dict[str, Any] = {
        "course": course.id,
        "from": v1,
        "to": v2,
        "added": [m for m in mb if m not in ma],
        "removed": [m for m in ma if m not in mb],
        "order_changed": [m for m in ma if m in mb] != [m for m in mb if m in ma],
        "modules": {},
    }
    for mid in [m for m in mb if m in ma]:
        x, y = ma[mid], mb[mid]
        ca = _cells(release_dir(course, v1) / x["source"]["path"])
        cb = _cells(release_dir(course, v2) / y["source"]["path"])
        change = {
            "title": [x["title"], y["title"]] if x["title"] != y["title"] else None,
            "minutes": [x["minutes"], y["minutes"]] if x["minutes"] != y["minutes"] else None,
            "checks_added": [c for c in y["checks"] if c not in x["checks"]],
            "checks_removed": [c for c in x["checks"] if c not in y["checks"]],
            "objectives_changed": x["objectives"] != y["objectives"],
            "points": [x["points"], y["points"]] if x["points"] != y["points"] else None,
            "cells_added": [g for g in cb if g not in ca],
            "cells_removed": [g for g in ca if g not in cb],
            "cells_changed": [
                g for g in cb if g in ca and _strip_version(cb[g]["source"]) != _strip_version(ca[g]["source"])
            ],
            "cells_moved": _moved(ca, cb),
            "tests_changed": [
                g
                for g in cb
                if g in ca
                and cb[g]["kind"] == "test"
                and (cb[g]["source"] != ca[g]["source"] or cb[g]["points"] != ca[g]["points"])
            ],
            "learner_notebook_changed": x["learner"]["sha256"] != y["learner"]["sha256"],
            # how the grader starts the lab, and the hints learners can open
            "untidy": [x.get("untidy") or [], y.get("untidy") or []]
            if (x.get("untidy") or []) != (y.get("untidy") or [])
            else None,
            "hints_changed": sorted(
                set(x.get("hints") or {}) ^ set(y.get("hints") or {})
                | {k for k in set(x.get("hints") or {}) & set(y.get("hints") or {}) if x["hints"][k] != y["hints"][k]}
            ),
        }
        change["changed"] = bool(
            change["title"]
            or change["minutes"]
            or change["checks_added"]
            or change["checks_removed"]
            or change["objectives_changed"]
            or change["points"]
            or change["cells_added"]
            or change["cells_removed"]
            or change["cells_changed"]
            or change["cells_moved"]
            or change["untidy"]
            or change["hints_changed"]
        )
        out["modules"][mid] = change
    out["changelog"] = {v: e for v, e in changelog(course).items() if _between(v, v1, v2)}
    return out


def _strip_version(src: str) -> str:
    """Cell source without the stamped version, so a release stamp alone is no change."""
    return re.sub(r'(?m)^(COURSE_VERSION = )".*"', r"\1...", src)


def _moved(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    """Cells both versions share that left their relative order: those outside the longest
    common subsequence of the shared cells (so one moved cell is one move, not a cascade)."""
    xs = [g for g in sorted(a, key=lambda g: a[g]["position"]) if g in b]
    ys = [g for g in sorted(b, key=lambda g: b[g]["position"]) if g in a]
    n, m = len(xs), len(ys)
    L = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            L[i][j] = L[i + 1][j + 1] + 1 if xs[i] == ys[j] else max(L[i + 1][j], L[i][j + 1])
    keep, i, j = set(), 0, 0
    while i < n and j < m:
        if xs[i] == ys[j]:
            keep.add(xs[i])
            i, j = i + 1, j + 1
        elif L[i + 1][j] >= L[i][j + 1]:
            i += 1
        else:
            j += 1
    return [g for g in ys if g not in keep]


def _between(v: str, lo: str, hi: str) -> bool:
    try:
        return parse_version(lo) < parse_version(v) <= parse_version(hi)
    except BundleError:
        return False


# ---- fetch -------------------------------------------------------------------------------
def fetch(course: Course, version: str | None = None, dest: Path | None = None) -> dict[str, Any]:
    """Place a release's learner notebooks in a workspace (``dest/<module>/<module>.ipynb``).

    Never overwrites a file that is already there: it may hold a learner's work.
    Returns the workspace, version and notebook paths.
    """
    rels = releases(course)
    if not rels:
        raise CourseError(
            f"{course.id} has no release yet: release one with 'livelab course release {course.id} {course.version}'"
        )
    version = version or rels[-1]
    manifest = read_release(course, version)
    dest = Path(dest) if dest is not None else Path.cwd() / f"{course.id}-{version}"
    src = release_dir(course, version)
    plan = [(src / m["learner"]["path"], dest / m["id"] / f"{m['id']}.ipynb") for m in manifest["modules"]]
    taken = [str(t) for _, t in plan if t.exists()]
    if taken:
        raise CourseError(f"{taken[0]} already exists (your work?): fetch into another --dest")
    if dest.exists() and not dest.is_dir():
        raise CourseError(f"{dest} exists and is not a folder: choose another --dest")
    for s, t in plan:
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s, t)
        t.chmod(0o644)
    info = {
        "course": course.id,
        "title": manifest["title"],
        "version": version,
        "modules": [
            {
                "id": m["id"],
                "title": m["title"],
                "minutes": m["minutes"],
                "notebook": f"{m['id']}/{m['id']}.ipynb",
                **({"hints": m["hints"]} if m.get("hints") else {}),
            }
            for m in manifest["modules"]
        ],
    }
    (dest / ".livelab-course.json").write_text(json.dumps(info, indent=2) + "\n")
    return {
        "workspace": str(dest),
        "version": version,
        "notebooks": [str(t) for _, t in plan],
        "kernel": kernel_installed(),
    }


def kernel_installed(name: str = "livelab") -> bool:
    """Whether Jupyter finds the kernelspec the notebooks ask for."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return False
    try:
        KernelSpecManager().get_kernel_spec(name)
        return True
    except NoSuchKernel:
        return False
