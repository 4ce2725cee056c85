"""Micro-SLOs as a library: declarations in the manifest, error budgets and burn-rate alerts.

Synthetic windows only (no lab): the evaluation is pure and deterministic, so every figure
is checked exactly.  The wiring on live devices is in ``test_slo_devices.py``.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from lab_hardware.modelops import bundle, slo
from lab_hardware.modelops.bundle import BundleError
from lab_hardware.modelops.slo import Evaluator, Objective, WindowCounts

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "labs" / "voice-intents" / "models" / "candidate.onnx"
INTENTS = ["weather", "timer", "music", "call", "lights", "shopping"]
CREATED = "2026-11-25T12:00:00Z"

LATENCY = {"name": "fast", "indicator": "latency", "threshold_ms": 15, "objective": 0.99, "period_windows": 8640}
UNDO_CALL = {
    "name": "few-call-undos",
    "indicator": "undo_rate",
    "intent": "call",
    "objective": 0.95,
    "period_windows": 120,
    "policy": "rollback",
}


def _slo(**kw) -> dict:
    return {**LATENCY, "policy": "alert", **kw}


def _latency_window(n: int, bad: int, *, fast: float = 1.0, slow: float = 40.0) -> WindowCounts:
    """A window of ``n`` decisions of which ``bad`` came from a batch slower than 15 ms."""
    lat = [(fast, n - bad)] + ([(slow, bad)] if bad else [])
    return WindowCounts(n, lat, {i: 0 for i in INTENTS}, {i: 0 for i in INTENTS})


# ---- declarations ------------------------------------------------------------------------
def test_manifest_declares_slos_and_reads_them_back(tmp_path):
    slos = [_slo(), UNDO_CALL, {"name": "routed", "indicator": "routed_share", "objective": 0.8,
                                "period_windows": 100, "policy": "alert"}]  # fmt: skip
    out = bundle.build(MODEL, tmp_path / "b.lbundle", name="intents", version="1.0.0", created=CREATED, slos=slos)
    b = bundle.read(out)
    assert b.manifest["slos"] == slos
    assert bundle.inspect(out)["slos"] == slos
    parsed = slo.parse(b.manifest["slos"], INTENTS)
    assert parsed[0] == Objective("fast", "latency", 0.99, 8640, "alert", threshold_ms=15.0)
    assert parsed[1].intent == "call" and parsed[1].policy == "rollback"


def test_a_bundle_without_slos_keeps_its_digest(tmp_path):
    """``slos`` is optional: leaving it out writes the manifest as before (same digest)."""
    a = bundle.build(MODEL, tmp_path / "a.lbundle", name="intents", version="1.0.0", created=CREATED)
    b = bundle.build(MODEL, tmp_path / "b.lbundle", name="intents", version="1.0.0", created=CREATED, slos=[])
    assert "slos" not in bundle.read(a).manifest
    assert bundle.read(a).digest != bundle.read(b).digest  # an empty list is a declaration too
    assert bundle.inspect(a)["slos"] == []


@pytest.mark.parametrize(
    "slos, match",
    [
        ({"fast": LATENCY}, "manifest: slos must be a list of objectives"),
        ([_slo()] * 2, "manifest: slos[1].name 'fast' is declared twice"),
        ([_slo(name=f"s{i}") for i in range(17)], "declares 17 objectives, at most 16"),
        (["fast"], "manifest: slos[0] must be a JSON object"),
        ([_slo(indicator="accuracy")], "slos[0].indicator must be one of latency, undo_rate, routed_share"),
        ([_slo(objective=1)], "slos[0].objective must be a number between 0 and 1 (exclusive), not 1"),
        ([_slo(objective=0)], "slos[0].objective must be a number between 0 and 1"),
        ([_slo(objective="0.99")], "slos[0].objective must be a number"),
        ([_slo(objective=True)], "slos[0].objective must be a number"),
        ([_slo(period_windows=5)], "slos[0].period_windows must be an integer from 10 to 100000"),
        ([_slo(period_windows=100_001)], "slos[0].period_windows must be an integer from 10 to 100000"),
        ([_slo(period_windows=100.0)], "slos[0].period_windows must be an integer"),
        ([_slo(policy="page")], "slos[0].policy must be one of alert, rollback, retrain, not 'page'"),
        ([_slo(policy="retrain")], "slos[0].policy 'retrain' is only for the divergence indicator, not 'latency'"),
        ([{**UNDO_CALL, "policy": "retrain"}], "slos[0].policy 'retrain' is only for the divergence indicator"),
        ([_slo(threshold_ms=0)], "slos[0].threshold_ms must be a number of ms > 0, not 0"),
        ([_slo(threshold_ms=None)], "slos[0].threshold_ms must be a number of ms > 0, not None"),
        ([{k: v for k, v in _slo().items() if k != "threshold_ms"}], "slos[0]: missing key 'threshold_ms'"),
        ([{k: v for k, v in _slo().items() if k != "policy"}], "slos[0]: missing key 'policy'"),
        ([_slo(intent="call")], "slos[0]: unknown key 'intent' for indicator 'latency'"),
        ([_slo(budget=3)], "slos[0]: unknown key 'budget'"),
        ([{**UNDO_CALL, "intent": "dance"}], "slos[0].intent 'dance' is not one of the bundle's intents"),
        ([{**UNDO_CALL, "intent": 3}], "slos[0].intent must be an intent name"),
        ([_slo(name="Fast SLO")], "slos[0].name 'Fast SLO' is invalid"),
    ],
)
def test_bad_declarations_are_refused_with_one_line(tmp_path, slos, match):
    with pytest.raises(BundleError) as err:
        bundle.build(MODEL, tmp_path / "b.lbundle", name="intents", version="1.0.0", created=CREATED, slos=slos)
    msg = str(err.value)
    assert match in msg and "\n" not in msg
    assert msg.startswith("manifest: ")
    assert not (tmp_path / "b.lbundle").exists()


def test_a_signed_manifest_with_a_bad_slo_is_refused_on_read(tmp_path):
    """validate_manifest is what a device runs on every bundle it reads, not only build."""
    import json

    out = bundle.build(MODEL, tmp_path / "b.lbundle", name="intents", version="1.0.0", created=CREATED, slos=[_slo()])
    b = bundle.read(out)
    m = json.loads(b.canonical)
    m["slos"][0]["objective"] = 2
    with pytest.raises(BundleError, match=r"manifest: slos\[0\].objective must be"):
        bundle.validate_manifest(m)


# ---- the workbook's windows, scaled ------------------------------------------------------
def test_alert_windows_scale_the_workbook():
    page, ticket = slo.alert_windows(8640)  # one window = five minutes of a 30-day period
    assert (page.long, page.short, page.burn) == (12, 1, Fraction(72, 5))
    assert (ticket.long, ticket.short, ticket.burn) == (72, 6, 6)
    page, ticket = slo.alert_windows(86400)  # 30 s windows
    assert (page.long, page.short, ticket.long, ticket.short) == (120, 10, 720, 60)
    page, ticket = slo.alert_windows(120)  # a lab-sized period: the minimums
    assert (page.long, page.short, ticket.long, ticket.short) == (2, 1, 6, 1)


# ---- budget arithmetic -------------------------------------------------------------------
def test_budget_and_burn_rate_are_exact():
    ev = Evaluator(slo.parse([_slo(period_windows=100)]))
    tr = ev.trackers[0]
    assert ev.status()[0]["budget_remaining"] == 1.0  # no events, nothing spent
    for _ in range(10):
        assert ev.observe(_latency_window(100, 0)) == []
    ev.observe(_latency_window(100, 3))  # 3 bad of 1100: budget (1 - 0.99) * 1100 = 11 bad
    st = ev.status()[0]
    assert (st["windows"], st["valid"], st["bad"]) == (11, 1100, 3)
    assert st["budget_remaining"] == round(1 - 3 / 11, 6) == 0.727273
    assert tr._ratio(tr.sums[100]) == Fraction(3, 11)  # exact: 0.99 read as 99/100
    # page: last 2 windows (200 decisions, 3 bad): burn (3/200)/0.01 = 1.5; short: 3.0
    assert st["burn"]["page"]["long"] == 1.5 and st["burn"]["page"]["short"] == 3.0
    assert st["burn"]["ticket"]["windows"] == [6, 1] and st["burn"]["ticket"]["long"] == 0.5
    assert not st["burn"]["page"]["firing"] and not st["burn"]["ticket"]["firing"]


def test_the_period_rolls():
    """Windows older than the period leave the budget; a spent budget comes back."""
    ev = Evaluator(slo.parse([_slo(period_windows=10)]))
    ev.observe(_latency_window(100, 20))  # 20 bad, budget 1 bad: 20x overspent
    assert ev.status()[0]["budget_remaining"] == -19.0
    for _ in range(9):
        ev.observe(_latency_window(100, 0))
        assert ev.status()[0]["bad"] == 20
    assert ev.status()[0]["budget_remaining"] == round(1 - 20 / 10, 6) == -1.0
    ev.observe(_latency_window(100, 0))  # the bad window is now 11 windows old
    st = ev.status()[0]
    assert (st["windows"], st["valid"], st["bad"], st["budget_remaining"]) == (10, 1000, 0, 1.0)


def test_threshold_is_exceeded_not_met():
    """Exactly 14.4x is not a page (the workbook's 'exceeds'); integer comparison, no float fuzz."""
    tr = slo.Tracker(slo.parse([_slo(objective=0.99, period_windows=8640)])[0])
    for _ in range(12):
        tr.observe(1000, 144)  # (144/1000)/0.01 = 14.4 exactly
    assert tr.burn(12) == 14.4 and not tr.firing["page"]
    assert tr.firing["ticket"]  # 14.4 > 6


def test_a_window_with_no_events_spends_nothing():
    ev = Evaluator(slo.parse([{**UNDO_CALL, "period_windows": 10}], INTENTS))
    counts = {i: 10 for i in INTENTS}
    w = WindowCounts(60, [(1.0, 60)], {**counts, "call": 0}, {**{i: 5 for i in INTENTS}, "call": 0})
    assert ev.observe(w) == []
    st = ev.status()[0]
    assert (st["valid"], st["bad"], st["budget_remaining"]) == (0, 0, 1.0)
    assert st["burn"]["page"]["long"] == 0.0


# ---- multiwindow, multi-burn-rate alerts ---------------------------------------------------
def test_fast_burn_pages_once_and_resets():
    ev = Evaluator(slo.parse([_slo()]))  # 8640 windows: page 12/1 windows at 14.4x
    for _ in range(100):
        assert ev.observe(_latency_window(100, 0)) == []
    alerts = []
    for i in range(12):
        got = ev.observe(_latency_window(100, 100))  # everything slow: burn 100x
        alerts += [(i, a.severity) for a in got]
    # long (12 windows): k bad windows give (k/12)/0.01 burn > 14.4 from k = 2; ticket (72
    # windows): (k/72)/0.01 > 6 from k = 5; each alert is reported once, when it starts
    assert alerts == [(1, "page"), (4, "ticket")]
    page = next(a for a in ev.trackers[0].alerts if a.severity == "page")
    assert page.long == 12
    st = ev.status()[0]
    assert st["burn"]["page"]["firing"] and st["burn"]["page"]["fired"] == 1
    assert st["burn"]["page"]["short"] == 100.0
    # recovery: the short window clears the page at once, though the long one still burns
    assert ev.observe(_latency_window(100, 0)) == []
    st = ev.status()[0]
    assert not st["burn"]["page"]["firing"] and st["burn"]["page"]["long"] > 14.4
    assert st["burn"]["ticket"]["firing"]  # its short window is 6 windows: 5 of them bad


def test_fast_burn_alert_carries_the_figures():
    ev = Evaluator(slo.parse([_slo(period_windows=720)]))  # page 2/1, ticket 6/1
    ev.observe(_latency_window(100, 0))
    alerts = ev.observe(_latency_window(100, 50))
    assert [x.severity for x in alerts] == ["page", "ticket"]  # 25x is over both thresholds
    a = alerts[0]
    assert a.severity == "page" and a.window == 2 and a.policy == "alert"
    assert (a.burn_long, a.burn_short, a.threshold) == (25.0, 50.0, 14.4)
    assert (a.long_windows, a.short_windows) == (2, 1)
    assert a.budget_remaining == round(1 - 50 / (0.01 * 200), 6) == -24.0
    assert a.as_dict()["burn_rate"] == {"long": 25.0, "short": 50.0}
    assert "burning its error budget 25x over 2 windows" in a.reason()


def test_slow_burn_tickets_but_does_not_page():
    ev = Evaluator(slo.parse([_slo()]))
    got = []
    for _ in range(200):
        got += ev.observe(_latency_window(1000, 70))  # 7% slow: burn 7x (> 6, < 14.4)
    assert [a.severity for a in got] == ["ticket"]
    st = ev.status()[0]["burn"]
    assert st["ticket"]["firing"] and st["ticket"]["long"] == 7.0
    assert not st["page"]["firing"] and st["page"]["fired"] == 0


def test_a_short_blip_does_not_alert():
    """One very bad window among good ones: the short windows burn, the long ones do not."""
    ev = Evaluator(slo.parse([_slo()]))
    got = []
    for i in range(300):
        got += ev.observe(_latency_window(100, 100 if i == 150 else 0))
    assert got == []
    st = ev.status()[0]
    assert st["bad"] == 100 and st["burn"]["page"]["fired"] == 0 and st["burn"]["ticket"]["fired"] == 0


def test_a_long_low_burn_that_still_spends_no_alert():
    """2x burn spends the budget in half a period but is not an emergency: no page, no ticket."""
    ev = Evaluator(slo.parse([_slo(period_windows=1440)]))
    got = []
    for _ in range(1440):
        got += ev.observe(_latency_window(100, 2))
    assert got == []
    assert ev.status()[0]["budget_remaining"] == -1.0


def test_undo_rate_per_intent_and_overall():
    overall = {**UNDO_CALL, "name": "undos", "period_windows": 10}
    del overall["intent"]
    ev = Evaluator(slo.parse([{**UNDO_CALL, "period_windows": 10}, overall], INTENTS))
    counts = {i: 10 for i in INTENTS}
    undo = {**{i: 0 for i in INTENTS}, "call": 4}
    (a,) = ev.observe(WindowCounts(60, [(1.0, 60)], counts, undo))
    call, all_ = ev.status()
    assert (call["valid"], call["bad"]) == (10, 4)  # 40% undone: burn 8x... of 0.05
    assert (all_["valid"], all_["bad"]) == (60, 4)
    assert call["burn"]["page"]["long"] == round((4 / 10) / 0.05, 6) == 8.0
    assert a.slo == "few-call-undos" and a.severity == "ticket" and a.policy == "rollback"


def test_oracle_indicators_read_the_oracle_fields():
    decl = [
        {"name": "routed", "indicator": "routed_share", "objective": 0.7, "period_windows": 10, "policy": "alert"},
        {"name": "agree", "indicator": "divergence", "objective": 0.9, "period_windows": 10, "policy": "alert"},
        {
            "name": "agree-call",
            "indicator": "divergence",
            "intent": "call",
            "objective": 0.9,
            "period_windows": 10,
            "policy": "alert",
        },  # fmt: skip
    ]
    ev = Evaluator(slo.parse(decl, INTENTS))
    w = WindowCounts(100, [(1.0, 100)], {}, {})
    ev.observe(w)  # a window without oracle fields: no events for any of them
    assert [s["valid"] for s in ev.status()] == [100, 0, 0]
    w = WindowCounts(100, [(1.0, 100)], {}, {}, routed=20, answered={"call": 10, "timer": 10}, diverged={"call": 5})
    ev.observe(w)
    assert [(s["valid"], s["bad"]) for s in ev.status()] == [(200, 20), (20, 5), (10, 5)]


def test_a_retrain_policy_alert_carries_the_divergence_behind_it():
    """A ``retrain`` divergence objective alerts like any other; its trigger figures are the
    integer counts of oracle answers and disagreements over the alert's windows and the period."""
    decl = {
        "name": "agree-call",
        "indicator": "divergence",
        "intent": "call",
        "objective": 0.95,
        "period_windows": 10,
        "policy": "retrain",
    }
    (o,) = slo.parse([decl], INTENTS)
    assert o.policy == "retrain"
    ev = Evaluator([o], bundle="b" * 64)
    calm = WindowCounts(100, [(1.0, 100)], {}, {}, routed=10, answered={"call": 10}, diverged={})
    diverging = WindowCounts(
        100, [(1.0, 100)], {}, {}, routed=10, answered={"call": 10, "timer": 4}, diverged={"call": 8}
    )
    assert ev.observe(calm) == []
    (alert,) = ev.observe(diverging)  # ticket: 8/20 over its long window (8x), 8/10 over its short (16x)
    assert (alert.policy, alert.severity, alert.window) == ("retrain", "ticket", 2)
    figures = ev.trigger(alert)
    assert figures["slo"] == "agree-call" and figures["intent"] == "call" and figures["indicator"] == "divergence"
    assert figures["severity"] == "ticket" and figures["burn_rate"] == {"long": 8.0, "short": 16.0}
    assert figures["short"] == {"windows": 1, "answered": 10, "diverged": 8, "divergence": 0.8}
    assert figures["long"] == {"windows": 6, "answered": 20, "diverged": 8, "divergence": 0.4}
    assert figures["period"] == {"windows": 10, "answered": 20, "diverged": 8, "divergence": 0.4}
    assert figures["budget_remaining"] == alert.budget_remaining == -7.0


def test_window_counts_of_a_device_window():
    import numpy as np

    from lab_hardware.window import Decisions, Window

    w = Window(INTENTS, 0.0)
    probs = np.full((3, 6), 0.01, dtype=np.float32)
    probs[:, 3] = 0.95
    d = Decisions.from_batch(
        np.array([3, 3, 0]), probs, np.array([True, False, False]), ["a" * 16] * 3, 0, latency_ms=4.5
    )
    w.add(d)
    c = WindowCounts.of(w)
    assert c.decisions == 3 and c.latencies == [(4.5, 3)]
    assert c.counts["call"] == 2 and c.undo == {**{i: 0 for i in INTENTS}, "call": 1}
    assert (c.routed, c.answered, c.diverged) == (0, {}, {})
    w.routed, w.answered, w.diverged = 2, [0, 0, 0, 2, 0, 0], {"call": 1}  # as the oracle may add them
    c = WindowCounts.of(w)
    assert (c.routed, c.answered["call"], c.diverged) == (2, 2, {"call": 1})


def test_window_counts_read_the_oracle_routing_of_a_device_window():
    """The oracle's routing counters, as a device's window really keeps them (``Window.oracle``,
    filled by routed batches), reach the routed-share and divergence indicators."""
    import numpy as np

    from lab_hardware.window import Decisions, Window

    w = Window(INTENTS, 0.0)
    probs = np.full((4, 6), 0.01, dtype=np.float32)
    probs[:, 3] = 0.95
    d = Decisions.from_batch(np.array([3, 3, 3, 0]), probs, np.zeros(4, dtype=bool), ["a" * 16] * 4, 0, latency_ms=2.0)
    # decision 0 not routed, 1 the oracle agreed, 2 diverged, 3 fell back (timeout)
    d.route, d.edge, d.route_ms, d.fallback = [0, 1, 2, 3], [3, 3, 3, 0], 1.5, "timeout"
    w.add(d)
    c = WindowCounts.of(w)
    assert c.routed == 3
    assert c.answered == {**{i: 0 for i in INTENTS}, "call": 2} and c.diverged == {**{i: 0 for i in INTENTS}, "call": 1}


def test_evaluation_is_deterministic():
    def run():
        ev = Evaluator(slo.parse([_slo(period_windows=100), {**UNDO_CALL, "period_windows": 50}], INTENTS))
        out = []
        for i in range(400):
            out += [a.as_dict() for a in ev.observe(_latency_window(100, (i * 37) % 23))]
        return out, ev.status()

    assert run() == run()


def test_the_panel_shows_budget_and_firing_alerts():
    from labs.widgets import render_slo, render_status

    ev = Evaluator(slo.parse([_slo(period_windows=100)]))
    ev.observe(_latency_window(100, 0))
    calm = {"bundle": "ab" * 32, "objectives": ev.status()}
    html = render_status(["dev-0"], {"dev-0": {"online": True, "slo": calm}}, {})
    assert "<th>SLO budget</th>" in html and "fast: 100% left, burn 0x" in html and "livelab-bad" not in html
    ev.observe(_latency_window(100, 50))  # pages: 25x over 2 windows, 50x over 1
    hot = render_slo({"bundle": "ab" * 32, "objectives": ev.status()})
    assert "fast: -2400% left, burn 50x · page" in hot and "livelab-bad" in hot
    assert render_slo(None) == "–"


def test_cli_builds_a_bundle_with_slos_and_refuses_bad_ones(tmp_path):
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [sys.executable, "-m", "livelab", "--home", str(tmp_path / "home"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in res.stdout + res.stderr, res.stderr
        return res

    good, bad, broken = tmp_path / "slos.json", tmp_path / "bad.json", tmp_path / "broken.json"
    good.write_text(json.dumps([_slo(), UNDO_CALL]))
    bad.write_text(json.dumps([_slo(policy="page")]))
    broken.write_text("[{")
    base = ["bundle", "build", str(MODEL), "--name", "intents", "--version", "1.0.0", "--created", CREATED]
    r = cli(*base, "-o", str(tmp_path / "b.lbundle"), "--slos", str(good))
    assert r.returncode == 0, r.stderr
    r = cli("bundle", "inspect", str(tmp_path / "b.lbundle"), "--json")
    assert [s["name"] for s in json.loads(r.stdout)["slos"]] == ["fast", "few-call-undos"]
    for f, why in ((bad, "slos[0].policy must be one of alert, rollback, retrain"), (broken, "cannot read SLOs from")):
        r = cli(*base, "-o", str(tmp_path / "x.lbundle"), "--slos", str(f))
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli(*base, "-o", str(tmp_path / "x.lbundle"), "--slos", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "no SLO file at" in r.stderr
    assert not (tmp_path / "x.lbundle").exists()


@pytest.mark.parametrize("period", [10, 37, 720])
def test_running_sums_match_a_recount(period):
    """The ring and running sums against a plain recount of the last n windows, past several periods."""
    import random

    rnd = random.Random(period)
    tr = slo.Tracker(slo.parse([_slo(period_windows=period)])[0])
    seen: list[tuple[int, int]] = []
    for _ in range(3 * period + 5):
        v = rnd.randint(0, 50)
        b = rnd.randint(0, v)
        tr.observe(v, b)
        seen.append((v, b))
        for n in tr.lengths:
            last = seen[-n:]
            assert tr.sums[n] == [sum(x for x, _ in last), sum(y for _, y in last)]
    assert len(tr.valid) == period


def test_a_flapping_alert_is_reported_once_per_long_window():
    """Bad, clean, bad, clean...: the page's short window (1) clears every other window, its long
    window (12) keeps burning; reported again only after 12 windows, not every other window."""
    ev = Evaluator(slo.parse([_slo()]))
    pages = []
    for i in range(48):
        pages += [i for a in ev.observe(_latency_window(100, 100 if i % 2 == 0 else 0)) if a.severity == "page"]
    # long burn over k bad windows of 12: the first bad window is 100x over one window
    assert pages == [0, 12, 24, 36]
    assert ev.status()[0]["burn"]["page"]["fired"] == 4
