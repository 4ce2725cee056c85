"""A simulated uplink: latency, jitter, first-transmission loss and bandwidth.

Messages are not dropped for good: the lab publishes QoS 1, so a "lost"
transmission costs a retransmission timeout, as it would on a real lossy
Wi-Fi link under TCP.  The link only decides *when* each message may go.
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any, Callable

from lab_hardware.profiles import Link as LinkSpec

#: Delay a lost first transmission adds (TCP's minimum retransmission timeout).
RETRANSMIT_S = 0.2


class Link:
    def __init__(self, spec: LinkSpec, rng: random.Random):
        self.spec = spec
        self.rng = rng
        self._busy_until = 0.0
        self._queue: list[tuple[float, int, Callable[[], Any]]] = []
        self._tie = itertools.count()
        self.perfect = spec.latency_ms == 0 and spec.jitter_ms == 0 and spec.loss == 0 and spec.bandwidth_kbps == 0

    def delay(self, nbytes: int, now: float) -> float:
        """When a message of ``nbytes`` handed over at ``now`` reaches the broker."""
        s = self.spec
        start = max(now, self._busy_until)
        if s.bandwidth_kbps:
            self._busy_until = start + nbytes * 8 / (s.bandwidth_kbps * 1000)
            start = self._busy_until
        t = start + s.latency_ms / 1000
        if s.jitter_ms:
            t += self.rng.uniform(0, s.jitter_ms) / 1000
        if s.loss and self.rng.random() < s.loss:
            t += RETRANSMIT_S
        return t

    def send(self, nbytes: int, now: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (the real publish) now on a perfect link, else when due."""
        if self.perfect:
            fn()
            return
        heapq.heappush(self._queue, (self.delay(nbytes, now), next(self._tie), fn))

    def due(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            heapq.heappop(self._queue)[2]()

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
