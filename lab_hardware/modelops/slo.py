"""Micro-SLOs: device-level objectives with error budgets and multi-window burn-rate alerts.

A bundle declares its objectives in its manifest (``slos``, see :func:`parse`); a device
evaluates them over its own aggregation windows.  The method is the SRE workbook's
("Alerting on SLOs", multiwindow, multi-burn-rate alerts), with one lab-sized change: time
is counted in *windows*, not hours.

* An objective has an *indicator* that splits every window's valid events into good and bad:

  - ``latency``: a decision is bad when its batch took more than ``threshold_ms`` of
    device time (CPU time times the profile's slowdown: the health check's contract, so a
    busy host never spends a bundle's budget).  Objective 0.99 with ``threshold_ms`` 15
    reads "decision p99 latency <= 15 ms over the period".
  - ``undo_rate``: a decision is bad when the user undid it (the false-positive proxy), over
    every decision or only those of one ``intent``.
  - ``routed_share`` / ``divergence``: a decision routed to the oracle is bad (of all
    decisions); an oracle answer that disagrees with the edge is bad (of the answers, per
    ``intent`` optionally).  They read the window fields the oracle work adds
    (:class:`WindowCounts` ``routed``, ``answered``, ``diverged``); a window without them
    holds no valid events, so it spends no budget.

* The *error budget* over the compliance period (the last ``period_windows`` windows) is
  ``(1 - objective) * valid`` bad events; *budget remaining* is ``1 - bad / budget`` (1 with
  no events, 0 when spent, negative when overspent).
* The *burn rate* over the last L windows is ``(bad / valid) / (1 - objective)``: 1 spends the
  budget exactly over the period.

Scaling the workbook's windows.  The workbook's 30-day period becomes ``period_windows``
windows P, so its hour is P/720 windows.  Two alerts, each firing when the burn rate exceeds
its threshold over *both* a long and a short window (long: significant budget spent; short:
still burning now, so the alert resets soon after the problem stops):

==========  =========  ========================  ========================
severity    burn rate  long window (workbook)    short window (workbook)
==========  =========  ========================  ========================
page        > 14.4     ceil(P/720), >= 2  (1 h)  ceil(P/8640), >= 1 (5 m)
ticket      > 6        ceil(P/120), >= 6  (6 h)  ceil(P/1440), >= 1 (30 m)
==========  =========  ========================  ========================

With P = 8640 (one window standing for five minutes) these are the workbook's windows exactly
(12/1 and 72/6 windows), and a page means >= 2% of the budget spent within the long window,
a ticket >= 5%.  Smaller periods hit the minimums: a long window is never one window, so a
single bad window pages only when it alone burns a large share of the budget.  Windows before
the first one seen do not exist: a fresh bundle's rates are over the windows it has (as a
Prometheus ``rate`` over a young series).

Everything here is integer arithmetic on event counts (the objective read as an exact
decimal fraction), so evaluation is deterministic and a threshold comparison never depends
on float rounding; floats appear only in what is reported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from lab_hardware.window import Window

INDICATORS = ("latency", "undo_rate", "routed_share", "divergence")
POLICIES = ("alert", "rollback", "retrain")
#: Indicators a policy is limited to: ``retrain`` suggests retraining the edge model from
#: captures labelled by the oracle, which only edge/oracle divergence calls for.
POLICY_INDICATORS = {"retrain": ("divergence",)}
#: Most objectives one bundle may declare (each costs a little on every window).
MAX_SLOS = 16
#: Bounds of ``period_windows``.  The ring of per-window counts grows with the windows seen, up
#: to the period: at most two lists of 100,000 counts an objective (the workbook's 30 days in
#: 26 s windows, or 14 h of 0.5 s windows), so a manifest cannot make a device allocate unbounded.
PERIOD_MIN, PERIOD_MAX = 10, 100_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_BASE_KEYS = ("name", "indicator", "objective", "period_windows", "policy")
#: Keys each indicator adds to the base ones: (required, optional).
_EXTRA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "latency": (("threshold_ms",), ()),
    "undo_rate": ((), ("intent",)),
    "routed_share": ((), ()),
    "divergence": ((), ("intent",)),
}


class SloError(ValueError):
    """A declaration that is refused; the message is one line naming the problem."""


@dataclass(frozen=True)
class AlertWindow:
    """One multiwindow alert: fires when the burn rate exceeds ``burn`` over both windows."""

    severity: str
    long: int
    short: int
    burn: Fraction


PAGE_BURN = Fraction(144, 10)
TICKET_BURN = Fraction(6)


def alert_windows(period: int) -> tuple[AlertWindow, AlertWindow]:
    """The page and ticket alerts of a ``period``-window objective (see the module doc)."""
    return (
        AlertWindow("page", max(2, math.ceil(period / 720)), max(1, math.ceil(period / 8640)), PAGE_BURN),
        AlertWindow("ticket", max(6, math.ceil(period / 120)), max(1, math.ceil(period / 1440)), TICKET_BURN),
    )


@dataclass(frozen=True)
class Objective:
    """One declared SLO, validated."""

    name: str
    indicator: str
    objective: float
    period_windows: int
    policy: str
    threshold_ms: float | None = None
    intent: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "indicator": self.indicator,
            "objective": self.objective,
            "period_windows": self.period_windows,
            "policy": self.policy,
        }
        if self.threshold_ms is not None:
            d["threshold_ms"] = self.threshold_ms
        if self.intent is not None:
            d["intent"] = self.intent
        return d


def _number(v: Any, path: str, lo: float, hi: float, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo < v < hi:
        raise SloError(f"{path} must be {what}, not {v!r}"[:300])
    return float(v)


def parse_one(d: Any, path: str = "slos[0]", intents: list[str] | None = None) -> Objective:
    """One declaration (a JSON object) checked key by key; SloError with a one-line reason."""
    if not isinstance(d, dict):
        raise SloError(f"{path} must be a JSON object")
    ind = d.get("indicator")
    if ind not in INDICATORS:
        raise SloError(f"{path}.indicator must be one of {', '.join(INDICATORS)}, not {str(ind)[:64]!r}")
    required, optional = _EXTRA[ind]
    allowed = set(_BASE_KEYS) | set(required) | set(optional)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SloError(f"{path}: unknown key {str(unknown[0])[:64]!r} for indicator {ind!r}")
    for key in (*_BASE_KEYS, *required):
        if key not in d:
            raise SloError(f"{path}: missing key {key!r}")
    name = d["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise SloError(f"{path}.name {str(name)[:64]!r} is invalid: use 1-63 lower-case letters, digits, '-' or '_'")
    objective = _number(d["objective"], f"{path}.objective", 0.0, 1.0, "a number between 0 and 1 (exclusive)")
    period = d["period_windows"]
    if isinstance(period, bool) or not isinstance(period, int) or not PERIOD_MIN <= period <= PERIOD_MAX:
        raise SloError(f"{path}.period_windows must be an integer from {PERIOD_MIN} to {PERIOD_MAX}")
    policy = d["policy"]
    if policy not in POLICIES:
        raise SloError(f"{path}.policy must be one of {', '.join(POLICIES)}, not {str(policy)[:64]!r}")
    if policy in POLICY_INDICATORS and ind not in POLICY_INDICATORS[policy]:
        raise SloError(
            f"{path}.policy {policy!r} is only for the {', '.join(POLICY_INDICATORS[policy])} indicator, not {ind!r}"
        )
    threshold = None
    if "threshold_ms" in d:
        threshold = _number(d["threshold_ms"], f"{path}.threshold_ms", 0.0, 3_600_000.0, "a number of ms > 0")
    intent = d.get("intent")
    if "intent" in d:
        if not isinstance(intent, str) or not intent:
            raise SloError(f"{path}.intent must be an intent name")
        if intents is not None and intent not in intents:
            raise SloError(f"{path}.intent {intent[:64]!r} is not one of the bundle's intents")
    return Objective(name, ind, objective, period, policy, threshold, intent)


def parse(slos: Any, intents: list[str] | None = None) -> list[Objective]:
    """A manifest's ``slos`` list: at most :data:`MAX_SLOS`, names unique."""
    if not isinstance(slos, list):
        raise SloError("slos must be a list of objectives")
    if len(slos) > MAX_SLOS:
        raise SloError(f"slos declares {len(slos)} objectives, at most {MAX_SLOS} are allowed")
    out, seen = [], set()
    for i, d in enumerate(slos):
        o = parse_one(d, f"slos[{i}]", intents)
        if o.name in seen:
            raise SloError(f"slos[{i}].name {o.name!r} is declared twice")
        seen.add(o.name)
        out.append(o)
    return out


# ---- what a window says ----------------------------------------------------------------
@dataclass
class WindowCounts:
    """The counts of one closed window that indicators read.

    ``latencies`` are (device ms of a batch, decisions from it); ``counts``/``undo`` are per
    intent.  ``routed``, ``answered`` and ``diverged`` (per intent) are the oracle's: zero
    and empty until windows carry them."""

    decisions: int
    latencies: list[tuple[float, int]]
    counts: dict[str, int]
    undo: dict[str, int]
    routed: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    diverged: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, w: Window) -> "WindowCounts":
        """From a device's window (read at close).  The oracle's fields, when the window has
        them: ``routed`` (an int), ``answered`` and ``diverged`` (per intent: a dict by name,
        or a list in intent order like ``counts``)."""
        oracle = getattr(w, "oracle", None)  # the routing counters a device's window keeps
        answered: Any
        diverged: Any
        if isinstance(oracle, dict):
            per = oracle.get("by_intent") or {}
            routed = oracle.get("routed", 0)
            answered = {k: v.get("answered", 0) for k, v in per.items()}
            diverged = {k: v.get("diverged", 0) for k, v in per.items()}
        else:
            routed = getattr(w, "routed", 0)
            answered, diverged = getattr(w, "answered", None), getattr(w, "diverged", None)
        return cls(
            w.n,
            list(w.latencies),
            dict(zip(w.intents, w.counts)),
            dict(zip(w.intents, w.undo)),
            int(routed or 0),
            _per_intent(answered, w.intents),
            _per_intent(diverged, w.intents),
        )


def _per_intent(x: Any, intents: list[str]) -> dict[str, int]:
    if not x:
        return {}
    if isinstance(x, dict):
        return {str(k): int(v) for k, v in x.items()}
    return dict(zip(intents, (int(v) for v in x)))


def events(o: Objective, w: WindowCounts) -> tuple[int, int]:
    """(valid, bad) events of window ``w`` for objective ``o``."""
    ind = o.indicator
    if ind == "latency":
        t = o.threshold_ms if o.threshold_ms is not None else float("inf")
        return w.decisions, sum(n for ms, n in w.latencies if ms > t)
    if ind == "undo_rate":
        if o.intent is None:
            return w.decisions, sum(w.undo.values())
        return w.counts.get(o.intent, 0), w.undo.get(o.intent, 0)
    if ind == "routed_share":
        return w.decisions, w.routed
    if o.intent is None:  # divergence
        return sum(w.answered.values()), sum(w.diverged.values())
    return w.answered.get(o.intent, 0), w.diverged.get(o.intent, 0)


# ---- evaluation --------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    """An alert that started firing at window ``window`` (1-based count of windows seen)."""

    slo: str
    indicator: str
    severity: str
    policy: str
    window: int
    burn_long: float
    burn_short: float
    threshold: float
    long_windows: int
    short_windows: int
    budget_remaining: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "slo": self.slo,
            "indicator": self.indicator,
            "severity": self.severity,
            "policy": self.policy,
            "window": self.window,
            "burn_rate": {"long": self.burn_long, "short": self.burn_short},
            "threshold": self.threshold,
            "windows": {"long": self.long_windows, "short": self.short_windows},
            "budget_remaining": self.budget_remaining,
        }

    def reason(self) -> str:
        return (
            f"SLO {self.slo} burning its error budget {self.burn_long:g}x over {self.long_windows} windows and "
            f"{self.burn_short:g}x over {self.short_windows} (> {self.threshold:g}x: {self.severity})"
        )


class Tracker:
    """One objective over a rolling period: a ring of per-window (valid, bad) counts and a
    running sum per window length, so a window costs O(number of lengths), not O(period)."""

    def __init__(self, o: Objective):
        self.o = o
        f = Fraction(repr(o.objective))
        self._p, self._q = f.numerator, f.denominator  # objective = p/q, budget ratio (q-p)/q
        self.alerts = alert_windows(o.period_windows)
        self.lengths = sorted({o.period_windows, *(a.long for a in self.alerts), *(a.short for a in self.alerts)})
        self.valid: list[int] = []  # per-window counts, a ring once the period is full
        self.bad: list[int] = []
        self.sums = {n: [0, 0] for n in self.lengths}  # length -> [valid, bad]
        self.seen = 0  # windows observed
        self.firing = {a.severity: False for a in self.alerts}
        self.fired = {a.severity: 0 for a in self.alerts}  # alerts reported
        self._reported = {a.severity: -(10**18) for a in self.alerts}  # window of the last one

    def observe(self, valid: int, bad: int) -> list[Alert]:
        """Add one window; the alerts that *start* firing with it.

        An alert that flaps (its one-window short window clears, then burns again) is reported
        again only once its long window has passed since the last report: a page every other
        window says nothing new, and the long window is what proves the burn is sustained."""
        P, t = self.o.period_windows, self.seen
        ring_v, ring_b = self.valid, self.bad
        for n, s in self.sums.items():
            s[0] += valid
            s[1] += bad
            if t >= n:  # the window that falls out of this length
                j = (t - n) % P
                s[0] -= ring_v[j]
                s[1] -= ring_b[j]
        if t < P:
            ring_v.append(valid)
            ring_b.append(bad)
        else:
            ring_v[t % P], ring_b[t % P] = valid, bad
        self.seen = t + 1
        out = []
        for a in self.alerts:
            on = self._over(self.sums[a.long], a.burn) and self._over(self.sums[a.short], a.burn)
            if on and not self.firing[a.severity] and self.seen - self._reported[a.severity] >= a.long:
                self.fired[a.severity] += 1
                self._reported[a.severity] = self.seen
                out.append(
                    Alert(
                        self.o.name,
                        self.o.indicator,
                        a.severity,
                        self.o.policy,
                        self.seen,
                        self.burn(a.long),
                        self.burn(a.short),
                        float(a.burn),
                        a.long,
                        a.short,
                        self.budget_remaining(),
                    )
                )
            self.firing[a.severity] = on
        return out

    def _over(self, s: list[int], threshold: Fraction) -> bool:
        """burn = (bad/valid) / ((q-p)/q) > threshold, in integers."""
        valid, bad = s
        if not valid:
            return False
        return bad * self._q * threshold.denominator > threshold.numerator * valid * (self._q - self._p)

    def _ratio(self, s: list[int]) -> Fraction:
        valid, bad = s
        return Fraction(bad * self._q, valid * (self._q - self._p)) if valid else Fraction(0)

    def burn(self, n: int) -> float:
        """Burn rate over the last ``n`` windows (one of :attr:`lengths`)."""
        return round(float(self._ratio(self.sums[n])), 6)

    def events(self, n: int) -> tuple[int, int]:
        """(valid, bad) events over the last ``n`` windows (one of :attr:`lengths`)."""
        valid, bad = self.sums[n]
        return valid, bad

    def budget_remaining(self) -> float:
        """Share of the period's error budget left (1 untouched, 0 spent, < 0 overspent)."""
        return round(float(1 - self._ratio(self.sums[self.o.period_windows])), 6)

    def status(self) -> dict[str, Any]:
        valid, bad = self.sums[self.o.period_windows]
        return {
            **self.o.as_dict(),
            "windows": min(self.seen, self.o.period_windows),
            "valid": valid,
            "bad": bad,
            "budget_remaining": self.budget_remaining(),
            "burn": {
                a.severity: {
                    "long": self.burn(a.long),
                    "short": self.burn(a.short),
                    "windows": [a.long, a.short],
                    "threshold": float(a.burn),
                    "firing": self.firing[a.severity],
                    "fired": self.fired[a.severity],
                }
                for a in self.alerts
            },
        }


class Evaluator:
    """The SLOs of one bundle on one device: feed it each closed window."""

    def __init__(self, objectives: list[Objective], bundle: str | None = None):
        self.bundle = bundle
        self.trackers = [Tracker(o) for o in objectives]

    def __len__(self) -> int:
        return len(self.trackers)

    def observe(self, w: WindowCounts) -> list[Alert]:
        out: list[Alert] = []
        for tr in self.trackers:
            out.extend(tr.observe(*events(tr.o, w)))
        return out

    def status(self) -> list[dict[str, Any]]:
        return [tr.status() for tr in self.trackers]

    def trigger(self, alert: Alert) -> dict[str, Any]:
        """The figures a ``retrain`` policy records for ``alert`` (see :func:`trigger_figures`)."""
        tr = next(t for t in self.trackers if t.o.name == alert.slo)
        return trigger_figures(tr, alert)


def trigger_figures(tr: Tracker, alert: Alert) -> dict[str, Any]:
    """What a retraining trigger records: the divergence behind ``alert``.

    Counts of oracle answers and of those that disagreed with the edge over the alert's long
    and short windows and over the period (integers, so a reader can recompute every share),
    with the shares rounded as the status shows them."""

    def span(n: int) -> dict[str, Any]:
        valid, bad = tr.events(n)
        return {"windows": n, "answered": valid, "diverged": bad, "divergence": round(bad / valid, 6) if valid else 0.0}

    o = tr.o
    return {
        "slo": o.name,
        "indicator": o.indicator,
        "intent": o.intent,
        "objective": o.objective,
        "severity": alert.severity,
        "window": alert.window,
        "threshold": alert.threshold,
        "burn_rate": {"long": alert.burn_long, "short": alert.burn_short},
        "budget_remaining": alert.budget_remaining,
        "long": span(alert.long_windows),
        "short": span(alert.short_windows),
        "period": span(o.period_windows),
    }
