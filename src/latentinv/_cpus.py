"""How many CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

``os.cpu_count()`` counts the host's CPUs. In a container limited by a CPU quota (Docker's
``--cpus``, Kubernetes' CPU limits, lent GPU machines) it can be many times the CPUs the process gets;
a pool sized to it runs that many busy threads on the quota, which the kernel throttles by whole
scheduling periods (a thread holding a lock or a barrier then stalls every other one).
"""
from __future__ import annotations

import math
import os

#: cgroup files that hold a CPU quota: v2 ``cpu.max`` ("max 100000" or "QUOTA PERIOD"); v1 the pair below
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_quota(v2=CGROUP_V2_CPU_MAX, v1_quota=CGROUP_V1_QUOTA, v1_period=CGROUP_V1_PERIOD):
    """The cgroup CPU quota in CPUs (a float), or None when there is none or it cannot be read."""
    raw = _read(v2)
    if raw is not None:
        parts = raw.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota, period = _read(v1_quota), _read(v1_period)
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(**cgroup_files):
    """CPUs this process may use: its affinity mask (``os.cpu_count()`` where the platform has none),
    capped by the cgroup quota rounded up; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(**cgroup_files)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)
