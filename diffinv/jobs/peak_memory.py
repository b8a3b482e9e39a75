"""The peak memory of a block of work (:class:`PeakMemory`), recorded with each benchmark item.

Example:
    >>> with PeakMemory(device) as memory:
    ...     out = inverter.invert(features)
    >>> memory.peak_mb
"""

from __future__ import annotations

import os
import resource
import threading

import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Peak memory of a block of work, in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` (reset on entry). CPU: the process's
    resident set size, sampled every few milliseconds by a thread (the honest peak of
    this block, not of the whole process so far).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device, self.interval, self.peak_mb = torch.device(device), interval, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._stop = threading.Event()
        self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, _rss_bytes()) / 2**20
        return False


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
