"""The static SGD step (latentinv.inversion.graphed) against the eager loop (inversion.sgd.run_sgd).

On the CPU the static step runs eagerly: every row is computed every iteration (a stopped row masked),
the schedules and the iteration counter are device tensors. It must give the eager loop's results bit
for bit where no start stops early (the same float32 operations on the same batch), and to float32
rounding where starts stop (the eager loop's batch shrinks, and a smaller batch may round the decoder
differently); stop iterations and reasons exactly. On CUDA, ``cuda_graphs=True`` replays it from a
CUDA graph and is compared with the eager loop to float32 tolerance.
"""
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).with_name("golden")))
import cases  # noqa: E402
from host_reads import HostRead, HostReadGuard  # noqa: E402

from latentinv._common import native_bfloat16  # noqa: E402
from latentinv.inversion import LatentInverter, TorchGenerator, graphed  # noqa: E402
from latentinv.nn.sgan import SGANDecoder, SpatialGenerator  # noqa: E402
from latentinv.nn.vae import build_vae  # noqa: E402

STRAIGHT_CASES = ["sgd_ring", "sgd_noise_target", "sgd_origin_all_data", "adam_uniform_normal_clip",
                  "sgd_uniform_uniform_clip"]
INTEGER_FIELDS = ("best_start", "best_iteration", "n_iterations_run", "reached_target", "diverged",
                  "converged", "pruned")


def run_case(name, static=False, extra=None, **static_options):
    """A golden case's result arrays: eager, or through the static step (``static_options`` passed
    to run_sgd_static); ``extra``: estimator parameters added to the case's own."""
    original = cases._invert
    with pytest.MonkeyPatch.context() as mp:
        if extra:
            mp.setattr(cases, "_invert", lambda op, *a, **kw: original(op, *a, **dict(kw, **extra)))
        if static:
            mp.setattr(LatentInverter, "_static_step", True)
            if static_options:
                mp.setattr(graphed, "run_sgd_static",
                           functools.partial(graphed.run_sgd_static, **static_options))
        return cases.result_arrays(cases.CASES[name]())


def assert_same(eager, static, exact, rtol=1e-5):
    assert set(eager) == set(static)
    for key in eager:
        a, b = eager[key], static[key]
        assert a.shape == b.shape, key
        if exact or key in INTEGER_FIELDS:
            np.testing.assert_array_equal(b, a, err_msg=key)
        else:
            np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol, equal_nan=True, err_msg=key)


@pytest.mark.parametrize("name", STRAIGHT_CASES)
def test_static_step_equals_the_loop(name):
    eager = run_case(name)
    static = run_case(name, static=True)
    assert_same(eager, static, exact=name not in cases.SHRINKING)


def test_stopped_starts_record_nothing_more():
    """The target case stops starts at different iterations: their histories end there (NaN after),
    as in the eager loop, although the static step still computes them."""
    static = run_case("sgd_noise_target", static=True)
    n_run = static["n_iterations_run"]
    assert static["reached_target"].any() and n_run.min() < n_run.max()    # the case exercises it
    hist = static["data_rmse_history"]
    ran = np.arange(hist.shape[-1])[None, None, :] < n_run[:, :, None]
    assert np.isfinite(hist[ran]).all() and np.isnan(hist[~ran]).all()
    assert (static["best_iteration"] < n_run).all()


@pytest.mark.parametrize("name, chunk", [("sgd_ring", 5), ("adam_uniform_normal_clip", 5),
                                         ("sgd_origin_all_data", 1)])
def test_runs_of_several_chunks_equal_the_loop(name, chunk, monkeypatch):
    """A run of several chunks (CHUNK_ITERATIONS made small, the last chunk partial: 8 + 4, 6 + 3 and
    12 x 1 iterations): the step reads its schedules (step size, regularisation weight, Adam's
    corrections) at the iteration counter and its mini-batches and clipping draws at the counter's
    place in the chunk, so the loop's bits. (The cases' runs are shorter than one default chunk.)"""
    monkeypatch.setattr(graphed, "CHUNK_ITERATIONS", chunk)
    assert_same(run_case(name), run_case(name, static=True), exact=True)


def test_a_run_whose_every_start_stops_ends_at_the_last_stop():
    """Every start of every survey reaches the target, the last before the 24th iteration (the first
    after one): the run ends there, its step-size and regularisation histories n_run's maximum long, as
    the eager loop's, whose batch empties then."""
    extra = dict(lr=1e-3, target_misfit=5.0)
    eager = run_case("sgd_noise_target", extra=extra)
    static = run_case("sgd_noise_target", static=True, extra=extra)
    n_run = eager["n_iterations_run"]
    # the last stop: after 23 iterations with AVX-512, 22 on an AVX2 CPU (float32 kernels round otherwise)
    last = int(n_run.max())
    assert eager["reached_target"].all() and n_run.min() == 1 and 20 <= last < 24
    assert static["learning_rate_history"].shape[-1] == static["lam_history"].shape[-1] == last
    assert_same(eager, static, exact=False)


@pytest.mark.parametrize("name", ["sgd_ring", "adam_uniform_normal_clip"])
def test_dense_full_data(name):
    """The full data as a dense product (what a CUDA graph captures): float32 rounding away."""
    assert_same(run_case(name), run_case(name, static=True, dense_full=True), exact=False)


@pytest.mark.skipif(not native_bfloat16(torch.device("cpu")), reason="needs native bfloat16 (AVX512-BF16 or AMX)")
@pytest.mark.parametrize("name", ["sgd_ring", "adam_uniform_normal_clip"])
def test_static_step_bfloat16(name):
    """Under bfloat16 autocast (its cache off in the static step): the same bits as the loop."""
    extra = dict(precision="bfloat16")
    assert_same(run_case(name, extra=extra), run_case(name, static=True, extra=extra), exact=True)


@pytest.mark.parametrize("name", ["sgd_ring", "adam_uniform_normal_clip"])
def test_step_through_torch_compile_keeps_its_semantics(name, monkeypatch):
    """graphed.compile_options (the benchmark's torch.compile rows): the step traced by dynamo, split at
    torch.autograd.grad, and run by its eager backend gives the uncompiled step's bits (state written
    in place, records masked, schedules read at the counter). Inductor's own code is not checked here
    (on torch 2.13's CPU it is wrong: docs/benchmarks/gpu.md); the benchmark compares it with eager."""
    from latentinv.inversion import native
    monkeypatch.setattr(native, "use_kernels", False)     # as on CUDA: torch's ops, which dynamo traces
    plain = run_case(name, static=True, dense_full=True)
    torch._dynamo.reset()
    monkeypatch.setattr(graphed, "compile_options", {"backend": "eager"})
    traced = run_case(name, static=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0       # dynamo did trace the step
    assert_same(plain, traced, exact=True)


def test_full_batches_drawn_once():
    """reuse_full_batches (the capture's default): where every batch holds every ray, one order is kept;
    the sums over all rays change order only (float32 rounding); mini-batches are drawn as before."""
    assert_same(run_case("sgd_origin_all_data"), run_case("sgd_origin_all_data", static=True,
                                                          reuse_full_batches=True), exact=False)
    assert_same(run_case("sgd_ring"), run_case("sgd_ring", static=True, reuse_full_batches=True), exact=True)


@settings(max_examples=25, deadline=None)
@given(n_epochs=st.integers(1, 5), batch_size=st.sampled_from([1, 4, 7, 12]), n_starts=st.integers(1, 3),
       clip=st.sampled_from(["uniform", "normal"]), seed=st.integers(0, 2**31 - 1))
def test_streams_of_several_epochs_are_the_epochs_in_turn(n_epochs, batch_size, n_starts, clip, seed):
    from latentinv.inversion.randomness import EpochStreams
    Y = np.random.default_rng(seed).random((2, 12))
    make = lambda: EpochStreams(seed, Y, n_starts, 12, batch_size, 3, clip, torch.device("cpu"))
    a, b = make(), make()
    assert torch.equal(a.batches(n_epochs), torch.cat([b.batches() for _ in range(n_epochs)], 1))
    assert torch.equal(a.redraws(n_epochs), torch.cat([b.redraws() for _ in range(n_epochs)], 0))
    assert torch.equal(a.batches(), b.batches())          # and the streams go on from the same place


def test_unsupported_settings():
    assert graphed.unsupported(True, None, None) is None
    assert "nonlinear" in graphed.unsupported(False, None, None)
    assert "tol" in graphed.unsupported(True, 1e-3, None)
    assert "prune" in graphed.unsupported(True, None, "halving")


def test_static_step_refuses_nonlinear_and_host_rules(monkeypatch):
    monkeypatch.setattr(LatentInverter, "_static_step", True)
    with pytest.raises(ValueError, match="static SGD step cannot run this problem: the operator is nonlinear"):
        cases.CASES["graph_noise"]()
    with pytest.raises(ValueError, match="tol is set"):
        cases._invert(cases._straight(), batch_size=9, tol=1e-3)


@pytest.mark.parametrize("params, match", [
    (dict(cuda_graphs="yes"), "cuda_graphs must be True or False, got 'yes'"),
    (dict(cuda_graphs=1), "cuda_graphs must be True or False, got 1"),
    (dict(cuda_graphs=True, device="cpu"), "cuda_graphs=True cannot run here: the device is cpu"),
])
def test_cuda_graphs_parameter(params, match):
    with pytest.raises(ValueError, match=match):
        cases._invert(cases._straight(), batch_size=9, **params)


def test_capture_needs_cuda():
    op = cases._straight()
    inv = LatentInverter(cases._generator(), op, device="cpu", n_epochs=1, n_starts=2, batch_size=9)
    X = cases._data(op, 1)
    inv.fit(X)
    with pytest.raises(ValueError, match="capture=True needs CUDA tensors"):
        graphed.run_sgd_static(inv._problem(X, None, allow_pending=False), torch.zeros(2, cases.D),
                               None, None, capture=True)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("name", STRAIGHT_CASES)
def test_cuda_graphs_equal_eager_on_cuda(name):
    """cuda_graphs=True against the eager loop, both on CUDA (float32 tolerance; the stop iterations
    of the target case may move by a rounding, so only the fields a user reads are compared)."""
    eager = run_case(name, extra=dict(device="cuda"))
    graph = run_case(name, extra=dict(device="cuda", cuda_graphs=True))
    for key in ("models", "data_rmse", "latents"):
        np.testing.assert_allclose(graph[key], eager[key], rtol=1e-4, atol=1e-4, err_msg=key)
    if name not in cases.SHRINKING:
        np.testing.assert_allclose(graph["data_rmse_history"], eager["data_rmse_history"], rtol=1e-4,
                                   atol=1e-4, err_msg="data_rmse_history")


@cuda
@pytest.mark.parametrize("n_epochs", [1, 2])
def test_cuda_graphs_short_runs(n_epochs):
    """Runs shorter than the warm-up (1 and 2 iterations of the full data) capture and replay too."""
    eager = run_case("sgd_origin_all_data", extra=dict(device="cuda", n_epochs=n_epochs))
    graph = run_case("sgd_origin_all_data", extra=dict(device="cuda", n_epochs=n_epochs, cuda_graphs=True))
    assert graph["data_rmse_history"].shape[-1] == n_epochs
    for key in ("models", "data_rmse", "latents", "data_rmse_history"):
        np.testing.assert_allclose(graph[key], eager[key], rtol=1e-4, atol=1e-4, err_msg=key)


@cuda
@pytest.mark.parametrize("channels_last,group_norm,fold_last,subpixel", [
    (True, False, False, False), (False, True, False, False), (False, False, True, False),
    (True, True, True, False), (False, False, False, True), (True, True, False, True), (True, True, True, True)])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_graphs_with_the_decoders_layout_switches(channels_last, group_norm, fold_last, subpixel, precision):
    """The decoder's layout switches (channels-last maps and weights, group norm for instance norm, the
    last layer folded, the sub-pixel convolutions) captured in a CUDA graph: the cached weights are made
    in the warm-up steps, before the capture, and the answers are the default layout's (float32
    arithmetic for the comparison: the layouts may choose other TF32 kernels)."""
    import copy
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.nn import ConvDecoder
    from latentinv.operators import StraightRayOperator
    torch.manual_seed(0)
    decoder = ConvDecoder((65, 33), 6, (4, 8, 8, 16)).to("cuda").eval().requires_grad_(False)
    switched = copy.deepcopy(decoder)
    switched.layout_channels_last, switched.layout_group_norm = channels_last, group_norm
    switched.layout_fold_last, switched.layout_subpixel = fold_last, subpixel
    op = StraightRayOperator(Grid2D(65, 33, 0.2), CrossholeSurvey.paper(0.01, 6.49))
    gen, gen_switched = TorchGenerator(decoder, 6), TorchGenerator(switched, 6)
    truth = gen.decode(np.random.default_rng(0).standard_normal((1, 6)))
    params = dict(n_starts=8, n_epochs=2, random_state=0, device="cuda", precision=precision)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        tt = LatentInverter(gen, op, **params).fit(np.ones((1, op.n_data))).simulate(truth)
        want = LatentInverter(gen, op, cuda_graphs=True, **params).fit(tt).invert(tt)
        got = LatentInverter(gen_switched, op, cuda_graphs=True, **params).fit(tt).invert(tt)
    # the switched path ran (in the warm-up, before the capture): its cached weights are on the layers
    convs = [m for m in switched.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [("_latentinv_phase_weight" in m.__dict__) for m in convs] == [subpixel] * 3 + [subpixel and not fold_last]
    assert [("_latentinv_channels_last_weight" in m.__dict__) for m in convs] == \
        [channels_last and not subpixel] * 3 + [channels_last and not subpixel and not fold_last]
    if precision == "float32":
        for key in ("models", "data_rmse", "latents"):
            np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-4, atol=1e-4, err_msg=key)
    else:   # bfloat16 rounds otherwise in each layout: the latents drift apart (by 0.06 on the CPU), the
        # models and their fit much less (2e-3 and 7e-3 ns on the CPU, this case)
        np.testing.assert_allclose(got.models, want.models, atol=2e-2)
        np.testing.assert_allclose(got.data_rmse, want.data_rmse, rtol=5e-2)


@cuda
@pytest.mark.parametrize("network", ["vae", "sgan"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_graphs_with_the_compiled_norms(network, precision):
    """The decoders' compiled norms (Triton kernels on CUDA), with channels-last maps (and the VAE's last
    layer folded and fully-connected layers composed), captured in a CUDA graph: they compile in the warm-up steps, before the capture, and
    the answers are the default layout's (float32 arithmetic for the comparison)."""
    import copy
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.nn import ConvDecoder, fused
    from latentinv.nn.sgan import SGANDecoder, SpatialGenerator
    from latentinv.operators import StraightRayOperator
    torch.manual_seed(0)
    if network == "vae":
        decoder = ConvDecoder((65, 33), 6, (4, 8, 8, 16)).to("cuda").eval().requires_grad_(False)
        switched = copy.deepcopy(decoder)
        switched.layout_channels_last = switched.layout_fold_last = switched.layout_fused_norm = True
        switched.layout_compose_fc = True
        op = StraightRayOperator(Grid2D(65, 33, 0.2), CrossholeSurvey.paper(0.01, 6.49))
        gen, gen_switched = TorchGenerator(decoder, 6), TorchGenerator(switched, 6)
        settings = {}
    else:
        decoder = SGANDecoder(SpatialGenerator(n_filters=8), (1, 5, 3), (129, 65)).to("cuda").eval().requires_grad_(False)
        switched = copy.deepcopy(decoder)
        switched.generator.layout_channels_last = switched.generator.layout_fused_norm = True
        op = StraightRayOperator(Grid2D(129, 65, 0.1), CrossholeSurvey.paper(0.01, 6.49))
        gen, gen_switched = (TorchGenerator(d, 15, latent_distribution="uniform") for d in (decoder, switched))
        from latentinv.inversion import PAPER_CASES
        # SSbnd's SGD at a step small enough that round-off does not grow along the path: a random-weight
        # SGAN maps latents 1e-2 apart to models 1.0 apart (on the CPU, SSbnd's own step did so in 50 steps)
        settings = dict(PAPER_CASES["SSbnd"], n_epochs=2, lr=1e-5)
    truth = gen.decode(np.random.default_rng(0).uniform(-1, 1, (1, gen.n_components)))
    params = dict(dict(n_starts=8, n_epochs=2, random_state=0, device="cuda", precision=precision), **settings)
    fused._compiled.clear()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        tt = LatentInverter(gen, op, **params).fit(np.ones((1, op.n_data))).simulate(truth)
        want = LatentInverter(gen, op, cuda_graphs=True, **params).fit(tt).invert(tt)
        got = LatentInverter(gen_switched, op, cuda_graphs=True, **params).fit(tt).invert(tt)
    assert fused._compiled            # the compiled path ran
    if precision == "float32":
        np.testing.assert_allclose(got.models, want.models, atol=1e-3)
        np.testing.assert_allclose(got.data_rmse, want.data_rmse, rtol=2e-3)
    else:    # bfloat16 rounds otherwise in each layout (see the layout switches' test above)
        np.testing.assert_allclose(got.models, want.models, atol=1e-1)
        np.testing.assert_allclose(got.data_rmse, want.data_rmse, rtol=5e-2)


def test_the_step_never_reads_the_device(monkeypatch):
    """What a CUDA graph cannot capture is a read of a tensor's value by the host (a synchronisation):
    bool/int/float of a tensor, item, tolist, numpy, cpu; nor should the step make a tensor without a
    device (a CPU tensor there on CUDA). The static step does neither (run on the CPU with the engine's
    kernels off, which hand CPU arrays to the core), so every iteration can be captured; the host reads
    once per chunk, outside the step."""
    from latentinv.inversion import native

    monkeypatch.setattr(native, "use_kernels", False)
    real_call = graphed._StaticStep.__call__
    guard = HostReadGuard(monkeypatch)

    def step(self):
        with guard.watching():
            return real_call(self)

    monkeypatch.setattr(graphed._StaticStep, "__call__", step)
    monkeypatch.setattr(LatentInverter, "_static_step", True)
    for name in STRAIGHT_CASES:
        cases.CASES[name]()
    # the VAE's convolutional decoder through its modules (the CUDA path), float32 and bfloat16
    decoder = build_vae("conv", (12, 8), cases.D, channels=(4, 8), kernel_sizes=(5, 4), hidden_size=8,
                        seed=0).decoder.requires_grad_(False)
    decoder.fast_frozen_path = False
    op = cases._straight()
    X = cases._data(op)
    for precision in ("float32", "bfloat16") if native_bfloat16(torch.device("cpu")) else ("float32",):
        LatentInverter(TorchGenerator(decoder, cases.D, image_shape=(12, 8)), op, device="cpu", n_starts=3,
                       n_epochs=2, batch_size=9, random_state=0, precision=precision).fit(X).invert(X)
    # the SGAN's generator (uniform latents 1 x 4 x 3, Adam, clipping: the paper's SAnnn and SSbnd)
    sgan = SGANDecoder(SpatialGenerator(1, n_filters=4, n_layers=2, kernel_size=3, dilations=(3,)), (1, 4, 3),
                       (12, 8)).eval().requires_grad_(False)
    for optimizer, batch_size in (("adam", None), ("sgd", 9)):
        LatentInverter(TorchGenerator(sgan, 12, latent_distribution="uniform", image_shape=(12, 8)), op,
                       device="cpu", n_starts=3, n_epochs=2, batch_size=batch_size, optimizer=optimizer,
                       regularization=None, lam=0.0, clip_resample="normal", random_state=0).fit(X).invert(X)
    assert guard.reads == []
    # the guard works: a host read inside the step is caught
    def reading(self):
        step(self)
        with guard.watching():
            bool(self.running.any())

    monkeypatch.setattr(graphed._StaticStep, "__call__", reading)
    with pytest.raises(HostRead, match="Tensor.__bool__"):
        cases.CASES["sgd_ring"]()
    # and so is a tensor made without a device (a CPU tensor inside a step captured on CUDA)
    def making(self):
        step(self)
        with guard.watching():
            torch.zeros(self.z.shape[0], dtype=torch.bool)

    monkeypatch.setattr(graphed._StaticStep, "__call__", making)
    with pytest.raises(HostRead, match="torch.zeros without a device"):
        cases.CASES["sgd_ring"]()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(optimizer=st.sampled_from(["sgd", "adam"]), batch_size=st.sampled_from([None, 5, 9, 36]),
       regularization=st.sampled_from(["ring", "origin", None]), n_starts=st.integers(1, 5),
       n_epochs=st.integers(1, 4), lr=st.sampled_from([1e-4, 1e-3, 0.05]),
       target=st.sampled_from([None, 3.0, 5.0]), noise=st.booleans(), seed=st.integers(0, 3))
def test_static_step_equals_the_loop_on_generated_settings(optimizer, batch_size, regularization, n_starts,
                                                           n_epochs, lr, target, noise, seed):
    """Any settings of the straight-ray case: the static step gives the loop's stops exactly and its
    numbers bit for bit, or to float32 rounding where starts stopped early (the loop's batch shrank:
    the decoder rounds a smaller batch differently, and the iterations carry it, to 3e-5 seen)."""
    params = dict(optimizer=optimizer, batch_size=batch_size, regularization=regularization,
                  lam=0.0 if regularization is None else 1.0, n_starts=n_starts, n_epochs=n_epochs, lr=lr,
                  target_misfit=target, noise_std=0.1 if noise else None, random_state=seed)

    def run(static):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(LatentInverter, "_static_step", static)
            return cases.result_arrays(cases._invert(cases._straight(), **params))

    eager, static = run(False), run(True)
    stopped_early = bool((eager["n_iterations_run"] < eager["data_rmse_history"].shape[-1]).any())
    assert_same(eager, static, exact=not stopped_early, rtol=1e-3)
