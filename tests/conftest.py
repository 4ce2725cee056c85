"""Shared fixtures: real labs (real Mosquitto, real device processes) in temp homes."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
# nbgrader and jupyter look up executables (alembic, jupyter-*) on PATH.
if VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")


def start_lab(home: Path, **kw):
    """Bring a lab up in ``home`` with the voice-intents scenario (kwargs go to lab.up)."""
    from lab_hardware.runtime import lab
    from labs import scenarios

    sc = scenarios.load(kw.pop("scenario", "voice-intents")).materialize(home / "scenario")
    opts = kw.pop("device_options", {})
    opts.setdefault("window_seconds", 0.5)
    if "services" not in kw:  # the trusted recorder of learner events, as 'livelab up' runs it
        from labs import recorder

        kw["services"] = [recorder.service()]
    return lab.up(home, scenario=sc, device_options=opts, **kw)


@pytest.fixture(scope="session")
def mosquitto_available():
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        pytest.fail("mosquitto is not installed: run 'make setup' (the test suite needs a real broker)")


@pytest.fixture(scope="module")
def lab_home(tmp_path_factory, mosquitto_available):
    """A running 3-device lab shared by one test module; torn down with no process left."""
    from lab_hardware.runtime import lab

    home = tmp_path_factory.mktemp("lab")
    start_lab(home)
    pids = lab.lab_pids(home)
    yield home
    lab.down(home)
    from lab_hardware.home import pid_alive

    assert not [p for p in pids if pid_alive(p)], "lab left processes behind"


@pytest.fixture
def fresh_lab(tmp_path, mosquitto_available):
    """A lab of its own for tests that break things (kill the broker, flood devices)."""
    from lab_hardware.runtime import lab

    homes = []

    def make(**kw):
        home = tmp_path / f"lab{len(homes)}"
        homes.append(home)
        start_lab(home, **kw)
        return home

    yield make
    for home in homes:
        lab.down(home)


@pytest.fixture
def lab_sdk(lab_home):
    from labs import Lab

    lab = Lab.connect(home=lab_home)
    yield lab
    lab.close()
