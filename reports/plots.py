"""The report's plots: matplotlib figures rendered to PNG and embedded as ``data:`` URIs.

Embedding (rather than linking) is what lets the static export work offline and what lets
the Voila dashboard show plots inside plain HTML widgets.  Figures are made with
``matplotlib.figure.Figure`` directly (no pyplot: no global state, no GUI backend), and the
PNG carries no metadata, so the same data gives the same bytes.  Every function returns an
HTML fragment: an ``<img>``, or a one-line note when there is nothing to draw -- never empty
axes.

Text from data (module, check, version and course names) is drawn as it is, never parsed:
every figure is made and saved with ``text.parse_math`` off and ``text.usetex`` off (a module
called ``$\\frac{1}{0}$`` is a label, not a crashing formula), and cut to :data:`LABEL_MAX`
characters (a 20,000-character name once cost most of a minute of text layout per export).
"""

from __future__ import annotations

import base64
import functools
import html
import io
from typing import Any, Callable, Sequence

import numpy as np

from reports.tts import version_key

WIDTH, HEIGHT, DPI = 6.4, 3.2, 100
#: Longest label drawn, in characters (longer names end with an ellipsis).
LABEL_MAX = 48
#: matplotlib settings every figure is made and saved under: data is never mathtext or LaTeX.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}
COLORS = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e"]


def note(text: str, cls: str = "tts-empty") -> str:
    return f'<div class="{cls}">{html.escape(text)}</div>'


def short(text: Any, limit: int = LABEL_MAX) -> str:
    """A label from data, at most ``limit`` characters."""
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def plain_text(fn: Callable[..., str]) -> Callable[..., str]:
    """Run a plot function with math text and LaTeX off (labels are data, not formulas)."""

    @functools.wraps(fn)
    def run(*args: Any, **kw: Any) -> str:
        import matplotlib

        with matplotlib.rc_context(PLAIN_TEXT):
            return fn(*args, **kw)

    return run


def _figure(height: float = HEIGHT):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _img(fig, alt: str, cls: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", alpha=0.3)


@plain_text
def distribution(series: dict[str, np.ndarray], median_s: float | None, p90_s: float | None) -> str:
    """Histogram of TTS minutes, one step line per curriculum version (``series``: version ->
    seconds), with the selection's median and p90 marked."""
    series = {k: v for k, v in series.items() if len(v)}
    if not series:
        return note("No time-to-signal to plot for this selection.")
    allv = np.concatenate(list(series.values())) / 60.0
    hi = float(np.percentile(allv, 99)) if len(allv) > 20 else float(allv.max())
    edges = np.linspace(0.0, max(hi, 1.0), 31)
    fig, ax = _figure()
    for i, (ver, vals) in enumerate(sorted(series.items(), key=lambda kv: version_key(kv[0]))):
        counts, _ = np.histogram(np.clip(vals / 60.0, 0, edges[-1]), bins=edges)
        ax.stairs(
            counts,
            edges,
            label=f"{short(ver or '(no version)')} (n={len(vals)})",
            color=COLORS[i % len(COLORS)],
            fill=len(series) == 1,
            alpha=0.6 if len(series) == 1 else 1.0,
            linewidth=1.8,
        )
    for val, label, ls in ((median_s, "median", "-"), (p90_s, "p90", "--")):
        if val is not None:
            ax.axvline(val / 60.0, color="#333", linestyle=ls, linewidth=1)
            ax.text(val / 60.0, ax.get_ylim()[1] * 0.97, f" {label}", va="top", fontsize=8)
    ax.set_xlabel("time to signal (minutes; the last bin holds the slowest 1%)")
    ax.set_ylabel("learners x modules")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _img(fig, "distribution of time to signal", "tts-plot-img")


@plain_text
def trend(rows: Sequence[dict[str, Any]]) -> str:
    """Median TTS per curriculum version, one line per module (rows from ``trend(by_module=True)``)."""
    rows = [r for r in rows if r["median"] is not None]
    versions = sorted({r["version"] for r in rows}, key=version_key)
    if not rows:
        return note("No time-to-signal to compare across versions for this selection.")
    fig, ax = _figure()
    x = {v: i for i, v in enumerate(versions)}
    lines: dict[tuple, list] = {}
    for r in rows:
        lines.setdefault((r["course"], r["module"]), []).append(r)
    multi_course = len({c for c, _ in lines}) > 1
    for i, ((course, module), rs) in enumerate(sorted(lines.items())):
        rs = sorted(rs, key=lambda r: version_key(r["version"]))
        ax.plot(
            [x[r["version"]] for r in rs],
            [r["median"] / 60.0 for r in rs],
            marker="o",
            color=COLORS[i % len(COLORS)],
            label=short(f"{course}/{module}" if multi_course else module),
        )
    ax.set_xticks(range(len(versions)), [short(v) for v in versions])
    ax.set_xlabel("curriculum version")
    ax.set_ylabel("median time to signal (min)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _img(fig, "median time to signal per curriculum version", "tts-plot-img")


@plain_text
def funnel(rows: Sequence[dict[str, Any]], stages: Sequence[str]) -> str:
    """Share of the learners who opened each module reaching each stage."""
    rows = [r for r in rows if r[stages[0]]]
    if not rows:
        return note("No module openings in this selection: no funnel to draw.")
    fig, ax = _figure(max(HEIGHT, 1.2 + 0.35 * len(rows)))
    labels = [short(f"{r['module']} {r['version']}") for r in rows]
    y = np.arange(len(rows))
    h = 0.8 / len(stages)
    for j, st in enumerate(stages):
        vals = [100.0 * r[st] / r[stages[0]] for r in rows]
        ax.barh(y + j * h, vals, height=h, color=COLORS[j % len(COLORS)], label=st)
    ax.set_yticks(y + 0.4 - h / 2, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of learners who opened the module")
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    _style(ax)
    return _img(fig, "completion funnel per module", "tts-plot-img")


@plain_text
def estimate(rows: Sequence[dict[str, Any]]) -> str:
    """Median actual minutes (opening -> completed) against the module's estimate."""
    rows = [r for r in rows if r["median_minutes"] is not None or r["estimated_minutes"] is not None]
    if not any(r["median_minutes"] is not None for r in rows):
        return note("No completed modules in this selection: nothing to compare with the estimates.")
    fig, ax = _figure()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["median_minutes"] or 0 for r in rows], width=0.4, color=COLORS[0], label="actual (median)")
    ax.bar(x + 0.2, [r["estimated_minutes"] or 0 for r in rows], width=0.4, color="#bbb", label="estimated")
    ax.set_xticks(x, [short(f"{r['module']} {r['version']}") for r in rows], fontsize=7, rotation=25, ha="right")
    ax.set_ylabel("minutes")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _img(fig, "actual minutes against estimated minutes", "tts-plot-img")


@plain_text
def checks(rows: Sequence[dict[str, Any]]) -> str:
    """The slowest checks: median minutes from opening to the check's first pass."""
    if not rows:
        return note("No grading checks in this selection.")
    fig, ax = _figure(max(HEIGHT, 0.6 + 0.3 * len(rows)))
    y = np.arange(len(rows))
    med = [(r["median"] or 0) / 60.0 for r in rows]
    ax.barh(y, med, color=[COLORS[2] if r["median"] is None else COLORS[0] for r in rows])
    for i, r in enumerate(rows):
        txt = "never passed" if r["median"] is None else f"{med[i]:.1f} min"
        ax.text(med[i], i, f"  {txt}, {r['fails']} fails", va="center", fontsize=7)
    ax.set_yticks(y, [short(f"{r['module']} {r['version']}: {r['check']}") for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median minutes from opening to the check's first pass")
    ax.set_xlim(0, max(med + [1.0]) * 1.35)
    _style(ax)
    return _img(fig, "slowest checks", "tts-plot-img")
