"""The replay sandbox: one process, no broker, no network, one replay.

:func:`lab_hardware.modelops.replay.run` starts this module under ``unshare -rn`` (its
own user and network namespace: no interface but a loopback that is down), so
a model or adapter cannot reach anything, not even the lab's broker on the
host's loopback.  Inside, the socket constructors are replaced as well, so
any network attempt fails loudly instead of timing out.  The replay goes
through the device's own feature extraction and onnxruntime session options
(:mod:`lab_hardware.inference`), in fixed batches, and the output has no
timestamps: the same replay and model give the same bytes in every process.

Internal interface (stable for :mod:`lab_hardware.modelops.replay` only)::

    python -m lab_hardware.modelops.replay_sandbox --replay R --model M --out O [--threads N] [--cpu C]
    python -m lab_hardware.modelops.replay_sandbox --probe-network HOST:PORT

One JSON result line on stdout; bad input is one ``error: ...`` line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

#: Records per feature/model batch: fixed, so results never depend on how a run is cut.
BATCH = 1024


class NetworkBlocked(RuntimeError):
    """Raised by every socket constructor once :func:`block_network` ran."""


def _blocked(*args, **kwargs):
    raise NetworkBlocked("network access is disabled in the replay sandbox")


def block_network() -> None:
    """Make any socket creation or connection attempt in this process raise."""
    import _socket
    import socket

    for mod in (socket, _socket):
        for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"):
            if hasattr(mod, name):
                setattr(mod, name, _blocked)


def interfaces() -> list[str]:
    """Network interfaces of this process's network namespace."""
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


def _isolated(ifaces: list[str]) -> bool:
    return bool(ifaces) and set(ifaces) <= {"lo"}


def _load_model(path: Path, threads: int):
    """(decide, intents, digest) for a raw .onnx or a .lbundle, with ``threads`` intra-op threads."""
    import onnxruntime as ort

    from lab_hardware import inference
    from lab_hardware.digest import file_digest

    def rethread(model, src) -> None:
        if threads != 1:
            so = inference.session_options()
            so.intra_op_num_threads = threads
            model.session = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])

    if path.suffix == ".lbundle":
        from lab_hardware.modelops import bundle as _bundle

        b = _bundle.read(path)
        m = b.load_model()
        rethread(m, b.model)
        return b.decide, list(b.intents), b.digest
    try:
        m = inference.Model(path)
    except Exception as exc:  # onnxruntime raises its own exception types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {path} cannot be loaded ({msg})") from None
    rethread(m, str(path))
    return m.predict, list(m.intents), file_digest(path)


def replay(replay_path: Path, model_path: Path, out: Path, threads: int) -> dict:
    import numpy as np

    from lab_hardware import features
    from lab_hardware.modelops import replay as _replay
    from lab_hardware.digest import signal_digests

    t_load = time.perf_counter()
    decide, intents, model_digest = _load_model(model_path, threads)
    load_seconds = time.perf_counter() - t_load
    block_network()  # everything is imported: from here on no socket can be made
    ifaces = interfaces()

    t0 = time.perf_counter()
    rp = _replay.read(replay_path)
    recs = rp.records
    capture_bundle = rp.bundle
    same = capture_bundle == model_digest
    key = capture_bundle if same else model_digest
    intent_json = [json.dumps(i) for i in intents]
    counts = [0] * max(len(intents), 1)
    other: dict[int, int] = {}
    matches = changed = 0
    chunks: list[str] = []
    for start in range(0, len(recs), BATCH):
        batch = recs[start : start + BATCH]
        x = features.extract_batch([r["text"] for r in batch])
        labels, probs = decide(x)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1).tolist()
        probs = np.ascontiguousarray(probs, dtype="<f4")
        raw = probs.tobytes()
        w = probs.shape[1] * 4 if probs.ndim == 2 else 0
        digests: list[str] = []
        i = 0
        while i < len(batch):  # signal_digests numbers consecutive decisions; captures may have gaps
            j = i + 1
            first = batch[i]["decision"]
            while j < len(batch) and batch[j]["decision"] == first + (j - i):
                j += 1
            digests += signal_digests(x[i:j], key, first)
            i = j
        lines = []
        for k, rec in enumerate(batch):
            label = labels[k]
            d = digests[k]
            ok = d == rec["digest"]
            matches += ok
            changed += label != rec["label"]
            if 0 <= label < len(intents):
                counts[label] += 1
                ij = intent_json[label]
            else:
                other[label] = other.get(label, 0) + 1
                ij = "null"
            lines.append(
                f'{{"decision":{rec["decision"]},"digest":"{d}","digest_ok":{"true" if ok else "false"},'
                f'"intent":{ij},"label":{label},"probs":"{raw[k * w : (k + 1) * w].hex()}"}}\n'
            )
        chunks.append("".join(lines))
    summary = {
        "schema": _replay.SCHEMA_OUTPUT,
        "summary": True,
        "records": len(recs),
        "model_digest": model_digest,
        "capture_bundle": capture_bundle,
        "same_model": same,
        "digest_matches": matches,
        "labels_changed": changed,
        "features": features.SCHEMA,
        "replay_records_sha256": rp.records_sha256,
        "counts": {
            **{name: counts[i] for i, name in enumerate(intents)},
            **{str(k): v for k, v in sorted(other.items())},
        },
    }
    chunks.append(json.dumps(summary, sort_keys=True, separators=(",", ":")) + "\n")
    data = "".join(chunks).encode()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    seconds = time.perf_counter() - t0
    return {
        "records": len(recs),
        "seconds": seconds,
        "output_sha256": hashlib.sha256(data).hexdigest(),
        "digest_matches": matches,
        "labels_changed": changed,
        "same_model": same,
        "model_digest": model_digest,
        "capture_bundle": capture_bundle,
        "model_load_seconds": load_seconds,
        "interfaces": ifaces,
        "netns_isolated": _isolated(ifaces),
        "network_guard": True,
    }


def probe(target: str) -> dict:
    """Try ``host:port`` at the socket layer (is there a network?), then through the guard."""
    host, _, port = target.rpartition(":")
    import _socket

    ifaces = interfaces()
    try:
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((host, int(port)))
            layer = "connected"
        finally:
            s.close()
    except OSError as exc:
        layer = f"blocked: {type(exc).__name__}: {exc.strerror or exc}"
    block_network()
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        guard = "connected"
    except NetworkBlocked as exc:
        guard = f"blocked: {exc}"
    except OSError as exc:
        guard = f"blocked: {type(exc).__name__}: {exc.strerror or exc}"
    return {
        "namespace": layer,
        "guard": guard,
        "interfaces": ifaces,
        "netns_isolated": _isolated(ifaces),
        "network_guard": True,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab_hardware.modelops.replay_sandbox", description=__doc__.splitlines()[0]
    )
    p.add_argument("--replay", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu", type=int, help="pin this process to one CPU")
    p.add_argument("--probe-network", metavar="HOST:PORT")
    args = p.parse_args(argv)
    try:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        if args.probe_network:
            result = probe(args.probe_network)
        else:
            if not (args.replay and args.model and args.out):
                raise ValueError("--replay, --model and --out are required")
            result = replay(args.replay, args.model, args.out, args.threads)
    except (ValueError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
