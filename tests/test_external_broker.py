"""--broker-url: the lab runs its devices against a broker it did not start.

Uses the system Mosquitto on 127.0.0.1:1883 when there is one (CI machines have
it); on a machine without it the test is skipped, saying so.  To run it
elsewhere: start any MQTT broker on 127.0.0.1:1883 (e.g. 'mosquitto -d').
"""

from __future__ import annotations

import socket
import uuid

import pytest

from lab_hardware.runtime import lab
from labs import Lab
from tests.conftest import start_lab


def _system_broker() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _system_broker(), reason="no MQTT broker on 127.0.0.1:1883 (start one to run this)")
def test_lab_on_external_broker(tmp_path):
    home = tmp_path / "ext"
    ns = "t" + uuid.uuid4().hex[:10]  # the system broker is shared: an own namespace
    desc = start_lab(home, broker_url="mqtt://127.0.0.1:1883", namespace=ns, devices=2)
    try:
        assert desc["broker"] == {"host": "127.0.0.1", "port": 1883, "external": True}
        assert not (home / "broker" / "mosquitto.conf").exists()  # we started no broker
        st = lab.status(home)
        assert st["broker"]["pid"] is None and st["broker"]["reachable"]
        assert all(d["online"] for d in st["devices"])
        with Lab.connect(home=home) as sdk:
            sdk.grant_consent("dev-1")
            w = sdk.next_window("dev-1", timeout=5)
            assert w["namespace"] == ns and w["device"] == "dev-1"
    finally:
        lab.down(home)


def test_unreachable_external_broker_one_line(tmp_path):
    from tests.test_lab import one_line_error, run_cli

    with socket.socket() as s:  # bound, never listening: connections are refused, and no other
        s.bind(("127.0.0.1", 0))  # process can take the port while the test runs
        port = s.getsockname()[1]
        proc = run_cli("--home", str(tmp_path / "h"), "up", "--broker-url", f"mqtt://127.0.0.1:{port}")
    assert proc.returncode == 2
    assert "cannot reach MQTT broker" in one_line_error(proc)
