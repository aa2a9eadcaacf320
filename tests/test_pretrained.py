"""The prior shipped in the package (``VAEPrior.pretrained()``): it loads without code, decodes, samples,
and still has the quality its training record claims."""
import json
import struct
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from latentinv import VAEPrior
from latentinv.datasets import PRETRAINED_IMAGE_SETTINGS, PatchSampler, make_channel_image

DATA = files("latentinv") / "data" / "default_prior"
RECORD = Path(__file__).resolve().parents[1] / "docs" / "default_prior.json"
#: seed of the held-out image of scripts/train_default_prior.py (never used for training)
HELD_OUT_SEED = 99


@pytest.fixture(scope="module")
def prior():
    return VAEPrior.pretrained(device="cpu")


def held_out(n):
    image = make_channel_image(**PRETRAINED_IMAGE_SETTINGS, random_state=HELD_OUT_SEED)
    return PatchSampler(image, (129, 65), random_state=HELD_OUT_SEED).sample(n).reshape(n, -1)


def test_files_are_data_not_code():
    weights = (DATA / "weights.safetensors").read_bytes()
    assert len(weights) <= 10 * 2**20                        # the budget: at most 10 MB
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle anywhere)
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + n])
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
    config = json.loads((DATA / "config.json").read_text())
    assert config["format"] == "latentinv.VAEPrior"


def test_loads_decodes_and_samples(prior):
    assert prior.n_components == 20
    assert tuple(prior.image_shape_) == (129, 65)
    assert not any(p.requires_grad for p in prior.module_.parameters())      # fitted priors are frozen
    x0 = prior.decode(np.zeros((1, 20)))
    assert x0.shape == (1, 129 * 65) and np.all((x0 >= 0) & (x0 <= 1))      # sigmoid output
    # sample = decode of the seeded standard-normal draws, the same on every call
    s = prior.sample(5, random_state=3)
    z = np.random.RandomState(3).standard_normal((5, 20))
    np.testing.assert_allclose(s, prior.decode(z), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(s, prior.sample(5, random_state=3))
    assert not np.allclose(s[0], s[1])
    # samples look like the training family: channel fraction near its 0.26, not all 0 or all 1
    frac = (prior.sample(100, random_state=0) > 0.5).mean()
    assert 0.15 < frac < 0.40


def test_quality_matches_its_record(prior):
    """Held-out reconstruction RMSE: far below predicting the mean, and equal to the recorded value."""
    truths = held_out(200)
    recon = prior.decode(prior.encode(truths))
    rmse = float(np.sqrt(np.mean((recon - truths) ** 2)))
    p = truths.mean()
    assert rmse < 0.6 * np.sqrt(p * (1 - p))                   # the best constant model's RMSE
    if not RECORD.is_file():
        pytest.skip("docs/default_prior.json is not beside the tests (installed package)")
    record = json.loads(RECORD.read_text())
    # the record was written with 1 torch thread; other thread counts round differently
    assert rmse == pytest.approx(record["heldout_reconstruction_rmse"], abs=1e-6)
    assert record["training_images"]["seeds"] and HELD_OUT_SEED not in record["training_images"]["seeds"]
    for key, value in PRETRAINED_IMAGE_SETTINGS.items():
        if key in record["training_images"]:
            assert record["training_images"][key] == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loads_on_cuda():
    gpu = VAEPrior.pretrained(device="cuda")
    cpu = VAEPrior.pretrained(device="cpu")
    z = np.random.default_rng(0).standard_normal((3, 20))
    np.testing.assert_allclose(gpu.decode(z), cpu.decode(z), atol=1e-3)     # TF32 convolutions on CUDA
