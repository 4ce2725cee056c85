"""Set-up: the livelab kernelspec (installer, what Jupyter sees, what a real kernel resolves as
its state directory) and the bootstrap's idempotence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import KERNEL_NAME, install

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def test_install_into_prefix_pins_interpreter_and_default_home(tmp_path):
    home = tmp_path / "state"
    dest = install(prefix_mode="prefix", prefix=tmp_path / "prefix", home=home)
    assert dest == tmp_path / "prefix" / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec = json.loads((dest / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert spec["argv"][1:] == ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["env"]["LIVELAB_DEFAULT_HOME"] == str(home.resolve())
    assert "LIVELAB_HOME" not in spec["env"]  # would override the launcher's own LIVELAB_HOME
    assert spec["metadata"] == {"livelab": True}

    # Installing again replaces the spec (idempotent), and a bad mode is refused.
    assert install(prefix_mode="prefix", prefix=tmp_path / "prefix", home=home) == dest
    with pytest.raises(ValueError):
        install(prefix_mode="prefix")


def test_bootstrap_installed_spec_into_the_venv():
    out = subprocess.run(
        [str(VENV_BIN / "jupyter"), "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    specs = json.loads(out)["kernelspecs"]
    assert KERNEL_NAME in specs, "livelab kernelspec missing: run 'make setup'"
    installed = Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"
    assert installed.is_file(), f"{installed} missing: run 'make setup'"
    assert json.loads(installed.read_text())["argv"][0] == sys.executable


def _kernel_home(env: dict) -> tuple[str, str]:
    """Start the real livelab kernel with ``env``; return its resolve() and sys.executable."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60, env=env)
    try:
        chunks: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                chunks.append(msg["content"]["text"])

        reply = kc.execute_interactive(
            "import sys; from lab_hardware.home import resolve; print(resolve()); print(sys.executable)",
            output_hook=hook,
            timeout=30,
        )
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert not km.is_alive(), "kernel left running"
    lines = "".join(chunks).splitlines()
    return lines[0], lines[1]


def test_kernel_livelab_home_wins_over_the_spec_default(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    default = KernelSpecManager().get_kernel_spec(KERNEL_NAME).env["LIVELAB_DEFAULT_HOME"]
    base = {k: v for k, v in os.environ.items() if k not in ("LIVELAB_HOME", "LIVELAB_DEFAULT_HOME")}

    home, exe = _kernel_home({**base, "LIVELAB_HOME": str(tmp_path)})
    assert home == str(tmp_path.resolve())
    assert exe == sys.executable

    home, _ = _kernel_home(base)
    assert home == str(Path(default.replace("$$", "$")).expanduser().resolve())


def test_bootstrap_second_run_is_fast_and_quiet():
    env = {k: v for k, v in os.environ.items() if k != "LIVELAB_HOME"}
    cmd = ["bash", str(ROOT / "scripts" / "bootstrap.sh")]
    # Normally already done by `make test`; run without a clock in case pytest ran on its own.
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=True)
    # No clock here (a loaded machine is slow): it is fast because it does nothing, which
    # its silence shows (every step that acts prints a line).
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "", f"second bootstrap did something: {res.stdout}"
