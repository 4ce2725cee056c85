"""What checking the grader's signatures costs a time-to-signal report.

Outcome events (check-passed, check-failed, module-completed) count only when the lab signed
them (reports/tts.py, grading/outcomes.py). This measures, on a seeded synthetic team written
to a real SQLite events store in a lab home:

* the signature check alone, in microseconds per outcome event (``verify_columns``);
* ``tts.load(home)`` end to end (read the store, check, compute) with the lab's key, against
  the same load with no key beside the store (the baseline: nothing checked).

Median of several runs; writes bench/results/signatures.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save, table  # noqa: E402
from grading.outcomes import OUTCOME_KINDS, events_key, sign, verify_columns  # noqa: E402
from labs.learning_events import EventStore  # noqa: E402
from reports import synthetic, tts  # noqa: E402


def _signed_store(home: Path, n_events: int, key: bytes | None) -> int:
    evs = [e.as_dict() for e in synthetic.events(synthetic.generate(n_events, seed=3, spec=synthetic.Spec(teams=4)))]
    if key is not None:
        evs = [sign([e], key)[0] if e["kind"] in OUTCOME_KINDS else e for e in evs]
    with EventStore(home) as store:
        store.write(evs)
    return sum(e["kind"] in OUTCOME_KINDS for e in evs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events in the store (default 100,000)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each measure (default 5)")
    args = ap.parse_args()
    if args.events < 1 or args.runs < 1:
        ap.error("--events and --runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-sig-") as tmp:
        signed, plain = Path(tmp) / "lab", Path(tmp) / "copy"
        plain.mkdir()
        key = events_key(signed)
        n_outcomes = _signed_store(signed, args.events, key)
        _signed_store(plain, args.events, None)
        with EventStore(signed) as store:
            cols = store.columns(extra=("source", "key", "detail"))
        per_event = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            ok = verify_columns(cols, key)
            per_event.append((time.perf_counter() - t0) / n_outcomes * 1e6)
        assert all(ok), "a signed event did not verify"
        with_key, without = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            r = tts.load(signed)
            with_key.append(time.perf_counter() - t0)
            assert r.verified and r.unverified == 0
            t0 = time.perf_counter()
            r2 = tts.load(plain)
            without.append(time.perf_counter() - t0)
            assert not r2.verified
    res = {
        "events": args.events,
        "outcome_events": n_outcomes,
        "verify_us_per_outcome_event_median": statistics.median(per_event),
        "verify_runs_us": per_event,
        "load_with_key_median_s": statistics.median(with_key),
        "load_without_key_median_s": statistics.median(without),
        "load_with_key_runs_s": with_key,
        "load_without_key_runs_s": without,
        "ratio_with_to_without": statistics.median(with_key) / statistics.median(without),
    }
    table(
        "checking the grader's signatures in a report",
        ["measure", "median"],
        [
            ["signature check per outcome event (µs)", res["verify_us_per_outcome_event_median"]],
            [f"tts.load of {args.events:,} events, checked (s)", res["load_with_key_median_s"]],
            [f"tts.load of {args.events:,} events, no key (s)", res["load_without_key_median_s"]],
            ["ratio checked / unchecked", res["ratio_with_to_without"]],
        ],
    )
    save("signatures", res)


if __name__ == "__main__":
    main()
