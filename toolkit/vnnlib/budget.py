"""Time budget of one ``verify``: measured from process start, stopped with a safety margin.

A driver (the conformance suite, VNN-COMP scripts) kills the solver at exactly ``--timeout`` seconds after
starting it, so the search stops at ``timeout - max(1 s, 10 %)`` (minus the time already spent before
``main`` ran, read from /proc) and there is time left to print the answer.
"""
from __future__ import annotations

import math
import os
import time


def seconds_since_process_start() -> float:
    """Wall time since this process started (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Deadline:
    """``timeout`` seconds (None: no limit) counted from ``already`` seconds ago."""

    def __init__(self, timeout: float | None, already: float = 0.0, margin: float | None = None):
        self.start = time.monotonic() - already
        if timeout is None:
            self.stop = math.inf
        else:
            margin = max(1.0, 0.1 * timeout) if margin is None else margin
            self.stop = self.start + max(0.0, timeout - margin)
        self.timeout = timeout

    @classmethod
    def from_process_start(cls, timeout):
        return cls(timeout, already=seconds_since_process_start())

    def remaining(self) -> float:
        return self.stop - time.monotonic()

    def expired(self, need: float = 0.0) -> bool:
        """True when less than ``need`` seconds are left."""
        return self.remaining() <= need

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def sub(self, fraction: float) -> "Deadline":
        """A deadline at ``fraction`` of the time that is left (never later than this one)."""
        d = Deadline(None)
        d.start = self.start
        rem = self.remaining()
        d.stop = self.stop if math.isinf(rem) else time.monotonic() + max(0.0, rem) * fraction
        return d
