"""The learner's panel: device status, consent toggles and a live telemetry chart.

``lab.panel()`` returns a :class:`LabPanel`.  Everything it shows comes from
what the SDK really received (retained ``state`` messages and aggregation
windows), never from what the panel asked for: a toggle shows the consent the
device reports, so a refused or lost command cannot leave it lying.

Threads, because that is where widget panels usually go wrong:

* updates arrive on the SDK's MQTT thread (``lab.add_listener``); the panel only
  sets trait values there (ipykernel >= 7.1 sends them from any thread) and
  never raises, since an exception would end the SDK's network loop;
* redraws of the status table and the chart are coalesced by one render thread,
  at most ``max_fps`` per second, so a fast lab cannot flood the frontend;
* a toggle click runs ``grant_consent``/``revoke_consent`` in a worker thread,
  so the kernel's comm handler is never blocked waiting for a device.

The chart is an inline SVG inside an ``HTML`` widget: no JavaScript, no CDN,
so it renders the same in JupyterLab, Voila and offline.
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from typing import Any

import ipywidgets as W

from lab_hardware.consent import SCOPES

log = logging.getLogger(__name__)

#: Windows per device the chart shows.
CHART_WINDOWS = 30
#: Upper bound on redraws per second (status table and chart together).
MAX_FPS = 4.0
#: How long a toggle waits for the device's state to confirm a change it acknowledged.
CONFIRM_SECONDS = 3.0
#: Messages kept in the message area.
MAX_MESSAGES = 3

EMPTY_CHART = "no telemetry yet — grant telemetry consent to a device"

#: Intent colours (Tableau 10 without its red, which is kept for the defect intent).
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#edc948", "#b07aa1", "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac", "#17becf"]
DEFECT_COLOR = "#e15759"
DEFECT_LINE = "#8c1c1e"
UNDO_LINE = "#1f1f1f"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"

CSS = f"""
<style>
.livelab-panel {{ font-family: {FONT}; color: #222; background: #fff; border-radius: 6px; max-width: 820px; }}
.livelab-panel .widget-html-content {{ line-height: 1.45; }}
.livelab-panel .livelab-h {{ font-size: 13px; font-weight: 600; margin: 12px 0 2px; color: #333; }}
.livelab-panel table.livelab-table {{ border-collapse: collapse; font-size: 12.5px; width: 100%; }}
.livelab-panel table.livelab-table th {{ text-align: left; font-weight: 600; color: #555;
    border-bottom: 1px solid #ccc; padding: 4px 8px; white-space: nowrap; }}
.livelab-panel table.livelab-table td {{ padding: 4px 8px; border-bottom: 1px solid #eee; white-space: nowrap; }}
.livelab-panel table.livelab-table td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.livelab-panel code {{ font-family: ui-monospace, 'SFMono-Regular', Menlo, monospace; font-size: 11.5px;
    background: #f4f4f4; padding: 0 3px; border-radius: 3px; }}
.livelab-panel .livelab-pill {{ display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 11.5px; }}
.livelab-panel .livelab-on {{ background: #e3f4e1; color: #1d6b24; }}
.livelab-panel .livelab-off {{ background: #f0f0f0; color: #666; }}
.livelab-panel .livelab-bad {{ background: #fbe3e3; color: #9b1c1c; }}
.livelab-panel .livelab-device-label {{ font-family: ui-monospace, Menlo, monospace; font-size: 12.5px; }}
.livelab-panel .livelab-msg {{ font-size: 12px; line-height: 1.5; min-height: 18px; }}
.livelab-panel .livelab-msg .err {{ color: #9b1c1c; }}
.livelab-panel .livelab-msg .ok {{ color: #555; }}
.livelab-panel .livelab-empty {{ border: 1px dashed #bbb; border-radius: 6px; padding: 22px; text-align: center;
    color: #666; font-size: 13px; background: #fafafa; }}
</style>
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _clock(t: Any) -> str:
    if not isinstance(t, (int, float)) or t <= 0:
        return "–"
    return time.strftime("%H:%M:%S", time.localtime(t))


def _nice_ceiling(x: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2 ... 8 x 10^k) not below ``x``, for axis ticks."""
    if x <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * k >= x:
            return m * k
    return 10 * k


def _fmt(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def intent_colors(intents: list[str], defect: str | None) -> dict[str, str]:
    """A stable colour per intent; the defect intent always gets the red."""
    out, i = {}, 0
    for name in intents:
        if name == defect:
            out[name] = DEFECT_COLOR
        else:
            out[name] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _window_record(w: dict, defect: str | None) -> dict:
    counts = {k: int(v) for k, v in (w.get("counts") or {}).items()}
    undo = (w.get("fp_proxy") or {}).get("undo") or {}
    return {
        "seq": w.get("seq"),
        "counts": counts,
        "decisions": int(w.get("decisions") or sum(counts.values())),
        "undo": int(sum(int(v) for v in undo.values())),
        "defect": counts.get(defect, 0) if defect else 0,
        "model": w.get("model"),
        "bundle": w.get("bundle"),
        "end": w.get("end"),
    }


# ---- rendering (pure functions of the panel's data, so they are easy to test) --------------


def render_status(devices: list[str], states: dict[str, dict], last: dict[str, dict]) -> str:
    """The status table: one row per device, from its latest state message."""
    head = (
        "<tr><th>device</th><th>state</th><th>model</th><th>bundle</th>"
        + "".join(f"<th>{_esc(s)}</th>" for s in SCOPES)
        + "<th>last seq</th><th>last window</th><th>decisions</th><th>SLO budget</th></tr>"
    )
    rows = []
    for dev in devices:
        st = states.get(dev) or {}
        if not st:
            online = '<span class="livelab-pill livelab-off">no state yet</span>'
        elif st.get("online"):
            online = '<span class="livelab-pill livelab-on">● online</span>'
        else:
            online = '<span class="livelab-pill livelab-bad">○ offline</span>'
        consent = st.get("consent") or {}
        cells = []
        for s in SCOPES:
            if consent.get(s):
                cells.append('<td><span class="livelab-pill livelab-on">granted</span></td>')
            else:
                cells.append('<td><span class="livelab-pill livelab-off">denied</span></td>')
        seq, t = st.get("telemetry_seq"), st.get("telemetry_time")
        seen = last.get(dev) or {}
        if seen.get("seq") is not None and (not isinstance(seq, int) or seen["seq"] > seq):
            seq, t = seen["seq"], seen.get("end") or t
        seq_txt = str(seq) if isinstance(seq, int) and seq >= 0 else "–"
        bundle = st.get("bundle") or ""
        decisions = st.get("decisions")
        rows.append(
            f'<tr data-device="{_esc(dev)}"><td><b>{_esc(dev)}</b></td><td>{online}</td>'
            f"<td>{_esc(st.get('model') or '–')}</td>"
            f"<td>{'<code>' + _esc(bundle[:12]) + '</code>' if bundle else '–'}</td>"
            + "".join(cells)
            + f'<td class="num">{seq_txt}</td><td class="num">{_clock(t)}</td>'
            f'<td class="num">{decisions if isinstance(decisions, int) else "–"}</td>'
            f"<td>{render_slo(st.get('slo'))}</td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="10">no devices in this lab</td></tr>')
    return f'<table class="livelab-table">{head}{"".join(rows)}</table>'


def render_slo(slo: dict | None) -> str:
    """One line per micro-SLO of the active bundle: budget left, and the alert firing if any."""
    objectives = (slo or {}).get("objectives") or []
    if not objectives:
        return "–"
    lines = []
    for o in objectives:
        burn = o.get("burn") or {}
        firing = [sev for sev in ("page", "ticket") if (burn.get(sev) or {}).get("firing")]
        left = o.get("budget_remaining")
        left_txt = f"{left * 100:.0f}% left" if isinstance(left, (int, float)) else "–"
        pill = "livelab-bad" if firing or (isinstance(left, (int, float)) and left <= 0) else "livelab-on"
        rate = (burn.get("page") or {}).get("short")
        rate_txt = f", burn {rate:g}x" if isinstance(rate, (int, float)) else ""
        lines.append(
            f'<span class="livelab-pill {pill}" title="{_esc(o.get("indicator") or "")}">'
            f"{_esc(o.get('name') or '?')}: {left_txt}{rate_txt}{' · ' + firing[0] if firing else ''}</span>"
        )
    return "<br>".join(lines)


def render_chart(
    devices: list[str],
    windows: dict[str, list[dict]],
    intents: list[str],
    defect: str | None,
    consent: dict[str, bool],
    *,
    slots: int = CHART_WINDOWS,
) -> str:
    """Stacked decisions per intent per window, one strip per device, with the FP proxies.

    The defect intent is stacked at the bottom so its share reads straight off
    the axis and lines up with its own marker line; the y scale is shared so
    devices compare at a glance.
    """
    if not any(windows.get(d) for d in devices):
        return f'<div class="livelab-empty">{_esc(EMPTY_CHART)}</div>'
    names = list(intents)
    for d in devices:  # intents a lab descriptor did not list (env-configured connections)
        for rec in windows.get(d, []):
            names += [k for k in rec["counts"] if k not in names]
    colors = intent_colors(names, defect)
    stack = ([defect] if defect in names else []) + [n for n in names if n != defect]
    ymax = _nice_ceiling(1.08 * max((r["decisions"] for d in devices for r in windows.get(d, [])), default=1))

    W_, ML, MR = 780, 56, 14
    PW = W_ - ML - MR
    slot = PW / slots
    bw = slot * 0.72
    PH = 112
    out: list[str] = []
    y = 0.0

    # legend: intents, then the false-positive proxies
    out.append('<g class="livelab-legend" font-size="12">')
    out.append('<text x="0" y="14" fill="#444" font-weight="600">decisions per intent</text>')
    x = 150.0
    for n in stack:
        out.append(
            f'<rect x="{x:.0f}" y="4" width="12" height="12" rx="2" fill="{colors[n]}"/>'
            f'<text x="{x + 17:.0f}" y="14" fill="#333">{_esc(n)}</text>'
        )
        x += 28 + 7.2 * len(n)
    out.append('<text x="0" y="36" fill="#444" font-weight="600">false-positive proxy</text>')
    out.append(
        f'<line x1="150" y1="32" x2="176" y2="32" stroke="{UNDO_LINE}" stroke-width="2"/>'
        f'<circle cx="163" cy="32" r="3" fill="#fff" stroke="{UNDO_LINE}" stroke-width="1.5"/>'
        f'<text x="182" y="36" fill="#333">user undos (all intents)</text>'
    )
    if defect:
        out.append(
            f'<line x1="350" y1="32" x2="376" y2="32" stroke="{DEFECT_LINE}" stroke-width="2" '
            f'stroke-dasharray="5 3"/>'
            f'<path d="M363 28 L367 32 L363 36 L359 32 Z" fill="{DEFECT_LINE}"/>'
            f'<text x="382" y="36" fill="#333">“{_esc(defect)}” decisions (the intent to watch)</text>'
        )
    out.append("</g>")
    y = 54.0

    for dev in devices:
        recs = sorted(windows.get(dev, []), key=lambda r: r["seq"])[-slots:]
        granted = consent.get(dev, False)
        if not recs:
            why = "telemetry consent is off" if not granted else "waiting for the first window"
            out.append(
                f'<g class="livelab-device" data-device="{_esc(dev)}">'
                f'<text x="0" y="{y + 14:.1f}" font-size="13" font-weight="600" fill="#333">{_esc(dev)}</text>'
                f'<text x="{ML:.0f}" y="{y + 14:.1f}" font-size="12" fill="#888" font-style="italic">'
                f"no telemetry — {why}</text></g>"
            )
            y += 30
            continue
        tot = sum(r["decisions"] for r in recs)
        dsum = sum(r["defect"] for r in recs)
        usum = sum(r["undo"] for r in recs)
        model = recs[-1].get("model") or ""
        bundle = (recs[-1].get("bundle") or "")[:12]
        summary = (f"“{_esc(defect)}” {100 * dsum / tot:.1f}% of decisions · " if defect and tot else "") + (
            f"{100 * usum / tot:.1f}% undone" if tot else ""
        )
        flag = "" if granted else " · consent off (last windows received)"
        out.append(f'<g class="livelab-device" data-device="{_esc(dev)}">')
        out.append(
            f'<text x="0" y="{y + 14:.1f}" font-size="13" fill="#222">'
            f'<tspan font-weight="600">{_esc(dev)}</tspan>'
            f'<tspan fill="#666"> · {_esc(model)} · {_esc(bundle)}{_esc(flag)}</tspan></text>'
            f'<text x="{W_ - MR:.0f}" y="{y + 14:.1f}" font-size="12" text-anchor="end" fill="#333">'
            f"{summary}</text>"
        )
        top = y + 22
        base = top + PH
        # grid + y axis
        for frac in (0, 0.5, 1):
            gy = base - frac * PH
            out.append(
                f'<line x1="{ML}" y1="{gy:.1f}" x2="{W_ - MR}" y2="{gy:.1f}" '
                f'stroke="{"#999" if frac == 0 else "#e6e6e6"}" stroke-width="1"/>'
                f'<text x="{ML - 6}" y="{gy + 4:.1f}" font-size="11" text-anchor="end" fill="#666">'
                f"{_fmt(ymax * frac)}</text>"
            )
        out.append(f'<line x1="{ML}" y1="{top:.1f}" x2="{ML}" y2="{base:.1f}" stroke="#999" stroke-width="1"/>')
        out.append(
            f'<text transform="translate(14 {top + PH / 2:.1f}) rotate(-90)" font-size="11" '
            f'text-anchor="middle" fill="#666">decisions / window</text>'
        )
        undo_pts, def_pts = [], []
        for i, r in enumerate(recs):
            bx = ML + i * slot + (slot - bw) / 2
            cy = base
            out.append(f'<g class="livelab-bar" data-seq="{r["seq"]}">')
            tip = ", ".join(f"{n} {r['counts'].get(n, 0)}" for n in stack)
            out.append(
                f"<title>{_esc(dev)} window {r['seq']}: {r['decisions']} decisions ({_esc(tip)}); "
                f"{r['undo']} undone</title>"
            )
            for n in stack:
                c = r["counts"].get(n, 0)
                if c <= 0:
                    continue
                h = c / ymax * PH
                cy -= h
                out.append(f'<rect x="{bx:.1f}" y="{cy:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{colors[n]}"/>')
            out.append("</g>")
            cx = ML + i * slot + slot / 2
            undo_pts.append((cx, base - r["undo"] / ymax * PH))
            def_pts.append((cx, base - r["defect"] / ymax * PH))
        if defect:
            out.append(
                f'<polyline class="livelab-defect" fill="none" stroke="{DEFECT_LINE}" stroke-width="2" '
                f'stroke-dasharray="5 3" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in def_pts)}"/>'
            )
            out.extend(
                f'<path d="M{a:.1f} {b - 4:.1f} L{a + 4:.1f} {b:.1f} L{a:.1f} {b + 4:.1f} '
                f'L{a - 4:.1f} {b:.1f} Z" fill="{DEFECT_LINE}"/>'
                for a, b in def_pts
            )
        out.append(
            f'<polyline class="livelab-undo" fill="none" stroke="{UNDO_LINE}" stroke-width="2" '
            f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in undo_pts)}"/>'
        )
        out.extend(
            f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="#fff" stroke="{UNDO_LINE}" stroke-width="1.5"/>'
            for a, b in undo_pts
        )
        out.append(f'<text x="{ML}" y="{base + 14:.1f}" font-size="10.5" fill="#888">window {recs[0]["seq"]}</text>')
        if len(recs) * slot >= 100:  # under the newest bar, wherever it is while the strip fills up
            lx = min(ML + len(recs) * slot, W_ - MR)
            out.append(
                f'<text x="{lx:.1f}" y="{base + 14:.1f}" font-size="10.5" text-anchor="end" fill="#888">'
                f"{recs[-1]['seq']}</text>"
            )
        out.append("</g>")
        y = base + 26
    out.append(
        f'<text x="{ML + PW / 2:.0f}" y="{y + 4:.0f}" font-size="11.5" text-anchor="middle" fill="#555">'
        f"aggregation windows, oldest → newest (last {slots} per device)</text>"
    )
    height = y + 12
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="livelab-svg" viewBox="0 0 {W_} {height:.0f}" '
        f'width="100%" style="max-width:{W_}px;height:auto" font-family="{_esc(FONT)}" role="img" '
        f'aria-label="live telemetry: decisions per intent per window">{"".join(out)}</svg>'
    )


# ---- the widget ----------------------------------------------------------------------------


class LabPanel(W.VBox):
    """Live status, consent toggles and telemetry chart for one :class:`labs.Lab`."""

    def __init__(
        self,
        lab,
        *,
        windows: int = CHART_WINDOWS,
        max_fps: float = MAX_FPS,
        command_timeout: float = 5.0,
        watch: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lab = lab
        self.command_timeout = command_timeout
        self.slots = int(windows)
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        # The intent the panel highlights: none unless asked (``watch=`` or :meth:`watch`), so a
        # module can open the panel before the exercise that asks the learner to find it.
        self.defect = watch
        self._lock = threading.RLock()
        self._states: dict[str, dict] = {d: s for d, s in dict(lab.states).items()}
        self._windows: dict[str, dict[int, dict]] = {}
        self._real: dict[tuple[str, str], bool] = {}
        self._pending: set[tuple[str, str]] = set()
        self._messages: list[str] = []
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._closed = False
        self.redraws = 0

        self.add_class("livelab-panel")
        self.header = W.HTML(self._header())
        self.header.add_class("livelab-header")
        self.status = W.HTML()
        self.status.add_class("livelab-status")
        self.toggles: dict[tuple[str, str], W.ToggleButton] = {}
        self._rows: dict[str, W.HBox] = {}
        self.consent_box = W.VBox()
        self.consent_box.add_class("livelab-consent")
        self.message = W.HTML('<div class="livelab-msg"></div>')
        self.message.add_class("livelab-message")
        self.chart = W.HTML()
        self.chart.add_class("livelab-chart")
        # Check: asks the grading service to judge the module's checks on this namespace
        self.check_button = W.Button(
            description="Check",
            icon="check",
            tooltip=("run this module's checks (the ones that grade) on what the lab saw so far"),
            disabled=not getattr(lab, "module", None),
        )
        self.check_button.add_class("livelab-check-button")
        self.check_result = W.HTML()
        self.check_result.add_class("livelab-check-result")
        self.check_button.on_click(lambda _b: self.run_check())
        self.last_check = None
        for dev in self._devices():
            self._ensure_device(dev)
            for scope in SCOPES:
                self._real[(dev, scope)] = bool(((self._states.get(dev) or {}).get("consent") or {}).get(scope))
                self._sync_toggle(dev, scope)
        self._relayout_consent()

        def h(text: str) -> W.HTML:
            return W.HTML(f'<div class="livelab-h">{_esc(text)}</div>')

        self.children = [
            self.header,
            h("Devices"),
            self.status,
            h("Consent (click to grant or revoke; shows what each device reports)"),
            self.consent_box,
            self.message,
            h("Live telemetry"),
            self.chart,
            W.HBox([self.check_button]),
            self.check_result,
        ]
        self.layout.padding = "4px 8px 8px 8px"

        # Listen first, then read what was buffered, so no window falls in between
        # (duplicates are dropped by seq).
        lab.add_listener(self._on_message)
        recent: dict[str, list[dict]] = {}
        for w in reversed(lab.windows()):  # only the newest `slots` per device matter
            per = recent.setdefault(w.get("device"), [])
            if len(per) < self.slots:
                per.append(w)
        for per in recent.values():
            for w in per:
                self._add_window(w)
        self._render()
        self._thread = threading.Thread(target=self._render_loop, name="livelab-panel-render", daemon=True)
        self._thread.start()

    # ---- checks ----------------------------------------------------------------------------
    def run_check(self, *, wait: bool = False):
        """What the Check button does: ``lab.check()`` off the kernel's main thread (the reply
        comes over MQTT), then the report in ``check_result``.  ``wait``: return the report."""
        self.check_button.disabled = True
        self.check_result.value = '<div class="livelab-msg">checking…</div>'

        def go():
            try:
                rep = self.lab.check()
                self.last_check = rep
                self.check_result.value = rep._repr_html_()
            except Exception as exc:  # noqa: BLE001 - shown, never raised from a button
                self.check_result.value = f'<div class="livelab-msg error">check failed: {_esc(exc)}</div>'
            finally:
                self.check_button.disabled = False

        th = threading.Thread(target=go, name="livelab-check", daemon=True)
        th.start()
        if wait:
            th.join()
            return self.last_check
        return None

    def _header(self) -> str:
        conn = self.lab.conn
        return (
            CSS + f'<div style="font-size:15px;font-weight:600;margin-bottom:2px">livelab · namespace '
            f"<code>{_esc(conn.namespace)}</code></div>"
            f'<div style="font-size:12px;color:#666">broker {_esc(conn.host)}:{conn.port}'
            + (f" · watching intent <b>“{_esc(self.defect)}”</b>" if self.defect else "")
            + "</div>"
        )

    def watch(self, intent: str | None) -> None:
        """Highlight ``intent`` in the chart (stacked at the bottom, its own line); None: none."""
        if intent is not None and self.lab.intents and intent not in self.lab.intents:
            # a notebook cell calls this with the learner's answer: say so, never break the cell
            self._say(f"no intent {intent!r} in this lab ({', '.join(self.lab.intents)}): watching none", error=True)
            intent = None
        with self._lock:
            self.defect = intent
            for per in self._windows.values():
                for rec in per.values():
                    rec["defect"] = rec["counts"].get(intent, 0) if intent else 0
        self.header.value = self._header()
        self._dirty.set()

    # ---- data ------------------------------------------------------------------------------
    def _devices(self) -> list[str]:
        return sorted(set(self.lab.conn.devices) | set(self._states) | set(self._windows))

    def _add_window(self, w: dict) -> None:
        dev, seq = w.get("device"), w.get("seq")
        if not isinstance(dev, str) or not isinstance(seq, int):
            return
        with self._lock:
            per = self._windows.setdefault(dev, {})
            per[seq] = _window_record(w, self.defect)
            while len(per) > self.slots:
                del per[min(per)]

    def _on_message(self, kind: str, device: str, payload: dict) -> None:
        """The SDK's MQTT thread calls this: set traits, poke the renderer, never raise."""
        if self._closed:
            return
        try:
            if kind == "state":
                with self._lock:
                    self._states[device] = payload
                    consent = payload.get("consent") or {}
                    for scope in SCOPES:
                        self._real[(device, scope)] = bool(consent.get(scope))
                new = self._ensure_device(device)
                for scope in SCOPES:
                    if (device, scope) not in self._pending:
                        self._sync_toggle(device, scope)
                if new:
                    self._relayout_consent()
                self._dirty.set()
            elif kind == "telemetry":
                self._add_window(payload)
                self._dirty.set()
        except Exception as exc:  # an exception here would end the SDK's network loop
            log.exception("livelab panel update failed")
            self._say(f"panel update failed: {exc}", error=True)

    # ---- consent toggles -------------------------------------------------------------------
    def _ensure_device(self, dev: str) -> bool:
        """Create the toggle row for a device seen for the first time; True if it was new."""
        with self._lock:
            if dev in self._rows:
                return False
            buttons = []
            for scope in SCOPES:
                t = W.ToggleButton(
                    value=False, description=scope, layout=W.Layout(width="190px"), tooltip=f"{scope} consent for {dev}"
                )
                t.add_class(f"livelab-consent-{dev}-{scope}")
                t.add_class("livelab-toggle")
                t.observe(lambda ch, d=dev, s=scope: self._on_toggle(d, s, ch), names="value")
                self.toggles[(dev, scope)] = t
                buttons.append(t)
            label = W.HTML(f'<span class="livelab-device-label">{_esc(dev)}</span>', layout=W.Layout(width="90px"))
            row = W.HBox([label] + buttons, layout=W.Layout(align_items="center"))
            row.add_class(f"livelab-consent-{dev}")
            self._rows[dev] = row
            self._real.setdefault((dev, "telemetry"), False)
            self._real.setdefault((dev, "replay-capture"), False)
            return True

    def _relayout_consent(self) -> None:
        self.consent_box.children = [self._rows[d] for d in sorted(self._rows)]

    def _sync_toggle(self, dev: str, scope: str) -> None:
        """Show the device's real consent on its toggle (setting value == real is a no-op click)."""
        t = self.toggles[(dev, scope)]
        real = self._real.get((dev, scope), False)
        if t.value != real:
            t.value = real
        desc = f"{scope}: {'granted' if real else 'denied'}"
        style = "success" if real else ""
        if t.description != desc:
            t.description = desc
        if t.button_style != style:
            t.button_style = style
        if t.disabled:
            t.disabled = False

    def _on_toggle(self, dev: str, scope: str, change: dict) -> None:
        """A click (or ``toggle.value = ...``): ask the device, in a worker thread."""
        want = bool(change["new"])
        key = (dev, scope)
        with self._lock:
            if self._closed or key in self._pending or want == self._real.get(key, False):
                return  # a sync from the device's state, or a click while a command is in flight
            self._pending.add(key)
        t = self.toggles[key]
        t.disabled = True
        t.button_style = "warning"
        t.description = f"{scope}: {'granting' if want else 'revoking'}…"
        threading.Thread(
            target=self._change_consent, args=(dev, scope, want), name=f"livelab-consent-{dev}-{scope}", daemon=True
        ).start()

    def _change_consent(self, dev: str, scope: str, want: bool) -> None:
        key = (dev, scope)
        try:
            fn = self.lab.grant_consent if want else self.lab.revoke_consent
            fn(dev, scope, timeout=self.command_timeout)
            # The device acknowledged; its retained state follows right after: wait for it
            # so the toggle shows what the device reports, not what we asked for.
            deadline = time.monotonic() + CONFIRM_SECONDS
            while time.monotonic() < deadline and not self._closed:
                if bool(((self.lab.states.get(dev) or {}).get("consent") or {}).get(scope)) == want:
                    break
                time.sleep(0.02)
            real = bool(((self.lab.states.get(dev) or {}).get("consent") or {}).get(scope))
            with self._lock:
                self._real[key] = real
            if real == want:
                self._say(f"{dev}: {scope} consent {'granted' if want else 'revoked'}")
            else:
                self._say(
                    f"{dev} acknowledged the {scope} change but still reports it {'granted' if real else 'denied'}",
                    error=True,
                )
        except Exception as exc:  # CommandRefused, TimeoutError, a lost connection...
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._say(msg, error=True)
        finally:
            with self._lock:
                self._pending.discard(key)
            if not self._closed:
                self._sync_toggle(dev, scope)
                self._dirty.set()

    def _say(self, text: str, *, error: bool = False) -> None:
        line = (
            f'<div class="{"err" if error else "ok"}">{time.strftime("%H:%M:%S")} '
            f"{'⚠ ' if error else ''}{_esc(text)}</div>"
        )
        with self._lock:
            self._messages = (self._messages + [line])[-MAX_MESSAGES:]
            value = f'<div class="livelab-msg">{"".join(self._messages)}</div>'
        self.message.value = value

    # ---- rendering -------------------------------------------------------------------------
    def _render(self) -> None:
        with self._lock:
            devices = self._devices()
            states = {d: dict(s) for d, s in self._states.items()}
            wins = {d: list(per.values()) for d, per in self._windows.items()}
            consent = {d: self._real.get((d, "telemetry"), False) for d in devices}
        last = {d: max(ws, key=lambda r: r["seq"]) for d, ws in wins.items() if ws}
        intents = list(self.lab.intents or [])
        status = render_status(devices, states, last)
        chart = render_chart(devices, wins, intents, self.defect, consent, slots=self.slots)
        if self.status.value != status:
            self.status.value = status
        if self.chart.value != chart:
            self.chart.value = chart
        self.redraws += 1

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                break
            self._dirty.clear()
            try:
                self._render()
            except Exception as exc:
                log.exception("livelab panel redraw failed")
                self._say(f"panel redraw failed: {exc}", error=True)
            self._stop.wait(self.min_interval)  # throttle: at most max_fps redraws per second

    # ---- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop following the lab (the panel stays on screen, frozen)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        remove = getattr(self.lab, "remove_listener", None)
        try:
            if remove is not None:
                remove(self._on_message)
            else:
                self.lab.remove_listener(self._on_message)
        except (ValueError, AttributeError):
            pass
        self._stop.set()
        self._dirty.set()
        th = getattr(self, "_thread", None)
        if th is not None and th is not threading.current_thread():
            th.join(timeout=2.0)

    def close(self) -> None:
        """Stop listening and remove the panel (and its child widgets) from the frontend."""
        self.stop()
        todo = list(self.children) + list(getattr(self, "_rows", {}).values())
        while todo:
            w = todo.pop()
            todo.extend(getattr(w, "children", ()))
            try:
                w.close()
            except Exception:
                pass
        super().close()
