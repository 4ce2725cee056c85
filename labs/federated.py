"""Federated adapters with privacy budgets: devices fit, the lab aggregates with central DP.

The loop (docs/federated.md), the seed's rule - small on-device adapters, periodic federated
aggregation, per-device privacy budgets, central differential privacy only at aggregation:

1. :func:`run_round` asks each device of the round (a ``federated`` command) to join, with
   what its privacy ledger says this round would cost it.  A device refuses - and says why on
   its audit chain - when it has no ``telemetry`` consent (its undo signals are kept only under
   it), when the round would take its epsilon over its budget (it stops participating), or when
   it holds too few signals of the round's bundle;
2. the lab's Flower server (``labs.federated_server``, a process of its own: real gRPC on
   127.0.0.1) runs FedAvg over the devices that joined, each fitting a per-intent logit bias on
   its own signals (``lab_hardware.modelops.federated``); Flower's
   ``DifferentialPrivacyServerSideFixedClipping`` clips every update and adds Gaussian noise of
   standard deviation ``noise_multiplier * clipping_norm / participants`` to their mean;
3. the privacy ledger (``<home>/federated/ledger.json``) charges each participant the round:
   its epsilon is what Google's ``dp-accounting`` RDP accountant gives for the Gaussian
   mechanisms it took part in, composed, at the ledger's delta;
4. the noisy aggregate becomes an *unsigned* candidate bundle: the round's base model with the
   bias as its adapter (``adapter.json``, under 1 MB); ``provenance.federated`` names the round,
   the participants' count, the clipping norm, the noise multiplier and the (epsilon, delta)
   the round spent.  Signing and the canary are the existing path (``livelab bundle sign``,
   ``livelab rollout``).

Every refusal before the round is a :class:`FederatedError` with one line, before anything is
written.  Flower is imported only by the processes that run a round (the server process and
the devices' client threads), never by this module.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_hardware import home as _home
from lab_hardware.modelops import adapter as _adapter
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops.federated import FederatedError, check_bias

if TYPE_CHECKING:
    from labs.sdk import Lab

__all__ = ["FederatedError", "epsilon", "ledger", "noise_stdv", "read_ledger", "run_round", "set_budget"]

SCHEMA_LEDGER = "livelab.privacy-ledger/v1"
#: Defaults of a round (docs/federated.md says why): a noise multiplier of 1 costs a device
#: epsilon 4.73 for one round at delta 1e-5 and 9.01 for three, so a budget of 10 lasts three.
NOISE_MULTIPLIER = 1.0
CLIPPING_NORM = 2.0
EPSILON_BUDGET = 10.0
DELTA = 1e-5
MIN_SIGNALS = 200
#: Seconds a round may take (devices joining, fitting and the server's aggregation).
TIMEOUT = 120.0
#: Seconds a device has to answer its join (all are asked at once), and then to report its
#: part done: bounds on a busy machine's answers, not a learner command's few seconds.
JOIN_TIMEOUT = 30.0
DONE_TIMEOUT = 60.0
ACCOUNTANT = "rdp"
_ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REFUSED = re.compile(r"^\S+ refused 'federated': ")


# ---- the privacy ledger ------------------------------------------------------------------
def ledger_path(home: Path | str) -> Path:
    return Path(home) / "federated" / "ledger.json"


def epsilon(noise_multipliers: list[float], delta: float) -> float:
    """Epsilon at ``delta`` of a device that took part in Gaussian mechanisms with these noise
    multipliers (one per round, sensitivity = the clipping norm), composed: dp-accounting's RDP
    accountant.  0.0 for none."""
    if not noise_multipliers:
        return 0.0
    import dp_accounting
    from dp_accounting import rdp

    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in noise_multipliers]))
    return float(acc.get_epsilon(delta))


def noise_stdv(noise_multiplier: float, clipping_norm: float, participants: int) -> float:
    """The standard deviation of the noise added to the mean of ``participants`` clipped updates."""
    return noise_multiplier * clipping_norm / participants


def _empty_ledger(delta: float) -> dict:
    return {"schema": SCHEMA_LEDGER, "accountant": ACCOUNTANT, "delta": delta, "devices": {}}


def _num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def read_ledger(home: Path | str) -> dict | None:
    """The ledger of ``home`` (None when no round ever ran), checked: a malformed file is a
    FederatedError naming what is wrong, never a silent reset of anyone's budget."""
    path = ledger_path(home)
    if not path.exists():
        return None
    where = f"privacy ledger {path}"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FederatedError(f"{where} cannot be read ({type(exc).__name__}); restore it from a backup") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_LEDGER:
        raise FederatedError(f"{where} is not a {SCHEMA_LEDGER} file")
    if data.get("accountant") != ACCOUNTANT or not _num(data.get("delta")) or not 0 < data["delta"] < 1:
        raise FederatedError(f"{where}: 'accountant' must be {ACCOUNTANT!r} and 'delta' a number in (0, 1)")
    devs = data.get("devices")
    if not isinstance(devs, dict):
        raise FederatedError(f"{where}: 'devices' must be an object")
    for key, e in devs.items():
        if not isinstance(e, dict) or not _num(e.get("epsilon_budget")) or e["epsilon_budget"] <= 0:
            raise FederatedError(f"{where}: device {key!r} needs a positive 'epsilon_budget'")
        rounds = e.get("rounds")
        if not isinstance(rounds, list) or not all(
            isinstance(r, dict) and _num(r.get("noise_multiplier")) and r["noise_multiplier"] > 0 for r in rounds
        ):
            raise FederatedError(f"{where}: device {key!r} 'rounds' must list rounds with a noise_multiplier > 0")
        if e.get("stopped") is not None and not isinstance(e["stopped"], str):
            raise FederatedError(f"{where}: device {key!r} 'stopped' must be null or a reason")
    return data


def _write_ledger(home: Path, data: dict) -> None:
    _home.write_json(ledger_path(home), data, mode=0o600)


def ledger(home: Path | str) -> list[dict]:
    """Per device: its budget, the epsilon it spent (recomputed by the accountant from its
    rounds), what is left, the rounds it took part in and whether it stopped (and why)."""
    data = read_ledger(home)
    if data is None:
        return []
    out = []
    for key, e in sorted(data["devices"].items()):
        spent = epsilon([r["noise_multiplier"] for r in e["rounds"]], data["delta"])
        out.append(
            {
                "device": key,
                "epsilon_budget": e["epsilon_budget"],
                "epsilon_spent": round(spent, 6),
                "epsilon_left": round(max(0.0, e["epsilon_budget"] - spent), 6),
                "delta": data["delta"],
                "rounds": len(e["rounds"]),
                "last_round": e["rounds"][-1].get("round") if e["rounds"] else None,
                "stopped": e.get("stopped"),
            }
        )
    return out


def set_budget(home: Path | str, device: str, epsilon_budget: float, *, namespace: str = "default") -> dict:
    """Set one device's epsilon budget (the operator's call; a budget below what the device
    already spent stops it at its next round).  Returns its ledger row."""
    if not _num(epsilon_budget) or epsilon_budget <= 0:
        raise FederatedError(f"epsilon budget must be a finite number > 0, not {epsilon_budget!r}")
    if not isinstance(device, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", device):
        raise FederatedError(f"{str(device)[:70]!r} is not a device name")
    home = Path(home)
    with _Lock(home):
        led = read_ledger(home) or _empty_ledger(DELTA)
        key = f"{namespace}/{device}"
        entry = led["devices"].get(key) or {"epsilon_budget": float(epsilon_budget), "rounds": [], "stopped": None}
        entry["epsilon_budget"] = float(epsilon_budget)
        spent = epsilon([r["noise_multiplier"] for r in entry["rounds"]], led["delta"])
        if spent < entry["epsilon_budget"]:
            entry["stopped"] = None
        led["devices"][key] = entry
        _write_ledger(home, led)
    return next(r for r in ledger(home) if r["device"] == key)


# ---- checks ------------------------------------------------------------------------------
def _check_params(
    *, rounds: Any, noise_multiplier: Any, clipping_norm: Any, epsilon_budget: Any, delta: Any, min_signals: Any
) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
        raise FederatedError(f"rounds must be an integer between 1 and 100, not {rounds!r}")
    if not _num(noise_multiplier) or noise_multiplier <= 0:
        raise FederatedError(
            f"noise multiplier must be a number > 0, not {noise_multiplier!r}: rounds run with central DP only"
        )
    if not _num(clipping_norm) or clipping_norm <= 0:
        raise FederatedError(f"clipping norm must be a number > 0, not {clipping_norm!r}")
    if epsilon_budget is not None and (not _num(epsilon_budget) or epsilon_budget <= 0):
        raise FederatedError(f"epsilon budget must be a finite number > 0, not {epsilon_budget!r}")
    if delta is not None and (not _num(delta) or not 0 < delta < 1):
        raise FederatedError(f"delta must be a number in (0, 1), not {delta!r}")
    if isinstance(min_signals, bool) or not isinstance(min_signals, int) or not 1 <= min_signals <= 20_000:
        raise FederatedError(f"min signals must be an integer between 1 and 20000, not {min_signals!r}")


def _check_out(out: Path) -> None:
    if out.suffix != _bundle.SUFFIX:
        raise FederatedError(f"output {out} must end in {_bundle.SUFFIX}")
    if out.is_dir():
        raise FederatedError(f"output {out} is a directory: give a file name")
    if not out.parent.is_dir():
        raise FederatedError(f"cannot write {out}: {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise FederatedError(f"cannot write {out}: permission denied")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Lock:
    """One round at a time per lab home (the ledger is read, charged and written under it)."""

    def __init__(self, home: Path):
        path = home / "federated" / ".round.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a+")

    def __enter__(self) -> "_Lock":
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise FederatedError("another federated round is running in this lab; wait for it to finish") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


# ---- the metadata trail --------------------------------------------------------------------
def _record_round(home: Path, namespace: str, summary: dict) -> None:
    """The one place a finished round leaves the lab's metadata trail (docs/lineage.md): the
    ``adapter.round`` run event, whose inputs are the base bundle and the participants, whose
    output is the candidate adapter bundle, with the round's privacy figures; its privacy
    declaration says what left each device (only the clipped per-intent bias, under telemetry
    consent).  Called once per round, after the bundle and the ledger are written; never
    fails the round (a transport failure is logged and kept in lineage/failures.jsonl)."""
    from lab_hardware.modelops import lineage

    privacy = lineage.Privacy(
        subject="federated adapter update (one per participating device)",
        fields=("bias",),
        consent_scope="telemetry",
        retention_days=None,
        pii_scrubbed=True,
    )
    inputs = [("livelab:bundles", summary["parent_bundle"])]
    inputs += [("livelab:devices", f"{namespace}/{d}") for d in summary["participants"]]
    details = {
        k: summary[k]
        for k in ("round", "digest", "version", "adapter_size", "noise_multiplier", "clipping_norm", "epsilon", "delta")
    }
    details["participants"] = len(summary["participants"])
    details["accountant"] = summary["accountant"]
    lineage.safe_emit(
        home,
        "adapter.round",
        summary["digest"],
        privacy=privacy,
        inputs=inputs,
        details=details,
        lab_namespace=namespace,
    )


# ---- the round -----------------------------------------------------------------------------
def run_round(
    lab: "Lab",
    bundle: Path | str,
    out: Path | str,
    *,
    version: str,
    devices: list[str] | None = None,
    rounds: int = 1,
    noise_multiplier: float = NOISE_MULTIPLIER,
    clipping_norm: float = CLIPPING_NORM,
    epsilon_budget: float | None = None,
    delta: float | None = None,
    min_signals: int = MIN_SIGNALS,
    round_id: str | None = None,
    timeout: float = TIMEOUT,
    seed: int | None = None,
    created: str | None = None,
) -> dict:
    """Run a federated adapter round on ``lab``'s devices and write the candidate bundle ``out``.

    ``bundle`` is the bundle the devices run (the adapter corrects *its* decisions; devices
    fit on the signals they kept under its digest); ``devices`` defaults to all of the lab's.
    ``epsilon_budget`` is the budget of a device the ledger does not know yet (default
    :data:`EPSILON_BUDGET`); ``delta`` is the ledger's (set by its first round, default
    :data:`DELTA`).  ``seed`` pins the server's noise: for tests only (pinned noise protects
    nothing).  Returns the summary: participants, who did not take part and why, the bias,
    noise stdv, epsilon and delta, bytes on the wire per device, seconds."""
    t0 = time.perf_counter()
    _check_params(
        rounds=rounds,
        noise_multiplier=noise_multiplier,
        clipping_norm=clipping_norm,
        epsilon_budget=epsilon_budget,
        delta=delta,
        min_signals=min_signals,
    )
    try:
        _bundle.parse_version(version)
    except _bundle.BundleError as exc:
        raise FederatedError(str(exc)) from None
    out = Path(out)
    _check_out(out)
    if round_id is not None and not _ROUND_ID.match(str(round_id)):
        raise FederatedError(f"round id {str(round_id)[:70]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    rid = round_id or f"r-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        base = _bundle.read(bundle)
    except (_bundle.BundleError, OSError) as exc:
        raise FederatedError(f"bundle {bundle}: {exc}") from None
    intents = list(base.manifest["io"]["intents"])
    start = [base.adapter.logit_bias.get(i, 0.0) for i in intents] if base.adapter is not None else [0.0] * len(intents)
    names = list(devices) if devices is not None else list(lab.devices)
    unknown = [d for d in names if d not in lab.devices]
    if not names or unknown:
        raise FederatedError(
            f"unknown device {unknown[0]!r}; this lab has {', '.join(lab.devices)}"
            if unknown
            else "a round needs at least one device"
        )
    if len(set(names)) != len(names):
        raise FederatedError("a device may appear only once in a round")
    home = Path(lab.conn.home or _home.resolve())
    with _Lock(home):
        led = read_ledger(home)
        if led is None:
            led = _empty_ledger(DELTA if delta is None else float(delta))
        elif delta is not None and float(delta) != led["delta"]:
            raise FederatedError(
                f"the privacy ledger accounts at delta {led['delta']:g}, not {delta:g}: one ledger, one delta"
            )
        d = float(led["delta"])
        budget_new = EPSILON_BUDGET if epsilon_budget is None else float(epsilon_budget)
        done: dict[str, dict] = {}
        got_all = threading.Event()

        def listen(kind: str, dev: str, data: dict) -> None:
            if kind != "audit":
                return
            for rec in data.get("records") or []:
                if rec.get("kind") == "federated-done" and (rec.get("data") or {}).get("round") == rid:
                    done[dev] = rec["data"]
                    if joined and set(joined) <= set(done):
                        got_all.set()

        joined: list[str] = []
        skipped: dict[str, str] = {}
        port = _free_port()
        lab.add_listener(listen)
        try:
            privacy: dict[str, dict] = {}
            for dev in names:
                entry = led["devices"].get(f"{lab.namespace}/{dev}") or {"epsilon_budget": budget_new}
                past = [r["noise_multiplier"] for r in entry.get("rounds", [])]
                privacy[dev] = {
                    "epsilon_spent": round(epsilon(past, d), 6),
                    "epsilon_after": round(epsilon(past + [float(noise_multiplier)] * rounds, d), 6),
                    "epsilon_budget": entry["epsilon_budget"],
                    "delta": d,
                }

            def join(dev: str) -> str | None:
                """None when ``dev`` joined, else why not (refused or no answer: one line)."""
                try:
                    lab.command(
                        dev,
                        "federated",
                        timeout=JOIN_TIMEOUT,
                        round=rid,
                        server=f"127.0.0.1:{port}",
                        bundle=base.digest,
                        rounds=rounds,
                        min_signals=min_signals,
                        privacy=privacy[dev],
                    )
                    return None
                except Exception as exc:  # noqa: BLE001 - CommandRefused or a timeout: one line each
                    return _REFUSED.sub("", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

            # every device is asked at once: a busy or offline one delays the round by one bound
            with ThreadPoolExecutor(max_workers=min(len(names), 16), thread_name_prefix="federated-join") as pool:
                answers = list(pool.map(join, names))
            for dev, reason in zip(names, answers):
                if reason is None:
                    joined.append(dev)
                    continue
                skipped[dev] = reason
                if privacy[dev]["epsilon_after"] > privacy[dev]["epsilon_budget"]:
                    key = f"{lab.namespace}/{dev}"
                    entry = led["devices"].get(key) or {"epsilon_budget": budget_new, "rounds": [], "stopped": None}
                    entry["stopped"] = reason
                    led["devices"][key] = entry
            if not joined:
                _write_ledger(home, led)
                why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
                raise FederatedError(f"no device joined round {rid} ({why})")
            result = _serve(
                home,
                {
                    "port": port,
                    "clients": len(joined),
                    "rounds": rounds,
                    "initial": start,
                    "noise_multiplier": float(noise_multiplier),
                    "clipping_norm": float(clipping_norm),
                    "seed": seed,
                    "round_timeout": timeout,
                },
                timeout,
            )
            got_all.wait(DONE_TIMEOUT)  # the devices' own records of the round (bytes on the wire)
        finally:
            lab.remove_listener(listen)
        participants = sorted(result["rounds"][-1]["participants"])
        bias = check_bias(result["parameters"], len(intents))
        now = time.time()
        for dev in participants:
            key = f"{lab.namespace}/{dev}"
            entry = led["devices"].get(key) or {"epsilon_budget": budget_new, "rounds": [], "stopped": None}
            for k in range(rounds):
                entry["rounds"].append(
                    {
                        "round": rid if rounds == 1 else f"{rid}.{k + 1}",
                        "noise_multiplier": float(noise_multiplier),
                        "clipping_norm": float(clipping_norm),
                        "participants": len(participants),
                        "time": round(now, 3),
                    }
                )
            led["devices"][key] = entry
        round_eps = epsilon([float(noise_multiplier)] * rounds, d)
        stdv = result["rounds"][-1]["noise_stdv"]
        limit = _adapter.BIAS_LIMIT
        logit_bias = {i: float(min(limit, max(-limit, v))) for i, v in zip(intents, bias.tolist())}
        adapter_data = _adapter.make(intents, logit_bias)
        if len(adapter_data) >= _adapter.ADAPTER_BUDGET:  # a per-intent bias is ~150 bytes
            raise FederatedError(f"the adapter is {len(adapter_data):,} bytes, over the 1 MB budget")
        federated = {
            "schema": _bundle.SCHEMA_FEDERATED,
            "round": rid,
            "rounds": rounds,
            "participants": len(participants),
            "devices": participants,
            "clipping_norm": float(clipping_norm),
            "noise_multiplier": float(noise_multiplier),
            "noise_stdv": stdv,
            "epsilon": round_eps,
            "delta": d,
            "accountant": ACCOUNTANT,
        }
        m = base.manifest
        with tempfile.TemporaryDirectory(prefix="livelab-federated-") as tmp:
            model_path, adapter_path = Path(tmp) / "model.onnx", Path(tmp) / "adapter.json"
            model_path.write_bytes(base.model)
            adapter_path.write_bytes(adapter_data)
            try:
                _bundle.build(
                    model_path,
                    out,
                    name=m["name"],
                    version=version,
                    adapter=adapter_path,
                    compute=dict(m["compute"]),
                    slos=m.get("slos"),
                    routing=m.get("routing"),
                    created=created,
                    provenance={
                        "builder": "livelab labs.federated",
                        "parent_bundle": base.digest,
                        "federated": federated,
                    },
                )
            except _bundle.BundleError as exc:
                raise FederatedError(str(exc)) from None
        _write_ledger(home, led)
    cand = _bundle.read(out)
    per_device = {}
    for dev in names:
        e = led["devices"].get(f"{lab.namespace}/{dev}")
        spent = epsilon([r["noise_multiplier"] for r in e["rounds"]], d) if e else 0.0
        dd = done.get(dev) or {}
        per_device[dev] = {
            "joined": dev in joined,
            "participated": dev in participants,
            "reason": skipped.get(dev),
            "epsilon_spent": round(spent, 6),
            "epsilon_budget": e["epsilon_budget"] if e else budget_new,
            "bytes_sent": dd.get("bytes_sent"),
            "bytes_received": dd.get("bytes_received"),
            "client_seconds": dd.get("seconds"),
        }
    summary = {
        "round": rid,
        "bundle": str(out),
        "digest": cand.digest,
        "parent_bundle": base.digest,
        "version": version,
        "adapter_size": len(adapter_data),
        "bias": logit_bias,
        "rounds": rounds,
        "participants": participants,
        "skipped": skipped,
        "noise_multiplier": float(noise_multiplier),
        "clipping_norm": float(clipping_norm),
        "noise_stdv": stdv,
        "epsilon": round_eps,
        "delta": d,
        "accountant": ACCOUNTANT,
        "update_norms": result["rounds"][-1]["update_norms"],
        "history": [
            {
                "round": r["round"],
                "bias": dict(zip(intents, r["bias"])),
                "update_norms": r["update_norms"],
                "noise_stdv": r["noise_stdv"],
            }
            for r in result["rounds"]
        ],
        "signals": result["rounds"][-1]["signals"],
        "devices": per_device,
        "server_seconds": result["seconds"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _record_round(home, lab.conn.namespace, summary)
    return summary


def _serve(home: Path, cfg: dict, timeout: float) -> dict:
    """Run the lab's Flower server process for the round; its result, or FederatedError."""
    with tempfile.TemporaryDirectory(prefix="livelab-federated-server-", dir=home / "federated") as tmp:
        cfg_path, res_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        cfg_path.write_text(json.dumps(cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "labs.federated_server", "--config", str(cfg_path), "--out", str(res_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_home.die_with_parent,
        )
        try:
            _, err = proc.communicate(timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise FederatedError(f"the round's server did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0 or not res_path.exists():
            lines = [ln for ln in (err or "").splitlines() if ln.startswith("federated server:")]
            raise FederatedError(lines[-1] if lines else f"the round's server failed (exit {proc.returncode})")
        return json.loads(res_path.read_text())
