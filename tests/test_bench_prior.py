"""benchmarks/bench_prior.py's GPU training of the published SGAN within a call's budget: in parts on one
checkpoint, each started only when it should end in time (it runs only on a GPU machine, where a
training cut by the call's timeout would otherwise leave nothing)."""
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_prior  # noqa: E402

GPU_ROW = dict(device="NVIDIA H200", threads=None, batch=32, seconds_per_step=0.05)
CPU_ROW = dict(device="cpu", threads=2, batch=32, seconds_per_step=120.0)


class Clock:
    """A fake clock that a fake training advances by its iterations' cost and a fixed cost per part; the
    rate of part k is ``rate`` times ``factors[k]`` (cycled): a GPU's speed varies from part to part."""

    def __init__(self, rate, overhead, factors=(1.0,)):
        self.now, self.rate, self.overhead, self.factors, self.fits = 0.0, rate, overhead, factors, []

    def __call__(self):
        return self.now

    def fit_to(self, n):
        done = self.fits[-1] if self.fits else 0
        assert n > done                          # every part trains
        factor = self.factors[len(self.fits) % len(self.factors)]
        self.fits.append(n)
        self.now += (n - done) * self.rate * factor + self.overhead
        return f"prior at {n}"


def test_the_gpu_rate_is_taken_not_the_cpus(monkeypatch):
    assert bench_prior.cuda_sgan_rate({"sgan_steps": [CPU_ROW, GPU_ROW]}) == 0.05
    calls = []
    monkeypatch.setattr(bench_prior, "time_sgan_steps", lambda *a: calls.append(a) or 0.1)
    assert bench_prior.cuda_sgan_rate({"sgan_steps": [CPU_ROW]}) == 0.1      # measured when absent
    assert len(calls) == 1 and str(calls[0][0]) == "cuda" and calls[0][1] == 32


def test_a_schedule_that_fits_runs_whole_in_parts_of_about_part_seconds():
    clock = Clock(rate=0.05, overhead=0.5)
    prior, done, parts = bench_prior.train_in_parts(clock.fit_to, 1850, 1e4, 0.05, part_seconds=30.0,
                                                    clock=clock)
    assert (prior, done) == ("prior at 1850", 1850)
    # the first part a quarter of 30 s at the given rate (150 iterations, 8 s with the fixed cost), the next
    # ones 30 s at the rate measured, fixed cost included (0.0533 s: 562, then 0.0509 s: 589)
    assert clock.fits == [150, 712, 1301, 1850]
    assert parts == [(150, pytest.approx(8.0)), (562, pytest.approx(28.6)), (589, pytest.approx(29.95)),
                     (549, pytest.approx(27.95))]


def test_nothing_runs_when_not_one_iteration_fits():
    clock = Clock(rate=1.0, overhead=0.0)
    assert bench_prior.train_in_parts(clock.fit_to, 100, 1.1, 1.0, clock=clock) == (None, 0, [])
    assert clock.fits == []


def test_a_carried_on_training_counts_from_its_checkpoint():
    clock = Clock(rate=0.1, overhead=0.0)
    clock.fits = [40]                                  # the checkpoint's 40 iterations
    _, done, parts = bench_prior.train_in_parts(clock.fit_to, 100, 1e4, 0.1, done=40, clock=clock)
    assert done == 100 and sum(n for n, _ in parts) == 60 and clock.fits[0] == 40


@settings(max_examples=400, deadline=None)
@given(rate=st.floats(0.01, 2.0), misjudged=st.floats(0.25, 4.0), overhead=st.floats(0.0, 5.0),
       budget=st.floats(1.0, 600.0), part_seconds=st.floats(1.0, 60.0), total=st.integers(1, 2000),
       factors=st.lists(st.floats(0.93, 1.07), min_size=1, max_size=5))
def test_parts_end_in_time_and_use_it(rate, misjudged, overhead, budget, part_seconds, total, factors):
    """Whatever the first rate's error, and with the rate varying by 7 % from part to part (which the
    margin of 1.2 covers), the training ends late by no more than the first part's misjudged share or
    one part's fixed cost (amortised in the measured rate, a short last part may exceed its estimate by
    it); after the last part there is no time for another iteration, unless all ran."""
    clock = Clock(rate, overhead, factors)
    margin = 1.2
    prior, done, parts = bench_prior.train_in_parts(clock.fit_to, total, budget, rate * misjudged,
                                                    part_seconds=part_seconds, margin=margin, clock=clock)
    assert done == sum(n for n, _ in parts) == (clock.fits[-1] if clock.fits else 0) <= total
    if parts:
        first_n, first_seconds = parts[0]
        late = max(0.0, first_seconds - first_n * rate * misjudged * margin)
        assert clock.now <= budget + max(late, overhead) + 1e-9
        if done < total:      # stopped for time: not one more iteration at the last part's rate
            last_rate = parts[-1][1] / parts[-1][0]
            assert budget - clock.now < last_rate * margin * (1 + 1e-9)


def test_the_parts_train_the_network_of_one_run_and_save_each(tmp_path, monkeypatch):
    """train_published_sgan end to end, on a small network on the CPU: parts of one iteration on one
    checkpoint give the generator of one uninterrupted run, saved whole after each part."""
    import torch

    from latentinv.datasets import PatchSampler, make_channel_image
    from latentinv.sgan import SGANPrior

    small = dict(device="cpu", n_filters=4, n_layers=3, dilations=(2, 3), batch_size=4,
                 training_latent_shape=(5, 5))
    sampler = PatchSampler(make_channel_image((80, 60), width=4, random_state=0), (33, 17))
    saved = []
    real_save = bench_prior._save_replacing
    monkeypatch.setattr(bench_prior, "_save_replacing",
                        lambda prior, path: saved.append(len(prior.history_["generator"])) or real_save(prior, path))
    import latentinv.sgan as sgan_module
    real_losses, losses = sgan_module.adversarial_losses, []
    monkeypatch.setattr(sgan_module, "adversarial_losses", lambda *a: losses.append(1) or real_losses(*a))
    results = {"sgan_steps": [dict(GPU_ROW, seconds_per_step=1e-3)]}
    prior, done = bench_prior.train_published_sgan(sampler, results, time.time() + 1e4, save_to=str(tmp_path / "sgan"),
                                                   total=4, part_seconds=1e-3, **small)
    assert done == 4 and saved == [1, 2, 3, 4]
    assert [p["iterations"] for p in results["sgan_training"]["parts"]] == [1, 1, 1, 1]
    assert results["sgan_training"]["carried_on_from"] == 0 and results["sgan_training"]["iterations"] == 4
    assert len(losses) == 2 * 4         # each part carries on from the last: 4 iterations trained, not 1+2+3+4
    monkeypatch.setattr(sgan_module, "adversarial_losses", real_losses)
    whole = SGANPrior(**small, random_state=0, n_iterations=4).fit(sampler)
    loaded = SGANPrior.load(tmp_path / "sgan")
    for (key, a), b, c in zip(whole.generator_.state_dict().items(), prior.generator_.state_dict().values(),
                              loaded.generator_.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sgan"]        # no .new or .old left

    # a kept checkpoint directory: a second call carries its training on (as after a call's timeout)
    kept, losses[:] = tmp_path / "ckpt", []
    monkeypatch.setattr(sgan_module, "adversarial_losses", lambda *a: losses.append(1) or real_losses(*a))
    first, done = bench_prior.train_published_sgan(sampler, {"sgan_steps": [dict(GPU_ROW, seconds_per_step=1e-3)]},
                                                   time.time() + 1e4, checkpoint=str(kept), total=2,
                                                   part_seconds=1e-3, **small)
    assert done == 2 and bench_prior.checkpoint_iteration(str(kept)) == 2
    results = {"sgan_steps": [dict(GPU_ROW, seconds_per_step=1e-3)]}
    second, done = bench_prior.train_published_sgan(sampler, results, time.time() + 1e4, checkpoint=str(kept),
                                                    total=4, part_seconds=1e-3, **small)
    assert done == 4 and len(losses) == 2 * 4 and len(results["sgan_training"]["parts"]) == 2
    assert results["sgan_training"]["carried_on_from"] == 2
    assert all(torch.equal(a, b) for a, b in zip(whole.generator_.state_dict().values(),
                                                 second.generator_.state_dict().values()))
    # no time for a part: the checkpoint's training as it stands, none trained
    none_left, done = bench_prior.train_published_sgan(sampler, results, time.time() - 1, checkpoint=str(kept),
                                                       total=9, part_seconds=1e-3, **small)
    assert done == 4 and len(losses) == 2 * 4 and len(none_left.history_["generator"]) == 4
    assert results["sgan_training"] == dict(carried_on_from=4, total=9, parts=[], iterations=4,
                                            first_rate_seconds_per_iteration=1e-3)
    # a checkpoint of another training (another network) is moved aside, and a new one started
    other = dict(small, n_filters=2)
    moved, done = bench_prior.train_published_sgan(sampler, results, time.time() + 1e4, checkpoint=str(kept),
                                                   total=2, part_seconds=1e-3, **other)
    assert done == 2 and results["sgan_training"]["carried_on_from"] == 0
    assert len(list(tmp_path.glob("ckpt.refused-*"))) == 1 and bench_prior.checkpoint_iteration(str(kept)) == 2
    monkeypatch.setattr(sgan_module, "adversarial_losses", real_losses)


def test_the_record_names_the_cpu_model_not_only_the_architecture(tmp_path, monkeypatch):
    """The machine string was ``platform.machine() platform.processor()``: "x86_64 x86_64" or "x86_64
    Linux" on Linux, which names no CPU (docs/benchmarks/sgan_patterns_cpu.json holds "x86_64 Linux")."""
    import json

    monkeypatch.setattr(bench_prior, "cpu_model", lambda: "Test CPU 9000")
    out = tmp_path / "prior.json"
    monkeypatch.setattr(sys, "argv", ["bench_prior.py", "--no-vae", "--output", str(out)])
    bench_prior.main()
    assert json.loads(out.read_text())["machine"].startswith("Test CPU 9000 (")
