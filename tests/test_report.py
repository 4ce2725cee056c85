"""The time-to-signal report: the dashboard widgets, the offline export, the CLI, and Voila in Chromium.

The browser tests serve ``reports/time_to_signal.ipynb`` with Voila on a seeded event set,
wait for the widgets (no "Loading widget..." left), change filters and check that the
numbers on the page are the ones ``reports.tts`` computes from the same events; the export
tests open the static file in Chromium with the network blocked, and read the Plotly figures
it draws for each selection back from the page.  Screenshots go to
``tests/artifacts/`` for a human to look at.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import plotly.offline
import psutil
import pytest

from labs.learning_events import Event, EventStore, EventStoreError
from livelab import cli
from reports import dashboard, render, serve, static, synthetic, tts
from test_widgets import ARTIFACTS, chromium, wait_for  # noqa: F401  (chromium is a fixture)

ROOT = Path(__file__).resolve().parents[1]
T0 = synthetic.BASE_TIME


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("LIVELAB_EVENTS_URL", raising=False)
    monkeypatch.setenv("LIVELAB_COURSES_DIR", str(tmp_path / "courses"))  # estimates: written by seed()


def seed(home: Path) -> tts.TTSResult:
    """A small seeded team through two curriculum versions, plus one learner of a team of one
    who only did m1 in 1.0.0 (so that 'team-solo' x 1.1.0 matches nothing).  Returns what
    reports.tts computes from the store."""
    home.mkdir(parents=True, exist_ok=True)
    table = synthetic.generate(seed=11, spec=synthetic.Spec(learners=36, teams=3))
    extra = [
        Event(
            learner="solo",
            team="team-solo",
            course="edge-ml",
            version="1.0.0",
            module="m1-telemetry",
            kind=k,
            time=T0 + dt,
            check=c,
            source=s,
            key="seed",
        )
        for k, dt, c, s in (
            ("module-opened", 0, None, "sdk"),
            ("check-failed", 200, "consent", "grader"),
            ("check-passed", 400, "consent", "grader"),
        )
    ]
    with EventStore(home) as store:
        assert store.write([*synthetic.events(table), *extra]) == len(table) + 3
    courses = Path(os.environ["LIVELAB_COURSES_DIR"]) / "edge-ml"
    courses.mkdir(parents=True, exist_ok=True)
    (courses / "course.toml").write_text(
        'id = "edge-ml"\n'
        + "".join(f'[[modules]]\nid = "{m}"\nminutes = {v[2]}\n' for m, v in synthetic.MODULES.items())
    )
    return tts.load(home)


def shown(summary: dict) -> dict:
    """What the page must show for a summary: raw data attributes and the formatted text."""
    return {
        "median": (
            "" if summary["median"] is None else f"{summary['median']:.3f}",
            tts.fmt_duration(summary["median"]),
        ),
        "p90": ("" if summary["p90"] is None else f"{summary['p90']:.3f}", tts.fmt_duration(summary["p90"])),
        "count": (str(summary["count"]), f"{summary['count']:,}"),
    }


# ---- the dashboard, in-process -----------------------------------------------------------------------


def test_dashboard_numbers_filters_and_messages(tmp_path, monkeypatch):
    home = tmp_path / "home"
    result = seed(home)
    monkeypatch.setenv("LIVELAB_HOME", str(home))
    d = dashboard.Dashboard.from_env()
    assert "tts-report" in d.widget._dom_classes
    assert set(d.dropdowns["version"].options) >= {("(all)", "(all)"), ("1.0.0", "1.0.0"), ("1.1.0", "1.1.0")}
    s = result.summary()
    assert f'data-seconds="{s["median"]:.3f}"' in d.numbers["tts-median"].value
    assert f'data-count="{s["count"]}"' in d.numbers["tts-count"].value
    assert d.message.layout.display == "none"
    d.wait()  # the plots are drawn on a worker thread
    assert all("<img" in d.panels[p].value for p in ("distribution", "trend", "funnel", "estimate", "checks"))
    assert all('data-selection="all events"' in p.value for p in d.panels.values())
    assert "20.0" in d.panels["estimate"].value  # m4's estimate from course.toml, in its table

    d.select(version="1.1.0")
    s11 = result.summary(version="1.1.0")
    assert f'data-seconds="{s11["median"]:.3f}"' in d.numbers["tts-median"].value
    assert s11["median"] < result.summary(version="1.0.0")["median"]  # 1.1.0 teaches faster here
    d.wait()
    assert all('data-selection="version 1.1.0"' in p.value for p in d.panels.values())

    d.select(team="team-solo")  # team-solo only worked in 1.0.0
    assert "No events match version 1.1.0, team team-solo" in d.message.value
    assert 'data-seconds=""' in d.numbers["tts-median"].value and "–" in d.numbers["tts-median"].value
    assert d.body.children[1].layout.display == "none"  # no empty axes
    d.select(version=None)
    assert f'data-seconds="{result.summary(team="team-solo")["median"]:.3f}"' in d.numbers["tts-median"].value
    assert d.message.layout.display == "none"


def test_dashboard_with_no_data_or_a_broken_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVELAB_HOME", str(tmp_path))
    d = dashboard.Dashboard.from_env()
    assert "No learning events yet" in d.message.value and d.body.layout.display == "none"
    assert all(dd.disabled for dd in d.dropdowns.values())
    assert not any(p.value for p in d.panels.values())
    monkeypatch.setenv("LIVELAB_EVENTS_URL", "postgresql://127.0.0.1:1/x")
    d = dashboard.Dashboard.from_env()
    assert "unreachable" in d.message.value and d.body.layout.display == "none"


# ---- the static export ----------------------------------------------------------------------------

REMOTE = re.compile(
    r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|<script[^>]+src=|<link[^>]+href=|@import|url\(\s*['"]?http""", re.IGNORECASE
)


def test_export_is_one_offline_file(tmp_path, chromium):
    home = tmp_path / "home"
    result = seed(home)
    out = static.export(home, tmp_path / "report.html")
    page_html = out.read_text()
    # plotly.js is inline, once and as shipped; its text names URLs (map tiles, topojson: code
    # for trace types the report never draws), nothing else in the page may.  Chromium below
    # shows that nothing is fetched.
    lib = plotly.offline.get_plotlyjs()
    assert page_html.count(f"<script>{lib}</script>") == 1 and page_html.count("<script") == 3
    own = page_html.replace(lib, "")
    assert "http://" not in own and "https://" not in own
    assert not REMOTE.search(own), REMOTE.search(own)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page_html, re.IGNORECASE)
    assert page_html.count("data:image/png;base64,") >= 5  # every plot embedded
    s = result.summary()

    # Chromium with the network blocked: anything but the file itself is refused (and noted).
    asked: list[str] = []
    errors: list[str] = []
    ctx, page = offline_page(chromium, out, asked, errors)
    for key, cls in (("median", "tts-median"), ("p90", "tts-p90"), ("count", "tts-count")):
        val = page.locator(f".{cls} .tts-value")
        attr = "data-seconds" if key != "count" else "data-count"
        assert (val.get_attribute(attr), val.inner_text()) == shown(s)[key]
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    # The filters work without a kernel: precomputed numbers per combination.
    page.select_option("#tts-filter-version", label="1.1.0")
    s11 = result.summary(version="1.1.0")
    assert page.locator(".tts-median .tts-value").get_attribute("data-seconds") == shown(s11)["median"][0]
    assert page.locator(".tts-count .tts-value").inner_text() == shown(s11)["count"][1]
    visible = page.locator("table.tts-summary-table tbody tr:visible").count()
    assert visible == len(result.table(version="1.1.0"))
    page.select_option("#tts-filter-team", label="team-solo")
    assert "No events match version 1.1.0, team team-solo" in page.locator("#tts-message").inner_text()
    assert page.locator(".tts-median .tts-value").inner_text() == "–"
    page.select_option("#tts-filter-version", label="(all)")
    assert (
        page.locator(".tts-median .tts-value").get_attribute("data-seconds")
        == shown(result.summary(team="team-solo"))["median"][0]
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.select_option("#tts-filter-team", label="(all)")
    page.screenshot(path=str(ARTIFACTS / "report-export.png"))
    assert not asked, f"the export asked the network for {asked}"
    assert not errors
    ctx.close()


PANELS = ("distribution", "trend", "funnel", "estimate", "checks")


def offline_page(chromium, out: Path, asked: list[str], errors: list[str], **kw):
    """The exported file in a Chromium context that refuses (and notes) any network request."""
    ctx = chromium.new_context(offline=True, viewport={"width": 1300, "height": 1000}, **kw)

    def guard(route):
        if not route.request.url.startswith(("file:", "data:")):
            asked.append(route.request.url)
            return route.abort()
        return route.continue_()

    ctx.route("**/*", guard)
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(out.as_uri())
    return ctx, page


def drawn(page, panel: str) -> list[dict] | None:
    """The traces Plotly drew in a panel, read back from the graph (None: no visible graph)."""
    return page.evaluate(
        """(panel) => {
        const gd = document.querySelector('.tts-plot-' + panel + ' .js-plotly-plot');
        if (!gd || gd.hidden || gd.offsetParent === null || !gd.data) { return null; }
        return gd.data.map(t => ({name: t.name, x: t.x, y: t.y, x0: t.x0, dx: t.dx, customdata: t.customdata}));
    }""",
        panel,
    )


def drawn_for(page, selection: str) -> dict[str, list[dict] | None]:
    for name in PANELS:  # the script marks each panel with the selection once it has drawn it
        page.locator(f'.tts-plot-{name} h2[data-selection="{selection}"]').wait_for(timeout=10_000)
    return {name: drawn(page, name) for name in PANELS}


def expected_histograms(result: tts.TTSResult, **filters) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Counts per curriculum version over the report's common bins: 30 from 0 to the 99th
    percentile of every time to signal in minutes (the slower ones in the last bin)."""
    allv = result.values() / 60.0
    edges = np.linspace(0.0, max(float(np.percentile(allv, 99)), 1.0), 31)
    out = {}
    for ver in result.options("version"):
        vals = result.values(**{**filters, "version": ver}) / 60.0
        if filters.get("version") in (None, ver) and len(vals):
            out[f"{ver} (n={len(vals)})"] = np.histogram(np.minimum(vals, edges[-1]), edges)[0].tolist()
    return edges, out


def check_distribution(traces: list[dict], result: tts.TTSResult, **filters) -> None:
    edges, want = expected_histograms(result, **filters)
    assert {t["name"]: t["y"] for t in traces} == want
    assert sum(sum(c) for c in want.values()) == result.summary(**filters)["count"]
    for t in traces:  # bars at the bin centres
        assert t["dx"] == pytest.approx(edges[1] - edges[0]) and t["x0"] == pytest.approx(edges[1] / 2)


def check_trend(traces: list[dict], result: tts.TTSResult, **filters) -> None:
    """One line per module: median minutes per version (the version filter does not apply)."""
    want: dict[str, tuple[list, list]] = {}
    for r in result.trend(by_module=True, **{**filters, "version": None}):
        if r["median"] is not None:
            want.setdefault(r["module"], ([], []))[0].append(r["version"])
            want[r["module"]][1].append(r["median"] / 60.0)
    got = {t["name"]: (t["x"], t["y"]) for t in traces}
    assert set(got) == set(want) and want
    for module, (versions, minutes) in want.items():
        assert got[module][0] == versions and got[module][1] == pytest.approx(minutes, abs=1e-3)


def check_funnel(traces: list[dict], result: tts.TTSResult, **filters) -> None:
    """Per stage: learners reaching it (hover) and their share of those who opened (bar length)."""
    rows = result.funnel(**filters)
    assert rows
    by_stage = {t["name"]: t for t in traces}
    assert list(by_stage) == [s for s, _ in tts.FUNNEL]
    for stage, t in by_stage.items():
        assert t["y"] == [f"{r['module']} {r['version']}" for r in rows]
        assert t["customdata"] == [r[stage] for r in rows]
        assert t["x"] == pytest.approx([100.0 * r[stage] / r["opened"] for r in rows], abs=0.01)


def test_export_plots_follow_the_filters(tmp_path, chromium):
    home = tmp_path / "home"
    result = seed(home)
    out = static.export(home, tmp_path / "report.html")
    asked: list[str] = []
    errors: list[str] = []
    ctx, page = offline_page(chromium, out, asked, errors)
    figs = drawn_for(page, "all events")
    assert all(figs.values()), {k: v is None for k, v in figs.items()}
    # Plotly has replaced the PNGs of all data (kept for readers without JavaScript).
    assert page.locator(".tts-fallback img").count() == 5 and not page.locator(".tts-fallback img").first.is_visible()
    check_distribution(figs["distribution"], result)
    check_trend(figs["trend"], result)
    check_funnel(figs["funnel"], result)
    assert len(figs["distribution"]) == 2  # a series per curriculum version

    team = "team-b"
    assert team in result.options("team") and result.summary(team=team)["count"] < result.summary()["count"]
    page.select_option("#tts-filter-team", label=team)
    figs = drawn_for(page, f"team {team}")
    check_distribution(figs["distribution"], result, team=team)
    check_trend(figs["trend"], result, team=team)
    check_funnel(figs["funnel"], result, team=team)
    checks_rows = page.locator(".tts-plot-checks table.tts-checks-table tbody tr")
    assert checks_rows.count() == len(result.slowest_checks(20, team=team))

    page.select_option("#tts-filter-version", label="1.1.0")
    sel = dict(team=team, version="1.1.0")
    figs = drawn_for(page, f"version 1.1.0, team {team}")
    check_distribution(figs["distribution"], result, **sel)
    assert len(figs["distribution"]) == 1
    check_trend(figs["trend"], result, **sel)  # still every version: that is the trend
    check_funnel(figs["funnel"], result, **sel)
    funnel_rows = page.locator(".tts-plot-funnel table.tts-funnel-table tbody tr").all_inner_texts()
    assert len(funnel_rows) == len(result.funnel(**sel)) and all("1.1.0" in r for r in funnel_rows)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-export-plots.png"), full_page=True)

    # Nothing matches: every panel says so in words, no (empty) graph, no stale table.
    page.select_option("#tts-filter-team", label="team-solo")
    figs = drawn_for(page, "version 1.1.0, team team-solo")
    assert figs == {name: None for name in PANELS}
    for name in PANELS:
        panel = page.locator(f".tts-plot-{name}")
        assert "No events match version 1.1.0, team team-solo" in panel.locator(".tts-live .tts-empty").inner_text()
        assert panel.locator(".js-plotly-plot:visible, img:visible, table:visible").count() == 0
    page.screenshot(path=str(ARTIFACTS / "report-export-no-match.png"), full_page=True)
    # ... and it draws again when something matches.
    page.select_option("#tts-filter-version", label="1.0.0")
    figs = drawn_for(page, "version 1.0.0, team team-solo")
    check_distribution(figs["distribution"], result, version="1.0.0", team="team-solo")
    check_funnel(figs["funnel"], result, version="1.0.0", team="team-solo")
    assert not asked, f"the export asked the network for {asked}"
    assert not errors
    ctx.close()

    # Without JavaScript: the PNGs and tables of all data, no Plotly.
    ctx, page = offline_page(chromium, out, asked, errors, java_script_enabled=False)
    assert page.locator(".tts-fallback img:visible").count() == 5
    assert page.locator(".tts-live:visible").count() == 0
    assert page.locator(".tts-plot-funnel table.tts-funnel-table tbody tr").count() == len(result.funnel())
    ctx.close()
    assert not asked and not errors


def test_export_with_no_data_says_so(tmp_path):
    out = static.export(tmp_path, tmp_path / "empty.html")
    text = out.read_text()
    assert "No learning events yet" in text and "<img" not in text and "<script" not in text
    with pytest.raises(static.ReportError, match="does not exist"):
        static.export(tmp_path, tmp_path / "no" / "dir" / "r.html")


# ---- the CLI ------------------------------------------------------------------------------------


def test_cli_tts_export_and_bad_input(tmp_path, capsys):
    home = tmp_path / "home"
    result = seed(home)
    assert cli.main(["--home", str(home), "report", "tts", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"] == result.summary()
    assert data["rows"] == json.loads(json.dumps(result.table()))
    assert cli.main(["--home", str(home), "report", "tts", "--version", "1.1.0", "--by", "module"]) == 0
    out = capsys.readouterr().out
    for row in result.table(["module"], version="1.1.0"):
        assert row["module"] in out and f"{row['median'] / 60:.1f}" in out
    assert cli.main(["--home", str(home), "report", "tts", "--team", "nobody"]) == 0
    assert "no events match team nobody" in capsys.readouterr().out
    assert cli.main(["--home", str(tmp_path), "report", "tts"]) == 0
    assert "no learning events yet" in capsys.readouterr().out
    assert cli.main(["--home", str(home), "report", "export", "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 10_000 and "works offline" in capsys.readouterr().out
    for argv, msg in (
        (["--home", str(tmp_path / "missing"), "report", "tts"], "does not exist"),
        (["report", "tts", "--events-url", "postgresql://127.0.0.1:1/x"], "unreachable"),
        (["--home", str(home), "report", "export", "-o", str(tmp_path / "no/r.html")], "does not exist"),
        (["--home", str(home), "report", "tts", "--by", "colour"], "--by takes"),
        (["report", "serve", "--events-url", "postgresql://127.0.0.1:1/x"], "unreachable"),
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and err.count("\n") == 1, err


def test_serve_refuses_a_bad_store_or_port_before_starting(tmp_path):
    with pytest.raises(EventStoreError, match="does not exist"):
        serve.serve(tmp_path / "missing")
    with pytest.raises(serve.ReportError, match="in use"):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            serve.serve(tmp_path, s.getsockname()[1])


# ---- Voila in Chromium ----------------------------------------------------------------------------


def jupyter_env(tmp_path: Path) -> dict[str, str]:
    """Keep the server off the user's Jupyter config and runtime files."""
    return {
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "LIVELAB_COURSES_DIR": os.environ["LIVELAB_COURSES_DIR"],
    }


def page_numbers(page) -> dict:
    out = {}
    for key, cls in (("median", "tts-median"), ("p90", "tts-p90"), ("count", "tts-count")):
        val = page.locator(f".{cls} .tts-value")
        out[key] = (val.get_attribute("data-seconds" if key != "count" else "data-count"), val.inner_text())
    return out


def plots_for(page, selection: str) -> None:
    """Wait until every plot panel shows the given selection (they are drawn after the numbers)."""
    for name in ("distribution", "trend", "funnel", "estimate", "checks"):
        page.locator(f'.tts-plot-{name} h2[data-selection="{selection}"]').wait_for(timeout=20_000)
    assert page.locator(".tts-plot-distribution img").count() == 1


@pytest.mark.browser
def test_voila_report_numbers_match_the_events(tmp_path, chromium):
    home = tmp_path / "home"
    result = seed(home)
    # cull_idle=20: the kernel of a closed page goes within seconds (a connected one never does).
    # (2 s was too short on a loaded machine: Voila culled the kernel it had just run the report
    # in before the page's websocket reached it, and the page never showed a number.)
    proc, url = serve.serve(
        home, env=jupyter_env(tmp_path), log=tmp_path / "voila.log", cull_idle=20, timeout=240
    )  # a bound, not a wait: Jupyter servers took 2 min to start at load 70
    kernels: dict[int, psutil.Process] = {}
    try:
        page = chromium.new_page(viewport={"width": 1300, "height": 2300})
        page.goto(url, timeout=60_000)
        # a bound for a loaded machine (voila runs the report notebook in a new kernel first)
        page.wait_for_selector(".tts-median .tts-value", timeout=240_000)
        for c in psutil.Process(proc.pid).children(recursive=True):
            kernels[c.pid] = c
        assert kernels, "voila started no kernel"
        assert page_numbers(page) == shown(result.summary())
        plots_for(page, "all events")
        assert "Loading widget" not in page.inner_text("body")

        # Change a filter as a manager would: 1.0.0, then 1.1.0 (did it teach faster?).
        versions = {}
        for ver in ("1.0.0", "1.1.0"):
            page.select_option(".tts-filter-version select", label=ver)
            want = shown(result.summary(version=ver))
            wait_for(lambda want=want: page_numbers(page) == want, 60, f"the numbers of version {ver}")
            versions[ver] = float(page_numbers(page)["median"][0])
            plots_for(page, f"version {ver}")  # the plots and tables follow the filter too
            legend = page.locator(".tts-plot-funnel table.tts-funnel-table tbody tr").all_inner_texts()
            assert legend and all(ver in row for row in legend)
        assert versions["1.1.0"] < versions["1.0.0"]
        assert "Loading widget" not in page.inner_text("body")
        # Drill down to one learner: their modules of the selected version, attempts, TTS in minutes.
        page.select_option(".tts-filter-learner select", label="learner-07")
        rows = page.locator(".tts-learner table.tts-learner-table tbody tr")
        want = result.drill_down("learner-07", version="1.1.0")
        wait_for(lambda: rows.count() == len(want), 60, "learner-07's modules")
        assert [r.split("\t")[1] for r in rows.all_inner_texts()] == [w["module"] for w in want]
        assert "download CSV" in page.locator(".tts-csv").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-voila.png"), full_page=True)

        # A filter that matches nothing says so (and draws no empty axes).
        page.select_option(".tts-filter-team select", label="team-solo")
        msg = page.locator(".tts-message")
        wait_for(
            lambda: "No events match version 1.1.0, team team-solo" in msg.inner_text(), 60, "the no-match message"
        )
        assert page.locator(".tts-median .tts-value").inner_text() == "–"
        assert (
            page.locator(".tts-plot-distribution img").count() == 0
            or not page.locator(".tts-plot-distribution img").is_visible()
        )
        page.select_option(".tts-filter-version select", label="(all)")
        wait_for(lambda: page_numbers(page) == shown(result.summary(team="team-solo")), 10, "team-solo's numbers")
        assert all(k.is_running() for k in kernels.values())  # connected longer than cull_idle: kept
        page.close()
        # Voila keeps a kernel per page view after the page closes; serve() has it culled.
        wait_for(
            lambda: not psutil.Process(proc.pid).children(recursive=True), 120, "the closed page's kernel to be culled"
        )
    finally:
        serve.stop(proc)
    gone, alive = psutil.wait_procs(list(kernels.values()), timeout=5)
    assert not alive and proc.returncode is not None, "the report left processes behind"


@pytest.mark.browser
def test_cli_serve_runs_until_sigterm_and_reaps_voila(tmp_path):
    home = tmp_path / "home"
    seed(home)
    env = {
        **os.environ,
        **jupyter_env(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "livelab", "--home", str(home), "report", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    procs: dict[int, psutil.Process] = {}
    try:
        line = p.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, line + p.stderr.read()
        with urllib.request.urlopen(m.group(1), timeout=60) as r:  # runs the notebook in a kernel
            body = r.read().decode()
        assert r.status == 200 and "voila" in body.lower()
        for c in psutil.Process(p.pid).children(recursive=True):
            procs[c.pid] = c
        assert len(procs) >= 2, "expected Voila and its kernel"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "report server stopped" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    gone, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    assert not alive, f"left behind: {[a.pid for a in alive]}"


# ---- hostile names (issue 13, point 5) ---------------------------------------------------------------

HOSTILE = {
    "learner": "</script><!--",
    "team": "<!--[/]",
    "module": "$\\nope{1}{0}$",
    "check": "[link=https://example.invalid]click[/link]",
    "version": "1.0.0 & <b>",
}


def hostile_seed(home: Path, legacy: bool = True) -> None:
    """A normal team (seed) plus a learner whose every name is hostile but printable -- what the
    store accepts -- and, with ``legacy``, rows an older store may hold (written before names were
    checked: an escape sequence, a U+2028, a 20,000-character module), inserted with plain SQL."""
    seed(home)
    h = HOSTILE
    evs = [
        Event(
            learner=h["learner"],
            team=h["team"],
            course="edge-ml",
            version=h["version"],
            module=h["module"],
            kind=k,
            time=T0 + dt,
            check=c,
            source=s,
            key="hostile",
        )
        for k, dt, c, s in (
            ("module-opened", 0, None, "sdk"),
            ("check-failed", 100, h["check"], "grader"),
            ("check-passed", 300, h["check"], "grader"),
        )
    ]
    with EventStore(home) as store:
        assert store.write(evs) == 3
    if legacy:
        import sqlite3

        con = sqlite3.connect(home / "events.sqlite")
        cols = [r[1] for r in con.execute("PRAGMA table_info(livelab_events)")]
        for i, (team, module) in enumerate((("\x1b[31mred\x1b[0m", "m1-telemetry"), ("line\u2028sep", "L" * 20_000))):
            for k, dt, c in (("module-opened", 0, None), ("check-passed", 120, "consent")):
                row = {
                    "id": f"{i}{k}".ljust(64, "0"),
                    "learner": f"legacy-{i}",
                    "team": team,
                    "course": "edge-ml",
                    "version": "1.0.0",
                    "module": module,
                    "kind": k,
                    "check": c,
                    "time": T0 + dt,
                    "source": "grader",
                    "key": "",
                    "detail": "{}",
                    "written_at": T0,
                    "system": 0,
                }
                con.execute(
                    f"INSERT INTO livelab_events ({', '.join(map(repr, cols))}) VALUES ({', '.join('?' * len(cols))})",
                    [row[c] for c in cols],
                )
        con.commit()
        con.close()


def embedded_json(page_html: str) -> dict:
    m = re.search(r'<script type="application/json" id="tts-data">(.*?)</script>', page_html, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def test_export_with_hostile_names(tmp_path):
    home = tmp_path / "home"
    hostile_seed(home)
    out = static.export(home, tmp_path / "r.html")  # mathtext once crashed here on '$\frac{1}{0}$'
    page_html = out.read_text()
    # The embedded JSON ends where it should and reads back to the names as they are.
    data = embedded_json(page_html)
    assert any(HOSTILE["team"] in k.split("\x1f") for k in data["combos"])
    body = page_html.split('id="tts-data">', 1)[1].split("</script>", 1)[0]
    assert not re.search(r"[<>&\u2028\u2029]", body)
    # Every name shown in the page is escaped: no markup from data.
    own = page_html.replace(plotly.offline.get_plotlyjs(), "")
    assert "<b>" not in own and "</script><!--" not in own.replace("<\\/script", "")
    assert "&lt;/script&gt;&lt;!--" in own
    # Plot text is bounded and escaped (Plotly reads text as HTML).
    names = [t.get("name") or "" for figs in data["plots"]["figures"].values() for f in figs for t in f.get("data", [])]
    labels = [
        y
        for figs in data["plots"]["figures"].values()
        for f in figs
        for t in f.get("data", [])
        for y in (t.get("y") or []) + (t.get("x") or [])
        if isinstance(y, str)
    ]
    assert max(len(s) for s in names + labels) < 80
    assert not any("<b>" in s for s in names + labels)
    assert "L" * 20_000 in page_html  # the data itself is not lost: the summary table has it


def test_cli_tts_prints_names_as_text(tmp_path, capsys):
    home = tmp_path / "home"
    hostile_seed(home)
    for argv in (
        ["--version", HOSTILE["version"], "--by", "team"],
        ["--by", "module"],
        ["--by", "team,module"],
        ["--learner", HOSTILE["learner"]],
        ["--learner", "legacy-0"],
    ):
        code = cli.main(["--home", str(home), "report", "tts", *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "\x1b" not in out and "\u2028" not in out
    assert cli.main(["--home", str(home), "report", "tts", "--by", "team"]) == 0
    out = capsys.readouterr().out
    assert HOSTILE["team"] in out and "\\x1b[31mred\\x1b[0m" in out and "\x1b" not in out
    assert cli.main(["--home", str(home), "report", "tts", "--team", HOSTILE["team"], "--by", "module"]) == 0
    assert "$\\nope{1}{0}$" in capsys.readouterr().out
    assert cli.main(["--home", str(home), "report", "tts", "--team", HOSTILE["team"], "--by", "version"]) == 0
    assert "1.0.0 & <b>" in capsys.readouterr().out


@pytest.mark.browser
def test_exported_page_filters_still_work_with_hostile_names(tmp_path, chromium):
    home = tmp_path / "home"
    hostile_seed(home)
    result = tts.load(home).select()
    out = static.export(home, tmp_path / "r.html")
    asked: list[str] = []
    errors: list[str] = []
    ctx, page = offline_page(chromium, out, asked, errors)
    drawn_for(page, "all events")
    assert page.locator(".tts-median .tts-value").get_attribute("data-seconds") == shown(result.summary())["median"][0]
    # The hostile team and version are options like any other, and choosing them works.
    page.select_option("#tts-filter-team", label=HOSTILE["team"])
    sel = {"team": HOSTILE["team"]}
    figs = drawn_for(page, f"team {HOSTILE['team']}")
    assert (
        page.locator(".tts-median .tts-value").get_attribute("data-seconds")
        == shown(result.summary(**sel))["median"][0]
        == f"{300 - 0:.3f}"
    )
    assert figs["distribution"] and figs["checks"]
    assert page.locator("table.tts-summary-table tbody tr:visible").count() == len(result.table(**sel))
    page.select_option("#tts-filter-version", label=HOSTILE["version"])
    drawn_for(page, f"version {HOSTILE['version']}, team {HOSTILE['team']}")
    assert page.locator(".tts-count .tts-value").inner_text() == "1"
    # The drill-down to the learner called '</script><!--': their module, two attempts, 5.0 min.
    page.select_option("#tts-filter-learner", label=HOSTILE["learner"])
    rows = page.locator(".tts-learner table.tts-learner-table tbody tr:visible")
    assert rows.count() == 1
    cells = rows.first.locator("td").all_inner_texts()
    assert HOSTILE["module"] in cells and "5.0" in cells and "2" in cells, cells
    page.select_option("#tts-filter-team", label="(all)")
    page.select_option("#tts-filter-version", label="1.0.0")
    wait_for(lambda: rows.count() == 0, 10, "the learner's rows to follow the version filter")
    # The legacy rows (an escape sequence in a team name) are shown as text, not interpreted.
    page.select_option("#tts-filter-version", label="(all)")
    page.select_option("#tts-filter-learner", label="legacy-0")
    assert "\x1b[31mred" in page.locator(".tts-learner").inner_text()
    page.screenshot(path=str(ARTIFACTS / "report-export-hostile.png"), full_page=False)
    assert not errors, errors
    assert not asked
    ctx.close()


# ---- the manager's report: drill-down, date range, system identities, CSV, minutes ----------------------


def learner_events(learner="ana", team="red", version="1.0.0", module="m1-telemetry", t0=T0, system=False):
    """Three runs of two checks: consent and trail fail, then consent passes (TTS 200 s), then both."""
    out = [
        ("module-opened", 0, None, "sdk"),
        ("check-failed", 100, "consent", "grader"),
        ("check-failed", 100, "trail", "grader"),
        ("check-passed", 200, "consent", "grader"),
        ("check-failed", 200, "trail", "grader"),
        ("check-passed", 300, "consent", "grader"),
        ("check-passed", 300, "trail", "grader"),
        ("module-completed", 310, None, "grader"),
    ]
    return [
        Event(
            learner=learner,
            team=team,
            course="edge-ml",
            version=version,
            module=module,
            kind=k,
            time=t0 + dt,
            check=c,
            source=s,
            key=f"run-{dt}",
            system=system,
        )
        for k, dt, c, s in out
    ]


def test_drill_down_to_one_learner():
    evs = learner_events() + learner_events(module="m2-replay", t0=T0 + 86400)[:4] + learner_events("ben")
    r = tts.tts(evs)
    rows = r.drill_down("ana")
    assert [
        (x["module"], x["tts"], x["status"], x["attempts"], x["checks_passed"], x["checks_seen"], x["failures"])
        for x in rows
    ] == [("m1-telemetry", 200.0, "ok", 3, 2, 2, 3), ("m2-replay", 200.0, "ok", 2, 1, 2, 2)]
    assert rows[0]["opened"] == T0 and rows[0]["completed"] == T0 + 310 and rows[1]["completed"] is None
    assert r.drill_down("ana", module="m2-replay") == rows[1:]
    assert r.drill_down("nobody") == [] and r.learners() == ["ana", "ben"]
    html_ = render.drill_down(r, "ana")
    assert "tts-learner-table" in html_ and "<td>3.3</td>" in html_ and "time to signal (min)" in html_


def test_date_range_selects_modules_by_their_first_opening():
    day = 86400
    evs = (
        learner_events()
        + learner_events(module="m2-replay", t0=T0 + 10 * day)
        + learner_events("ben", t0=T0 + 20 * day)
    )
    r = tts.tts(evs)
    assert r.summary(since=T0 + day)["groups"] == 2
    assert r.summary(since=T0 + day, until=T0 + 15 * day)["groups"] == 1
    sub = r.select(since=T0 + 5 * day)
    assert len(sub) == 2 and sub.learners() == ["ana", "ben"] and sub.events == 16
    assert sub.slowest_checks(None) and all(
        c["module"] in ("m1-telemetry", "m2-replay") for c in sub.slowest_checks(None)
    )
    assert sub.summary() == r.summary(since=T0 + 5 * day)


def system_seed(home: Path) -> tts.TTSResult:
    result = seed(home)
    with EventStore(home) as store:
        store.write(learner_events("release-gate", team="", system=True))
        store.write(learner_events("demo-bot", team="team-a", version="1.1.0", system=True))
    return result


def test_system_identities_are_left_out_unless_asked(tmp_path, capsys):
    home = tmp_path / "home"
    people = system_seed(home)
    full = tts.load(home)
    assert full.system_groups() == 2 and len(full.select()) == len(people)
    assert full.select().summary() == people.summary()
    assert cli.main(["--home", str(home), "report", "tts", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"] == people.summary() and "left out (2 learner" in data["scope"]
    assert cli.main(["--home", str(home), "report", "tts", "--json", "--include-system"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"]["groups"] == people.summary()["groups"] + 2
    assert cli.main(["--home", str(home), "report", "tts", "--learner", "release-gate"]) == 0
    assert "no modules for learner release-gate" in capsys.readouterr().out
    assert cli.main(["--home", str(home), "report", "tts", "--learner", "release-gate", "--include-system"]) == 0
    assert "3.3" in capsys.readouterr().out  # its TTS, in minutes
    # The export says what it left out; included, it says the times are simulated.
    page_html = static.export(home, tmp_path / "r.html").read_text()
    assert "release-gate" not in page_html and "system identities left out (2 learner" in page_html
    assert 'class="tts-simulated"' not in page_html
    page_html = static.export(home, tmp_path / "r.html", include_system=True).read_text()
    assert "release-gate" in page_html and 'class="tts-simulated"' in page_html and "simulated" in page_html
    # The dashboard's toggle.
    d = dashboard.Dashboard(full, background=False)
    assert f'data-count="{people.summary()["count"]}"' in d.numbers["tts-count"].value
    assert "release-gate" not in [v for _, v in d.learner.options]
    d.set_scope(include_system=True)
    assert "release-gate" in [v for _, v in d.learner.options]
    assert f'data-count="{people.summary()["count"] + 2}"' in d.numbers["tts-count"].value
    assert "simulated" in d.scope.value
    d.select(learner="demo-bot")
    assert "tts-learner-table" in d.drill.value and "1.1.0" in d.drill.value


def test_dashboard_date_range_drill_down_and_csv_link(tmp_path):
    import base64
    import datetime as dt

    day = 86400
    evs = learner_events() + learner_events("ben", team="blue", t0=T0 + 40 * day)
    d = dashboard.Dashboard(tts.tts(evs), background=False)
    assert 'data-count="2"' in d.numbers["tts-count"].value
    start = dt.datetime.fromtimestamp(T0 + 30 * day, dt.timezone.utc).date()
    d.set_scope(since=start)
    assert 'data-count="1"' in d.numbers["tts-count"].value
    assert [v for _, v in d.learner.options] == ["(all)", "ben"]
    assert "modules opened from" in d.scope.value
    d.select(learner="ben")
    assert "Learner ben" in d.drill.value
    href = re.search(r'href="data:text/csv;base64,([^"]+)"', d.csv.value).group(1)
    text = base64.b64decode(href).decode()
    assert text.splitlines()[0].startswith("learner,team,course,version,module,opened_utc,tts_min")
    assert text.splitlines()[1].split(",")[:2] == ["ben", "blue"] and ",3.33," in text
    d.set_scope(since=None, until=start)
    assert d.chosen_learner is None and "Choose a learner" in d.drill.value  # ben is out of range


def test_cli_export_csv_with_the_page_filters(tmp_path, capsys):
    import csv as _csv

    home = tmp_path / "home"
    people = system_seed(home)
    out = tmp_path / "t.csv"
    assert cli.main(["--home", str(home), "report", "export", "--csv", str(out), "--team", "team-b"]) == 0
    assert "times in minutes" in capsys.readouterr().out
    rows = list(_csv.DictReader(out.open()))
    want = people.table(("course", "version", "module", "team"), team="team-b")
    assert len(rows) == len(want) and {r["team"] for r in rows} == {"team-b"}
    assert [float(r["median_min"]) for r in rows] == [round(w["median"] / 60, 2) for w in want]
    assert all(h.endswith("_min") for h in rows[0] if "median" in h or "p90" in h)
    # The learner's drill-down, the date range, and both files at once.
    html_out = tmp_path / "r.html"
    assert (
        cli.main(
            [
                "--home",
                str(home),
                "report",
                "export",
                "-o",
                str(html_out),
                "--csv",
                str(out),
                "--learner",
                "learner-01",
                "--since",
                "2023-11-01",
                "--until",
                "2023-11-30",
            ]
        )
        == 0
    )
    rows = list(_csv.DictReader(out.open()))
    assert rows and {r["learner"] for r in rows} == {"learner-01"}
    assert all("2023-11" in r["opened_utc"] for r in rows)
    assert "modules opened from 2023-11-01 to 2023-11-30" in html_out.read_text()
    # Bad input: one line, exit 2, nothing written.
    (tmp_path / "adir").mkdir()
    for argv, msg in (
        (["report", "export"], "needs -o"),
        (["report", "export", "--csv", str(tmp_path / "adir")], "is a directory"),
        (["report", "export", "--csv", str(out), "--since", "yesterday"], "YYYY-MM-DD"),
        (["report", "export", "--csv", str(out), "--since", "2024-02-01", "--until", "2024-01-01"], "before --since"),
        (["report", "tts", "--team", "a\x1b[2Jb"], "U+001B"),
        (["report", "tts", "--learner", "x" * 300], "300 characters"),
    ):
        assert cli.main(["--home", str(home), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "\x1b" not in err, err
    assert not list((tmp_path / "adir").iterdir())


def test_one_unit_for_times_everywhere(tmp_path):
    assert tts.fmt_duration(45) == "0.8 min" and tts.fmt_duration(3600) == "60.0 min" and tts.fmt_duration(None) == "–"
    home = tmp_path / "home"
    seed(home)
    page_html = static.export(home, tmp_path / "r.html").read_text()
    own = page_html.replace(plotly.offline.get_plotlyjs(), "")
    text = re.sub(r"<[^>]+>", " ", own)
    assert not re.search(r"\d s\b", text), re.search(r".{40}\d s\b.{10}", text)  # no seconds shown anywhere
    assert "median (min)" in own and "p90 (min)" in own and "median to first pass (min)" in own
    for figs in embedded_json(page_html)["plots"]["figures"].values():
        for f in figs:
            for axis in ("xaxis", "yaxis"):
                title = ((f.get("layout") or {}).get(axis) or {}).get("title", {}).get("text", "")
                assert not re.search(r"\(s\)|\bsec", title), title


def test_demo_assigns_versions_at_random_within_each_team():
    from livelab import demo

    team = demo.assign_versions()
    assert team == demo.assign_versions()  # seeded: the same every run
    assert {n for n, _, _ in team} == {n for n, _ in demo.PEOPLE}
    for t in {t for _, t in demo.PEOPLE}:  # every team on every version: not confounded
        assert {v for _, tm, v in team if tm == t} == set(demo.VERSIONS)
    seeds = {tuple(v for _, _, v in demo.assign_versions(seed=s)) for s in range(20)}
    assert len(seeds) > 1  # and which learner gets which version is random


def test_a_store_with_only_system_identities_says_so(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    with EventStore(home) as store:
        store.write(learner_events("release-gate", system=True))
    page_html = static.export(home, tmp_path / "r.html").read_text()
    assert "Only system identities" in page_html and "No learning events yet" not in page_html
    assert cli.main(["--home", str(home), "report", "tts"]) == 0
    assert "Only system identities" in capsys.readouterr().out
    d = dashboard.Dashboard(tts.load(home), background=False)
    assert "Only system identities" in d.message.value
    d.set_scope(include_system=True)
    assert d.message.layout.display == "none" and 'data-count="1"' in d.numbers["tts-count"].value


# ---- device SLOs (docs/slo.md) in the manager's report -------------------------------------
#: Two devices as ``livelab status --json`` reports them: one whose bundle declares an objective
#: that is firing, one running a model without SLOs (``slo`` is null).
STATUS_DEVICES = [
    {
        "name": "dev-1",
        "slo": {
            "bundle": "f827a605b7105b4c69d7ec46dc0ed841fb67f43aa703980f5c386e49a78ca971",
            "objectives": [
                {
                    "name": "agree-call",
                    "indicator": "divergence",
                    "valid": 20,
                    "bad": 3,
                    "windows": 9,
                    "budget_remaining": -2.0,
                    "burn": {
                        "page": {"long": 20.0, "short": 20.0, "threshold": 14.4, "firing": True, "fired": 1},
                        "ticket": {"long": 6.5, "short": 20.0, "threshold": 6.0, "firing": False, "fired": 0},
                    },
                }
            ],
        },
    },
    {"name": "dev-2", "slo": None},
]


def test_device_slos_show_budget_and_burn_rate_in_the_report(tmp_path):
    rows = render.slo_rows(STATUS_DEVICES)
    assert rows == [
        {
            "namespace": "",
            "device": "dev-1",
            "bundle": "f827a605b710",
            "slo": "agree-call",
            "indicator": "divergence",
            "budget": "-2.00",
            "page": "20x",
            "ticket": "6.5x",
            "firing": "page",
        }
    ], "devices without SLOs are left out"
    result = seed(tmp_path)
    page = static.render_html(result, {}, source="test", slos=rows)
    section = page[page.index("<h2>Device SLOs</h2>") :]
    assert "agree-call" in section and "-2.00" in section and "20x" in section and "dev-2" not in section
    assert "Device SLOs" not in static.render_html(result, {}, source="test", slos=[])
    # without a running lab in the events' home, the static export has no SLO section
    assert static.device_slos(tmp_path) == []
