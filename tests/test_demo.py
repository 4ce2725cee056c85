"""``make demo`` end to end: the whole main job against a real lab (slow tier).

The demo rebuilds the course as its author had it before 1.1.0 from the course's own releases,
so a new release of the course (a new module, a version bump) must not break it: it did once,
when 1.3.0 came (the demo released 1.1.0 from the current sources and was refused)."""

from __future__ import annotations

import io
import os

import pytest
from rich.console import Console

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # a bound on a loaded machine


def test_the_demo_runs_end_to_end(tmp_path, mosquitto_available):
    from livelab.demo import run_demo

    before = os.environ.get("LIVELAB_EVENTS_URL")
    out = io.StringIO()
    code = run_demo(tmp_path / "demo", console=Console(file=out, width=120))
    text = out.getvalue()
    assert code == 0, text[-3000:]
    assert "released 1.1.0" in text and "gate passed" in text, text[-3000:]
    assert (tmp_path / "demo" / "time-to-signal.html").is_file()
    assert "processes left behind: 0" in text
    # the demo's own events store does not outlive it in the caller's process (the slow tier
    # runs the hub's test after this one, in the same process)
    assert os.environ.get("LIVELAB_EVENTS_URL") == before
