"""Facts about the machine we run on, read where they are decided (the cgroup), not guessed."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """Environment for worker processes started inside: one BLAS / OpenMP thread each.

    With one worker per core, a multi-threaded BLAS in each (the spline solve) only fights the
    other workers and onnxruntime for the same cores: measured, the ~170x170 solve went from
    ~3 ms to 80-130 ms.  Libraries read these when they load, so set them before the spawn.
    """
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
