"""``livelab federated ...``: federated adapter rounds with per-device privacy budgets.

Thin commands over :mod:`labs.federated` (docs/federated.md).  ``round`` runs a round on the
running lab's devices and writes an *unsigned* candidate bundle (sign and canary it with
``livelab bundle sign`` and ``livelab rollout``); ``ledger`` shows each device's privacy budget
and what it spent, or sets a budget.  Exit codes follow livelab.cli: 0 ok, 2 bad usage or bad
input (a bad epsilon or delta, an unknown device, a malformed ledger file, no device joining):
one line on stderr, never a traceback, nothing written.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from livelab.common import EXIT_OK, UsageError, check_input, console, float_range, home_of, int_range


def _print(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False)


def cmd_round(args: argparse.Namespace) -> int:
    from labs import Lab, federated

    src = check_input(args.bundle, "bundle")
    home = home_of(args)
    with Lab.connect(home=home) as lab:
        try:
            res = federated.run_round(
                lab,
                src,
                Path(args.out).expanduser(),
                version=args.version,
                devices=args.device or None,
                rounds=args.rounds,
                noise_multiplier=args.noise_multiplier,
                clipping_norm=args.clipping_norm,
                epsilon_budget=args.epsilon_budget,
                delta=args.delta,
                min_signals=args.min_signals,
                round_id=args.round_id,
                timeout=args.timeout,
            )
        except federated.FederatedError as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return EXIT_OK
    _print(
        f"round {res['round']}: {len(res['participants'])} device(s) took part ({', '.join(res['participants'])}); "
        f"clipping norm {res['clipping_norm']:g}, noise multiplier {res['noise_multiplier']:g}, noise stdv "
        f"{res['noise_stdv']:.4g}; the round spent epsilon {res['epsilon']:.3g} at delta {res['delta']:g} "
        f"({res['seconds']:.1f} s)"
    )
    for dev, why in res["skipped"].items():
        _print(f"{dev} did not take part: {why}")
    bias = ", ".join(f"{k} {v:+.2f}" for k, v in res["bias"].items())
    _print(f"wrote {res['bundle']}: adapter of {res['adapter_size']} bytes (logit bias {bias}), unsigned")
    _print(f"next: livelab bundle sign {res['bundle']} --key NAME; livelab rollout start {res['bundle']} --canary DEV")
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    from labs import federated

    home = home_of(args)
    try:
        for spec in args.set_budget or []:
            m = re.fullmatch(r"([^=]+)=(.+)", spec)
            if m is None:
                raise UsageError(f"--set-budget takes DEVICE=EPSILON, not {spec[:60]!r}")
            try:
                value = float(m[2])
            except ValueError:
                raise UsageError(f"epsilon budget must be a finite number > 0, not {m[2][:40]!r}") from None
            row = federated.set_budget(home, m[1], value, namespace=args.namespace)
            _print(f"{row['device']}: epsilon budget {row['epsilon_budget']:g} (spent {row['epsilon_spent']:.3g})")
        rows = federated.ledger(home)
    except federated.FederatedError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    if args.set_budget:
        return EXIT_OK
    if not rows:
        _print(f"no federated round has run in {home} yet: every device has its whole budget")
        return EXIT_OK
    t = Table(
        "device", "budget", "spent", "left", "rounds", "stopped", title=f"privacy ledger (delta {rows[0]['delta']:g})"
    )
    for r in rows:
        t.add_row(
            escape(r["device"]),
            f"{r['epsilon_budget']:.3g}",
            f"{r['epsilon_spent']:.3g}",
            f"{r['epsilon_left']:.3g}",
            str(r["rounds"]),
            escape(r["stopped"] or "-"),
        )
    console.print(t)
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``livelab federated ...`` to the top-level subparsers."""
    p = sub.add_parser(
        "federated",
        help="federated adapter rounds with per-device privacy budgets",
        description="round: the devices running BUNDLE each fit a per-intent logit bias on their own "
        "consented undo signals; the lab's Flower server clips each update and adds Gaussian noise "
        "to their mean (central DP); each participant's privacy ledger is charged (dp-accounting, "
        "RDP); the result is an unsigned candidate bundle whose provenance names the round, the "
        "participants' count, epsilon and delta. A device without telemetry consent or whose "
        "budget the round would overspend does not take part and says why on its audit chain. "
        "ledger: each device's epsilon budget, spent and left; --set-budget changes one.",
    )
    fs = p.add_subparsers(dest="federated_command", metavar="ACTION")
    fs.required = True

    s = fs.add_parser("round", help="run a round on the lab's devices -> an unsigned candidate bundle")
    s.add_argument("bundle", help="the bundle the devices run (the adapter corrects its decisions)")
    s.add_argument("-o", "--out", required=True, help="output bundle, e.g. intents-1.2.1.lbundle")
    s.add_argument("--version", required=True, help="semantic version of the new bundle, e.g. 1.2.1")
    s.add_argument("--device", action="append", metavar="DEV", help="only this device (repeatable; default all)")
    s.add_argument("--rounds", type=int_range(1, 100), default=1, help="aggregation rounds (default 1)")
    s.add_argument(
        "--noise-multiplier",
        type=float_range(0, lo_open=True),
        default=1.0,
        help="Gaussian noise stdv per unit of clipping norm (default 1.0; > 0: rounds are central DP)",
    )
    s.add_argument(
        "--clipping-norm", type=float_range(0, lo_open=True), default=2.0, help="L2 bound of an update (default 2.0)"
    )
    s.add_argument(
        "--epsilon-budget",
        type=float_range(0, lo_open=True),
        help="epsilon budget of a device the ledger does not know yet (default 10)",
    )
    s.add_argument("--delta", type=float_range(0, 1, lo_open=True), help="the ledger's delta (default 1e-5)")
    s.add_argument(
        "--min-signals", type=int_range(1, 20000), default=200, help="fewest signals a device needs (default 200)"
    )
    s.add_argument("--round-id", help="the round's id (default: time and a random suffix)")
    s.add_argument("--timeout", type=float_range(1, 3600), default=120.0, help="seconds a round may take")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_round)

    s = fs.add_parser("ledger", help="each device's privacy budget and what it spent")
    s.add_argument("--set-budget", action="append", metavar="DEVICE=EPSILON", help="set a device's budget")
    s.add_argument("--namespace", default="default", help="the devices' namespace (default default)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_ledger)
