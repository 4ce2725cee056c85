"""oracle: ambiguous decisions routed to the lab oracle, an SLO that burned, a retraining canaried.

Judged from what the lab recorded, never from the notebook's variables: the devices' audit
chains on disk, the bundle files the devices stored and the notebook left, the lab's replay
store and, in a grading run, the observer's capture of the namespace:

* ``routing-declared``: the learner installed a bundle whose signed manifest declares
  ``routing`` (read from the bundle itself, by the digest the install record names);
* ``routed``: windows of that bundle report decisions routed to the oracle and answered, within
  the declared ``max_share`` (observer); without an observer, the device's divergence alert
  figures (oracle answers) stand in;
* ``slo-declared``: that bundle declares a ``divergence`` objective with policy ``retrain``;
* ``burn-alert``: the objective burned its budget: an ``slo-alert`` and a ``retrain-suggested``
  record of the device (by ``slo``) for that bundle, and the alert event was published;
* ``retrained``: a bundle whose ``provenance.retraining`` holds: captures of this namespace
  stored in the lab's replay store with the same records (sha256), each under a
  ``replay-capture`` grant of the device's chain on disk; labelled by the scenario's oracle;
  triggered by that ``retrain-suggested`` record (index and hash);
* ``canary``: that retrained bundle, installed by the learner on a strict subset of the
  devices, passed its health check there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .base import CheckContext, Item, register
from .bundle import _bundle_files


def _manifests(ctx: CheckContext) -> dict[str, dict]:
    """digest -> manifest of every readable bundle file the notebook left or a device stored."""
    from lab_hardware.modelops import bundle as _bundle

    out: dict[str, dict] = {}
    for dg, copies in _bundle_files(ctx).items():
        for data in copies:
            try:
                out[dg] = _bundle.read(data).manifest
                break
            except (OSError, ValueError):
                continue
    return out


def _oracle_sha(ctx: CheckContext) -> str | None:
    from labs import scenarios

    try:
        sc = scenarios.load(ctx.scenario().get("name") or "voice-intents")
    except Exception:  # noqa: BLE001 - an unknown scenario: the item says so
        return None
    if sc.oracle_model is None or not Path(sc.oracle_model).is_file():
        return None
    return hashlib.sha256(Path(sc.oracle_model).read_bytes()).hexdigest()


def _retraining_problems(ctx: CheckContext, prov: dict, suggestions: dict[tuple[Any, Any], dict]) -> list[str]:
    """What does not hold in a bundle's ``provenance.retraining`` (empty: it all holds)."""
    from lab_hardware.modelops import replay as _replay
    from labs import streams

    problems = []
    caps = prov.get("captures") or []
    if not caps:
        problems.append("it names no captures")
    for c in caps:
        ns, dev, cid = c.get("namespace"), c.get("device"), c.get("capture_id")
        if ns != ctx.namespace or dev not in ctx.devices:
            problems.append(f"capture {cid} is not of your namespace's devices")
            continue
        chain = ctx.chain(dev) or []
        ref = c.get("consent") or {}
        i = ref.get("index")
        rec = chain[i] if isinstance(i, int) and 0 <= i < len(chain) else None
        d = (rec or {}).get("data") or {}
        if (
            rec is None
            or rec.get("hash") != ref.get("hash")
            or rec.get("kind") != "consent"
            or d.get("scope") != "replay-capture"
            or d.get("grant") is not True
        ):
            problems.append(f"capture {cid} names no replay-capture grant of {dev}'s audit chain")
            continue
        try:
            entry, records = _replay.stored_capture(ctx.home, ns, dev, str(cid))
        except (_replay.ReplayError, OSError, ValueError) as exc:
            problems.append(f"capture {cid} is not in the lab's replay store as named ({str(exc).splitlines()[0]})")
            continue
        if hashlib.sha256(streams.to_jsonl(records)).hexdigest() != c.get("records_sha256"):
            problems.append(f"capture {cid}'s records are not the ones the lab stored")
    want = _oracle_sha(ctx)
    if want is None or (prov.get("oracle") or {}).get("sha256") != want:
        problems.append("it was not labelled by the scenario's oracle")
    t = prov.get("trigger") or {}
    sugg = suggestions.get((t.get("device"), t.get("index"))) if isinstance(t, dict) else None
    if sugg is None or sugg.get("hash") != t.get("hash"):
        problems.append("its trigger names no retrain-suggested record of the SLO alert you saw")
    return problems


@register("oracle", points=5)
def oracle_check(ctx: CheckContext) -> list[Item]:
    """Routing to the oracle, a divergence SLO that burned its budget, a retraining canaried."""
    from lab_hardware.runtime.broker import is_learner_of

    def mine(r: dict) -> bool:
        by = (r.get("data") or {}).get("by")
        return not ctx.learner or by == ctx.learner or is_learner_of(by, ctx.namespace)

    recs = {d: ctx.run_records(d) for d in ctx.devices}
    installs = [(d, r) for d, rs in recs.items() for r in rs if r["kind"] == "install" and mine(r)]
    manifests = _manifests(ctx)
    routed = [(d, r) for d, r in installs if (manifests.get(r["data"].get("bundle")) or {}).get("routing")]
    if not routed:
        return [
            Item(
                "routing-declared",
                False,
                "you installed no bundle that declares routing: build one with "
                "bundle.build(..., routing={...}), sign it and lab.install it on a device",
                weight=13,
                required=True,
            )
        ]
    items = [
        Item(
            "routing-declared",
            True,
            weight=1,
            detail={"bundles": sorted({r["data"]["bundle"][:12] for _d, r in routed})},
        )
    ]
    routed_digests = {r["data"]["bundle"] for _d, r in routed}

    # ---- routed, within the declared share -------------------------------------------------
    alerts = [
        (d, r)
        for d, rs in recs.items()
        for r in rs
        if r["kind"] == "slo-alert" and r["data"].get("by") == "slo" and r["data"].get("bundle") in routed_digests
    ]
    suggestions = {
        (d, r["index"]): r
        for d, rs in recs.items()
        for r in rs
        if r["kind"] == "retrain-suggested" and r["data"].get("bundle") in routed_digests
    }
    if ctx.observed:
        n_routed = n_answered = n_decided = n_windows = 0
        over = []
        for dg in routed_digests:
            share = float((manifests[dg].get("routing") or {}).get("max_share") or 1.0)
            r_dg = d_dg = w_dg = 0
            for d in ctx.devices:
                for w in ctx.distinct("telemetry", d):
                    o = w.get("oracle")
                    if w.get("bundle") != dg or not isinstance(o, dict):
                        continue
                    w_dg += 1
                    r_dg += int(o.get("routed") or 0)
                    n_answered += int(o.get("answered") or 0)
                    d_dg += int(w.get("decisions") or 0)
            if r_dg > share * d_dg + w_dg:
                over.append(f"{dg[:12]} routed {r_dg} of {d_dg} decisions (max_share {share:g})")
            n_routed, n_decided, n_windows = n_routed + r_dg, n_decided + d_dg, n_windows + w_dg
        ok = n_routed > 0 and n_answered > 0 and not over
        msg = (
            "; ".join(over) + ": the devices must route within the bundle's max_share"
            if over
            else "no window of your routing bundle reported oracle answers: grant telemetry on the device "
            "running it and read its windows (is the lab's oracle running? livelab up --oracle)"
        )
        items.append(
            Item(
                "routed",
                ok,
                msg,
                weight=2,
                detail={"windows": n_windows, "decisions": n_decided, "routed": n_routed, "answered": n_answered},
            )
        )
    else:
        answered = sum(int((s["data"].get("long") or {}).get("answered") or 0) for s in suggestions.values())
        items.append(
            Item(
                "routed",
                answered > 0,
                "no oracle answers behind a divergence alert of your routing bundle: let it route, "
                "with a divergence objective, until the objective alerts",
                weight=2,
            )
        )

    # ---- the objective -----------------------------------------------------------------------
    objectives = {
        (dg, o.get("name")): o
        for dg in routed_digests
        for o in manifests[dg].get("slos") or []
        if isinstance(o, dict) and o.get("indicator") == "divergence" and o.get("policy") == "retrain"
    }
    items.append(
        Item(
            "slo-declared",
            bool(objectives),
            "your routing bundle declares no divergence objective with policy 'retrain': add one to its "
            'slos (e.g. {"indicator": "divergence", "intent": ..., "objective": 0.95, "policy": "retrain"})',
            weight=1,
        )
    )

    # ---- the burn-rate alert -----------------------------------------------------------------
    fired = [(d, r) for d, r in alerts if (r["data"].get("bundle"), r["data"].get("slo")) in objectives]
    fired_suggestions = {
        k: s
        for k, s in suggestions.items()
        if any(
            s["data"].get("alert", {}).get("hash") == r["hash"] and k[0] == d  # the record names its alert
            for d, r in fired
        )
    }
    why = ""
    if not fired:
        why = "no objective of your routing bundle burned its budget: keep it routing until lab.wait_alert returns"
    elif not fired_suggestions:
        why = "the alert wrote no retrain-suggested record: the objective's policy must be 'retrain'"
    elif ctx.observed:
        published = {
            (a.get("device"), (a.get("audit") or {}).get("hash")) for _m, a in ctx.of("events") if a.get("slo")
        }
        if not any((d, r["hash"]) in published for d, r in fired):
            why = "the device's alert event was never published: keep the device connected while it burns"
    items.append(
        Item(
            "burn-alert",
            not why,
            why,
            weight=2,
            detail={"alerts": [f"{d}#{r['index']}" for d, r in fired][:5]},
        )
    )

    # ---- the retrained candidate -------------------------------------------------------------
    retrained: list[str] = []
    problems: list[str] = []
    for dg, m in sorted(manifests.items()):
        prov = (m.get("provenance") or {}).get("retraining")
        if not isinstance(prov, dict):
            continue
        bad = _retraining_problems(ctx, prov, fired_suggestions)
        if bad:
            problems.append(f"{dg[:12]}: {bad[0]}")
        else:
            retrained.append(dg)
    items.append(
        Item(
            "retrained",
            bool(retrained),
            ("; ".join(problems[:2]) or "no retrained bundle (labs.retrain / lab.retrain) in work/ or on a device")
            + ": retrain from your consented captures, naming the alert's retrain-suggested record as trigger",
            weight=3,
            detail={"retrained": [d[:12] for d in retrained]},
        )
    )

    # ---- canaried ----------------------------------------------------------------------------
    canary_ok, why = False, "no retrained bundle of yours was installed on a canary device"
    for dg in retrained:
        on = {d for d, r in installs if r["data"].get("bundle") == dg}
        healthy = {
            d
            for d in on
            for r in recs[d]
            if r["kind"] == "health" and r["data"].get("bundle") == dg and r["data"].get("ok")
        }
        if on and len(on) >= len(ctx.devices):
            why = "the retrained bundle went to every device at once: canary it on one first"
        elif on and not healthy:
            why = f"the retrained bundle {dg[:12]} has no passed health check on its canary: wait for the verdict"
        elif healthy:
            canary_ok = True
            break
    items.append(Item("canary", canary_ok, why, weight=2))
    return items
