"""``livelab report ...``: time-to-signal for managers (Voila), for mail (static HTML), for a terminal.

    livelab report serve [--port P]             # Voila on 127.0.0.1, until Ctrl-C / SIGTERM
    livelab report export -o FILE [--csv FILE]  # one static HTML file that works offline; CSV
    livelab report tts [--json] [--learner L]   # median / p90 per course, version, module, team

Every action takes ``--include-system`` (system identities -- release gate, demo bots,
benchmarks -- are left out otherwise); ``tts`` and ``export`` take the page's filters too
(``--course --version --module --team --learner --since DAY --until DAY``, days in UTC, both
included).  Times are in minutes everywhere.  Events come from the lab home (``--home`` /
``$LIVELAB_HOME``) or ``--events-url`` / ``$LIVELAB_EVENTS_URL``.  A missing or unreachable
events database is bad input (exit 2, one line); no events yet is not an error: the report says
so.  Names from the events are printed as text (``rich.text.Text`` of
``reports.text.printable``): never as rich markup, never as terminal escape sequences.
"""

from __future__ import annotations

import datetime as _dt
import json
import time

from rich.table import Table
from rich.text import Text

from livelab.common import EXIT_FAIL, EXIT_OK, UsageError, console, err


def _source(args):
    return args.home, getattr(args, "events_url", None)


def _day(value: str | None, flag: str, end: bool = False) -> float | None:
    """A UTC day (YYYY-MM-DD) as seconds: its start, or (``end``) the start of the next day."""
    if value is None:
        return None
    try:
        d = _dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} takes a day as YYYY-MM-DD (UTC), not {value!r}") from None
    return _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp() + (86400 if end else 0)


def _selection(args) -> dict:
    """The page's filters from the command line, checked: names as every name is
    (``labs.names``), days as UTC dates, the range the right way round."""
    from labs import names

    f = {k: getattr(args, k, None) for k in ("course", "version", "module", "team", "learner")}
    try:
        names.check_all(f)
    except names.NameRefused as exc:
        raise UsageError(str(exc)) from None
    since, until = _day(getattr(args, "since", None), "--since"), _day(getattr(args, "until", None), "--until", True)
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until {args.until} is before --since {args.since}")
    return {**f, "since": since, "until": until, "include_system": bool(getattr(args, "include_system", False))}


def _t(value) -> Text:
    """A value from the events, for a rich table: literal text, no markup, no escape sequences."""
    from reports.text import printable

    return Text(printable(value))


def _guard(fn):
    """Bad input from the events layer becomes a one-line usage error (exit 2)."""

    def run(args):
        from labs.learning_events import EventError, EventStoreError
        from reports.static import ReportError

        try:
            return fn(args)
        except (EventStoreError, EventError, ReportError) as exc:
            raise UsageError(str(exc)) from None

    return run


@_guard
def cmd_serve(args) -> int:
    from reports import serve
    from reports.dashboard import ENV_INCLUDE_SYSTEM

    home, url = _source(args)
    env = {ENV_INCLUDE_SYSTEM: "1" if args.include_system else "0"}
    proc, address = serve.serve(home, args.port, url=url, env=env)
    console.print(f"time-to-signal report: [bold]{address}[/]  (Ctrl-C to stop; Voila log {proc.log_path})")
    code = EXIT_OK
    try:
        while proc.poll() is None:
            time.sleep(0.3)
        err.print(f"livelab: Voila exited by itself with code {proc.returncode} (log {proc.log_path})")
        code = EXIT_FAIL
    except KeyboardInterrupt:
        pass
    finally:
        serve.stop(proc)
    if code == EXIT_OK:
        console.print("report server stopped")
    return code


@_guard
def cmd_export(args) -> int:
    from reports import static
    from livelab.common import check_output

    home, url = _source(args)
    if not args.output and not args.csv:
        raise UsageError("report export needs -o FILE.html, --csv FILE.csv, or both")
    sel = _selection(args)
    for path, what in ((args.output, "report"), (args.csv, "CSV")):  # before any work: no stray file
        if path:
            check_output(path, what)
    if args.output:
        out = static.export(home, args.output, url=url, **sel)
        console.print(Text(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB, works offline)"))
    if args.csv:
        out = static.export_csv(home, args.csv, url=url, **sel)
        rows = max(0, out.read_text(encoding="utf-8").count("\n") - 1)
        console.print(Text(f"wrote {out} ({rows:,} rows, times in minutes)"))
    return EXIT_OK


@_guard
def cmd_tts(args) -> int:
    from reports import static, tts
    from reports.render import describe, label

    home, url = _source(args)
    sel = _selection(args)
    result, source, scope, excluded = static.selected(
        home, url=url, include_system=sel["include_system"], since=sel["since"], until=sel["until"]
    )
    filters = {"course": args.course, "version": args.version, "module": args.module, "team": args.team}
    if args.learner:
        return _learner(result, args.learner, filters, source, scope, args.json)
    # By default, group by every dimension the filters leave open.
    by = (
        [b for b in args.by.split(",") if b]
        if args.by
        else [b for b in tts.FILTERS if filters[b] is None] or ["course"]
    )
    for b in by:
        if b not in tts.FILTERS:
            raise UsageError(f"--by takes {', '.join(tts.FILTERS)} (comma-separated), not {b!r}")
    rows = result.table(by, **filters) if len(result) else []
    overall = result.summary(**filters) if len(result) else None
    if args.json:
        print(
            json.dumps(
                {
                    "source": source,
                    "events": result.events,
                    "filters": filters,
                    "skew_allowance_s": result.skew_allowance,
                    "overall": overall,
                    "rows": rows,
                    "scope": scope,
                    "include_system": sel["include_system"],
                },
                indent=2,
                sort_keys=True,
            )
        )
        return EXIT_OK
    if not len(result):
        console.print(
            _t(
                static.ONLY_SYSTEM.format(source=source)
                if excluded
                else f"no learning events yet in {source} ({scope})"
            )
        )
        return EXIT_OK
    if not rows:
        console.print(_t(f"no events match {describe(filters)} in {source}"))
        return EXIT_OK
    t = Table(title=_t(f"time to signal · {describe(filters)} · {source}"), caption=_t(scope))
    for b in by:
        t.add_column(b, no_wrap=True, overflow="ellipsis", min_width=5, max_width=40)
    for h in ("median min", "p90 min", "signal", "never", "skewed", "no open"):
        t.add_column(h, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            *[_t(label(r[b], b)) for b in by],
            _min(r["median"]),
            _min(r["p90"]),
            str(r["count"]),
            str(r["never_passed"]),
            str(r["skewed"]),
            str(r["no_open"]),
        )
    if overall and len(rows) > 1:
        t.add_section()
        t.add_row(
            *(["all"] + [""] * (len(by) - 1)),
            _min(overall["median"]),
            _min(overall["p90"]),
            str(overall["count"]),
            str(overall["never_passed"]),
            str(overall["skewed"]),
            str(overall["no_open"]),
        )
    console.print(t)
    return EXIT_OK


def _min(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def _learner(result, learner: str, filters: dict, source: str, scope: str, as_json: bool) -> int:
    """``report tts --learner L``: the drill-down -- L's modules, attempts, time to signal."""
    from reports.render import describe, label, when

    rows = result.drill_down(learner, **filters)
    if as_json:
        print(
            json.dumps(
                {"source": source, "learner": learner, "filters": filters, "scope": scope, "modules": rows},
                indent=2,
                sort_keys=True,
            )
        )
        return EXIT_OK
    if not rows:
        console.print(_t(f"no modules for learner {learner} ({describe(filters)}) in {source}"))
        return EXIT_OK
    t = Table(title=_t(f"learner {learner} · {describe(filters)} · {source}"), caption=_t(scope))
    names_ = [
        k for k in ("course", "version", "module", "team") if k != "course" or len({r["course"] for r in rows}) > 1
    ]
    for h in names_:
        t.add_column(h, no_wrap=True, overflow="ellipsis", max_width=40)
    for h in ("opened (UTC)", "TTS min", "status", "attempts", "passed", "failed"):
        t.add_column(
            h,
            no_wrap=True,
            min_width=len(h) if h != "opened (UTC)" else 16,
            justify="left" if h in ("opened (UTC)", "status") else "right",
        )
    for r in rows:
        t.add_row(
            *[_t(label(r[k], k)) for k in names_],
            when(r["opened"]).removesuffix(" UTC"),
            _min(r["tts"]),
            r["status"],
            str(r["attempts"]),
            f"{r['checks_passed']}/{r['checks_seen']}",
            str(r["failures"]),
        )
    console.print(t)
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="time-to-signal reports: serve (Voila), export (static HTML), tts (table)",
        description="Time to signal: first passing grading check minus the first opening of "
        "the module, per learner, module, course and curriculum version "
        "(reports/tts.py has the full definition).",
    )
    rs = p.add_subparsers(dest="report_command", metavar="ACTION")
    rs.required = True

    def common(s):
        s.add_argument(
            "--events-url",
            help="SQLAlchemy URL of the events store (default: $LIVELAB_EVENTS_URL, else <home>/events.sqlite)",
        )
        s.add_argument(
            "--include-system",
            action="store_true",
            help="include system identities (release gate runs, demo bots, benchmarks)",
        )

    def selection(s):
        s.add_argument("--course")
        s.add_argument("--version", help="curriculum version")
        s.add_argument("--module")
        s.add_argument("--team")
        s.add_argument("--learner", help="one learner: their modules, attempts and time to signal")
        s.add_argument("--since", metavar="DAY", help="modules first opened on or after DAY (YYYY-MM-DD, UTC)")
        s.add_argument("--until", metavar="DAY", help="modules first opened on or before DAY (YYYY-MM-DD, UTC)")

    s = rs.add_parser("serve", help="serve the dashboard with Voila on 127.0.0.1 until Ctrl-C")
    from livelab.common import int_range

    s.add_argument("--port", type=int_range(1, 65535, what="--port"), help="port (default: a free one)")
    common(s)
    s.set_defaults(fn=cmd_serve)

    s = rs.add_parser("export", help="write the report as one static HTML file that works offline, and/or CSV")
    s.add_argument("-o", "--output", help="HTML file to write")
    s.add_argument(
        "--csv",
        metavar="FILE",
        help="CSV of what the page shows (the summary table; with --learner, that learner's modules), times in minutes",
    )
    common(s)
    selection(s)
    s.set_defaults(fn=cmd_export)

    s = rs.add_parser("tts", help="median and p90 time to signal per course, version, module and team")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--by", help="dimensions to group by, comma-separated (default: those not filtered)")
    common(s)
    selection(s)
    s.set_defaults(fn=cmd_tts)
