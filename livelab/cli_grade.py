"""``livelab grade <course> <module> <path>``: grade submissions (see grading.batch)."""

from __future__ import annotations

import json
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(sub) -> None:
    from livelab.common import float_range, int_range

    s = sub.add_parser(
        "grade",
        help="grade submissions with papermill in confined kernels, fanned out with Dask",
        description="Grade one notebook or an nbgrader submitted/ tree (submitted/<student>/<module>/*.ipynb) "
        "against a course's release: integrity restored with nbgrader, executed by papermill "
        "in a sandboxed 'livelab' kernel, scored with nbgrader, written to the gradebook, "
        "feedback as HTML. Lab modules are run in a fresh lab namespace each and judged by "
        "their checks.",
    )
    s.add_argument("course", help="nbgrader course directory, directory with course.toml, or a course id")
    s.add_argument("module", help="module (nbgrader assignment) id")
    s.add_argument("path", help="a notebook, a submitted/ tree, or the course directory holding it")
    s.add_argument(
        "--student",
        help="the learner of a single notebook that records none (not in "
        "submitted/<student>/ nor in a learner's home; default: the single-user "
        "lab's owner); with a submitted/ tree, grade only that student. A "
        "--student that contradicts the notebook's own learner is refused",
    )
    s.add_argument(
        "--out",
        help="where autograded/, feedback/ and results go (default: the course "
        "directory of the submissions, else <path>/../graded)",
    )
    s.add_argument(
        "--gradebook",
        help="gradebook database URL or SQLite file (default: gradebook.db "
        "of the submissions' course directory, else in --out)",
    )
    s.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="an existing Dask scheduler (default: a local cluster)"
    )
    s.add_argument(
        "--workers", type=int_range(1, 256, what="--workers"), default=2, help="local Dask worker processes (default 2)"
    )
    s.add_argument("--no-cache", action="store_true", help="grade again even if nothing changed")
    s.add_argument(
        "--cell-timeout",
        type=float_range(0, 86400, lo_open=True, what="--cell-timeout"),
        default=30.0,
        help="seconds per cell (default 30)",
    )
    s.add_argument(
        "--timeout",
        type=float_range(0, 86400, lo_open=True, what="--timeout"),
        default=300.0,
        help="seconds per notebook (default 300)",
    )
    s.add_argument(
        "--memory-mb",
        type=int_range(16, 2**20, what="--memory-mb"),
        default=1024,
        help="memory limit per kernel (default 1024)",
    )
    s.add_argument(
        "--max-processes",
        type=int_range(1, 100_000, what="--max-processes"),
        default=64,
        help="process limit per kernel (default 64)",
    )
    s.add_argument(
        "--output-bytes",
        type=int_range(1, 2**40, what="--output-bytes"),
        default=1_000_000,
        help="output limit per notebook",
    )
    s.add_argument("--checks", help="comma-separated lab checks (default: the module's, from course.toml)")
    s.add_argument("--events", help="events store (URL or lab home) for check events")
    s.add_argument(
        "--state", help="grader state directory: private release references (default: $LIVELAB_HOME/grading)"
    )
    s.add_argument(
        "--version",
        dest="release",
        help="the course release to grade against, whatever "
        "course.toml says (default: the course's current "
        "version, or its newest release while course.toml "
        "names a version not released yet)",
    )
    s.add_argument("--team", help="team of every learner graded (for per-team time-to-signal)")
    s.add_argument(
        "--teams",
        metavar="FILE",
        help="learners' teams: a CSV file with columns student,team "
        "(a header row is optional) or a JSON object "
        "{student: team}; wins over --team",
    )
    s.add_argument("--seed", type=int_range(0, 2**63 - 1, what="--seed"), default=0)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument(
        "--no-service",
        action="store_true",
        help="grade in this process even when the grading service ('livelab grader serve') runs",
    )
    s.set_defaults(fn=cmd_grade)


def _usage(msg: str) -> int:
    print(f"livelab grade: {msg}", file=sys.stderr)
    return EXIT_USAGE


def read_teams(path: str) -> dict[str, str]:
    """``--teams FILE``: {student: team} from a JSON object or a CSV file (student,team)."""
    import csv
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read --teams file {path}: {exc.__class__.__name__}: {exc}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--teams file {path} is not valid JSON: {exc}") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"--teams file {path}: every value must be a team name (a string)")
        return {k.strip(): v.strip() for k, v in data.items() if k.strip()}
    out: dict[str, str] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"--teams file {path}, line {n}: expected 'student,team', got {','.join(row)!r}")
        if n == 1 and [c.strip().lower() for c in row] == ["student", "team"]:
            continue
        out[row[0].strip()] = row[1].strip()
    if not out:
        raise ValueError(f"--teams file {path} names no student")
    return out


def _command_seconds() -> float:
    """Wall time of the whole command, from the process's start (interpreter start-up and
    imports included), not only of the grading inside it: the start tick from /proc against
    the clock it counts on (psutil's start time adds the boot time in whole seconds, up to a
    second too long)."""
    import os
    import time

    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        start_tick = int(stat[stat.rindex(b")") + 2 :].split()[19])
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_tick / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: psutil's, or since import
        try:
            import psutil

            return max(0.0, time.time() - psutil.Process().create_time())
        except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable
            return time.perf_counter()


def _via_service(args, teams, team, *, progress: bool) -> dict | None:
    """The summary from the running grading service, or None when none runs (or --home's lab
    has none)."""
    from pathlib import Path
    from livelab.cli_grader import use_service
    from livelab.common import home_of

    home = home_of(args)
    ab = lambda p: str(Path(p).expanduser().resolve()) if p else None  # noqa: E731 - the service's cwd differs
    course = args.course if not Path(args.course).expanduser().exists() else ab(args.course)
    config = {
        "course": course,
        "module": args.module,
        "path": ab(args.path),
        "out": ab(args.out),
        "gradebook": args.gradebook if args.gradebook and "://" in args.gradebook else ab(args.gradebook),
        "student": args.student,
        "use_cache": not args.no_cache,
        "events": args.events,
        "lab_home": str(home),
        "seed": args.seed,
        "state": ab(args.state),
        "version": args.release,
        "teams": teams,
        "team": team,
        "checks": [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None,
        "limits": {
            "cell_timeout": args.cell_timeout,
            "total_timeout": args.timeout,
            "memory_mb": args.memory_mb,
            "max_processes": args.max_processes,
            "output_bytes": args.output_bytes,
        },
    }
    summary = use_service(home, config, progress=progress)
    if summary is not None:
        summary["via_service"] = True
    return summary


def cmd_grade(args) -> int:
    if args.workers < 1:
        return _usage("--workers must be at least 1")
    for name in ("cell_timeout", "timeout", "memory_mb", "max_processes", "output_bytes"):
        if getattr(args, name) <= 0:
            return _usage(f"--{name.replace('_', '-')} must be positive")
    if args.scheduler and not args.scheduler.startswith(("tcp://", "tls://")):
        return _usage(f"--scheduler must look like tcp://HOST:PORT, not {args.scheduler!r}")
    teams = None
    if args.teams:
        try:
            teams = read_teams(args.teams)
        except ValueError as exc:
            return _usage(str(exc))
    team = (args.team or "").strip() or None
    tty = sys.stderr.isatty()
    show = not args.no_progress and not args.json
    summary = None
    if not args.scheduler and not args.no_service:  # a warm grading service does it in a fraction
        summary = _via_service(args, teams, team, progress=show)
    if summary is None:
        if not args.scheduler:  # local workers: their fork server preloads while the driver starts
            from grading import forkserver

            forkserver.start()
        from grading.batch import BatchConfig, GradeUsageError, grade_many
        from grading.limits import Limits

        limits = Limits(
            cell_timeout=args.cell_timeout,
            total_timeout=args.timeout,
            memory_mb=args.memory_mb,
            max_processes=args.max_processes,
            output_bytes=args.output_bytes,
        )
        cfg = BatchConfig(
            course=args.course,
            module=args.module,
            path=args.path,
            out=args.out,
            gradebook=args.gradebook,
            student=args.student,
            scheduler=args.scheduler,
            workers=args.workers,
            limits=limits,
            use_cache=not args.no_cache,
            progress=show and tty,
            progress_lines=show and not tty,
            events=args.events,
            lab_home=getattr(args, "home", None),
            checks=[c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None,
            seed=args.seed,
            state=args.state,
            version=args.release,
            teams=teams,
            team=team,
        )
        try:
            summary = grade_many(cfg)
        except GradeUsageError as exc:
            return _usage(str(exc))
    summary["command_seconds"] = _command_seconds()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from reports.text import printable  # names as text: no markup, no escape sequences from data

    con = Console(highlight=False)
    t = Table(
        title=Text(
            printable(
                f"{summary['course']} / {summary['module']}"
                + (f" {summary['version']}" if summary.get("version") else "")
            )
        )
    )
    for col in ("student", "notebook", "score", "status", "notes"):
        t.add_column(col)
    for r in summary["results"]:
        score = f"{r['score']:g} / {r['max_score']:g}" if r.get("score") is not None else "-"
        t.add_row(
            Text(printable(r["student"])),
            Text(printable(r["notebook"])),
            score,
            r["status"],
            Text(printable("; ".join(r["messages"][:3])[:160])),
        )
    con.print(t)
    for s in summary["skipped"]:
        con.print(Text(printable(f"skipped: {s}")))
    infra = sum(r["status"] == "infrastructure-error" for r in summary["results"])
    con.print(
        f"{summary['graded']} graded, {summary['cached']} unchanged (cached)"
        + (f", {infra} not graded (infrastructure error: the grading machine failed, not the work)" if infra else "")
        + f", {summary['command_seconds']:.1f} s"
        + (" (grading service)" if summary.get("via_service") else "")
        + f"; gradebook {summary['gradebook']}; feedback in {summary['out']}/feedback"
    )
    return EXIT_OK
