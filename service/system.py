"""Facts about the machine we run on, read where they are decided (the cgroup), not guessed."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cpu_quota() -> int:
    """CPUs this process may really use: affinity, capped by a cgroup v2/v1 CPU quota.

    os.cpu_count() reports the host's cores, which in a container can be many times the quota;
    sizing thread pools from it oversubscribes the CPU and raises latency for everyone.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0:
                cpus = min(cpus, max(1, math.ceil(q / p)))
        except (OSError, ValueError):
            pass
    return cpus
