"""Timing helpers shared by every measurement: wall and CPU clocks, repetition, medians."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

from leap_rl.config import RunConfig


@dataclass(frozen=True)
class Timing:
    """``iters`` repetitions took ``wall`` seconds of wall clock and ``cpu`` of process CPU."""

    iters: int
    wall: float
    cpu: float

    def rate(self, per_iter: float, clock: str = "wall") -> float:
        seconds = self.wall if clock == "wall" else self.cpu
        return self.iters * per_iter / max(seconds, 1e-12)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def repeat(step: Callable[[], Any], seconds: float, warmup: int = 2, min_iters: int = 3) -> Timing:
    """Run ``step`` for about ``seconds`` (at least ``min_iters`` times) after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    w0, c0 = clocks()
    iters = 0
    while True:
        step()
        iters += 1
        w, c = clocks()
        if iters >= min_iters and w - w0 >= seconds:
            return Timing(iters, w - w0, c - c0)


def median_timing(timings: list[Timing], per_iter: float) -> tuple[float, float]:
    """Median wall and CPU rates over repetitions."""
    return (statistics.median(t.rate(per_iter, "wall") for t in timings),
            statistics.median(t.rate(per_iter, "cpu") for t in timings))


def with_network(cfg: RunConfig, network: str) -> RunConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, network=network))


def serial_limit(*rates: float) -> float:
    """Env steps/s when work at these rates (env steps/s each) runs one after the other."""
    return 1.0 / sum(1.0 / r for r in rates)


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a local process (Linux), None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return float(sum(values) - idle), float(sum(values))
    except (OSError, ValueError, IndexError):
        return None
