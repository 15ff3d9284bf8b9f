"""CPU threads of a training run: ``--threads auto`` (the default) uses the cores other processes leave idle.

torch starts one intra-op thread per core. On a machine where another process keeps a core busy, those threads wait
for each other at every operator: measured here on 2 cores with one busy process, a training step at 2 threads took
about 3x as long as at 1, while on the quiet machine 2 threads were faster than 1 (the benchmark figure "threads" has
the numbers). So ``auto`` measures, while the run loads its model and data, how much CPU time the machine spends
outside this process (``/proc/stat``), and takes the cores left idle, rounded down unless nearly whole (a core that is
busy 25 % of the time or more counts as taken). ``OMP_NUM_THREADS`` in the environment wins over ``auto`` (the
experiment commands set it for their runs); so does a GPU run (torch's default is kept); a number is used as given.
"""

from __future__ import annotations

import logging
import math
import os
import time

__all__ = ["IdleMeter", "THREADS_AUTO", "apply_threads", "auto_threads"]

logger = logging.getLogger("loraplus")

THREADS_AUTO = "auto"
_SLACK = 0.25  # an idle share of at least 0.75 of a core counts as a core


def _machine_cpu_seconds() -> tuple[float, int] | None:
    """(CPU seconds the whole machine has spent busy since boot, number of logical CPUs) from ``/proc/stat``, or None
    where there is no ``/proc/stat`` (not Linux)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    head = lines[0].split()
    if not head or head[0] != "cpu":
        return None
    ticks = [int(x) for x in head[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user and nice]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), cpus


class IdleMeter:
    """How many CPUs other processes leave idle, measured from construction to ``idle()``.

    Over that window: the machine's busy CPU seconds (``/proc/stat``; steal time counts as busy) minus this
    process's own CPU seconds (all its threads), divided by the wall seconds, is the number of CPUs other
    processes kept busy. ``idle()`` returns this process's usable CPUs (its affinity) minus that, or None where
    ``/proc/stat`` is missing.
    """

    def __init__(self):
        self._start = (_machine_cpu_seconds(), time.process_time(), time.perf_counter())

    def idle(self, min_window_s: float = 0.25) -> float | None:
        """Idle CPUs (a float, 0 .. usable CPUs). Sleeps until the window is at least ``min_window_s`` long (the
        kernel counts in ticks of 10 ms, so a shorter window is too coarse)."""
        machine0, own0, wall0 = self._start
        if machine0 is None:
            return None
        wait = min_window_s - (time.perf_counter() - wall0)
        if wait > 0:
            time.sleep(wait)
        machine1, own1, wall1 = _machine_cpu_seconds(), time.process_time(), time.perf_counter()
        others = max(0.0, (machine1[0] - machine0[0]) - (own1 - own0)) / (wall1 - wall0)
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine1[1]
        return max(0.0, min(float(usable), machine1[1] - others))


def auto_threads(idle: float, processes_on_host: int = 1) -> int:
    """Threads for one of ``processes_on_host`` training processes when ``idle`` CPUs are free: the idle CPUs
    shared out, rounded down unless at least 0.75 of a core is left over; at least 1.

    >>> auto_threads(1.93), auto_threads(1.02), auto_threads(1.5), auto_threads(3.9, processes_on_host=2)
    (2, 1, 1, 2)
    """
    return max(1, math.floor(idle / max(1, processes_on_host) + _SLACK))


def apply_threads(threads: int | str, meter: IdleMeter | None, device: str) -> dict:
    """Set torch's intra-op threads for the run; returns what ``config.json`` records:
    ``{"threads": n, "threads_from": "option" | "auto: ..." | "OMP_NUM_THREADS" | "torch default (cuda)"}``.

    ``threads``: a number (used as given) or ``"auto"`` (see the module docstring); ``meter``: started when the run
    began (None: a 0.25 s window now); ``device``: ``"cpu"`` or ``"cuda"``.
    """
    import torch

    if threads != THREADS_AUTO:
        torch.set_num_threads(int(threads))
        return {"threads": int(threads), "threads_from": "option"}
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return {"threads": torch.get_num_threads(), "threads_from": "OMP_NUM_THREADS"}
    if device != "cpu":
        return {"threads": torch.get_num_threads(), "threads_from": f"torch default ({device})"}
    idle = (meter or IdleMeter()).idle()
    if idle is None:
        return {"threads": torch.get_num_threads(), "threads_from": "torch default (no /proc/stat)"}
    n = auto_threads(idle, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(n)
    return {"threads": n, "threads_from": f"auto: {idle:.2f} CPUs idle"}
