"""The report as ONE static HTML file a manager can mail and open offline.

nbconvert's HTML export of the Voila notebook would load the widget code from CDNs, so it
does not work offline.  Instead this renders a static version of the same report from the
same library functions: the numbers, every table, and the plots as embedded PNGs
(``data:`` URIs), with one small inline script for the filters.  Nothing is fetched from
anywhere: no ``<script src>``, no ``<link>``, no ``@import``, no web fonts, no URL at all.

Filters work without a kernel because every combination of course, version, module and team
that has data is precomputed into an inline JSON table (the numbers of each), and the summary
table's rows carry their combination for the script to show or hide.  The plots show all the
data (with versions side by side), which is what a mailed report is for.  Without JavaScript
the page still shows the numbers for all data and every table.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
from pathlib import Path
from typing import Any, Mapping

from lab_hardware.events import EventStore, display_url
from reports import render, tts
from reports.render import ALL, CSS, DEFINITION, describe, e, label
from reports.dashboard import PANELS, no_data_message

FILTERS = tts.FILTERS

SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('tts-data').textContent);
  var names = ['course', 'version', 'module', 'team'];
  function key() {
    return names.map(function (n) {
      var v = document.getElementById('tts-filter-' + n).value; return v === '*' ? '*' : v.slice(1);
    }).join('\\u001f');
  }
  function update() {
    var k = key(), combo = data.combos[k], msg = document.getElementById('tts-message');
    Object.keys(data.empty).forEach(function (cls) {
      document.querySelector('.' + cls).innerHTML = (combo ? combo.numbers : data.empty)[cls];
    });
    msg.textContent = combo ? (combo.count ? '' : data.noSignal.replace('{sel}', combo.label))
                            : data.noMatch.replace('{sel}', data.describe(k));
    var rows = document.querySelectorAll('tr[data-combo]');
    for (var i = 0; i < rows.length; i++) {
      var parts = rows[i].getAttribute('data-combo').split('\\u001f'), want = k.split('\\u001f'), show = true;
      for (var j = 0; j < 4; j++) { if (want[j] !== '*' && want[j] !== parts[j]) { show = false; } }
      rows[i].style.display = show ? '' : 'none';
    }
  }
  data.describe = function (k) {
    var p = k.split('\\u001f'), out = [];
    for (var j = 0; j < 4; j++) { if (p[j] !== '*') { out.push(names[j] + ' ' + (p[j] === '' ? '(no ' + names[j] + ')' : p[j])); } }
    return out.length ? out.join(', ') : 'all events';
  };
  names.forEach(function (n) { document.getElementById('tts-filter-' + n).addEventListener('change', update); });
})();
"""

SEP = "\u001f"


class ReportError(RuntimeError):
    """A report that cannot be written or served; the message says what to do."""


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no '</' and no U+2028/2029 surprises."""
    return (json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
            .replace("</", "<\\/").replace("<!--", "<\\!--"))


def _combos(result: tts.TTSResult) -> dict[str, Any]:
    """Numbers of every filter combination that has data (``*`` = all)."""
    opts = {n: [None] + render.options(result, n) for n in FILTERS}
    out = {}
    for combo in itertools.product(*(opts[n] for n in FILTERS)):
        f = dict(zip(FILTERS, combo))
        s = result.summary(**f)
        if not s["groups"]:
            continue
        k = SEP.join("*" if v is None else v for v in combo)
        out[k] = {"numbers": render.numbers_html(s), "count": s["count"], "label": describe(f)}
    return out


def render_html(result: tts.TTSResult | None, estimates: Mapping | None = None, *, source: str = "",
                generated: float | None = None, error: str | None = None) -> str:
    """The whole report page as a string (see the module doc for what it holds)."""
    when = _dt.datetime.fromtimestamp(generated if generated is not None else _dt.datetime.now().timestamp(),
                                      _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    empty = error is not None or result is None or len(result) == 0
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Time to signal</title><style>{CSS}</style></head><body>"
            f'<div class="tts-report"><h1>Time to signal</h1>'
            f'<div class="tts-source">events: {e(source)} · generated {e(when)}'
            f"{'' if empty else f' · {result.events:,} events · {len(result):,} learner × module'}</div>"
            f'<p class="tts-definition">{e(DEFINITION.format(skew=tts.SKEW_ALLOWANCE))}</p>')
    if empty:
        msg = error if error is not None else no_data_message(source)
        return head + f'<div class="tts-message">{e(msg)}</div></div></body></html>\n'
    assert result is not None
    selects = []
    for n in FILTERS:
        opts = "".join(f'<option value="={e(v)}">{e(label(v, n))}</option>' for v in render.options(result, n))
        selects.append(f'<label>{n} <select id="tts-filter-{n}" class="tts-filter tts-filter-{n}">'
                       f'<option value="*">{ALL}</option>{opts}</select></label>')
    summary = result.summary()
    tiles = "".join(f'<div class="tts-number {cls}">{h}</div>' for cls, h in render.numbers_html(summary).items())
    parts = render.sections(result, estimates or {}, {n: None for n in FILTERS}, checks_limit=20)
    panels = "".join(f'<div class="tts-panel tts-plot-{name}"><h2>{e(title)}</h2>'
                     + "".join(parts[k] for k in keys) + "</div>" for name, title, keys in PANELS)
    rows = result.table()
    body_rows = []
    for r in rows:
        combo = SEP.join(r[n] for n in FILTERS)
        cells = "".join(
            f'<td class="t">{e(label(r[k], k))}</td>' if how == "text" else
            (f"<td>{e(tts.fmt_duration(r[k]))}</td>" if how == "dur" else f"<td>{e(r[k])}</td>")
            for k, _, how in render.SUMMARY_COLS)
        body_rows.append(f'<tr data-combo="{e(combo)}">{cells}</tr>')
    head_cells = "".join(f'<th class="{"t" if how == "text" else ""}">{e(h)}</th>' for _, h, how in render.SUMMARY_COLS)
    summary_table = (f'<table class="tts-table tts-summary-table"><thead><tr>{head_cells}</tr></thead>'
                     f'<tbody>{"".join(body_rows)}</tbody></table>')
    data = {"combos": _combos(result), "empty": render.numbers_html(None),
            "noMatch": "No events match {sel}: choose another filter.",
            "noSignal": "No learner has passed a check yet in {sel}: no time to signal to show."}
    # Option values: '*' for all, '=' + value otherwise (so that no value can pass for 'all').
    script = SCRIPT
    return (head + f'<div class="tts-filters">{" ".join(selects)}</div>'
            f'<div id="tts-message" class="tts-message"></div>'
            f'<div class="tts-numbers">{tiles}</div>'
            f'<p class="tts-source">The numbers and the summary table follow the filters; the plots and the '
            f'other tables show all the data.</p>'
            f'<div class="tts-grid">{panels}</div>'
            f"<h2>Every course, version, module and team</h2>{summary_table}"
            f'<script type="application/json" id="tts-data">{_json_for_script(data)}</script>'
            f"<script>{script}</script></div></body></html>\n")


def export(home: str | os.PathLike | None, out_html: str | os.PathLike, *, url: str | None = None,
           estimates: Mapping | None = None) -> Path:
    """Write the static report for the events of ``home`` (or ``url`` / $LIVELAB_EVENTS_URL)."""
    out = Path(out_html)
    if not out.parent.is_dir():
        raise ReportError(f"cannot write {out}: directory {out.parent} does not exist")
    with EventStore(home, url=url) as store:
        source = display_url(store.url)
        result = tts.compute(tts.EventTable.from_store(store))
    if estimates is None:
        estimates = tts.load_estimates()
    page = render_html(result, estimates, source=source)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
