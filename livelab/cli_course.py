"""``livelab course ...``: list, show, release, diff and fetch versioned courses.

Thin commands over :mod:`courses.catalog` and :mod:`courses.release`.  Exit codes follow
livelab.cli: 0 ok, 1 the release gate failed (one line per problem, nothing released),
2 bad usage or bad input (one line per problem, nothing written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from livelab.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, UsageError, console, err, trail


def _root(args) -> Path | None:
    return Path(args.courses) if args.courses else None


def _print(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False)


def _problems(exc, prefix: str) -> None:
    for line in getattr(exc, "problems", None) or str(exc).splitlines():
        err.print(f"livelab: {prefix}{line}", markup=False, soft_wrap=True, highlight=False)


def _load(args):
    from courses import catalog

    try:
        return catalog.load(args.course, root=_root(args))
    except catalog.CourseError as exc:
        raise UsageError(str(exc)) from None  # printed as plain text by livelab.cli


def cmd_list(args) -> int:
    from courses import catalog

    rows = []
    for d in catalog.course_dirs(_root(args)):
        try:
            c = catalog.load(d)
            rows.append(
                {
                    "id": c.id,
                    "title": c.title,
                    "version": c.version,
                    "releases": catalog.releases(c),
                    "modules": len(c.modules),
                    "minutes": c.minutes,
                    "error": None,
                }
            )
        except catalog.CourseError as exc:
            rows.append(
                {
                    "id": d.name,
                    "title": "",
                    "version": "",
                    "releases": [],
                    "modules": 0,
                    "minutes": 0,
                    "error": str(exc),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        _print(f"no courses in {_root(args) or catalog.default_root()}")
        return EXIT_OK
    t = Table("course", "title", "version", "released", "modules", "minutes")
    for r in rows:
        if r["error"]:
            t.add_row(escape(r["id"]), f"[red]invalid: {escape(r['error'])}[/]", "", "", "", "")
        else:
            t.add_row(
                escape(r["id"]),
                escape(r["title"]),
                r["version"],
                ", ".join(r["releases"]) or "-",
                str(r["modules"]),
                str(r["minutes"]),
            )
    console.print(t)
    return EXIT_OK


def cmd_show(args) -> int:
    from courses import catalog

    c = _load(args)
    try:
        if args.version:
            m = catalog.read_release(c, args.version)
            modules = m["modules"]
            title, version, note = m["title"], m["version"], f"released {m['released']}"
        else:
            modules = [{**mod.as_dict(), "points": None} for mod in c.modules]
            title, version, note = c.title, c.version, "source (course.toml)"
        rels = catalog.releases(c)
        log = catalog.changelog(c)
    except catalog.CourseError as exc:
        raise UsageError(str(exc)) from None  # printed as plain text by livelab.cli
    if args.json:
        print(
            json.dumps(
                {
                    "course": c.id,
                    "title": title,
                    "version": version,
                    "modules": modules,
                    "releases": rels,
                    "changelog": log,
                },
                indent=2,
            )
        )
        return EXIT_OK
    _print(f"{c.id} {version} — {title} ({note})")
    t = Table("#", "module", "title", "minutes", "checks")
    for i, m in enumerate(modules, 1):
        t.add_row(str(i), escape(m["id"]), escape(m["title"]), str(m["minutes"]), ", ".join(m["checks"]))
    console.print(t)
    for m in modules:
        _print(f"{m['id']}:")
        for o in m["objectives"]:
            _print(f"  - {o}")
    _print(f"total {sum(m['minutes'] for m in modules)} minutes; released: {', '.join(rels) or 'none yet'}")
    for v in reversed(rels):
        first = (log.get(v) or "").splitlines()
        body = next((ln.strip("- ").strip() for ln in first[1:] if ln.strip()), "")
        _print(f"  {v}: {body}")
    return EXIT_OK


def cmd_release(args) -> int:
    from courses import catalog, release

    c = _load(args)

    def progress(msg: str) -> None:
        err.print(f"[dim]release {c.id} {args.version}:[/] {escape(msg)}", soft_wrap=True, highlight=False)

    try:
        m = release.release(
            c,
            args.version,
            lab_home=Path(args.lab_home) if args.lab_home else None,
            progress=progress,
            keep=Path(args.keep) if args.keep else None,
        )
    except release.GateFailed as exc:
        _problems(exc, "release gate failed: ")
        err.print(f"livelab: nothing was released ({c.id} {args.version})", markup=False)
        return EXIT_FAIL
    except catalog.CourseError as exc:
        _problems(exc, "error: ")
        return EXIT_USAGE
    from lab_hardware.modelops import lineage

    trail(  # a release holds course content, no learner's data: it declares no personal fields
        args,
        "course.release",
        f"{m['course']}@{m['version']}",
        privacy=lineage.Privacy("course release", (), None, None, True),
        details={
            "course": m["course"],
            "version": m["version"],
            "modules": [mod["id"] for mod in m["modules"]],
            "files": len(m["files"]),
            "dir": str(catalog.release_dir(c, args.version)),
        },
    )
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    t = Table(
        "module",
        "minutes",
        "points (tests + checks)",
        "reference run",
        "learner version as is",
        title=f"released {c.id} {args.version} → {catalog.release_dir(c, args.version)}",
    )
    for mod in m["modules"]:
        g = mod["gate"]
        checks = mod.get("check_points", 0)
        cpts = float(sum(checks.values())) if isinstance(checks, dict) else float(checks or 0)
        pts = mod.get("total_points", mod["points"] + cpts)
        t.add_row(
            escape(mod["id"]),
            str(mod["minutes"]),
            f"{pts:g} ({mod['points']:g} tests + {cpts:g} checks)",
            f"passed in {g['reference_seconds']:.1f} s",
            f"{g['learner']} ({', '.join(g['learner_failed_tests'])})",
        )
    console.print(t)
    return EXIT_OK


def cmd_check(args) -> int:
    from courses import release

    res = release.check(args.course, root=_root(args), version=args.version)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for line in res["problems"]:
            err.print(f"livelab: {line}", markup=False, soft_wrap=True, highlight=False)
        n = len(res["problems"])
        _print(
            f"{res['course']} {res['version'] or ''}: {n} problem{'s' if n != 1 else ''} in "
            f"{len(res['modules'])} module(s), {res['seconds']:.1f} s" + ("" if n else " - ready for the gate")
        )
    return EXIT_USAGE if res["problems"] else EXIT_OK


def cmd_preview(args) -> int:
    from courses import catalog, release

    c = _load(args)
    try:
        out = release.preview(c, args.module, Path(args.out) if args.out else None)
    except catalog.CourseError as exc:
        _problems(exc, "error: ")
        return EXIT_USAGE
    _print(f"{c.id} {args.module}, learner version: {out}")
    return EXIT_OK


def cmd_diff(args) -> int:
    from courses import catalog

    c = _load(args)
    try:
        d = catalog.diff(c, args.v1, args.v2)
    except catalog.CourseError as exc:
        raise UsageError(str(exc)) from None  # printed as plain text by livelab.cli
    if args.json:
        print(json.dumps(d, indent=2))
        return EXIT_OK
    _print(f"{c.id} {args.v1} → {args.v2}")
    if d["added"]:
        _print(f"  modules added: {', '.join(d['added'])}")
    if d["removed"]:
        _print(f"  modules removed: {', '.join(d['removed'])}")
    t = Table("module", "changed", "minutes", "checks", "points", "cells")
    for mid, ch in d["modules"].items():
        cells = []
        for key, label in (
            ("cells_added", "added"),
            ("cells_removed", "removed"),
            ("cells_changed", "changed"),
            ("cells_moved", "moved"),
        ):
            if ch[key]:
                cells.append(f"{label}: {', '.join(ch[key])}")
        if ch.get("untidy"):
            cells.append(
                "untidy start: " + (", ".join(f"{e['grant']} on {e['devices']}" for e in ch["untidy"][1]) or "none")
            )
        if ch.get("hints_changed"):
            cells.append(f"hints: {', '.join(ch['hints_changed'])}")
        checks = " ".join([f"+{x}" for x in ch["checks_added"]] + [f"-{x}" for x in ch["checks_removed"]])
        t.add_row(
            escape(mid),
            "yes" if ch["changed"] else "-",
            f"{ch['minutes'][0]} → {ch['minutes'][1]}" if ch["minutes"] else "",
            checks,
            f"{ch['points'][0]:g} → {ch['points'][1]:g}" if ch["points"] else "",
            escape("\n".join(cells)),
        )
    console.print(t)
    for entry in d["changelog"].values():
        _print(entry)
    return EXIT_OK


def cmd_fetch(args) -> int:
    from courses import catalog

    c = _load(args)
    try:
        res = catalog.fetch(c, args.version, Path(args.dest) if args.dest else None)
    except catalog.CourseError as exc:
        raise UsageError(str(exc)) from None  # printed as plain text by livelab.cli
    if args.json:
        print(json.dumps(res, indent=2))
        return EXIT_OK
    _print(f"{c.id} {res['version']} → {res['workspace']}")
    for nb in res["notebooks"]:
        _print(f"  {nb}")
    if res["kernel"]:
        _print(f"open it with: jupyter lab {res['workspace']}   (kernel 'livelab'; start a lab first: livelab up)")
    else:
        _print("the 'livelab' kernelspec is not installed: run 'livelab kernel install' before opening the notebooks")
    return EXIT_OK


def register(sub) -> None:
    """Add ``livelab course ...`` to the top-level subparsers."""
    p = sub.add_parser(
        "course",
        help="versioned courses: list, show, check, preview, release, diff, fetch",
        description="Courses are folders under courses/ (course.toml, CHANGELOG.md, nbgrader "
        "source notebooks). A release is immutable and gated on a live lab: every "
        "reference solution must pass, every learner version must fail as is. "
        "Exit codes: 0 ok, 1 the release gate failed, 2 bad input.",
    )
    p.add_argument(
        "--courses",
        metavar="DIR",
        help="folder holding the courses (default: $LIVELAB_COURSES_DIR, else this repository's courses/)",
    )
    cs = p.add_subparsers(dest="course_command", metavar="ACTION")
    cs.required = True

    s = cs.add_parser("list", help="courses, their current version and releases")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_list)

    s = cs.add_parser("show", help="a course's modules (minutes, checks, objectives) and releases")
    s.add_argument("course", help="course id, e.g. edge-ml-foundations")
    s.add_argument("--version", help="show a released version instead of the source")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_show)

    s = cs.add_parser(
        "release",
        help="build the learner version with nbgrader, gate it on a live lab, release",
        description="Builds the learner version with nbgrader generate_assignment, runs every "
        "reference solution and every learner version with papermill and the livelab "
        "kernel against a lab it starts, and writes courses/<course>/releases/<version>/ "
        "only if the gate passes. Needs a CHANGELOG.md entry for the version.",
    )
    s.add_argument("course", help="course id")
    s.add_argument("version", help="the version to release (must equal course.toml's version)")
    s.add_argument("--lab-home", metavar="DIR", help="gate against this running lab instead of starting one")
    s.add_argument("--keep", metavar="DIR", help="copy the gate's executed notebooks here")
    s.add_argument("--json", action="store_true", help="print the release manifest")
    s.set_defaults(fn=cmd_release)

    s = cs.add_parser(
        "check",
        help="the release's input rules and nbgrader's validation, no lab, every problem",
        description="Checks course.toml, the CHANGELOG entry, the version, every source notebook's "
        "nbgrader rules and hints, and builds the learner versions with nbgrader, listing "
        "every problem at once (exit 2 when there is any). Needs no lab.",
    )
    s.add_argument("course", help="course id or folder")
    s.add_argument("--version", help="the version to check for (default: course.toml's)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_check)

    s = cs.add_parser(
        "preview",
        help="render a module's learner version to HTML",
        description="Builds the module's learner version with nbgrader (solutions and hidden tests "
        "stripped) and renders it to one HTML file. Needs no lab.",
    )
    s.add_argument("course", help="course id or folder")
    s.add_argument("--module", required=True, help="module id, e.g. m1-telemetry")
    s.add_argument("--out", metavar="FILE", help="HTML file to write (default: ./<course>-<module>-preview.html)")
    s.set_defaults(fn=cmd_preview)

    s = cs.add_parser("diff", help="what changed between two releases (modules, minutes, checks, cells)")
    s.add_argument("course", help="course id")
    s.add_argument("v1")
    s.add_argument("v2")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_diff)

    s = cs.add_parser("fetch", help="place a released learner version in a workspace for JupyterLab")
    s.add_argument("course", help="course id")
    s.add_argument("--version", help="released version (default: the latest)")
    s.add_argument("--dest", metavar="DIR", help="workspace folder (default: ./<course>-<version>)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_fetch)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(EXIT_USAGE)
