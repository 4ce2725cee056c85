"""The report as ONE static HTML file a manager can mail and open offline.

nbconvert's HTML export of the Voila notebook would load the widget code from CDNs, so it
does not work offline.  Instead this renders a static version of the same report from the
same library functions: the numbers, every table, and the plots -- as interactive Plotly
figures drawn by plotly.js, which is embedded inline once (about 4.8 MB), and as embedded PNGs
(``data:`` URIs) for a reader without JavaScript.  Nothing is fetched from anywhere: no
``<script src>``, no ``<link>``, no ``@import``, no web fonts, and a Plotly config that turns
off everything that could reach out (logo link, send-to-cloud, MathJax).  The only URLs in
the file are inside the plotly.js library text (map tiles, topojson: code for trace types the
report never draws).

Filters work without a kernel because every combination of course, version, module and team
that has data is precomputed into an inline JSON table: the numbers of each, and references to
its five figures and panel tables (``reports/static_plots.py`` builds them, from the same
calls as the matplotlib plots, and stores each distinct figure or table once).  The summary
table's rows carry their combination for the script to show or hide.  On load and on every
filter change the script draws each panel with ``Plotly.react`` for the selection (the trend
applies every filter but the version: it compares versions), swaps the panel tables, and says
so in words where a selection has nothing to draw.  Without JavaScript the page shows the
numbers, the plots (PNG) and every table for all the data.

A learner drop-down drills down to one learner: their modules, attempts and time to signal
per module (one precomputed table per learner, whose rows follow the other filters).  What the
file covers -- a date range, system identities left out or included, filters applied at export
time -- is said under the title; when system identities are included the page says that their
times are simulated.

Names are data: every one is HTML-escaped where it is shown, and the JSON the script reads is
escaped for ``<``, ``>``, ``&`` and U+2028/U+2029, so a learner called ``</script><!--`` is just
a learner (:func:`json_for_script`).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from labs.learning_events import EventStore, display_url
from reports import render, static_plots, tts
from reports.render import ALL, CSS, DEFINITION, describe, e, label
from reports.dashboard import PANELS, no_data_message

FILTERS = tts.FILTERS

SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('tts-data').textContent);
  var names = ['course', 'version', 'module', 'team'], plots = data.plots, generation = 0;
  function key() {
    return names.map(function (n) {
      var v = document.getElementById('tts-filter-' + n).value; return v === '*' ? '*' : v.slice(1);
    }).join('\\u001f');
  }
  function merge(base, own) {
    var out = {}, k;
    for (k in base) { out[k] = base[k]; }
    for (k in own) { out[k] = own[k]; }
    return out;
  }
  // The plots and panel tables of a selection (no combo: nothing matches, say so instead).
  function draw(combo, sel, noMatch) {
    if (!plots || typeof window.Plotly === 'undefined') { return; }  // keep the PNGs of all data
    var gen = ++generation, pending = [];
    plots.panels.forEach(function (name, i) {
      var panel = document.querySelector('.tts-plot-' + name), live = panel.querySelector('.tts-live');
      var gd = live.querySelector('.tts-graph'), note = live.querySelector('.tts-empty');
      var fig = combo ? plots.figures[name][combo.p[i]] : {note: noMatch};
      live.hidden = false;
      if (fig.note) {
        if (gd.classList.contains('js-plotly-plot')) { Plotly.purge(gd); }
        gd.hidden = true; note.textContent = fig.note; note.hidden = false;
      } else {
        note.hidden = true; gd.hidden = false;
        pending.push(Plotly.react(gd, fig.data, merge(plots.layout, fig.layout), plots.config));
      }
      panel.querySelector('.tts-fallback').hidden = true;
    });
    plots.tableNames.forEach(function (t, j) {
      document.querySelector('.tts-table-slot[data-table="' + t + '"]').innerHTML = combo ? plots.tables[combo.t[j]] : '';
    });
    Promise.all(pending).then(function () {
      if (gen !== generation) { return; }  // a newer selection is being drawn
      plots.panels.forEach(function (name) {
        document.querySelector('.tts-plot-' + name + ' h2').setAttribute('data-selection', sel);
      });
    });
  }
  function update() {
    var k = key(), combo = data.combos[k], msg = document.getElementById('tts-message');
    Object.keys(data.empty).forEach(function (cls) {
      document.querySelector('.' + cls).innerHTML = (combo ? combo.numbers : data.empty)[cls];
    });
    var noMatch = data.noMatch.replace('{sel}', data.describe(k));
    msg.textContent = combo ? (combo.count ? '' : data.noSignal.replace('{sel}', combo.label)) : noMatch;
    var rows = document.querySelectorAll('tr[data-combo]');
    for (var i = 0; i < rows.length; i++) {
      var parts = rows[i].getAttribute('data-combo').split('\\u001f'), want = k.split('\\u001f'), show = true;
      for (var j = 0; j < 4; j++) { if (want[j] !== '*' && want[j] !== parts[j]) { show = false; } }
      rows[i].style.display = show ? '' : 'none';
    }
    draw(combo, combo ? combo.label : data.describe(k), noMatch);
  }
  data.describe = function (k) {
    var p = k.split('\\u001f'), out = [];
    for (var j = 0; j < 4; j++) { if (p[j] !== '*') { out.push(names[j] + ' ' + (p[j] === '' ? '(no ' + names[j] + ')' : p[j])); } }
    return out.length ? out.join(', ') : 'all events';
  };
  function learner() {
    var v = document.getElementById('tts-filter-learner').value, box = document.getElementById('tts-learner');
    box.innerHTML = v === '*' ? data.chooseLearner : data.learners[v.slice(1)];
    update();
  }
  names.forEach(function (n) { document.getElementById('tts-filter-' + n).addEventListener('change', update); });
  document.getElementById('tts-filter-learner').addEventListener('change', learner);
  update();
})();
"""

#: The page's own additions to the report CSS: the Plotly panels and their no-JS fallback.
PAGE_CSS = """
.tts-live .tts-graph { width: 100%; }
.tts-report [hidden] { display: none !important; }
"""

SEP = "\u001f"
#: Rows of the slowest-checks panel (plot and table).
CHECKS_LIMIT = 20


class ReportError(RuntimeError):
    """A report that cannot be written or served; the message says what to do."""


def json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` as ``\\u``
    escapes (no ``</script>``, no ``<!--`` can end or bend the element) and U+2028/U+2029 escaped
    too (``ensure_ascii``), and still JSON that ``JSON.parse`` reads back to the same values."""
    return (
        json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


_json_for_script = json_for_script  # the old name


def _selections(result: tts.TTSResult) -> list[tuple[str, dict[str, str | None]]]:
    """Every filter combination that has data: (key for the script, filters)."""
    opts = {n: [None] + render.options(result, n) for n in FILTERS}
    out = []
    for combo in itertools.product(*(opts[n] for n in FILTERS)):
        f = dict(zip(FILTERS, combo))
        if result.mask(**f).any():
            out.append((SEP.join("*" if v is None else v for v in combo), f))
    return out


def _combos(result: tts.TTSResult, selections: list[tuple[str, dict[str, str | None]]] | None = None) -> dict[str, Any]:
    """Numbers of every filter combination that has data (``*`` = all)."""
    out = {}
    for k, f in _selections(result) if selections is None else selections:
        s = result.summary(**f)
        out[k] = {"numbers": render.numbers_html(s), "count": s["count"], "label": describe(f)}
    return out


def _plotly_js() -> str:
    """plotly.js, to inline once (imported here: only an export needs it)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script", "<\\/script")  # (it has none today)


def render_html(
    result: tts.TTSResult | None,
    estimates: Mapping | None = None,
    *,
    source: str = "",
    generated: float | None = None,
    error: str | None = None,
    scope: str = "",
    include_system: bool = False,
    slos: list[dict] | None = None,
) -> str:
    """The whole report page as a string (see the module doc for what it holds).  ``scope``
    says what the file covers; ``include_system``: the page says the system identities' times
    are simulated; ``slos``: rows of the *Device SLOs* table (:func:`reports.render.slo_rows`)."""
    slo_html = render.slo_table(slos or [])
    when = _dt.datetime.fromtimestamp(
        generated if generated is not None else _dt.datetime.now().timestamp(), _dt.timezone.utc
    ).strftime("%Y-%m-%d %H:%M UTC")
    empty = error is not None or result is None or len(result) == 0
    head = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Time to signal</title><style>{CSS}</style></head><body>"
        f'<div class="tts-report"><h1>Time to signal</h1>'
        f'<div class="tts-source">events: {e(source)} · generated {e(when)}'
        f"{'' if empty else f' · {result.events:,} events · {len(result):,} learner × module'}</div>"
        f'<p class="tts-definition">{e(DEFINITION.format(skew=tts.SKEW_ALLOWANCE / 60))}</p>'
        + (f'<p class="tts-scope">{e(scope)}</p>' if scope else "")
        + (f'<p class="tts-simulated">{e(render.SIMULATED)}</p>' if include_system else "")
    )
    if empty:
        msg = error if error is not None else no_data_message(source)
        return head + f'<div class="tts-message">{e(msg)}</div>{slo_html}</div></body></html>\n'
    assert result is not None
    selects = []
    for n in FILTERS:
        opts = "".join(f'<option value="={e(v)}">{e(label(v, n))}</option>' for v in render.options(result, n))
        selects.append(
            f'<label>{n} <select id="tts-filter-{n}" class="tts-filter tts-filter-{n}">'
            f'<option value="*">{ALL}</option>{opts}</select></label>'
        )
    learners = result.learners()
    opts = "".join(f'<option value="={e(v)}">{e(v)}</option>' for v in learners)
    selects.append(
        f'<label>learner <select id="tts-filter-learner" class="tts-filter tts-filter-learner">'
        f'<option value="*">(choose)</option>{opts}</select></label>'
    )
    summary = result.summary()
    tiles = "".join(f'<div class="tts-number {cls}">{h}</div>' for cls, h in render.numbers_html(summary).items())
    parts = render.sections(result, estimates or {}, {n: None for n in FILTERS}, checks_limit=CHECKS_LIMIT)
    panels = "".join(
        _panel(name, title, parts[keys[0]], {k: parts[k] for k in keys[1:]}) for name, title, keys in PANELS
    )
    rows = result.table()
    body_rows = []
    for r in rows:
        combo = SEP.join(r[n] for n in FILTERS)
        cells = "".join(
            f'<td class="t">{e(label(r[k], k))}</td>'
            if how == "text"
            else (f"<td>{e(tts.fmt_duration(r[k]))}</td>" if how == "dur" else f"<td>{e(r[k])}</td>")
            for k, _, how in render.SUMMARY_COLS
        )
        body_rows.append(f'<tr data-combo="{e(combo)}">{cells}</tr>')
    head_cells = "".join(f'<th class="{"t" if how == "text" else ""}">{e(h)}</th>' for _, h, how in render.SUMMARY_COLS)
    summary_table = (
        f'<table class="tts-table tts-summary-table"><thead><tr>{head_cells}</tr></thead>'
        f"<tbody>{''.join(body_rows)}</tbody></table>"
    )
    selections = _selections(result)
    combos = _combos(result, selections)
    plots, refs = static_plots.payload(result, estimates or {}, selections, checks_limit=CHECKS_LIMIT)
    for k, ref in refs.items():
        combos[k].update(ref)
    choose = render.drill_down(result, None)
    data = {
        "combos": combos,
        "empty": render.numbers_html(None),
        "plots": plots,
        "chooseLearner": choose,
        "learners": {n: render.drill_down(result, n, combo_attr=True) for n in learners},
        "noMatch": "No events match {sel}: choose another filter.",
        "noSignal": "No learner has passed a check yet in {sel}: no time to signal to show.",
    }
    # Option values: '*' for all, '=' + value otherwise (so that no value can pass for 'all').
    script = SCRIPT
    return (
        head.replace("</style>", PAGE_CSS + "</style>", 1) + f'<div class="tts-filters">{" ".join(selects)}</div>'
        f'<div id="tts-message" class="tts-message"></div>'
        f'<div class="tts-numbers">{tiles}</div>'
        f'<p class="tts-source">The numbers, the summary table, the plots and their tables follow the '
        f"filters (the trend compares every curriculum version under the other filters). Without "
        f"JavaScript the page shows all the data.</p>"
        f'<div id="tts-learner" class="tts-learner">{choose}</div>'
        f'<div class="tts-grid">{panels}</div>'
        f"<h2>Every course, version, module and team</h2>{summary_table}{slo_html}"
        f"<script>{_plotly_js()}</script>"
        f'<script type="application/json" id="tts-data">{json_for_script(data)}</script>'
        f"<script>{script}</script></div></body></html>\n"
    )


def _panel(name: str, title: str, plot: str, tables: Mapping[str, str]) -> str:
    """One plot panel: the PNG of all data (what a reader without JavaScript sees), a place for
    the Plotly figure of the selection (shown by the script, which then hides the PNG), and
    the panel's tables (swapped by the script per selection)."""
    slots = "".join(f'<div class="tts-table-slot" data-table="{e(k)}">{html}</div>' for k, html in tables.items())
    return (
        f'<div class="tts-panel tts-plot-{name}"><h2>{e(title)}</h2>'
        f'<div class="tts-fallback">{plot}</div>'
        f'<div class="tts-live" hidden><div class="tts-graph"></div><div class="tts-empty" hidden></div></div>'
        f"{slots}</div>"
    )


def check_output(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path that cannot be written (one line)."""
    out = Path(path)
    if out.is_dir():
        raise ReportError(f"cannot write {out}: it is a directory; name a file in it")
    if not out.parent.is_dir():
        raise ReportError(f"cannot write {out}: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ReportError(f"cannot write {out}: permission denied")
    return out


def _write(out: Path, text: str) -> Path:
    """Whole or nothing: a temporary file beside it, then a rename (no stray file on failure)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


class Selection(NamedTuple):
    """What a report shows: the groups, where the events came from, a sentence saying what is
    covered, and how many system groups were left out."""

    result: tts.TTSResult
    source: str
    scope: str
    excluded: int


#: Said instead of "no events yet" when every event came from system identities.
ONLY_SYSTEM = (
    "Only system identities (release gate runs, demo bots, benchmarks) have events in {source} "
    "for this selection: include them (--include-system, or the page's check box) to see them."
)


def selected(
    home: str | os.PathLike | None,
    *,
    url: str | None = None,
    include_system: bool = False,
    since: float | None = None,
    until: float | None = None,
    **filters: str | None,
) -> Selection:
    """The events of ``home`` (or ``url``) as a report shows them (see :class:`Selection`).
    System identities are left out unless ``include_system``; ``since``/``until`` (UTC seconds)
    and ``filters`` (course, version, module, team, learner) restrict the groups."""
    with EventStore(home, url=url) as store:
        source = display_url(store.url)
        full = tts.compute(tts.EventTable.from_store(store, key=tts.outcome_key(None if url else home)))
    f = {k: v for k, v in filters.items() if v is not None}
    result = full.select(include_system=include_system, since=since, until=until, **f)
    excluded = 0 if include_system else int((full.mask(since=since, until=until, **f) & full.system).sum())
    sentence = render.scope(
        since, until, include_system, excluded, f, verified=full.verified, unverified=full.unverified
    )
    return Selection(result, source, sentence, excluded)


def export(
    home: str | os.PathLike | None,
    out_html: str | os.PathLike,
    *,
    url: str | None = None,
    estimates: Mapping | None = None,
    include_system: bool = False,
    since: float | None = None,
    until: float | None = None,
    **filters: str | None,
) -> Path:
    """Write the static report for the events of ``home`` (or ``url`` / $LIVELAB_EVENTS_URL);
    the selection as :func:`selected`."""
    out = check_output(out_html)
    result, source, scope, excluded = selected(
        home, url=url, include_system=include_system, since=since, until=until, **filters
    )
    if estimates is None:
        estimates = tts.load_estimates()
    error = ONLY_SYSTEM.format(source=source) if excluded and not len(result) else None
    page = render_html(
        result,
        estimates,
        source=source,
        scope=scope,
        include_system=include_system,
        error=error,
        slos=device_slos(home),
    )
    return _write(out, page)


def device_slos(home: str | os.PathLike | None) -> list[dict]:
    """The *Device SLOs* rows of the lab running in ``home`` (none when no lab runs there)."""
    from lab_hardware.runtime import lab as _lab
    from lab_hardware import home as _home

    try:
        h = _home.resolve(home)
        if not _lab.is_running(h):
            return []
        st = _lab.status(h)
    except Exception:  # noqa: BLE001 - a report never fails on the lab's state
        return []
    return render.slo_rows([{**d, "namespace": st.get("namespace")} for d in st.get("devices") or []])


def export_csv(
    home: str | os.PathLike | None,
    out_csv: str | os.PathLike,
    *,
    url: str | None = None,
    include_system: bool = False,
    since: float | None = None,
    until: float | None = None,
    **filters: str | None,
) -> Path:
    """Write the CSV of what the page shows for the same selection (``reports/csv_export.py``):
    the summary table, or with ``learner=`` that learner's drill-down."""
    from reports import csv_export

    out = check_output(out_csv)
    learner = filters.pop("learner", None)
    result = selected(home, url=url, include_system=include_system, since=since, until=until, **filters).result
    return _write(out, csv_export.page_csv(result, {**filters, "learner": learner}))
