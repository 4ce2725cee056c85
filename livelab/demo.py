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
   Each learner is assigned a version at random (seeded, half of each team to each version),
   so that team and version are not confounded.  The team are bots: system identities, whose
   events are marked ``system`` like the release gate's, and whose times are simulated --
   the summary and the report page say so.
4. Builds the time-to-signal report (static HTML that works offline, system identities
   included since they are all the demo has), prints where to open it and a summary, and
   brings the lab down, checking no process is left behind.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def _table(stats: dict, models: dict, defect: str, consent: dict) -> Table:
    t = Table(title=f"live telemetry (false-positive proxy: undos of '{defect}' decisions)")
    for col in ("device", "model", "telemetry", "windows", "decisions", f"undo '{defect}'", "FP proxy"):
        t.add_column(col, justify="right" if col not in ("device", "model", "telemetry") else "left")
    for dev in sorted(models):
        s = stats[dev]
        rate = s["undo"] / s["decisions"] if s["decisions"] else 0.0
        style = "bold red" if rate > 0.03 else "green"
        t.add_row(
            dev,
            models[dev],
            "granted" if consent.get(dev) else "[dim]revoked[/]",
            str(s["windows"]),
            str(s["decisions"]),
            str(s["undo"]),
            f"[{style}]{rate:.1%}[/]" if s["decisions"] else "-",
        )
    return t


def run_demo(
    home: Path | None = None, *, console: Console | None = None, seconds: float = 5.0, lab_only: bool = False
) -> int:
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
    console.print(
        f"[green]✓[/] lab up in {time.perf_counter() - t0:.1f} s: broker "
        f"127.0.0.1:{desc['broker']['port']}, devices {', '.join(desc['devices'])} (state in {home})"
    )
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
            console.print(
                f"candidate devices ({', '.join(cand)}) show the false-positive signal on "
                f"'{defect}'; the baseline does not."
            )
            time.sleep(0.6)
            revoked = next(r for r in sdk.audit_chain("dev-2").consent_trail() if not r["data"]["grant"])
            late = [w for w in sdk.windows("dev-2") if w["end"] > revoked["time"]]
            console.print(f"after revoking dev-2: [bold]{len(late)}[/] further windows from it")
            chain = sdk.audit_chain("dev-2")
            v = chain.verify()
            console.print(
                f"[green]✓[/] dev-2 audit chain: {len(chain)} records, verified={v.ok}, "
                f"consent trail {[(r['data']['scope'], r['data']['grant']) for r in chain.consent_trail()]}"
            )
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


#: The demo's simulated team (bots): name, team.
PEOPLE = (("ana", "red"), ("ben", "red"), ("cleo", "blue"), ("dev", "blue"))
VERSIONS = ("1.0.0", "1.1.0")
MODULES = ("m1-telemetry", "m2-replay")
COURSE = "edge-ml-foundations"
#: The seed of the demo's random assignment of learners to curriculum versions.
ASSIGNMENT_SEED = 20240611


def assign_versions(people=PEOPLE, versions=VERSIONS, seed: int = ASSIGNMENT_SEED) -> tuple[tuple[str, str, str], ...]:
    """(learner, team, version): each team's learners shuffled (seeded) and dealt to the versions in
    turn, so every team works through every version -- comparing versions is not comparing teams."""
    rng = random.Random(seed)
    out = []
    for team in sorted({t for _, t in people}):
        members = [n for n, t in people if t == team]
        rng.shuffle(members)
        offset = rng.randrange(len(versions))
        out += [(n, team, versions[(i + offset) % len(versions)]) for i, n in enumerate(members)]
    return tuple(sorted(out))


TEAM = assign_versions()


def _course_team_report(home: Path, console: Console) -> int:
    """Parts 2-4 of the demo: release, a team graded on both versions, the report."""
    import shutil

    import numpy as np

    from courses import release as _release
    from reports import static as _static
    from labs.learning_events import system_identity

    repo = Path(__file__).resolve().parents[1]
    src = repo / "courses" / COURSE
    root = home / "courses"
    dst = root / COURSE
    # the course as an author had it just before releasing 1.1.0: release 1.0.0 (and no later
    # one), and 1.1.0's course.toml and sources (a release keeps both: releases/1.1.0/)
    plain = shutil.ignore_patterns(".staging-*", "__pycache__")

    def as_before(d: str, names: list[str]) -> set[str]:
        if Path(d) == src / "releases":
            return {n for n in names if n != "1.0.0"}
        return set(plain(d, names))

    shutil.copytree(src, dst, ignore=as_before)
    shutil.copyfile(src / "releases" / "1.1.0" / "course.toml", dst / "course.toml")
    shutil.rmtree(dst / "source")
    shutil.copytree(src / "releases" / "1.1.0" / "source", dst / "source", ignore=plain)
    console.rule("[bold]releasing[/] edge-ml-foundations 1.1.0 (nbgrader + the release gate on this lab)")
    t0 = time.perf_counter()
    try:
        manifest = _release.release(
            COURSE, "1.1.0", root=root, lab_home=home, progress=lambda m: console.print(f"  {m}", markup=False)
        )
    except _release.ReleaseError as exc:
        console.print(f"[red]release failed:[/] {escape(str(exc))}")
        return 1
    console.print(
        f"[green]✓[/] released 1.1.0 in {time.perf_counter() - t0:.0f} s "
        f"({len(manifest.get('modules', []))} modules; gate passed)"
    )

    console.rule("[bold]a simulated team works through both versions[/] (real executions, graded by livelab grade)")
    console.print(
        "learners assigned to versions at random (seed "
        f"{ASSIGNMENT_SEED}): " + ", ".join(f"{n} ({t}) {v}" for n, t, v in TEAM),
        markup=False,
    )
    before = os.environ.get("LIVELAB_EVENTS_URL")
    os.environ["LIVELAB_EVENTS_URL"] = f"sqlite:///{home / 'events.sqlite'}"
    try:
        with system_identity():  # bots, not people: their events are marked system
            code = _team_rounds(home, dst, console)
    finally:  # the caller's process keeps its own events store (the demo runs in tests too)
        if before is None:
            os.environ.pop("LIVELAB_EVENTS_URL", None)
        else:
            os.environ["LIVELAB_EVENTS_URL"] = before
    out = home / "time-to-signal.html"
    _static.export(home, out, include_system=True)
    result = _static.selected(home, include_system=True).result
    console.rule("[bold]time to signal[/] (simulated: the demo's bots, not people)")
    t = Table(
        "version",
        "module",
        "learners",
        "teams",
        "passed",
        "median TTS (min)",
        "p90 TTS (min)",
        title="time to signal per curriculum version (both teams on both versions)",
        caption="Simulated times: machines running reference solutions minutes apart, not people learning.",
    )
    for version in VERSIONS:
        for module in MODULES:
            # the team's rows only (the release gate ran these modules too, as its own identity)
            team_of = {n: tm for n, tm, v in TEAM if v == version}
            rows = [r for r in result.rows(course=COURSE, version=version, module=module) if r["learner"] in team_of]
            vals = np.array([r["tts"] for r in rows if r["tts"] is not None], dtype=float) / 60.0
            teams = ", ".join(sorted({r["team"] for r in rows})) or "-"
            med = f"{np.percentile(vals, 50):.2f}" if len(vals) else "-"
            p90 = f"{np.percentile(vals, 90):.2f}" if len(vals) else "-"
            t.add_row(version, module, str(len(rows)), Text(teams), str(len(vals)), med, p90)
            if not len(vals):
                code = 1
    console.print(t)
    console.print(
        f"report: [bold]{escape(str(out))}[/] (one file, works offline; system identities included, "
        f"marked simulated); live: livelab --home {escape(str(home))} report serve --include-system"
    )
    return code


def _team_rounds(home: Path, dst: Path, console: Console) -> int:
    """Both rounds of submissions of the simulated team, graded against the lab."""
    import shutil

    from grading.batch import BatchConfig, grade_many

    code = 0
    for round_name, kind in (
        ("first attempts (the learner version as handed out)", "learner"),
        ("second attempts (working solutions)", "source"),
    ):
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
                summary = grade_many(
                    BatchConfig(
                        course=str(rel),
                        module=module,
                        path=str(sub),
                        out=str(home / "graded" / version / kind),
                        lab_home=str(home),
                        events=str(home),
                        progress=True,
                        teams={n: t for n, t, _ in TEAM},
                    )
                )
                console.print(f"  {version} {module}: {_score_line(summary)}", markup=False)
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
