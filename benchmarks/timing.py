"""Timing, memory and machine facts shared by every benchmark.

Timings are wall-clock ``time.perf_counter`` intervals around calls that return host values
(``float(loss)``, ``numpy()``), so asynchronous work is inside the interval. Throughput is
reported from the median interval, which a single slow call (a page fault, another process)
does not move.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Optional


@dataclasses.dataclass
class Timing:
    """Seconds per call of ``times`` (after the warm-up calls)."""

    times: List[float]
    first_s: Optional[float] = None  # the first call, which traces and compiles

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def min_s(self) -> float:
        return min(self.times)

    def per_second(self, items_per_call: int) -> float:
        """Items per second at the median call time."""
        return items_per_call / self.median_s

    def to_json(self) -> Dict[str, Any]:
        return {"times": self.times, "first_s": self.first_s, "median_s": self.median_s}


def _warm_up(fn: Callable[[], Any], calls: int) -> Optional[float]:
    """Calls ``fn`` ``calls`` times; returns the duration of the first call (None if none)."""
    first = None
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - t0
    return first


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 1) -> Timing:
    """Calls ``fn`` ``warmup`` times (the first is reported as ``first_s``), then times ``iters`` calls.

    Raises:
      ValueError: ``iters < 1`` or ``warmup < 0``.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0. Received: iters={iters}, warmup={warmup}")
    first = _warm_up(fn, warmup)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(times, first)


def time_alternating(fns: Dict[str, Callable[[], Any]], rounds: int, calls_per_round: int = 1,
                     warmup: int = 1) -> Dict[str, Timing]:
    """Times several callables in alternation: round r runs each of ``fns`` ``calls_per_round`` times.

    Alternating spreads slow drift (thermal, another process) evenly over the contenders, so
    their ratio is fairer than from back-to-back runs. Each is first called ``warmup`` times.
    """
    if rounds < 1 or calls_per_round < 1:
        raise ValueError(f"rounds and calls_per_round must be >= 1. Received: {rounds}, {calls_per_round}")
    out = {name: Timing([], _warm_up(fn, warmup)) for name, fn in fns.items()}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].times.extend(time_calls(fn, iters=calls_per_round, warmup=0).times)
    return out


def reset_peak_rss() -> bool:
    """Resets this process's peak resident set size (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB since start or the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    """The SIMD extensions that matter for TF kernels (avx, avx2, avx512*, fma, amx...)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(x for x in flags if x.startswith(("avx", "fma", "amx", "sse4")))
    except OSError:
        pass
    return []


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> Dict[str, Any]:
    """Machine, load and library versions for a results header."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    info: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cpus": usable_cpus(),
        "simd": " ".join(cpu_flags()),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for module in ("tensorflow", "keras", "ai_edge_litert", "torch"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "?")
        except ImportError:
            info[module] = "not installed"
    return info
