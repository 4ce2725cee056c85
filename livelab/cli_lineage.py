"""``livelab lineage ...``: the metadata trail (docs/lineage.md).

``list`` the run events of the artifacts this lab made, ``show`` one (the OpenLineage JSON),
``audit`` re-runs the privacy audit: every artifact's declared fields against what the lab
observed it send.  Exit codes: 0 ok, 1 an artifact sent a field it did not declare, 2 bad
usage or a malformed lineage file or config (one line, never a traceback).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from livelab.common import EXIT_FAIL, EXIT_OK, UsageError, console, err, home_of


def _events(args: argparse.Namespace) -> list[dict]:
    from lab_hardware.modelops import lineage

    try:
        lineage.load_config(home_of(args))
        return lineage.read_events(home_of(args))
    except lineage.LineageError as exc:
        raise UsageError(str(exc)) from None


def _short(name: str | None, width: int = 40) -> str:
    name = name or "-"
    return name if len(name) <= width else name[: width - 3] + "..."


def _failures(args: argparse.Namespace) -> int:
    from lab_hardware.modelops import lineage

    path = home_of(args) / lineage.FAILURES_FILE
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    except OSError:
        return 0


def _warn_failures(args: argparse.Namespace) -> None:
    n = _failures(args)
    if n:
        err.print(
            f"livelab: warning: {n} lineage deliveries failed (see {home_of(args) / 'lineage' / 'failures.jsonl'})",
            markup=False,
            soft_wrap=True,
        )


def cmd_list(args: argparse.Namespace) -> int:
    from lab_hardware.modelops import lineage

    rows = [lineage.summary(ev) for ev in _events(args)]
    if args.kind:
        rows = [r for r in rows if r["kind"] == args.kind]
    if args.artifact:
        rows = [r for r in rows if (r["artifact"] or "").startswith(args.artifact)]
    if args.failed:
        rows = [r for r in rows if r["state"] == "FAIL"]
    rows = rows[-args.limit :] if args.limit else rows
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        _warn_failures(args)
        return EXIT_OK
    if not rows:
        console.print(f"no lineage events in {home_of(args) / lineage.EVENTS_FILE}", markup=False, soft_wrap=True)
        _warn_failures(args)
        return EXIT_OK
    t = Table("time", "kind", "artifact", "state", "run", "reason")
    for r in rows:
        state = "[red]FAIL[/]" if r["state"] == "FAIL" else "[green]COMPLETE[/]"
        t.add_row(
            r["time"][:23],
            escape(r["kind"]),
            escape(_short(r["artifact"])),
            state,
            r["runId"][:8],
            escape(_short(r["reason"], 70) if r["reason"] else ""),
        )
    console.print(t)
    _warn_failures(args)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from lab_hardware.modelops import lineage

    try:
        hits = lineage.find(_events(args), args.ref)
    except lineage.LineageError as exc:
        raise UsageError(str(exc)) from None
    if not hits:
        raise UsageError(f"no lineage event has run id or artifact {args.ref[:80]!r} (see 'livelab lineage list')")
    print(json.dumps(hits if len(hits) > 1 else hits[0], indent=2, sort_keys=True))
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from lab_hardware.modelops import lineage

    home = home_of(args)
    try:
        lineage.load_config(home)
        results = [
            {
                "artifact": key,
                "kind": entry.get("kind"),
                "devices": entry.get("devices", []),
                "ok": v.ok,
                "undeclared": list(v.undeclared),
                "observed": list(v.observed),
                "messages": v.messages,
                "reason": v.reason,
            }
            for key, entry, v in lineage.audit_all(home, artifact=args.artifact)
        ]
        # artifacts audited where they were made (replay files, grades): their latest event says
        latest: dict[str, dict] = {}
        for ev in lineage.read_events(home):
            s = lineage.summary(ev)
            if s["kind"] in ("privacy.audit", "capture", "bundle.install"):
                continue  # these come from the observer's record, audited above
            a = (ev["run"].get("facets") or {}).get(lineage.FACET_AUDIT)
            if isinstance(a, dict) and s["artifact"]:
                latest[f"{s['kind']}:{s['artifact']}"] = {**a, "kind": s["kind"]}
    except lineage.LineageError as exc:
        raise UsageError(str(exc)) from None
    for key, a in sorted(latest.items()):
        if args.artifact and not (key.startswith(args.artifact) or key.split(":", 1)[-1].startswith(args.artifact)):
            continue
        results.append(
            {
                "artifact": key,
                "kind": a["kind"],
                "devices": [],
                "ok": a.get("verdict") == "pass",
                "undeclared": list(a.get("undeclaredFields") or []),
                "observed": list(a.get("observedFields") or []),
                "messages": a.get("messages", 0),
                "reason": a.get("reason", ""),
            }
        )
    failed = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"ok": not failed, "artifacts": results}, indent=2, sort_keys=True))
    elif not results:
        console.print(
            f"nothing to audit in {home}: no artifact has been observed sending yet", markup=False, soft_wrap=True
        )
    else:
        for r in results:
            where = f" ({', '.join(r['devices'])})" if r["devices"] else ""
            if r["ok"]:
                console.print(f"ok   {r['artifact']}{where}: {r['reason']}", markup=False, soft_wrap=True)
            else:
                console.print(f"FAIL {r['artifact']}{where}: {r['reason']}", markup=False, soft_wrap=True)
        console.print(
            f"privacy audit: {len(results) - len(failed)} of {len(results)} artifacts send only what they declare",
            markup=False,
        )
    _warn_failures(args)
    return EXIT_FAIL if failed else EXIT_OK


def register(sub: Any) -> None:
    from lab_hardware.modelops.lineage import KINDS

    p = sub.add_parser(
        "lineage",
        help="the metadata trail: OpenLineage events of every artifact, and the privacy audit",
        description="Every artifact the lab makes (bundle build/sign/install/revoke, capture, replay, "
        "course release, grade, adapter round) has an OpenLineage run event with its privacy "
        "declaration, in home/lineage/events.jsonl and on livelab/<ns>/control/metadata. "
        "Exit codes: 0 ok, 1 an artifact sent a field it did not declare, 2 bad input.",
    )
    ps = p.add_subparsers(dest="lineage_command", metavar="ACTION")
    ps.required = True
    s = ps.add_parser("list", help="the run events, oldest first")
    s.add_argument("--kind", choices=KINDS, help="only this kind of artifact")
    s.add_argument("--artifact", metavar="PREFIX", help="only artifacts whose name starts with this")
    s.add_argument("--failed", action="store_true", help="only FAIL events (privacy mismatches, failed runs)")
    s.add_argument("--limit", type=_limit, default=0, metavar="N", help="only the last N")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_list)
    s = ps.add_parser("show", help="one event (or all of one artifact) as OpenLineage JSON")
    s.add_argument("ref", metavar="RUN_ID|ARTIFACT", help="a run id or artifact name, or its first 6+ characters")
    s.set_defaults(fn=cmd_show)
    s = ps.add_parser(
        "audit",
        help="declared fields vs the fields the lab observed each artifact send (exit 1 on a mismatch)",
    )
    s.add_argument("artifact", nargs="?", help="only artifacts whose name starts with this")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_audit)


def _limit(text: str) -> int:
    from livelab.common import int_range

    return int_range(0, 1_000_000, what="--limit")(text)
