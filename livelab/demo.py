"""``livelab demo``: the main job end to end, on this machine, in under a minute.

Brings a lab up in a fresh state directory, shows the devices deciding and
consented telemetry arriving (and the candidate model's false-positive signal
on the scenario's defect intent), shows that revoking consent stops a device's
telemetry, verifies an audit chain, and brings the lab down, checking that no
process is left behind.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _table(stats: dict, models: dict, defect: str, consent: dict) -> Table:
    t = Table(title=f"live telemetry (false-positive proxy: undos of '{defect}' decisions)")
    for col in ("device", "model", "telemetry", "windows", "decisions", f"undo '{defect}'", "FP proxy"):
        t.add_column(col, justify="right" if col not in ("device", "model", "telemetry") else "left")
    for dev in sorted(models):
        s = stats[dev]
        rate = s["undo"] / s["decisions"] if s["decisions"] else 0.0
        style = "bold red" if rate > 0.03 else "green"
        t.add_row(dev, models[dev], "granted" if consent.get(dev) else "[dim]revoked[/]",
                  str(s["windows"]), str(s["decisions"]), str(s["undo"]),
                  f"[{style}]{rate:.1%}[/]" if s["decisions"] else "-")
    return t


def run_demo(home: Path | None = None, *, console: Console | None = None, seconds: float = 6.0) -> int:
    from lab_hardware import lab
    from lab_hardware.home import pid_alive
    from labs import Lab, scenarios

    console = console or Console()
    home = Path(home) if home else Path(tempfile.mkdtemp(prefix="livelab-demo-"))
    sc = scenarios.load("voice-intents")
    console.rule("[bold]livelab demo[/]: a live edge lab, consent-first telemetry")
    t0 = time.perf_counter()
    with console.status("starting the lab: Mosquitto + 3 devices running ONNX models ..."):
        desc = lab.up(home, scenario=sc.materialize(home / "scenario"), devices=3)
    pids = lab.lab_pids(home)
    console.print(f"[green]✓[/] lab up in {time.perf_counter() - t0:.1f} s: broker "
                  f"127.0.0.1:{desc['broker']['port']}, devices {', '.join(desc['devices'])} (state in {home})")
    code = 0
    try:
        with Lab.connect(home=home, learner="demo") as sdk:
            models = {d: sdk.states[d]["model"] for d in sdk.devices}
            console.print("devices decide from the start, but publish nothing: consent is default-deny.")
            time.sleep(1.0)
            before = sdk.windows()
            console.print(f"  telemetry windows seen without consent: [bold]{len(before)}[/]")
            for d in sdk.devices:
                sdk.grant_consent(d)
            consent = {d: True for d in sdk.devices}
            console.print("[green]✓[/] telemetry consent granted on every device (each grant is on its audit chain)")
            stats = defaultdict(lambda: {"windows": 0, "decisions": 0, "undo": 0})
            defect = sc.defect_intent
            revoked_at = None
            end = time.monotonic() + seconds
            with Live(_table(stats, models, defect, consent), console=console, refresh_per_second=4) as live:
                for w in sdk.telemetry(timeout=2.0):
                    s = stats[w["device"]]
                    s["windows"] += 1
                    s["decisions"] += w["decisions"]
                    s["undo"] += w["fp_proxy"]["undo"][defect]
                    if revoked_at is None and time.monotonic() > end - seconds / 3:
                        sdk.revoke_consent("dev-2")
                        consent["dev-2"] = False
                        revoked_at = stats["dev-2"]["windows"]
                    live.update(_table(stats, models, defect, consent))
                    if time.monotonic() > end:
                        break
            console.print()
            cand = [d for d in models if models[d] == "candidate"]
            console.print(f"candidate devices ({', '.join(cand)}) show the false-positive signal on "
                          f"'{defect}'; the baseline does not.")
            time.sleep(0.6)
            revoked = next(r for r in sdk.audit_chain("dev-2").consent_trail() if not r["data"]["grant"])
            late = [w for w in sdk.windows("dev-2") if w["end"] > revoked["time"]]
            console.print(f"after revoking dev-2: [bold]{len(late)}[/] further windows from it")
            chain = sdk.audit_chain("dev-2")
            v = chain.verify()
            console.print(f"[green]✓[/] dev-2 audit chain: {len(chain)} records, verified={v.ok}, "
                          f"consent trail {[(r['data']['scope'], r['data']['grant']) for r in chain.consent_trail()]}")
            if not v.ok or before or late:
                code = 1
    finally:
        with console.status("bringing the lab down ..."):
            lab.down(home)
        left = [p for p in pids if pid_alive(p)]
        console.print(f"[green]✓[/] lab down; processes left behind: {len(left)}")
        if left:
            code = 1
    return code
