"""LatentInverter(precision="bfloat16"): the decoder under autocast during the iterations, the
returned models and misfits re-scored in float32, and the 1 % guard."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import latentinv.inversion.estimator as estimator
from latentinv.inversion import LatentInverter, PrecisionWarning, TorchGenerator
from latentinv.nn.autocast import autocast_enabled
from latentinv.operators import StraightRayOperator

sys.path.insert(0, str(Path(__file__).with_name("golden")))
from cases import small_crosshole  # noqa: E402  (the small problem shared with the golden record)

D = 4
bf16 = pytest.mark.skipif(not estimator._native_bfloat16(torch.device("cpu")),
                          reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def _op():
    return StraightRayOperator(*small_crosshole())


class Net(torch.nn.Module):
    """sigmoid(W2 tanh(W1 z)) + ``autocast_offset`` while autocast is on (to trip the guard)."""

    def __init__(self, autocast_offset=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.l1 = torch.nn.Linear(D, 32)
        self.l2 = torch.nn.Linear(32, 96)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.offset = autocast_offset

    def forward(self, z):
        x = torch.sigmoid(self.l2(torch.tanh(self.l1(z))))
        return x + self.offset if autocast_enabled("cpu") else x


def _run(net, **params):
    op = _op()
    gen = TorchGenerator(net.eval(), D, image_shape=(12, 8))
    z = torch.tensor(np.random.default_rng(0).standard_normal((2, D)), dtype=torch.float32)
    with torch.no_grad():
        truth = net(z).double().numpy()
    data = op.response(1.0 / (0.06 + 0.02 * (1.0 - truth)))
    inv = LatentInverter(gen, op, **dict(dict(n_starts=4, n_epochs=4, batch_size=9, lr=2e-3,
                                              random_state=1, device="cpu"), **params)).fit(data)
    return inv, inv.invert(data), data


@bf16
def test_bfloat16_run_returns_float32_models_and_misfits():
    inv, res, data = _run(Net(), precision="bfloat16")
    S, K, d = res.latents.shape
    with torch.no_grad():
        again = inv.prior_.decoder_(torch.tensor(res.latents.reshape(-1, d), dtype=torch.float32))
    np.testing.assert_array_equal(res.start_models.reshape(S * K, -1), again.double().numpy())
    t = inv.simulate(res.start_models.reshape(S * K, -1)).reshape(S, K, -1)
    rmse = np.sqrt(np.mean((t - data[:, None, :]) ** 2, axis=2))
    np.testing.assert_allclose(res.data_rmse, rmse, rtol=1e-4)
    assert np.array_equal(res.best_start, np.argmin(res.data_rmse, axis=1))
    np.testing.assert_array_equal(res.models, res.start_models[np.arange(S), res.best_start])
    assert len(res.settings["bfloat16_rmse_change"]) == S
    # the search itself ran in bfloat16: its histories differ from a float32 run's
    _, res32, _ = _run(Net())
    assert not np.array_equal(res.data_rmse_history, res32.data_rmse_history)
    np.testing.assert_allclose(res.data_rmse_history, res32.data_rmse_history, rtol=0.1)


@bf16
def test_guard_warns_when_bfloat16_misleads_the_search():
    with pytest.warns(PrecisionWarning, match=r"data RMSE moved by up to .* %"):
        _, res, _ = _run(Net(autocast_offset=0.05), precision="bfloat16")
    assert max(res.settings["bfloat16_rmse_change"]) > 0.01


@pytest.mark.filterwarnings("ignore::latentinv.baselines.BaselineWarning")
def test_chunked_runs_report_and_warn_the_guard_of_every_survey(monkeypatch):
    """With chunks (chunk_size, n_jobs), settings["bfloat16_rmse_change"] holds one change per survey of X
    (not only the first chunk's), and one PrecisionWarning names the surveys by their index in X (not in
    their chunk). The guard's arithmetic runs on any CPU (bfloat16 emulated where it is not native)."""
    import warnings as _warnings

    monkeypatch.setattr(estimator, "_native_bfloat16", lambda device: True)
    op = _op()
    gen = TorchGenerator(Net(autocast_offset=0.05).eval(), D, image_shape=(12, 8))
    z = torch.tensor(np.random.default_rng(0).standard_normal((3, D)), dtype=torch.float32)
    with torch.no_grad():
        truth = Net().eval()(z).double().numpy()
    data = op.response(1.0 / (0.06 + 0.02 * (1.0 - truth)))
    params = dict(n_starts=2, n_epochs=1, batch_size=9, lr=2e-3, random_state=1, device="cpu",
                  precision="bfloat16")
    alone = []
    for i in range(3):
        with pytest.warns(PrecisionWarning):
            r = LatentInverter(gen, op, chunk_size=1, **params).fit(data).invert(data[i:i + 1])
        alone.append(r.settings["bfloat16_rmse_change"][0])
    assert min(alone) > 0.01
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        res = LatentInverter(gen, op, chunk_size=1, n_jobs=1, **params).fit(data).invert(data)
    np.testing.assert_array_equal(res.settings["bfloat16_rmse_change"], alone)
    guards = [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]
    assert len(guards) == 1 and "(surveys [0, 1, 2])" in guards[0], guards


def test_precision_refused_without_native_bfloat16(monkeypatch):
    monkeypatch.setattr(estimator, "_native_bfloat16", lambda device: False)
    with pytest.raises(ValueError, match="precision='bfloat16' needs native bfloat16"):
        _run(Net(), precision="bfloat16")
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16', got 'half'"):
        _run(Net(), precision="half")


def test_latent_problem_takes_its_device_as_a_string():
    """``LatentProblem(..., device="cpu")`` held its data on the CPU but failed in a bfloat16 decode, which
    reads ``device.type`` (AttributeError: 'str' object has no attribute 'type'); autocast is entered
    before the decoder runs, so this needs no native bfloat16."""
    from latentinv.inversion import LatentProblem

    op = _op()
    net = Net().eval()
    problem = LatentProblem(net, lambda x: 1.0 / (0.06 + 0.02 * (1.0 - x)), op, np.ones((1, op.n_data)), None,
                            2, "cpu", precision="bfloat16")
    z = torch.zeros(2, D)
    x, s = problem.decode(z)
    assert problem.device == torch.device("cpu")
    with torch.no_grad():
        expected = net(z)
    assert x.dtype == torch.float32 and x.shape == expected.shape
    torch.testing.assert_close(x, expected, atol=2e-2, rtol=0)      # bfloat16's 8 bits of mantissa
    torch.testing.assert_close(s, 1.0 / (0.06 + 0.02 * (1.0 - x)))
