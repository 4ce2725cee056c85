"""HTML fragments shared by the Voila dashboard and the static export.

One place decides how a number is shown (``tts.fmt_duration``) and which CSS classes carry
it (``tts-median``, ``tts-p90``, ``tts-count``, ...), so that the served report, the mailed
file and the browser tests agree.  Every value element also carries the raw number
(``data-seconds`` / ``data-count``) for machines.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

from reports import plots
from reports.tts import FUNNEL, TTSResult, fmt_duration, version_key

ALL = "(all)"
NUMBERS = (("tts-median", "median time to signal", "median"), ("tts-p90", "p90 time to signal", "p90"),
           ("tts-count", "learner x module with a signal", "count"),
           ("tts-never-passed", "opened, never passed", "never_passed"),
           ("tts-skewed", "excluded: clock skew / no opening", "skewed"))

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
"""

DEFINITION = ("Time to signal = first passing grading check minus the first opening of the module "
              "(per learner, module, course and curriculum version). Re-opening does not reset the clock; "
              "a pass up to {skew:.0f} s before the opening (writer clock skew) counts as 0, further before "
              "it is excluded and counted; learners who never passed have no time to signal.")


def e(x: Any) -> str:
    return html.escape(str(x))


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
        data = "" if v is None else f"{v:.3f}"
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
        return f"<td>{e(fmt_duration(v))}</td>"
    if isinstance(v, float):
        return f"<td>{'–' if math.isnan(v) else f'{v:,.1f}'}</td>"
    if v is None:
        return "<td>–</td>"
    return f'<td class="t">{e(v)}</td>' if text else f"<td>{e(v)}</td>"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]], cls: str) -> str:
    """``columns``: (key, header, how) with how in text|int|dur|float."""
    if not rows:
        return plots.note("Nothing to list for this selection.")
    if len({r.get("course") for r in rows}) == 1:   # one course: the column would say nothing
        columns = [c for c in columns if c[0] != "course"]
    head = "".join(f'<th class="{"t" if how == "text" else ""}">{e(h)}</th>' for _, h, how in columns)
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
            else:
                cells.append(_cell(v))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="tts-table {cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


SUMMARY_COLS = [("course", "course", "text"), ("version", "version", "text"), ("module", "module", "text"),
                ("team", "team", "text"), ("median", "median", "dur"), ("p90", "p90", "dur"),
                ("count", "with signal", "int"), ("never_passed", "never passed", "int"),
                ("skewed", "skewed", "int"), ("no_open", "no opening", "int")]
TREND_COLS = [("course", "course", "text"), ("module", "module", "text"), ("version", "version", "text"),
              ("median", "median", "dur"), ("p90", "p90", "dur"), ("count", "with signal", "int"),
              ("never_passed", "never passed", "int")]
FUNNEL_COLS = [("course", "course", "text"), ("version", "version", "text"), ("module", "module", "text")] + \
              [(s, s, "int") for s, _ in FUNNEL]
ESTIMATE_COLS = [("course", "course", "text"), ("version", "version", "text"), ("module", "module", "text"),
                 ("completed", "completed", "int"), ("median_minutes", "actual median (min)", "float"),
                 ("p90_minutes", "actual p90 (min)", "float"), ("estimated_minutes", "estimated (min)", "float"),
                 ("ratio", "actual / estimated", "float")]
CHECK_COLS = [("course", "course", "text"), ("version", "version", "text"), ("module", "module", "text"),
              ("check", "check", "text"), ("median", "median to first pass", "dur"), ("p90", "p90", "dur"),
              ("passed", "learners passed", "int"), ("fails", "failures", "int"),
              ("learners_failed", "learners who failed", "int")]


def _ratio_fmt(rows: list[dict]) -> list[dict]:
    return [{**r, "ratio": None if r["ratio"] is None else round(r["ratio"], 2)} for r in rows]


def sections(result: TTSResult, estimates: Mapping, filters: Mapping[str, str | None],
             *, checks_limit: int = 12) -> dict[str, str]:
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
        "trend_table": table(result.trend(**no_version), [c for c in TREND_COLS if c[0] != "module"],
                             "tts-trend-table"),
        "funnel": plots.funnel(funnel_rows, [s for s, _ in FUNNEL]),
        "funnel_table": table(funnel_rows, FUNNEL_COLS, "tts-funnel-table"),
        "estimate": plots.estimate(est_rows),
        "estimate_table": table(est_rows, ESTIMATE_COLS, "tts-estimate-table"),
        "checks": plots.checks(check_rows),
        "checks_table": table(check_rows, CHECK_COLS, "tts-checks-table"),
    }


def options(result: TTSResult, name: str) -> list[str]:
    vals = result.options(name)
    return sorted(vals, key=version_key) if name == "version" else vals
