"""``livelab retrain ...``: retrain the edge model from consented captures labelled by the oracle.

Thin commands over :mod:`labs.retrain` (docs/retraining.md).  ``build`` writes an *unsigned*
candidate bundle; signing and the canary are the existing ``livelab bundle sign`` and
``livelab rollout``.  ``divergence`` replays a replay file through models and the oracle and
counts their disagreements.  Exit codes follow livelab.cli: 0 ok, 2 bad usage or bad input
(no captures, unverifiable consent, a model that is not the oracle, an unwritable output): one
line on stderr, never a traceback, nothing written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from livelab.common import EXIT_OK, UsageError, bundle_trail, check_input, console, home_of


def _print(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False)


def cmd_build(args: argparse.Namespace) -> int:
    from labs import retrain

    try:
        res = retrain.build(
            home_of(args),
            Path(args.out).expanduser(),
            version=args.version,
            name=args.name,
            scenario=args.scenario,
            oracle=args.oracle,
            namespace=args.namespace,
            device=args.device,
            capture_ids=args.capture,
            trigger=args.trigger,
            parent=args.parent,
            created=args.created,
        )
    except retrain.RetrainError as exc:
        raise UsageError(str(exc)) from None
    from lab_hardware.modelops import bundle

    try:  # a retrained bundle is a bundle build: its lineage names the captures it learned from
        info = bundle.inspect(res["bundle"])
        bundle_trail(
            args,
            "bundle.build",
            info,
            inputs=[("livelab:captures", f"{c['namespace']}/{c['device']}/{c['capture_id']}") for c in res["captures"]],
            details={"file": str(Path(res["bundle"]).resolve()), "retrained": True},
        )
    except (bundle.BundleError, KeyError):
        pass
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return EXIT_OK
    caps = ", ".join(f"{c['device']}/{c['capture_id']} ({c['records']})" for c in res["captures"])
    _print(
        f"retrained {res['bundle']}: {args.name} {res['version']} digest {res['digest'][:12]}, unsigned; "
        f"{res['records']:,} records from {caps}, labelled by oracle {res['oracle']['sha256'][:12]}; "
        f"agrees with the oracle on {res['agreement']:.1%} of them ({res['seconds']:.1f} s)"
    )
    t = res["trigger"]
    if t is not None:
        _print(
            f"trigger: {t['namespace']}/{t['device']} audit #{t['index']} {t['hash'][:12]} ({t['kind']}, {t['slo']})"
        )
    _print(
        "next: livelab replay build --device DEV -o held-out.lreplay; "
        f"livelab retrain divergence held-out.lreplay --bundle CURRENT --bundle {res['bundle']}; "
        f"livelab bundle sign {res['bundle']} --key NAME; "
        f"livelab rollout start {res['bundle']} --canary DEV"
    )
    return EXIT_OK


def cmd_divergence(args: argparse.Namespace) -> int:
    from labs import retrain

    src = check_input(args.replay, "replay")
    models = [check_input(m, "model") for m in args.bundle]
    try:
        res = retrain.divergence(src, models, oracle=args.oracle, scenario=args.scenario)
    except retrain.RetrainError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return EXIT_OK
    t = Table(
        "model",
        "digest",
        "diverged",
        "divergence",
        "worst intent",
        title=f"edge/oracle divergence over {res['records']:,} replayed records (oracle {res['oracle']['digest'][:12]})",
    )
    for m in res["models"]:
        worst = max(m["by_intent"].items(), key=lambda kv: (kv[1]["diverged"], kv[0]), default=None)
        t.add_row(
            escape(Path(m["model"]).name),
            m["digest"][:12],
            f"{m['diverged']:,}",
            f"{m['divergence']:.2%}",
            "-" if worst is None else f"{escape(worst[0])} {worst[1]['diverged']:,}/{worst[1]['decisions']:,}",
        )
    console.print(t)
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``livelab retrain ...`` to the top-level subparsers."""
    p = sub.add_parser(
        "retrain",
        help="retrain the edge model from consented captures labelled by the oracle",
        description="build: label the replay store's consented, scrubbed captures with the "
        "scenario's oracle, train a new edge model (fixed, byte-reproducible) and write an "
        "unsigned candidate bundle whose provenance names the captures, the oracle and the "
        "trigger; sign and canary it with 'livelab bundle sign' and 'livelab rollout'. "
        "divergence: how often models disagree with the oracle over a replay.",
    )
    rs = p.add_subparsers(dest="retrain_command", metavar="ACTION")
    rs.required = True

    s = rs.add_parser("build", help="captures + oracle labels -> an unsigned candidate bundle")
    s.add_argument("-o", "--out", required=True, help="output bundle, e.g. intents-1.3.0.lbundle")
    s.add_argument("--version", required=True, help="semantic version of the new bundle, e.g. 1.3.0")
    s.add_argument("--name", default="intents", help="bundle name (default intents)")
    s.add_argument("--namespace", help="only captures of this namespace")
    s.add_argument("--device", help="only captures of this device")
    s.add_argument("--capture", action="append", metavar="ID", help="only this capture (repeatable)")
    s.add_argument(
        "--trigger",
        metavar="[NS/]DEVICE#INDEX",
        help="the audit record that triggered it: a retrain-suggested record (the alert event's 'retrain' index)",
    )
    s.add_argument("--parent", help="the bundle being replaced: lends its routing, SLOs and compute needs")
    s.add_argument("--oracle", help="the oracle model (default: the scenario's [oracle] model; must be it)")
    s.add_argument("--scenario", default="voice-intents", help="scenario (default voice-intents)")
    s.add_argument("--created", help="build time (default: the last captured decision's, for reproducibility)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_build)

    s = rs.add_parser("divergence", help="edge/oracle divergence of models over a replay file")
    s.add_argument("replay", help="a .lreplay file (livelab replay build)")
    s.add_argument("--bundle", action="append", required=True, help="a .onnx model or .lbundle bundle (repeatable)")
    s.add_argument("--oracle", help="the oracle model (default: the scenario's [oracle] model)")
    s.add_argument("--scenario", default="voice-intents", help="scenario (default voice-intents)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_divergence)
