"""available_cpus: the affinity mask capped by a cgroup CPU quota (v2 and v1 files); the command line
and the benchmarks count those CPUs, not the host's."""
import math
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from latentinv import _cpus
from latentinv._cpus import available_cpus, cgroup_cpu_quota


def files(tmp_path, v2=None, v1=None):
    """cgroup file paths under tmp_path holding ``v2`` (cpu.max text) or ``v1`` (quota, period)."""
    paths = dict(v2=str(tmp_path / "cpu.max"), v1_quota=str(tmp_path / "q"), v1_period=str(tmp_path / "p"))
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "q").write_text(f"{v1[0]}\n")
        (tmp_path / "p").write_text(f"{v1[1]}\n")
    return paths


def affinity():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("v2, v1, quota", [
    ("max 100000", None, None),              # v2 without a limit
    ("max 100000", (200000, 100000), None),  # v2 decides where its file exists: v1's files are not read
    ("250000 100000", None, 2.5),            # v2: 2.5 CPUs
    ("50000 100000", None, 0.5),
    (None, (-1, 100000), None),              # v1 without a limit
    (None, (400000, 100000), 4.0),           # v1: 4 CPUs
    (None, None, None),                      # no cgroup files
    ("garbage", None, None), ("a b", None, None), (None, ("x", 100000), None),
    ("0 100000", None, None), ("100000 0", None, None),
])
def test_quota_files(tmp_path, v2, v1, quota):
    got = cgroup_cpu_quota(**files(tmp_path, v2, v1))
    assert got == quota
    n = available_cpus(**files(tmp_path, v2, v1))
    assert n == (affinity() if quota is None else max(1, min(affinity(), math.ceil(quota))))


@given(quota=st.integers(1, 10**7), period=st.integers(1000, 10**6))
def test_quota_caps_affinity(tmp_path_factory, quota, period):
    d = tmp_path_factory.mktemp("cg")
    n = available_cpus(**files(d, v2=f"{quota} {period}"))
    assert 1 <= n <= affinity()
    assert n == min(affinity(), max(1, math.ceil(quota / period)))


def test_this_machine():
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_the_cli_and_the_benchmarks_count_the_cpus_the_process_may_run_on(monkeypatch):
    """``--threads``' bound, bench_scaleout.py's thread counts and the benchmarks' machine lines were
    ``os.cpu_count()``: the host's CPUs, not those of a process under ``taskset`` or in a container."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)   # taskset -c 0-2
    monkeypatch.setattr(os, "cpu_count", lambda: 64)                                     # on a 64-CPU host
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda **files: None)
    from latentinv import cli
    assert cli._max_threads() == 4 * 3
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_scaleout
        import machine_info
    finally:
        sys.path.pop(0)
    assert bench_scaleout.serial_threads() == [1, 3]
    assert machine_info.cpu_counts() == dict(cpus_available=3, cpu_count=64)
    assert ", 3 CPUs available (of the host's 64)," in bench_scaleout.machine()
    monkeypatch.setattr(os, "cpu_count", lambda: 3)                                      # all of them
    assert machine_info.cpus_text() == "3 CPUs available"
