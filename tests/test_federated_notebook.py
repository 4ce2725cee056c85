"""The worked notebook of federated adapters (docs/notebooks/federated-adapters.ipynb) runs,
cell by cell, in a real kernel against a live 3-device lab, and its own assertions hold."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import start_lab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "notebooks" / "federated-adapters.ipynb"

pytestmark = pytest.mark.slow


def test_the_worked_notebook_runs_against_a_lab(tmp_path, mosquitto_available, monkeypatch):
    from lab_hardware.home import pid_alive
    from lab_hardware.runtime import lab

    home = tmp_path / "home"
    start_lab(home, device_options={"window_seconds": 0.5, "rate_hz": 200})
    pids = lab.lab_pids(home)
    try:
        monkeypatch.setenv("LIVELAB_HOME", str(home))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
        out = "".join(
            o.get("text", "")
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if o.get("name") == "stdout"
        )
        # the whole printed output on failure (pytest cuts a long string's repr in the middle,
        # where the second round's participants and skips are)
        assert "participants: ['dev-0', 'dev-1', 'dev-2']" in out, out
        assert "undone 'call' decisions repeated: candidate" in out, out
        assert "dev-0: privacy budget spent:" in out and "participants: ['dev-1', 'dev-2']" in out, out
    finally:
        lab.down(home)
        assert not [p for p in pids if pid_alive(p)], "lab left processes behind"
