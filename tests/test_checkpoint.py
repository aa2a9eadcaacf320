"""Resumable training (``VAEPrior.fit`` and ``SGANPrior.fit(..., checkpoint=...)``, ``latentinv._checkpoint``): a training
stopped at any iteration and run again ends with the same network, to the bit, as one uninterrupted
run; damaged checkpoints and checkpoints of another training are clear errors."""
import contextlib
import os

import numpy as np
import pytest
import torch

import latentinv._checkpoint as ckpt
import latentinv._training_step as step_module
import latentinv.prior as prior_module
import latentinv.sgan as sgan_module
from latentinv._common import ModelFileError
from latentinv.datasets import PatchSampler, make_straight_channels
from latentinv.prior import VAEPrior
from latentinv.sgan import SGANPrior

KW = dict(n_components=2, channels=(4, 8, 8, 8), hidden_size=16, batch_size=16, n_iterations=11,
          random_state=0, device="cpu")


def _data(kind):
    if kind == "array":     # 60 models, batches of 16: shuffled epochs, whose order the checkpoint keeps
        return make_straight_channels(60, shape=(16, 16), random_state=0)
    image = make_straight_channels(1, shape=(40, 30), random_state=1)[0]
    return PatchSampler(image, (16, 16), exclude=[(0, 0, 8, 8)])


def _same_training(a, b):
    for (key, x), y in zip(a.module_.state_dict().items(), b.module_.state_dict().values()):
        assert torch.equal(x, y), key
    assert a.history_ == b.history_


class Stop(Exception):
    pass


@contextlib.contextmanager
def _raising_at_call(monkeypatch, owner, name, n, exc):
    """Inside the block, ``owner.name`` raises ``exc`` at its ``n``-th call (a stopped or interrupted
    training); the real one is back after it."""
    real, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    try:
        yield
    finally:
        monkeypatch.setattr(owner, name, real)


@pytest.mark.parametrize("kind", ["array", "patches"])
def test_a_stopped_training_resumes_to_the_same_network(kind, tmp_path, monkeypatch):
    X = _data(kind)
    whole = VAEPrior(**KW).fit(X)
    # stop at the start of iteration 8 (0-based 7)'s step; the last checkpoint is at 6 iterations
    with _raising_at_call(monkeypatch, step_module.TrainingStep, "forward_backward", 8, Stop), pytest.raises(Stop):
        VAEPrior(**KW).fit(X, checkpoint=tmp_path, checkpoint_every=3)
    assert open(tmp_path / "LATEST").read() == "step-000000006"
    assert sorted(os.listdir(tmp_path)) == ["LATEST", "step-000000006"]      # older steps removed
    resumed = VAEPrior(**KW).fit(X, checkpoint=tmp_path, checkpoint_every=3)
    _same_training(whole, resumed)
    # at the end the checkpoint holds the finished training: fitting again trains nothing more
    again = VAEPrior(**KW).fit(X, checkpoint=tmp_path)
    _same_training(whole, again)
    # a larger n_iterations continues it, as one run of that length would
    longer = VAEPrior(**dict(KW, n_iterations=15)).fit(X, checkpoint=tmp_path)
    _same_training(VAEPrior(**dict(KW, n_iterations=15)).fit(X), longer)


@pytest.mark.parametrize("kind", ["array", "patches"])
@pytest.mark.parametrize("block, every", [(1, None), (4, None), (4, 3), (50, 5)])
def test_the_host_reads_per_block_change_nothing(kind, block, every, tmp_path, monkeypatch):
    """The losses are read and the crops cut once per block of iterations (TRAINING_BLOCK, ending at
    every checkpoint): any block length trains the same network, history and checkpoints."""
    X = _data(kind)
    whole = VAEPrior(**KW).fit(X)
    monkeypatch.setattr(prior_module, "TRAINING_BLOCK", block)
    kwargs = {} if every is None else dict(checkpoint=tmp_path, checkpoint_every=every)
    _same_training(whole, VAEPrior(**KW).fit(X, **kwargs))
    if every is not None:       # and resuming from the last checkpoint ends at the same network
        monkeypatch.setattr(prior_module, "TRAINING_BLOCK", 2)
        _same_training(VAEPrior(**dict(KW, n_iterations=13)).fit(X),
                       VAEPrior(**dict(KW, n_iterations=13)).fit(X, **kwargs))


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    X = _data("array")
    VAEPrior(**dict(KW, n_iterations=4)).fit(X, checkpoint=tmp_path, checkpoint_every=2)
    real = ckpt._atomic_write

    def crash(path, data):        # the new step is written, LATEST is not replaced
        if os.path.basename(path) == ckpt.LATEST:
            raise Stop
        return real(path, data)

    monkeypatch.setattr(ckpt, "_atomic_write", crash)
    with pytest.raises(Stop):
        VAEPrior(**KW).fit(X, checkpoint=tmp_path, checkpoint_every=2)
    monkeypatch.setattr(ckpt, "_atomic_write", real)
    assert open(tmp_path / "LATEST").read() == "step-000000004"
    _same_training(VAEPrior(**KW).fit(X), VAEPrior(**KW).fit(X, checkpoint=tmp_path, checkpoint_every=2))


def test_a_checkpoint_of_another_training_is_refused(tmp_path):
    X = _data("array")
    VAEPrior(**dict(KW, n_iterations=3)).fit(X, checkpoint=tmp_path)
    with pytest.raises(ModelFileError, match=r"written by another training \(it differs in beta: "
                                             r"checkpoint 1000.0, now 10.0\)"):
        VAEPrior(**dict(KW, beta=10.0)).fit(X, checkpoint=tmp_path)
    with pytest.raises(ModelFileError, match="it differs in data_sha256"):
        VAEPrior(**KW).fit(X[::-1], checkpoint=tmp_path)
    with pytest.raises(ValueError, match="is at iteration 3, beyond n_iterations=2"):
        VAEPrior(**dict(KW, n_iterations=2)).fit(X, checkpoint=tmp_path)


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    X = _data("array")
    VAEPrior(**dict(KW, n_iterations=2)).fit(X, checkpoint=tmp_path)
    weights = tmp_path / "step-000000002" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        VAEPrior(**KW).fit(X, checkpoint=tmp_path)
    (tmp_path / "LATEST").write_text("../elsewhere")
    with pytest.raises(ModelFileError, match="must name a step directory"):
        VAEPrior(**KW).fit(X, checkpoint=tmp_path)
    (tmp_path / "LATEST").unlink()
    with pytest.raises(ModelFileError, match="holds checkpoint steps but no LATEST"):
        VAEPrior(**KW).fit(X, checkpoint=tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoint_every=0), "checkpoint_every must be an int >= 1; got 0"),
    (dict(checkpoint_every=2.5), "checkpoint_every must be an int >= 1; got 2.5"),
    (dict(checkpoint=123), "checkpoint must be None or a directory path .* got int"),
])
def test_bad_checkpoint_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAEPrior(**KW).fit(_data("array"), **kwargs)


def test_data_digest_tells_data_apart():
    X = np.zeros((2, 3, 3), np.float32)
    assert ckpt.data_digest(X) == ckpt.data_digest(X.astype(np.float64))       # the float32 values
    assert ckpt.data_digest(X) != ckpt.data_digest(X.reshape(2, 9))           # the shape
    Y = X.copy()
    Y[1, 2, 2] = 1e-7
    assert ckpt.data_digest(X) != ckpt.data_digest(Y)
    image = make_straight_channels(1, shape=(20, 20), random_state=1)[0]
    a = PatchSampler(image, (8, 8))
    assert ckpt.data_digest(sampler=a) != ckpt.data_digest(sampler=PatchSampler(image, (8, 8), exclude=[(0, 0, 4, 4)]))
    assert ckpt.data_digest(sampler=a) != ckpt.data_digest(sampler=PatchSampler(image, (8, 9)))
    assert ckpt.data_digest(sampler=a) == ckpt.data_digest(sampler=PatchSampler(image.copy(), (8, 8)))


def test_the_fingerprint_holds_the_seed_and_the_device_type(tmp_path):
    """An integer random_state is in the fingerprint as it is (seeds 0 and 1 are other trainings; an
    instance, whose state moves, by its type's name), and so is the device's type (a CUDA training
    rounds otherwise), but not its index nor n_iterations: a checkpoint of seed 0 is refused to seed 1."""
    X = np.zeros((4, 3, 3), np.float32)

    def fingerprint(device="cpu", **params):
        return ckpt.training_fingerprint(VAEPrior(**dict(KW, **params)), torch.device(device), X)
    assert fingerprint(random_state=0)["random_state"] == 0 and fingerprint(random_state=None)["random_state"] is None
    assert fingerprint(random_state=np.random.RandomState(0))["random_state"] == "RandomState"
    assert fingerprint(random_state=0) != fingerprint(random_state=1)
    assert fingerprint("cuda")["device_type"] == "cuda" and fingerprint()["device_type"] == "cpu"
    assert fingerprint("cuda:0") == fingerprint("cuda:1") != fingerprint()
    assert fingerprint(n_iterations=3) == fingerprint(n_iterations=30)
    VAEPrior(**dict(KW, n_iterations=1)).fit(_data("array"), checkpoint=tmp_path)
    with pytest.raises(ModelFileError, match=r"it differs in random_state: checkpoint 0, now 1\)"):
        VAEPrior(**dict(KW, n_iterations=1, random_state=1)).fit(_data("array"), checkpoint=tmp_path)


# ---------------------------------------------------------------------- SGANPrior: two networks, two optimizers
SGAN_KW = dict(n_filters=4, n_layers=3, dilations=(2, 3), batch_size=4, n_iterations=5, random_state=0,
               device="cpu")


def _sgan_data(kind):
    """The SGAN's two data paths: crops of a sampler (the paper's) or the samples themselves."""
    if kind == "array":
        return make_straight_channels(12, shape=(33, 17), random_state=0), dict(training_latent_shape=None)
    image = make_straight_channels(1, shape=(80, 60), random_state=1)[0]
    return PatchSampler(image, (33, 17), exclude=[(0, 0, 33, 17)]), dict(training_latent_shape=(5, 5))


def _same_sgan(a, b):
    for (key, x), y in zip(a.generator_.state_dict().items(), b.generator_.state_dict().values()):
        assert torch.equal(x, y), key
    assert a.history_ == b.history_


@pytest.mark.parametrize("kind", ["array", "patches"])
def test_a_stopped_sgan_training_resumes_to_the_same_generator(kind, tmp_path, monkeypatch):
    X, kw = _sgan_data(kind)
    whole = SGANPrior(**SGAN_KW, **kw).fit(X)
    # two calls per iteration: stop inside iteration 4 (0-based 3)
    with _raising_at_call(monkeypatch, sgan_module, "adversarial_losses", 8, Stop), pytest.raises(Stop):
        SGANPrior(**SGAN_KW, **kw).fit(X, checkpoint=tmp_path, checkpoint_every=2)
    assert open(tmp_path / "LATEST").read() == "step-000000002"
    resumed = SGANPrior(**SGAN_KW, **kw).fit(X, checkpoint=tmp_path, checkpoint_every=2)
    _same_sgan(whole, resumed)
    # the discriminator and both optimizers were restored too: a longer run continues as one run would
    longer = SGANPrior(**dict(SGAN_KW, n_iterations=8), **kw).fit(X, checkpoint=tmp_path)
    _same_sgan(SGANPrior(**dict(SGAN_KW, n_iterations=8), **kw).fit(X), longer)


def test_sgan_training_in_parts_equals_one_run(tmp_path):
    """How benchmarks train within a deadline: fits of growing n_iterations on one checkpoint."""
    X, kw = _sgan_data("patches")
    for n in (1, 3, 4, 7):
        parts = SGANPrior(**dict(SGAN_KW, n_iterations=n), **kw).fit(X, checkpoint=tmp_path, checkpoint_every=50)
    assert open(tmp_path / "LATEST").read() == "step-000000007"
    _same_sgan(SGANPrior(**dict(SGAN_KW, n_iterations=7), **kw).fit(X), parts)
    assert len(parts.history_["generator"]) == 7


def test_sgan_checkpoints_of_another_training_are_refused(tmp_path):
    X, kw = _sgan_data("patches")
    SGANPrior(**dict(SGAN_KW, n_iterations=2), **kw).fit(X, checkpoint=tmp_path / "sgan")
    with pytest.raises(ModelFileError, match=r"it differs in learning_rate: checkpoint 0.0005, now 0.001"):
        SGANPrior(**dict(SGAN_KW, learning_rate=1e-3), **kw).fit(X, checkpoint=tmp_path / "sgan")
    with pytest.raises(ModelFileError, match="it differs in data_sha256"):
        SGANPrior(**SGAN_KW, **kw).fit(PatchSampler(X.images[0][::-1], (33, 17), exclude=X.exclude),
                                       checkpoint=tmp_path / "sgan")
    with pytest.raises(ValueError, match="is at iteration 2, beyond n_iterations=1"):
        SGANPrior(**dict(SGAN_KW, n_iterations=1), **kw).fit(X, checkpoint=tmp_path / "sgan")
    # the decoded models' grid is not the training's: another image_shape carries the same training on
    grid = SGANPrior(**dict(SGAN_KW, n_iterations=3), image_shape=(65, 33), **kw).fit(X, checkpoint=tmp_path / "sgan")
    assert len(grid.history_["generator"]) == 3 and grid.image_shape_ == (65, 33)
    # a VAE's checkpoint is another training, named as such
    VAEPrior(**dict(KW, n_iterations=1)).fit(_data("array"), checkpoint=tmp_path / "vae")
    with pytest.raises(ModelFileError, match="estimator: checkpoint null, now \"SGANPrior\""):
        SGANPrior(**SGAN_KW, **kw).fit(X, checkpoint=tmp_path / "vae")


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoint_every=0), "SGANPrior.fit: checkpoint_every must be an int >= 1; got 0"),
    (dict(checkpoint=1.5), "SGANPrior.fit: checkpoint must be None or a directory path .* got float"),
])
def test_bad_sgan_checkpoint_arguments(kwargs, message):
    X, kw = _sgan_data("array")
    with pytest.raises(ValueError, match=message):
        SGANPrior(**SGAN_KW, **kw).fit(X, **kwargs)


def test_an_interrupted_fit_leaves_the_previous_fit_or_none(monkeypatch):
    """KeyboardInterrupt in the training: a first fit leaves an unfitted prior (it claimed to be fitted
    to scikit-learn and LatentInverter, with image_shape_ set and no network); a refit on images of
    another shape leaves the previous fit whole (it kept the old network under the new image_shape_)."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from latentinv.inversion.generator import prior_is_fitted
    X = _data("array")
    interrupted = (monkeypatch, step_module.TrainingStep, "forward_backward", 3, KeyboardInterrupt)
    first = VAEPrior(**KW)
    with _raising_at_call(*interrupted), pytest.raises(KeyboardInterrupt):
        first.fit(X)
    assert not prior_is_fitted(first) and [k for k in vars(first) if k.endswith("_")] == []
    with pytest.raises(NotFittedError):
        check_is_fitted(first)

    prior = VAEPrior(**KW).fit(X)
    weights = {k: v.clone() for k, v in prior.module_.state_dict().items()}
    with _raising_at_call(*interrupted), pytest.raises(KeyboardInterrupt):
        prior.fit(make_straight_channels(60, shape=(16, 12), random_state=0))
    assert prior.image_shape_ == (16, 16) and prior.n_features_in_ == 256
    assert all(torch.equal(v, weights[k]) for k, v in prior.module_.state_dict().items())
    assert prior.transform(X[:2].reshape(2, -1)).shape == (2, 2)
