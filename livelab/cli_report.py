"""``livelab report ...``: time-to-signal for managers (Voila), for mail (static HTML), for a terminal.

    livelab report serve [--port P]     # Voila on 127.0.0.1, until Ctrl-C / SIGTERM
    livelab report export -o FILE       # one static HTML file that works offline
    livelab report tts [--json]         # median / p90 per course, version, module, team

Events come from the lab home (``--home`` / ``$LIVELAB_HOME``) or ``--events-url`` /
``$LIVELAB_EVENTS_URL``.  A missing or unreachable events database is bad input (exit 2,
one line); no events yet is not an error: the report says so.
"""

from __future__ import annotations

import json
import time

from rich.table import Table

from livelab.common import EXIT_FAIL, EXIT_OK, UsageError, console, err


def _source(args):
    return args.home, getattr(args, "events_url", None)


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
    home, url = _source(args)
    proc, address = serve.serve(home, args.port, url=url)
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
    check_output(args.output, "report")  # before any work: no stray file for a bad path
    home, url = _source(args)
    out = static.export(home, args.output, url=url)
    console.print(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB, works offline)")
    return EXIT_OK


@_guard
def cmd_tts(args) -> int:
    from labs.learning_events import EventStore, display_url
    from reports import tts
    from reports.render import describe, label
    home, url = _source(args)
    with EventStore(home, url=url) as store:
        source = display_url(store.url)
        result = tts.compute(tts.EventTable.from_store(store))
    filters = {"course": args.course, "version": args.version, "module": args.module, "team": args.team}
    # By default, group by every dimension the filters leave open.
    by = [b for b in args.by.split(",") if b] if args.by else \
        [b for b in tts.FILTERS if filters[b] is None] or ["course"]
    for b in by:
        if b not in tts.FILTERS:
            raise UsageError(f"--by takes {', '.join(tts.FILTERS)} (comma-separated), not {b!r}")
    rows = result.table(by, **filters) if len(result) else []
    overall = result.summary(**filters) if len(result) else None
    if args.json:
        print(json.dumps({"source": source, "events": result.events, "filters": filters,
                          "skew_allowance_s": result.skew_allowance, "overall": overall, "rows": rows},
                         indent=2, sort_keys=True))
        return EXIT_OK
    if not len(result):
        console.print(f"no learning events yet in {source}")
        return EXIT_OK
    if not rows:
        console.print(f"no events match {describe(filters)} in {source}")
        return EXIT_OK
    t = Table(title=f"time to signal · {describe(filters)} · {source}")
    for b in by:
        t.add_column(b, no_wrap=True, overflow="ellipsis", min_width=5)
    for h in ("median min", "p90 min", "signal", "never", "skewed", "no open"):
        t.add_column(h, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(*[label(r[b], b) for b in by], _min(r["median"]), _min(r["p90"]),
                  str(r["count"]), str(r["never_passed"]), str(r["skewed"]), str(r["no_open"]))
    if overall and len(rows) > 1:
        t.add_section()
        t.add_row(*(["all"] + [""] * (len(by) - 1)), _min(overall["median"]),
                  _min(overall["p90"]), str(overall["count"]), str(overall["never_passed"]),
                  str(overall["skewed"]), str(overall["no_open"]))
    console.print(t)
    return EXIT_OK


def _min(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def register(sub) -> None:
    p = sub.add_parser("report", help="time-to-signal reports: serve (Voila), export (static HTML), tts (table)",
                       description="Time to signal: first passing grading check minus the first opening of "
                                   "the module, per learner, module, course and curriculum version "
                                   "(reports/tts.py has the full definition).")
    rs = p.add_subparsers(dest="report_command", metavar="ACTION")
    rs.required = True

    def common(s):
        s.add_argument("--events-url", help="SQLAlchemy URL of the events store "
                                            "(default: $LIVELAB_EVENTS_URL, else <home>/events.sqlite)")

    s = rs.add_parser("serve", help="serve the dashboard with Voila on 127.0.0.1 until Ctrl-C")
    from livelab.common import int_range
    s.add_argument("--port", type=int_range(1, 65535, what="--port"), help="port (default: a free one)")
    common(s)
    s.set_defaults(fn=cmd_serve)

    s = rs.add_parser("export", help="write the report as one static HTML file that works offline")
    s.add_argument("-o", "--output", required=True, help="HTML file to write")
    common(s)
    s.set_defaults(fn=cmd_export)

    s = rs.add_parser("tts", help="median and p90 time to signal per course, version, module and team")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--course")
    s.add_argument("--version", help="curriculum version")
    s.add_argument("--module")
    s.add_argument("--team")
    s.add_argument("--by", help="dimensions to group by, comma-separated (default: those not filtered)")
    common(s)
    s.set_defaults(fn=cmd_tts)
