"""benchmarks/bench_raytrace.py's timing, run with fake engines (no raytracing): the peers get the same
runs as latentinv, a failing engine (timing or memory probe) is recorded as failed and not as a time
or a NaN, no run is no time, and the record is strict JSON."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_raytrace  # noqa: E402

from latentinv._cpus import available_cpus  # noqa: E402


def fake_engines(monkeypatch, fail=()):
    """Replace every engine by one that returns zeros and counts its F+J calls per (engine, nodes)."""
    calls = Counter()

    def make(name):
        def engine(n, threads, **options):
            def forward(m):
                if name in fail:
                    raise RuntimeError(f"{name} broke")
                return np.zeros(625) if np.ndim(m) == 1 else np.zeros((len(m), 625))

            def forward_jacobian(m):
                calls[name, n] += 1
                return forward(m), None
            return forward, forward_jacobian
        return engine

    engines = {name: make(name) for name in bench_raytrace.ENGINES}
    monkeypatch.setattr(bench_raytrace, "ENGINES", engines)
    monkeypatch.setattr(bench_raytrace, "latentinv_engine", engines["latentinv"])
    monkeypatch.setattr(bench_raytrace, "ttcrpy_engine", engines["ttcrpy"])
    return calls


def run(tmp_path, *extra):
    out = tmp_path / "raytrace.json"
    bench_raytrace.main(["--nodes", "3", "--sweep", "5", "--extrapolate", "--reference-nodes", "8",
                         "--truths", str(tmp_path / "none"), "--skip-memory", "--json", str(out), *extra])
    return strict_json(out)


def strict_json(path):
    """The record, read as strict JSON: Python's json writes NaN and Infinity unless told not to."""
    def refuse(constant):
        raise ValueError(f"{constant} in {path}: not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_the_accuracy_sweep_times_ttcrpy_warm_and_as_often_as_latentinv(tmp_path, monkeypatch):
    calls = fake_engines(monkeypatch)
    record = run(tmp_path, "--repeat", "4")
    # the sweep at 5 nodes: one warm-up F+J and repeat // 2 = 2 timed ones, for each engine alike
    assert calls["ttcrpy", 5] == calls["latentinv", 5] == 3
    assert record["accuracy"]["sweep"][0]["repeats"] == 2
    # the timing table: a warm-up and --repeat runs (one for the Python backend and pyGIMLi), recorded
    repeats = {(r["engine"], r["threads"]): r["repeats"] for r in record["timing"]}
    assert repeats["latentinv", 1] == repeats["ttcrpy", 2] == 4 and repeats["pygimli", 1] == 1
    assert calls["ttcrpy", 3] == 2 * (1 + 4) and calls["pygimli", 3] == 1 + 1


def test_a_failing_peer_is_recorded_as_failed_not_as_a_time(tmp_path, monkeypatch):
    fake_engines(monkeypatch, fail=("pygimli",))
    record = run(tmp_path, "--repeat", "1")
    assert "pygimli" not in {r["engine"] for r in record["timing"]}
    assert record["timing_failed"] == [dict(engine="pygimli", threads=1, error="RuntimeError: pygimli broke")]
    ttcrpy = [r for r in record["timing"] if r["engine"] == "ttcrpy"]
    assert len(ttcrpy) == 2 and all(r["forward_speedup_vs_ttcrpy"] == 1.0 for r in ttcrpy)


@pytest.mark.parametrize("repeat", ["0", "-2"])
def test_no_timing_run_is_refused_not_recorded_as_an_infinite_time(tmp_path, monkeypatch, repeat, capsys):
    fake_engines(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        run(tmp_path, "--repeat", repeat)
    assert exit_.value.code == 2 and "--repeat must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "raytrace.json").exists()


def test_a_failing_memory_probe_is_recorded_with_its_error_not_as_nan(tmp_path, monkeypatch):
    """A memory probe whose subprocess failed was recorded as NaN (written as NaN, not JSON), its error lost;
    one that ran past its timeout ended the benchmark (TimeoutExpired) after its timing runs."""
    fake_engines(monkeypatch)
    real_run = subprocess.run

    def probe(cmd, **kwargs):          # the memory probes' subprocesses; anything else (git) runs
        if cmd[0] != sys.executable:
            return real_run(cmd, **kwargs)
        if "ENGINES['pygimli']" in cmd[-1]:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback (most recent call last):\n  ...\n"
                                           "ModuleNotFoundError: No module named 'pygimli'\n")
        if "ENGINES['ttcrpy'](3, 2)" in cmd[-1]:
            return subprocess.CompletedProcess(cmd, -9, "", "")          # killed (the OOM killer)
        if "ENGINES['latentinv-python'](3, 1)" in cmd[-1]:
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])      # past the probe's 900 s
        return subprocess.CompletedProcess(cmd, 0, "12.5\n", "")
    monkeypatch.setattr(bench_raytrace.subprocess, "run", probe)
    out = tmp_path / "raytrace.json"
    bench_raytrace.main(["--nodes", "3", "--repeat", "1", "--sweep", "5", "--extrapolate", "--reference-nodes",
                         "8", "--truths", str(tmp_path / "none"), "--json", str(out)])
    record = strict_json(out)
    assert record["memory_failed"] == [
        dict(engine="latentinv-python", threads=1, error="the probe's subprocess timed out after 900 s"),
        dict(engine="ttcrpy", threads=2, error="the probe's subprocess ended with exit status -9 and no error output"),
        dict(engine="pygimli", threads=1, error="ModuleNotFoundError: No module named 'pygimli'")]
    assert [(r["engine"], r["threads"]) for r in record["memory"]] == [
        ("latentinv", 1), ("latentinv", 2), ("latentinv-dijkstra", 1), ("latentinv-dijkstra", 2),
        ("ttcrpy", 1)]
    assert {r["peak_rss_growth_mib"] for r in record["memory"]} == {12.5}
    # the CPUs the record names: those the process may run on, and the host's
    assert (record["machine"]["cpus_available"], record["machine"]["cpu_count"]) == (available_cpus(), os.cpu_count())
