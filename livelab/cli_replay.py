"""``livelab replay ...``: list captures, build a replay, run it sandboxed, diff two models.

Thin commands over :mod:`lab_hardware.modelops.replay`.  Exit codes follow livelab.cli:
0 ok, 2 bad usage or bad input (a corrupted or unconsented replay, a missing
model): one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from livelab.common import EXIT_OK, UsageError, check_input, check_output, console, int_range, trail


def _home(args) -> Path:
    from lab_hardware.home import resolve

    return resolve(args.home)


def _usage(exc: Exception | str) -> UsageError:
    # livelab.cli prints UsageError as plain text (markup=False): data prints as is.
    return UsageError(str(exc))


def _print(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False)


def cmd_list(args) -> int:
    from lab_hardware.modelops import replay

    rows = replay.list_captures(_home(args))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    if not rows:
        _print(
            f"no captures in {replay.captures_dir(_home(args))} (devices capture only with "
            "replay-capture consent: livelab consent grant DEVICE --scope replay-capture)"
        )
        return EXIT_OK
    t = Table("device", "capture", "records", "decisions", "parts", "consent")
    for r in rows:
        c = r["consent"]
        span = "-" if r["first_decision"] is None else f"{r['first_decision']}-{r['last_decision']}"
        parts = f"{len(r['parts'])}" + (" (complete)" if r["complete"] else " (open)")
        t.add_row(
            f"{r['namespace']}/{r['device']}",
            escape(r["capture_id"]),
            str(r["records"]),
            span,
            parts,
            f"#{c['index']} {c['hash'][:8]}" + ("" if c.get("verified") else " (unverified)"),
        )
    console.print(t)
    return EXIT_OK


def cmd_build(args) -> int:
    from lab_hardware.modelops import replay
    from lab_hardware.topics import TopicError, check_name

    try:
        check_name("namespace", args.namespace)
        check_name("device", args.device)
    except TopicError as exc:
        raise _usage(exc) from None
    check_output(args.out, "replay")
    try:
        out = replay.build(_home(args), args.namespace, args.device, Path(args.out), capture_ids=args.capture)
        rp = replay.read(out)
    except replay.ReplayError as exc:
        raise _usage(exc) from None
    except OSError as exc:
        raise _usage(f"cannot write {args.out}: {exc.strerror}") from None
    m = rp.manifest
    from lab_hardware.modelops import lineage

    trail(
        args,
        "replay.build",
        m["records_sha256"],
        privacy=lineage.replay_privacy(),
        inputs=[("livelab:captures", f"{m['namespace']}/{m['device']}/{c}") for c in m["capture_ids"]],
        observed=lineage.observed_fields({**m, "records": rp.records}),
        messages=len(rp.records),
        source=str(Path(out).resolve()),
        details={"file": str(Path(out).resolve()), "records": m["records"], "bundle": m["bundle"]},
        lab_namespace=m["namespace"],
    )
    consent = ", ".join(f"audit #{e['index']} {e['hash'][:12]}" for e in m["consent_trail"])
    _print(
        f"replay {out}: {m['records']} records (decisions {m['provenance']['records_from']}.."
        f"{m['provenance']['records_to']}) of {m['device']} from {', '.join(m['capture_ids'])}; "
        f"bundle {m['bundle'][:12]}; consent {consent}"
    )
    _print(f"run it: livelab replay run {out} --bundle MODEL")
    return EXIT_OK


def _model(arg: str) -> Path:
    p = Path(arg)
    if not p.is_file():
        raise _usage(f"bundle not found: {p}")
    return p


def cmd_run(args) -> int:
    from lab_hardware.modelops import replay

    src = check_input(args.replay, "replay")
    model = _model(args.bundle)
    out = Path(args.out) if args.out else src.with_name(f"{src.stem}.{model.stem}.out.jsonl")
    check_output(out, "output")
    try:
        res = replay.run(src, model, out, threads=args.threads)
    except replay.ReplayError as exc:
        raise _usage(exc) from None
    _trail_run(args, src, model, res)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return EXIT_OK
    t = Table("measure", "value", title=f"replay {src.name} through {model.name}")
    t.add_row("records", f"{res['records']:,}")
    t.add_row("processing (in sandbox)", f"{res['seconds']:.3f} s, {res['records_per_s']:,.0f} records/s")
    t.add_row("wall time (with process start)", f"{res['wall_seconds']:.3f} s")
    t.add_row(
        "network isolated",
        "[green]yes[/]" if res["network_isolated"] else f"[yellow]no[/] ({escape(res['isolation'])})",
    )
    t.add_row(
        "same model as capture",
        "yes"
        if res["same_model"]
        else f"no (captured with {res['capture_bundle'][:12]}, replayed with {res['model_digest'][:12]})",
    )
    ok = res["digest_matches"] == res["records"]
    t.add_row(
        "signal digests match", ("[green]" if ok else "[yellow]") + f"{res['digest_matches']:,} / {res['records']:,}[/]"
    )
    t.add_row("labels changed vs capture", f"{res['labels_changed']:,}")
    t.add_row("output", escape(res["output"]))
    t.add_row("output sha256", res["output_sha256"])
    console.print(t)
    return EXIT_OK


def _trail_run(args, src: Path, model: Path, res: dict) -> None:
    """The replay run's lineage event: its output, audited against what it declares (no text)."""
    from lab_hardware.modelops import lineage, replay

    try:
        rows, summary = replay.read_output(res["output"])
        observed: set | None = lineage.observed_fields({**summary, "rows": rows}, nested=("rows",))
    except (OSError, ValueError):
        rows, summary, observed = [], {}, None
    replay_ref = summary.get("replay_records_sha256") or str(src.resolve())
    trail(
        args,
        "replay.run",
        res["output_sha256"],
        privacy=lineage.replay_output_privacy(),
        inputs=[("livelab:replays", replay_ref), ("livelab:bundles", res["model_digest"])],
        observed=observed,
        messages=len(rows),
        source=res["output"],
        details={"output": res["output"], "model": str(model.resolve()), "records": res["records"]},
    )


def cmd_diff(args) -> int:
    from lab_hardware.modelops import replay

    if len(args.bundle) != 2:
        raise _usage(f"diff needs exactly two models: --bundle A --bundle B (got {len(args.bundle)})")
    check_input(args.replay, "replay")
    a, b = (_model(x) for x in args.bundle)
    try:
        res = replay.diff(Path(args.replay), a, b, defect_intent=args.defect_intent, threads=args.threads)
    except replay.ReplayError as exc:
        raise _usage(exc) from None
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return EXIT_OK
    sa, sb = res["a"], res["b"]
    t = Table(
        "intent",
        f"A {escape(a.name)}",
        f"B {escape(b.name)}",
        "B - A",
        title=f"decisions over {res['records']:,} replayed records",
    )
    for intent in sorted(set(sa["counts"]) | set(sb["counts"])):
        ca, cb = sa["counts"].get(intent, 0), sb["counts"].get(intent, 0)
        t.add_row(escape(intent), f"{ca:,}", f"{cb:,}", f"{cb - ca:+,}")
    d = res["defect_intent"]
    t.add_row(
        f"[bold]{escape(d)} false positives[/] (undone {escape(d)} decisions repeated)",
        f"{sa['defect_false_positives']:,}",
        f"{sb['defect_false_positives']:,}",
        f"{sb['defect_false_positives'] - sa['defect_false_positives']:+,}",
    )
    t.add_row("signal digests match", f"{sa['digest_matches']:,}", f"{sb['digest_matches']:,}", "")
    console.print(t)
    _print(
        f"decisions changed: {res['changed']:,} of {res['records']:,}; undone by the user at capture: {res['undone']:,}"
    )
    if res["transitions"]:
        tt = Table("A -> B", "decisions")
        for k, v in list(res["transitions"].items())[:10]:
            tt.add_row(escape(k), f"{v:,}")
        console.print(tt)
    return EXIT_OK


def register(sub) -> None:
    """Add ``livelab replay ...`` to the top-level subparsers."""
    p = sub.add_parser(
        "replay",
        help="scrubbed, consented captures -> replay files run in a sandbox",
        description="Build replays from the scrubbed captures devices publish under "
        "replay-capture consent, run them in a sandbox with no network "
        "(byte-identical output every run) and diff two models over one replay.",
    )
    rs = p.add_subparsers(dest="replay_command", metavar="ACTION")
    rs.required = True

    s = rs.add_parser("list", help="stored captures (records, parts, consent reference)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_list)

    s = rs.add_parser("build", help="build a .lreplay file from a device's captures")
    s.add_argument("--device", required=True, help="device name, e.g. dev-1")
    s.add_argument("--namespace", default="default", help="namespace (default 'default')")
    s.add_argument("--capture", action="append", metavar="ID", help="only this capture (repeatable)")
    s.add_argument("-o", "--out", required=True, help="output file, e.g. dev-1.lreplay")
    s.set_defaults(fn=cmd_build)

    s = rs.add_parser("run", help="replay a file through a model or bundle, sandboxed")
    s.add_argument("replay", help="a .lreplay file")
    s.add_argument("--bundle", required=True, help="a .onnx model or a .lbundle bundle")
    s.add_argument("-o", "--out", help="output JSON lines (default: next to the replay)")
    s.add_argument(
        "--threads",
        type=int_range(1, 64, what="--threads"),
        default=1,
        help="onnxruntime intra-op threads, 1-64 (default 1)",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_run)

    s = rs.add_parser("diff", help="replay through two models and compare decisions")
    s.add_argument("replay", help="a .lreplay file")
    s.add_argument(
        "--bundle",
        action="append",
        default=[],
        required=True,
        help="model A, then model B (.onnx or .lbundle): give it twice",
    )
    s.add_argument("--defect-intent", default="call", help="intent whose false positives to count (default call)")
    s.add_argument(
        "--threads",
        type=int_range(1, 64, what="--threads"),
        default=1,
        help="onnxruntime intra-op threads, 1-64 (default 1)",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_diff)
