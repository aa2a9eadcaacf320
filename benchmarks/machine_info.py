"""The machine a benchmark ran on, as the benchmarks record it (imported by the sibling scripts)."""
from __future__ import annotations

import os
import platform


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_counts():
    """The CPUs a record names: ``cpus_available``, those this process may run on (its affinity mask,
    capped by a cgroup CPU quota: ``latentinv._cpus.available_cpus``; what the benchmarks size their
    threads to), and ``cpu_count``, the host's (``os.cpu_count()``: more in a container or under ``taskset``)."""
    from latentinv._cpus import available_cpus

    return dict(cpus_available=available_cpus(), cpu_count=os.cpu_count())


def cpus_text():
    """How a benchmark's header names the CPUs: "3 CPUs available (of the host's 64)"."""
    c = cpu_counts()
    host = "" if c["cpu_count"] == c["cpus_available"] else f" (of the host's {c['cpu_count']})"
    return f"{c['cpus_available']} CPUs available{host}"


def peak_added_bytes(fn):
    """The resident memory that ``fn()`` added at its peak, in bytes (Linux): the kernel's high-water mark
    (``VmHWM``), reset through ``/proc/self/clear_refs`` just before, less the resident memory (``VmRSS``)
    then. Run in a fresh process: what the process held before does not count."""
    def status(key):                    # kB in /proc/self/status
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                    # reset VmHWM to the current resident memory
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def cpu_flags():
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def code_info():
    """The latentinv that runs: its version, its folder and, in a git checkout, the commit (with
    "dirty": uncommitted changes to tracked files), so that a record names the code behind its numbers."""
    import subprocess

    import latentinv

    folder = os.path.dirname(latentinv.__file__)
    info = dict(version=latentinv.__version__, file=latentinv.__file__, commit=None, dirty=None)
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            info["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info
