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


def test_nn_layer_does_not_import_sklearn():
    import subprocess

    code = "import sys, latentinv.nn.vae; print('sklearn' in sys.modules)"
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


def test_build_vae_errors():
    with pytest.raises(ValueError, match="needs input_shape=\\(n_rows, n_cols\\)"):
        build_vae("conv", 16, 2)
    with pytest.raises(ValueError, match="architecture must be"):
        build_vae("transformer", 16, 2)
    with pytest.raises(TypeError, match="encode"):
        build_vae(lambda shape, d: torch.nn.Linear(2, 2), 16, 2)
