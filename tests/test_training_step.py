"""The VAE's training step (latentinv._training_step): the noise of eq. (1) given from outside (what
the CUDA-graph step does) against the noise drawn inside, and the graphed training on CUDA."""
import math

import numpy as np
import pytest
import torch

from host_reads import HostReadGuard
from latentinv import _training_step as ts
from latentinv.datasets import make_straight_channels
from latentinv.nn.vae import VAE, build_vae
from latentinv.prior import VAEPrior


def test_reparameterise_with_given_noise():
    g = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    eps = torch.randn(6, 3, generator=torch.Generator().manual_seed(9))
    z = VAE.reparameterise(mu, logvar, alpha=0.3, eps=eps)
    torch.testing.assert_close(z, mu + math.sqrt(0.3) * torch.exp(0.5 * logvar) * eps, rtol=0, atol=0)
    drawn = VAE.reparameterise(mu, logvar, alpha=0.3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(drawn, z)                       # the same draw, given or drawn
    assert VAE.reparameterise(mu, logvar, alpha=0, eps=eps) is mu


def _module_and_optimizer():
    module = build_vae("conv", (16, 16), 2, channels=(4, 8), kernel_sizes=(5, 4), hidden_size=16, seed=1)
    return module, torch.optim.Adam(module.parameters(), lr=1e-3)


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_given_noise_trains_the_same_network(alpha):
    """Steps fed the noise from outside (drawn from the same generator, as the graphed step draws it)
    give the eager step's network bit for bit on the CPU."""
    X = torch.tensor(make_straight_channels(8, shape=(16, 16), random_state=0).reshape(8, -1), dtype=torch.float32)
    (m1, o1), (m2, o2) = _module_and_optimizer(), _module_and_optimizer()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    eager = ts.TrainingStep(m1, o1, g1, alpha=alpha, beta=10.0, bfloat16=False)
    given = ts.TrainingStep(m2, o2, g2, alpha=alpha, beta=10.0, bfloat16=False)
    for _ in range(4):
        a = eager(X)
        o2.zero_grad(set_to_none=True)
        b = given.forward_backward(X, torch.randn((8, 2), generator=g2))
        assert torch.equal(a, b)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("value, match", [("yes", "cuda_graphs must be True or False; got 'yes'"),
                                          (1, "cuda_graphs must be True or False; got 1")])
def test_cuda_graphs_parameter(value, match):
    with pytest.raises(ValueError, match=match):
        VAEPrior(cuda_graphs=value, device="cpu", n_iterations=1).fit(np.zeros((4, 8, 8)))


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="cuda_graphs=True needs CUDA .* resolved to cpu"):
        VAEPrior(cuda_graphs=True, device="cpu", n_iterations=1).fit(np.zeros((4, 8, 8)))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
KW = dict(n_components=2, channels=(4, 8), kernel_sizes=(5, 4), hidden_size=16, batch_size=8, n_iterations=30,
          random_state=0, device="cuda")


@cuda
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_graphed_training_follows_the_eager_one(alpha):
    """The graphed step (warm-up, capture, replays) against the eager one: the same loss curve to
    rounding over the first steps, within 1 % (1e-3 on average) after, and the same network twice from
    the same seed."""
    X = make_straight_channels(40, shape=(16, 16), random_state=0)
    eager = VAEPrior(**KW, alpha=alpha).fit(X)
    graphed = VAEPrior(**KW, alpha=alpha, cuda_graphs=True).fit(X)
    loss_g, loss_e = np.asarray(graphed.history_["loss"]), np.asarray(eager.history_["loss"])
    # Steps 0-5: three warm-up steps, the capture, two replays on new inputs (their updates show in the
    # losses up to step 5). They differ from the eager steps by rounding alone (the graph's kernels,
    # capturable Adam): seen up to 6e-6 on an H200. One update left out moves the next losses by 4e-3
    # to 1e-2 (seen on the CPU), a step on a stale batch or noise by more.
    np.testing.assert_allclose(loss_g[:6], loss_e[:6], rtol=5e-5)
    # Later the training amplifies those differences (Adam's normalised step turns a rounding-sized
    # change of a near-zero gradient into a step of up to the learning rate): seen up to 2.3e-3 at
    # step 19, and weights apart by up to 1e-2 after 30 steps at alpha=1 (ten steps' worth), so the
    # weights are not compared; a replay that stops training or trains otherwise leaves the curve, and
    # an update left out in the first 18 steps lifts the curve's mean difference to 1.2e-3-3.8e-3 (seen
    # on the CPU; graphed: 1.8e-4).
    np.testing.assert_allclose(loss_g, loss_e, rtol=1e-2)
    mean = float(np.mean(np.abs(loss_g - loss_e) / loss_e))
    assert mean < 1e-3, f"the loss curves differ by {mean:.1e} on average"
    again = VAEPrior(**KW, alpha=alpha, cuda_graphs=True).fit(X)
    for p, q in zip(graphed.module_.parameters(), again.module_.parameters()):
        assert torch.equal(p, q)


@cuda
def test_graphed_training_captures_without_a_collection():
    """The capture follows fit's memory probe and the warm-up with no garbage collection between them (as
    when the collector happens not to run): a probe graph kept alive by a cycle held the weights'
    AccumulateGrad nodes on the default stream, and the capture failed ("operation would make the legacy
    stream depend on a capturing blocking stream", seen on an H200 when the collector had not run)."""
    import gc
    X = make_straight_channels(40, shape=(16, 16), random_state=0)
    enabled = gc.isenabled()
    gc.disable()
    try:
        prior = VAEPrior(**KW, cuda_graphs=True).fit(X)
    finally:
        if enabled:
            gc.enable()
    assert len(prior.history_["loss"]) == KW["n_iterations"] and np.isfinite(prior.history_["loss"]).all()


@cuda
def test_graphed_training_resumes_from_a_checkpoint(tmp_path):
    """A graphed training stopped at a checkpoint and extended (Adam's step count back on the device,
    as capturable Adam needs it) ends where one run of that length ends, to rounding."""
    X = make_straight_channels(40, shape=(16, 16), random_state=0)
    whole = VAEPrior(**KW, cuda_graphs=True).fit(X)
    VAEPrior(**dict(KW, n_iterations=20), cuda_graphs=True).fit(X, checkpoint=tmp_path, checkpoint_every=10)
    resumed = VAEPrior(**KW, cuda_graphs=True).fit(X, checkpoint=tmp_path, checkpoint_every=10)
    np.testing.assert_allclose(resumed.history_["loss"], whole.history_["loss"], rtol=1e-5)
    for p, q in zip(resumed.module_.parameters(), whole.module_.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_captured_step_never_reads_the_device(monkeypatch):
    """What the CUDA graph captures (forward with the given noise, loss, backward; Adam's capturable
    update is torch's) makes no host read of a tensor and no tensor without a device, float32 and
    bfloat16."""
    from latentinv._common import native_bfloat16

    X = torch.tensor(make_straight_channels(8, shape=(16, 16), random_state=0).reshape(8, -1), dtype=torch.float32)
    guard = HostReadGuard(monkeypatch)
    for bfloat16 in (False, True) if native_bfloat16(torch.device("cpu")) else (False,):
        module, optimizer = _module_and_optimizer()
        monkeypatch.setattr(optimizer, "step", lambda: None)
        step = ts.TrainingStep(module, optimizer, None, alpha=1.0, beta=10.0, bfloat16=bfloat16)
        eps = torch.randn(8, 2)
        with guard.watching():
            out = step.forward_backward(X, eps, autocast_cache=False)
        assert out.shape == (3,) and all(p.grad is not None for p in module.parameters())
    assert guard.reads == []


def test_the_graphed_steps_noise_is_the_training_generators_draw():
    """GraphedTrainingStep draws the noise of eq. (1) from the training's own generator (the eager step's
    draw: torch.randn of shape (batch, n_components) from it); at alpha = 0 zeros, the generator untouched
    (the eager step draws nothing there either)."""
    module, optimizer = _module_and_optimizer()
    cpu = torch.device("cpu")
    drawn = torch.Generator().manual_seed(11)
    step = ts.GraphedTrainingStep(module, optimizer, drawn, alpha=0.5, beta=1.0, bfloat16=False, n_components=2)
    expected = torch.Generator().manual_seed(11)
    for _ in range(2):
        assert torch.equal(step._noise(6, cpu), torch.randn((6, 2), generator=expected))
    untouched = torch.Generator().manual_seed(11)
    step = ts.GraphedTrainingStep(module, optimizer, untouched, alpha=0.0, beta=1.0, bfloat16=False, n_components=2)
    assert torch.equal(step._noise(6, cpu), torch.zeros(6, 2))
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(11).get_state())
