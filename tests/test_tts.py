"""Time-to-signal (reports/tts.py) on hand-built event sets: the definition, edge by edge.

Ties, never-passed, re-opened modules, clock skew between writers, passes without an
opening, unknown kinds and events from the future; the summaries (median/p90, trend,
funnel, estimates, slowest checks); and the vectorised computation against a plain
Python reading of the definition on a seeded synthetic team.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import pytest

from labs.learning_events import EventError
from reports import synthetic, tts
from reports.tts import SKEW_ALLOWANCE, EventTable, compute, version_key

T0 = 1_700_000_000.0


def E(learner, kind, t, module="m1", check=None, version="1.0.0", course="edge-ml", team="", **kw):
    if kind in ("check-passed", "check-failed") and check is None:
        check = "c1"
    return dict(
        learner=learner,
        kind=kind,
        time=T0 + t,
        module=module,
        check=check,
        version=version,
        course=course,
        team=team,
        **kw,
    )


def one(events, **kw):
    r = tts.tts(events, **kw)
    return {row["learner"] + "/" + row["module"] + "/" + row["version"]: row for row in r.rows()}, r


def test_basic_tie_and_never_passed():
    rows, r = one(
        [
            E("a", "module-opened", 0),
            E("a", "check-failed", 30),
            E("a", "check-passed", 100),
            E("a", "check-passed", 50, check="c2"),  # the first pass of any check counts
            E("b", "module-opened", 10),
            E("b", "check-passed", 10),  # a tie: 0
            E("c", "module-opened", 0),
            E("c", "check-failed", 500),  # never passed: no TTS
        ]
    )
    assert rows["a/m1/1.0.0"]["tts"] == 50 and rows["a/m1/1.0.0"]["status"] == "ok"
    assert rows["b/m1/1.0.0"]["tts"] == 0
    assert rows["c/m1/1.0.0"]["tts"] is None and rows["c/m1/1.0.0"]["status"] == "never-passed"
    s = r.summary()
    assert (s["count"], s["never_passed"], s["skewed"], s["no_open"]) == (2, 1, 0, 0)
    assert s["median"] == 25.0 and s["p90"] == pytest.approx(45.0)
    (f,) = r.funnel()
    assert (f["opened"], f["any check passed"], f["completed"]) == (3, 2, 0)


def test_reopening_does_not_reset_the_clock():
    rows, _ = one(
        [
            E("a", "module-opened", 0),
            E("a", "module-opened", 3000),
            E("a", "check-passed", 3600),
            E("b", "module-opened", 0),
            E("b", "check-passed", 100),
            E("b", "module-opened", 200),
            E("b", "check-passed", 300),
            # opened again later in another kernel, but the first opening came from the lab connection
            E("c", "lab-connected", 5),
            E("c", "module-opened", 20),
            E("c", "check-passed", 65),
        ]
    )
    assert rows["a/m1/1.0.0"]["tts"] == 3600
    assert rows["b/m1/1.0.0"]["tts"] == 100
    assert rows["c/m1/1.0.0"]["tts"] == 60 and rows["c/m1/1.0.0"]["opened"] == T0 + 5


def test_clock_skew_between_writers():
    rows, r = one(
        [
            E("a", "module-opened", 100),
            E("a", "check-passed", 100 - SKEW_ALLOWANCE / 2),  # within: 0
            E("b", "module-opened", 100),
            E("b", "check-passed", 100 - SKEW_ALLOWANCE),  # the edge: 0
            E("c", "module-opened", 1000),
            E("c", "check-passed", 1000 - SKEW_ALLOWANCE - 1),  # beyond: excluded
            E("c", "check-passed", 1500),
            E("d", "check-passed", 50),  # no opening
        ]
    )
    assert rows["a/m1/1.0.0"]["tts"] == 0 and rows["b/m1/1.0.0"]["tts"] == 0
    assert rows["c/m1/1.0.0"]["status"] == "skewed" and rows["c/m1/1.0.0"]["tts"] is None
    assert rows["d/m1/1.0.0"]["status"] == "no-open"
    s = r.summary()
    assert (s["count"], s["skewed"], s["no_open"], s["median"]) == (2, 1, 1, 0.0)
    # The allowance is a parameter: with a wider one, c's pass counts (as 0).
    rows, _ = one(
        [E("c", "module-opened", 1000), E("c", "check-passed", 1000 - SKEW_ALLOWANCE - 1)],
        skew_allowance=SKEW_ALLOWANCE * 2,
    )
    assert rows["c/m1/1.0.0"]["tts"] == 0


def test_unknown_kinds_and_future_events_are_refused():
    with pytest.raises(EventError, match="unknown event kind 'module-closed'"):
        tts.tts([E("a", "module-opened", 0), dict(E("a", "module-opened", 1), kind="module-closed")])
    with pytest.raises(EventError, match="future"):
        tts.tts([dict(E("a", "module-opened", 0), time=time.time() + 3600)])
    with pytest.raises(EventError, match="unknown event kind"):
        EventTable.from_codes(
            {c: np.zeros(1, int) for c in tts.COLUMNS}, {c: [""] for c in tts.COLUMNS}, np.array([9]), np.array([T0])
        )


def test_versions_teams_and_filters():
    ev = []
    for i, (ver, dt) in enumerate([("1.0.0", 600), ("1.0.0", 1200), ("1.1.0", 300), ("1.10.0", 60), ("1.9.0", 120)]):
        who = f"l{i}"
        ev += [
            E(who, "module-opened", 0, version=ver),
            E(who, "check-passed", dt, version=ver, team="blue", source="grader"),
        ]
    ev += [E("z", "module-opened", 0, module="m2", team="red"), E("z", "check-passed", 42, module="m2")]
    r = tts.tts(ev)
    assert r.options("version") == ["1.0.0", "1.1.0", "1.9.0", "1.10.0"]  # semver, not alphabetical
    assert r.options("team") == ["blue", "red"]  # team from the other events
    assert [t["version"] for t in r.trend()] == ["1.0.0", "1.1.0", "1.9.0", "1.10.0"]
    assert r.trend(module="m1")[0]["median"] == 900 and r.trend()[1]["median"] == 300
    assert r.trend()[0]["median"] == 600  # m2 (42 s) is in 1.0.0 too
    assert r.summary(version="1.0.0", team="blue")["median"] == 900
    assert r.summary(module="m2")["median"] == 42 and r.summary(team="red")["count"] == 1
    nothing = r.summary(version="1.1.0", team="red")
    assert nothing["groups"] == 0 and nothing["count"] == 0 and nothing["median"] is None
    assert r.summary(version="9.9.9")["groups"] == 0
    assert len(r.distribution(team="nobody")[0]) == 0
    with pytest.raises(ValueError, match="unknown filter"):
        r.summary(colour="red")
    assert version_key("1.10.0") > version_key("1.9.0") > version_key("1.9.0-rc1")


def test_empty_event_set():
    r = tts.tts([])
    assert len(r) == 0 and r.summary()["count"] == 0 and r.summary()["median"] is None
    assert r.table() == [] and r.funnel() == [] and r.slowest_checks() == [] and r.options("course") == []


def test_actual_minutes_against_estimates(tmp_path):
    ev = [
        E("a", "module-opened", 0),
        E("a", "check-passed", 60),
        E("a", "module-completed", 1200),
        E("b", "module-opened", 0),
        E("b", "check-passed", 60),
        E("b", "module-completed", 2400),
        E("c", "module-opened", 0),
    ]
    r = tts.tts(ev)
    (row,) = r.minutes_vs_estimate({("edge-ml", "m1"): 25})
    assert row["completed"] == 2 and row["median_minutes"] == 30 and row["estimated_minutes"] == 25
    assert row["ratio"] == pytest.approx(1.2)
    # From the course format: courses/<course-id>/course.toml, modules with id and minutes.
    (tmp_path / "edge-ml").mkdir()
    (tmp_path / "edge-ml" / "course.toml").write_text(
        'id = "edge-ml"\nversion = "1.0.0"\n[[modules]]\nid = "m1"\nminutes = 20\n'
        '[[modules]]\nid = "m2"\nminutes = 15\n'
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "course.toml").write_text("this is [not toml")
    rel = tmp_path / "edge-ml" / "releases" / "0.9.0"
    rel.mkdir(parents=True)
    (rel / "course.toml").write_text('id = "edge-ml"\n[[modules]]\nid = "m1"\nminutes = 30\n')
    est = tts.load_estimates(tmp_path)
    assert est[("edge-ml", "m1")] == 20 and est[("edge-ml", "1.0.0", "m2")] == 15
    assert est[("edge-ml", "0.9.0", "m1")] == 30  # a release's own estimate
    assert (
        tts.estimate_for(est, "edge-ml", "0.9.0", "m1") == 30 and tts.estimate_for(est, "edge-ml", "2.0.0", "m1") == 20
    )
    assert r.minutes_vs_estimate(est)[0]["estimated_minutes"] == 20
    assert tts.load_estimates(tmp_path / "nowhere") == {}
    assert tts.estimate_for({"m1": 7}, "edge-ml", "1.0.0", "m1") == 7


def test_slowest_checks_show_where_learners_get_stuck():
    ev = [
        E("a", "module-opened", 0),
        E("a", "check-passed", 60, check="quick"),
        E("a", "check-failed", 100, check="slow"),
        E("a", "check-passed", 1800, check="slow"),
        E("a", "check-failed", 50, check="stuck"),
        E("a", "check-failed", 70, check="stuck"),
        E("b", "module-opened", 0),
        E("b", "check-passed", 120, check="quick"),
        E("b", "check-passed", 600, check="slow"),
        E("b", "check-failed", 90, check="stuck"),
    ]
    rows = tts.tts(ev).slowest_checks()
    assert [r["check"] for r in rows] == ["stuck", "slow", "quick"]  # never passed first, then slowest
    stuck, slow, quick = rows
    assert (stuck["passed"], stuck["fails"], stuck["learners_failed"], stuck["median"]) == (0, 3, 2, None)
    assert slow["median"] == 1200 and slow["fails"] == 1 and quick["median"] == 90
    assert len(tts.tts(ev).slowest_checks(limit=1)) == 1


def reference(events: list[dict], skew: float = SKEW_ALLOWANCE) -> dict:
    """The definition read literally, one group at a time (slow, obviously right)."""
    groups = defaultdict(list)
    for e in events:
        groups[(e["learner"], e["course"], e["version"], e["module"])].append(e)
    out = {}
    for k, evs in groups.items():
        opens = [e["time"] for e in evs if e["kind"] in ("module-opened", "lab-connected")]
        passes = [e["time"] for e in evs if e["kind"] == "check-passed"]
        if not opens:
            out[k] = ("no-open", None)
        elif not passes:
            out[k] = ("never-passed", None)
        elif min(passes) - min(opens) < -skew:
            out[k] = ("skewed", None)
        else:
            out[k] = ("ok", max(0.0, min(passes) - min(opens)))
    return out


def test_vectorised_matches_the_definition_on_a_synthetic_team():
    table = synthetic.generate(
        seed=7, spec=synthetic.Spec(learners=80, teams=4, versions=("1.0.0", "1.1.0", "1.2.0"), p_far_skew=0.05)
    )
    cols = synthetic.to_columns(table)
    events = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    ref = reference(events)
    r = compute(table)
    got = {(x["learner"], x["course"], x["version"], x["module"]): (x["status"], x["tts"]) for x in r.rows()}
    assert got.keys() == ref.keys()
    for k, (status, value) in ref.items():
        assert got[k][0] == status, k
        assert (value is None and got[k][1] is None) or math.isclose(got[k][1], value, abs_tol=1e-6), k
    statuses = {s for s, _ in ref.values()}
    assert {"ok", "never-passed", "skewed"} <= statuses  # the set exercises every path
    ok = np.array([v for s, v in ref.values() if s == "ok"])
    s = r.summary()
    assert s["median"] == pytest.approx(np.median(ok)) and s["p90"] == pytest.approx(np.percentile(ok, 90))
    # The same through string columns (what a store returns) and through Event dicts.
    assert compute(EventTable.from_columns(cols)).summary() == s
    assert tts.tts(events).summary() == s
    # Later versions teach faster in this population: the trend shows it.
    med = [t["median"] for t in r.trend()]
    assert med == sorted(med, reverse=True)


def test_synthetic_generator_is_deterministic_and_exact():
    a = synthetic.generate(20_000, seed=3)
    b = synthetic.generate(20_000, seed=3)
    assert len(a) == 20_000
    assert np.array_equal(a.time, b.time) and np.array_equal(a.kind, b.kind)
    assert all(np.array_equal(a.codes[c], b.codes[c]) for c in tts.COLUMNS)
    assert not np.array_equal(synthetic.generate(20_000, seed=4).time, a.time)


def test_outcome_events_count_only_when_the_lab_signed_them(tmp_path):
    """A learner's kernel can write into the events store (the SDK writes the openings), so a
    check-passed or module-completed it forges - or a signed one it alters - must not give a
    time to signal: the report counts outcome events only when signed with the lab's events
    key, and says how many it left out."""
    from grading.outcomes import events_key, sign
    from labs.learning_events import EventStore

    key = events_key(tmp_path)
    g = {"source": "grader", "key": "sub-sha:ref"}  # as grading.events writes them
    signed = sign([E("ada", "check-passed", 60, **g), E("ada", "module-completed", 90, **g)], key)
    altered = sign([E("mal", "check-passed", 300, **g)], key)[0]
    altered["time"] = T0 + 5  # an earlier pass than the grader saw
    events = [
        E("ada", "module-opened", 0, source="sdk"),
        E("eve", "module-opened", 0, source="sdk"),
        E("mal", "module-opened", 0, source="sdk"),
        *signed,
        E("eve", "check-passed", 20, source="grader"),  # forged from eve's kernel: no signature
        E("eve", "module-completed", 30),
        altered,
    ]
    with EventStore(tmp_path) as store:
        store.write(events)
    r = tts.load(tmp_path)
    rows = {row["learner"]: row for row in r.rows()}
    assert rows["ada"]["tts"] == 60
    assert rows["eve"]["tts"] is None and rows["mal"]["tts"] is None
    assert r.unverified == 3 and r.verified
    # a store with no lab key beside it (a copy, an events URL alone) cannot be checked: it
    # says so rather than pretend
    other = tmp_path / "copy"
    other.mkdir()
    with EventStore(other) as store:
        store.write(events)
    r2 = tts.load(other)
    assert not r2.verified and r2.unverified == 0
