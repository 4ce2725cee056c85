"""Who is graded, against which release: the learner's recorded identity (never a file name)
and ``grade --version`` (whatever course.toml says)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from grading import samples
from grading.batch import BatchConfig, Driver, GradeUsageError, find_submissions, resolve_course

REPO = Path(__file__).resolve().parents[1]
COURSE = REPO / "courses" / "edge-ml-foundations"
MODULE = "m1-telemetry"


# ---- grade --version ---------------------------------------------------------------------
def test_version_picks_that_release():
    for v in ("1.0.0", "1.1.0"):
        t = resolve_course(str(COURSE), MODULE, v)
        assert t.version == v
        assert all(COURSE / "releases" / v in s.parents for s in t.sources), t.sources
        assert json.loads(t.manifest)["version"] == v


def _semver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


@pytest.fixture()
def preparing(tmp_path):
    """The course while its author prepares 9.9.9: course.toml names a version not released."""
    c = tmp_path / "edge-ml-foundations"
    shutil.copytree(COURSE, c, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (c / "course.toml").read_text()
    (c / "course.toml").write_text(re.sub(r'(?m)^version = "[^"]+"', 'version = "9.9.9"', toml, count=1))
    assert 'version = "9.9.9"' in (c / "course.toml").read_text()
    return c


def test_an_unreleased_version_in_course_toml_does_not_block_released_ones(preparing):
    t = resolve_course(str(preparing), MODULE, "1.0.0")
    assert t.version == "1.0.0" and all(preparing / "releases" / "1.0.0" in s.parents for s in t.sources)
    # no --version: learners work on the newest release while the next one is prepared
    released = sorted((d.name for d in (preparing / "releases").iterdir() if d.is_dir()), key=_semver)
    t = resolve_course(str(preparing), MODULE, None)
    assert t.version == released[-1] != "9.9.9"
    with pytest.raises(
        GradeUsageError, match=re.escape(f"no release 7.0.0: released versions are {', '.join(released)}")
    ):
        resolve_course(str(preparing), MODULE, "7.0.0")


def test_driver_grades_against_the_release_given(preparing, tmp_path):
    """The references the batch builds come from release V's sources."""
    nb = tmp_path / "sub" / "submitted" / "ana" / MODULE / f"{MODULE}.ipynb"
    nb.parent.mkdir(parents=True)
    shutil.copy(preparing / "releases" / "1.0.0" / "learner" / MODULE / f"{MODULE}.ipynb", nb)
    d = Driver(
        BatchConfig(
            course=str(preparing),
            module=MODULE,
            path=str(tmp_path / "sub"),
            checks=[],
            version="1.0.0",
            state=str(tmp_path / "state"),
            progress=False,
        )
    )
    assert d.target.version == "1.0.0"
    assert Path(d.refs[MODULE].source_path).parent.parent.parent.name == "1.0.0"


def test_cli_version_of_no_release_is_one_line_exit_2(tmp_path, capsys):
    from livelab.cli import main

    rc = main(["grade", str(COURSE), MODULE, str(tmp_path), "--version", "0.0.1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "no release 0.0.1" in err, err


# ---- the learner's identity --------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("idcourse")
    return root, nbformat.read(samples.make_course(root), as_version=4)


def _nb(path: Path, release) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(samples.submission(release[1], samples.CORRECT), path)
    return path


def test_a_file_name_is_never_a_learner(release, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVELAB_HOME", str(tmp_path / "no-lab"))
    p = _nb(tmp_path / "bob.ipynb", release)
    with pytest.raises(GradeUsageError, match="records no learner.*pass --student"):
        find_submissions(str(p), samples.ASSIGNMENT, [samples.NOTEBOOK])
    subs, _, _ = find_submissions(str(p), samples.ASSIGNMENT, [samples.NOTEBOOK], student="carol")
    assert [s.student for s in subs] == ["carol"]


def test_the_submitted_folder_is_the_learner_and_a_contradicting_student_is_refused(release, tmp_path):
    p = _nb(tmp_path / "submitted" / "ana" / samples.ASSIGNMENT / "whatever.ipynb", release)
    subs, _, _ = find_submissions(str(p), samples.ASSIGNMENT, [samples.NOTEBOOK])
    assert [s.student for s in subs] == ["ana"]
    assert find_submissions(str(p), samples.ASSIGNMENT, [samples.NOTEBOOK], student="ana")[0][0].student == "ana"
    with pytest.raises(GradeUsageError, match="--student bob contradicts .*'ana'"):
        find_submissions(str(p), samples.ASSIGNMENT, [samples.NOTEBOOK], student="bob")


def test_student_picks_one_of_a_tree(release, tmp_path):
    for who in ("ana", "bob"):
        _nb(tmp_path / "submitted" / who / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", release)
    subs, _, _ = find_submissions(str(tmp_path / "submitted"), samples.ASSIGNMENT, [samples.NOTEBOOK], student="bob")
    assert [s.student for s in subs] == ["bob"]
    with pytest.raises(GradeUsageError, match="no such student"):
        find_submissions(str(tmp_path / "submitted"), samples.ASSIGNMENT, [samples.NOTEBOOK], student="zed")


def test_single_user_lab_owner_is_the_default_learner(release, tmp_path):
    home = tmp_path / "lab"
    home.mkdir()
    (home / "lab.json").write_text(json.dumps({"namespace": "default", "owner": "dana"}))
    p = _nb(tmp_path / "work" / "squares.ipynb", release)
    subs, _, _ = find_submissions(str(p), samples.ASSIGNMENT, [samples.NOTEBOOK], home=str(home))
    assert [s.student for s in subs] == ["dana"]


def test_learner_home_is_the_learner_when_the_registry_exists(release, tmp_path):
    learners = pytest.importorskip("labs.learners")  # helper "team" builds the registry
    if not hasattr(learners, "learner_for_path"):
        pytest.skip("labs.learners.learner_for_path not there yet")
    from grading.batch import recorded_learner

    assert recorded_learner(tmp_path / "x.ipynb", samples.ASSIGNMENT, tmp_path)[0] is None


def test_cli_refusals_are_one_line_exit_2(release, tmp_path, capsys, monkeypatch):
    from livelab.cli import main

    monkeypatch.setenv("LIVELAB_HOME", str(tmp_path / "no-lab"))
    root = release[0]
    lone = _nb(tmp_path / "bob.ipynb", release)
    sub = _nb(tmp_path / "submitted" / "ana" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", release)
    for argv, fragment in (
        ([str(lone)], "pass --student"),
        ([str(sub), "--student", "bob"], "contradicts"),
        ([str(lone), "--student", "Bob Smith"], "invalid learner name"),
    ):
        rc = main(["grade", str(root), samples.ASSIGNMENT, *argv, "--state", str(tmp_path / "state")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and fragment in err, (argv, err)


# ---- the release summary counts the checks' points -----------------------------------------
def test_release_points_include_the_checks():
    from courses import catalog, notebooks, release
    from grading.checks.base import load_checks

    c = catalog.load("edge-ml-foundations")
    for m in c.modules:
        nb = nbformat.read(str(c.root / "source" / m.id / f"{m.id}.ipynb"), as_version=4)
        tests = notebooks.tests_of(nb)
        pts = release.points_of(m, tests)
        checks = sum(s.points for s in load_checks(m.checks))
        assert checks > 0 and sum(pts["check_points"].values()) == checks
        assert pts["total_points"] == pts["points"] + checks == sum(t["points"] for t in tests) + checks
