"""benchmarks/bench_prior.py's sizing of the SGAN's GPU training to a call's budget (it runs only on a GPU
machine, where a training its timeout stops saves nothing)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_prior  # noqa: E402

from latentinv.sgan import PUBLISHED_N_ITERATIONS  # noqa: E402

GPU_ROW = dict(device="NVIDIA H200", threads=None, batch=32, seconds_per_step=0.05)
CPU_ROW = dict(device="cpu", threads=2, batch=32, seconds_per_step=120.0)


@pytest.mark.parametrize("budget, want", [
    (None, PUBLISHED_N_ITERATIONS),                  # no budget: the published schedule
    (60.0, 1000),                                    # 60 s / (0.05 s x 1.2)
    (1e6, PUBLISHED_N_ITERATIONS),                   # never more than the published schedule
    (0.01, 1),                                       # at least one iteration
])
def test_the_sgan_training_fits_its_budget_at_the_gpus_rate(budget, want):
    results = {"sgan_steps": [CPU_ROW, GPU_ROW]}     # the CPU's rate is not the training's
    assert bench_prior.sgan_iterations_within(budget, results) == want


def test_without_a_measured_rate_it_is_measured(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_prior, "time_sgan_steps", lambda *a: calls.append(a) or 0.1)
    assert bench_prior.sgan_iterations_within(120.0, {"sgan_steps": [CPU_ROW]}) == 1000
    assert len(calls) == 1 and str(calls[0][0]) == "cuda" and calls[0][1] == 32
