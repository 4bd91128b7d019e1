"""How many intra-op threads torch uses. torch's default, one per core, collapses when another
process holds one of those cores (every parallel region waits for the slowest thread), so the
workbench starts as many threads as there are cores free: the cores this process may run on,
less the other processes' load."""

from __future__ import annotations

import math
import os
from pathlib import Path

from core.errors import WorkbenchError

LOADAVG = Path("/proc/loadavg")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores(loadavg: str | None = None) -> float:
    """Cores other processes keep busy: the larger of the 1-minute load average and the tasks
    running right now (both from /proc/loadavg), less this process's own running threads."""
    try:
        text = loadavg if loadavg is not None else LOADAVG.read_text()
        fields = text.split()
        load1, running = float(fields[0]), int(fields[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(load1 - 1, running - 1, 0.0)  # this process counts once in both


def free_cores(loadavg: str | None = None) -> int:
    """Usable cores not kept busy by others: at least 1."""
    cores = usable_cores()
    return max(1, min(cores, math.floor(cores - busy_cores(loadavg) + 0.5)))


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise WorkbenchError(f"--threads {threads}: give a positive number of threads (or leave it out: the free "
                             "cores)")


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` when given, else what OMP_NUM_THREADS says when it is
    set, else the free cores (under torchrun each process keeps what it was given). Returns the count."""
    import torch

    check_threads(threads)
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return torch.get_num_threads()
        threads = free_cores()
    torch.set_num_threads(threads)
    return threads
