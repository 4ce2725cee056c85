"""HTML fragments shared by the Voila dashboard and the static export.

One place decides how a number is shown (``tts.fmt_duration``: minutes, the one unit of every
table, plot axis and CSV header) and which CSS classes carry it (``tts-median``, ``tts-p90``,
``tts-count``, ...), so that the served report, the mailed file and the browser tests agree.
Every value element also carries the raw number (``data-seconds`` / ``data-count``) for machines.

Names come from learners' and authors' hands: everything shown is HTML-escaped here
(:func:`e`); :func:`reports.text.printable` makes a name safe for a terminal (no escape sequences, no
rich markup when printed as a ``rich.text.Text``).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any, Mapping, Sequence

from reports import plots
from reports.tts import FUNNEL, UNIT, TTSResult, fmt_duration, minutes, version_key

ALL = "(all)"
NUMBERS = (
    ("tts-median", "median time to signal", "median"),
    ("tts-p90", "p90 time to signal", "p90"),
    ("tts-count", "learner x module with a signal", "count"),
    ("tts-never-passed", "opened, never passed", "never_passed"),
    ("tts-skewed", "excluded: clock skew / no opening", "skewed"),
)

CSS = """
.tts-report { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; max-width: 1320px; }
.tts-report h1 { font-size: 1.5em; margin: 0.2em 0; } .tts-report h2 { font-size: 1.1em; margin: 1em 0 0.3em; }
.tts-source { color: #666; font-size: 0.85em; }
.tts-numbers { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0; }
.tts-number { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 150px; background: #fafafa; }
.tts-label { font-size: 0.8em; color: #666; } .tts-value { font-size: 1.6em; font-weight: 600; }
.tts-message { background: #fff7e0; border: 1px solid #f0d58a; border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.tts-message:empty { display: none; }
.tts-empty { color: #777; font-style: italic; padding: 12px; }
.tts-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 10px; }
.tts-plot-img { max-width: 100%; height: auto; }
table.tts-table { border-collapse: collapse; font-size: 0.85em; margin: 4px 0 10px; }
table.tts-table th, table.tts-table td { border-bottom: 1px solid #e5e5e5; padding: 3px 8px; text-align: right;
  white-space: nowrap; line-height: 1.3; }
table.tts-table th { white-space: normal; vertical-align: bottom; }
.tts-panel { overflow-x: auto; min-width: 0; }
table.tts-table th { background: #f3f3f3; } table.tts-table td.t, table.tts-table th.t { text-align: left; }
.tts-definition { font-size: 0.85em; color: #444; max-width: 900px; }
.tts-scope { font-size: 0.85em; color: #444; margin: 4px 0; }
.tts-simulated { background: #eef3ff; border: 1px solid #9db4e8; border-radius: 6px; padding: 6px 12px; margin: 6px 0; }
.tts-learner h2 { margin-top: 0.6em; }
"""

DEFINITION = (
    "Time to signal = first passing check a learner asked for minus the first opening of the module "
    "(per learner, module, course and curriculum version), in minutes. Re-opening does not reset the "
    "clock; a pass up to {skew:g} min before the opening (writer clock skew) counts as 0, further "
    "before it is excluded and counted; learners who never passed have no time to signal. "
    "System identities (release gate, demo bots, benchmarks) are left out unless included."
)
#: Said wherever system identities are included: their times are not people's.
SIMULATED = (
    "Includes system identities (release gate runs, demo bots, benchmarks): their times are "
    "simulated -- machines working through modules, not people learning."
)


def e(x: Any) -> str:
    return html.escape(str(x))


def day(t: float | None) -> str:
    """A UTC date for the page (date ranges)."""
    return "–" if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d")


def scope(
    since: float | None = None,
    until: float | None = None,
    include_system: bool = False,
    excluded: int = 0,
    filters: Mapping[str, Any] | None = None,
    *,
    verified: bool | None = None,
    unverified: int = 0,
) -> str:
    """One sentence saying what a page covers: date range, system identities, export filters,
    and (``verified`` not None) whether outcome events were checked against the lab's key."""
    if since is None and until is None:
        when = "every date"
    elif until is None:
        when = f"modules opened from {day(since)}"
    elif since is None:
        when = f"modules opened before {day(until)}"
    else:
        when = f"modules opened from {day(since)} to {day(until - 1)}"
    who = (
        "system identities included"
        if include_system
        else f"system identities left out ({excluded:,} learner × module)"
        if excluded
        else "no system identities"
    )
    sel = describe({k: v for k, v in (filters or {}).items() if v is not None})
    out = f"Covers {when}; {sel if filters and sel != 'all events' else 'all learners'}; {who}."
    if verified is None:
        return out
    return out + " " + trust(verified, unverified)


def trust(verified: bool, unverified: int) -> str:
    """Whether the passes and completions shown were written by the lab's grader."""
    if not verified:
        return (
            "Passes and completions are not checked: there is no lab events key beside these "
            "events (run the report on the lab's machine, or set LIVELAB_HOME)."
        )
    if unverified:
        return (
            f"{unverified:,} pass/fail/completion event(s) not signed by the lab's grader "
            "(forged or altered) are left out."
        )
    return "Every pass and completion was signed by the lab's grader."


def label(value: str | None, name: str = "") -> str:
    if value is None:
        return ALL
    if value == "":
        return f"(no {name})" if name else "(none)"
    return value


def describe(filters: Mapping[str, str | None]) -> str:
    parts = [f"{k} {label(v, k)}" for k, v in filters.items() if v is not None]
    return ", ".join(parts) if parts else "all events"


def number_html(cls: str, title: str, summary: Mapping[str, Any] | None, key: str) -> str:
    """Inner HTML of one number tile (``summary`` None: no data)."""
    v = None if summary is None else summary.get(key)
    if key in ("median", "p90"):
        data = "" if v is None else f"{v:.3f}"  # seconds, for machines; shown in minutes
        shown = fmt_duration(v)
        attr = f'data-seconds="{data}"'
    else:
        if key == "skewed" and summary is not None:
            v = summary["skewed"] + summary["no_open"]
        data = "" if v is None else str(int(v))
        shown = "–" if v is None else f"{int(v):,}"
        attr = f'data-count="{data}"'
    return f'<div class="tts-label">{e(title)}</div><div class="tts-value" {attr}>{e(shown)}</div>'


def numbers_html(summary: Mapping[str, Any] | None) -> dict[str, str]:
    return {cls: number_html(cls, title, summary, key) for cls, title, key in NUMBERS}


def _cell(v: Any, *, dur: bool = False, text: bool = False) -> str:
    if dur:
        m = minutes(v)
        return f"<td>{'–' if m is None else f'{m:,.1f}'}</td>"
    if isinstance(v, float):
        return f"<td>{'–' if math.isnan(v) else f'{v:,.1f}'}</td>"
    if v is None:
        return "<td>–</td>"
    return f'<td class="t">{e(v)}</td>' if text else f"<td>{e(v)}</td>"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]], cls: str) -> str:
    """``columns``: (key, header, how) with how in text|int|dur|float."""
    if not rows:
        return plots.note("Nothing to list for this selection.")
    if len({r.get("course") for r in rows}) == 1:  # one course: the column would say nothing
        columns = [c for c in columns if c[0] != "course"]
    head = "".join(f'<th class="{"t" if how == "text" else ""}">{e(header(h, how))}</th>' for _, h, how in columns)
    body = []
    for r in rows:
        cells = []
        for key, _, how in columns:
            v = r.get(key)
            if how == "text":
                cells.append(_cell(label(v, key) if v is not None else "–", text=True))
            elif how == "dur":
                cells.append(_cell(v, dur=True))
            elif how == "float":
                cells.append(_cell(None if v is None else float(v)))
            elif how == "when":
                cells.append(f"<td>{e(when(v))}</td>")
            else:
                cells.append(_cell(v))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="tts-table {cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def header(h: str, how: str) -> str:
    """A column header; times say their unit (minutes, everywhere)."""
    return f"{h} ({UNIT})" if how == "dur" else h


def when(t: float | None) -> str:
    return "–" if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


SUMMARY_COLS = [
    ("course", "course", "text"),
    ("version", "version", "text"),
    ("module", "module", "text"),
    ("team", "team", "text"),
    ("median", "median", "dur"),
    ("p90", "p90", "dur"),
    ("count", "with signal", "int"),
    ("never_passed", "never passed", "int"),
    ("skewed", "skewed", "int"),
    ("no_open", "no opening", "int"),
]
TREND_COLS = [
    ("course", "course", "text"),
    ("module", "module", "text"),
    ("version", "version", "text"),
    ("median", "median", "dur"),
    ("p90", "p90", "dur"),
    ("count", "with signal", "int"),
    ("never_passed", "never passed", "int"),
]
FUNNEL_COLS = [("course", "course", "text"), ("version", "version", "text"), ("module", "module", "text")] + [
    (s, s, "int") for s, _ in FUNNEL
]
ESTIMATE_COLS = [
    ("course", "course", "text"),
    ("version", "version", "text"),
    ("module", "module", "text"),
    ("completed", "completed", "int"),
    ("median_minutes", "actual median (min)", "float"),
    ("p90_minutes", "actual p90 (min)", "float"),
    ("estimated_minutes", "estimated (min)", "float"),
    ("ratio", "actual / estimated", "float"),
]
DRILL_COLS = [
    ("course", "course", "text"),
    ("version", "version", "text"),
    ("module", "module", "text"),
    ("team", "team", "text"),
    ("opened", "opened", "when"),
    ("tts", "time to signal", "dur"),
    ("status", "status", "text"),
    ("attempts", "attempts", "int"),
    ("checks_passed", "checks passed", "int"),
    ("checks_seen", "checks tried", "int"),
    ("failures", "failed results", "int"),
    ("completed", "completed", "when"),
]
CHECK_COLS = [
    ("course", "course", "text"),
    ("version", "version", "text"),
    ("module", "module", "text"),
    ("check", "check", "text"),
    ("median", "median to first pass", "dur"),
    ("p90", "p90", "dur"),
    ("passed", "learners passed", "int"),
    ("fails", "failures", "int"),
    ("learners_failed", "learners who failed", "int"),
]


#: The devices' micro-SLOs (docs/slo.md), one row per objective of each device's active bundle.
SLO_COLS = [
    ("namespace", "namespace", "text"),
    ("device", "device", "text"),
    ("bundle", "bundle", "text"),
    ("slo", "objective", "text"),
    ("indicator", "indicator", "text"),
    ("budget", "budget left", "text"),
    ("page", "page burn (long)", "text"),
    ("ticket", "ticket burn (long)", "text"),
    ("firing", "firing", "text"),
]


def slo_rows(devices: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Rows of the *Device SLOs* table from a lab's device statuses (``livelab status --json``'s
    ``devices``, each with its ``slo``: the bundle and, per objective, ``budget_remaining`` and
    the page/ticket burn rates); devices whose active model declares none are left out."""
    rows = []
    for d in devices:
        slo = d.get("slo") if isinstance(d, Mapping) else None
        if not isinstance(slo, Mapping):
            continue
        for o in slo.get("objectives") or []:
            burn = o.get("burn") or {}
            firing = [k for k in ("page", "ticket") if (burn.get(k) or {}).get("firing")]
            rows.append(
                {
                    "namespace": d.get("namespace") or "",
                    "device": d.get("name") or d.get("device") or "?",
                    "bundle": str(slo.get("bundle") or "")[:12],
                    "slo": o.get("name"),
                    "indicator": o.get("indicator"),
                    "budget": f"{o['budget_remaining']:.2f}"
                    if isinstance(o.get("budget_remaining"), (int, float))
                    else "–",
                    "page": _burn((burn.get("page") or {}).get("long")),
                    "ticket": _burn((burn.get("ticket") or {}).get("long")),
                    "firing": ", ".join(firing) or "no",
                }
            )
    return rows


def _burn(v: Any) -> str:
    return f"{v:g}x" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def slo_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The *Device SLOs* section: error budget left and burn rates per device and objective."""
    if not rows:
        return ""
    cols = SLO_COLS if len({r["namespace"] for r in rows}) > 1 else SLO_COLS[1:]
    return (
        "<h2>Device SLOs</h2>"
        '<p class="tts-source">Each device\'s objectives as it reports them now: the error budget left '
        "(1 untouched, 0 spent, below 0 overspent) and the burn rates over the alerts' long windows "
        "(docs/slo.md).</p>" + table(rows, cols, "tts-slo-table")
    )


def _ratio_fmt(rows: list[dict]) -> list[dict]:
    return [{**r, "ratio": None if r["ratio"] is None else round(r["ratio"], 2)} for r in rows]


def sections(
    result: TTSResult, estimates: Mapping, filters: Mapping[str, str | None], *, checks_limit: int = 12
) -> dict[str, str]:
    """Every plot and table of the report for one selection, as HTML fragments by name."""
    f = dict(filters)
    summ = result.summary(**f)
    no_version = {**f, "version": None}
    series = {}
    for ver in result.options("version"):
        if f.get("version") not in (None, ver):
            continue
        vals = result.values(**{**f, "version": ver})
        if len(vals):
            series[ver] = vals
    trend_rows = result.trend(by_module=True, **no_version)
    funnel_rows = result.funnel(**f)
    est_rows = _ratio_fmt(result.minutes_vs_estimate(estimates, **f))
    check_rows = result.slowest_checks(checks_limit, **f)
    return {
        "distribution": plots.distribution(series, summ["median"], summ["p90"]),
        "trend": plots.trend(trend_rows),
        "trend_table": table(
            result.trend(**no_version), [c for c in TREND_COLS if c[0] != "module"], "tts-trend-table"
        ),
        "funnel": plots.funnel(funnel_rows, [s for s, _ in FUNNEL]),
        "funnel_table": table(funnel_rows, FUNNEL_COLS, "tts-funnel-table"),
        "estimate": plots.estimate(est_rows),
        "estimate_table": table(est_rows, ESTIMATE_COLS, "tts-estimate-table"),
        "checks": plots.checks(check_rows),
        "checks_table": table(check_rows, CHECK_COLS, "tts-checks-table"),
    }


def drill_down(
    result: TTSResult, learner: str | None, filters: Mapping[str, Any] | None = None, *, combo_attr: bool = False
) -> str:
    """One learner's modules as an HTML table (``tts-learner-table``), or a line asking to
    choose one.  ``combo_attr``: rows carry ``data-combo`` (course, version, module, team) for
    the static page's script to follow the filters."""
    if learner is None:
        return plots.note("Choose a learner to see their modules, attempts and time to signal per module.")
    rows = result.drill_down(learner, **{k: v for k, v in (filters or {}).items() if v is not None})
    if not rows:
        return plots.note(f"No modules for learner {learner} in this selection.")
    cols = DRILL_COLS
    html_ = table(rows, cols, "tts-learner-table")
    if combo_attr:
        sep = "\u001f"
        parts = html_.split("<tr>")
        # parts[0] ends before the header row, parts[1] is the header; body rows follow in order
        body = [
            f'<tr data-combo="{e(sep.join(r[n] for n in ("course", "version", "module", "team")))}">' + p
            for r, p in zip(rows, parts[2:])
        ]
        html_ = "<tr>".join(parts[:2]) + "".join(body)
    return f"<h2>Learner {e(learner)}</h2>{html_}"


def options(result: TTSResult, name: str) -> list[str]:
    vals = result.options(name)
    return sorted(vals, key=version_key) if name == "version" else vals
