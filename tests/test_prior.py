"""Tests of the VAEPrior estimator."""

import copy
import pickle
import re
import warnings

import numpy as np
import pytest
import torch

import latentinv.prior as prior_module
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from latentinv.datasets import PatchSampler, make_channel_image, make_straight_channels
from latentinv.nn import VAE, MLPDecoder, MLPEncoder
from latentinv.nn.autocast import autocast_enabled
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
    with pytest.raises(ValueError, match="Z must have n_components=20 columns; got 3"):
        prior.decode(np.zeros((2, 3)))


def test_verbose_progress_bar(capsys):
    X = make_straight_channels(20, (6, 5), 2, random_state=0)
    VAEPrior(architecture="mlp", n_components=1, hidden_size=4, n_iterations=3, verbose=0,
             random_state=0, device="cpu").fit(X)
    assert "VAEPrior fit" not in capsys.readouterr().err
    VAEPrior(architecture="mlp", n_components=1, hidden_size=4, n_iterations=3, verbose=1,
             random_state=0, device="cpu").fit(X)
    assert "VAEPrior fit" in capsys.readouterr().err


# ---------------------------------------------------------------- model files: checksums and errors
import hashlib  # noqa: E402
import os  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402

from safetensors.torch import save_file  # noqa: E402

from latentinv.prior import ModelFileError, UnverifiedModelWarning  # noqa: E402


def _digest(config):
    """Independent SHA-256 of the canonical JSON of a config without 'config_sha256'."""
    rest = {k: config[k] for k in sorted(config) if k != "config_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read(d):
    return json.loads((d / "config.json").read_text())


def _write(d, config, sign=True):
    """Write config.json, re-signed (so that the structural check, not the checksum, is tested)."""
    if sign:
        config["weights_sha256"] = hashlib.sha256((d / "weights.safetensors").read_bytes()).hexdigest()
        config["config_sha256"] = _digest(config)
    (d / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, straight):
    X, _ = straight
    prior = VAEPrior(n_components=3, n_iterations=2, batch_size=20, random_state=0, **SMALL_CONV).fit(X)
    d = tmp_path_factory.mktemp("saved") / "prior"
    prior.save(d)
    return prior, d


@pytest.fixture
def saved_copy(saved, tmp_path):
    d = tmp_path / "saved_copy"
    shutil.copytree(saved[1], d)
    return d


def test_parameters_changed_after_fit_are_refused_by_save_and_pickling(saved, tmp_path):
    """set_params after fit takes effect at the next fit; until then a file or pickle of parameters that
    no longer describe the fitted network could not be loaded back (load and unpickling refused it with
    'the tensors do not fit'), so save and pickling refuse it; a parameter the network does not
    depend on is saved and loads."""
    import pickle

    prior, _ = saved
    for change, match in [(dict(hidden_size=32), r"hidden_size=32.*wrong shapes"),
                          (dict(n_components=5), r"n_components=5.*wrong shapes"),
                          (dict(channels=(4, 8, 8, 16)), r"channels=\(4, 8, 8, 16\).*wrong shapes"),
                          (dict(image_shape=(8, 32)), r"image_shape=\(8, 32\) but the fitted models have "
                                                      r"image_shape_=\(16, 16\)")]:
        changed = pickle.loads(pickle.dumps(prior)).set_params(**change)
        with pytest.raises(ValueError, match=r"VAEPrior.save: the parameters were changed after fit .*" + match):
            changed.save(tmp_path / "changed")
        assert not (tmp_path / "changed").exists()
        with pytest.raises(ValueError, match=r"VAEPrior \(pickling\): the parameters were changed after fit"):
            pickle.dumps(changed)
    harmless = pickle.loads(pickle.dumps(prior)).set_params(beta=5.0)
    harmless.save(tmp_path / "harmless")
    loaded = VAEPrior.load(tmp_path / "harmless")
    assert loaded.beta == 5.0
    z = np.zeros((2, prior.n_components))
    np.testing.assert_array_equal(loaded.decode(z), prior.decode(z))


def test_the_fitted_network_decodes_and_samples_after_set_params(saved):
    """set_params(n_components=...) takes effect at the next fit: until then decode and sample keep
    the fitted network's latent width (decode refused the fitted width, and sample drew latents
    of the new one, which the network could not take)."""
    prior, _ = saved
    changed = copy.deepcopy(prior).set_params(n_components=5)
    z = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_array_equal(changed.decode(z), prior.decode(z))
    np.testing.assert_array_equal(changed.sample(4, random_state=1), prior.sample(4, random_state=1))
    assert changed.encode(prior.decode(z)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"Z must have n_components=3 columns \(the fitted network's; "
                                         r"n_components=5 takes effect at the next fit\); got 5"):
        changed.decode(np.zeros((1, 5)))


def test_one_model_or_latent_as_a_1d_array_is_a_clear_error(saved):
    prior, _ = saved
    d, n = prior.n_components, prior.n_features_in_
    with pytest.raises(ValueError, match=rf"Z must be 2-D, one row per latent: \(n_latents, {d}\); got a 1-D "
                                         rf"array of {d} values. Reshape your data: for a single latent pass Z.reshape\(1, -1\)"):
        prior.decode(np.zeros(d))
    with pytest.raises(ValueError, match="Input Z contains NaN"):
        prior.decode(np.full((1, d), np.nan))
    # models with NaN/inf: latentinv's message with the first bad cell, not scikit-learn's advice to use
    # HistGradientBoosting models (which accept missing values)
    bad = np.full((2, n), 0.5)
    bad[1, 7] = np.inf
    for X in (bad, bad.reshape(2, *prior.image_shape_)):
        with pytest.raises(ValueError, match=r"VAEPrior: X \(models\) must be finite, got 0 NaN "
                                             r"and 1 inf values \(the first at model 1, cell 7: inf\)") as err:
            prior.encode(X)
        assert "HistGradientBoosting" not in str(err.value)
    with pytest.raises(ValueError, match=rf"X must be 2-D, one row per model: \(n_models, {n}\); got a 1-D "
                                         rf"array of {n} values"):
        prior.encode(np.zeros(n))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_mode_of_any_new_file(saved, tmp_path, umask):
    """A saved prior's files are readable as the process's umask allows (0o644 under the usual 0o022),
    not mkstemp's owner-only 0o600: a prior saved in a shared folder is for the others too."""
    prior, _ = saved
    old = os.umask(umask)
    try:
        prior.save(tmp_path / "p")
    finally:
        os.umask(old)
    for name in ("weights.safetensors", "config.json"):
        assert (tmp_path / "p" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_save_records_both_checksums(saved):
    _, d = saved
    config = _read(d)
    assert config["version"] == 2
    assert config["weights_sha256"] == hashlib.sha256((d / "weights.safetensors").read_bytes()).hexdigest()
    assert config["config_sha256"] == _digest(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # a verified file loads without any warning
        VAEPrior.load(d)


def test_overwritten_weight_bytes_are_detected(saved_copy):
    data = bytearray((saved_copy / "weights.safetensors").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (saved_copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights.safetensors' does not match its checksum"):
        VAEPrior.load(saved_copy)


def test_truncated_weights_are_detected_even_without_checksums(saved_copy):
    data = (saved_copy / "weights.safetensors").read_bytes()
    (saved_copy / "weights.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        VAEPrior.load(saved_copy)
    _write(saved_copy, _read(saved_copy))                            # re-signed: the reader itself must complain
    with pytest.raises(ModelFileError, match=r"weights.safetensors' is not a readable safetensors file"):
        VAEPrior.load(saved_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["fitted"].update(image_shape_=[8, 32]), "was modified"),
    (lambda c: c["params"].update(n_components=4), "was modified"),
    (lambda c: c.update(weights_sha256="0" * 64), "was modified"),
    (lambda c: c["params"].update(hidden_size=17), "was modified"),
])
def test_edited_config_is_detected(saved_copy, edit, message):
    config = _read(saved_copy)
    edit(config)
    _write(saved_copy, config, sign=False)
    with pytest.raises(ModelFileError, match=rf"config.json' {message}"):
        VAEPrior.load(saved_copy)


def test_shipped_prior_with_transposed_image_shape_is_detected(tmp_path):
    """The issue's case: [65, 129] has the same FC size with the reference geometry, so only the
    checksum can tell; without checksums it loads (with a warning saying it cannot be verified)."""
    from importlib.resources import files

    d = tmp_path / "p"
    shutil.copytree(str(files("latentinv") / "data" / "default_prior"), d)
    config = _read(d)
    config["fitted"]["image_shape_"] = [65, 129]
    _write(d, config, sign=False)
    with pytest.raises(ModelFileError, match="was modified after it was saved"):
        VAEPrior.load(d)
    del config["weights_sha256"], config["config_sha256"]
    config["version"] = 1
    _write(d, config, sign=False)
    with pytest.warns(UnverifiedModelWarning, match="cannot be verified"):
        wrong = VAEPrior.load(d)
    assert wrong.image_shape_ == (65, 129)              # the limitation of unverified files


def test_legacy_file_loads_with_a_warning_and_decodes_identically(saved, saved_copy):
    prior, _ = saved
    config = _read(saved_copy)
    del config["weights_sha256"], config["config_sha256"]
    config["version"] = 1
    _write(saved_copy, config, sign=False)
    with pytest.warns(UnverifiedModelWarning, match=r"config.json' has no checksums"):
        loaded = VAEPrior.load(saved_copy)
    Z = np.random.default_rng(3).standard_normal((4, 3))
    np.testing.assert_array_equal(loaded.decode(Z), prior.decode(Z))
    # structural checks still run on legacy files
    config["params"]["n_components"] = 4
    _write(saved_copy, config, sign=False)
    with pytest.warns(UnverifiedModelWarning), pytest.raises(ModelFileError, match="wrong shapes"):
        VAEPrior.load(saved_copy)
    # a version-2 file without its checksums is not a legacy file
    config["version"] = 2
    _write(saved_copy, config, sign=False)
    with pytest.raises(ModelFileError, match="missing key 'weights_sha256'"):
        VAEPrior.load(saved_copy)


def test_truncated_config(saved_copy):
    text = (saved_copy / "config.json").read_text()
    (saved_copy / "config.json").write_text(text[:len(text) // 2])
    with pytest.raises(ModelFileError, match=r"config.json' is not valid JSON .*truncated"):
        VAEPrior.load(saved_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["params"].pop("n_components"), r"'params' has missing keys \['n_components'\]"),
    (lambda c: c["params"].update(colour="red"), r"unexpected keys \['colour'\]"),
    (lambda c: c.pop("fitted"), r"missing keys \['fitted'\]"),
    (lambda c: c["fitted"].pop("history_"), r"'fitted' has missing keys \['history_'\]"),
    (lambda c: c["params"].update(n_components=4),
     r"weights.safetensors'.*do not fit .*n_components=4.*wrong shapes: encoder.fc_mu.weight: file \(3, 16\), "
     r"expected \(4, 16\)"),
    (lambda c: c["params"].update(beta=-1.0), r"params: beta must be a finite float >= 0; got -1.0"),
    (lambda c: c["params"].update(n_components="3"), r"params: n_components must be an int >= 1; got '3'"),
    (lambda c: c["params"].update(channels=[4, 8, 8]), r"channels and kernel_sizes must be equally long"),
    (lambda c: c["params"].update(channels="4,8"), r"params.channels must be a non-empty list"),
    (lambda c: c["params"].update(device="tpu"), r"params.device must be .*got 'tpu'"),
    (lambda c: c["params"].update(random_state=-1), r"params.random_state must be null or an int in \[0, 2\*\*32 - 1\]; got -1"),
    (lambda c: c["params"].update(random_state=2**32), r"params.random_state must be null or an int .*got 4294967296"),
    (lambda c: c["params"].update(random_state=1.5), r"params.random_state must be null or an int .*got 1.5"),
    (lambda c: c["params"].update(architecture="gan"), r"params.architecture must be 'conv' or 'mlp'"),
    (lambda c: c["fitted"].update(image_shape_=[16, 15]), r"\[16, 15\] has 240 cells but .*n_features_in_ is 256"),
    (lambda c: c["fitted"].update(image_shape_=None), r"architecture 'conv' needs fitted.image_shape_"),
    (lambda c: c["fitted"].update(device_="auto"), r"fitted.device_ must be a concrete device"),
    (lambda c: c["fitted"]["history_"]["kl"].append(1.0), r"fitted.history_ differ in length"),
    (lambda c: c.update(version=3), r"'version' must be 1 or 2"),
    (lambda c: c.update(format="other"), r"does not hold a saved VAEPrior"),
])
def test_invalid_config_gives_a_clear_error_naming_the_file(saved_copy, edit, message):
    config = _read(saved_copy)
    edit(config)
    _write(saved_copy, config)                                 # valid checksums: the content is checked
    with pytest.raises(ModelFileError, match=r"VAEPrior.load: .*(config|weights)") as info:
        VAEPrior.load(saved_copy)
    assert __import__("re").search(message, str(info.value)), str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_history_with_nan_or_infinity_is_refused(saved_copy, value):
    # JSON's NaN and Infinity tokens read as floats: an edited history_ (checksums re-computed) loaded as
    # a prior whose training curve fit would have refused
    config = _read(saved_copy)
    config["fitted"]["history_"]["loss"][1] = value
    _write(saved_copy, config)
    with pytest.raises(ModelFileError, match=rf"VAEPrior.load: .*config.json': fitted.history_.loss must hold "
                                             rf"finite numbers .*; got {value!r} at index 1"):
        VAEPrior.load(saved_copy)


def test_a_network_that_decodes_another_shape_than_the_file_says_is_refused(tmp_path):
    # an edit of image_shape_ and n_features_in_ (checksums re-computed) under a factory whose network does
    # not follow its input shape loaded a prior whose decode returned 30 cells for 36 announced
    def factory(input_shape, n_components):         # ignores input_shape: always 30 cells
        return VAE(MLPEncoder(30, n_components, 8), MLPDecoder(30, n_components, 8))

    X = make_straight_channels(20, (6, 5), 2, random_state=0)
    VAEPrior(architecture=factory, n_components=2, n_iterations=2, random_state=0, device="cpu").fit(X).save(
        tmp_path / "p")
    assert VAEPrior.load(tmp_path / "p", architecture=factory).decode(np.zeros((1, 2))).shape == (1, 30)
    config = _read(tmp_path / "p")
    config["fitted"].update(image_shape_=[6, 6], n_features_in_=36)
    _write(tmp_path / "p", config)
    with pytest.raises(ModelFileError, match=r"VAEPrior.load: .*config.json': the network decodes models of 30 "
                                             r"cells, but fitted.n_features_in_ is 36 \(fitted.image_shape_ "
                                             r"\[6, 6\]\)"):
        VAEPrior.load(tmp_path / "p", architecture=factory)


def test_wrong_tensors_dtype_shape_and_names(saved, saved_copy):
    prior, _ = saved
    state = {k: v.clone() for k, v in prior.module_.state_dict().items()}
    cases = [
        ({**state, "decoder.fc.0.bias": state["decoder.fc.0.bias"].double()},
         r"wrong dtypes: decoder.fc.0.bias: file torch.float64, expected torch.float32"),
        ({**state, "decoder.fc.0.bias": state["decoder.fc.0.bias"][:-1].clone()},
         r"wrong shapes: decoder.fc.0.bias: file \(15,\), expected \(16,\)"),
        ({k: v for k, v in state.items() if k != "encoder.fc_mu.bias"}, r"missing tensors \['encoder.fc_mu.bias'\]"),
        ({**state, "extra": torch.zeros(2)}, r"unexpected tensors \['extra'\]"),
    ]
    for tensors, message in cases:
        save_file(tensors, str(saved_copy / "weights.safetensors"))
        _write(saved_copy, _read(saved_copy))
        with pytest.raises(ModelFileError, match=r"weights.safetensors'.*" + message):
            VAEPrior.load(saved_copy)


def test_missing_files(saved_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        VAEPrior.load(tmp_path / "nowhere")
    (saved_copy / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights.safetensors' is missing"):
        VAEPrior.load(saved_copy)
    (saved_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json' is missing"):
        VAEPrior.load(saved_copy)


def test_load_device_argument(saved, saved_copy):
    prior, d = saved
    Z = np.zeros((1, 3))
    auto = VAEPrior.load(d, device="auto")
    assert auto.device_ == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    np.testing.assert_allclose(auto.decode(Z), prior.decode(Z), atol=1e-3)
    with pytest.raises(ValueError, match=r"VAEPrior.load: device must be .*got 'tpu'"):
        VAEPrior.load(d, device="tpu")
    if torch.cuda.is_available():
        pytest.skip("CUDA available: the CPU-only behaviour cannot be observed")
    with pytest.raises(ValueError, match=r"VAEPrior.load: device='cuda' asks for CUDA, but CUDA is not "
                                         r"available .*expected 'cpu' or 'auto'"):
        VAEPrior.load(d, device="cuda")
    # saved while on a GPU, loaded without one: a warning that says where it was, not how it was trained
    config = _read(saved_copy)
    config["fitted"]["device_"] = "cuda:0"
    _write(saved_copy, config)
    with pytest.warns(UserWarning, match=r"network was on 'cuda:0' when saved .*CUDA is not available; "
                                         r"loading it on the CPU") as record:
        loaded = VAEPrior.load(saved_copy)
    assert not any("trained" in str(w.message) for w in record)
    assert loaded.device_ == torch.device("cpu")


# ---- float16 storage -------------------------------------------------------------------------------------
def _tiny_fitted(n_iterations=3):
    from latentinv.datasets import make_straight_channels
    X = make_straight_channels(30, shape=(16, 16), random_state=0)
    return VAEPrior(n_components=2, channels=(4, 8, 8, 8), hidden_size=16, batch_size=10,
                    n_iterations=n_iterations, random_state=0, device="cpu").fit(X)


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    import json
    prior = _tiny_fitted()
    prior.save(tmp_path / "f32")
    prior.save(tmp_path / "f16", weights_dtype="float16")
    size32 = (tmp_path / "f32" / "weights.safetensors").stat().st_size
    size16 = (tmp_path / "f16" / "weights.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    assert json.loads((tmp_path / "f16" / "config.json").read_text())["weights_dtype"] == "float16"
    loaded = VAEPrior.load(tmp_path / "f16")
    assert all(p.dtype == torch.float32 for p in loaded.module_.parameters())
    Z = np.random.default_rng(0).standard_normal((50, 2))
    err = np.abs(loaded.decode(Z) - prior.decode(Z)).max()
    assert 0 < err <= 1e-3                                   # rounded, within the guard's tolerance
    # the weights are the float16 roundings of the originals, upcast
    for (k, a), b in zip(prior.module_.state_dict().items(), loaded.module_.state_dict().values()):
        assert torch.equal(a.half().float(), b), k
    # a file whose config says float16 but whose tensors are not is refused (checksums recomputed)
    from latentinv._common import _add_checksums
    config = json.loads((tmp_path / "f32" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.endswith("_sha256")}
    config["weights_dtype"] = "float16"
    weights = (tmp_path / "f32" / "weights.safetensors").read_bytes()
    (tmp_path / "f32" / "config.json").write_text(json.dumps(_add_checksums(config, weights)))
    with pytest.raises(ModelFileError, match="records weights_dtype 'float16' but"):
        VAEPrior.load(tmp_path / "f32")
    config["weights_dtype"] = "int8"
    (tmp_path / "f32" / "config.json").write_text(json.dumps(_add_checksums(config, weights)))
    with pytest.raises(ModelFileError, match="'weights_dtype' must be one of \\['float16', 'float32', 'mixed'\\]"):
        VAEPrior.load(tmp_path / "f32")


def test_float16_storage_is_refused_where_it_would_change_the_models(tmp_path):
    prior = _tiny_fitted()
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        prior.save(tmp_path / "x", weights_dtype="bfloat16")
    big = copy.deepcopy(prior)
    with torch.no_grad():
        next(big.module_.parameters()).mul_(0).add_(1e5)              # beyond float16's range
    with pytest.raises(ValueError, match="overflow torch.float16"):
        big.save(tmp_path / "big", weights_dtype="float16")
    sharp = copy.deepcopy(prior)
    with torch.no_grad():                                            # a last layer so steep that
        sharp.module_.decoder.deconv[-2].weight.mul_(3000.0)         # float16 rounding moves the models
    with pytest.raises(ValueError, match="decoded models differ from float32's by up to"):
        sharp.save(tmp_path / "sharp", weights_dtype="float16")
    assert not (tmp_path / "sharp").exists()                         # nothing written


def _stored(path):
    from safetensors.torch import load_file
    return load_file(str(path / "weights.safetensors"))


def test_mixed_storage_keeps_what_the_decoded_models_need(tmp_path):
    """'mixed': float16 but the tensors the guard needs in float32 (here the one made steep) and those
    that would overflow; recorded, loaded as float32, the models within 1e-3, the file near half."""
    import json
    prior = _tiny_fitted()
    sharp = copy.deepcopy(prior)
    with torch.no_grad():
        sharp.module_.decoder.deconv[-2].weight.mul_(3000.0)
        sharp.module_.encoder.fc[1].bias.add_(1e5)                   # overflows float16: kept float32
    sharp.save(tmp_path / "f32")
    sharp.save(tmp_path / "mixed", weights_dtype="mixed")
    config = json.loads((tmp_path / "mixed" / "config.json").read_text())
    steep = "decoder.deconv.%d.weight" % (len(sharp.module_.decoder.deconv) - 2)
    assert config["weights_dtype"] == "mixed"
    assert set(config["float32_tensors"]) >= {steep, "encoder.fc.1.bias"}
    stored = _stored(tmp_path / "mixed")
    for k, v in stored.items():
        assert v.dtype == (torch.float32 if k in config["float32_tensors"] else torch.float16), k
    loaded = VAEPrior.load(tmp_path / "mixed")
    Z = np.random.default_rng(0).standard_normal((50, 2))
    assert np.abs(loaded.decode(Z) - sharp.decode(Z)).max() <= 1e-3
    n32 = (tmp_path / "f32" / "weights.safetensors").stat().st_size
    kept = sum(stored[k].numel() for k in config["float32_tensors"])
    assert (tmp_path / "mixed" / "weights.safetensors").stat().st_size < 0.5 * n32 + 4 * kept + 4096
    # where float16 passes, mixed keeps nothing
    prior.save(tmp_path / "plain", weights_dtype="mixed")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["float32_tensors"] == []


def test_mixed_storage_files_are_checked(tmp_path):
    import json
    from latentinv._common import _add_checksums
    prior = _tiny_fitted()
    with torch.no_grad():
        prior.module_.decoder.deconv[-2].weight.mul_(3000.0)
    prior.save(tmp_path / "m", weights_dtype="mixed")
    weights = (tmp_path / "m" / "weights.safetensors").read_bytes()
    good = json.loads((tmp_path / "m" / "config.json").read_text())
    good = {k: v for k, v in good.items() if not k.endswith("_sha256")}
    for change, match in [(dict(float32_tensors=[]), "records weights_dtype 'mixed' but"),
                          (dict(float32_tensors=good["float32_tensors"] + ["encoder.fc.1.weight"]),
                           "records weights_dtype 'mixed' and float32_tensors but"),
                          (dict(float32_tensors="decoder"), "'float32_tensors' \\(a list of distinct tensor names\\)"),
                          (dict(weights_dtype="float16"), "must be present exactly when weights_dtype is 'mixed'")]:
        config = dict(good, **change)
        (tmp_path / "m" / "config.json").write_text(json.dumps(_add_checksums(config, weights)))
        with pytest.raises(ModelFileError, match=match):
            VAEPrior.load(tmp_path / "m")


def _files_bytes(path):
    return sum(f.stat().st_size for f in path.iterdir())


def test_max_bytes_stores_the_largest_encoder_tensors_int8_and_never_the_decoder(tmp_path):
    """A budget the float16 files exceed: the encoder's largest weights go int8 (per row, within half a
    step of the originals), the largest first and no more than needed; decoded models are unchanged."""
    import json
    prior = _tiny_fitted()
    prior.save(tmp_path / "f16", weights_dtype="float16")
    full = _files_bytes(tmp_path / "f16")
    stored16 = _stored(tmp_path / "f16")
    encoder = sorted((k for k, v in stored16.items() if k.startswith("encoder.") and v.dim() >= 2),
                     key=lambda k: -stored16[k].numel())
    largest = stored16[encoder[0]].numel()
    # a budget that one int8 tensor (the largest: half its float16 bytes saved, less its scales) meets
    budget = full - largest // 2 + 4 * stored16[encoder[0]].shape[0] + 200
    prior.save(tmp_path / "fit", weights_dtype="float16", max_bytes=budget)
    assert _files_bytes(tmp_path / "fit") <= budget
    config = json.loads((tmp_path / "fit" / "config.json").read_text())
    assert config["int8_tensors"] == [encoder[0]]
    stored = _stored(tmp_path / "fit")
    q, scale = stored[encoder[0]], stored[encoder[0] + ".int8_scale"]
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (q.shape[0],)
    assert int(q.abs().max()) == 127                                  # each row's scale: its max / 127
    loaded = VAEPrior.load(tmp_path / "fit")
    original = prior.module_.state_dict()[encoder[0]].half().float()  # what the float16 file holds
    restored = loaded.module_.state_dict()[encoder[0]]
    step = scale.reshape(-1, *([1] * (q.dim() - 1)))
    assert bool(((restored - original).abs() <= step / 2 + 1e-7).all())
    Z = np.random.default_rng(0).standard_normal((20, 2))
    np.testing.assert_array_equal(loaded.decode(Z), VAEPrior.load(tmp_path / "f16").decode(Z))
    assert not np.array_equal(loaded.encode(prior.decode(Z)), VAEPrior.load(tmp_path / "f16").encode(prior.decode(Z)))
    # a budget already met: nothing quantized, the config unchanged
    prior.save(tmp_path / "roomy", weights_dtype="float16", max_bytes=full + 1)
    assert "int8_tensors" not in json.loads((tmp_path / "roomy" / "config.json").read_text())
    # a budget no encoder quantization can meet: refused, nothing written
    with pytest.raises(ValueError, match=r"max_bytes=1000 cannot be met: the files take \d+ bytes with every "
                                         r"encoder weight tensor in int8 .*nothing was written"):
        prior.save(tmp_path / "tight", weights_dtype="float16", max_bytes=1000)
    assert not (tmp_path / "tight").exists()
    for bad in (0, -1, float("nan"), "1e7", True):
        with pytest.raises(ValueError, match="max_bytes must be a positive number of bytes or None"):
            prior.save(tmp_path / "bad", max_bytes=bad)


def test_int8_files_are_checked(tmp_path):
    import json
    from safetensors.torch import save as safetensors_bytes
    from latentinv._common import _add_checksums
    prior = _tiny_fitted()
    prior.save(tmp_path / "f16", weights_dtype="float16")
    prior.save(tmp_path / "q", weights_dtype="float16", max_bytes=_files_bytes(tmp_path / "f16") - 1)
    good = json.loads((tmp_path / "q" / "config.json").read_text())
    good = {k: v for k, v in good.items() if not k.endswith("_sha256")}
    name = good["int8_tensors"][0]
    state = {k: v.clone() for k, v in _stored(tmp_path / "q").items()}     # not the mapped file: it is rewritten

    def write(config, tensors):
        weights = safetensors_bytes(tensors)
        (tmp_path / "q" / "weights.safetensors").write_bytes(weights)
        (tmp_path / "q" / "config.json").write_text(json.dumps(_add_checksums(config, weights)))

    scale = name + ".int8_scale"
    cases = [
        (dict(good, int8_tensors=[]), state, "'int8_tensors' must be a non-empty list of distinct tensor names"),
        (dict(good, int8_tensors=[name, name]), state, "'int8_tensors' must be a non-empty list"),
        (dict(good, int8_tensors="encoder"), state, "'int8_tensors' must be a non-empty list"),
        ({k: v for k, v in good.items() if k != "int8_tensors"}, state,
         "records weights_dtype 'float16' but \\['" + name),                      # int8 stored, not recorded
        (good, {k: v for k, v in state.items() if k != scale}, "its scales .* are missing"),
        (good, dict(state, **{scale: -state[scale]}), "must be .* positive finite float32 values"),
        (good, dict(state, **{scale: state[scale][:-1].contiguous()}), "positive finite float32 values"),
        (good, dict(state, **{scale: state[scale].half()}), "are not stored so"),
        (good, dict(state, **{name: state[name].half()}), "and int8_tensors but \\['" + name),
    ]
    for config, tensors, match in cases:
        write(config, tensors)
        with pytest.raises(ModelFileError, match=match):
            VAEPrior.load(tmp_path / "q")
    write(good, state)                                   # the untouched files load
    VAEPrior.load(tmp_path / "q")


# ---- bfloat16 training ---------------------------------------------------------------------------------
_native_bf16 = pytest.mark.skipif(
    not __import__("latentinv._common", fromlist=["native_bfloat16"]).native_bfloat16(torch.device("cpu")),
    reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


@_native_bf16
def test_bfloat16_training_follows_the_float32_loss_curve():
    from latentinv.datasets import make_straight_channels
    # 48 x 48: every layer's input map at least its kernel (on 16 x 16 the deepest maps are 1 x 1, whose
    # bfloat16 weight gradients torch computes as garbage: test_bfloat16_training_refuses_garbage_gradients)
    X = make_straight_channels(60, shape=(48, 48), random_state=0)
    kw = dict(n_components=2, channels=(4, 8, 8, 8), hidden_size=16, batch_size=20, n_iterations=60,
              learning_rate=1e-2, random_state=0, device="cpu")
    f32 = VAEPrior(**kw).fit(X)
    b16 = VAEPrior(precision="bfloat16", **kw).fit(X)
    a, b = np.array(f32.history_["loss"]), np.array(b16.history_["loss"])
    assert not np.array_equal(a, b)                          # it did run in bfloat16
    assert abs(b[-20:].mean() / a[-20:].mean() - 1) < 0.02   # the same curve, within 2 %
    assert a[-20:].mean() < 0.8 * a[:5].mean()                # and a curve that descends
    # the fitted network computes in float32
    assert all(p.dtype == torch.float32 for p in b16.module_.parameters())
    assert b16.transform(X).dtype == np.float64


@_native_bf16
@pytest.mark.parametrize("fault", ["varies", "inf"])
def test_bfloat16_training_refuses_garbage_gradients(monkeypatch, fault):
    # torch 2.13's bfloat16 weight gradients of a convolution on a 1 x 1 map (kernel 4, padding 2) vary from
    # call to call (values up to 1e38): emulated here, on any CPU, by a decoder whose output does so
    from latentinv.datasets import PatchSampler, make_straight_channels
    from latentinv.nn import vae as vae_module
    X = make_straight_channels(12, shape=(48, 48), random_state=0)
    kw = dict(n_components=2, channels=(4, 8, 8, 8), hidden_size=16, batch_size=6, n_iterations=3,
              random_state=0, device="cpu", precision="bfloat16")
    real_decode = vae_module.VAE.decode
    calls = []

    def faulty(self, z):
        out = real_decode(self, z)
        calls.append(autocast_enabled("cpu"))
        bump = float("inf") if fault == "inf" else 1e-3 * len(calls)
        return out + bump * z.sum() if autocast_enabled("cpu") else out
    monkeypatch.setattr(vae_module.VAE, "decode", faulty)
    match = r"precision='bfloat16' on this CPU gives .* gradient non-finite or different"
    with pytest.raises(ValueError, match=match):
        VAEPrior(**kw).fit(X)
    assert calls == [True] * 5      # refused before the first step: the memory probe's 2 decodes, the check's 3
    with pytest.raises(ValueError, match=match):       # crops of a PatchSampler: the same check
        VAEPrior(**dict(kw, image_shape=(48, 48))).fit(PatchSampler([np.tile(X[0], (2, 2))], (48, 48)))
    monkeypatch.undo()
    VAEPrior(**kw).fit(X)                              # the real decoder on these images passes


@_native_bf16
def test_the_bfloat16_check_leaves_the_training_as_it_was(monkeypatch):
    # the check draws nothing and updates nothing: a training with it equals one without it
    from latentinv import _training_step
    from latentinv.datasets import make_straight_channels
    X = make_straight_channels(12, shape=(48, 48), random_state=0)
    kw = dict(n_components=2, channels=(4, 8, 8, 8), hidden_size=16, batch_size=6, n_iterations=4,
              random_state=0, device="cpu", precision="bfloat16")
    checked = VAEPrior(**kw).fit(X)
    monkeypatch.setattr(_training_step.TrainingStep, "check_bfloat16_gradients", lambda *a, **k: None)
    unchecked = VAEPrior(**kw).fit(X)
    assert checked.history_["loss"] == unchecked.history_["loss"]
    for a, b in zip(checked.module_.state_dict().values(), unchecked.module_.state_dict().values()):
        assert torch.equal(a, b)


def test_bfloat16_training_is_refused_without_native_bfloat16_and_checked(monkeypatch, tmp_path):
    from latentinv.datasets import make_straight_channels
    X = make_straight_channels(10, shape=(48, 48), random_state=0)
    kw = dict(n_components=2, channels=(4, 8, 8, 8), hidden_size=16, n_iterations=1, device="cpu")
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16'; got 'float16'"):
        VAEPrior(precision="float16", **kw).fit(X)
    monkeypatch.setattr(prior_module, "native_bfloat16", lambda device: False)
    with pytest.raises(ValueError, match="precision='bfloat16' needs native bfloat16 arithmetic on cpu"):
        VAEPrior(precision="bfloat16", **kw).fit(X)
    # a checkpoint of a float32 training is not resumed in bfloat16 (on any machine: the arithmetic is
    # taken as native here, so that the precision's own check does not come first on an AVX2 CPU)
    monkeypatch.setattr(prior_module, "native_bfloat16", lambda device: True)
    VAEPrior(**kw).fit(X, checkpoint=tmp_path)
    with pytest.raises(ModelFileError, match="it differs in precision"):
        VAEPrior(precision="bfloat16", **dict(kw, n_iterations=2)).fit(X, checkpoint=tmp_path)


_MLP = dict(architecture="mlp", n_components=2, hidden_size=8, n_iterations=2, batch_size=5, random_state=0,
            device="cpu")


@pytest.mark.parametrize("random_state", ["a", 1.5, -1, 2 ** 32, np.random.default_rng(0)])
def test_a_bad_random_state_is_named_in_fit_and_sample(random_state):
    X = np.random.default_rng(0).random((12, 16))
    expected = (r"must be None, an int in \[0, 2\*\*32 - 1\] or a numpy.random.RandomState; got "
                + re.escape(repr(random_state)))
    with pytest.raises(ValueError, match=r"^VAEPrior: random_state " + expected):
        VAEPrior(**{**_MLP, "random_state": random_state}).fit(X)
    with pytest.raises(ValueError, match=r"^VAEPrior.sample: random_state " + expected):
        VAEPrior(**_MLP).fit(X).sample(2, random_state=random_state)
    assert VAEPrior(**{**_MLP, "random_state": np.random.RandomState(0)}).fit(X).n_features_in_ == 16


@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (1.0, -0.5), (1.0 + 1e-6, 0.0)])
def test_data_outside_the_sigmoid_range_are_refused(scale, shift):
    X = np.random.default_rng(0).random((12, 16)) * scale + shift
    X[0, 0] = scale + shift                                  # a value just past the range's end
    with pytest.raises(ValueError, match=r"X must lie in \[0, 1\]; got values in .*output_activation='sigmoid' outputs"):
        VAEPrior(**_MLP).fit(X)
    images = [np.asarray(X.reshape(12 * 4, 4))]
    with pytest.raises(ValueError, match=r"the PatchSampler's image 0 must lie in \[0, 1\]"):
        VAEPrior(**{**_MLP, "architecture": "conv", **SMALL_CONV}).fit(PatchSampler(images, (16, 4)))
    fitted = VAEPrior(**_MLP).fit(np.clip(X, 0, 1))
    for method in (fitted.encode, fitted.score_samples, fitted.transform):
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            method(X)
    # the identity decoder takes any real data
    assert VAEPrior(**_MLP, output_activation="identity").fit(X).encode(X).shape == (12, 2)


@pytest.mark.parametrize("verbose", [-1, 2.5, "x", None])
def test_verbose_is_checked_at_fit_as_load_checks_it(verbose):
    X = np.random.default_rng(0).random((10, 16))
    with pytest.raises(ValueError, match="verbose must be an int >= 0"):
        VAEPrior(**_MLP, verbose=verbose).fit(X)


@pytest.mark.parametrize("verbose", [False, True, 0, 2])
def test_valid_verbose_saves_and_loads(verbose, tmp_path):
    X = np.random.default_rng(0).random((10, 16))
    VAEPrior(**_MLP, verbose=verbose).fit(X).save(tmp_path / "p")
    assert VAEPrior.load(tmp_path / "p").verbose == verbose


def test_a_random_state_generator_is_saved_as_none_with_a_warning(tmp_path):
    """A RandomState cannot be written to the file: it is saved as None, and the user is told that a
    fit of the loaded prior will not repeat this one (it was dropped without a word)."""
    X = np.random.default_rng(0).random((8, 16))
    prior = VAEPrior(**{**_MLP, "random_state": np.random.RandomState(0)}).fit(X)
    with pytest.warns(UserWarning, match=r"VAEPrior.save: random_state is a RandomState.*saved as None"):
        prior.save(tmp_path / "p")
    assert VAEPrior.load(tmp_path / "p").random_state is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VAEPrior(**{**_MLP, "random_state": 3}).fit(X).save(tmp_path / "q")      # an int seed: no warning


def test_numpy_scalar_parameters_save_and_load(tmp_path):
    """GridSearchCV hands numpy scalars to set_params; save wrote none of them (a TypeError from json,
    and an integer random_state of numpy's type was saved as null)."""
    X = np.random.default_rng(0).random((8, 16))
    search = GridSearchCV(VAEPrior(**_MLP, output_activation="identity"),
                          {"n_components": np.arange(2, 4)}, cv=2).fit(X)
    assert isinstance(search.best_estimator_.n_components, np.integer)
    search.best_estimator_.save(tmp_path / "grid")
    assert VAEPrior.load(tmp_path / "grid").n_components == search.best_estimator_.n_components
    params = dict(_MLP, n_components=np.int64(3), hidden_size=np.int32(8), batch_size=np.int16(5),
                  n_iterations=np.uint8(2), beta=np.float32(3.5), alpha=np.float64(0.5),
                  learning_rate=np.float32(0.01), random_state=np.int64(7))
    prior = VAEPrior(**params).fit(X)
    prior.save(tmp_path / "np")
    loaded = VAEPrior.load(tmp_path / "np")
    for key, value in params.items():
        got = loaded.get_params()[key]
        assert got == value and type(got) in (int, float, str), (key, got)
    np.testing.assert_array_equal(loaded.decode(np.ones((2, 3))), prior.decode(np.ones((2, 3))))
    # the checkpoint's fingerprint takes numpy's 7 and Python's 7 as the same training
    ckpt = tmp_path / "ckpt"
    VAEPrior(**{**_MLP, "random_state": 7}).fit(X, checkpoint=ckpt, checkpoint_every=1)
    VAEPrior(**{**_MLP, "random_state": np.int64(7), "n_iterations": 3}).fit(X, checkpoint=ckpt,
                                                                                checkpoint_every=1)


# ---- round 4 of the mutation audit (docs/mutation_audit.md) ----------------------------------------------
_INT32 = np.iinfo(np.int32).max
_HAND = dict(architecture="mlp", n_components=2, hidden_size=8, alpha=0.25, beta=3.0, learning_rate=1e-2,
             random_state=5, device="cpu")


def _steps_by_hand(seeds, batches, n_features):
    """The training of ``_HAND`` (eqs. (1)-(2)) written out: the "mlp" network from the first of the seed's
    draws, the noise from the second, each batch through z = mu + sqrt(alpha) sigma eps, the loss, Adam.
    Returns (module, rows of (reconstruction, kl, loss))."""
    from latentinv.nn import build_vae
    module = build_vae("mlp", n_features, 2, hidden_size=8, seed=seeds[0])
    noise = torch.Generator().manual_seed(seeds[1])
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    rows = []
    for xb in batches:
        mu, logvar = module.encode(xb)
        eps = torch.randn(mu.shape, generator=noise)
        x_hat = module.decode(mu + 0.25 ** 0.5 * torch.exp(0.5 * logvar) * eps)
        rec = ((x_hat - xb) ** 2).sum()
        kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean()
        loss = rec + 3.0 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append([rec.item(), kl.item(), loss.item()])
    return module, np.array(rows)


def _assert_trained_as(prior, module, rows):
    history = np.array([prior.history_[k] for k in ("reconstruction", "kl", "loss")]).T
    # the KL term is the small rest of O(1) terms that cancel (1 + logvar - exp(logvar)): float32 leaves
    # it ~1e-7 absolute, which kernels of another order reach (3e-8 on an AVX2 CPU)
    np.testing.assert_allclose(history, rows, rtol=1e-6, atol=1e-7)
    for (k, a), b in zip(prior.module_.state_dict().items(), module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("batch_size", [4, 20])
def test_training_on_arrays_is_the_step_written_out(batch_size):
    """fit on 8 models, written out: batch 4 takes epochs of the seed's permutations (a new one exactly
    when the last batch is used up), a batch_size beyond 8 all the models in their order; each step scales
    the noise by sqrt(alpha). beta_per_sample_ = beta / (batch d) with the batch used."""
    X = np.random.default_rng(0).random((8, 6))
    prior = VAEPrior(batch_size=batch_size, n_iterations=5, **_HAND).fit(X)
    rng = np.random.RandomState(5)
    seeds = rng.randint(_INT32), rng.randint(_INT32)
    Xt = torch.tensor(X, dtype=torch.float32)
    b = min(batch_size, 8)
    if b == 8:
        batches = [Xt] * 5
    else:                                  # permutations drawn from the seed after the two seeds above
        order = np.concatenate([rng.permutation(8) for _ in range(3)])
        batches = [Xt[order[i * b:(i + 1) * b]] for i in range(5)]
    _assert_trained_as(prior, *_steps_by_hand(seeds, batches, 6))
    assert prior.beta_per_sample_ == 3.0 / (b * 2)


def test_training_on_a_patch_sampler_is_the_step_written_out():
    """fit on a PatchSampler, written out: each iteration's crops are the sampler's draws from a generator
    seeded by the third of the seed's draws (the memory probe draws from its own), over more than one
    block of TRAINING_BLOCK iterations."""
    image = make_channel_image((40, 30), width=3, random_state=0)
    sampler = PatchSampler(image, (9, 7), exclude=[(0, 0, 12, 10)])
    n_iterations = prior_module.TRAINING_BLOCK + 2
    prior = VAEPrior(batch_size=3, n_iterations=n_iterations, **_HAND).fit(sampler)
    rng = np.random.RandomState(5)
    seeds = rng.randint(_INT32), rng.randint(_INT32)
    crops = np.random.default_rng(rng.randint(_INT32))
    batches = [torch.tensor(sampler.sample(3, random_state=crops).reshape(3, -1)) for _ in range(n_iterations)]
    _assert_trained_as(prior, *_steps_by_hand(seeds, batches, 63))


def test_load_restores_beta_per_sample_as_saved(tmp_path):
    """beta_per_sample_ is read back from the file, not recomputed from batch_size (which a training on
    fewer models than batch_size does not use)."""
    X = np.random.default_rng(0).random((8, 6))
    prior = VAEPrior(batch_size=20, n_iterations=1, **_HAND).fit(X)
    prior.save(tmp_path / "p")
    assert prior.beta_per_sample_ == 3.0 / (8 * 2)
    assert VAEPrior.load(tmp_path / "p").beta_per_sample_ == prior.beta_per_sample_


def test_training_that_reaches_an_infinite_loss_is_refused_even_with_finite_weights():
    """An encoder that squashes its input (tanh first) and an identity decoder on models of 1e19: the
    summed squared error overflows float32 (inf) while the gradients stay finite and the weights too
    (Adam's second moment overflows to inf, its steps to 0). A loss that is not finite is divergence by
    itself: refused, naming the first such iteration."""
    def squashing(input_shape, n_components):
        n = int(np.prod(input_shape))
        return VAE(torch.nn.Sequential(torch.nn.Tanh(), MLPEncoder(n, n_components, 8)),
                   MLPDecoder(n, n_components, 8, output_activation="identity"))
    X = np.random.default_rng(0).random((8, 6)) * 1e19
    with pytest.raises(ValueError, match="training diverged: non-finite loss or weights at iteration 0"):
        VAEPrior(**dict(_HAND, architecture=squashing, output_activation="identity"), batch_size=8,
                 n_iterations=2).fit(X)


def test_checkpoints_are_written_every_checkpoint_every_iterations_and_at_the_end(tmp_path, monkeypatch):
    """fit(checkpoint=..., checkpoint_every=2) of 5 iterations writes the loop's state after iterations
    2, 4 and 5."""
    from latentinv import _checkpoint
    written = []
    write = _checkpoint.write
    monkeypatch.setattr(_checkpoint, "write", lambda path, state, fp: (written.append(state.iteration),
                                                                     write(path, state, fp)))
    X = np.random.default_rng(0).random((8, 6))
    VAEPrior(**_HAND, batch_size=4, n_iterations=5).fit(X, checkpoint=tmp_path, checkpoint_every=2)
    assert written == [2, 4, 5]


def test_int8_rows_scale_by_the_largest_magnitude_and_keep_rows_of_zeros(tmp_path):
    """_int8_rows: each row's scale is its largest magnitude / 127 (that entry stored as +-127), a row of
    zeros gets scale 1 and stays zeros, every entry within half a step. A prior whose largest encoder
    weight has a row of zeros saves in int8 and loads with that row zero (a scale of 0 would be refused)."""
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.5, 0.25], [-3.0, 2.0, 0.1]])
    q, scale = prior_module._int8_rows(t)
    torch.testing.assert_close(scale, torch.tensor([1.0, 1 / 127, 3 / 127]), rtol=0, atol=0)
    assert q[0].tolist() == [0, 0, 0] and q[1, 0] == 127 and q[2, 0] == -127
    assert bool(((q.float() * scale[:, None] - t).abs() <= scale[:, None] / 2 + 1e-7).all())
    prior = _tiny_fitted()
    state = prior.module_.state_dict()
    name = max((k for k, v in state.items() if k.startswith("encoder.") and v.dim() >= 2),
               key=lambda k: state[k].numel())
    with torch.no_grad():
        state[name][0].zero_()
    prior.save(tmp_path / "f16", weights_dtype="float16")
    prior.save(tmp_path / "q", weights_dtype="float16", max_bytes=_files_bytes(tmp_path / "f16") - 1)
    loaded = VAEPrior.load(tmp_path / "q").module_.state_dict()[name]
    assert bool((loaded[0] == 0).all()) and bool((loaded[1:] != 0).any())


def test_a_budget_the_files_meet_exactly_quantizes_nothing(tmp_path):
    """max_bytes is a bound the files may reach: a budget of exactly the float16 files' size leaves every
    tensor as it is (no int8_tensors), one byte less quantizes."""
    prior = _tiny_fitted()
    prior.save(tmp_path / "f16", weights_dtype="float16")
    size = _files_bytes(tmp_path / "f16")
    prior.save(tmp_path / "exact", weights_dtype="float16", max_bytes=size)
    assert _files_bytes(tmp_path / "exact") == size
    assert "int8_tensors" not in json.loads((tmp_path / "exact" / "config.json").read_text())
    prior.save(tmp_path / "less", weights_dtype="float16", max_bytes=size - 1)
    assert json.loads((tmp_path / "less" / "config.json").read_text())["int8_tensors"]


def test_encode_decode_and_score_cover_every_row_of_every_chunk():
    """encode, decode and score_samples run 1024 rows per pass: 2049 rows give 2049 results, each that
    of its row alone."""
    X = np.random.default_rng(0).random((2049, 6))
    prior = VAEPrior(**_HAND, batch_size=8, n_iterations=1).fit(X[:8])
    picks = [0, 1023, 1024, 2047, 2048]
    Z = prior.encode(X)
    assert Z.shape == (2049, 2)
    np.testing.assert_allclose(Z[picks], [prior.encode(X[i:i + 1])[0] for i in picks], rtol=1e-6, atol=1e-7)
    D = prior.decode(Z)
    assert D.shape == (2049, 6)
    np.testing.assert_allclose(D[picks], [prior.decode(Z[i:i + 1])[0] for i in picks], rtol=1e-6, atol=1e-7)
    S = prior.score_samples(X)
    assert S.shape == (2049,)
    np.testing.assert_allclose(S[picks], [prior.score_samples(X[i:i + 1])[0] for i in picks], rtol=1e-6)


def test_mlp_encoder_and_decoder_are_their_layers_written_out():
    """"mlp": the encoder is relu(W2 relu(W1 x + b1) + b2) and then the two linear heads, the decoder
    out(W3 relu(W2 relu(W1 z + b1) + b2) + b3) with out the sigmoid or the identity: two hidden layers with
    ReLU each way, computed here from the modules' weights."""
    from latentinv.nn import MLPDecoder, MLPEncoder
    g = torch.Generator().manual_seed(0)

    def hidden(x, linears):
        for lin in linears:
            x = torch.relu(x @ lin.weight.T + lin.bias)
        return x
    encoder = MLPEncoder(6, 2, hidden_size=5)
    linears = [m for m in encoder.body if isinstance(m, torch.nn.Linear)]
    x = torch.randn(7, 6, generator=g)
    h = hidden(x, linears)
    mu, logvar = encoder(x)
    assert len(linears) == 2 and bool((h == 0).any())      # some units below zero: the ReLU shows
    torch.testing.assert_close(mu, h @ encoder.fc_mu.weight.T + encoder.fc_mu.bias)
    torch.testing.assert_close(logvar, h @ encoder.fc_logvar.weight.T + encoder.fc_logvar.bias)
    z = torch.randn(7, 2, generator=g)
    for activation, out in (("sigmoid", torch.sigmoid), ("identity", lambda t: t)):
        decoder = MLPDecoder(6, 2, hidden_size=5, output_activation=activation)
        linears = [m for m in decoder.body if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 3
        last = linears[-1]
        torch.testing.assert_close(decoder(z), out(hidden(z, linears[:-1]) @ last.weight.T + last.bias))


# datasets.py (its own test file is edited elsewhere)
@pytest.mark.parametrize("orientation, turn", [(-90.0, lambda a: a.T[:, ::-1]), (90.0, lambda a: a.T[::-1]),
                                               (180.0, lambda a: a[::-1, ::-1])], ids=["-90", "90", "180"])
@pytest.mark.parametrize("shape", [(60, 30), (41, 23)], ids=["60x30", "41x23"])
def test_turning_the_channels_orientation_turns_the_image(orientation, turn, shape):
    """make_channel_image is equivariant under quarter turns: the image of orientation 0 turned by
    -90, 90 or 180 degrees about its centre is, cell for cell, the image of that orientation on the turned
    grid (same seed). Wrong centres or axes on a grid of unequal sides break it."""
    for seed in range(3):
        image = make_channel_image(shape, orientation=0.0, random_state=seed)
        turned = make_channel_image(turn(image).shape, orientation=orientation, random_state=seed)
        np.testing.assert_array_equal(turned, turn(image))


def test_channel_wavelength_defaults_to_a_third_of_the_longer_side():
    """wavelength=None is max(shape) / 3: on 60 x 30 cells the image of wavelength 20, seed for seed."""
    for seed in range(3):
        np.testing.assert_array_equal(make_channel_image((60, 30), random_state=seed),
                                      make_channel_image((60, 30), wavelength=20.0, random_state=seed))


def test_load_image_thresholds_at_or_above_and_keeps_grey_levels_in_0_1(tmp_path):
    """load_image: grey level / 255, channel where it is at or above the threshold (a pixel exactly at it
    included); threshold=None returns the grey levels, 255 as 1."""
    from PIL import Image
    from latentinv.datasets import load_image
    Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", threshold=128 / 255), [[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", threshold=None), [[0.0, 127 / 255, 128 / 255, 1.0]])


def test_a_save_that_fails_while_writing_leaves_the_saved_prior(saved, saved_copy, monkeypatch):
    """A full disk while the configuration is written (the weights written): the directory keeps the prior
    saved there before, loadable, and no temporary file. Before, the new weights had replaced the old
    ones already: the directory held another prior's weights under the old configuration (a checksum
    error at load: the saved prior was lost)."""
    import errno

    prior, _ = saved
    other = VAEPrior(n_components=3, n_iterations=2, batch_size=20, random_state=1, **SMALL_CONV).fit(
        make_straight_channels(40, (16, 16), 3, random_state=2))
    real_fdopen = os.fdopen

    class HalfWritten:           # writes half of a configuration, then the disk is full
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):     # flush, fileno: the real file's
            return getattr(self.f, name)

        def write(self, data):
            if not data.startswith(b"{"):
                return self.f.write(data)
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: HalfWritten(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(OSError, match="No space left on device"):
        other.save(saved_copy)
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert sorted(os.listdir(saved_copy)) == ["config.json", "weights.safetensors"]
    loaded = VAEPrior.load(saved_copy)
    for key, value in prior.module_.state_dict().items():
        assert torch.equal(loaded.module_.state_dict()[key], value), key



def test_a_save_reaches_the_disk_before_its_files_are_renamed(saved, tmp_path, monkeypatch):
    """Both files are fsynced before either is renamed into place (a power cut after a rename must not
    leave an empty file under the final name), the configuration is renamed last, and the directory
    is fsynced after the renames (so that they reach the disk too)."""
    import stat

    prior, _ = saved
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(os.path.basename(b)), real_replace(a, b))[1])
    prior.save(tmp_path / "p")
    assert events == ["fsync", "fsync", "weights.safetensors", "config.json", "fsync dir"]


# ---- a trial of VAEPrior's training options (2026-11-30) -------------------------------------------------
def test_the_conv_decoder_refuses_data_outside_0_1_whatever_output_activation():
    """"conv" always ends with a sigmoid (output_activation is the "mlp" decoder's): 0-255 images with
    output_activation="identity" trained without a word a network whose models stay in (0, 1)."""
    X = make_straight_channels(12, (16, 16), 3, random_state=0)
    with pytest.raises(ValueError, match=r"X must lie in \[0, 1\]; got values in \[0, 255\]\. architecture='conv' "
                                         r"ends with a sigmoid"):
        VAEPrior(output_activation="identity", n_iterations=1, **SMALL_CONV).fit(X * 255)
    images = [np.asarray(X.reshape(12 * 16, 16)) * 255]
    with pytest.raises(ValueError, match=r"the PatchSampler's image 0 must lie in \[0, 1\]"):
        VAEPrior(output_activation="identity", n_iterations=1, **SMALL_CONV).fit(PatchSampler(images, (16, 16)))
    fitted = VAEPrior(output_activation="identity", n_iterations=1, **SMALL_CONV).fit(X)
    assert fitted.decode(np.full((1, 20), 50.0)).max() <= 1.0     # the sigmoid, as the docstring says
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        fitted.encode(X * 255)


class _EncodeDecodeOnly(torch.nn.Module):
    """The documented contract of a callable architecture's module: encode and decode, no forward."""

    def __init__(self, n, d, latents=None, outputs=None):
        super().__init__()
        self.encoder = MLPEncoder(n, d if latents is None else latents, 8)
        self.decoder = MLPDecoder(n if outputs is None else outputs, d if latents is None else latents, 8)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def test_a_factory_module_needs_only_encode_and_decode():
    """The docstring asks a factory's module for encode and decode only; fit called its forward with
    alpha= and generator= (TypeError from torch's _forward_unimplemented). It trains as the same layers
    in a VAE do, bit for bit."""
    X = make_straight_channels(20, (6, 5), 2, random_state=0)
    kw = dict(n_components=2, n_iterations=4, batch_size=10, random_state=0, device="cpu")
    own = VAEPrior(architecture=lambda shape, d: _EncodeDecodeOnly(int(np.prod(shape)), d), **kw).fit(X)
    vae = VAEPrior(architecture=lambda shape, d: VAE(MLPEncoder(int(np.prod(shape)), d, 8),
                                                     MLPDecoder(int(np.prod(shape)), d, 8)), **kw).fit(X)
    assert own.history_ == vae.history_
    for a, b in zip(own.module_.state_dict().values(), vae.module_.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("latents, outputs, message", [
    (3, None, r"encode\(x\) must return \(mu, logvar\) of shape \(2, 2\) \(batch, n_components\) for x of shape "
              r"\(2, 30\); got \(2, 3\) and \(2, 3\)"),
    (None, 31, r"decode\(z\) must return 2 \* 30 values \(batch \* n_features\) for z of shape \(2, 2\); got 62"),
])
def test_a_factory_module_of_other_widths_is_refused_at_fit(latents, outputs, message):
    """A factory whose latents are not n_components wide trained without a word (encode returned 3 columns
    for n_components=2, decode of 2 failed in torch); one whose decoder returns other counts failed in the
    memory probe with torch's "shape '[4, 30]' is invalid". Both are named at fit, before any step."""
    X = make_straight_channels(20, (6, 5), 2, random_state=0)
    factory = lambda shape, d: _EncodeDecodeOnly(int(np.prod(shape)), d, latents, outputs)  # noqa: E731
    with pytest.raises(ValueError, match="VAEPrior: the module of architecture=<function .*" + message):
        VAEPrior(architecture=factory, n_components=2, n_iterations=1, device="cpu").fit(X)


@pytest.mark.parametrize("key, value", [("channels", 8), ("kernel_sizes", 5), ("channels", "abcd"),
                                        ("channels", None)])
def test_channels_or_kernel_sizes_not_a_sequence_of_ints_are_named(key, value):
    """channels=8 got Python's "'int' object is not iterable" from fit (a string of 4 letters, the
    message of the list of letters); both name the parameters."""
    X = make_straight_channels(4, (16, 16), 3, random_state=0)
    with pytest.raises(ValueError, match=r"VAEPrior: channels and kernel_sizes must be equally long tuples of "
                                         rf"positive ints; got .*{key}={re.escape(repr(value))}"):
        VAEPrior(**{**SMALL_CONV, key: value}, n_iterations=1).fit(X)


def test_a_float32_budget_that_float16_would_meet_says_so(tmp_path):
    """save(max_bytes=...) in float32 with a budget that every encoder tensor in int8 misses but the
    float16 decoder meets said only 'cannot be met'; it names weights_dtype, and the float16 save fits."""
    prior = _tiny_fitted()
    prior.save(tmp_path / "f16", weights_dtype="float16", max_bytes=10 ** 9)
    prior.save(tmp_path / "f16i8", weights_dtype="float16", max_bytes=_files_bytes(tmp_path / "f16") - 1)
    budget = _files_bytes(tmp_path / "f16i8")
    with pytest.raises(ValueError, match=rf"max_bytes={budget} cannot be met: .*nothing was written\. "
                                         r"weights_dtype='float16' or 'mixed' stores the weights in about half "
                                         r"the bytes \(got weights_dtype='float32'\)\."):
        prior.save(tmp_path / "f32", max_bytes=budget)
    prior.save(tmp_path / "f16b", weights_dtype="float16", max_bytes=budget)
    with pytest.raises(ValueError, match=r"max_bytes=1000 cannot be met: .*nothing was written\.$"):
        prior.save(tmp_path / "tight", weights_dtype="float16", max_bytes=1000)


def test_saving_onto_a_file_says_a_folder_is_expected(tmp_path):
    """save onto a path that is a file was a bare 'FileExistsError: [Errno 17] File exists' from makedirs,
    naming neither the method nor what it writes; the file is left as it was."""
    target = tmp_path / "prior"
    target.write_text("not a folder")
    with pytest.raises(FileExistsError, match=r"VAEPrior.save: .*prior' is a file; expected a folder \(new or "
                                              r"existing\) to write config.json and weights.safetensors into"):
        _tiny_fitted().save(target)
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize("kind", ["vae", "sgan"])
def test_a_seeded_patch_sampler_given_to_fit_is_said_to_be_unused(kind):
    """fit draws its crops from the prior's random_state: a sampler's own seed changed nothing (the
    priors fitted on samplers seeded None and 5 were identical) without a word. Now a UserWarning says
    so; an unseeded sampler fits quietly, and the crops still follow the prior's seed."""
    import warnings as _warnings

    from latentinv.datasets import PatchSampler, make_channel_image
    from latentinv.sgan import SGANPrior
    image = make_channel_image((48, 40), random_state=1)

    def fitted(sampler_seed):
        if kind == "vae":
            prior = VAEPrior(n_components=2, channels=(2, 2, 2, 2), hidden_size=4, batch_size=2, n_iterations=2,
                             random_state=0, device="cpu")
        else:
            prior = SGANPrior(n_filters=2, dilations=(), training_latent_shape=None, batch_size=2, n_iterations=1,
                              random_state=0, device="cpu")
        return prior.fit(PatchSampler(image, (33, 17), random_state=sampler_seed))

    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        quiet = fitted(None)
    with pytest.warns(UserWarning, match=r"the PatchSampler's random_state=5 is not used: fit draws the crops "
                                         r"from the prior's own random_state"):
        seeded = fitted(5)
    a, b = (p.decode(np.zeros((1, p.n_components))) for p in (quiet, seeded))
    np.testing.assert_array_equal(a, b)
