"""Opt-in phase timers (``--profile``): time per phase and images per second, per run.

The loops call ``profiler.phase(name)`` around data loading, forward, backward and evaluation.
The default ``NULL_PROFILER`` makes those calls no-ops, so an unprofiled run pays nothing;
a ``Profiler`` synchronises CUDA at phase boundaries so that asynchronous kernels are charged
to the phase that launched them.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch


class NullProfiler:
    """Does nothing; the default of every adapter and evaluation."""

    enabled = False

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def count(self, name: str, n: int) -> None:
        """Record that ``n`` images went through ``name`` (ignored)."""


class Profiler(NullProfiler):
    """Accumulates wall time per phase and images per counter."""

    enabled = True

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.images: dict[str, int] = defaultdict(int)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - t

    def count(self, name: str, n: int) -> None:
        self.images[name] += int(n)

    def summary(self) -> dict[str, Any]:
        """``seconds`` per phase, ``images`` per counter and ``images_per_s`` of adapt and evaluate.

        ``adapt_total`` is the whole ``adapt`` call; ``adapt_other`` the part outside the loop's
        phases (before-adapt statistics such as UEO's weights). A method with its own loop (TENT)
        reports ``adapt_total`` only.
        """
        adapt_s = sum(self.seconds.get(k, 0.0) for k in ("data", "forward", "backward"))
        rates = {}
        if adapt_s > 0 and self.images.get("adapt"):
            rates["adapt"] = self.images["adapt"] / adapt_s
            self.seconds["adapt_other"] = max(self.seconds.get("adapt_total", 0.0) - adapt_s, 0.0)
        if self.seconds.get("evaluate") and self.images.get("evaluate"):
            rates["evaluate"] = self.images["evaluate"] / self.seconds["evaluate"]
        return {"seconds": dict(self.seconds), "images": dict(self.images), "images_per_s": rates}


NULL_PROFILER = NullProfiler()
