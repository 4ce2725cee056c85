"""Federated adapters, the device's side: its own undo signals, a local fit, a Flower client.

A device keeps, on the device and only while it has ``telemetry`` consent, the signals of its
recent decisions (:class:`SignalBuffer`): the active bundle's probabilities, the label it chose
and whether the user undid it.  Nothing of it is published; withdrawing telemetry consent
erases it.  When the lab runs a federated round (``labs.federated``) a device that joins fits a
small adapter on those signals alone - a per-intent logit bias (``livelab.adapter/v1``, the
bundle adapter devices already apply) - and sends only the new bias to the lab's Flower server,
which clips each update and adds Gaussian noise to their mean (central DP, at aggregation only).

:func:`fit_bias` is the local objective: a decision the user kept is taken as right
(cross-entropy on its label), one the user undid as wrong (``-log(1 - p'(label))``, the
complementary-label loss), with ``p' = softmax(log p + bias)`` exactly as the adapter applies.
A model that keeps making a decision its users undo (the candidate's ``call``) gets that
intent's bias pushed down.

:func:`run_client` runs the Flower client (``flwr``, imported here only when a round runs) over
gRPC, through :class:`Relay`: a loopback TCP relay that counts the bytes on the wire in both
directions and shapes them like the device's link (latency, jitter, bandwidth of its profile).
"""

from __future__ import annotations

import math
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Decisions a device keeps for federated rounds (newest), per device: about 6 minutes at 50 Hz.
SIGNAL_LIMIT = 20_000
#: The local fit: full-batch gradient steps, step size, L2 pull towards the round's start.
FIT_STEPS = 150
FIT_LR = 2.0
FIT_L2 = 0.01
#: Probabilities are floored here before the log (a model's hard zero would give -inf).
P_FLOOR = 1e-6


class FederatedError(ValueError):
    """A federated round (or a device's part in it) that is refused: one line."""


class SignalBuffer:
    """The device's own undo signals: (probabilities, label, undone) of its recent decisions,
    under the bundle that made them; a preallocated ring of at most ``limit`` decisions (adding
    costs what the batch costs, not what the buffer holds)."""

    def __init__(self, k: int, limit: int = SIGNAL_LIMIT):
        self.k, self.limit = k, limit
        self._lock = threading.Lock()
        self._probs = np.zeros((limit, k), dtype=np.float32)
        self._labels = np.zeros(limit, dtype=np.int64)
        self._undone = np.zeros(limit, dtype=bool)
        self._bundle: str | None = None
        self._next = 0  # decisions ever added under the current bundle

    def clear(self) -> None:
        with self._lock:
            self._bundle, self._next = None, 0

    def __len__(self) -> int:
        return min(self._next, self.limit)

    def count(self, bundle: str | None) -> int:
        """How many signals of ``bundle`` it holds (0 for another bundle): what a round of
        ``bundle`` would get.  A device's state reports this for the bundle it runs."""
        with self._lock:
            return min(self._next, self.limit) if bundle is not None and bundle == self._bundle else 0

    def add(self, bundle: str, probs: np.ndarray, labels: np.ndarray, undone: np.ndarray) -> None:
        n = len(labels)
        if n == 0:
            return
        with self._lock:
            if bundle != self._bundle:  # another bundle's probabilities are not this one's signals
                self._bundle, self._next = bundle, 0
            if n > self.limit:
                probs, labels, undone = probs[-self.limit :], labels[-self.limit :], undone[-self.limit :]
                self._next += n - self.limit
                n = self.limit
            idx = (self._next + np.arange(n)) % self.limit
            self._probs[idx] = probs
            self._labels[idx] = labels
            self._undone[idx] = undone
            self._next += n

    def snapshot(self, bundle: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the signals made under ``bundle``, oldest first (empty for another bundle)."""
        with self._lock:
            if bundle != self._bundle or self._next == 0:
                return self._probs[:0].copy(), self._labels[:0].copy(), self._undone[:0].copy()
            n = min(self._next, self.limit)
            idx = (self._next - n + np.arange(n)) % self.limit
            return self._probs[idx], self._labels[idx], self._undone[idx]


def adapted(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``softmax(log p + bias)`` in float64: what the adapter makes of ``probs`` (up to rounding)."""
    z = np.log(np.maximum(np.asarray(probs, dtype=np.float64), P_FLOOR)) + np.asarray(bias, dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grad(
    probs: np.ndarray, labels: np.ndarray, undone: np.ndarray, bias: np.ndarray, start: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean loss over the decisions and its gradient in ``bias`` (see the module doc)."""
    q = adapted(probs, bias)
    n, k = q.shape
    rows = np.arange(n)
    py = np.clip(q[rows, labels], 1e-12, 1 - 1e-12)
    onehot = np.zeros_like(q)
    onehot[rows, labels] = 1.0
    kept = ~undone
    loss = float(-np.log(py[kept]).sum() - np.log1p(-py[undone]).sum()) / max(n, 1)
    g = np.zeros(k)
    if kept.any():
        g += (q[kept] - onehot[kept]).sum(axis=0)
    if undone.any():
        w = (py[undone] / (1 - py[undone]))[:, None]
        g += (w * (onehot[undone] - q[undone])).sum(axis=0)
    g /= max(n, 1)
    d = bias - start
    return loss + 0.5 * FIT_L2 * float(d @ d), g + FIT_L2 * d


def fit_bias(
    probs: np.ndarray, labels: np.ndarray, undone: np.ndarray, start: np.ndarray, *, steps: int = FIT_STEPS
) -> np.ndarray:
    """The local fit: ``steps`` full-batch gradient steps from the round's bias ``start``."""
    start = np.asarray(start, dtype=np.float64)
    b = start.copy()
    if len(labels) == 0:
        return b
    for _ in range(steps):
        _, g = loss_and_grad(probs, labels, undone, b, start)
        b -= FIT_LR * g
    return b


# ---- the wire --------------------------------------------------------------------------
@dataclass
class LinkShape:
    """The device's link (its profile's ``[link]``): each chunk waits latency (+ jitter) and
    its size over the bandwidth, in order, as on a slow uplink."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_kbps: float = 0.0

    def delay(self, nbytes: int, rng: random.Random) -> float:
        d = self.latency_ms / 1000.0
        if self.jitter_ms:
            d += rng.uniform(0, self.jitter_ms) / 1000.0
        if self.bandwidth_kbps:
            d += nbytes * 8 / (self.bandwidth_kbps * 1000.0)
        return d


class Relay:
    """A loopback TCP relay between a device's Flower client and the lab's server: it counts
    the bytes on the wire each way (gRPC over HTTP/2, as sent) and shapes them like the link.

    ``listen()`` returns the local address the client dials; the upstream connection is made
    when the client connects, retried until ``connect_timeout`` (the server may come up a
    moment after the device joined)."""

    def __init__(self, upstream: tuple[str, int], shape: LinkShape | None = None, *, seed: int = 0):
        self.upstream = upstream
        self.shape = shape or LinkShape()
        self.rng = random.Random(seed)
        self.sent = 0  # device -> server
        self.received = 0  # server -> device
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(4)
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self.connect_timeout = 30.0

    def listen(self) -> str:
        t = threading.Thread(target=self._accept, name="federated-relay", daemon=True)
        t.start()
        self._threads.append(t)
        return f"127.0.0.1:{self._srv.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._srv.accept()
            except OSError:
                return
            deadline = time.monotonic() + self.connect_timeout
            up = None
            while up is None and time.monotonic() < deadline and not self._closed.is_set():
                try:
                    up = socket.create_connection(self.upstream, timeout=2.0)
                    up.settimeout(None)
                except OSError:
                    time.sleep(0.05)
            if up is None:
                down.close()
                continue
            for src, dst, attr in ((down, up, "sent"), (up, down, "received")):
                t = threading.Thread(target=self._pump, args=(src, dst, attr), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, attr: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                setattr(self, attr, getattr(self, attr) + len(data))
                wait = self.shape.delay(len(data), self.rng)
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        try:
            self._srv.close()
        except OSError:
            pass


# ---- the Flower client -----------------------------------------------------------------
def run_client(
    server: tuple[str, int],
    signals: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    device: str,
    shape: LinkShape | None = None,
    slowdown: float = 1.0,
    seed: int = 0,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Take part in a round: connect to the lab's Flower server, fit on ``signals`` for every
    round it asks, send the new bias; returns what happened (rounds, bytes each way, seconds).

    ``slowdown`` (the profile's inference slowdown) stretches the fit's CPU time as the device
    would take it.  Raises :class:`FederatedError` (one line) when the round fails."""
    import logging

    import flwr.client
    from flwr.client import NumPyClient

    logging.getLogger("flwr").setLevel(logging.ERROR)  # not its deprecation notices
    probs, labels, undone = signals
    stats: dict[str, Any] = {"rounds": 0, "fit_ms": 0.0}

    class _Client(NumPyClient):
        def get_parameters(self, config: dict) -> list[np.ndarray]:
            return [np.zeros(probs.shape[1], dtype=np.float64)]

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
            c0 = time.thread_time()
            start = np.asarray(parameters[0], dtype=np.float64)
            if start.shape != (probs.shape[1],) or not np.isfinite(start).all():
                raise FederatedError(f"the server sent a bias of shape {start.shape}, not ({probs.shape[1]},)")
            new = fit_bias(probs, labels, undone, start)
            cpu = time.thread_time() - c0
            if slowdown > 1:
                time.sleep(cpu * (slowdown - 1))
            stats["rounds"] += 1
            stats["fit_ms"] += cpu * 1000.0 * max(1.0, slowdown)
            # num_examples 1: every device weighs the same in the mean, so one device's
            # influence is bounded by the clipping norm (what the DP noise is calibrated to)
            return (
                [new],
                1,
                {"device": device, "signals": int(len(labels)), "undone": int(undone.sum())},
            )

        def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
            return 0.0, 1, {}

    relay = Relay(server, shape, seed=seed)
    local = relay.listen()
    t0 = time.perf_counter()
    box: dict[str, BaseException] = {}

    def go() -> None:
        try:
            flwr.client.start_client(server_address=local, client=_Client().to_client(), insecure=True)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller as one line
            box["error"] = exc

    t = threading.Thread(target=go, name="federated-client", daemon=True)
    t.start()
    t.join(timeout)
    relay.close()
    if t.is_alive():
        raise FederatedError(f"the round did not finish within {timeout:.0f} s")
    if "error" in box:
        exc = box["error"]
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise FederatedError(f"the Flower client failed: {type(exc).__name__}: {first}")
    if not stats["rounds"]:
        raise FederatedError("the server ended the round without asking this device to fit")
    return {
        "rounds": stats["rounds"],
        "bytes_sent": relay.sent,
        "bytes_received": relay.received,
        "fit_ms": round(stats["fit_ms"], 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def check_bias(values: Any, k: int) -> np.ndarray:
    """A bias vector of ``k`` finite numbers (from a file or a message), else FederatedError."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise FederatedError(f"a bias must be {k} numbers") from None
    if arr.shape != (k,) or not all(math.isfinite(v) for v in arr.tolist()):
        raise FederatedError(f"a bias must be {k} finite numbers")
    return arr
