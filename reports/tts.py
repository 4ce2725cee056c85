"""Time-to-signal (TTS): how long a learner needs from opening a module to its first signal.

Definition (the one every number in the reports uses)
-----------------------------------------------------

TTS is computed per **learner and module of one course and curriculum version** (a *group*;
the same module in 1.0.0 and in 1.1.0 are two groups, so versions can be compared):

``TTS = time of the first check-passed event - time of the first opening``

* **Opening** is the first ``module-opened`` or ``lab-connected`` event of the group (DESIGN.md:
  "opening the module = first lab connection with that module id"; the SDK writes both at
  ``Lab.connect(module=...)``).  **Re-opening does not reset the clock**: a learner who opens
  the module again later (a new kernel, the next day) keeps the first opening, because what
  we measure is how long the module took to yield a signal, interruptions included.
* **First pass** is the earliest ``check-passed`` event of the group, whatever the check.
* **Never passed**: an opening but no pass -> no TTS; the learner counts in the funnel as
  opened but not passed (``never_passed`` in the summaries).
* **Ties**: a pass at the same time as the opening gives TTS = 0.
* **Clock skew between writers** (the SDK on the learner's kernel, the grader on a Dask
  worker): a first pass up to :data:`SKEW_ALLOWANCE` seconds *before* the opening is skew,
  and gives TTS = 0; further before, the pair is inconsistent, **excluded** from TTS
  statistics and counted as ``skewed`` (a report shows that count, nothing is silently lost).
* A pass with **no opening** at all (the grader saw a submission but the SDK never recorded
  the module being opened) has no TTS and is counted as ``no_open``.
* **Team**: the team named on the group's events (events without a team take it from the
  others; a learner is in one team per course).

Outcome events (``check-passed``, ``check-failed``, ``module-completed``) count only when the
lab's grader signed them (:meth:`EventTable.from_store` with the lab's events key): a learner's
kernel can write into the store, so one it forges or alters is left out and counted as
``unverified``.

System identities (the release gate's runs, the demo's bots, benchmarks: events written with
``system = true``) are not learning: a group with any system event is a *system group*, and
reports leave system groups out unless asked (:meth:`TTSResult.select` with
``include_system=True``).  A **date range** selects groups by their first opening (a group with
no opening, by its first event): ``since <= opening < until``, UTC seconds.

Times are computed and stored in seconds; every report shows them in **minutes** (one unit in
every table, plot axis and CSV header: :func:`fmt_duration`, :func:`minutes`).

Other figures, same rules: *actual minutes* = first ``module-completed`` minus the opening
(compared with the module's estimated minutes from ``courses/<course>/course.toml``); *time to
a check* = that check's first pass minus the opening (the *slowest checks*, with the number of
``check-failed`` events: where learners get stuck).  Statistics are over groups: ``median`` and
``p90`` use numpy's linear interpolation (``np.percentile``); the completion funnel counts
distinct learners per module reaching each stage (opened -> lab connected -> telemetry first
seen -> any check passed -> completed).

Events from the future (beyond the store's allowance) and unknown kinds are refused here as in
the store.  The computation is vectorised with numpy: a million events take well under 2 s.
"""

from __future__ import annotations

import math
import os
import time as _time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from labs.learning_events import KINDS, MAX_FUTURE_SKEW, Event, EventError, EventStore

#: Seconds a first pass may precede the opening and still count (as TTS 0): writer clock skew.
SKEW_ALLOWANCE = 60.0

COLUMNS = ("learner", "team", "course", "version", "module", "check")
#: The filters a report page offers as drop-downs (every combination is precomputed in an export).
FILTERS = ("course", "version", "module", "team")
#: Every filter :meth:`TTSResult.mask` takes: the drop-downs, one learner, and a date range.
GROUP_FILTERS = FILTERS + ("learner",)
RANGE = ("since", "until")
STATUS = ("ok", "never-passed", "skewed", "no-open")
OK, NEVER_PASSED, SKEWED, NO_OPEN = range(4)
K = {k: i for i, k in enumerate(KINDS)}
FUNNEL = (
    ("opened", "opened"),
    ("lab connected", "lab-connected"),
    ("telemetry first seen", "telemetry-first-seen"),
    ("any check passed", "check-passed"),
    ("completed", "module-completed"),
)


def version_key(v: str) -> tuple:
    """Semantic-version order (1.10.0 after 1.9.0); anything else after, alphabetically."""
    core, _, pre = str(v).partition("-")
    try:
        nums = tuple(int(x) for x in core.split("."))
    except ValueError:
        return (1, (), 0, str(v))
    return (0, nums, 0 if pre else 1, pre)


def _factorize(values: Sequence) -> tuple[np.ndarray, list[str]]:
    """Integer codes into a sorted category list (None reads as '')."""
    d: dict = {}
    codes = np.fromiter((d.setdefault(v, len(d)) for v in values), dtype=np.int64, count=len(values))
    size = len(d)
    if None in d:
        none_code = d.pop(None)
        if "" in d:
            codes[codes == none_code] = d[""]
        else:
            d[""] = none_code
    cats = sorted(d)
    remap = np.zeros(max(size, 1), dtype=np.int64)
    for new, c in enumerate(cats):
        remap[d[c]] = new
    return remap[codes], cats


# ---- events, columnar ---------------------------------------------------------------------------


@dataclass
class EventTable:
    """Events as numpy columns: integer codes into category lists, kinds as codes into KINDS."""

    codes: dict[str, np.ndarray]
    cats: dict[str, list[str]]
    kind: np.ndarray
    time: np.ndarray
    #: per event: written by a system identity (release gate, demo bot, benchmark)
    system: np.ndarray | None = None
    #: outcome events left out because the lab did not sign them (see :meth:`from_store`)
    unverified: int = 0
    #: whether outcome events were checked against the lab's events key
    verified: bool = False

    def __len__(self) -> int:
        return len(self.time)

    @classmethod
    def from_columns(
        cls, cols: Mapping[str, Sequence], *, now: float | None = None, max_future_skew: float = MAX_FUTURE_SKEW
    ) -> "EventTable":
        """From columns of strings (``learner``, ``team``, ``course``, ``version``, ``module``,
        ``check``, ``kind``) and ``time``; refuses unknown kinds and events from the future."""
        n = len(cols["time"])
        codes, cats = {}, {}
        for c in COLUMNS:
            col = cols.get(c)
            if col is None:
                codes[c], cats[c] = np.zeros(n, dtype=np.int64), [""]
            else:
                codes[c], cats[c] = _factorize(col)
        kcodes, kcats = _factorize(cols["kind"])
        unknown = [k for k in kcats if k not in K]
        if unknown:
            raise EventError(
                f"unknown event kind {unknown[0]!r}"
                f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}: "
                f"use one of {', '.join(KINDS)}"
            )
        lut = np.array([K[k] for k in kcats], dtype=np.int8)
        kind = lut[kcodes] if n else np.zeros(0, dtype=np.int8)
        t = np.asarray(cols["time"], dtype=np.float64)
        system = cols.get("system")
        system = None if system is None else np.fromiter((bool(x) for x in system), dtype=bool, count=n)
        return cls.from_codes(codes, cats, kind, t, now=now, max_future_skew=max_future_skew, system=system)

    @classmethod
    def from_codes(
        cls,
        codes: Mapping[str, np.ndarray],
        cats: Mapping[str, list[str]],
        kind: np.ndarray,
        time: np.ndarray,
        *,
        now: float | None = None,
        max_future_skew: float = MAX_FUTURE_SKEW,
        system: np.ndarray | None = None,
    ) -> "EventTable":
        """From integer codes (what a generator or a columnar store produces): no string work."""
        time = np.asarray(time, dtype=np.float64)
        kind = np.asarray(kind)
        if len(kind) and (kind.min() < 0 or kind.max() >= len(KINDS)):
            raise EventError(f"unknown event kind code {int(kind.max())}: use one of {', '.join(KINDS)}")
        if len(time):
            if not np.isfinite(time).all():
                raise EventError("event times must be finite UTC seconds")
            now = _time.time() if now is None else now
            late = time > now + max_future_skew
            if late.any():
                raise EventError(
                    f"{int(late.sum())} event(s) are from the future (up to "
                    f"{float(time.max() - now):,.0f} s ahead, allowance {max_future_skew:.0f} s): "
                    "check the writers' clocks"
                )
        sysarr = np.zeros(len(time), dtype=bool) if system is None else np.asarray(system, dtype=bool)
        if len(sysarr) != len(time):
            raise EventError("the system column has a different length from the events")
        return cls({c: np.asarray(codes[c]) for c in COLUMNS}, {c: list(cats[c]) for c in COLUMNS}, kind, time, sysarr)

    @classmethod
    def from_events(cls, events: Iterable[Event | Mapping[str, Any]], **kw: Any) -> "EventTable":
        evs = [Event.from_dict(e) for e in events]
        cols: dict[str, list] = {c: [getattr(e, c) for e in evs] for c in (*COLUMNS, "kind", "time", "system")}
        return cls.from_columns(cols, **kw)

    @classmethod
    def from_store(cls, store: EventStore, *, key: bytes | None = None, **filters: Any) -> "EventTable":
        """The store's events.  With the lab's events ``key`` (:func:`outcome_key`), outcome
        events (check-passed, check-failed, module-completed) count only when the lab signed
        them: one forged or altered in a learner's kernel is left out, and counted in
        ``unverified``.  Without a key nothing can be checked, and ``verified`` says so."""
        if key is None:
            return cls.from_columns(store.columns(**filters))
        from grading.outcomes import verify_columns

        cols = store.columns(extra=("source", "key", "detail"), **filters)
        ok = verify_columns(cols, key)
        dropped = len(ok) - sum(ok)
        keep = ("learner", "team", "course", "version", "module", "kind", "check", "time", "system")
        if dropped:
            cols = {n: [v for v, good in zip(cols[n], ok) if good] for n in keep}
        table = cls.from_columns({n: cols[n] for n in keep})
        table.unverified, table.verified = dropped, True
        return table


# ---- the computation -----------------------------------------------------------------------------


def _first(groups: int, g: np.ndarray, t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(groups, np.inf)
    np.minimum.at(out, g[mask], t[mask])
    out[np.isinf(out)] = np.nan
    return out


def compute(table: EventTable, *, skew_allowance: float = SKEW_ALLOWANCE) -> "TTSResult":
    """Time-to-signal per learner and module (see the module docstring for the definition)."""
    c, t, kind = table.codes, table.time, table.kind
    n_c, n_v, n_m = (max(len(table.cats[x]), 1) for x in ("course", "version", "module"))
    key = ((c["learner"] * n_c + c["course"]) * n_v + c["version"]) * n_m + c["module"]
    if len(key):
        ukeys, first_idx, g = np.unique(key, return_index=True, return_inverse=True)
    else:
        ukeys, first_idx, g = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    G = len(ukeys)
    grp = {x: c[x][first_idx] for x in ("learner", "course", "version", "module")}
    # Team: any non-empty team named on the group's events.
    team_code = c["team"].copy()
    empty = table.cats["team"].index("") if "" in table.cats["team"] else -2
    team_code[team_code == empty] = -1
    gteam = np.full(G, -1, dtype=np.int64)
    np.maximum.at(gteam, g, team_code)
    if empty >= 0:
        gteam[gteam == -1] = empty
    else:
        gteam[gteam == -1] = 0  # no empty category exists; unreachable for groups (they have events)
    grp["team"] = gteam

    system = table.system
    if system is not None and system.any():  # bincount, not logical_or.at: ~10x faster on 1M events
        gsystem = np.bincount(g, weights=system, minlength=G) > 0
    else:
        gsystem = np.zeros(G, dtype=bool)
    n_events = np.bincount(g, minlength=G) if G else np.zeros(0, np.int64)
    opening = (kind == K["module-opened"]) | (kind == K["lab-connected"])
    firsts = {
        "opened": _first(G, g, t, opening),
        "lab-connected": _first(G, g, t, kind == K["lab-connected"]),
        "telemetry-first-seen": _first(G, g, t, kind == K["telemetry-first-seen"]),
        "check-passed": _first(G, g, t, kind == K["check-passed"]),
        "module-completed": _first(G, g, t, kind == K["module-completed"]),
    }
    # A group's first event of any kind (what a group without an opening is dated by).
    stacked = np.vstack([*firsts.values(), _first(G, g, t, kind == K["check-failed"])]) if G else np.zeros((1, 0))
    with np.errstate(invalid="ignore"):
        firsts["any"] = np.fmin.reduce(stacked, axis=0)
    opened, passed = firsts["opened"], firsts["check-passed"]
    delta = passed - opened
    status = np.full(G, NEVER_PASSED, dtype=np.int8)
    has_open, has_pass = ~np.isnan(opened), ~np.isnan(passed)
    status[~has_open] = NO_OPEN
    both = has_open & has_pass
    status[both] = OK
    status[both & (delta < -skew_allowance)] = SKEWED
    tts = np.where(status == OK, np.maximum(delta, 0.0), np.nan)
    done = firsts["module-completed"] - opened
    actual = np.where(has_open & (done >= -skew_allowance), np.maximum(done, 0.0), np.nan)

    # Per (group, check): first pass relative to the opening, and failures.
    n_k = max(len(table.cats["check"]), 1)
    is_check = (kind == K["check-passed"]) | (kind == K["check-failed"])
    ck = g[is_check] * n_k + c["check"][is_check]
    if len(ck):
        upairs, pinv = np.unique(ck, return_inverse=True)
    else:
        upairs, pinv = np.zeros(0, np.int64), np.zeros(0, np.int64)
    pg, pc = upairs // n_k, upairs % n_k
    ok_ev = kind[is_check] == K["check-passed"]
    pfirst = np.full(len(upairs), np.inf)
    np.minimum.at(pfirst, pinv[ok_ev], t[is_check][ok_ev])
    pfirst[np.isinf(pfirst)] = np.nan
    prel = pfirst - opened[pg] if len(pg) else pfirst
    prel = np.where(prel >= -skew_allowance, np.maximum(prel, 0.0), np.nan)
    pfails = np.bincount(pinv[~ok_ev], minlength=len(upairs)) if len(upairs) else np.zeros(0, np.int64)
    ppasses = np.bincount(pinv[ok_ev], minlength=len(upairs)) if len(upairs) else np.zeros(0, np.int64)
    return TTSResult(
        cats=table.cats,
        group=grp,
        firsts=firsts,
        tts=tts,
        status=status,
        actual=actual,
        pair_group=pg,
        pair_check=pc,
        pair_first_pass=prel,
        pair_passed=~np.isnan(pfirst),
        pair_fails=pfails,
        skew_allowance=skew_allowance,
        events=len(table),
        system=gsystem,
        n_events=n_events,
        pair_passes=ppasses,
        unverified=table.unverified,
        verified=table.verified,
    )


def _split(cols: Sequence[np.ndarray], sizes: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group positions by several code columns at once (one int64 key, one stable sort)."""
    if not len(cols[0]):
        return np.zeros((0, len(cols)), np.int64), []
    key = np.zeros(len(cols[0]), np.int64)
    for col, size in zip(cols, sizes):
        key = key * max(size, 1) + col
    order = np.argsort(key, kind="stable")
    ks = key[order]
    cuts = np.nonzero(np.diff(ks))[0] + 1
    uniq = ks[np.concatenate(([0], cuts))]
    rows = np.zeros((len(uniq), len(cols)), np.int64)
    rest = uniq.copy()
    for j in range(len(cols) - 1, -1, -1):
        size = max(sizes[j], 1)
        rows[:, j] = rest % size
        rest //= size
    return rows, np.split(order, cuts)


def _q(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _stats(values: np.ndarray) -> dict[str, float | None]:
    return {"median": _q(values, 50), "p90": _q(values, 90)}


@dataclass
class TTSResult:
    """Per-group figures (one row per learner x course x version x module) and per-check pairs."""

    cats: dict[str, list[str]]
    group: dict[str, np.ndarray]
    firsts: dict[str, np.ndarray]
    tts: np.ndarray
    status: np.ndarray
    actual: np.ndarray
    pair_group: np.ndarray
    pair_check: np.ndarray
    pair_first_pass: np.ndarray
    pair_passed: np.ndarray
    pair_fails: np.ndarray
    skew_allowance: float = SKEW_ALLOWANCE
    events: int = 0
    #: per group: any of its events came from a system identity
    system: np.ndarray | None = None
    #: per group: how many events it has
    n_events: np.ndarray | None = None
    #: per (group, check): how many check-passed events
    pair_passes: np.ndarray | None = None
    #: outcome events left out: not signed by the lab (forged or altered)
    unverified: int = 0
    #: whether outcome events were checked against the lab's events key
    verified: bool = False

    def __post_init__(self) -> None:
        G = len(self.tts)
        if self.system is None:
            self.system = np.zeros(G, dtype=bool)
        if self.n_events is None:
            self.n_events = np.zeros(G, dtype=np.int64)
        if self.pair_passes is None:
            self.pair_passes = self.pair_passed.astype(np.int64)
        if "any" not in self.firsts:
            self.firsts["any"] = np.fmin(self.firsts["opened"], self.firsts["check-passed"])

    # ---- selection -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tts)

    def options(self, name: str) -> list[str]:
        """The values a filter can take (versions in semver order)."""
        present = np.unique(self.group[name]) if len(self) else np.zeros(0, np.int64)
        vals = [self.cats[name][i] for i in present]
        return sorted(vals, key=version_key) if name == "version" else sorted(vals)

    def anchor(self) -> np.ndarray:
        """The time a group is dated by (date ranges): its first opening, else its first event."""
        return np.where(np.isnan(self.firsts["opened"]), self.firsts["any"], self.firsts["opened"])

    def mask(self, **filters: Any) -> np.ndarray:
        """Groups matching every filter (course, version, module, team, learner; None = all) and
        the date range (``since``/``until``: UTC seconds, the group's first opening in
        ``[since, until)``)."""
        m = np.ones(len(self), dtype=bool)
        for name, value in filters.items():
            if name in RANGE:
                if value is not None:
                    a = self.anchor()
                    m &= (a >= float(value)) if name == "since" else (a < float(value))
                continue
            if name not in GROUP_FILTERS:
                raise ValueError(f"unknown filter {name!r}: use {', '.join(GROUP_FILTERS + RANGE)}")
            if value is None:
                continue
            try:
                code = self.cats[name].index(value)
            except ValueError:
                return np.zeros(len(self), dtype=bool)
            m &= self.group[name] == code
        return m

    def select(self, *, include_system: bool = False, **filters: Any) -> "TTSResult":
        """The groups a report shows: system groups left out unless ``include_system``, and only
        those matching ``filters`` (as :meth:`mask`: a date range, a team...).  A new result over
        the kept groups (their per-check pairs too); everything else works on it unchanged."""
        m = self.mask(**filters)
        if not include_system:
            m &= ~self.system
        if m.all():
            return self
        idx = np.nonzero(m)[0]
        new = np.full(len(self), -1, dtype=np.int64)
        new[idx] = np.arange(len(idx))
        pm = m[self.pair_group] if len(self.pair_group) else np.zeros(0, dtype=bool)
        n_events = self.n_events[idx]
        return TTSResult(
            cats=self.cats,
            group={k: v[idx] for k, v in self.group.items()},
            firsts={k: v[idx] for k, v in self.firsts.items()},
            tts=self.tts[idx],
            status=self.status[idx],
            actual=self.actual[idx],
            pair_group=new[self.pair_group[pm]],
            pair_check=self.pair_check[pm],
            pair_first_pass=self.pair_first_pass[pm],
            pair_passed=self.pair_passed[pm],
            pair_fails=self.pair_fails[pm],
            skew_allowance=self.skew_allowance,
            events=int(n_events.sum()),
            system=self.system[idx],
            n_events=n_events,
            pair_passes=self.pair_passes[pm],
            unverified=self.unverified,
            verified=self.verified,
        )

    def system_groups(self) -> int:
        """How many learner x module groups come from system identities."""
        return int(self.system.sum())

    def values(self, **filters: str | None) -> np.ndarray:
        """TTS seconds of the matching groups that have one."""
        m = self.mask(**filters) & (self.status == OK)
        return self.tts[m]

    def summary(self, **filters: str | None) -> dict[str, Any]:
        """Median and p90 TTS (seconds) over the matching learners' modules, with the counts
        that did not make it into them (never passed, skewed, no opening)."""
        m = self.mask(**filters)
        st = self.status[m]
        vals = self.tts[m][st == OK]
        return {
            "groups": int(m.sum()),
            "learners": int(len(np.unique(self.group["learner"][m]))),
            "count": int(len(vals)),
            **_stats(vals),
            "never_passed": int((st == NEVER_PASSED).sum()),
            "skewed": int((st == SKEWED).sum()),
            "no_open": int((st == NO_OPEN).sum()),
        }

    def _by(self, by: Sequence[str], m: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Split the groups selected by ``m`` along the dimensions ``by``: (key rows, one array
        of positions within ``m`` per key)."""
        return _split([self.group[b][m] for b in by], [len(self.cats[b]) for b in by])

    def _label(self, by: Sequence[str], key_row: np.ndarray) -> dict[str, str]:
        return {b: self.cats[b][int(k)] for b, k in zip(by, key_row)}

    def _sorted(self, rows: list[dict], by: Sequence[str]) -> list[dict]:
        return sorted(rows, key=lambda r: tuple(version_key(r[b]) if b == "version" else (r[b],) for b in by))

    def table(
        self, by: Sequence[str] = ("course", "version", "module", "team"), **filters: str | None
    ) -> list[dict[str, Any]]:
        """One summary row per combination of ``by`` present in the (filtered) events."""
        m = self.mask(**filters)
        keys, parts = self._by(by, m)
        st, tt = self.status[m], self.tts[m]
        rows = []
        for k, sel in zip(keys, parts):
            s = st[sel]
            vals = tt[sel][s == OK]
            rows.append(
                {
                    **self._label(by, k),
                    "groups": int(len(sel)),
                    "count": int(len(vals)),
                    **_stats(vals),
                    "never_passed": int((s == NEVER_PASSED).sum()),
                    "skewed": int((s == SKEWED).sum()),
                    "no_open": int((s == NO_OPEN).sum()),
                }
            )
        return self._sorted(rows, by)

    def distribution(self, bins: int | Sequence[float] = 20, **filters: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of TTS in minutes: (counts, bin edges)."""
        vals = self.values(**filters) / 60.0
        if not len(vals):
            return np.zeros(0, np.int64), np.zeros(0)
        return np.histogram(vals, bins=bins)

    def trend(self, by_module: bool = False, **filters: str | None) -> list[dict[str, Any]]:
        """Median/p90 per curriculum version (and module): did 1.1.0 teach faster than 1.0.0?"""
        by = ("course", "module", "version") if by_module else ("course", "version")
        return self._sorted(self.table(by, **filters), by)

    def funnel(self, **filters: str | None) -> list[dict[str, Any]]:
        """Distinct learners per module reaching each stage (see FUNNEL), among the learners who
        opened it (passes without an opening are counted as ``no_open`` in the summaries)."""
        m = self.mask(**filters) & (self.status != NO_OPEN)
        by = ("course", "version", "module")
        keys, parts = self._by(by, m)
        learners = self.group["learner"][m]
        reached = {label: ~np.isnan(self.firsts[kind][m]) for label, kind in FUNNEL}
        rows = []
        for k, sel in zip(keys, parts):
            rows.append(
                {
                    **self._label(by, k),
                    **{label: int(len(np.unique(learners[sel][r[sel]]))) for label, r in reached.items()},
                }
            )
        return self._sorted(rows, by)

    def minutes_vs_estimate(self, estimates: Mapping | None = None, **filters: str | None) -> list[dict[str, Any]]:
        """Actual minutes (opening -> module completed) per module against its estimate."""
        m = self.mask(**filters)
        by = ("course", "version", "module")
        keys, parts = self._by(by, m)
        act = self.actual[m]
        rows = []
        for k, sel in zip(keys, parts):
            lab = self._label(by, k)
            vals = act[sel]
            vals = vals[~np.isnan(vals)] / 60.0
            est = estimate_for(estimates or {}, lab["course"], lab["version"], lab["module"])
            med = _q(vals, 50)
            rows.append(
                {
                    **lab,
                    "completed": int(len(vals)),
                    "median_minutes": med,
                    "p90_minutes": _q(vals, 90),
                    "estimated_minutes": est,
                    "ratio": (med / est) if (med is not None and est) else None,
                }
            )
        return self._sorted(rows, by)

    def slowest_checks(self, limit: int | None = 10, **filters: str | None) -> list[dict[str, Any]]:
        """Per check: median time from the opening to its first pass, and failures.  Slowest
        first; checks nobody passed (but some failed) come first of all: that is where
        learners are stuck.  Over learners who opened the module; ``passed`` counts those whose
        first pass has a time (not beyond the skew allowance before the opening)."""
        gm = self.mask(**filters) & (self.status != NO_OPEN)
        pm = gm[self.pair_group] if len(self.pair_group) else np.zeros(0, bool)
        if not pm.any():
            return []
        pg, pc = self.pair_group[pm], self.pair_check[pm]
        rel, fails = self.pair_first_pass[pm], self.pair_fails[pm]
        keys, parts = _split(
            [self.group["course"][pg], self.group["version"][pg], self.group["module"][pg], pc],
            [len(self.cats[b]) for b in ("course", "version", "module", "check")],
        )
        rows = []
        for k, sel in zip(keys, parts):
            r = rel[sel]
            r = r[~np.isnan(r)]
            rows.append(
                {
                    "course": self.cats["course"][k[0]],
                    "version": self.cats["version"][k[1]],
                    "module": self.cats["module"][k[2]],
                    "check": self.cats["check"][k[3]],
                    "passed": int(len(r)),
                    "median": _q(r, 50),
                    "p90": _q(r, 90),
                    "fails": int(fails[sel].sum()),
                    "learners_failed": int((fails[sel] > 0).sum()),
                }
            )
        rows.sort(
            key=lambda x: (
                -(math.inf if x["median"] is None else x["median"]),
                -x["fails"],
                x["course"],
                version_key(x["version"]),
                x["module"],
                x["check"],
            )
        )
        return rows[:limit] if limit else rows

    def rows(self, **filters: str | None) -> list[dict[str, Any]]:
        """One dict per learner x module (for exports and debugging)."""
        m = np.nonzero(self.mask(**filters))[0]
        out = []
        for i in m:
            out.append(
                {
                    **{
                        b: self.cats[b][int(self.group[b][i])]
                        for b in ("learner", "team", "course", "version", "module")
                    },
                    "status": STATUS[int(self.status[i])],
                    "tts": None if math.isnan(self.tts[i]) else float(self.tts[i]),
                    "opened": _f(self.firsts["opened"][i]),
                    "first_pass": _f(self.firsts["check-passed"][i]),
                }
            )
        return out

    def learners(self, **filters: Any) -> list[str]:
        """The learners of the matching groups, sorted (the drill-down's choices)."""
        m = self.mask(**filters)
        return sorted(self.cats["learner"][i] for i in np.unique(self.group["learner"][m]))

    def drill_down(self, learner: str, **filters: Any) -> list[dict[str, Any]]:
        """One learner's modules: for each (course, version, module) they opened or were graded
        in, when they opened it, their time to signal, and their attempts.

        ``attempts`` is how many times their checks ran: the most check results any one check
        of the module got (a ``lab.check()`` or a graded submission evaluates each check once);
        ``checks_passed`` / ``checks_seen`` count distinct checks; ``failures`` every failed
        check result.  Ordered by course, version, module."""
        m = self.mask(**{**filters, "learner": learner})
        idx = np.nonzero(m)[0]
        if not len(idx):
            return []
        pos = {int(i): j for j, i in enumerate(idx)}
        attempts = np.zeros(len(idx), np.int64)
        seen = np.zeros(len(idx), np.int64)
        passed = np.zeros(len(idx), np.int64)
        fails = np.zeros(len(idx), np.int64)
        pm = m[self.pair_group] if len(self.pair_group) else np.zeros(0, dtype=bool)
        for gi, ok, nf, npass in zip(
            self.pair_group[pm], self.pair_passed[pm], self.pair_fails[pm], self.pair_passes[pm]
        ):
            j = pos[int(gi)]
            attempts[j] = max(attempts[j], int(nf) + int(npass))
            seen[j] += 1
            passed[j] += int(bool(ok))
            fails[j] += int(nf)
        out = []
        for j, i in enumerate(idx):
            out.append(
                {
                    **{
                        b: self.cats[b][int(self.group[b][i])]
                        for b in ("learner", "team", "course", "version", "module")
                    },
                    "status": STATUS[int(self.status[i])],
                    "tts": _f(self.tts[i]),
                    "opened": _f(self.firsts["opened"][i]),
                    "first_pass": _f(self.firsts["check-passed"][i]),
                    "completed": _f(self.firsts["module-completed"][i]),
                    "attempts": int(attempts[j]),
                    "checks_passed": int(passed[j]),
                    "checks_seen": int(seen[j]),
                    "failures": int(fails[j]),
                    "system": bool(self.system[i]),
                }
            )
        return self._sorted(out, ("course", "version", "module"))


def _f(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def tts(events: Iterable[Event | Mapping[str, Any]] | EventTable, **kw: Any) -> TTSResult:
    """Convenience: compute from events (Event objects, dicts, or an EventTable)."""
    table = events if isinstance(events, EventTable) else EventTable.from_events(events)
    return compute(table, **kw)


# ---- presentation helpers shared by the dashboard, the export and the CLI --------------------------------

#: The one unit every report shows times in.
UNIT = "min"


def minutes(seconds: float | None, digits: int = 1) -> float | None:
    """Seconds (how times are computed) as minutes (how every report shows them), rounded."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return None
    return round(float(seconds) / 60.0, digits)


def fmt_duration(seconds: float | None) -> str:
    """A time as every report shows it: minutes with one decimal ('0.8 min', '12.3 min'); '–'
    for none.  One unit everywhere, so that two numbers on a page always compare at a glance."""
    m = minutes(seconds)
    return "–" if m is None else f"{m:,.1f} {UNIT}"


# ---- estimated minutes per module ---------------------------------------------------------------------


def courses_dir() -> Path:
    """``$LIVELAB_COURSES_DIR``, else the ``courses/`` package of this checkout."""
    env = os.environ.get("LIVELAB_COURSES_DIR")
    if env:
        return Path(env)
    import courses

    return Path(courses.__file__).resolve().parent


def load_estimates(root: str | os.PathLike | None = None) -> dict:
    """Estimated minutes per module from ``<root>/<course-id>/course.toml`` (modules with ``id``
    and ``minutes``; its ``version`` key, or a release snapshot in
    ``<course-id>/releases/<version>/course.toml``, makes them version-specific).  Missing
    or unreadable files: nothing (the report then shows no estimate)."""
    root = Path(root) if root is not None else courses_dir()
    out: dict = {}
    if not root.is_dir():
        return out
    files = sorted(root.glob("*/course.toml")) + sorted(root.glob("*/releases/*/course.toml"))
    for toml in files:
        release = toml.parent.name if toml.parent.parent.name == "releases" else None
        try:
            data = tomllib.loads(toml.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        course = str(
            data.get("id")
            or (data.get("course") or {}).get("id")
            or (toml.parents[2].name if release else toml.parent.name)
        )
        version = release or data.get("version") or (data.get("course") or {}).get("version")
        mods = data.get("modules") or (data.get("course") or {}).get("modules") or []
        if isinstance(mods, Mapping):
            mods = [{"id": k, **(v if isinstance(v, Mapping) else {"minutes": v})} for k, v in mods.items()]
        for mod in mods:
            if not isinstance(mod, Mapping) or "id" not in mod or "minutes" not in mod:
                continue
            try:
                minutes = float(mod["minutes"])
            except (TypeError, ValueError):
                continue
            if not release:
                out[(course, str(mod["id"]))] = minutes
            if version:
                out[(course, str(version), str(mod["id"]))] = minutes
    return out


def estimate_for(estimates: Mapping, course: str, version: str, module: str) -> float | None:
    """Look up by (course, version, module), then (course, module), then module."""
    for k in ((course, version, module), (course, module), module):
        if k in estimates:
            return float(estimates[k])
    return None


def outcome_key(home: str | os.PathLike | None = None) -> bytes | None:
    """The events key of the lab whose events a report reads (``home``, else ``$LIVELAB_HOME``),
    or None when there is none to check signatures with."""
    from lab_hardware.home import events_key, resolve

    if home is not None and "://" in str(home):
        home = None
    try:
        return events_key(resolve(home), create=False)
    except OSError:
        return None


def load(source: str | os.PathLike | EventStore | None = None, *, url: str | None = None, **filters: Any) -> TTSResult:
    """Compute TTS for a lab home, an events URL or an open store (every event, system identities
    included: a report then :meth:`TTSResult.select`s what it shows).  Outcome events count
    only when the lab signed them (the key of ``source`` as a lab home, else ``$LIVELAB_HOME``)."""
    if isinstance(source, EventStore):
        return compute(EventTable.from_store(source, key=outcome_key(None), **filters))
    with EventStore(source, url=url) as store:
        return compute(EventTable.from_store(store, key=outcome_key(source), **filters))
