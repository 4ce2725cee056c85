"""``livelab demo``: the main job end to end, on this machine, in a few minutes.

1. Brings a lab up in a fresh state directory; shows the devices deciding and
   consented telemetry arriving (the candidate model's false-positive signal on the
   scenario's defect intent), that revoking consent stops a device's telemetry, and
   a verified audit chain.
2. Releases the flagship course: version 1.1.0 through the real release gate (every
   reference solution passes against this live lab, every learner version fails).
3. Lets a small simulated team work through both curriculum versions: typical wrong
   submissions (the learner version as handed out) and then the reference solutions,
   all really executed and graded by ``livelab grade`` against the lab, writing events.
4. Builds the time-to-signal report (static HTML that works offline), prints where to
   open it and a summary, and brings the lab down, checking no process is left behind.
"""

from __future__ import annotations

import os
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


def run_demo(home: Path | None = None, *, console: Console | None = None, seconds: float = 5.0,
             lab_only: bool = False) -> int:
    from lab_hardware.runtime import lab
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
        if not lab_only:
            code |= _course_team_report(home, console)
    finally:
        with console.status("bringing the lab down ..."):
            lab.down(home)
        left = [p for p in pids if pid_alive(p)]
        console.print(f"[green]✓[/] lab down; processes left behind: {len(left)}")
        if left:
            code = 1
    return code


TEAM = (("ana", "red", "1.0.0"), ("ben", "red", "1.0.0"), ("cleo", "blue", "1.1.0"), ("dev", "blue", "1.1.0"))
MODULES = ("m1-telemetry", "m2-replay")
COURSE = "edge-ml-foundations"


def _course_team_report(home: Path, console: Console) -> int:
    """Parts 2-4 of the demo: release, a team graded on both versions, the report."""
    import shutil

    from courses import release as _release
    from grading.batch import BatchConfig, grade_many
    from reports import static as _static
    from reports import tts as _tts
    from labs.learning_events import EventStore

    repo = Path(__file__).resolve().parents[1]
    src = repo / "courses" / COURSE
    root = home / "courses"
    dst = root / COURSE
    # the course as an author has it just before releasing 1.1.0: sources and release 1.0.0
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("1.1.0", ".staging-*", "__pycache__"))
    console.rule("[bold]releasing[/] edge-ml-foundations 1.1.0 (nbgrader + the release gate on this lab)")
    t0 = time.perf_counter()
    try:
        manifest = _release.release(COURSE, "1.1.0", root=root, lab_home=home,
                                    progress=lambda m: console.print(f"  {m}"))
    except _release.ReleaseError as exc:
        console.print(f"[red]release failed:[/] {exc}")
        return 1
    console.print(f"[green]✓[/] released 1.1.0 in {time.perf_counter() - t0:.0f} s "
                  f"({len(manifest.get('modules', []))} modules; gate passed)")

    console.rule("[bold]a team works through both versions[/] (real executions, graded by livelab grade)")
    os.environ["LIVELAB_EVENTS_URL"] = f"sqlite:///{home / 'events.sqlite'}"
    code = 0
    for round_name, kind in (("first attempts (the learner version as handed out)", "learner"),
                             ("second attempts (working solutions)", "source")):
        console.print(f"[bold]{round_name}[/]")
        for version in ("1.0.0", "1.1.0"):
            rel = dst / "releases" / version
            for module in MODULES:
                sub = home / "submissions" / version / kind
                for learner, _team, v in TEAM:
                    if v != version:
                        continue
                    nb = sub / "submitted" / learner / module / f"{module}.ipynb"
                    nb.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(rel / kind / module / f"{module}.ipynb", nb)
                summary = grade_many(BatchConfig(course=str(rel), module=module, path=str(sub),
                                                 out=str(home / "graded" / version / kind),
                                                 lab_home=str(home), events=str(home), progress=True,
                                                 teams={n: t for n, t, _ in TEAM}))
                console.print(f"  {version} {module}: {_score_line(summary)}")
    store = EventStore(home)
    result = _tts.compute(_tts.EventTable.from_store(store))
    store.close()
    out = home / "time-to-signal.html"
    _static.export(home, out)
    console.rule("[bold]time to signal[/]")
    t = Table("version", "team", "module", "learners", "passed", "median TTS", "p90 TTS")
    for version, team in (("1.0.0", "red"), ("1.1.0", "blue")):
        for module in MODULES:
            sm = result.summary(course=COURSE, version=version, module=module, team=team)
            med = f"{sm['median']:.1f} s" if sm.get("median") is not None and sm["count"] else "-"
            p90 = f"{sm['p90']:.1f} s" if sm.get("p90") is not None and sm["count"] else "-"
            t.add_row(version, team, module, str(sm["learners"]), str(sm["count"]), med, p90)
            if not sm["count"]:
                code = 1
    console.print(t)
    console.print(f"report: [bold]{out}[/] (one file, works offline); live: "
                  f"livelab --home {home} report serve")
    return code


def _score_line(summary: dict) -> str:
    res = summary.get("results") or []
    if not res:
        return f"{summary.get('graded', 0)} graded"
    parts = []
    for r in res:
        who = r.get("student") or r.get("learner") or "?"
        parts.append(f"{who} {r.get('score', 0):g}/{r.get('max_score', 0):g}")
    return ", ".join(parts)
