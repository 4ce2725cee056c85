"""The layers (docs/architecture.md) hold: imports flow downward only.

``lint-imports`` (import-linter) checks the contracts in pyproject.toml against the real
import graph.  The second test proves the contracts bite: a copy of the project in which the
shared formats import the runtime must be refused.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("livelab", "reports", "courses", "grading", "labs", "lab_hardware", "kernels")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_imports_follow_the_layers():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_a_lower_layer_importing_a_higher_one_is_refused(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg,
            tmp_path / pkg,
            ignore=shutil.ignore_patterns("__pycache__", "*.ipynb", "*.onnx", "releases", "source", "*.lreplay"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    topics = tmp_path / "lab_hardware" / "topics.py"
    topics.write_text(topics.read_text() + "\nfrom lab_hardware.runtime import lab as _up  # noqa\n")
    grading = tmp_path / "grading" / "gradebook.py"
    grading.write_text(grading.read_text() + "\nimport reports.tts  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout
    assert "lab_hardware.topics -> lab_hardware.runtime.lab" in res.stdout
    assert "grading.gradebook -> reports.tts" in res.stdout
