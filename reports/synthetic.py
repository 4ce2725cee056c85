"""Seeded synthetic learning events: a team working through curriculum versions.

For tests, the benchmark and screenshots: realistic enough to exercise every path of the
time-to-signal computation -- several courses, versions, modules, checks and teams, re-opened
modules, failed attempts, learners who never pass, telemetry that never arrives, completions,
writer clock skew (mostly within the allowance, rarely far beyond it).  Later curriculum
versions teach faster (their TTS medians are lower), so the trend has something to show.

Generation is vectorised (a million events in well under a second) and deterministic for a
given ``seed``: the same call gives the same events, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from labs.learning_events import KINDS, Event
from reports.tts import COLUMNS, EventTable

K = {k: i for i, k in enumerate(KINDS)}
#: Fixed epoch (2023-11-14 22:13:20 UTC): every synthetic event is in the past.
BASE_TIME = 1_700_000_000.0

MODULES = {
    "m1-telemetry": (["consent", "trail", "no-pii", "fp-signal"], 12.0, 20),
    "m2-replay": (["replay-verifies", "deterministic", "reproduces-fp"], 18.0, 25),
    "m3-bundles": (["signature", "manifest", "budget", "canary-rollback"], 22.0, 30),
    "m4-observability": (["digests", "bandwidth", "cause-named"], 15.0, 20),
}


@dataclass(frozen=True)
class Spec:
    """The shape of a synthetic population (see :func:`generate`)."""

    learners: int = 200
    teams: int = 5
    courses: tuple[str, ...] = ("edge-ml",)
    versions: tuple[str, ...] = ("1.0.0", "1.1.0")
    #: median TTS factor per version step: 1.1.0 teaches 25% faster than 1.0.0, and so on
    speedup: float = 0.75
    p_never_pass: float = 0.12
    p_no_telemetry: float = 0.08
    p_reopen: float = 0.2
    p_complete: float = 0.8
    p_far_skew: float = 0.003
    fails_mean: float = 2.0


def estimates(spec: Spec = Spec()) -> dict:
    """Estimated minutes per (course, module), as a course.toml would give them."""
    return {(c, m): float(v[2]) for c in spec.courses for m, v in MODULES.items()}


def generate(n_events: int | None = None, *, seed: int = 20240601, spec: Spec = Spec()) -> EventTable:
    """Events as an :class:`EventTable` (integer codes: no string work, for the benchmark).

    With ``n_events`` the population is grown (more learners) until it yields that many
    events and cut to exactly that many; otherwise ``spec`` decides the size.
    """
    if n_events is None:
        return _generate(seed, spec, None)
    per_learner = len(spec.courses) * len(spec.versions) * len(MODULES) * 9.0
    for _ in range(5):  # grow the population until it yields enough events
        spec = Spec(**{**spec.__dict__, "learners": max(1, int(n_events / per_learner) + 1)})
        table = _generate(seed, spec, n_events)
        if len(table) >= n_events:
            return table
        per_learner *= 0.95 * len(table) / n_events
    raise RuntimeError("synthetic population did not reach the requested number of events")


def _generate(seed: int, spec: Spec, n_events: int | None) -> EventTable:
    rng = np.random.default_rng(seed)
    mods = list(MODULES)
    L, T = spec.learners, spec.teams
    team_of = rng.integers(0, T, L)
    # Sessions: every learner x course x version x module.
    lc, cc, vc, mc = np.meshgrid(
        np.arange(L), np.arange(len(spec.courses)), np.arange(len(spec.versions)), np.arange(len(mods)), indexing="ij"
    )
    lc, cc, vc, mc = (a.reshape(-1) for a in (lc, cc, vc, mc))
    S = len(lc)
    med = np.array([MODULES[m][1] for m in mods])[mc] * 60.0 * spec.speedup**vc
    # learners start each version a month apart, modules a day apart, at a random hour
    start = BASE_TIME + vc * 30 * 86400 + mc * 86400 + lc % 97 * 600 + rng.uniform(0, 3600, S)
    tts = med * rng.lognormal(0.0, 0.6, S)
    passes = rng.random(S) >= spec.p_never_pass
    n_checks = np.array([len(MODULES[m][0]) for m in mods])
    skew = rng.normal(0.0, 3.0, S)  # grader clock vs SDK clock
    far = rng.random(S) < spec.p_far_skew
    skew[far] = -rng.uniform(600, 3600, far.sum())  # far beyond the allowance

    parts: list[tuple[np.ndarray, ...]] = []  # (session, kind, check, time)

    def add(sess, kind, check, t):
        parts.append((sess, np.full(len(sess), K[kind], np.int8), check, t))

    allS = np.arange(S)
    none = np.full(S, -1)
    add(allS, "module-opened", none, start)
    add(allS, "lab-connected", none, start + rng.uniform(0.2, 3.0, S))
    tel = rng.random(S) >= spec.p_no_telemetry
    add(allS[tel], "telemetry-first-seen", none[tel], start[tel] + 3 + rng.exponential(40.0, tel.sum()))
    re = rng.random(S) < spec.p_reopen
    add(allS[re], "module-opened", none[re], start[re] + rng.uniform(600, 2 * 86400, re.sum()))
    # failures before the first pass (or within two hours for those who never pass)
    nf = rng.poisson(spec.fails_mean, S) + (~passes) * 2
    fs = np.repeat(allS, nf)
    horizon = np.where(passes, tts, 7200.0)
    # half the failures are on the module's hardest check (its last), the rest anywhere
    hard = rng.random(len(fs)) < 0.5
    fcheck = np.where(hard, n_checks[mc[fs]] - 1, rng.integers(0, 1 << 30, len(fs)) % n_checks[mc[fs]])
    add(fs, "check-failed", fcheck, start[fs] + rng.uniform(0, 1, len(fs)) * horizon[fs] + skew[fs])
    # passes: every check of the module, the first at start + tts, the rest later
    ps = np.repeat(allS[passes], n_checks[mc[passes]])
    order = np.arange(len(ps)) - np.repeat(np.cumsum(n_checks[mc[passes]]) - n_checks[mc[passes]], n_checks[mc[passes]])
    gaps = np.where(order == 0, 0.0, rng.exponential(120.0, len(ps)) * (order + 1))
    pt = start[ps] + tts[ps] + skew[ps] + _cumsum_by(gaps, order == 0)
    # most learners pass the checks in the module's order; a quarter start elsewhere
    perm = np.where(rng.random(S) < 0.75, 0, rng.integers(0, 1 << 30, S))
    add(ps, "check-passed", (order + perm[ps]) % n_checks[mc[ps]], pt)
    last = np.full(S, -np.inf)
    np.maximum.at(last, ps, pt)
    comp = passes & (rng.random(S) < spec.p_complete)
    add(allS[comp], "module-completed", none[comp], last[comp] + rng.uniform(60, 300, comp.sum()))

    sess = np.concatenate([p[0] for p in parts])
    kind = np.concatenate([p[1] for p in parts])
    chk = np.concatenate([p[2] for p in parts])
    t = np.concatenate([p[3] for p in parts])
    o = np.argsort(sess, kind="stable")
    sess, kind, chk, t = sess[o], kind[o], chk[o], t[o]
    if n_events is not None:
        sess, kind, chk, t = sess[:n_events], kind[:n_events], chk[:n_events], t[:n_events]
    # checks: global category list "" + module/check names
    check_names = [""] + sorted({c for m in mods for c in MODULES[m][0]})
    cidx = {c: i for i, c in enumerate(check_names)}
    lut = np.array([[cidx[c] for c in MODULES[m][0]] + [0] * (4 - len(MODULES[m][0])) for m in mods])
    check_code = np.where(chk >= 0, lut[mc[sess], np.maximum(chk, 0)], 0)
    width = len(str(L))
    cats = {
        "learner": [f"learner-{i:0{width}d}" for i in range(L)],
        "team": [f"team-{chr(97 + i)}" if T <= 26 else f"team-{i:03d}" for i in range(T)],
        "course": list(spec.courses),
        "version": list(spec.versions),
        "module": mods,
        "check": check_names,
    }
    codes = {
        "learner": lc[sess],
        "team": team_of[lc[sess]],
        "course": cc[sess],
        "version": vc[sess],
        "module": mc[sess],
        "check": check_code,
    }
    # categories sorted as EventTable expects (they already are, except versions: keep semver order
    # by construction -- sorted() of these strings agrees for single-digit parts)
    return EventTable.from_codes(codes, cats, kind, t, now=BASE_TIME + 10 * 365 * 86400)


def _cumsum_by(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every True in ``starts``."""
    cs = np.cumsum(x)
    base = np.maximum.accumulate(np.where(starts, cs - x, 0.0))
    return cs - base


def to_columns(table: EventTable) -> dict[str, list]:
    """String columns (what a store returns), for end-to-end timing and for writing."""
    cols: dict[str, list] = {c: np.asarray(table.cats[c], dtype=object)[table.codes[c]].tolist() for c in COLUMNS}
    cols["kind"] = np.asarray(KINDS, dtype=object)[table.kind].tolist()
    cols["time"] = table.time.tolist()
    return cols


def events(table: EventTable, *, source_of=None, system: bool = False) -> Iterator[Event]:
    """Event objects (grader writes checks and completions, the SDK the rest), e.g. to seed a store;
    ``system``: marked as written by a system identity (a benchmark's population)."""
    cols = to_columns(table)
    for i in range(len(table)):
        kind = cols["kind"][i]
        src = "grader" if kind in ("check-passed", "check-failed", "module-completed") else "sdk"
        yield Event(
            learner=cols["learner"][i],
            team=cols["team"][i],
            course=cols["course"][i],
            version=cols["version"][i],
            module=cols["module"][i],
            kind=kind,
            check=cols["check"][i] or None,
            time=cols["time"][i],
            source=src,
            key=f"synthetic-{i}",
            system=system,
        )
