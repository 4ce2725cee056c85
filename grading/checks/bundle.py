"""bundle: the learner's bundles are signed and sound, and the rollout went as asked.

From the devices' audit chains on disk (installs, shadows, health verdicts, rollbacks,
revocations) and the bundle files - the notebook's own and the copies devices stored:

* every bundle the learner installed or shadowed verifies against the lab's trust store
  (signature by a trusted key, file hashes, manifest), with a complete manifest;
* the fix carries its adapter within the adapter budget;
* canary: the fix ran in shadow mode, then was installed, on a strict subset of the devices;
* rollback: a bad release was rolled back (by the health check, or on request);
* revocation: the bad bundle was revoked, and every device recorded it.
"""

from __future__ import annotations

from pathlib import Path

from .base import CheckContext, Item, register


def _bundle_files(ctx: CheckContext) -> dict[str, list[bytes]]:
    """digest -> the distinct bytes of every bundle file with that digest that the notebook
    left or a device stored.  A digest names the manifest, not the file: a signed and an
    unsigned copy share it, so every copy is kept and judged (never the first by name)."""
    from lab_hardware.modelops import bundle as _bundle
    from lab_hardware import home as _home

    out: dict[str, list[bytes]] = {}
    roots = ([ctx.artifacts] if ctx.artifacts else []) + [
        _home.device_dir(ctx.home, ctx.namespace, d) for d in ctx.devices
    ]
    for root in roots:
        if not Path(root).is_dir():
            continue
        for p in sorted(Path(root).rglob("*.lbundle")):
            try:
                data = p.read_bytes()
                copies = out.setdefault(_bundle.read(data).digest, [])
            except (OSError, ValueError):
                continue
            if data not in copies:
                copies.append(data)
    return out


def _verify_any(copies: list[bytes], trusted: dict):
    """The first copy that verifies, else the ValueError of the last one tried."""
    from lab_hardware.modelops import bundle as _bundle

    err: ValueError | None = None
    for data in copies:
        try:
            return _bundle.verify(data, trusted)
        except ValueError as exc:
            err = exc
    raise err or ValueError("no copy")


@register("bundle", points=5)
def bundle_check(ctx: CheckContext) -> list[Item]:
    """Signed, verified bundles; a canary in shadow mode; an automatic rollback; a revocation."""
    from lab_hardware.modelops import adapter as _adapter
    from lab_hardware.modelops import bundle as _bundle
    from lab_hardware.modelops import keys as _keys

    recs = {d: ctx.run_records(d) for d in ctx.devices}
    from lab_hardware.runtime.broker import is_learner_of  # 'by' is broker-proven: the learner's identity

    def mine(r: dict) -> bool:
        by = (r.get("data") or {}).get("by")
        return not ctx.learner or by == ctx.learner or is_learner_of(by, ctx.namespace)

    installs = {d: [r for r in rs if r["kind"] == "install" and mine(r)] for d, rs in recs.items()}
    shadows = {
        d: [r for r in rs if r["kind"] == "shadow" and mine(r) and r["data"].get("bundle")] for d, rs in recs.items()
    }
    digests = {r["data"]["bundle"] for rs in list(installs.values()) + list(shadows.values()) for r in rs}
    if not digests:
        return [
            Item(
                "signed-bundle",
                False,
                "you installed or shadowed no bundle on any device: build, sign and lab.shadow/lab.install one",
                weight=9,
                required=True,
            )
        ]
    files = _bundle_files(ctx)
    trusted = _keys.trusted(ctx.home, namespace=ctx.namespace)
    bad, verified = [], {}
    for dg in sorted(digests):
        copies = files.get(dg)
        if not copies:
            bad.append(f"{dg[:12]}: no bundle file with this digest (keep your .lbundle files in work/)")
            continue
        try:
            verified[dg] = _verify_any(copies, trusted)
        except ValueError as exc:
            bad.append(f"{dg[:12]}: {str(exc).splitlines()[0]}")
    items = [
        Item(
            "signed-bundle",
            not bad,
            "; ".join(bad[:2]) + ": sign each bundle with a key you trusted (keys.trust) and keep its file in work/",
            weight=2,
            detail={"bundles": sorted(d[:12] for d in digests)},
        )
    ]

    incomplete = []
    intents = ctx.scenario().get("intents")
    for dg, b in verified.items():
        m = b.manifest
        if intents and list(m["io"]["intents"]) != list(intents):
            incomplete.append(f"{dg[:12]} declares intents {m['io']['intents']}")
        if not m["provenance"].get("builder") or not m["privacy"].get("telemetry_fields"):
            incomplete.append(f"{dg[:12]} has an empty provenance builder or privacy declaration")
    items.append(
        Item(
            "manifest-complete",
            bool(verified) and not incomplete,
            ("; ".join(incomplete[:2]) or "no verified bundle to read a manifest from")
            + ": build it with bundle.build from a "
            "scenario model (it fills the manifest)",
            weight=1,
        )
    )

    health = {
        (d, r["data"].get("bundle")): r["data"].get("ok") for d, rs in recs.items() for r in rs if r["kind"] == "health"
    }
    fixes = [dg for dg, b in verified.items() if any(health.get((d, dg)) for d in ctx.devices)] or list(verified)
    over = [
        f"{dg[:12]}"
        for dg in fixes
        if _bundle.ADAPTER not in verified[dg].manifest["files"]
        or verified[dg].manifest["files"][_bundle.ADAPTER]["size"] > _adapter.ADAPTER_BUDGET
    ]
    items.append(
        Item(
            "adapter-within-budget",
            bool(fixes) and not over,
            f"the fix {', '.join(over) or '?'} has no adapter or one over the {_adapter.ADAPTER_BUDGET:,}-byte "
            "budget: ship the fix as a small adapter",
            weight=1,
        )
    )

    items.append(_fix_content(ctx, fixes, verified))

    canary_ok, why = False, "no bundle was shadowed and then installed on a canary"
    n = len(ctx.devices)
    for dg in fixes:
        shadowed_on = {d for d, rs in shadows.items() if any(r["data"]["bundle"] == dg for r in rs)}
        installed_on = {d for d, rs in installs.items() if any(r["data"]["bundle"] == dg for r in rs)}
        if shadowed_on and installed_on and installed_on < set(ctx.devices) and len(installed_on) < n:
            first_install = min(r["time"] for d in installed_on for r in installs[d] if r["data"]["bundle"] == dg)
            first_shadow = min(r["time"] for d in shadowed_on for r in shadows[d] if r["data"]["bundle"] == dg)
            if first_shadow <= first_install:
                canary_ok = True
                break
            why = "the fix was installed before it ran in shadow mode"
        elif installed_on and len(installed_on) >= n:
            why = "the fix went to every device at once: canary it on one first"
    items.append(Item("canary", canary_ok, why, weight=2))

    rollbacks = [
        r
        for rs in recs.values()
        for r in rs
        if r["kind"] == "rollback" and (r["data"].get("from") or {}).get("digest") in digests
    ]
    items.append(
        Item(
            "rollback",
            bool(rollbacks),
            "none of your bundles was rolled back: install a bad release on the canary and let its "
            "health check roll it back",
            weight=2,
            detail={"by": sorted({r["data"].get("by") for r in rollbacks})},
        )
    )

    revoked_everywhere = [
        dg
        for dg in digests
        if all(
            any(r["kind"] == "revocation" and dg in r["data"].get("revoked", []) for r in rs) for rs in recs.values()
        )
    ]
    items.append(
        Item(
            "revoked",
            bool(revoked_everywhere),
            "no bundle of yours was revoked on every device: lab.revoke(digest) the bad release",
            weight=1,
        )
    )
    return items


def _fix_content(ctx: CheckContext, fixes: list[str], verified: dict) -> Item:
    """The story's fix: the scenario's candidate model, unchanged, with an adapter that lowers
    the defect intent and leaves every other intent alone (read from inside the bundle)."""
    from lab_hardware.digest import file_digest
    from lab_hardware.modelops import bundle as _bundle

    sc = ctx.scenario()
    defect = sc.get("defect_intent")
    cand = (sc.get("models") or {}).get("candidate")
    try:
        want = file_digest(cand) if cand else None
    except OSError:
        want = None
    why = []
    for dg in fixes:
        b = verified[dg]
        model_sha = b.manifest["files"][_bundle.MODEL]["sha256"]
        bias = dict(b.adapter.logit_bias) if b.adapter is not None else {}
        problems = []
        if want and model_sha != want:
            problems.append("does not carry the candidate model")
        if defect and not bias.get(defect, 0) < 0:
            problems.append(f"does not lower {defect!r}")
        others = sorted(k for k, v in bias.items() if k != defect and v != 0)
        if defect and others:
            problems.append(f"also biases {', '.join(others)}")
        if not problems:
            return Item("fix-content", True, detail={"bundle": dg[:12]})
        why.append(f"{dg[:12]} " + " and ".join(problems))
    return Item(
        "fix-content",
        False,
        ("; ".join(why[:2]) or "no fix to look inside")
        + ": the fix is the candidate model with an adapter that lowers only the defect intent",
        weight=1,
        detail={"fixes": [d[:12] for d in fixes]},
    )
