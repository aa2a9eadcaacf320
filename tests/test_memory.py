"""latentinv._memory: a batch too large for the machine is a MemoryError naming the sizes and what to pass,
raised before the batch is allocated (not the operating system's out-of-memory kill)."""
import warnings

import numpy as np
import pytest
import torch

import latentinv._memory as memory
from latentinv import LatentInverter, LatentSampler
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import TorchGenerator
from latentinv.operators import StraightRayOperator

N_CELLS = 12 * 8


@pytest.fixture
def problem():
    depths = 0.1 + 0.2 * np.arange(6)
    survey = CrossholeSurvey(np.column_stack([np.zeros(6), depths]), np.column_stack([np.full(6, 0.8), depths]))
    op = StraightRayOperator(Grid2D(12, 8, 0.1), survey)
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(3, N_CELLS), torch.nn.Sigmoid()).requires_grad_(False)
    gen = TorchGenerator(decoder, 3)
    z = np.random.default_rng(0).standard_normal((2, 3))
    tt = LatentInverter(gen, op).fit(np.ones((1, op.n_data))).simulate(gen.decode(z).reshape(2, -1))
    return op, gen, tt


def test_saved_bytes_per_row_is_the_hand_count():
    # a frozen Linear saves nothing that grows with the batch (its input is not needed for a frozen weight);
    # the sigmoid saves its output, which is the output: 4 bytes per cell
    net = torch.nn.Sequential(torch.nn.Linear(3, 50), torch.nn.Sigmoid()).requires_grad_(False)
    assert memory.saved_bytes_per_row(net, torch.zeros(1, 3)) == 4 * 50
    # a ReLU between two layers saves its output (50 floats) and the second layer its input (the same
    # tensor, counted once); the second output (20 floats) is the result
    net = torch.nn.Sequential(torch.nn.Linear(3, 50), torch.nn.ReLU(), torch.nn.Linear(50, 20)).requires_grad_(False)
    assert memory.saved_bytes_per_row(net, torch.zeros(1, 3)) == 4 * (50 + 20)
    # float64: twice as much
    assert memory.saved_bytes_per_row(net.double(), torch.zeros(1, 3, dtype=torch.float64)) == 8 * 70


def test_the_probe_leaves_no_graph_alive():
    """The probe's autograd graph dies with its call, without the garbage collector. A graph kept alive
    by a reference cycle keeps the weights' AccumulateGrad nodes on the stream the probe ran on (the
    default one), so a CUDA-graph capture that followed on a side stream before a collection failed
    ("operation would make the legacy stream depend on a capturing blocking stream", seen on an H200 in
    VAEPrior(cuda_graphs=True).fit, whose memory check runs this probe first)."""
    import gc
    import weakref
    net = torch.nn.Sequential(torch.nn.Linear(3, 50), torch.nn.Sigmoid())      # trainable: AccumulateGrad nodes
    outputs = []

    def forward(z):
        out = torch.exp(net(z))               # exp and sigmoid save their outputs
        outputs.append(weakref.ref(out))
        return out
    enabled = gc.isenabled()
    gc.disable()
    try:
        # the layer's input (for its weight's gradient), the sigmoid's and exp's outputs
        assert memory.saved_bytes_per_row(forward, torch.zeros(1, 3)) == 4 * (3 + 50 + 50)
        assert [ref() is None for ref in outputs] == [True] * len(outputs)
    finally:
        if enabled:
            gc.enable()


def test_available_memory_from_the_kernel_and_the_cgroup(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000 kB\n")
    assert memory._meminfo_available(str(meminfo)) == 2000 * 1024
    assert memory._meminfo_available(str(tmp_path / "absent")) is None
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")                                       # cgroup v2, at the root
    root = tmp_path / "cg"
    root.mkdir()
    room = lambda: memory._cgroup_room(str(root), str(proc))
    assert room() is None                                            # no cgroup files
    (root / "memory.max").write_text("max\n")
    (root / "memory.current").write_text("5000\n")
    assert room() is None                                            # v2 without a limit
    (root / "memory.max").write_text("8000\n")
    assert room() == 3000
    (root / "memory.current").write_text("9000\n")
    assert room() == 0                                               # over its limit: no room
    # the page cache the kernel would evict is room, not use
    (root / "memory.stat").write_text("anon 100\ninactive_file 2500\nactive_file 10\n")
    assert room() == 1500
    # the process's own cgroup where its folder is visible (a job's limit below the root's)
    proc.write_text("0::/job/42\n")
    (root / "job" / "42").mkdir(parents=True)
    (root / "job" / "42" / "memory.max").write_text("4000\n")
    (root / "job" / "42" / "memory.current").write_text("1000\n")
    assert room() == 3000
    proc.write_text("0::/elsewhere\n")                              # not visible: the root's
    assert room() == 1500
    # cgroup v1: the memory controller's line; "no limit" written as about 2**63
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm").mkdir(parents=True)
    proc.write_text("4:memory:/slurm\n3:cpu:/\n0::/\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2 ** 63 - 4096))
    (v1 / "memory" / "memory.usage_in_bytes").write_text("10")
    assert memory._cgroup_room(str(v1), str(proc)) is None
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text("6000")
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text("5000")
    (v1 / "memory" / "slurm" / "memory.stat").write_text("cache 3000\ntotal_inactive_file 2000\n")
    assert memory._cgroup_room(str(v1), str(proc)) == 3000
    # the smaller of the two
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10_000)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 3_000)
    assert memory.available_bytes("cpu") == 3_000


def test_check_fits_names_the_sizes_and_is_silent_when_unknown(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 2 ** 30)
    with pytest.raises(MemoryError, match=r"X: 7 rows need at least 14 GiB \(2 GiB per row: parts\), "
                                          r"but cpu has 10 GiB available\. fits 5"):
        memory.check_fits("X", 7, 2 ** 31, "cpu", what="7 rows", parts="parts",
                          advice=lambda room: f"fits {int(room // 2 ** 31)}")
    memory.check_fits("X", 5, 2 ** 31, "cpu", what="", parts="", advice=str)       # exactly fits
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    memory.check_fits("X", 10 ** 9, 2 ** 31, "cpu", what="", parts="", advice=str)
    assert [memory._size(v) for v in (0, 1023, 1024, 1536 * 2 ** 20, 3 * 2 ** 40)] == [
        "0 B", "1.02e+03 B", "1 KiB", "1.5 GiB", "3 TiB"]


@pytest.fixture
def activations(monkeypatch):
    """The decoder's measured bytes per row, as each check saw them (a spy on saved_bytes_per_row)."""
    seen, real = [], memory.saved_bytes_per_row
    monkeypatch.setattr(memory, "saved_bytes_per_row", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    return seen


def _per_row_on_cpu(activations, n_iterations, n_data, histories, result_histories, device_extra=0, host_extra=0):
    """The check's lower bound per row on a CPU, by hand: the device histories (float32, allocated whole),
    best model and latent, full traveltimes; then the larger of the activations and the float64 result."""
    P, d = N_CELLS, 3
    records = 4 * (histories * n_iterations + P + d + n_data) + device_extra
    result = 8 * (result_histories * n_iterations + P + d) + host_extra
    return records + max(activations, result)


def test_an_inversion_too_large_says_which_chunk_size_fits(problem, monkeypatch, activations):
    op, gen, tt = problem
    est = LatentInverter(gen, op, n_starts=5, n_epochs=2, random_state=0, device="cpu").fit(tt)
    est.invert(tt[:1])
    # the output x (kept by the sigmoid) and the slowness s at least; more where torch's ops run the map
    assert activations[-1] >= 4 * 2 * N_CELLS
    # no rule stops the run early: the result's 4 per-iteration histories are counted
    per_row = _per_row_on_cpu(activations[-1], est.n_iterations_, op.n_data, 2, 4)
    # room for exactly one survey of 5 starts: two surveys are refused, before anything is inverted
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * per_row)
    with pytest.raises(MemoryError, match=r"LatentInverter: 2 surveys x n_starts=5 = 10 rows need at least .* "
                                          r"Pass chunk_size=1 or less"):
        est.invert(tt)
    assert len(est.set_params(chunk_size=1).fit(tt).invert(tt).models) == 2
    # one byte short of one survey: not even one fits
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * per_row - 1)
    with pytest.raises(MemoryError, match=r"Not even one survey fits: lower n_starts to at most 4\.$"):
        est.invert(tt[:1])
    # exactly one start's room: one start fits
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_row)
    with pytest.raises(MemoryError, match=r"Not even one survey fits: lower n_starts to at most 1\.$"):
        est.invert(tt[:1])
    # one byte short of one start: fewer starts cannot help, fewer iterations can (their records, 2 float32
    # histories on the device and 4 float64 in the result per iteration: 40 bytes each)
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_row - 1)
    records = memory._size(40 * est.n_iterations_)
    with pytest.raises(MemoryError, match=rf"Not even one start fits: one takes {memory._size(per_row)}, "
                                          rf"{records} of it the records of its {est.n_iterations_} iterations; "
                                          r"run fewer iterations \(n_epochs\)\.$"):
        est.invert(tt[:1])


def test_a_run_that_may_stop_early_is_not_charged_for_histories_it_may_not_keep(problem, monkeypatch, activations):
    op, gen, tt = problem
    # 3e5 iterations would take 23 MiB of float64 histories per row; a target misfit may end the run after one
    est = LatentInverter(gen, op, n_starts=5, n_epochs=300_000, target_misfit=1e6, random_state=0,
                         device="cpu").fit(tt)
    est.invert(tt[:1])
    per_row = _per_row_on_cpu(activations[-1], est.n_iterations_, op.n_data, 2, 0)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * per_row)
    assert est.invert(tt[:1]).n_iterations_run.max() == 1
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * per_row - 1)
    with pytest.raises(MemoryError):
        est.invert(tt[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_device_holds_the_batch_and_the_host_the_result(problem, monkeypatch, activations):
    op, gen, tt = problem
    assert memory.available_bytes("cuda") > 0
    est = LatentInverter(gen, op, n_starts=5, n_epochs=2, random_state=0, device="cuda").fit(tt)
    est.invert(tt)
    P, d, n, n_it = N_CELLS, 3, op.n_data, est.n_iterations_
    on_device = activations[-1] + 4 * (2 * n_it + P + d + n)
    on_host = 8 * (4 * n_it + P + d)
    # exactly the room each side needs for 10 rows: it runs; a byte less on either side: refused
    room = {"cuda": 10 * on_device, "cpu": 10 * on_host}
    monkeypatch.setattr(memory, "available_bytes", lambda device: room[torch.device(device).type])
    assert len(est.invert(tt).models) == 2
    for side, parts in (("cuda", "the decoder's activations kept for the gradient, the records\\)"),
                        ("cpu", "the result\\)")):
        room[side] -= 1
        with pytest.raises(MemoryError, match=parts):
            est.invert(tt)
        room[side] += 1


@pytest.mark.parametrize("method", ["pcn", "mala"])
def test_a_sampler_too_large_says_how_many_surveys_fit(problem, monkeypatch, activations, method):
    op, gen, tt = problem
    s = LatentSampler(gen, op, method=method, n_chains=4, n_burnin=10, n_samples=10, thin=2, noise_std=0.5,
                      random_state=0, device="cpu").fit(tt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # short chains: ConvergenceWarning
        s.sample(tt[:1])
    if method == "pcn":      # no gradient: the decoder's output alone (x and s)
        assert activations[-1] == 4 * 2 * N_CELLS
    # a chi-square history beside the others (a likelihood with weights); the result keeps 2 histories; the
    # chains' own: float64 moments of the models (3 per cell) on the device, kept draws on the host
    per_row = _per_row_on_cpu(activations[-1], 10 + 10 * 2, op.n_data, 3, 2, device_extra=3 * 8 * N_CELLS,
                              host_extra=4 * 3 * 10)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * per_row)
    with pytest.raises(MemoryError, match=r"LatentSampler: 2 surveys x n_chains=4 = 8 rows .* "
                                          r"Sample at most 1 surveys per call, or lower n_chains"):
        s.sample(tt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert s.predict(tt[:1]).shape == (1, N_CELLS)


def test_decoding_too_many_models_is_refused_before_decoding(monkeypatch):
    from latentinv import VAEPrior
    X = (np.random.default_rng(0).random((6, 16, 16)) > 0.7).astype(np.float32)
    prior = VAEPrior(n_components=2, channels=(2, 2), kernel_sizes=(3, 3), hidden_size=4, batch_size=3,
                     n_iterations=2, random_state=0, device="cpu").fit(X)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 16 * 256)    # 10 models of 256 cells
    assert prior.sample(10).shape == (10, 256)
    with pytest.raises(MemoryError, match=r"VAEPrior: 11 models need at least .* Decode at most 10 models per call"):
        prior.sample(11)


def test_a_training_batch_too_large_is_refused_before_the_first_step(monkeypatch):
    from latentinv import VAEPrior
    from latentinv.datasets import PatchSampler
    X = (np.random.default_rng(0).random((6, 16, 16)) > 0.7).astype(np.float32)
    kw = dict(n_components=2, channels=(2, 2), kernel_sizes=(3, 3), hidden_size=4, n_iterations=2,
              random_state=0, device="cpu")
    per_row = []
    real = memory.saved_bytes_per_row
    monkeypatch.setattr(memory, "saved_bytes_per_row", lambda f, z: per_row.append(real(f, z)) or per_row[-1])
    VAEPrior(batch_size=6, **kw).fit(X)
    (b,) = per_row
    # the input row (256 cells, kept by the first convolution) is at least part of it
    assert b >= 4 * 256
    steps = []
    from latentinv import _training_step
    monkeypatch.setattr(_training_step.TrainingStep, "__call__", lambda self, xb: steps.append(1))
    # crops are cut for each batch: room for 5 rows, a batch of 6 is refused, naming the batch that fits
    monkeypatch.setattr(memory, "available_bytes", lambda device: 5 * b)
    sampler = PatchSampler([np.tile(X[0], (2, 2))], (16, 16))
    with pytest.raises(MemoryError, match=r"VAEPrior: batch_size=6 rows need .* Lower batch_size to at most 5"):
        VAEPrior(batch_size=6, image_shape=(16, 16), **kw).fit(sampler)
    # a batch that is the whole training set, already in memory, is not counted again: 6 rows of b - 1024 fit
    monkeypatch.setattr(memory, "available_bytes", lambda device: 6 * (b - 4 * 256))
    with pytest.raises(TypeError):                      # past the check: the stubbed step returns nothing
        VAEPrior(batch_size=6, **kw).fit(X)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 6 * (b - 4 * 256) - 1)
    with pytest.raises(MemoryError, match="Lower batch_size to at most 5"):
        VAEPrior(batch_size=6, **kw).fit(X)
    assert steps == [1, 1]        # only the fit that passed the check stepped (its 2 iterations)


def test_a_sampler_batch_is_refused_one_byte_short_of_its_lower_bound(problem, monkeypatch, activations):
    """The sampler's bound per chain, to the byte: the records, the float64 moments of the models (3 per
    cell) and the larger of the activations and the result with the kept draws (float32, d per draw).
    Exactly that much memory runs; one byte less is refused (a bound that counted the moments in float32,
    or left out the draws, would let it through)."""
    op, gen, tt = problem
    s = LatentSampler(gen, op, method="pcn", n_chains=4, n_burnin=10, n_samples=7, thin=3, noise_std=0.5,
                      random_state=0, device="cpu").fit(tt)
    per_row = _per_row_on_cpu(4 * 2 * N_CELLS, 10 + 7 * 3, op.n_data, 3, 2, device_extra=3 * 8 * N_CELLS,
                              host_extra=4 * 3 * 7)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * per_row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # short chains: ConvergenceWarning
        s.sample(tt[:1])
    assert activations[-1] == 4 * 2 * N_CELLS
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * per_row - 1)
    with pytest.raises(MemoryError, match=r"LatentSampler: 1 surveys x n_chains=4 = 4 rows .* "
                                          r"Not even one survey fits: lower n_chains to at most 3\.$"):
        s.sample(tt[:1])
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_row - 1)
    # a chain's records per iteration: 3 float32 histories (the chi-square too: a likelihood with weights)
    # and the result's 2 float64 ones, 28 bytes
    with pytest.raises(MemoryError, match=rf"Not even one chain fits: one takes {memory._size(per_row)}, "
                                          rf"{memory._size(28 * 31)} of it the records of its 31 iterations; run "
                                          r"fewer iterations \(n_burnin, n_samples or thin\)\.$"):
        s.sample(tt[:1])


@pytest.mark.parametrize("cls", [LatentInverter, LatentSampler])
def test_the_rows_data_are_not_copied_before_the_check(problem, monkeypatch, cls):
    """The batch's problem is built before its check, and it copied the data and the weights to every row, in
    float64 first (8 bytes per datum and row, then 4 in float32, for each; the check counts 4 for the data):
    40000 rows of 36 data took 11 MiB of NumPy's before a refusal, and a batch too large was found out by those
    copies (NumPy's MemoryError for a "(40000000, 36) float64" array, 2 surveys of 2e7 starts), or by the
    out-of-memory killer, instead of the check. NumPy's allocations are traced by tracemalloc; the rows' data
    are now made at their first use, after the check, and the weights are one row's, broadcast."""
    import tracemalloc
    op, gen, tt = problem
    rows = {"n_starts": 20_000} if cls is LatentInverter else {"n_chains": 20_000, "n_samples": 1, "n_burnin": 1}
    est = cls(gen, op, noise_std=0.5, n_epochs=1, random_state=0, device="cpu", **rows) if cls is LatentInverter \
        else cls(gen, op, noise_std=0.5, random_state=0, device="cpu", **rows)
    est.fit(tt)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 ** 20)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError, match=r"2 surveys x n_\w+=20000 = 40000 rows need at least"):
            est.predict(tt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20, peak


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux's peak-RSS reset")
def test_the_checked_bound_is_below_the_memory_a_run_takes_and_most_of_it():
    """The bound that invert checks against the memory available, against the peak resident memory that
    the run then added (the kernel's high-water mark, benchmarks/bench_memory.py), with the shipped prior:
    at most the peak (a batch that fits is never refused) and more than a fifth of it (0.48 measured for
    3 x 20 on a Xeon; without the decoder's activations, the bound's main term, it would be under a
    tenth)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
    if not path.exists():
        pytest.skip("benchmarks/ is not beside the tests (installed package)")
    import sys
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_memory", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        row = bench.measure(surveys=3, starts=20, epochs=1, threads=1)
        as_warm_up = bench.measure(surveys=1, starts=1, epochs=1, threads=1)       # the warm-up's own batch
    finally:
        sys.path.remove(str(path.parent))
    assert "failed" not in row and "failed" not in as_warm_up, (row, as_warm_up)
    assert 0.2 < row["bound_over_peak"] <= 1, row
    # the bound is per row: 60 rows, 60 times one row's (the warm-up's own check is left out of both)
    assert row["bound_bytes"] == 60 * as_warm_up["bound_bytes"] > 0
    # a run of the warm-up's batch adds almost nothing, as the high-water mark was reset just before it
    # (0.04 MB measured; 6.7 MB without the reset: the imports' and fit's peak; the bound leaves room for
    # another allocator's pools)
    assert as_warm_up["peak_added_bytes"] < 3e6, as_warm_up
    # the README's "about 0.6 MB" of activations per start with the shipped prior
    assert bench.per_start_activations() == pytest.approx(0.6e6, rel=0.05)


class _Huge(torch.nn.Module):
    """A module whose activations for one latent take 4 TB: no machine allocates them."""

    def forward(self, z):
        return torch.zeros(z.shape[0], 10 ** 12)[:, :12]


def test_a_generator_of_ones_own_that_runs_out_of_memory_names_the_call_and_the_remedy():
    gen = TorchGenerator(_Huge(), n_components=2)
    with pytest.raises(MemoryError, match=r"TorchGenerator.decode: 3 latents at once do not fit in the memory "
                                          r"of cpu .* decode fewer per call, in chunks of rows of Z\. "
                                          r"RuntimeError: .*can't allocate memory") as info:
        gen.decode(np.zeros((3, 2)))
    assert isinstance(info.value.__cause__, RuntimeError)
    # any other RuntimeError of the module stays itself
    gen = TorchGenerator(torch.nn.Linear(3, 12), n_components=2)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        gen.decode(np.zeros((3, 2)))
