"""Tests of the VAEPrior estimator."""

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from latentinv.datasets import PatchSampler, make_channel_image, make_straight_channels
from latentinv.nn import VAE, MLPDecoder, MLPEncoder
from latentinv.prior import VAEPrior

SMALL_CONV = dict(channels=(4, 8, 8, 8), hidden_size=16, device="cpu")

@pytest.fixture(scope="module")
def straight():
    X = make_straight_channels(400, (16, 16), 3, random_state=0)
    X_test = make_straight_channels(50, (16, 16), 3, random_state=1)
    return X, X_test


def _rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a).reshape(len(a), -1) - np.asarray(b).reshape(len(b), -1)) ** 2)))


def test_attributes_and_shapes(straight):
    X, X_test = straight
    prior = VAEPrior(n_components=3, n_iterations=2, batch_size=20, random_state=0, **SMALL_CONV).fit(X)
    assert prior.image_shape_ == (16, 16) and prior.n_features_in_ == 256
    assert prior.device_ == torch.device("cpu")
    assert not prior.module_.training and not prior.decoder_.training
    assert not any(p.requires_grad for p in prior.module_.parameters())   # fitted: a constant
    assert prior.latent_distribution == "normal" and VAEPrior.latent_distribution == "normal"
    assert set(prior.history_) == {"reconstruction", "kl", "loss"}
    assert all(len(v) == 2 for v in prior.history_.values())
    np.testing.assert_allclose(prior.history_["loss"],
                               np.array(prior.history_["reconstruction"]) + 1000 * np.array(prior.history_["kl"]),
                               rtol=1e-5)
    assert prior.beta_per_sample_ == pytest.approx(1000 / (20 * 3))
    Z = prior.transform(X_test)
    assert Z.shape == (50, 3) and Z.dtype == np.float64
    np.testing.assert_array_equal(Z, prior.encode(X_test.reshape(50, -1)))
    Xr = prior.inverse_transform(Z)
    assert Xr.shape == (50, 256) and Xr.dtype == np.float64 and Xr.min() >= 0 and Xr.max() <= 1
    S = prior.sample(7, random_state=0)
    assert S.shape == (7, 256)
    np.testing.assert_array_equal(S, prior.sample(7, random_state=0))
    # decoder_ is the mean decoder, flat in C order, batch agnostic
    z = torch.tensor(Z, dtype=torch.float32)
    np.testing.assert_allclose(prior.decoder_(z).detach().numpy(), Xr, rtol=1e-6, atol=1e-7)
    # per-sample ELBO: -(sum of squared errors at the mean) - sum of KL over latent dims
    mu, logvar = prior.module_.encode(torch.tensor(X_test.reshape(50, -1), dtype=torch.float32))
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(1).double().detach().numpy()
    se = ((Xr - X_test.reshape(50, -1)) ** 2).sum(1)
    np.testing.assert_allclose(prior.score_samples(X_test), -se - kl, rtol=1e-5)
    assert prior.score(X_test) == pytest.approx(np.mean(-se - kl), rel=1e-5)


def test_conv_reconstructs_straight_channels(straight):
    """Short training (~10 s) on one-straight-channel images, reference convolutional network."""
    torch.set_num_threads(1)
    X, X_test = straight
    prior = VAEPrior(n_components=2, channels=(16, 32, 64, 64), hidden_size=128, beta=10.0,
                     batch_size=50, n_iterations=400, random_state=0, device="cpu").fit(X)
    rmse = _rmse(prior.decode(prior.encode(X_test)), X_test)
    # predicting the mean image gives sqrt(f (1 - f)) ~ 0.39 for these models
    trivial = _rmse(np.broadcast_to(X.mean(0), X_test.shape), X_test)
    assert trivial > 0.35
    assert rmse < 0.3, rmse


def test_mlp_reconstructs_and_samples_channel_fraction(straight):
    X, X_test = straight
    # one latent dimension for a one-parameter family (depth of the channel)
    prior = VAEPrior(architecture="mlp", n_components=1, hidden_size=64, beta=50.0, batch_size=50,
                     n_iterations=1000, random_state=0, device="cpu").fit(X)
    rmse = _rmse(prior.decode(prior.encode(X_test)), X_test)
    assert rmse < 0.12, rmse  # trivial (mean image) predictor: 0.39
    samples = prior.sample(1000, random_state=0)
    # every training model has a channel fraction of exactly 3/16
    assert abs(samples.mean() - 3 / 16) < 0.03, samples.mean()
    assert abs((samples > 0.5).mean() - 3 / 16) < 0.03


def test_alpha_zero_is_deterministic_autoencoder():
    X = make_straight_channels(30, (6, 5), 2, random_state=0).reshape(30, -1)
    params = dict(architecture="mlp", n_components=2, hidden_size=8, beta=0.0, alpha=0.0,
                  batch_size=30, random_state=3, device="cpu")
    vae = VAEPrior(n_iterations=15, **params).fit(X)
    # same initial weights: a zero learning rate leaves them untouched
    init = VAEPrior(n_iterations=1, learning_rate=0.0, **params).fit(X).module_
    ae = copy.deepcopy(init).train().requires_grad_(True)   # fitted modules come frozen
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    xt = torch.tensor(X, dtype=torch.float32)
    for _ in range(15):
        mu, _ = ae.encode(xt)
        loss = ((ae.decode(mu) - xt) ** 2).sum()  # plain autoencoder, no noise, no KL
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), (_, b) in zip(vae.module_.state_dict().items(), ae.state_dict().items()):
        if "logvar" in name:
            continue  # untrained head (no gradient reaches it when alpha = beta = 0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # and the training noise changes nothing: another seed for the noise alone would not matter
    assert not torch.equal(init.encoder.fc_mu.weight, vae.module_.encoder.fc_mu.weight)


def test_same_seed_same_weights_and_global_rng_untouched(straight):
    X, _ = straight
    state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = VAEPrior(n_components=2, n_iterations=5, batch_size=30, random_state=7, **SMALL_CONV).fit(X)
    b = VAEPrior(n_components=2, n_iterations=5, batch_size=30, random_state=7, **SMALL_CONV).fit(X)
    c = VAEPrior(n_components=2, n_iterations=5, batch_size=30, random_state=8, **SMALL_CONV).fit(X)
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    for (k, va), (_, vb) in zip(a.module_.state_dict().items(), b.module_.state_dict().items()):
        assert torch.equal(va, vb), k
    assert a.history_ == b.history_
    assert not torch.equal(a.module_.encoder.fc_mu.weight, c.module_.encoder.fc_mu.weight)


def test_patch_sampler_fit_reproducible():
    image = make_channel_image((60, 40), width=3, random_state=0)
    sampler = PatchSampler(image, (17, 9), exclude=[(0, 0, 20, 12)], random_state=0)
    a = VAEPrior(n_components=2, n_iterations=3, batch_size=8, random_state=1, **SMALL_CONV).fit(sampler)
    b = VAEPrior(n_components=2, n_iterations=3, batch_size=8, random_state=1, **SMALL_CONV).fit(sampler)
    assert a.image_shape_ == (17, 9) and a.n_features_in_ == 153
    assert a.history_ == b.history_
    assert a.decode(np.zeros((1, 2))).shape == (1, 153)
    with pytest.raises(ValueError, match="patch_shape=\\(17, 9\\) does not match image_shape"):
        VAEPrior(image_shape=(9, 17), n_iterations=1, **SMALL_CONV).fit(sampler)


def test_save_load_and_pickle_round_trip(tmp_path, straight):
    X, X_test = straight
    prior = VAEPrior(n_components=3, n_iterations=3, batch_size=20, random_state=0, **SMALL_CONV).fit(X)
    Z = np.random.default_rng(0).standard_normal((5, 3))
    ref = prior.decode(Z)
    prior.save(tmp_path / "prior")
    assert (tmp_path / "prior" / "weights.safetensors").exists()
    assert (tmp_path / "prior" / "config.json").exists()
    loaded = VAEPrior.load(tmp_path / "prior")
    np.testing.assert_array_equal(loaded.decode(Z), ref)
    assert not any(p.requires_grad for p in loaded.module_.parameters())
    np.testing.assert_array_equal(loaded.transform(X_test), prior.transform(X_test))
    assert loaded.get_params() == prior.get_params()
    assert loaded.history_ == prior.history_
    unpickled = pickle.loads(pickle.dumps(prior))
    np.testing.assert_array_equal(unpickled.decode(Z), ref)
    assert hasattr(prior, "module_")  # pickling does not strip the original


def test_cuda_pickle_loads_on_cpu_with_warning(straight):
    X, _ = straight
    prior = VAEPrior(n_components=2, n_iterations=1, batch_size=20, random_state=0, **SMALL_CONV).fit(X)
    state = prior.__getstate__()
    state["device_"] = "cuda:0"  # as if trained on a GPU
    clone_ = VAEPrior.__new__(VAEPrior)
    if torch.cuda.is_available():
        pytest.skip("CUDA available: the CPU fallback cannot be observed")
    with pytest.warns(UserWarning, match="CUDA is not available; loading it on the CPU"):
        clone_.__setstate__(state)
    assert clone_.device_ == torch.device("cpu")
    np.testing.assert_array_equal(clone_.decode(np.zeros((1, 2))), prior.decode(np.zeros((1, 2))))


def test_to_moves_the_fitted_network(straight, tmp_path):
    X, X_test = straight
    prior = VAEPrior(n_components=2, n_iterations=2, batch_size=20, random_state=0, **SMALL_CONV).fit(X)
    Z = np.random.default_rng(1).standard_normal((4, 2))
    ref = prior.decode(Z)
    assert prior.to("cpu") is prior and prior.device_ == torch.device("cpu")
    np.testing.assert_array_equal(prior.decode(Z), ref)
    assert prior.get_params()["device"] == "cpu"
    with pytest.raises(ValueError, match=r"VAEPrior.to: device must be .*got 'tpu'"):
        prior.to("tpu")
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        VAEPrior().to("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_then_serve_on_cpu(straight, tmp_path):
    X, X_test = straight
    kw = dict(SMALL_CONV, device="cuda")
    prior = VAEPrior(n_components=3, n_iterations=30, batch_size=20, random_state=0, **kw).fit(X)
    assert prior.device_.type == "cuda"
    Z = np.random.default_rng(2).standard_normal((5, 3))
    on_gpu = prior.decode(Z)
    codes = prior.transform(X_test)
    prior.to("cpu")
    # cuDNN convolutions run in TF32 by default (10-bit mantissa): ~1e-4 relative, not float32's 1e-7
    np.testing.assert_allclose(prior.decode(Z), on_gpu, atol=5e-4)
    np.testing.assert_allclose(prior.transform(X_test), codes, rtol=2e-3, atol=2e-3)
    prior.save(tmp_path / "p")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # saved from the CPU: loads there without a warning
        loaded = VAEPrior.load(tmp_path / "p")
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.decode(Z), prior.decode(Z))
    # the same seed on the GPU trains the same network (deterministic kernels requested)
    again = VAEPrior(n_components=3, n_iterations=30, batch_size=20, random_state=0, **kw).fit(X)
    np.testing.assert_allclose(again.history_["loss"], prior.history_["loss"], rtol=1e-5)


def test_custom_factory():
    def factory(input_shape, n_components):
        n = int(np.prod(input_shape))
        return VAE(MLPEncoder(n, n_components, 8), MLPDecoder(n, n_components, 8))

    X = make_straight_channels(20, (6, 5), 2, random_state=0)
    prior = VAEPrior(architecture=factory, n_components=2, n_iterations=2, random_state=0,
                     device="cpu").fit(X)
    assert prior.decode(np.zeros((3, 2))).shape == (3, 30)


def test_clone_pipeline_gridsearch():
    X = make_straight_channels(40, (6, 5), 2, random_state=0).reshape(40, -1)
    est = VAEPrior(architecture="mlp", n_components=2, hidden_size=8, n_iterations=3, random_state=0,
                   device="cpu")
    assert clone(est).get_params() == est.get_params()
    pipe = Pipeline([("scale", FunctionTransformer()), ("prior", est)]).fit(X)
    assert pipe.transform(X).shape == (40, 2)
    grid = GridSearchCV(est, {"n_components": [1, 2]}, cv=2).fit(X)
    assert grid.best_params_["n_components"] in (1, 2)
    assert np.isfinite(grid.best_score_)


def test_errors():
    X3 = make_straight_channels(10, (6, 5), 2, random_state=0)
    flat = X3.reshape(10, -1)
    with pytest.raises(ValueError, match="VAEPrior: architecture='conv' needs images"):
        VAEPrior(n_iterations=1, **SMALL_CONV).fit(flat)
    with pytest.raises(ValueError, match="image_shape=\\(5, 5\\) has 25 cells but X has 30"):
        VAEPrior(image_shape=(5, 5), n_iterations=1, **SMALL_CONV).fit(flat)
    with pytest.raises(ValueError, match="do not match image_shape"):
        VAEPrior(image_shape=(5, 6), n_iterations=1, **SMALL_CONV).fit(X3)
    bad = X3.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        VAEPrior(n_iterations=1, **SMALL_CONV).fit(bad)
    with pytest.raises(ValueError, match="VAEPrior: n_components must be an int >= 1; got 0"):
        VAEPrior(n_components=0, n_iterations=1, **SMALL_CONV).fit(X3)
    with pytest.raises(ValueError, match="VAEPrior: architecture must be"):
        VAEPrior(architecture="gan", n_iterations=1).fit(X3)
    with pytest.raises(ValueError, match="VAEPrior: beta must be a finite float >= 0"):
        VAEPrior(beta=-1.0, n_iterations=1, **SMALL_CONV).fit(X3)
    with pytest.raises(ValueError, match="VAEPrior: device must be"):
        VAEPrior(device="tpu", n_iterations=1).fit(X3)
    prior = VAEPrior(image_shape=(6, 5), n_iterations=1, **SMALL_CONV).fit(flat)
    assert prior.image_shape_ == (6, 5)
    with pytest.raises(ValueError, match="X has 29 features, but VAEPrior is expecting 30"):
        prior.transform(flat[:, :-1])
    with pytest.raises(ValueError, match="do not match image_shape=\\(6, 5\\)"):
        prior.transform(X3.reshape(10, 5, 6))
    with pytest.raises(ValueError, match="Z has 3 columns but n_components=20"):
        prior.decode(np.zeros((2, 3)))


def test_verbose_progress_bar(capsys):
    X = make_straight_channels(20, (6, 5), 2, random_state=0)
    VAEPrior(architecture="mlp", n_components=1, hidden_size=4, n_iterations=3, verbose=0,
             random_state=0, device="cpu").fit(X)
    assert "VAEPrior fit" not in capsys.readouterr().err
    VAEPrior(architecture="mlp", n_components=1, hidden_size=4, n_iterations=3, verbose=1,
             random_state=0, device="cpu").fit(X)
    assert "VAEPrior fit" in capsys.readouterr().err
