"""The pieces of fair grading that need no grading run: distinct evidence, the untidy plan,
hints, course check / preview, and ``livelab lab reset`` against a live lab.

The fairness suite itself (answers graded by the real grader) is tests/test_fairness.py.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from courses import catalog
from grading import untidy
from grading.checks.base import CheckContext, Message
from labs import sdk
from livelab.cli import main
from tests.conftest import ROOT

COURSE_ID = "edge-ml-foundations"
SHIPPED = ROOT / "courses" / COURSE_ID


@pytest.fixture(autouse=True)
def _shipped_courses(monkeypatch):
    monkeypatch.delenv("LIVELAB_COURSES_DIR", raising=False)


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- distinct evidence -------------------------------------------------------------------
def _msg(topic: str, payload: dict, t: float = 0.0) -> Message:
    return Message(t, topic, json.dumps(payload).encode(), False)


def test_redelivered_windows_and_capture_parts_count_once():
    tel = "livelab/ns/devices/dev-1/telemetry"
    cap = "livelab/ns/devices/dev-1/capture"
    msgs = [
        _msg(tel, {"device": "dev-1", "seq": 1}),
        _msg(tel, {"device": "dev-1", "seq": 1}, 1.0),
        _msg(tel, {"device": "dev-1", "seq": 2}),
        _msg(cap, {"device": "dev-1", "capture_id": "c", "part": 0}),
        _msg(cap, {"device": "dev-1", "capture_id": "c", "part": 0}, 2.0),
    ]
    ctx = CheckContext(
        home=Path("."), namespace="ns", devices=["dev-1"], learner="a", module="m", started=0, ended=1, messages=msgs
    )
    assert len(ctx.of("telemetry")) == 3 and [w["seq"] for w in ctx.distinct("telemetry")] == [1, 2]
    assert len(ctx.distinct("capture", "dev-1")) == 1


# ---- the untidy start --------------------------------------------------------------------
def test_untidy_plan_is_seeded_and_validated():
    devs = ["dev-0", "dev-1", "dev-2"]
    spec = [{"grant": "telemetry", "devices": "some"}]
    a = untidy.plan(spec, devs, seed=0, module="m1")
    assert a == untidy.plan(spec, devs, seed=0, module="m1"), "the same seed gives the same start"
    assert 1 <= len(a) < len(devs) and {s for _, s in a} == {"telemetry"}
    starts = {tuple(untidy.plan(spec, devs, seed=s, module="m1")) for s in range(20)}
    assert len(starts) > 1, "different seeds start differently"
    assert untidy.plan([{"grant": "replay-capture", "devices": ["dev-1", "dev-9"]}], devs) == [
        ("dev-1", "replay-capture")
    ]
    assert untidy.plan(None, devs) == []
    problems = untidy.validate([{"grant": "audio", "devices": "all"}, {"grant": "telemetry"}])
    assert len(problems) == 3 and "not a consent scope" in problems[0] and "exactly the keys" in problems[2]


def test_course_toml_untidy_and_hints_are_validated(tmp_path):
    dst = tmp_path / COURSE_ID
    shutil.copytree(SHIPPED, dst, ignore=shutil.ignore_patterns("releases"))
    toml = dst / "course.toml"
    text = toml.read_text()
    toml.write_text(text.replace('grant = "telemetry", devices = "some"', 'grant = "audio", devices = "some"', 1))
    with pytest.raises(catalog.CourseError, match="not a consent scope"):
        catalog.load(dst)
    toml.write_text(text.replace("quiet = [", "quiet_x = []\nquiet = [", 1))
    with pytest.raises(catalog.CourseError, match="hints.quiet_x must be a non-empty array"):
        catalog.load(dst)


# ---- hints -------------------------------------------------------------------------------
def _learner(module: str, version: str | None = None):
    c = catalog.load(COURSE_ID)
    return SimpleNamespace(course=COURSE_ID, version=version or c.version, module=module, _hints_shown={})


def test_hints_are_progressive_and_come_from_the_course(capsys):
    me = _learner("m1-telemetry")
    first = sdk.Lab.hint(me, "quiet")
    second = sdk.Lab.hint(me, "quiet")
    third = sdk.Lab.hint(me, "quiet")
    hints = dict(catalog.load(COURSE_ID).module("m1-telemetry").hints)["quiet"]
    assert first.startswith("hint 1/2") and hints[0] in first and "call again" in first
    assert second.startswith("hint 2/2") and hints[1] in second and "last hint" in second
    assert third == second, "past the last hint it repeats the last"
    assert "hint 1/2" in capsys.readouterr().out
    assert "exercises with hints: quiet, windows, rates, trail" in sdk.Lab.hint(me, "nope")
    # a released version without hints says so instead of failing
    assert "no hints" in sdk.Lab.hint(_learner("m1-telemetry", "1.0.0"), "quiet")
    # every exercise of every module has a hint
    for m in catalog.load(COURSE_ID).modules:
        nb = nbformat.read(str(m.notebook), as_version=4)
        exercises = {
            c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")
        }
        assert exercises == set(dict(m.hints)), m.id


def test_hints_work_in_a_fetched_workspace(tmp_path, monkeypatch):
    c = catalog.load(COURSE_ID)
    rels = catalog.releases(c)
    with_hints = [v for v in rels if any(m.get("hints") for m in catalog.read_release(c, v)["modules"])]
    if not with_hints:
        pytest.skip("no release with hints yet")
    v = with_hints[-1]
    catalog.fetch(c, v, tmp_path / "ws")
    monkeypatch.chdir(tmp_path / "ws" / "m2-replay")
    monkeypatch.setattr(sdk, "_course_roots", lambda: [])
    assert sdk.Lab.hint(_learner("m2-replay", v), "build").startswith("hint 1/")


# ---- module 1's panel --------------------------------------------------------------------
def _cells(nb) -> list[str]:
    return [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]


@pytest.mark.parametrize("where", ["source", "release"])
def test_module_1_names_the_defect_intent_only_after_exercise_3(where):
    c = catalog.load(COURSE_ID)
    if where == "source":
        path = c.module("m1-telemetry").notebook
    else:
        rels = [v for v in catalog.releases(c) if v not in ("1.0.0", "1.1.0")]
        if not rels:
            pytest.skip("no release after 1.1.0 yet")
        path = catalog.release_dir(c, rels[-1]) / "learner" / "m1-telemetry" / "m1-telemetry.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    ids = _cells(nb)
    rates_test = ids.index("rates-test")
    defect = "call"
    for cell in nb.cells[:rates_test]:
        src = cell.source
        if cell.cell_type == "code":
            assert "watch" not in src and "defect_intent" not in src, cell.source
    panel = next(c for c in nb.cells if "lab.panel(" in c.source)
    assert re.search(r"lab\.panel\(\s*\)", panel.source), "the panel opens watching nothing"
    watch = [i for i, c in enumerate(nb.cells) if "panel.watch(" in c.source]
    assert watch and min(watch) > rates_test, "the panel watches the intent only after exercise 3 found it"
    # the texts before exercise 3 (beyond the users' complaint) do not name it either
    before = " ".join(c.source for c in nb.cells[ids.index("panel-intro") : ids.index("rates-md")])
    assert f"`{defect}`" not in before and "most higher" not in " ".join(c.source for c in nb.cells)


def test_every_test_cell_prints_a_check_mark_when_it_passes():
    for m in catalog.load(COURSE_ID).modules:
        nb = nbformat.read(str(m.notebook), as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and not meta.get("solution"):
                last = cell.source.rstrip().splitlines()[-1]
                assert last.startswith('print("✓') or last.startswith("print('✓"), (m.id, meta["grade_id"])


# ---- course check / preview --------------------------------------------------------------
def test_course_check_lists_every_problem_at_once_without_a_lab(tmp_path, capsys):
    dst = tmp_path / COURSE_ID
    shutil.copytree(SHIPPED, dst, ignore=shutil.ignore_patterns("releases"))
    toml = dst / "course.toml"
    version = catalog.load(dst).version
    (dst / "CHANGELOG.md").write_text("# Changelog\n\n## 0.0.1\n\nold.\n")
    toml.write_text(toml.read_text().replace("quiet = [", 'nosuchexercise = ["x"]\nquiet = [', 1))
    p = dst / "source" / "m3-bundles" / "m3-bundles.ipynb"
    nb = json.loads(p.read_text())
    nb["cells"][4]["metadata"]["nbgrader"]["grade_id"] = "intro"  # a duplicate grade id
    p.write_text(json.dumps(nb))
    t0 = time.perf_counter()
    rc, out, err = cli(capsys, "course", "--courses", str(tmp_path), "check", COURSE_ID)
    lines = [ln for ln in err.splitlines() if ln.startswith("livelab: ")]
    assert rc == 2, (out, err)
    assert any(f"no entry for {version}" in ln for ln in lines), lines
    assert any("hints.nosuchexercise names no exercise" in ln for ln in lines), lines
    assert any(ln.startswith("livelab: m3-bundles") and "repeats grade_id" in ln for ln in lines), lines
    assert "Traceback" not in err and f"{len(lines)} problems" in out
    assert not (dst / "releases").exists()
    # the shipped course itself
    rc, out, err = cli(capsys, "course", "check", COURSE_ID, "--json")
    res = json.loads(out)
    assert rc == (2 if res["problems"] else 0) and res["modules"] and res["seconds"] < time.perf_counter() - t0 + 1


def test_course_preview_renders_the_learner_version(tmp_path, capsys):
    out = tmp_path / "m2.html"
    rc, text, err = cli(capsys, "course", "preview", COURSE_ID, "--module", "m2-replay", "--out", str(out))
    assert rc == 0, err
    html = out.read_text()
    assert "deterministic replays" in html and "NotImplementedError" in html
    assert "BEGIN SOLUTION" not in html and "BEGIN HIDDEN TESTS" not in html and "_refused" not in html
    rc, _, err = cli(capsys, "course", "preview", COURSE_ID, "--module", "m9")
    assert rc == 2 and "has no module 'm9'" in err and "Traceback" not in err


# ---- lab reset ---------------------------------------------------------------------------
def test_lab_reset_returns_the_namespace_to_its_scenario(lab_home, capsys):
    from labs import Lab, reset

    with Lab.connect(home=lab_home, learner="tester") as lab:
        lab.grant_consent("dev-0", "telemetry")
        lab.grant_consent("dev-1", "replay-capture")
        lab.command("dev-1", "capture", decisions=100_000)  # left open
        lab.set_model("dev-0", "candidate")
        from lab_hardware import topics
        from lab_hardware.runtime import lab as _lab

        ctl = _lab.control_client(lab_home)  # a revocation list the control plane left behind
        ctl.publish(
            topics.control(lab.namespace, "revocations"),
            topics.encode({"schema": topics.SCHEMA_REVOCATIONS, "revoked": [{"digest": "ab" * 32, "reason": "test"}]}),
            qos=1,
            retain=True,
        ).wait_for_publish(5)
        from lab_hardware import mqtt

        mqtt.stop(ctl)
        deadline = time.monotonic() + 60
        while not (
            lab.states["dev-1"].get("capturing") and lab.states["dev-0"]["model"] == "candidate" and lab.revocations
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rc, out, err = cli(capsys, "--home", str(lab_home), "lab", "reset", "--json")
        assert rc == 0, err
        res = json.loads(out)
        assert (
            "closed the open capture" in res["devices"]["dev-1"] and "revoked replay-capture" in res["devices"]["dev-1"]
        )
        assert "back on model baseline" in res["devices"]["dev-0"] and "revoked telemetry" in res["devices"]["dev-0"]
        deadline = time.monotonic() + 60
        while True:
            st = {d: lab.states[d] for d in lab.devices}
            ok = (
                all(not any(s["consent"].values()) and not s["capturing"] for s in st.values())
                and st["dev-0"]["model"] == "baseline"
                and lab.revocations == []
            )
            if ok:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        # nothing left to do the second time; every change is in the audit chains
        assert all(acts == [] for acts in reset.reset(lab_home)["devices"].values())
        chain = lab.audit_chain("dev-0").records
        assert chain[-1]["kind"] == "model" and chain[-1]["data"]["model"] == "baseline"
    rc, _, err = cli(capsys, "--home", str(lab_home), "lab", "reset", "--namespace", "nope")
    assert rc == 2 and "no namespace 'nope'" in err and "Traceback" not in err
