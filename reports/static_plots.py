"""Plotly figures for the static export: the report's five plots, for every filter selection.

The mailed file has no kernel, so the plots cannot be redrawn from the events when a manager
changes a filter.  Instead every selection that has data is precomputed here, from the same
library functions as the matplotlib plots (``render.sections``), into small Plotly figures
(plain dicts: traces and layout, no plotly import needed) that the page's script draws with
``Plotly.react``.  The figures mirror ``reports/plots.py`` panel by panel, and say so in
words (``{"note": ...}``, the same sentences) when there is nothing to draw -- never empty
axes.

Compact and bounded: the distribution stores histogram counts over bin edges common to the
whole report (computed once from all the data, as the matplotlib plot does for all data), not
raw values; numbers are rounded to what a plot can show; and identical figures and tables are
stored once, selections referring to them by index (the trend, for one, ignores the version
filter, so every version of a selection shares it).

Names are data, not markup: Plotly draws its text as a subset of HTML (``<b>``, ``<br>``,
entities) and would typeset ``$...$`` with MathJax, so every name in a figure goes through
:func:`txt` (HTML-escaped, cut to ``plots.LABEL_MAX`` characters) and MathJax is off.
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from reports import render
from reports.plots import COLORS, DPI, HEIGHT, short
from reports.render import CHECK_COLS, ESTIMATE_COLS, FUNNEL_COLS, TREND_COLS
from reports.tts import FUNNEL, TTSResult, version_key

#: Panel order of the payload (the page's panels, see ``dashboard.PANELS``).
PANEL_NAMES = ("distribution", "trend", "funnel", "estimate", "checks")
#: The panel tables that follow the filters, by panel (the distribution has none).
TABLE_NAMES = ("trend_table", "funnel_table", "estimate_table", "checks_table")
BINS = 30
#: Nothing in a figure may make the page fetch anything: no logo link, no "send to cloud",
#: no MathJax (no ``$...$`` in any text either); cartesian traces only (no topojson, no map tiles).
CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False, "typesetMath": False, "showTips": False}
#: Shared by every figure (merged under each figure's own layout by the page's script).
BASE_LAYOUT = {
    "font": {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 11, "color": "#222"},
    "colorway": COLORS,
    "paper_bgcolor": "#fff",
    "plot_bgcolor": "#fff",
    "autosize": True,
    "margin": {"l": 60, "r": 20, "t": 20, "b": 50},
    "hoverlabel": {"namelength": -1},
    "legend": {"font": {"size": 10}, "bgcolor": "rgba(255,255,255,0.6)"},
}
PX = DPI  # figure height: inches (plots.py) x DPI -> CSS pixels

NO_DISTRIBUTION = "No time-to-signal to plot for this selection."
NO_TREND = "No time-to-signal to compare across versions for this selection."
NO_FUNNEL = "No module openings in this selection: no funnel to draw."
NO_ESTIMATE = "No completed modules in this selection: nothing to compare with the estimates."
NO_CHECKS = "No grading checks in this selection."


def txt(text: Any) -> str:
    """A name as Plotly text: escaped (Plotly reads text as HTML) and of bounded length."""
    return html.escape(short(text), quote=False)


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def _axis(title: str, **kw: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "showgrid": False,
        "zeroline": False,
        "linecolor": "#444",
        "showline": True,
        "ticks": "outside",
        "automargin": True,
        **kw,
    }


def _value_axis(title: str, **kw: Any) -> dict[str, Any]:
    return _axis(title, showgrid=True, gridcolor="rgba(0,0,0,0.09)", **kw)


def _categories(rows: Sequence[Mapping[str, Any]], fmt) -> list[str]:
    """Axis labels of per-module rows; the course is named only when there are several (a
    categorical axis would merge two courses' equal labels)."""
    multi = len({r["course"] for r in rows}) > 1
    return [txt((f"{r['course']}/" if multi else "") + fmt(r)) for r in rows]


# ---- the common bins of the distribution ------------------------------------------------------


def edges(result: TTSResult) -> np.ndarray | None:
    """Bin edges (minutes) for every selection's histogram: the matplotlib plot's rule applied
    to all the data (up to the 99th percentile; the last bin holds the slowest 1%)."""
    allv = result.values() / 60.0
    if not len(allv):
        return None
    hi = float(np.percentile(allv, 99)) if len(allv) > 20 else float(allv.max())
    return np.linspace(0.0, max(hi, 1.0), BINS + 1)


def histogram(values_s: np.ndarray, bin_edges: np.ndarray) -> list[int]:
    """Counts of TTS seconds over ``bin_edges`` (minutes); beyond the last edge: the last bin."""
    counts, _ = np.histogram(np.clip(values_s / 60.0, 0, bin_edges[-1]), bins=bin_edges)
    return [int(c) for c in counts]


# ---- one figure per panel, for one selection ------------------------------------------------------


def distribution(
    series: Mapping[str, np.ndarray], median_s: float | None, p90_s: float | None, bin_edges: np.ndarray | None
) -> dict[str, Any]:
    """Histogram of TTS minutes, one bar series per curriculum version (``series``: version ->
    seconds), with the selection's median and p90 marked."""
    series = {k: v for k, v in series.items() if len(v)}
    if not series or bin_edges is None:
        return {"note": NO_DISTRIBUTION}
    width = float(bin_edges[1] - bin_edges[0])
    single = len(series) == 1
    traces = []
    for i, (ver, vals) in enumerate(sorted(series.items(), key=lambda kv: version_key(kv[0]))):
        traces.append(
            {
                "type": "bar",
                "name": f"{txt(ver or '(no version)')} (n={len(vals)})",
                "x0": round(width / 2, 6),
                "dx": round(width, 6),
                "width": round(width, 6),
                "y": histogram(vals, bin_edges),
                "marker": {"color": COLORS[i % len(COLORS)]},
                "opacity": 0.75 if single else 0.55,
                "hovertemplate": "%{fullData.name}<br>bin around %{x:.1f} min: %{y}<extra></extra>",
            }
        )
    shapes, notes = [], []
    for val, text, dash in ((median_s, "median", "solid"), (p90_s, "p90", "dash")):
        if val is not None:
            x = _r(val / 60.0)
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": x,
                    "x1": x,
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": "#333", "width": 1, "dash": dash},
                }
            )
            notes.append(
                {
                    "x": x,
                    "y": 1,
                    "xref": "x",
                    "yref": "paper",
                    "text": text,
                    "showarrow": False,
                    "xanchor": "left",
                    "yanchor": "top",
                    "font": {"size": 10},
                }
            )
    layout = {
        "height": int(HEIGHT * PX),
        "barmode": "overlay",
        "bargap": 0,
        "shapes": shapes,
        "annotations": notes,
        "showlegend": True,
        "legend": {"x": 1, "xanchor": "right", "y": 1, "font": {"size": 10}},
        "xaxis": _axis("time to signal (minutes; the last bin holds the slowest 1%)", range=[0, _r(bin_edges[-1])]),
        "yaxis": _value_axis("learners x modules", rangemode="tozero"),
    }
    return {"data": traces, "layout": layout}


def trend(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median TTS per curriculum version, one line per module (rows from ``trend(by_module=True)``)."""
    rows = [r for r in rows if r["median"] is not None]
    if not rows:
        return {"note": NO_TREND}
    versions = [txt(v) for v in sorted({r["version"] for r in rows}, key=version_key)]
    lines: dict[tuple, list] = {}
    for r in rows:
        lines.setdefault((r["course"], r["module"]), []).append(r)
    multi_course = len({c for c, _ in lines}) > 1
    traces = []
    for i, ((course, module), rs) in enumerate(sorted(lines.items())):
        rs = sorted(rs, key=lambda r: version_key(r["version"]))
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": txt(f"{course}/{module}" if multi_course else module),
                "x": [txt(r["version"]) for r in rs],
                "y": [_r(r["median"] / 60.0) for r in rs],
                "customdata": [r["count"] for r in rs],
                "line": {"color": COLORS[i % len(COLORS)]},
                "hovertemplate": "%{fullData.name} %{x}: median %{y:.1f} min "
                "(%{customdata} with a signal)<extra></extra>",
            }
        )
    layout = {
        "height": int(HEIGHT * PX),
        "showlegend": True,
        "xaxis": _axis("curriculum version", type="category", categoryorder="array", categoryarray=versions),
        "yaxis": _value_axis("median time to signal (min)", rangemode="tozero"),
    }
    return {"data": traces, "layout": layout}


def funnel(rows: Sequence[Mapping[str, Any]], stages: Sequence[str]) -> dict[str, Any]:
    """Share of the learners who opened each module reaching each stage (the counts in hover)."""
    rows = [r for r in rows if r[stages[0]]]
    if not rows:
        return {"note": NO_FUNNEL}
    labels = _categories(rows, lambda r: f"{r['module']} {r['version']}")
    traces = [
        {
            "type": "bar",
            "orientation": "h",
            "name": st,
            "y": labels,
            "x": [round(100.0 * r[st] / r[stages[0]], 2) for r in rows],
            "customdata": [r[st] for r in rows],
            "marker": {"color": COLORS[j % len(COLORS)]},
            "hovertemplate": "%{y}, " + st + ": %{customdata} learners (%{x:.0f}%)<extra></extra>",
        }
        for j, st in enumerate(stages)
    ]
    layout = {
        "height": int(max(HEIGHT, 1.2 + 0.35 * len(rows)) * PX) + 40,
        "barmode": "group",
        "bargap": 0.2,
        "bargroupgap": 0,
        "showlegend": True,
        "legend": {
            "orientation": "h",
            "x": 0.5,
            "xanchor": "center",
            "y": -0.18,
            "yanchor": "top",
            "font": {"size": 10},
        },
        "xaxis": _value_axis("% of learners who opened the module", range=[0, 100]),
        "yaxis": _axis("", type="category", autorange="reversed"),
    }
    return {"data": traces, "layout": layout}


def estimate(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median actual minutes (opening -> completed) against the module's estimate."""
    rows = [r for r in rows if r["median_minutes"] is not None or r["estimated_minutes"] is not None]
    if not any(r["median_minutes"] is not None for r in rows):
        return {"note": NO_ESTIMATE}
    labels = _categories(rows, lambda r: f"{r['module']} {r['version']}")
    traces = [
        {
            "type": "bar",
            "name": "actual (median)",
            "x": labels,
            "y": [_r(r["median_minutes"]) for r in rows],
            "customdata": [r["completed"] for r in rows],
            "marker": {"color": COLORS[0]},
            "hovertemplate": "%{x}: median %{y:.1f} min (%{customdata} completed)<extra></extra>",
        },
        {
            "type": "bar",
            "name": "estimated",
            "x": labels,
            "y": [_r(r["estimated_minutes"]) for r in rows],
            "marker": {"color": "#bbb"},
            "hovertemplate": "%{x}: estimated %{y:.0f} min<extra></extra>",
        },
    ]
    layout = {
        "height": int(HEIGHT * PX) + 40,
        "barmode": "group",
        "showlegend": True,
        "legend": {"x": 1, "xanchor": "right", "y": 1, "font": {"size": 10}},
        "xaxis": _axis("", type="category", tickangle=-25, tickfont={"size": 9}),
        "yaxis": _value_axis("minutes", rangemode="tozero"),
    }
    return {"data": traces, "layout": layout}


def checks(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The slowest checks: median minutes from opening to the check's first pass."""
    if not rows:
        return {"note": NO_CHECKS}
    med = [(r["median"] or 0) / 60.0 for r in rows]
    labels = _categories(rows, lambda r: f"{r['module']} {r['version']}: {r['check']}")
    text = [
        f"{'never passed' if r['median'] is None else f'{m:.1f} min'}, {r['fails']} fails" for r, m in zip(rows, med)
    ]
    traces = [
        {
            "type": "bar",
            "orientation": "h",
            "y": labels,
            "x": [round(m, 3) for m in med],
            "text": text,
            "textposition": "outside",
            "cliponaxis": False,
            "textfont": {"size": 9},
            "marker": {"color": [COLORS[2] if r["median"] is None else COLORS[0] for r in rows]},
            "customdata": [r["passed"] for r in rows],
            "hovertemplate": "%{y}<br>%{text}; %{customdata} learners passed<extra></extra>",
        }
    ]
    layout = {
        "height": int(max(HEIGHT, 0.6 + 0.3 * len(rows)) * PX),
        "showlegend": False,
        "bargap": 0.25,
        "xaxis": _value_axis(
            "median minutes from opening to the check's first pass", range=[0, round(max(med + [1.0]) * 1.35, 3)]
        ),
        "yaxis": _axis("", type="category", autorange="reversed", tickfont={"size": 9}),
    }
    return {"data": traces, "layout": layout}


# ---- every selection ----------------------------------------------------------------------------


def selection(
    result: TTSResult,
    estimates: Mapping,
    filters: Mapping[str, str | None],
    bin_edges: np.ndarray | None,
    *,
    checks_limit: int = 12,
    trend_cache: dict | None = None,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Figures and panel tables of one selection, from the library calls ``render.sections``
    makes (same filters: the trend applies every filter but the version)."""
    f = dict(filters)
    summ = result.summary(**f)
    series = {}
    for ver in result.options("version"):
        if f.get("version") in (None, ver):
            vals = result.values(**{**f, "version": ver})
            if len(vals):
                series[ver] = vals
    no_version = {**f, "version": None}
    tkey = tuple(sorted(no_version.items(), key=lambda kv: kv[0]))
    if trend_cache is not None and tkey in trend_cache:
        trend_fig, trend_table = trend_cache[tkey]
    else:
        trend_fig = trend(result.trend(by_module=True, **no_version))
        trend_table = render.table(
            result.trend(**no_version), [c for c in TREND_COLS if c[0] != "module"], "tts-trend-table"
        )
        if trend_cache is not None:
            trend_cache[tkey] = (trend_fig, trend_table)
    funnel_rows = result.funnel(**f)
    est_rows = render._ratio_fmt(result.minutes_vs_estimate(estimates, **f))
    check_rows = result.slowest_checks(checks_limit, **f)
    figures = {
        "distribution": distribution(series, summ["median"], summ["p90"], bin_edges),
        "trend": trend_fig,
        "funnel": funnel(funnel_rows, [s for s, _ in FUNNEL]),
        "estimate": estimate(est_rows),
        "checks": checks(check_rows),
    }
    tables = {
        "trend_table": trend_table,
        "funnel_table": render.table(funnel_rows, FUNNEL_COLS, "tts-funnel-table"),
        "estimate_table": render.table(est_rows, ESTIMATE_COLS, "tts-estimate-table"),
        "checks_table": render.table(check_rows, CHECK_COLS, "tts-checks-table"),
    }
    return figures, tables


class _Unique:
    """Store each distinct item once; hand out its index."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._seen: dict[str, int] = {}

    def add(self, item: Any) -> int:
        k = json.dumps(item, sort_keys=True, separators=(",", ":"))
        if k not in self._seen:
            self._seen[k] = len(self.items)
            self.items.append(item)
        return self._seen[k]


def payload(
    result: TTSResult,
    estimates: Mapping,
    selections: Iterable[tuple[str, Mapping[str, str | None]]],
    *,
    checks_limit: int = 12,
) -> tuple[dict[str, Any], dict[str, dict[str, list[int]]]]:
    """The figures and tables of every selection (``(key, filters)`` pairs), deduplicated.

    Returns ``(shared, refs)``: ``shared`` holds the config, the base layout, the panel and table
    names, the distinct figures (per panel) and table fragments, and the distribution's bin
    edges in minutes (for machines reading the file); ``refs[key]`` is
    ``{"p": [figure index per panel], "t": [table index per panel table]}``."""
    bin_edges = edges(result)
    figs = {name: _Unique() for name in PANEL_NAMES}
    tabs = _Unique()
    refs: dict[str, dict[str, list[int]]] = {}
    cache: dict = {}
    for key, filters in selections:
        figures, tables = selection(result, estimates, filters, bin_edges, checks_limit=checks_limit, trend_cache=cache)
        refs[key] = {
            "p": [figs[n].add(figures[n]) for n in PANEL_NAMES],
            "t": [tabs.add(tables[n]) for n in TABLE_NAMES],
        }
    shared = {
        "config": CONFIG,
        "layout": BASE_LAYOUT,
        "panels": list(PANEL_NAMES),
        "tableNames": list(TABLE_NAMES),
        "figures": {n: figs[n].items for n in PANEL_NAMES},
        "tables": tabs.items,
        "edges": None if bin_edges is None else [round(float(x), 6) for x in bin_edges],
    }
    return shared, refs
