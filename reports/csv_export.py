"""CSV of what a report page shows: the summary table, or one learner's drill-down.

For a manager who wants the numbers in a spreadsheet: the same rows as the page's tables for
the same selection (filters, date range, system identities), times in minutes like everywhere
else (headers say so: ``median_min``), dates in UTC ISO 8601.  Python's ``csv`` module quotes
what needs quoting; a cell that starts with ``=``, ``+``, ``-`` or ``@`` gets a leading ``'`` so
that a spreadsheet shows a hostile name instead of running it as a formula.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
from typing import Any, Mapping, Sequence

from reports.tts import TTSResult, minutes

SUMMARY = (
    "course",
    "version",
    "module",
    "team",
    "learners_x_modules",
    "median_min",
    "p90_min",
    "with_signal",
    "never_passed",
    "skewed",
    "no_opening",
)
LEARNER = (
    "learner",
    "team",
    "course",
    "version",
    "module",
    "opened_utc",
    "tts_min",
    "status",
    "attempts",
    "checks_passed",
    "checks_tried",
    "failed_results",
    "completed_utc",
)


def _iso(t: float | None) -> str:
    return "" if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@"):
        return "'" + v
    return v


def _write(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(v) for v in r])
    return buf.getvalue()


def summary_csv(result: TTSResult, filters: Mapping[str, Any] | None = None) -> str:
    """The summary table (one row per course, version, module and team) of a selection."""
    f = {k: v for k, v in (filters or {}).items() if v is not None}
    rows = result.table(("course", "version", "module", "team"), **f) if len(result) else []
    return _write(
        SUMMARY,
        [
            [
                r["course"],
                r["version"],
                r["module"],
                r["team"],
                r["groups"],
                minutes(r["median"], 2),
                minutes(r["p90"], 2),
                r["count"],
                r["never_passed"],
                r["skewed"],
                r["no_open"],
            ]
            for r in rows
        ],
    )


def learner_csv(result: TTSResult, learner: str, filters: Mapping[str, Any] | None = None) -> str:
    """One learner's modules (the drill-down) of a selection."""
    f = {k: v for k, v in (filters or {}).items() if v is not None and k != "learner"}
    rows = result.drill_down(learner, **f) if len(result) else []
    return _write(
        LEARNER,
        [
            [
                r["learner"],
                r["team"],
                r["course"],
                r["version"],
                r["module"],
                _iso(r["opened"]),
                minutes(r["tts"], 2),
                r["status"],
                r["attempts"],
                r["checks_passed"],
                r["checks_seen"],
                r["failures"],
                _iso(r["completed"]),
            ]
            for r in rows
        ],
    )


def page_csv(result: TTSResult, filters: Mapping[str, Any] | None = None) -> str:
    """What the page shows for ``filters``: the learner's drill-down if one is chosen, else the
    summary table."""
    learner = (filters or {}).get("learner")
    return learner_csv(result, learner, filters) if learner else summary_csv(result, filters)
