"""replay: the learner's replay file is real, consented, deterministic and shows the defect.

* the ``.lreplay`` the notebook left in its working directory verifies (manifest, record
  hashes, consent trail) and belongs to this namespace;
* its consent trail names ``replay-capture`` grants that are in the device's audit chain on
  disk, and every record was captured inside one;
* every record is one the device really published: each equals a record of a capture message
  the grader's observer saw (a replay assembled or edited by hand fails here, even with
  recomputed signal digests);
* re-running it twice in the sandbox (no network) through the model that decided gives
  byte-identical outputs, and every recomputed signal digest matches the device's;
* ``replay.diff`` against the other scenario model reproduces the target false positives:
  the candidate repeats undone decisions on the defect intent that the baseline does not.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .base import CheckContext, Item, register
from .consent import EPS, intervals


def _model_for(ctx: CheckContext, digest: str) -> Path | None:
    from lab_hardware import home as _home
    from lab_hardware.modelops import replay
    from lab_hardware.digest import file_digest

    for path in ctx.scenario().get("models", {}).values():
        try:
            if file_digest(path) == digest:
                return Path(path)
        except OSError:
            continue
    for root in [_home.device_dir(ctx.home, ctx.namespace, d) for d in ctx.devices] + (
        [ctx.artifacts] if ctx.artifacts else []
    ):
        for p in Path(root).rglob("*.lbundle") if Path(root).is_dir() else []:
            try:
                if replay.model_digest(p) == digest:
                    return p
            except ValueError:
                continue
    return None


def _score(items: list[Item]) -> float:
    if any(i.required and not i.ok for i in items):
        return -1.0
    total = sum(i.weight for i in items) or 1.0
    return sum(i.weight for i in items if i.ok) / total


@register("replay", points=5)
def replay_check(ctx: CheckContext) -> list[Item]:
    """A real, consented, deterministic replay that reproduces the candidate's false positives.

    Every ``.lreplay`` the notebook left is judged and the best one counts: never the newest by
    copy time or the first by name (a learner who kept an early attempt beside the final
    replay is judged on the final one, and a stale copy cannot stand in for it)."""
    from lab_hardware.modelops import replay

    files = ctx.files(".lreplay")
    if not files:
        return [
            Item(
                "replay-file",
                False,
                "no .lreplay file in your working directory: build one with "
                "replay.build(HOME, lab.namespace, device, Path('work') / 'dev-1.lreplay')",
                weight=9,
                required=True,
            )
        ]
    parsed, errors = [], []
    for f in files:
        try:
            parsed.append(replay.read(f))
        except ValueError as exc:
            errors.append(f"{f.name}: {str(exc).splitlines()[0]}")
    if not parsed:
        return [
            Item(
                "replay-file", False, "; ".join(errors[:2]) + ": rebuild it with replay.build", weight=9, required=True
            )
        ]
    best: list[Item] | None = None
    for rp in parsed:
        items = _judge_replay(ctx, rp)
        if best is None or _score(items) > _score(best):
            best = items
    if len(parsed) > 1:
        best[0].detail["judged"] = sorted(p.path.name for p in parsed)
    return best


def _judge_replay(ctx: CheckContext, rp) -> list[Item]:
    from lab_hardware.modelops import replay

    m = rp.manifest
    items = [
        Item(
            "replay-file",
            m.get("namespace") == ctx.namespace and m.get("device") in ctx.devices,
            f"{rp.path.name} was built in namespace {m.get('namespace')!r} for {m.get('device')!r}, not from "
            f"your lab ({ctx.namespace}): build it from your own captures",
            weight=1,
            detail={"file": rp.path.name, "records": len(rp)},
        )
    ]
    device = m.get("device")
    chain = ctx.chain(device) or [] if device in ctx.devices else []
    ivs = intervals(chain, "replay-capture")
    by_ref = {(iv[2]["index"], iv[2]["hash"]): iv for iv in ivs}
    bad_trail = [e for e in rp.consent_trail if (e.get("index"), e.get("hash")) not in by_ref]
    outside = [r["decision"] for r in rp.records if not any(a - EPS <= r["time"] < b + EPS for a, b, _ in ivs)]
    items.append(
        Item(
            "consent-backed",
            bool(ivs) and not bad_trail and not outside,
            (
                f"{len(bad_trail)} consent trail entr(y/ies) of the replay are not grants in {device}'s audit chain"
                if bad_trail
                else f"{len(outside)} record(s) were captured outside replay-capture consent"
                if outside
                else f"{device} never had replay-capture consent"
            ),
            weight=2,
        )
    )

    canon = lambda r: json.dumps(r, sort_keys=True, separators=(",", ":"))  # noqa: E731
    if ctx.observed:
        seen = {canon(r) for _m, c in ctx.of("capture", device) for r in c.get("records", [])}
        source = "the captures the grader observed"
    else:
        seen = set()
        folder = replay.captures_dir(ctx.home, ctx.namespace, device)
        for p in folder.glob("*.jsonl") if folder.is_dir() else []:
            seen.update(canon(json.loads(line)) for line in p.read_text().splitlines() if line.strip())
        source = "the lab's replay store"
    forged = [r["decision"] for r in rp.records if canon(r) not in seen]
    items.append(
        Item(
            "provenance",
            not forged,
            f"{len(forged)} of {len(rp)} records are not in {source} (e.g. decision {forged[:1]}): "
            "a replay must be built from real captures, unedited",
            weight=2,
        )
    )

    model = _model_for(ctx, rp.bundle)
    sc = ctx.scenario()
    defect = sc.get("defect_intent") or "call"
    models = {k: Path(v) for k, v in sc.get("models", {}).items()}
    if model is None:
        items.append(
            Item(
                "deterministic",
                False,
                f"the model that decided ({rp.bundle[:12]}) is not in this lab: "
                "capture from a device running a scenario model or one of your bundles",
                weight=2,
            )
        )
        items.append(
            Item(
                "reproduces-false-positives",
                False,
                "cannot replay without its model: capture from a device running the candidate",
                weight=2,
            )
        )
        return items
    other = next(
        (p for k, p in models.items() if p != model and k == "baseline"),
        next((p for p in models.values() if p != model), model),
    )
    with tempfile.TemporaryDirectory(prefix="livelab-check-replay-") as tmp:
        first = replay.run(rp.path, model, Path(tmp) / "again.jsonl")
        d = replay.diff(rp.path, model, other, defect_intent=defect)
    same = first["output_sha256"] == d["a"]["output_sha256"]
    digests_ok = first["digest_matches"] == len(rp)
    items.append(
        Item(
            "deterministic",
            same and digests_ok and first["network_isolated"] is not False,
            (
                "two sandboxed runs gave different bytes"
                if not same
                else f"{len(rp) - first['digest_matches']} recomputed signal digests do not match the device's"
            )
            + ": build the replay with replay.build from your own captures, unedited",
            weight=2,
            detail={"output_sha256": first["output_sha256"], "isolated": first["network_isolated"]},
        )
    )
    fp_a, fp_b = d["a"]["defect_false_positives"], d["b"]["defect_false_positives"]
    items.append(
        Item(
            "reproduces-false-positives",
            fp_a > 0 and fp_a > fp_b,
            f"the replay shows {fp_a} false positive(s) on {defect!r} for the model that decided and {fp_b} "
            f"for {other.stem}: capture from a candidate device while users undo its {defect!r} decisions",
            weight=2,
            detail={"model": model.name, "fp": fp_a, "other": other.name, "other_fp": fp_b},
        )
    )
    return items
