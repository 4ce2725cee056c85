"""observability: decisions are traceable, the trace stayed small, and the planted cause is named.

* every telemetry window the observer saw carries a signal-digest fold and a consistent
  decision range (``decisions`` = ``last - first + 1`` = the sum of its counts; per device the
  ranges follow each other without overlap), so every decision can be tied to an input later;
* bandwidth: beyond telemetry, the learner fetched at most one device's audit chain and no
  captures, within the byte budget, by the observer's byte counts;
* the planted cause is named where the lab records it: the incident is the install on one
  device by someone other than the learner; the learner's rollback of that device must give a
  reason that names the device, the intent the bundle broke and its digest (>= 8 hex digits);
* the device no longer runs the planted bundle.
"""

from __future__ import annotations

import re

from lab_hardware import topics
from lab_hardware.runtime.broker import is_learner_of

from .base import CheckContext, Item, register


def _by_learner(ctx: CheckContext, by) -> bool:
    """A broker-proven author ('by' of an audit record, or a command topic's author level)
    is this submission's learner: its name, or its namespace's learner identity."""
    return by == ctx.learner or is_learner_of(by, ctx.namespace)


HEX16 = re.compile(r"^[0-9a-f]{16}$")
#: Beyond telemetry: audit chains of this many devices, this many bytes, no captures.
DEFAULT_BUDGET = {"audit_devices": 1, "bytes": 256_000, "captures": 0}


def _boosted_intent(ctx: CheckContext, device: str, digest: str) -> str | None:
    from lab_hardware.modelops import bundle as _bundle
    from lab_hardware import home as _home

    root = _home.device_dir(ctx.home, ctx.namespace, device)
    for p in root.rglob("*.lbundle") if root.is_dir() else []:
        try:
            b = _bundle.read(p)
        except (OSError, ValueError):
            continue
        if b.digest == digest and b.adapter is not None:
            bias = dict(b.adapter.logit_bias)
            return max(bias, key=bias.get) if bias else None
    return None


@register("observability", points=5)
def observability(ctx: CheckContext) -> list[Item]:
    """Digests on every decision, a trace within budget, the planted cause named."""
    items: list[Item] = []
    if ctx.observed:
        bad, windows = [], 0
        for d in ctx.devices:
            last = -1
            for w in sorted(
                ctx.distinct("telemetry", d), key=lambda x: x["seq"] if isinstance(x.get("seq"), int) else -1
            ):
                windows += 1
                first, lst, n = w.get("first_decision"), w.get("last_decision"), w.get("decisions")
                ok = (
                    isinstance(w.get("digest"), str)
                    and HEX16.match(w["digest"])
                    and isinstance(first, int)
                    and isinstance(lst, int)
                    and n == lst - first + 1 == sum((w.get("counts") or {}).values())
                    and first > last
                )
                if not ok:
                    bad.append(f"{d} window {w.get('seq')}")
                else:
                    last = lst
        items.append(
            Item(
                "digests",
                windows > 0 and not bad,
                (
                    f"{len(bad)} window(s) without a consistent digest fold and decision range ({', '.join(bad[:3])})"
                    if bad
                    else "no telemetry window was observed: grant telemetry consent and read windows"
                ),
                weight=2,
                detail={"windows": windows},
                required=windows == 0,
            )
        )

        budget = {**DEFAULT_BUDGET, **(ctx.module_meta.get("bandwidth_budget") or {})}
        fetched = set()
        audit_bytes = 0
        replies = set()
        for m, c in ctx.of("cmd"):
            # who sent a command is its topic's author level (broker-proven), not a payload field
            p = topics.parse(m.topic) or {}
            if p.get("command") == "audit" and (not ctx.learner or _by_learner(ctx, p.get("sender"))):
                fetched.add(m.topic.split("/")[3])
                replies.add(c.get("id"))
        for m, a in ctx.of("audit"):
            if a.get("reply_to") in replies:
                audit_bytes += m.size
        captures = ctx.of("capture")
        cap_bytes = sum(m.size for m, _ in captures)
        total = audit_bytes + cap_bytes
        within = (
            len(fetched) <= budget["audit_devices"] and len(captures) <= budget["captures"] and total <= budget["bytes"]
        )
        # staying within the budget earns credit only for a debugging session that happened (a
        # rollback of yours): doing nothing fetches nothing, and that is not frugality
        acted = (
            any(
                r["kind"] == "rollback" and _by_learner(ctx, r["data"].get("by"))
                for d in ctx.devices
                for r in ctx.run_records(d)
            )
            if ctx.learner
            else True
        )
        ok = within and acted
        items.append(
            Item(
                "bandwidth",
                ok,
                (
                    f"beyond telemetry you fetched the audit chains of {len(fetched)} device(s) and "
                    f"{len(captures)} capture message(s), {total:,} bytes: the budget is "
                    f"{budget['audit_devices']} device's chain, {budget['captures']} captures, "
                    f"{budget['bytes']:,} bytes"
                )
                if not within
                else "no debugging session to judge: find the cause within the budget and roll it back",
                weight=2,
                detail={"audit_devices": sorted(fetched), "audit_bytes": audit_bytes, "capture_bytes": cap_bytes},
            )
        )

    planted = [
        (d, r)
        for d in ctx.devices
        for r in ctx.run_records(d)
        if r["kind"] == "install"
        and ctx.learner
        and (not _by_learner(ctx, r["data"].get("by")) or r["data"].get("on_behalf") not in (None, ctx.learner))
    ]
    if not planted:
        items.append(
            Item(
                "cause-named",
                False,
                "no incident was planted in your lab: run the module's first cell "
                "as given (it plants the regression you debug)",
                weight=3,
            )
        )
        return items
    device, inst = planted[-1]
    digest = inst["data"]["bundle"]
    intent = _boosted_intent(ctx, device, digest)
    named = False
    reasons = []
    for r in ctx.run_records(device):
        if r["kind"] == "rollback" and r["time"] > inst["time"] and _by_learner(ctx, r["data"].get("by")):
            reason = str(r["data"].get("reason") or "")
            reasons.append(reason)
            low = reason.lower()
            words = set(re.findall(r"[a-z0-9_-]+", low))
            hexes = re.findall(r"[0-9a-f]{8,64}", low)
            if (
                device in words
                and (intent is None or intent in words)
                and any(digest.startswith(h[:8]) and digest[: len(h)] == h for h in hexes)
            ):
                named = True
    items.append(
        Item(
            "cause-named",
            named,
            (
                "roll the broken device back with a reason that names the device, the intent it broke and "
                "the bundle digest (>= 8 hex digits)"
                if not reasons
                else "your rollback's reason does not name the planted cause (device, intent and bundle digest)"
            ),
            weight=3,
            detail={"rollback_reasons": reasons[-2:]},
        )
    )
    states = [s for _m, s in ctx.of("state", device) if s.get("online")] if ctx.observed else []
    active = states[-1].get("bundle") if states else None
    if active is None:
        recs = [r for r in ctx.run_records(device) if r["kind"] in ("install", "rollback", "model", "revocation")]
        active = (
            (recs[-1]["data"].get("to") or {}).get("digest")
            if recs and recs[-1]["kind"] == "rollback"
            else recs[-1]["data"].get("bundle")
            if recs
            else None
        )
    items.append(
        Item("fixed", active != digest, f"{device} still runs the planted bundle {digest[:12]}: roll it back", weight=1)
    )
    return items
