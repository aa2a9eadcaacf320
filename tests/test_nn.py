"""Tests of the torch layer latentinv.nn.vae (no scikit-learn involved)."""

import math
import sys

import numpy as np
import pytest
import torch

from latentinv.nn import (
    VAE,
    ConvEncoder,
    LatentDecoder,
    build_vae,
    conv_geometry,
    kl_divergence,
    vae_loss,
)
from latentinv.nn.autocast import autocast_enabled


def test_nn_layer_does_not_import_sklearn():
    import subprocess

    code = "import sys, latentinv.nn.vae, latentinv.nn.reference; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kl_closed_form_values():
    # KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - log s^2)
    mu = torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]], dtype=torch.float64)
    expected = np.array([[0.5, 0.5 * (4 - 1 - math.log(4))],
                         [0.5 * (0.25 - 1 - math.log(0.25)), 2.0]])
    np.testing.assert_allclose(kl_divergence(mu, logvar, "none").numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(float(kl_divergence(mu, logvar)), expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(float(kl_divergence(mu, logvar, "sum")), expected.sum(), rtol=1e-12)
    np.testing.assert_allclose(kl_divergence(mu, logvar, "per_sample").numpy(), expected.sum(1),
                               rtol=1e-12)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(7, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(7, 5, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p)
    np.testing.assert_allclose(kl_divergence(mu, logvar, "none").numpy(), ref.numpy(), rtol=1e-10)


def test_vae_loss_reference_convention():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 6, generator=g)
    x_hat = torch.rand(4, 6, generator=g)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss, rec, kl = vae_loss(x_hat, x, mu, logvar, beta=1000.0)
    assert float(rec) == pytest.approx(float(((x_hat - x) ** 2).sum()), rel=1e-6)
    kl_ref = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
    assert float(kl) == pytest.approx(float(kl_ref), rel=1e-6)
    assert float(loss) == pytest.approx(float(rec) + 1000.0 * float(kl), rel=1e-6)
    # eq. (4): per-sample convention with beta / (batch * d) gives loss / batch
    per_sample = ((x_hat - x) ** 2).sum(1).mean() + 1000.0 / (4 * 3) * kl_divergence(
        mu, logvar, "per_sample").mean()
    assert float(per_sample) == pytest.approx(float(loss) / 4, rel=1e-5)


def test_reparameterise_alpha():
    mu, logvar = torch.zeros(20000, 1), torch.full((20000, 1), math.log(4.0))
    g = torch.Generator().manual_seed(0)
    z = VAE.reparameterise(mu, logvar, alpha=0.25, generator=g)
    # std = sqrt(alpha) * sigma = 0.5 * 2 = 1
    assert float(z.std()) == pytest.approx(1.0, abs=0.03)
    assert torch.equal(VAE.reparameterise(mu + 3, logvar, alpha=0.0), mu + 3)


def test_reference_geometry_129x65():
    geom = conv_geometry((129, 65), (5, 5, 4, 4))
    assert [g["out_shape"] for g in geom] == [(63, 31), (30, 14), (14, 6), (6, 2)]
    assert all(g["padding"] == (0, 0) and g["output_padding"] == (0, 0) for g in geom)
    enc = ConvEncoder((129, 65), 20)
    # reference flatten size 256 * 6 * 2 = 3072 -> 512
    assert enc.fc[1].in_features == 3072 and enc.fc[1].out_features == 512
    vae = build_vae("conv", (129, 65), 20, seed=0)
    n_params = sum(p.numel() for p in vae.parameters())
    assert n_params == 4595304  # same layers as the reference notebook


@pytest.mark.parametrize("shape", [(129, 65), (16, 16), (17, 9), (1, 1), (3, 40), (50, 7)])
def test_conv_decoder_dry_run_any_shape(shape):
    vae = build_vae("conv", shape, 3, channels=(2, 4, 4, 4), hidden_size=8, seed=0).eval()
    x = torch.rand(5, shape[0] * shape[1])
    mu, logvar = vae.encode(x)
    assert mu.shape == (5, 3) and logvar.shape == (5, 3)
    out = vae.decode(mu).detach()
    assert out.shape == (5, shape[0] * shape[1])
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # 3-D and 4-D inputs are accepted too
    torch.testing.assert_close(vae.encode(x.reshape(5, *shape))[0], mu)


def test_conv_encoder_rejects_wrong_shape():
    enc = ConvEncoder((16, 16), 2, channels=(2, 2, 2, 2), hidden_size=4)
    with pytest.raises(ValueError, match=r"ConvEncoder: expected input of shape \(batch, 256\)"):
        enc(torch.rand(3, 255))


def test_latent_decoder_batch_agnostic_and_differentiable():
    vae = build_vae("conv", (17, 9), 4, channels=(2, 4, 4, 4), hidden_size=8, seed=0).eval()
    dec = LatentDecoder(vae)
    z = torch.randn(300, 4, requires_grad=True)
    out = dec(z)
    assert out.shape == (300, 153) and out.dtype == torch.float32
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # per-sample independence: a row does not depend on the rest of the batch
    torch.testing.assert_close(dec(z[:1]), out[:1])


def test_build_vae_seed_and_global_rng():
    state = torch.random.get_rng_state()
    a = build_vae("mlp", 5, 2, hidden_size=8, seed=3)
    b = build_vae("mlp", 5, 2, hidden_size=8, seed=3)
    c = build_vae("mlp", 5, 2, hidden_size=8, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.encoder.fc_mu.weight, c.encoder.fc_mu.weight)
    # seed=0 seeds too: the same weights whatever the global RNG's state (not the state's draws)
    zero = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        zero.append(build_vae("mlp", 5, 2, hidden_size=8, seed=0).encoder.fc_mu.weight)
    torch.random.set_rng_state(state)
    assert torch.equal(zero[0], zero[1])


def test_builds_in_two_threads_at_once_give_the_weights_of_the_same_builds_in_turn():
    """fork_rng saves and restores one process-wide RNG state: a build in another thread while one was
    inside its block drew from the other's seed (VAEPrior fits of the same random_state in two threads
    gave weights up to 1.2 from the same fit alone) and left the caller's RNG state changed. Builds now
    take turns. Here each build stops after its first layer: A until B has drawn its own first layer (or
    0.3 s passed: B waits for A now), then B until A is done."""
    import threading

    def halting(inside, release):
        class Halting(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.first = torch.nn.Linear(4, 3)
                inside.set()
                release.wait(10)
                self.second = torch.nn.Linear(3, 4)

            def encode(self, x):
                return self.first(x), self.first(x)

            def decode(self, z):
                return self.second(z)
        return lambda shape, d: Halting()

    weights = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    free = threading.Event()
    free.set()
    alone = {k: weights(build_vae(halting(threading.Event(), free), 4, 3, seed=seed))
             for k, seed in (("a", 0), ("b", 1))}
    state = torch.random.get_rng_state()
    a_in, a_go, b_in, b_go = (threading.Event() for _ in range(4))
    built = {}
    a = threading.Thread(target=lambda: built.update(a=build_vae(halting(a_in, a_go), 4, 3, seed=0)))
    b = threading.Thread(target=lambda: built.update(b=build_vae(halting(b_in, b_go), 4, 3, seed=1)))
    a.start()
    assert a_in.wait(10)
    b.start()
    b_in.wait(0.3)          # before: B seeded the RNG inside A's block, and A's second layer drew from it
    a_go.set()
    a.join(10)
    b_go.set()
    b.join(10)
    assert torch.equal(weights(built["a"]), alone["a"]) and torch.equal(weights(built["b"]), alone["b"])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_build_vae_errors():
    with pytest.raises(ValueError, match="needs input_shape=\\(n_rows, n_cols\\)"):
        build_vae("conv", 16, 2)
    with pytest.raises(ValueError, match="architecture must be"):
        build_vae("transformer", 16, 2)
    with pytest.raises(TypeError, match="encode"):
        build_vae(lambda shape, d: torch.nn.Linear(2, 2), 16, 2)


# ---------------------------------------------------------------------------------------------------
# the decoder's last layer: a fast CPU path for a transposed convolution to one channel
# ---------------------------------------------------------------------------------------------------
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from latentinv.nn.vae import ConvDecoder, _ConvTranspose2dToOneChannel  # noqa: E402


@st.composite
def one_channel_deconv(draw):
    k = draw(st.integers(1, 6))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, (k - 1) // 2))
    op = draw(st.integers(0, s - 1))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if (h - 1) * s - 2 * p + k + op < 1 or (w - 1) * s - 2 * p + k + op < 1:
        p = 0
    return dict(c=draw(st.integers(1, 6)), h=h, w=w, k=k, s=s, p=p, op=op,
                n=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=60, deadline=None)
@given(one_channel_deconv())
def test_fast_one_channel_deconv_equals_the_definition(case):
    torch.manual_seed(case["seed"])
    layer = _ConvTranspose2dToOneChannel(case["c"], 1, case["k"], stride=case["s"], padding=case["p"],
                                         output_padding=case["op"], bias=False).requires_grad_(False)
    x = torch.randn(case["n"], case["c"], case["h"], case["w"], requires_grad=True)
    y = layer(x)                                   # the fast path: constant weight, float32, CPU
    xd = x.detach().double().requires_grad_(True)
    ref = torch.nn.functional.conv_transpose2d(xd, layer.weight.double(), stride=case["s"],
                                               padding=case["p"], output_padding=case["op"])
    assert y.shape == ref.shape and y.dtype == torch.float32
    # float32 sums round with the size of their terms, not of their result (which may cancel to
    # nearly zero): the tolerances scale with the sums of |terms|, the same operation on |x|, |w|, |g|
    w_abs = layer.weight.double().abs()
    xa = xd.detach().abs().requires_grad_(True)
    terms = torch.nn.functional.conv_transpose2d(xa, w_abs, stride=case["s"], padding=case["p"],
                                                 output_padding=case["op"])
    assert float((y.detach().double() - ref.detach()).abs().max()) <= 1e-5 * (float(terms.detach().max()) + 1e-6)
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(y, x, g.float())
    (gr,) = torch.autograd.grad(ref, xd, g)
    (g_terms,) = torch.autograd.grad(terms, xa, g.abs())
    assert float((gx.double() - gr).abs().max()) <= 1e-5 * (float(g_terms.max()) + 1e-6)


def test_one_channel_deconv_trains_through_the_standard_layer():
    torch.manual_seed(0)
    layer = _ConvTranspose2dToOneChannel(4, 1, 5, stride=2, bias=False)
    plain = torch.nn.ConvTranspose2d(4, 1, 5, stride=2, bias=False)
    plain.load_state_dict(layer.state_dict())      # same parameters, same state-dict keys
    x = torch.randn(2, 4, 7, 6)
    # the weight wants a gradient: the standard path, bit for bit, and the weight gets its gradient
    assert torch.equal(layer(x), plain(x))
    layer(x).sum().backward()
    plain(x).sum().backward()
    assert torch.equal(layer.weight.grad, plain.weight.grad)
    with torch.no_grad():                          # a constant weight: the fast path, same values
        torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-6)


def test_fast_one_channel_deconv_has_second_derivatives():
    torch.manual_seed(1)
    layer = _ConvTranspose2dToOneChannel(3, 1, 4, stride=2, bias=False).requires_grad_(False)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float32, requires_grad=True)
    v = torch.randn_like(x)
    # Hessian-vector product of a non-quadratic function of the output, fast path vs the definition

    def hvp(f):
        (g,) = torch.autograd.grad(f(x).tanh().pow(2).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        return h

    ref = hvp(lambda t: torch.nn.functional.conv_transpose2d(t, layer.weight, stride=2))
    torch.testing.assert_close(hvp(layer), ref, rtol=1e-4, atol=1e-5)


def test_conv_decoder_uses_the_fast_layer_last():
    dec = ConvDecoder((129, 65), 20)
    convs = [m for m in dec.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert isinstance(convs[-1], _ConvTranspose2dToOneChannel) and convs[-1].out_channels == 1
    assert not any(isinstance(m, _ConvTranspose2dToOneChannel) for m in convs[:-1])


def _taps_in_kernel_order(x, weight, stride, padding, output_padding):
    """The fast path's sums written out: the channel GEMM, then each tap added into a zero output in
    kernel order (row-major), then the padding cropped."""
    n, c, h, w = x.shape
    k_h, k_w = weight.shape[2:]
    taps = torch.matmul(weight.reshape(c, k_h * k_w).t(), x.reshape(n, c, h * w)).reshape(n, k_h, k_w, h, w)
    full_h = (h - 1) * stride + k_h + output_padding
    full_w = (w - 1) * stride + k_w + output_padding
    y = torch.zeros(n, full_h, full_w)
    for r in range(k_h):
        for t in range(k_w):
            y[:, r:r + (h - 1) * stride + 1:stride, t:t + (w - 1) * stride + 1:stride] += taps[:, r, t]
    return y[:, padding:full_h - padding, padding:full_w - padding].unsqueeze(1)


@pytest.mark.parametrize("c,h,w,k,s,p,op", [(16, 63, 31, 5, 2, 0, 0), (3, 6, 5, 4, 2, 1, 1), (2, 4, 4, 3, 3, 1, 2)])
def test_fast_one_channel_deconv_adds_the_taps_in_kernel_order(c, h, w, k, s, p, op):
    # float32 outputs of the default path are kept bit for bit: the same additions in the same order
    torch.manual_seed(3)
    layer = _ConvTranspose2dToOneChannel(c, 1, k, stride=s, padding=p, output_padding=op,
                                         bias=False).requires_grad_(False)
    x = torch.randn(4, c, h, w)
    assert torch.equal(layer(x), _taps_in_kernel_order(x, layer.weight, s, p, op))


def test_fast_one_channel_deconv_in_bfloat16_under_autocast():
    torch.manual_seed(4)
    layer = _ConvTranspose2dToOneChannel(8, 1, 5, stride=2, bias=False).requires_grad_(False)
    x = torch.randn(3, 8, 9, 7).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (3, 1, 21, 17)   # taps added in float32
    xd = x.detach().double().requires_grad_(True)
    w16 = layer.weight.to(torch.bfloat16).double()                # the weight as the GEMM sees it
    ref = torch.nn.functional.conv_transpose2d(xd, w16, stride=2)
    scale = float(ref.detach().abs().max())
    # each tap rounded once to bfloat16 (relative 2**-9), at most ceil(5 / 2)**2 = 9 taps an output
    err = float((y.detach().double() - ref.detach()).abs().max())
    assert 0 < err <= 9 * 2.0**-9 * scale
    # the standard layer under autocast (oneDNN in bfloat16, its sums rounded once) agrees as closely
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        standard = torch.nn.functional.conv_transpose2d(x.detach(), layer.weight, stride=2)
    assert float((standard.double() - ref.detach()).abs().max()) <= 9 * 2.0**-9 * scale
    g = torch.randn(ref.shape, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, g.float())
    (gr,) = torch.autograd.grad(ref, xd, g)
    assert gx.dtype == torch.bfloat16
    assert float((gx.double() - gr).abs().max()) <= 2e-2 * float(gr.abs().max())   # bfloat16 rounding


# ---------------------------------------------------------------------------------------------------
# the frozen decoder's CPU float32 path: instance norm + ReLU as group norm + in-place ReLU
# ---------------------------------------------------------------------------------------------------
def _decoder_pair(image_shape, channels, kernel_sizes, seed=5):
    import copy
    torch.manual_seed(seed)
    fast = ConvDecoder(image_shape, 6, channels, kernel_sizes, hidden_size=32).eval().requires_grad_(False)
    plain = copy.deepcopy(fast)
    plain.fast_frozen_path = False              # the modules as they are (InstanceNorm2d, ReLU)
    return fast, plain


@pytest.mark.parametrize("image_shape,channels,kernel_sizes", [
    ((33, 17), (4, 8, 8, 16), (5, 5, 4, 4)),     # the paper's kernels on a smaller image
    ((21, 13), (3, 6, 12), (5, 3, 3)),
    ((6, 6), (4, 8, 8), (3, 3, 3)),             # the deepest map is 1 x 1: its norm is the identity
])
def test_frozen_decoder_fast_path_equals_the_modules(image_shape, channels, kernel_sizes):
    fast, plain = _decoder_pair(image_shape, channels, kernel_sizes)
    z = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    zf, zp = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    xf, xp = fast(zf), plain(zp)
    assert xf.shape == xp.shape == (7, image_shape[0] * image_shape[1])
    torch.testing.assert_close(xf, xp, rtol=1e-5, atol=1e-6)
    g = torch.randn(xf.shape, generator=torch.Generator().manual_seed(2))
    (gf,) = torch.autograd.grad(xf, zf, g)
    (gp,) = torch.autograd.grad(xp, zp, g)
    torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-5 * float(gp.abs().max()))
    # against the modules in float64 (round-off only)
    ref = plain.double()
    zd = z.double().requires_grad_(True)
    xd = ref(zd)
    (gd,) = torch.autograd.grad(xd, zd, g.double())
    assert float((xf.detach().double() - xd.detach()).abs().max()) <= 1e-5
    assert float((gf.double() - gd).abs().max()) <= 1e-4 * float(gd.abs().max())
    with torch.no_grad():                       # no autograd at all: the same path
        torch.testing.assert_close(fast(z), xf.detach(), rtol=0, atol=0)


def test_frozen_decoder_fast_path_is_used_and_training_is_unchanged(monkeypatch):
    import latentinv.nn.vae as vae_module
    calls = []
    real = vae_module._frozen_deconv
    monkeypatch.setattr(vae_module, "_frozen_deconv", lambda *a: calls.append(1) or real(*a))
    fast, plain = _decoder_pair((33, 17), (4, 8, 8, 16), (5, 5, 4, 4))
    z = torch.randn(3, 6)
    fast(z.requires_grad_(True))
    assert calls == [1]                          # frozen weights, float32, CPU: the fast path
    fast.requires_grad_(True)
    plain.requires_grad_(True)
    y = fast(z)
    assert calls == [1]                          # weights that ask for gradients: the modules
    assert torch.equal(y, plain(z))              # bit for bit
    y.sum().backward()
    assert all(p.grad is not None for p in fast.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast.requires_grad_(False)(z)
    assert calls == [1]                          # autocast: the modules (bfloat16 path unchanged)


def test_frozen_decoder_fast_path_has_second_derivatives():
    fast, plain = _decoder_pair((21, 13), (3, 6, 12), (5, 3, 3))
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    v = torch.randn_like(z)

    def hvp(dec):
        zz = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(dec(zz).pow(3).sum(), zz, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), zz)
        return h

    torch.testing.assert_close(hvp(fast), hvp(plain), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# the layout switches off the CPU's frozen path (CUDA; here with fast_frozen_path = False)
# ---------------------------------------------------------------------------------------------------
def _layout_pair(channels_last, group_norm, device="cpu", image_shape=(65, 33), fold_last=False, subpixel=False):
    """A decoder with its layout switches set and the same decoder without (the modules as they are).
    The smallest map is 4 x 2: on the CPU, torch's channels-last group norm loses precision in its
    backward on maps of two cells (1.5e-4 relative against float64 on a 2 x 1 map), a path latentinv
    never takes on the CPU (its own frozen path runs there)."""
    _, plain = _decoder_pair(image_shape, (4, 8, 8, 16), (5, 5, 4, 4))
    plain = plain.to(device)
    import copy
    switched = copy.deepcopy(plain)
    switched.layout_channels_last, switched.layout_group_norm = channels_last, group_norm
    switched.layout_fold_last, switched.layout_subpixel = fold_last, subpixel
    return switched, plain


@settings(max_examples=60, deadline=None)
@given(s1=st.integers(1, 3), s2=st.integers(1, 3), k1=st.integers(1, 6), k2=st.integers(1, 6),
       c_in=st.integers(1, 4), c_out=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5),
       data=st.data(), channels_last=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_subpixel_conv_transpose_is_the_transposed_convolution(s1, s2, k1, k2, c_in, c_out, h, w, data,
                                                                channels_last, seed):
    """Any stride, kernel, padding and output padding: the phases' convolution and interleave give the
    transposed convolution's values and input gradient (float64), in either memory layout."""
    from latentinv.nn import subpixel
    p1, p2 = data.draw(st.integers(0, k1 - 1)), data.draw(st.integers(0, k2 - 1))
    o1, o2 = data.draw(st.integers(0, s1 - 1)), data.draw(st.integers(0, s2 - 1))
    out_h, out_w = (h - 1) * s1 - 2 * p1 + k1 + o1, (w - 1) * s2 - 2 * p2 + k2 + o2
    assume(out_h > 0 and out_w > 0)
    torch.manual_seed(seed)
    conv = torch.nn.ConvTranspose2d(c_in, c_out, (k1, k2), stride=(s1, s2), padding=(p1, p2),
                                    output_padding=(o1, o2), bias=False).double()
    x = torch.randn(2, c_in, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    got = subpixel.conv_transpose(x, conv, subpixel.phase_weight(conv, torch.float64, channels_last))
    want = conv(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn(want.shape, dtype=torch.float64)
    (dg,) = torch.autograd.grad(got, x, g)
    (dw,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(dg, dw, rtol=1e-12, atol=1e-12)
    # where the phases' convolution returns NHWC (on an NHWC input, but for maps of one row or column,
    # whose strides are neither layout's), the interleaved output is NHWC too
    weight = subpixel.phase_weight(conv, torch.float64, channels_last)
    phases = torch.nn.functional.conv2d(x.detach(), weight, padding=(weight.shape[2] - 1, weight.shape[3] - 1))
    if phases.is_contiguous(memory_format=torch.channels_last) and not phases.is_contiguous():
        assert got.stride(1) == 1 or c_out == 1


@pytest.mark.parametrize("k, s, p, o", [((3, 3), (3, 3), (1, 1), (2, 2)), ((6, 2), (3, 2), (1, 0), (2, 1)),
                                        ((4, 5), (2, 3), (0, 1), (1, 2))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_output_padding_beyond_the_phases(k, s, p, o, channels_last):
    """An output padding that reaches past the phases' last row or column (k a multiple of s, o > p:
    rows the transposed convolution leaves zero): the zeros are appended before the padding ``p`` is
    cropped, so the output is conv_transpose2d's, shape and values (float64)."""
    from latentinv.nn import subpixel
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(2, 3, k, stride=s, padding=p, output_padding=o, bias=False).double()
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = subpixel.conv_transpose(x, conv, subpixel.phase_weight(conv, torch.float64, channels_last))
    want = torch.nn.functional.conv_transpose2d(x, conv.weight, None, s, p, o)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_subpixel_applies_only_where_it_computes_the_layer():
    """applies() is False for a bias (the phases' convolution has none: the sums would lack it), groups,
    dilation or another padding mode; True for the decoder's plain layers, which it computes."""
    from latentinv.nn import subpixel
    torch.manual_seed(1)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    plain = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, bias=False).double()
    assert subpixel.applies(plain)
    torch.testing.assert_close(subpixel.conv_transpose(x, plain, subpixel.phase_weight(plain, torch.float64)),
                               plain(x), rtol=1e-12, atol=1e-12)
    biased = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, bias=True).double()
    assert not torch.allclose(subpixel.conv_transpose(x, biased, subpixel.phase_weight(biased, torch.float64)),
                              biased(x))
    for conv in (biased, torch.nn.ConvTranspose2d(4, 2, 3, stride=2, groups=2, bias=False),
                 torch.nn.ConvTranspose2d(4, 2, 3, stride=2, dilation=2, bias=False)):
        assert not subpixel.applies(conv)
    assert not subpixel.applies(torch.nn.Conv2d(4, 2, 3, bias=False))


def test_cached_weight_copies_follow_the_dtype_and_layout_asked_for():
    """A layer's cached sub-kernels and channels-last weight are rebuilt when another dtype or memory
    order is asked for (one decoder serves float32 runs and bfloat16-autocast runs): each call gets
    the layer's weight, in its dtype and order, and the sub-kernels still compute the layer."""
    import copy
    from latentinv.nn import native, subpixel
    torch.manual_seed(2)
    conv = torch.nn.ConvTranspose2d(3, 2, 5, stride=2, bias=False)
    x = torch.randn(2, 3, 4, 3)
    want = copy.deepcopy(conv).double()(x.double()).detach()
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}
    for dtype, channels_last in [(torch.float64, False), (torch.float64, True), (torch.float32, True),
                                 (torch.bfloat16, True), (torch.float32, True), (torch.float32, False)]:
        order = torch.channels_last if channels_last else torch.contiguous_format
        phases = subpixel.phase_weight(conv, dtype, channels_last)
        assert phases.dtype == dtype and phases.is_contiguous(memory_format=order)
        got = subpixel.conv_transpose(x.to(dtype), conv, phases).double()
        assert float((got - want).abs().max()) <= tolerance[dtype] * float(want.abs().max())
        cached = native.channels_last_weight(conv, dtype)
        assert cached.dtype == dtype and cached.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(cached, conv.weight.detach().to(dtype))


#: (channels_last, group_norm, fold_last, subpixel)
LAYOUTS = [(True, False, False, False), (False, True, False, False), (True, True, False, False),
           (False, False, True, False), (True, True, True, False), (False, False, False, True),
           (True, True, False, True), (True, True, True, True)]


@pytest.mark.parametrize("channels_last,group_norm,fold_last,subpixel", LAYOUTS)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_layout_switches_equal_the_modules(channels_last, group_norm, fold_last, subpixel, device, monkeypatch):
    import copy
    import latentinv.nn.vae as vae_module
    calls = []
    real = vae_module._frozen_deconv
    monkeypatch.setattr(vae_module, "_frozen_deconv", lambda *a, **k: calls.append(k) or real(*a, **k))
    switched, plain = _layout_pair(channels_last, group_norm, device, fold_last=fold_last, subpixel=subpixel)
    folds = []
    real_fold = vae_module._OneChannelConvTransposeFunction.apply
    monkeypatch.setattr(vae_module._OneChannelConvTransposeFunction, "apply",
                        lambda *a: folds.append(a[0].device.type) or real_fold(*a))
    layouts = []          # each transposed convolution's input: NHWC with channels_last (after instance norms too)
    real_conv = torch.nn.functional.conv_transpose2d
    monkeypatch.setattr(torch.nn.functional, "conv_transpose2d",
                        lambda x, *a, **k: layouts.append(x.is_contiguous(memory_format=torch.channels_last)
                                                          and (x.shape[1] == 1 or not x.is_contiguous()))
                        or real_conv(x, *a, **k))
    phases = []           # the sub-pixel layers: their input's layout, as above
    real_phases = vae_module._subpixel.conv_transpose
    monkeypatch.setattr(vae_module._subpixel, "conv_transpose",
                        lambda x, *a: phases.append(x.is_contiguous(memory_format=torch.channels_last)
                                                    and (x.shape[1] == 1 or not x.is_contiguous()))
                        or real_phases(x, *a))
    exact = copy.deepcopy(plain).double()
    z = torch.randn(7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    g = torch.randn(7, exact.n_cells, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(device)
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(device)

    def derivatives(decoder, dtype):
        """Models, the gradient of <g, x> and its product with v (a sampler's HMC takes the second)."""
        zz = z.to(dtype).requires_grad_(True)
        x = decoder(zz)
        (grad,) = torch.autograd.grad(x, zz, g.to(dtype), create_graph=True)
        (hv,) = torch.autograd.grad((grad * v.to(dtype)).sum(), zz)
        return [t.detach().double() for t in (x, grad, hv)]

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):     # float32 arithmetic on CUDA too
        got = derivatives(switched, torch.float32)
        assert calls == [dict(group_norm=group_norm, channels_last=channels_last, fold_last=fold_last,
                              subpixel=subpixel, fused_norm=False)]
        # the layout path ran, with its last layer folded (on the CPU, the NCHW layer folds itself)
        assert folds == ([device] if fold_last or (device == "cpu" and not channels_last and not subpixel)
                         else [])
        unfolded = 4 - len(folds)              # the transposed convolutions that do not fold
        # each ran as a sub-pixel convolution or a transposed convolution, on NHWC maps with channels_last
        assert len(phases) == (unfolded if subpixel else 0)
        assert len(layouts) == (0 if subpixel else unfolded)
        if channels_last:
            assert all(phases) and all(layouts)
        want = derivatives(exact, torch.float64)
    for a, b in zip(got, want):                   # float32 round-off against the modules in float64
        assert float((a - b).abs().max()) <= 2e-6 * float(b.abs().max())
    # the decoder's own weights keep their layout; the channels-last copies are cached on the layers
    assert all(p.is_contiguous() for p in switched.parameters())
    cached = [m.__dict__.get("_latentinv_channels_last_weight") is not None for m in switched.deconv
              if isinstance(m, torch.nn.ConvTranspose2d)]
    assert cached == [channels_last and not subpixel] * 3 + [channels_last and not fold_last and not subpixel]
    cached = [m.__dict__.get("_latentinv_phase_weight") is not None for m in switched.deconv
              if isinstance(m, torch.nn.ConvTranspose2d)]
    assert cached == [subpixel] * 3 + [subpixel and not fold_last]


@pytest.mark.parametrize("channels_last,group_norm,fold_last,subpixel", LAYOUTS)
def test_layout_switches_under_bfloat16_autocast(channels_last, group_norm, fold_last, subpixel, monkeypatch):
    import latentinv.nn.vae as vae_module
    calls = []
    real = vae_module._frozen_deconv
    monkeypatch.setattr(vae_module, "_frozen_deconv", lambda *a, **k: calls.append(k) or real(*a, **k))
    switched, plain = _layout_pair(channels_last, group_norm, fold_last=fold_last, subpixel=subpixel)
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(7))
    # the group norms run in bfloat16 outside autocast, whose CUDA policy would run them in float32 (a
    # cast of the map before and after each). CPU autocast leaves them in bfloat16 anyway, so here the
    # autocast state at the call is what tells the two apart
    norms = []
    real_norm = torch.nn.functional.group_norm
    monkeypatch.setattr(torch.nn.functional, "group_norm", lambda x, *a, **k: (lambda out: norms.append(
        (x.dtype, out.dtype, autocast_enabled("cpu"))) or out)(real_norm(x, *a, **k)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xs, xp = switched(z), plain(z)
    assert norms == ([(torch.bfloat16, torch.bfloat16, False)] * 3 if group_norm else [])
    assert calls == [dict(group_norm=group_norm, channels_last=channels_last, fold_last=fold_last,
                          subpixel=subpixel, fused_norm=False)]   # the layout path
    assert float((xs.float() - xp.float()).abs().max()) < 3e-2           # bfloat16 round-off
    assert float((xs.float() - plain(z)).abs().max()) < 3e-2


@pytest.mark.parametrize("subpixel", [False, True])
def test_layout_switches_leave_training_and_follow_weight_changes(subpixel):
    switched, plain = _layout_pair(True, True, fold_last=True, subpixel=subpixel)
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(8))
    switched.requires_grad_(True)
    plain.requires_grad_(True)
    y = switched(z)
    assert torch.equal(y, plain(z))              # weights that ask for gradients: the modules, bit for bit
    y.sum().backward()
    assert all(p.grad is not None for p in switched.parameters())
    switched.requires_grad_(False)
    plain.requires_grad_(False)
    before = switched(z)
    with torch.no_grad():                        # in place: the cached channels-last weights must follow
        for a, b in zip(switched.deconv.parameters(), plain.deconv.parameters()):
            a.mul_(1.5)
            b.mul_(1.5)
    after = switched(z)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, plain(z), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# the frozen decoder's two fully-connected layers as one affine map
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n_components=st.integers(1, 8), hidden=st.integers(1, 40), c=st.integers(1, 9), h=st.integers(1, 5),
       w=st.integers(1, 5), batch=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_composed_fc_is_the_two_layers(n_components, hidden, c, h, w, batch, seed):
    from latentinv.nn.vae import _composed_fc
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fc = torch.nn.Sequential(torch.nn.Linear(n_components, hidden), torch.nn.Linear(hidden, c * h * w),
                             torch.nn.ReLU()).double()
    z = torch.randn(batch, n_components, generator=g, dtype=torch.float64)
    got = _composed_fc(fc, z, (c, h, w))
    want = fc(z).reshape(batch, c, h, w)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)    # the same map, in float64
    if batch:     # laid out channels-last (the transposed convolutions' layout): no reorder needed
        assert got.is_contiguous(memory_format=torch.channels_last) or c == 1 or h * w == 1


def test_composed_fc_follows_weight_changes_and_declines_other_stacks():
    from latentinv.nn.vae import _composed_fc
    torch.manual_seed(0)
    fc = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 8), torch.nn.ReLU())
    z = torch.randn(4, 3)
    before = _composed_fc(fc, z, (2, 2, 2))
    with torch.no_grad():
        fc[1].bias.add_(1.0)                     # in place: the cached map must follow
    torch.testing.assert_close(_composed_fc(fc, z, (2, 2, 2)), fc(z).reshape(4, 2, 2, 2))
    assert not torch.equal(before, _composed_fc(fc, z, (2, 2, 2)))
    fc[0] = torch.nn.Linear(3, 5, bias=False)    # another tensor, no bias
    torch.testing.assert_close(_composed_fc(fc, z, (2, 2, 2)), fc(z).reshape(4, 2, 2, 2))
    # an activation between the layers: not one affine map
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 8), torch.nn.ReLU())
    assert _composed_fc(other, z, (2, 2, 2)) is None


def test_frozen_decoder_composes_its_fc_only_when_frozen(monkeypatch):
    import latentinv.nn.vae as vae_module
    calls = []
    real = vae_module._composed_fc
    monkeypatch.setattr(vae_module, "_composed_fc", lambda *a: calls.append(1) or real(*a))
    fast, plain = _decoder_pair((33, 17), (4, 8, 8, 16), (5, 5, 4, 4))
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    y = fast(z)
    assert calls == [1]
    fast.compose_fc = False
    torch.testing.assert_close(y, fast(z), rtol=1e-5, atol=1e-6)     # float32 round-off apart
    assert calls == [1]
    fast.compose_fc = True
    fast.requires_grad_(True)
    assert torch.equal(fast(z), plain.requires_grad_(True)(z))       # training: the modules
    assert calls == [1]
