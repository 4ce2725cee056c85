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
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import ipywidgets as W

from labs.learning_events import ENV_URL, EventError, EventStore, EventStoreError, display_url
from reports import render, tts
from reports.render import ALL, CSS, DEFINITION, NUMBERS, describe, e, label

FILTERS = tts.FILTERS
PANELS = (("distribution", "Distribution of time to signal", ("distribution",)),
          ("trend", "Trend across curriculum versions (every version, other filters applied)",
           ("trend", "trend_table")),
          ("funnel", "Completion funnel per module", ("funnel", "funnel_table")),
          ("estimate", "Actual minutes against the module's estimate", ("estimate", "estimate_table")),
          ("checks", "Slowest checks: where learners get stuck", ("checks", "checks_table")))


def source_from_env() -> str:
    """Where the events come from: ``$LIVELAB_EVENTS_URL``, else ``$LIVELAB_HOME`` (or ~/.livelab)."""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    from lab_hardware.home import resolve
    return str(resolve(None))


def no_data_message(source: str) -> str:
    return (f"No learning events yet in {source}. They appear when learners open modules "
            "(Lab.connect(module=...)) and when submissions are graded (livelab grade).")


class Dashboard:
    """Filters, numbers and plots for one set of computed time-to-signal results."""

    def __init__(self, result: tts.TTSResult | None, estimates: Mapping | None = None, *,
                 source: str = "", error: str | None = None, background: bool = True):
        self.result, self.estimates, self.source = result, dict(estimates or {}), source
        self.updates = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._pending: Future | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tts-plots") if background else None
        empty = error is not None or result is None or len(result) == 0
        events = 0 if result is None else result.events
        self.title = W.HTML(
            f"<style>{CSS}</style><h1>Time to signal</h1>"
            f'<div class="tts-source">events: {e(source)}'
            f"{'' if empty else f' · {events:,} events · {len(result):,} learner × module'}</div>"
            f'<p class="tts-definition">{e(DEFINITION.format(skew=tts.SKEW_ALLOWANCE))}</p>')
        self.title.add_class("tts-title")
        self.dropdowns: dict[str, W.Dropdown] = {}
        for name in FILTERS:
            opts = [] if empty else render.options(result, name)
            dd = W.Dropdown(options=[(ALL, ALL)] + [(label(v, name), v) for v in opts], value=ALL,
                            description=name, disabled=empty, layout=W.Layout(width="260px"))
            dd.add_class("tts-filter")
            dd.add_class(f"tts-filter-{name}")
            dd.observe(self._changed, names="value")
            self.dropdowns[name] = dd
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
        grid = W.GridBox(list(self.panels.values()),
                         layout=W.Layout(grid_template_columns="repeat(auto-fill, minmax(620px, 1fr))",
                                         grid_gap="10px"))
        self.body = W.VBox([W.HBox(list(self.numbers.values()), layout=W.Layout(flex_flow="row wrap")), grid])
        self.widget = W.VBox([self.title, W.HBox(list(self.dropdowns.values()),
                                                 layout=W.Layout(flex_flow="row wrap")),
                              self.message, self.body])
        self.widget.add_class("tts-report")
        if error is not None:
            self._say(error)
            self.body.layout.display = "none"
        elif empty:
            self._say(no_data_message(source))
            self.body.layout.display = "none"
        else:
            self.update()

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
                result = tts.compute(tts.EventTable.from_store(store))
        except (EventStoreError, EventError) as exc:
            return cls(None, estimates, source=source, error=f"⚠ {exc}")
        return cls(result, estimates, source=shown)

    # ---- interaction ----------------------------------------------------------------------------
    @property
    def filters(self) -> dict[str, str | None]:
        return {n: (None if dd.value == ALL else dd.value) for n, dd in self.dropdowns.items()}

    def select(self, **filters: str | None) -> None:
        """Set filters as a user would (None = all)."""
        for name, value in filters.items():
            self.dropdowns[name].value = ALL if value is None else value

    def _say(self, text: str) -> None:
        self.message.value = e(text)
        self.message.layout.display = "" if text else "none"

    def _changed(self, change: dict[str, Any]) -> None:
        self.update()

    def update(self) -> None:
        if self.result is None:
            return
        f = self.filters
        with self._lock:
            self._generation += 1
            generation = self._generation
        summary = self.result.summary(**f)
        if summary["groups"] == 0:
            for cls, html_ in render.numbers_html(None).items():
                self.numbers[cls].value = html_
            for w in self.panels.values():
                w.value = ""
            self.body.children[1].layout.display = "none"
            self._say(f"No events match {describe(f)}: choose another filter.")
            self.updates += 1
            return
        self._say("" if summary["count"] else
                  f"No learner has passed a check yet in {describe(f)}: no time to signal to show.")
        for cls, html_ in render.numbers_html(summary).items():
            self.numbers[cls].value = html_
        self.body.children[1].layout.display = ""
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
                self.panels[name].value = (f'<h2 data-selection="{sel}">{e(title)}</h2>'
                                           + "".join(parts[k] for k in keys))

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the plots of the latest selection are drawn (tests, exports)."""
        if self._pending is not None:
            self._pending.result(timeout)
