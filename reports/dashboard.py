"""The time-to-signal dashboard as ipywidgets (what ``reports/time_to_signal.ipynb`` shows in Voila).

The notebook is one line (``Dashboard.from_env().widget``) so that everything here is
importable and testable without a browser.  Numbers are HTML widgets with stable CSS
classes (``tts-median``, ``tts-p90``, ``tts-count``, ``tts-never-passed``, ``tts-skewed``),
filters are Dropdowns (``tts-filter-course``, ``-version``, ``-module``, ``-team``), plots
are PNGs embedded in HTML widgets (``tts-plot-distribution``, ``-trend``, ``-funnel``,
``-estimate``, ``-checks``), and a message widget (``tts-message``) says so when there is no
data yet or when a filter matches nothing -- instead of drawing empty axes.

The numbers are computed at once; the plots (matplotlib, about a second) are drawn on a
worker thread and set when ready, so the page shows its first widgets without waiting for
them.  Each panel's heading carries ``data-selection`` (the filters it was drawn for), and a
newer selection supersedes drawings still pending for an older one.

Beyond the filters: a learner drop-down (``tts-filter-learner``) drills down to one learner's
modules, attempts and time to signal per module (``tts-learner``); two date pickers
(``tts-filter-since``, ``tts-filter-until``, UTC days, both included) select modules by when
they were first opened; a check box (``tts-include-system``, initially
``$LIVELAB_REPORT_INCLUDE_SYSTEM``) brings back the system identities -- with a note that their
times are simulated (``tts-simulated``); and a link (``tts-csv``) downloads what the page shows
as CSV (``reports/csv_export.py``, as ``livelab report export --csv``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import ipywidgets as W

from labs.learning_events import ENV_URL, EventError, EventStore, EventStoreError, display_url
from reports import csv_export, render, tts
from reports.render import ALL, CSS, DEFINITION, NUMBERS, describe, e, label

FILTERS = tts.FILTERS
#: Environment variable: the report starts with system identities included (``report serve
#: --include-system``).
ENV_INCLUDE_SYSTEM = "LIVELAB_REPORT_INCLUDE_SYSTEM"
CHOOSE = "(choose)"
PANELS = (
    ("distribution", "Distribution of time to signal", ("distribution",)),
    ("trend", "Trend across curriculum versions (every version, other filters applied)", ("trend", "trend_table")),
    ("funnel", "Completion funnel per module", ("funnel", "funnel_table")),
    ("estimate", "Actual minutes against the module's estimate", ("estimate", "estimate_table")),
    ("checks", "Slowest checks: where learners get stuck", ("checks", "checks_table")),
)


def source_from_env() -> str:
    """Where the events come from: ``$LIVELAB_EVENTS_URL``, else ``$LIVELAB_HOME`` (or ~/.livelab)."""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    from lab_hardware.home import resolve

    return str(resolve(None))


def no_data_message(source: str) -> str:
    return (
        f"No learning events yet in {source}. They appear when learners open modules "
        "(Lab.connect(module=...)) and when submissions are graded (livelab grade)."
    )


class Dashboard:
    """Filters, numbers and plots for one set of computed time-to-signal results."""

    def __init__(
        self,
        result: tts.TTSResult | None,
        estimates: Mapping | None = None,
        *,
        source: str = "",
        error: str | None = None,
        background: bool = True,
        include_system: bool | None = None,
    ):
        if include_system is None:
            include_system = os.environ.get(ENV_INCLUDE_SYSTEM, "").strip().lower() in ("1", "true", "yes")
        self.full, self.estimates, self.source = result, dict(estimates or {}), source
        self.result = None if result is None else result.select(include_system=include_system)
        self._quiet = False
        self.updates = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._pending: Future | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tts-plots") if background else None
        empty = error is not None or result is None or len(result) == 0
        events = 0 if result is None else result.events
        result = self.result
        self.title = W.HTML(
            f"<style>{CSS}</style><h1>Time to signal</h1>"
            f'<div class="tts-source">events: {e(source)}'
            f"{'' if empty else f' · {events:,} events · {len(result):,} learner × module'}</div>"
            f'<p class="tts-definition">{e(DEFINITION.format(skew=tts.SKEW_ALLOWANCE / 60))}</p>'
        )
        self.title.add_class("tts-title")
        self.dropdowns: dict[str, W.Dropdown] = {}
        for name in FILTERS:
            dd = W.Dropdown(
                options=self._options(name, empty),
                value=ALL,
                description=name,
                disabled=empty,
                layout=W.Layout(width="260px"),
            )
            dd.add_class("tts-filter")
            dd.add_class(f"tts-filter-{name}")
            dd.observe(self._changed, names="value")
            self.dropdowns[name] = dd
        self.learner = W.Dropdown(
            options=self._options("learner", empty),
            value=ALL,
            description="learner",
            disabled=empty,
            layout=W.Layout(width="260px"),
        )
        self.learner.add_class("tts-filter")
        self.learner.add_class("tts-filter-learner")
        self.learner.observe(self._changed, names="value")
        self.since = W.DatePicker(description="opened from", disabled=empty, layout=W.Layout(width="260px"))
        self.until = W.DatePicker(description="to", disabled=empty, layout=W.Layout(width="220px"))
        self.system_box = W.Checkbox(
            value=include_system,
            description="include system identities",
            disabled=empty,
            indent=False,
            layout=W.Layout(width="240px"),
        )
        for w, cls in (
            (self.since, "tts-filter-since"),
            (self.until, "tts-filter-until"),
            (self.system_box, "tts-include-system"),
        ):
            w.add_class(cls)
            w.observe(self._rescope, names="value")
        self.scope = W.HTML()
        self.scope.add_class("tts-scope-box")
        self.drill = W.HTML()
        self.drill.add_class("tts-learner")
        self.csv = W.HTML()
        self.csv.add_class("tts-csv")
        self.numbers = {cls: W.HTML() for cls, _, _ in NUMBERS}
        for cls, w in self.numbers.items():
            w.add_class("tts-number")
            w.add_class(cls)
        self.message = W.HTML()
        self.message.add_class("tts-message")
        self.panels = {name: W.HTML() for name, _, _ in PANELS}
        for name, w in self.panels.items():
            w.add_class("tts-panel")
            w.add_class(f"tts-plot-{name}")
        grid = W.GridBox(
            list(self.panels.values()),
            layout=W.Layout(grid_template_columns="repeat(auto-fill, minmax(620px, 1fr))", grid_gap="10px"),
        )
        self.body = W.VBox([W.HBox(list(self.numbers.values()), layout=W.Layout(flex_flow="row wrap")), grid])
        self.widget = W.VBox(
            [
                self.title,
                W.HBox([*self.dropdowns.values(), self.learner], layout=W.Layout(flex_flow="row wrap")),
                W.HBox(
                    [self.since, self.until, self.system_box, self.csv],
                    layout=W.Layout(flex_flow="row wrap", align_items="center"),
                ),
                self.scope,
                self.message,
                self.drill,
                self.body,
            ]
        )
        self.widget.add_class("tts-report")
        if error is not None:
            self._say(error)
            self.body.layout.display = "none"
        elif empty:
            self._say(no_data_message(source))
            self.body.layout.display = "none"
        else:
            self._show_scope()
            self.update()

    def _options(self, name: str, empty: bool = False) -> list[tuple[str, str]]:
        if empty or self.result is None:
            return [(CHOOSE if name == "learner" else ALL, ALL)]
        if name == "learner":
            return [(CHOOSE, ALL)] + [(v, v) for v in self.result.learners()]
        return [(ALL, ALL)] + [(label(v, name), v) for v in render.options(self.result, name)]

    @property
    def grid(self) -> W.GridBox:
        return self.body.children[1]

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, estimates: Mapping | None = None) -> "Dashboard":
        """Events from ``$LIVELAB_EVENTS_URL`` or ``$LIVELAB_HOME``; estimates from the courses."""
        source = source_from_env()
        if estimates is None:
            estimates = tts.load_estimates()
        try:
            with EventStore(source) as store:
                shown = display_url(store.url)
                # system identities: see select; outcome events count when the lab signed them
                result = tts.compute(tts.EventTable.from_store(store, key=tts.outcome_key(None)))
        except (EventStoreError, EventError) as exc:
            return cls(None, estimates, source=source, error=f"⚠ {exc}")
        return cls(result, estimates, source=shown)

    # ---- interaction ----------------------------------------------------------------------------
    @property
    def filters(self) -> dict[str, str | None]:
        return {n: (None if dd.value == ALL else dd.value) for n, dd in self.dropdowns.items()}

    @property
    def chosen_learner(self) -> str | None:
        return None if self.learner.value == ALL else self.learner.value

    @property
    def date_range(self) -> tuple[float | None, float | None]:
        """(since, until) in UTC seconds from the pickers; the 'to' day is included."""

        def ts(d: _dt.date | None, days: int = 0) -> float | None:
            if d is None:
                return None
            return _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp() + days * 86400

        return ts(self.since.value), ts(self.until.value, 1)

    def select(self, **filters: str | None) -> None:
        """Set filters as a user would (None = all); ``learner`` drills down to one learner."""
        for name, value in filters.items():
            w = self.learner if name == "learner" else self.dropdowns[name]
            w.value = ALL if value is None else value

    def set_scope(
        self, *, since: _dt.date | None = None, until: _dt.date | None = None, include_system: bool | None = None
    ) -> None:
        """Set the date range and the system toggle as a user would."""
        self.since.value, self.until.value = since, until
        if include_system is not None:
            self.system_box.value = include_system

    def _rescope(self, change: dict[str, Any] | None = None) -> None:
        """The date range or the system toggle changed: recompute the groups shown, refresh the
        drop-downs' choices (keeping what is still there), then the page -- once."""
        if self.full is None or self._quiet:
            return
        since, until = self.date_range
        self.result = self.full.select(include_system=self.system_box.value, since=since, until=until)
        self._quiet = True
        try:
            for name, w in (*self.dropdowns.items(), ("learner", self.learner)):
                keep = w.value
                w.options = self._options(name)
                w.value = keep if keep in {v for _, v in w.options} else ALL
        finally:
            self._quiet = False
        self._show_scope()
        self.update()

    def _show_scope(self) -> None:
        since, until = self.date_range
        inc = bool(self.system_box.value)
        excluded = (
            0 if inc or self.full is None else int((self.full.mask(since=since, until=until) & self.full.system).sum())
        )
        checked = {} if self.full is None else {"verified": self.full.verified, "unverified": self.full.unverified}
        html_ = f'<p class="tts-scope">{e(render.scope(since, until, inc, excluded, **checked))}</p>'
        if inc:
            html_ += f'<p class="tts-simulated">{e(render.SIMULATED)}</p>'
        self.scope.value = html_

    def _say(self, text: str) -> None:
        self.message.value = e(text)
        self.message.layout.display = "" if text else "none"

    def _changed(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self.update()

    def update(self) -> None:
        if self.result is None:
            return
        f = self.filters
        with self._lock:
            self._generation += 1
            generation = self._generation
        summary = self.result.summary(**f)
        learner = self.chosen_learner
        self.drill.value = render.drill_down(self.result, learner, f)
        text = csv_export.page_csv(self.result, {**f, "learner": learner})
        href = "data:text/csv;base64," + base64.b64encode(text.encode()).decode()
        self.csv.value = f'<a download="time-to-signal.csv" href="{href}">download CSV of this view</a>'
        if summary["groups"] == 0:
            for cls, html_ in render.numbers_html(None).items():
                self.numbers[cls].value = html_
            for w in self.panels.values():
                w.value = ""
            self.grid.layout.display = "none"
            only_system = (
                not len(self.result)
                and self.full is not None
                and len(self.full)
                and not self.system_box.value
                and bool(self.full.system.all())
            )
            self._say(
                "Only system identities (release gate, demo bots, benchmarks) have events so far: tick "
                "'include system identities' to see them."
                if only_system
                else f"No events match {describe(f)}: choose another filter."
            )
            self.updates += 1
            return
        self._say(
            ""
            if summary["count"]
            else f"No learner has passed a check yet in {describe(f)}: no time to signal to show."
        )
        for cls, html_ in render.numbers_html(summary).items():
            self.numbers[cls].value = html_
        self.grid.layout.display = ""
        for name, title, _ in PANELS:
            if not self.panels[name].value:
                self.panels[name].value = f"<h2>{e(title)}</h2>" + render.plots.note("drawing ...")
        if self._executor is None:
            self._draw(generation, f)
        else:
            self._pending = self._executor.submit(self._draw, generation, f)
        self.updates += 1

    def _draw(self, generation: int, f: dict[str, str | None]) -> None:
        """Plots and tables for one selection, unless a newer selection came meanwhile."""
        try:
            parts = render.sections(self.result, self.estimates, f)
        except Exception as exc:  # noqa: BLE001 - say it on the page, keep the numbers
            logging.getLogger("livelab.reports").exception("drawing the report failed")
            self._say(f"⚠ drawing the plots failed: {exc}")
            return
        with self._lock:
            if generation != self._generation:
                return
            sel = e(describe(f))
            for name, title, keys in PANELS:
                self.panels[name].value = f'<h2 data-selection="{sel}">{e(title)}</h2>' + "".join(
                    parts[k] for k in keys
                )

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the plots of the latest selection are drawn (tests, exports)."""
        if self._pending is not None:
            self._pending.result(timeout)
