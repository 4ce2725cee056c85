"""consent: nothing left a device without consent, the trail is whole, and no message carried PII.

Judged from the independent observer's capture of every message in the submission's namespace
and the devices' audit chains on disk (the consent trail is the chain's ``consent`` records):

* every published telemetry window lies inside an interval in which its device had
  ``telemetry`` consent, every capture inside ``replay-capture`` consent it names;
* each chain verifies, every consent change seen on the wire is in the chain (nothing
  rewritten) and every consent change of the run was published (nothing hidden), and what
  the devices report as their consent is what the trail says;
* no string in any message anybody published in the namespace contains PII
  (``lab_hardware.modelops.scrub.find``) - including what a notebook published and then tried to
  erase (a retained message cleared, outputs deleted: the observer already has it);
* consent was used for what the lab published, and revoked when done.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from lab_hardware.modelops import scrub

from .base import CheckContext, Item, register

EPS = 0.002  # seconds: audit record times and window times are rounded to microseconds


def intervals(records: list[dict], scope: str) -> list[tuple[float, float, dict]]:
    """(granted at, revoked at or inf, grant record) for one scope of a chain's consent trail."""
    out: list[tuple[float, float, dict]] = []
    open_at: tuple[float, dict] | None = None
    for r in records:
        d = r.get("data") or {}
        if r.get("kind") != "consent" or d.get("scope") != scope:
            continue
        if d.get("grant") is True and open_at is None:
            open_at = (r["time"], r)
        elif d.get("grant") is False and open_at is not None:
            out.append((open_at[0], r["time"], open_at[1]))
            open_at = None
    if open_at is not None:
        out.append((open_at[0], math.inf, open_at[1]))
    return out


def _inside(t0: float, t1: float, ivs) -> bool:
    return any(a - EPS <= t0 and t1 <= b + EPS for a, b, _ in ivs)


#: Fields that hold identifiers the lab or the grader chose (ids, digests, names of devices,
#: models, namespaces, the learner's chosen identity): never user data, and e.g. a learner id
#: "alice" would otherwise read as a person's name in every audit record.
STRUCTURAL = frozenset(
    {
        "schema",
        "namespace",
        "device",
        "id",
        "reply_to",
        "capture_id",
        "bundle",
        "digest",
        "hash",
        "prev",
        "model",
        "name",
        "version",
        "profile",
        "kind",
        "scope",
        "command",
        "ref",
        "by",
        "learner",
        "sha256",
        "keyid",
        "course",
        "module",
    }
)


def _strings(obj, out: set, key: str | None = None) -> None:
    if isinstance(obj, str):
        if key not in STRUCTURAL:
            out.add(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.add(str(k))
            _strings(v, out, str(k))
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out, key)


_BARE_TOKEN = re.compile(r"\S+")


@lru_cache(maxsize=1)
def _plain_names() -> frozenset[str]:
    from lab_hardware.modelops import scrub_rules

    plain, _ambiguous = scrub_rules.gazetteer()
    return frozenset(plain)


def _kinds(s: str, lab_ids: frozenset[str] = frozenset()) -> list[str]:
    """PII kinds in one published string.

    The name model reads a word with its neighbours (it was trained on utterances); a bare
    token has none, and on one it guesses (``pid``, ``keyid``, ``dev-0`` read as names).  So
    in a bare token a name counts only when the token is a capitalised given or family name
    of the gazetteer (``{"operator": "Alice"}``); every other kind counts wherever it is.
    Inside a longer string, what lies within one of ``lab_ids`` (the lab's device names,
    namespace, the learner's chosen id) is not PII either: "device dev-1 ..." read ``dev``
    as a name."""
    found = scrub.find(s)
    if lab_ids and found:
        mine = [(m.start(), m.end()) for k in lab_ids if len(k) > 1 for m in re.finditer(_word_bounded(k), s)]
        found = [f for f in found if not any(a <= f[1] and f[2] <= b for a, b in mine)]
    kinds = {k for k, _, _ in found}
    if "name" in kinds and _BARE_TOKEN.fullmatch(s):
        word = s.strip(".,;:!?\"'()[]{}")
        if not (word[:1].isupper() and word.lower() in _plain_names()):
            kinds.discard("name")
    return sorted(kinds)


@lru_cache(maxsize=256)
def _word_bounded(ident: str) -> re.Pattern:
    return re.compile(r"(?<![\w-])" + re.escape(ident) + r"(?![\w-])")


def lab_identifiers(ctx: CheckContext) -> set[str]:
    """Identifiers the lab chose: its namespace, devices, the learner, and every segment of
    every topic seen (broker usernames, commands).  Publishing these is no PII."""
    known = {ctx.namespace, ctx.learner, *ctx.devices}
    for m in ctx.messages or []:
        known.update(m.topic.split("/"))
    return {k for k in known if k}


def pii_in_messages(ctx: CheckContext) -> list[dict]:
    """Messages whose payload carries PII: topic, kinds, time (never the PII itself).

    The lab oracle's answers are left out: the broker lets only the oracle (and the control
    plane) write a device's response topic, and an answer holds labels, probabilities and a
    reason the oracle wrote about a feature vector it was sent (never text), e.g.
    ``shed: expired (249 ms queued, timeout 200 ms)``, which the name model would misread.
    So is the metadata trail: only the control plane writes it (OpenLineage run events of the
    lab's artifacts: run ids, digests, capture names the recognisers can misread as ids)."""
    from lab_hardware import topics

    known = lab_identifiers(ctx)
    lab_ids = frozenset(k for k in (ctx.namespace, ctx.learner, *ctx.devices) if k)
    answers = {topics.oracle_response(ctx.namespace, d) for d in ctx.devices} | {topics.metadata(ctx.namespace)}
    verdict: dict[str, list] = {}
    hits = []
    for m in ctx.messages or []:
        if not m.payload or m.topic in answers:
            continue
        d = m.json()
        strings: set = set()
        if d is None:
            strings.add(m.payload.decode("utf-8", "replace"))
        else:
            _strings(d, strings)
        kinds = set()
        for s in strings - known:
            if s not in verdict:
                verdict[s] = _kinds(s, lab_ids) if len(s) > 2 else []
            kinds.update(verdict[s])
        if kinds:
            hits.append({"topic": m.topic, "kinds": sorted(kinds), "time": m.time, "retained": m.retain})
    return hits


@register("consent", points=5)
def consent(ctx: CheckContext) -> list[Item]:
    """Consent-first: no data without consent, a whole consent trail, no PII on the wire."""
    from lab_hardware import audit
    from lab_hardware.consent import ConsentState, trail

    items: list[Item] = []
    chains = {d: ctx.chain(d) for d in ctx.devices}
    broken = []
    for d, recs in chains.items():
        if recs is None:
            broken.append(f"{d} (unreadable)")
        else:
            v = audit.verify(recs)
            if not v:
                broken.append(f"{d} ({v.reason})")
    items.append(
        Item(
            "trail-verifies",
            not broken,
            "the audit chain of "
            + ", ".join(broken)
            + " does not verify: the consent trail cannot be trusted - change consent only through the lab "
            "(lab.grant_consent / lab.revoke_consent), never a device's files, and rerun the module",
            weight=2,
        )
    )
    chains = {d: (r or []) for d, r in chains.items()}

    # data published only under consent
    used = {"telemetry": 0, "replay-capture": 0}
    if ctx.observed:
        late = []
        for d in ctx.devices:
            ivs = intervals(chains[d], "telemetry")
            for w in ctx.distinct("telemetry", d):  # a window is (device, seq): redeliveries count once
                used["telemetry"] += 1
                if not _inside(float(w.get("start", 0)), float(w.get("end", 0)), ivs):
                    late.append(f"{d} window {w.get('seq')}")
        items.append(
            Item(
                "no-telemetry-without-consent",
                not late,
                f"{len(late)} telemetry window(s) were published outside telemetry consent "
                f"({', '.join(late[:3])}): grant consent before reading and revoke it after",
                weight=3,
                detail={"windows": used["telemetry"], "outside": late[:20]},
            )
        )
    bad_caps = []
    for d in ctx.devices:
        ivs = intervals(chains[d], "replay-capture")
        by_hash = {iv[2]["hash"]: iv for iv in ivs}
        caps = ctx.distinct("capture", d) if ctx.observed else []
        for c in caps:
            used["replay-capture"] += 1
            ref = c.get("consent") or {}
            iv = by_hash.get(ref.get("hash"))
            if iv is None or iv[2]["index"] != ref.get("index"):
                bad_caps.append(f"{d} capture {c.get('capture_id')} names no replay-capture grant of its chain")
                continue
            outside = [r for r in c.get("records", []) if not iv[0] - EPS <= r.get("time", 0) < iv[1] + EPS]
            if outside:
                bad_caps.append(f"{d} capture {c.get('capture_id')}: {len(outside)} record(s) outside its consent")
    if ctx.observed:
        items.append(
            Item(
                "no-capture-without-consent",
                not bad_caps,
                "; ".join(bad_caps[:3]) + ": capture only under replay-capture consent",
                weight=2,
            )
        )

    # the trail is complete: on the wire == on disk, and what devices report == what it says
    problems = []
    if ctx.observed:
        disk = {(d, r["hash"]) for d in ctx.devices for r in trail(chains[d])}
        wire = set()
        for _topic, a in ctx.of("audit"):
            d = a.get("device")
            for r in a.get("records", []):
                if r.get("kind") == "consent":
                    wire.add((d, r.get("hash")))
        missing = sorted(d for d, h in wire - disk)
        if missing:
            problems.append(
                f"consent records published by {', '.join(sorted(set(missing)))} are not in their "
                "chain on disk (rewritten?)"
            )
        run_disk = {
            (d, r["hash"]) for d in ctx.devices for r in trail(ctx.run_records(d)) if r["time"] >= ctx.started + 0.5
        }
        unseen = sorted(d for d, h in run_disk - wire)
        if unseen:
            problems.append(f"consent changes on {', '.join(sorted(set(unseen)))} were never published")
        for d in ctx.devices:
            states = [s for _m, s in ctx.of("state", d) if s.get("online")]
            if states and states[-1].get("consent") != ConsentState.from_trail(chains[d]).as_dict():
                problems.append(
                    f"{d} reports consent {states[-1].get('consent')} but its trail says "
                    f"{ConsentState.from_trail(chains[d]).as_dict()}"
                )
    items.append(
        Item(
            "trail-complete",
            not problems,
            "; ".join(problems) + ": change consent only with "
            "lab.grant_consent / lab.revoke_consent and leave the devices' audit chains alone",
            weight=2,
        )
    )

    if ctx.observed:
        pii = pii_in_messages(ctx)
        where = sorted({h["topic"] for h in pii})
        items.append(
            Item(
                "no-pii-published",
                not pii,
                f"{len(pii)} message(s) carried PII ({', '.join(sorted({k for h in pii for k in h['kinds']}))}) "
                f"on {', '.join(where[:3])}: publish aggregates and scrubbed text only - the grader's "
                "observer keeps every message, deleting it afterwards changes nothing",
                weight=3,
                detail={"messages": pii[:20]},
            )
        )

    from lab_hardware.runtime.broker import is_learner_of  # 'by' is broker-proven: the learner's identity

    grants = [
        r
        for d in ctx.devices
        for r in trail(ctx.run_records(d))
        if r["data"].get("grant")
        and (not ctx.learner or r["data"].get("by") == ctx.learner or is_learner_of(r["data"].get("by"), ctx.namespace))
    ]
    if ctx.observed:
        ok = bool(grants) and (used["telemetry"] + used["replay-capture"]) > 0
        msg = (
            "you granted no consent, so the lab published nothing for you: grant the scope you need "
            "(lab.grant_consent(device, scope))"
            if not grants
            else "you granted consent but no device published under it: read telemetry or capture while it is granted"
        )
    else:
        ok, msg = bool(grants), "no consent grant of yours in the devices' audit chains"
    items.append(Item("consent-used", ok, msg, weight=1, detail={"published": used}, required=True))

    left = [
        f"{d} {scope}" for d in ctx.devices for scope, on in ConsentState.from_trail(chains[d]).as_dict().items() if on
    ]
    items.append(
        Item(
            "revoked-when-done",
            not left,
            f"consent still granted at the end on {', '.join(left)}: revoke what you granted when done",
            weight=1,
        )
    )
    return items
