"""Courses as content: course.toml, nbgrader source notebooks, shipped releases, diff, fetch, and
JupyterLab opening a fetched module.  Bad input is refused with one line and nothing written.

The release gate against a live lab is in tests/test_course_release.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from courses import catalog, notebooks, release
from courses.catalog import CourseError
from livelab.cli import main
from tests.net_helpers import start_on_port_zero

ROOT = Path(__file__).resolve().parents[1]
COURSE_ID = "edge-ml-foundations"
SHIPPED = ROOT / "courses" / COURSE_ID
MODULES = ["m1-telemetry", "m2-replay", "m3-bundles", "m4-observability", "m5-hybrid-oracle"]
#: The course's current version (1.3.0: module 5, the hybrid oracle loop) and its releases so far.
VERSION = "1.3.0"
#: Releases before module 5 (four modules).
FOUR = ("1.0.0", "1.1.0", "1.2.0")
RELEASES = catalog.releases(catalog.load(SHIPPED))
LATEST = RELEASES[-1]


@pytest.fixture(autouse=True)
def _shipped_courses(monkeypatch):
    """These tests read this repository's courses/, whatever the environment says."""
    monkeypatch.delenv("LIVELAB_COURSES_DIR", raising=False)


def copy_course(tmp: Path, *, releases: bool = False) -> Path:
    """A private copy of the flagship course under ``tmp/<id>`` (without its releases by default)."""
    dst = tmp / COURSE_ID
    shutil.copytree(SHIPPED, dst, ignore=None if releases else shutil.ignore_patterns("releases"))
    for p in dst.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return dst


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- the shipped course ------------------------------------------------------------------
def test_shipped_course_is_valid():
    c = catalog.load(COURSE_ID)
    assert [m.id for m in c.modules] == MODULES
    assert c.version == VERSION
    assert all(catalog.MINUTES[0] <= m.minutes <= catalog.MINUTES[1] for m in c.modules)
    assert {ch for m in c.modules for ch in m.checks} == set(catalog.KNOWN_CHECKS)
    for m in c.modules:
        assert notebooks.validate_source(m.notebook, m.id) == [], m.id
        nb = nbformat.read(str(m.notebook), as_version=4)
        assert nb.metadata.kernelspec.name == "livelab"
        params = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
        assert len(params) == 1 and "LIVELAB_HOME = None" in params[0].source and "SEED = 0" in params[0].source
        assert f'Lab.connect(module="{m.id}"' in "".join(cell.source for cell in nb.cells)
        assert any("### BEGIN HIDDEN TESTS" in cell.source for cell in nb.cells)


def test_shipped_releases_verify_and_document_the_change():
    c = catalog.load(COURSE_ID)
    assert RELEASES[:3] == list(FOUR) and set(RELEASES) <= {*FOUR, VERSION}
    log = catalog.changelog(c)
    assert "untidy" in log["1.2.0"], "a release says what changed and why"
    assert VERSION in log and "m5-hybrid-oracle" in log[VERSION] and "livelab up --oracle" in log[VERSION]
    for v in RELEASES:
        m = catalog.read_release(c, v)  # every file against its checksum
        assert m["version"] == v and m["changelog"] == log[v]
        assert [x["id"] for x in m["modules"]] == (MODULES[:4] if v in FOUR else MODULES)
        for mod in m["modules"]:
            g = mod["gate"]
            assert g["reference"] == "passed" and g["reference_seconds"] > 0
            assert g["learner_failed_tests"], f"{v} {mod['id']}: the learner version must fail as is"
            learner = (catalog.release_dir(c, v) / mod["learner"]["path"]).read_text()
            assert "BEGIN SOLUTION" not in learner and "BEGIN HIDDEN TESTS" not in learner
            assert "raise NotImplementedError()" in learner
            stamped = nbformat.read(str(catalog.release_dir(c, v) / mod["source"]["path"]), as_version=4)
            assert stamped.metadata.livelab == {"course": COURSE_ID, "version": v, "module": mod["id"]}
            assert f'COURSE_VERSION = "{v}"' in stamped.cells[1].source
    d = catalog.diff(c, "1.0.0", "1.1.0")
    m1 = d["modules"]["m1-telemetry"]
    assert m1["changed"] and m1["minutes"] == [25, 20]
    assert m1["cells_moved"] == ["panel-intro", "panel"] and "window-md" in m1["cells_changed"]
    assert not m1["tests_changed"] and not m1["checks_added"] and not m1["checks_removed"]
    assert not any(d["modules"][x]["changed"] for x in MODULES[1:4]), "1.1.0 changes module 1 only"
    assert "1.1.0" in d["changelog"] and "panel" in d["changelog"]["1.1.0"]


def test_release_1_2_0_passed_its_gate_and_shows_in_diff(capsys):
    """1.2.0: fairer tests and a clearer text in every module, the same points (scores compare)."""
    c = catalog.load(COURSE_ID)
    rel = catalog.read_release(c, "1.2.0")
    assert all(mod["gate"]["reference"] == "passed" for mod in rel["modules"])
    assert all(all(ch["passed"] for ch in mod["gate"]["checks"].values()) for mod in rel["modules"])
    assert rel["modules"][0]["untidy"] and rel["modules"][0]["hints"]["quiet"]
    d = catalog.diff(c, "1.1.0", "1.2.0")
    assert all(d["modules"][x]["changed"] for x in MODULES[:4])
    assert not any(d["modules"][x]["points"] for x in MODULES[:4]), "points unchanged"
    m1 = d["modules"]["m1-telemetry"]
    assert "watch" in m1["cells_added"] and "quiet-test" in m1["tests_changed"] and m1["untidy"]
    rc, out, _ = cli(capsys, "course", "diff", COURSE_ID, "1.1.0", "1.2.0")
    assert rc == 0 and "m1-telemetry" in out and "untidy start:" in out and "panel" in out


def test_release_1_3_0_adds_module_5_through_the_gate(capsys):
    """1.3.0: module 5 added (it needs the lab oracle), modules 1-4 as in 1.2.0 (scores compare)."""
    c = catalog.load(COURSE_ID)
    if VERSION not in catalog.releases(c):
        pytest.skip(f"{VERSION} is not released yet: livelab course release {COURSE_ID} {VERSION}")
    rel = catalog.read_release(c, VERSION)
    assert rel["minutes"] == 125 and [m["minutes"] for m in rel["modules"]][-1] == 25
    m5 = rel["modules"][-1]
    assert m5["id"] == "m5-hybrid-oracle" and m5["services"] == ["oracle"] and m5["checks"] == ["consent", "oracle"]
    assert m5["check_points"] == {"consent": 5.0, "oracle": 5.0} and set(m5["hints"]) >= {"route", "retrain", "canary"}
    assert m5["gate"]["reference"] == "passed" and all(ch["passed"] for ch in m5["gate"]["checks"].values())
    assert not all(ch["passed"] for ch in m5["gate"]["learner_checks"].values()), "doing nothing fails the checks"
    d = catalog.diff(c, "1.2.0", VERSION)
    assert d["added"] == ["m5-hybrid-oracle"] and not d["removed"]
    assert not any(d["modules"][x]["points"] or d["modules"][x]["tests_changed"] for x in MODULES[:4])
    rc, out, _ = cli(capsys, "course", "diff", COURSE_ID, "1.2.0", VERSION)
    assert rc == 0 and "m5-hybrid-oracle" in out


def test_cli_list_show_diff(capsys):
    rc, out, _ = cli(capsys, "course", "list", "--json")
    assert rc == 0
    row = next(r for r in json.loads(out) if r["id"] == COURSE_ID)
    assert row["releases"] == RELEASES and row["modules"] == 5 and row["minutes"] == 125
    rc, out, _ = cli(capsys, "course", "show", COURSE_ID, "--version", "1.0.0", "--json")
    assert rc == 0 and json.loads(out)["modules"][0]["minutes"] == 25
    rc, out, _ = cli(capsys, "course", "diff", COURSE_ID, "1.0.0", "1.1.0")
    assert rc == 0 and "25 → 20" in out
    rc, _, err = cli(capsys, "course", "diff", COURSE_ID, "1.0.0", "9.9.9")
    assert rc == 2 and err.count("\n") == 1 and "9.9.9 is not released" in err


# ---- nbgrader ----------------------------------------------------------------------------
def test_nbgrader_generate_assignment_accepts_every_module(tmp_path):
    c = catalog.load(COURSE_ID)
    sources, learners, problems = release.learner_versions(c, c.version, tmp_path / "nbgrader")
    assert problems == []
    assert sorted(learners) == MODULES
    for mid, path in learners.items():
        nb = nbformat.read(str(path), as_version=4)
        src = nbformat.read(str(sources[mid]), as_version=4)
        assert [t["grade_id"] for t in notebooks.tests_of(nb)] == [t["grade_id"] for t in notebooks.tests_of(src)]
        for cell in nb.cells:
            meta = cell.metadata.nbgrader
            assert "checksum" in meta  # nbgrader's own, which the grader restores locked cells by
            if meta["solution"] and cell.cell_type == "code":
                assert cell.source == "# YOUR CODE HERE\nraise NotImplementedError()"
            assert "### BEGIN HIDDEN TESTS" not in cell.source


def test_nbgrader_itself_refuses_duplicate_grade_ids(tmp_path):
    """Our validator catches it first, but nbgrader is the authority: its refusal is reported."""
    c = catalog.load(COURSE_ID)
    nb = nbformat.read(str(c.modules[0].notebook), as_version=4)
    nb.cells[3].metadata.nbgrader["grade_id"] = nb.cells[2].metadata.nbgrader["grade_id"]
    src = tmp_path / "source" / "m1-telemetry" / "m1-telemetry.ipynb"
    src.parent.mkdir(parents=True)
    nbformat.write(nb, str(src))
    out, reason = release.generate_assignment(tmp_path, "m1-telemetry")
    assert out is None and "generate_assignment refused" in reason and "\n" not in reason


# ---- bad input: one line, nothing written ------------------------------------------------
def _edit_toml(course: Path, old: str, new: str) -> None:
    p = course / "course.toml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))


def _edit_nb(course: Path, module: str, fn) -> None:
    p = course / "source" / module / f"{module}.ipynb"
    nb = json.loads(p.read_text())
    fn(nb)
    p.write_text(json.dumps(nb))


BAD_INPUT = {
    "module under 15 minutes": (lambda c: _edit_toml(c, "minutes = 25", "minutes = 14"), "outside 15-30"),
    "module over 30 minutes": (lambda c: _edit_toml(c, "minutes = 30", "minutes = 31"), "outside 15-30"),
    "unknown key": (lambda c: _edit_toml(c, 'title = "Edge', 'estimate = 3\ntitle = "Edge'), "unknown key 'estimate'"),
    "unknown module key": (lambda c: _edit_toml(c, "minutes = 30", "minutes = 30\nlevel = 2"), "unknown key 'level'"),
    "bad version": (lambda c: _edit_toml(c, f'version = "{VERSION}"', 'version = "1.1"'), "not semver"),
    "unknown check": (
        lambda c: _edit_toml(c, 'checks = ["bundle"]', 'checks = ["bundles"]'),
        "unknown check 'bundles'",
    ),
    "duplicate grade ids": (
        lambda c: _edit_nb(
            c,
            "m2-replay",
            lambda nb: nb["cells"][4]["metadata"]["nbgrader"].update(
                grade_id=nb["cells"][3]["metadata"]["nbgrader"]["grade_id"]
            ),
        ),
        "repeats grade_id",
    ),
    "cell without nbgrader metadata": (
        lambda c: _edit_nb(c, "m3-bundles", lambda nb: nb["cells"][5]["metadata"].pop("nbgrader")),
        "has no nbgrader metadata",
    ),
    "metadata without schema_version": (
        lambda c: _edit_nb(
            c, "m4-observability", lambda nb: nb["cells"][6]["metadata"]["nbgrader"].pop("schema_version")
        ),
        "lacks schema_version",
    ),
    "test cell without points": (
        lambda c: _edit_nb(
            c,
            "m1-telemetry",
            lambda nb: next(x for x in nb["cells"] if x["metadata"]["nbgrader"].get("grade"))["metadata"][
                "nbgrader"
            ].pop("points"),
        ),
        "no points",
    ),
    "no parameters cell": (
        lambda c: _edit_nb(c, "m1-telemetry", lambda nb: nb["cells"][1]["metadata"].pop("tags")),
        "tagged 'parameters'",
    ),
    "wrong kernel": (
        lambda c: _edit_nb(c, "m2-replay", lambda nb: nb["metadata"]["kernelspec"].update(name="python3")),
        "kernelspec is 'python3'",
    ),
    "not a notebook": (
        lambda c: (c / "source" / "m2-replay" / "m2-replay.ipynb").write_text("{not json"),
        "not a valid notebook",
    ),
    "no changelog entry": (
        lambda c: (c / "CHANGELOG.md").write_text("# Changelog\n\n## 1.0.0\n\nFirst.\n"),
        f"has no entry for {VERSION}",
    ),
    "empty changelog entry": (
        lambda c: (c / "CHANGELOG.md").write_text(f"# Changelog\n\n## {VERSION}\n\n## 1.0.0\n\nFirst.\n"),
        f"entry for {VERSION} is empty",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_with_one_line_and_nothing_written(tmp_path, capsys, case):
    course = copy_course(tmp_path)
    spoil, reason = BAD_INPUT[case]
    spoil(course)
    before = tree(course)
    rc, out, err = cli(capsys, "course", "--courses", str(tmp_path), "release", COURSE_ID, VERSION)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livelab: error: ") and reason in lines[0], err
    assert "Traceback" not in err
    assert tree(course) == before and not (course / "releases").exists()


def test_version_rules(tmp_path, capsys):
    course = copy_course(tmp_path, releases=True)
    _edit_toml(course, f'version = "{VERSION}"', f'version = "{LATEST}"')
    before = tree(course)
    rc, _, err = cli(capsys, "course", "--courses", str(tmp_path), "release", COURSE_ID, LATEST)
    assert rc == 2 and f"{LATEST} is already released" in err and "immutable" in err and err.count("\n") == 1
    # every input problem at once: the version course.toml says and the missing CHANGELOG entry
    rc, _, err = cli(capsys, "course", "--courses", str(tmp_path), "release", COURSE_ID, "9.0.0")
    assert rc == 2 and f'says version = "{LATEST}"' in err and "no entry for 9.0.0" in err and err.count("\n") == 2
    _edit_toml(course, f'version = "{LATEST}"', 'version = "1.0.1"')
    rc, _, err = cli(capsys, "course", "--courses", str(tmp_path), "release", COURSE_ID, "1.0.1")
    assert rc == 2 and f"must be newer than {LATEST}" in err
    rc, _, err = cli(capsys, "course", "--courses", str(tmp_path), "release", COURSE_ID, "one")
    assert rc == 2 and "not semver" in err
    assert tree(course) == before


def test_several_notebook_problems_are_one_line_each(tmp_path, capsys):
    course = copy_course(tmp_path)
    _edit_nb(course, "m1-telemetry", lambda nb: nb["cells"][5]["metadata"].pop("nbgrader"))
    _edit_nb(course, "m3-bundles", lambda nb: nb["cells"][4]["metadata"]["nbgrader"].update(grade_id="intro"))
    rc, _, err = cli(capsys, "course", "--courses", str(tmp_path), "release", COURSE_ID, VERSION)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2
    assert lines[0].startswith("livelab: error: m1-telemetry") and lines[1].startswith("livelab: error: m3-bundles")


def test_course_toml_types_and_ids(tmp_path):
    course = copy_course(tmp_path)
    _edit_toml(course, "minutes = 25", 'minutes = "25"')
    with pytest.raises(CourseError, match="'minutes' must be an integer"):
        catalog.load(course)
    course = copy_course(tmp_path / "b")
    _edit_toml(course, 'id = "edge-ml-foundations"', 'id = "other"')
    with pytest.raises(CourseError, match="does not match its folder"):
        catalog.load(course)
    course = copy_course(tmp_path / "c")
    _edit_toml(course, 'id = "m2-replay"', 'id = "m1-telemetry"')
    with pytest.raises(CourseError, match="duplicate module id"):
        catalog.load(course)


@pytest.mark.parametrize(
    "services, why",
    [('["gpu"]', "not 'gpu'"), ('["oracle", "oracle"]', "at most once"), ("[1]", "not '1'"), ('"oracle"', "an array")],
)
def test_a_module_names_only_lab_services_the_lab_runs(tmp_path, services, why):
    """course.toml ``services``: the lab services a module needs (the oracle for module 5)."""
    assert catalog.load(COURSE_ID).module("m5-hybrid-oracle").services == ("oracle",)
    course = copy_course(tmp_path)
    _edit_toml(course, 'services = ["oracle"]', f"services = {services}")
    with pytest.raises(CourseError, match="m5-hybrid-oracle") as exc:
        catalog.load(course)
    assert why in str(exc.value) and "\n" not in str(exc.value)


# ---- fetch -------------------------------------------------------------------------------
def test_fetch_places_learner_notebooks_and_never_overwrites(tmp_path, capsys):
    rc, out, _ = cli(
        capsys, "course", "fetch", COURSE_ID, "--version", "1.0.0", "--dest", str(tmp_path / "ws"), "--json"
    )
    assert rc == 0
    res = json.loads(out)
    assert res["version"] == "1.0.0" and res["kernel"] is True
    nbs = [Path(p) for p in res["notebooks"]]
    assert [p.parent.name for p in nbs] == MODULES[:4]
    c = catalog.load(COURSE_ID)
    for p, m in zip(nbs, catalog.read_release(c, "1.0.0")["modules"]):
        assert catalog.sha256_file(p) == m["learner"]["sha256"]
    rc, _, err = cli(capsys, "course", "fetch", COURSE_ID, "--dest", str(tmp_path / "ws"))
    assert rc == 2 and "already exists" in err and err.count("\n") == 1


def test_a_modified_release_is_refused(tmp_path):
    course = copy_course(tmp_path, releases=True)
    nb = course / "releases" / "1.0.0" / "learner" / "m2-replay" / "m2-replay.ipynb"
    nb.write_text(nb.read_text().replace("300", "30"))
    c = catalog.load(course)
    with pytest.raises(CourseError, match="modified after release: learner/m2-replay"):
        catalog.fetch(c, "1.0.0", tmp_path / "ws")
    with pytest.raises(CourseError, match="modified after release"):
        catalog.diff(c, "1.0.0", "1.1.0")
    assert not (tmp_path / "ws").exists()


# ---- JupyterLab opens a fetched module ---------------------------------------------------
def _api(port: int, token: str, path: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
        return r.status, (json.loads(data) if data else None)


def test_jupyterlab_lists_the_kernel_and_opens_a_fetched_module(tmp_path):
    import psutil

    root = tmp_path / "root"
    res = catalog.fetch(catalog.load(COURSE_ID), None, root / "course")
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
            "LIVELAB_HOME": str(tmp_path / "no-lab"),
        }
    )
    logs: list = []

    def start() -> subprocess.Popen:  # port 0: the server takes a port nobody holds (no race)
        if logs:
            logs[-1].close()
        logs.append(open(tmp_path / "jupyterlab.log", "wb"))
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.port=0",
                "--ServerApp.port_retries=0",
                f"--ServerApp.token={token}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.open_browser=False",
            ]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=root,
            env=env,
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    proc, port = start_on_port_zero(start, tmp_path / "jupyterlab.log", timeout=240)  # up to 132 s seen at load 70
    log = logs[-1]
    kernels: list = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
            try:
                if _api(port, token, "/api/status")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "jupyter lab did not answer within 120 s"
            time.sleep(0.2)
        _, specs = _api(port, token, "/api/kernelspecs")
        assert "livelab" in specs["kernelspecs"]
        rel = Path(res["notebooks"][0]).relative_to(root).as_posix()
        status, model = _api(port, token, f"/api/contents/{rel}")
        assert status == 200 and model["type"] == "notebook"
        assert model["content"]["metadata"]["kernelspec"]["name"] == "livelab"
        assert any('Lab.connect(module="m1-telemetry"' in "".join(c["source"]) for c in model["content"]["cells"])
        # Opening it starts the notebook's own kernel.
        status, session = _api(
            port,
            token,
            "/api/sessions",
            "POST",
            {"path": rel, "type": "notebook", "name": "", "kernel": {"name": "livelab"}},
        )
        assert status == 201 and session["kernel"]["name"] == "livelab"
        kernels = psutil.Process(proc.pid).children(recursive=True)
        assert kernels, "no kernel process started"
        _api(port, token, f"/api/sessions/{session['id']}", "DELETE")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        _, alive = psutil.wait_procs(kernels, timeout=10)
        for p in alive:  # only the kernels this server started
            p.kill()
        assert not alive, f"jupyter lab left kernels behind: {[p.pid for p in alive]}"
