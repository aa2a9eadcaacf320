"""The priors shipped in the package: the default ``VAEPrior.pretrained()`` (trained on the paper's
training image, ``image="channels_ti"``) and the earlier default ``VAEPrior.pretrained(image="procedural")``.
Each loads without code, decodes, samples, and still has the quality its training record claims."""
import copy
import json
import struct
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from latentinv import VAEPrior
from latentinv.datasets import (HELD_OUT_WINDOW, PAPER_TRUTH_WINDOWS, PRETRAINED_IMAGE_SETTINGS,
                                PatchSampler, load_channels_ti, make_channel_image)

# -- the procedural prior (image="procedural", the earlier default) ---------------------------------
DATA = files("latentinv") / "data" / "default_prior"
RECORD = Path(__file__).resolve().parents[1] / "docs" / "default_prior.json"
#: seed of the held-out image of scripts/train_default_prior.py (never used for training)
HELD_OUT_SEED = 99


@pytest.fixture(scope="module")
def prior():
    return VAEPrior.pretrained(device="cpu", image="procedural")


def held_out(n):
    image = make_channel_image(**PRETRAINED_IMAGE_SETTINGS, random_state=HELD_OUT_SEED)
    return PatchSampler(image, (129, 65), random_state=HELD_OUT_SEED).sample(n).reshape(n, -1)


def _data_files(folder):
    """A shipped prior's files: weights as safetensors (data, no code) within the budget, its config.
    Returns ``(weights bytes, config dict)``."""
    weights = (folder / "weights.safetensors").read_bytes()
    config_text = (folder / "config.json").read_text()
    assert len(weights) + len(config_text.encode()) <= 10**7      # the budget: at most 10 MB in all
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle anywhere)
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + n])
    config = json.loads(config_text)
    assert config["format"] == "latentinv.VAEPrior"
    dtypes = {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
    # float32, or float16 but for the tensors the config names (VAEPrior.save's "mixed"); the encoder
    # tensors named in int8_tensors (VAEPrior.save's max_bytes) as int8, each with its float32 scales
    int8 = set(config.get("int8_tensors", ()))
    assert all(k.startswith("encoder.") for k in int8)                 # the decoder is never quantized
    kept = {None: set(dtypes), "float16": set(), "mixed": set(config.get("float32_tensors", ()))}[
        config.get("weights_dtype")] | {k + ".int8_scale" for k in int8}
    assert all(d == ("I8" if k in int8 else "F32" if k in kept else "F16") for k, d in dtypes.items()), (
        config.get("weights_dtype"), dtypes)
    return weights, config


def test_files_are_data_not_code():
    _data_files(DATA)


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
@pytest.mark.parametrize("image", ["channels_ti", "procedural"])
def test_loads_on_cuda(image):
    gpu = VAEPrior.pretrained(device="cuda", image=image)
    cpu = VAEPrior.pretrained(device="cpu", image=image)
    z = np.random.default_rng(0).standard_normal((3, 20))
    # cuDNN's TF32 convolutions (torch's default) moved values by up to 1.1e-3 on an H200; in float32 the
    # two devices differ by summation order alone
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        np.testing.assert_allclose(gpu.decode(z), cpu.decode(z), atol=1e-4)


def _checksums_hold(weights, config):
    """The config's digests of the weights file and of the config itself hold."""
    import hashlib

    assert config["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    rest = {k: v for k, v in config.items() if k != "config_sha256"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    assert config["config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_shipped_files_carry_valid_checksums():
    config = json.loads((DATA / "config.json").read_text())
    weights = (DATA / "weights.safetensors").read_bytes()
    _checksums_hold(weights, config)
    # the weights were not changed by re-saving with checksums (digest of the file as trained)
    assert config["weights_sha256"] == "089066d6085cf3d7b77b44c65ef055d9156a314aab25780bdb158b6e04ac5640"


def test_pretrained_device_auto_and_unavailable_cuda(prior):
    auto = VAEPrior.pretrained(device="auto", image="procedural")
    assert auto.device_ == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    z = np.random.RandomState(0).standard_normal((3, 20))
    np.testing.assert_allclose(auto.decode(z), prior.decode(z), atol=1e-3)
    with pytest.raises(ValueError, match=r"VAEPrior.pretrained: device must be .*got 'gpu'"):
        VAEPrior.pretrained(device="gpu")
    if torch.cuda.is_available():
        return
    import warnings

    with warnings.catch_warnings(record=True) as caught, pytest.raises(
            ValueError, match=r"VAEPrior.pretrained: device='cuda' asks for CUDA, but CUDA is not "
                              r"available on this machine .*expected 'cpu' or 'auto'"):
        warnings.simplefilter("always")
        VAEPrior.pretrained(device="cuda")
    assert not any("trained on" in str(w.message) for w in caught)     # no false claim


# ------------------------------------------------------------ the paper's published VAE (VAE_SGD)
class PublishedLayoutVAE(torch.nn.Module):
    """Written for this test from the layout of VAE/autoencoder_in.py (github.com/jlalvis/VAE_SGD):
    same attribute names, Sequential indices and shapes, independent of latentinv.nn."""

    def __init__(self, z_dim=20):
        nn = torch.nn
        super().__init__()

        def block(conv, n_in, n_out, k, last=False):
            layers = [conv(n_in, n_out, kernel_size=k, stride=2, bias=False)]
            return layers if last else layers + [nn.InstanceNorm2d(n_out), nn.ReLU()]

        self.encoder = nn.Sequential(*block(nn.Conv2d, 1, 32, 5), *block(nn.Conv2d, 32, 64, 5),
                                     *block(nn.Conv2d, 64, 128, 4), *block(nn.Conv2d, 128, 256, 4),
                                     nn.Flatten(), nn.Linear(12 * 256, 512), nn.ReLU())
        self.fc1 = nn.Linear(512, z_dim)
        self.fc2 = nn.Linear(512, z_dim)
        self.fc3 = nn.Linear(z_dim, 512)
        t = nn.ConvTranspose2d
        self.decoder = nn.Sequential(nn.Linear(512, 12 * 256), nn.ReLU(), nn.Unflatten(1, (256, 6, 2)),
                                     *block(t, 256, 128, 4), *block(t, 128, 64, 4), *block(t, 64, 32, 5),
                                     *block(t, 32, 1, 5, last=True), nn.Sigmoid())

    def decode(self, z):                                # the published decode: fc3, then decoder
        return self.decoder(self.fc3(z))

    def mean(self, x):                                  # the published encode's mu: fc1(encoder(x))
        return self.fc1(self.encoder(x))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = PublishedLayoutVAE()
        with torch.no_grad():                           # spread the weights so that decode varies
            for p in net.parameters():
                p.mul_(3.0)
    net.eval()
    path = tmp_path_factory.mktemp("published") / "VAE_inMSEeps100r1e3.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_reference_checkpoint_decodes_and_encodes_like_the_published_module(published, tmp_path):
    net, path = published
    prior = VAEPrior.from_reference_checkpoint(path, device="cpu")
    assert prior.n_components == 20 and prior.image_shape_ == (129, 65) and prior.n_features_in_ == 8385
    assert prior.get_params()["architecture"] == "conv" and prior.beta_per_sample_ == 0.5
    z = np.random.RandomState(0).standard_normal((6, 20))
    with torch.no_grad():                               # the published module in float64: the exact decode
        expected = copy.deepcopy(net).double().decode(torch.tensor(z)).reshape(6, -1).numpy()
    assert expected.std() > 0.05                        # a decode that a wrong mapping would change
    # float32 round-off through this deep net with tripled weights: 2.3e-6 for the published module
    # itself in float32, 3.4e-6 for latentinv's CPU kernels; a wrong mapping is off by 1e-2 and more
    np.testing.assert_allclose(prior.decode(z), expected, rtol=0, atol=1e-5)
    x = np.random.RandomState(1).random_sample((5, 129, 65))
    with torch.no_grad():
        mu = net.mean(torch.tensor(x[:, None], dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(prior.encode(x), mu, rtol=1e-5, atol=1e-5)
    # and through the normal model files
    prior.save(tmp_path / "ref")
    again = VAEPrior.load(tmp_path / "ref")
    np.testing.assert_array_equal(again.decode(z), prior.decode(z))
    assert again.get_params() == prior.get_params()


def test_reference_checkpoint_rejects_wrong_files(published, tmp_path):
    from latentinv.prior import ModelFileError

    net, path = published
    state = net.state_dict()

    def write(obj, name):
        p = tmp_path / name
        torch.save(obj, p)
        return p

    cases = [
        (write([state["fc1.weight"]], "list.pth"), r"expected a state dict .*got list"),
        (write({k: v for k, v in state.items() if k != "fc3.bias"}, "missing.pth"),
         r"missing keys \['fc3.bias'\], unexpected keys \[\]"),
        (write({**state, "decoder.15.weight": torch.zeros(1)}, "extra.pth"),
         r"unexpected keys \['decoder.15.weight'\]"),
        (write({**state, "encoder.0.weight": torch.zeros(32, 1, 4, 4)}, "shape.pth"),
         r"encoder.0.weight: expected \(32, 1, 5, 5\), got \(32, 1, 4, 4\)"),
        (write({**state, "fc3.bias": torch.zeros(512, dtype=torch.int64)}, "dtype.pth"),
         r"expected floating-point tensors; got fc3.bias: torch.int64"),
        (write({**state, "fc3.bias": torch.full((512,), float("nan"))}, "nan.pth"), r"NaN"),
        (write({**state, "fc1.bias": "text"}, "object.pth"), r"expected a state dict of tensors"),
    ]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:100_000])
    text = tmp_path / "notes.pth"
    text.write_text("not a torch file\n")
    cases += [(truncated, r"could not be read as a torch state dict"),
              (text, r"could not be read as a torch state dict")]
    for file, message in cases:
        with pytest.raises(ModelFileError, match=r"from_reference_checkpoint: .*" + file.name + r"'.*" + message):
            VAEPrior.from_reference_checkpoint(file)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        VAEPrior.from_reference_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match=r"from_reference_checkpoint: device must be"):
        VAEPrior.from_reference_checkpoint(path, device="tpu")


def test_published_key_map_covers_the_conv_module_exactly():
    from latentinv.nn import build_vae
    from latentinv.nn.reference import published_key_map, published_shapes

    conv = build_vae("conv", (129, 65), 20, seed=0).state_dict()
    mapping = published_key_map()
    assert sorted(mapping.values()) == sorted(conv)                 # every tensor, once
    reference = PublishedLayoutVAE().state_dict()
    assert set(mapping) == set(reference) == set(published_shapes())
    for key, target in mapping.items():
        assert tuple(reference[key].shape) == published_shapes()[key] == tuple(conv[target].shape), key


# -- the default prior, trained on the paper's image (VAEPrior.pretrained(), image="channels_ti") -------
TI_DATA = files("latentinv") / "data" / "channels_ti_prior"
TI_RECORD = Path(__file__).resolve().parents[1] / "docs" / "channels_ti_prior.json"
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_prior.py"


@pytest.fixture(scope="module")
def ti_prior():
    return VAEPrior.pretrained(device="cpu", image="channels_ti")


def test_default_is_the_paper_image_prior(ti_prior, prior):
    """``VAEPrior.pretrained()`` is the prior trained on the paper's image, not the procedural one."""
    default = VAEPrior.pretrained(device="cpu")
    z = np.random.default_rng(5).standard_normal((4, 20))
    np.testing.assert_array_equal(default.decode(z), ti_prior.decode(z))
    assert np.abs(default.decode(z) - prior.decode(z)).max() > 0.1      # the two priors differ


def test_paper_image_prior_files_are_data_with_valid_checksums():
    weights, config = _data_files(TI_DATA)
    _checksums_hold(weights, config)
    # the weights as trained on the H200 and stored by benchmarks/gpu_results.py (docs/channels_ti_prior.json)
    assert config["weights_sha256"] == "9fc8905b736952a4c3b489983c9cf8f8913a27c4e57d3b2882134b9e3e8f99f9"


def test_paper_image_prior_loads_and_matches_its_record(ti_prior):
    """It decodes and samples; it reconstructs crops of the held-out band of the paper's image far
    better than their mean, and exactly as its record says; samples have about the image's channel
    fraction."""
    assert ti_prior.n_components == 20 and tuple(ti_prior.image_shape_) == (129, 65)
    assert not any(p.requires_grad for p in ti_prior.module_.parameters())
    s = ti_prior.sample(5, random_state=3)
    np.testing.assert_allclose(s, ti_prior.decode(np.random.RandomState(3).standard_normal((5, 20))),
                               rtol=0, atol=1e-6)
    r0, _, n_rows, _ = HELD_OUT_WINDOW
    band = load_channels_ti()[r0:r0 + n_rows]          # the held-out truths of its record
    truths = PatchSampler(band, (129, 65), random_state=HELD_OUT_SEED).sample(200).reshape(200, -1)
    rmse = float(np.sqrt(np.mean((ti_prior.decode(ti_prior.encode(truths)) - truths) ** 2)))
    p = truths.mean()
    assert rmse < 0.6 * np.sqrt(p * (1 - p))
    frac = (ti_prior.sample(100, random_state=0) > 0.5).mean()
    assert 0.15 < frac < 0.40         # the image: 0.24; this prior samples 0.36 (docs/channels_ti_prior.json)
    if not TI_RECORD.is_file():
        pytest.skip("docs/channels_ti_prior.json is not beside the tests (installed package)")
    record = json.loads(TI_RECORD.read_text())
    assert rmse == pytest.approx(record["heldout_reconstruction_rmse"], abs=1e-4)   # 2 threads trained it
    assert "mc1-mc3" in record["training_images"]["excluded"]
    # the record's held-out band is HELD_OUT_WINDOW (rows 2200-2499)
    assert f"rows {r0}-{r0 + n_rows - 1}" in record["training_images"]["excluded"]


def test_training_crops_never_overlap_the_held_out_window():
    """The sampler that trained the default prior (scripts/train_default_prior.py) has no admissible crop
    overlapping HELD_OUT_WINDOW or mc1-mc3: load_held_out_crop's truths are unseen."""
    if not TRAIN_SCRIPT.is_file():
        pytest.skip("scripts/train_default_prior.py is not beside the tests (installed package)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_default_prior", TRAIN_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sampler = script.training_sampler("channels_ti")
    rows, cols = sampler.admissible_corners()
    h, w = sampler.patch_shape
    for r0, c0, hw, ww in [HELD_OUT_WINDOW, *PAPER_TRUTH_WINDOWS.values()]:
        overlap = (rows < r0 + hw) & (r0 < rows + h) & (cols < c0 + ww) & (c0 < cols + w)
        assert not overlap.any(), (r0, c0, hw, ww)
    assert rows.max() + h == HELD_OUT_WINDOW[0]         # the band starts right after the last crop


@pytest.mark.parametrize("image", ["channels_ti", "procedural"])
def test_shipped_priors_refit_on_any_machine(image):
    """A shipped prior's parameters train again anywhere: float32, eager, on a device every machine has
    (a prior trained in bfloat16 or from CUDA graphs would otherwise refuse to refit on a CPU without
    them; the procedural prior says "cpu", the paper-image one "auto")."""
    params = VAEPrior.pretrained(image=image).get_params()
    assert (params["precision"], params["cuda_graphs"]) == ("float32", False)
    assert params["device"] in ("auto", "cpu")


def test_training_script_saves_portable_parameters_and_records_its_arithmetic(tmp_path):
    """scripts/train_default_prior.py saves the prior with portable parameters and writes how it trained
    into the training record (then into the prior's record as "training_arithmetic")."""
    if not TRAIN_SCRIPT.is_file():
        pytest.skip("scripts/train_default_prior.py is not beside the tests (installed package)")
    import importlib.util

    from latentinv._common import native_bfloat16
    precision = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"
    spec = importlib.util.spec_from_file_location("train_default_prior", TRAIN_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--iterations", "2", "--channels", "2", "2", "2", "2", "--hidden-size", "4", "--batch-size", "2",
                 "--precision", precision, "--threads", "1", "--no-evaluate",
                 "--out", str(tmp_path / "prior"), "--report", str(tmp_path / "docs")])
    saved = VAEPrior.load(tmp_path / "prior")
    assert (saved.precision, saved.cuda_graphs, saved.device) == ("float32", False, "auto")
    record = json.loads((tmp_path / "docs" / "channels_ti_prior_training.json").read_text())
    assert record["arithmetic"] == {"device": "cpu", "precision": precision, "cuda_graphs": False}


def test_pretrained_image_must_be_known():
    with pytest.raises(ValueError, match=r"image must be one of \['channels_ti', 'procedural'\], got 'ti'"):
        VAEPrior.pretrained(image="ti")


def test_pretrained_loads_on_the_device_asked_for(monkeypatch):
    """pretrained hands load the device asked for, resolved ("auto": CUDA when available), and None (the
    device saved, the CPU) when none is asked: a dropped device would load a prior asked for on CUDA on the
    CPU, with the same decoded values."""
    asked = []
    monkeypatch.setattr(VAEPrior, "load", classmethod(lambda cls, path, device=None, architecture=None:
                                                      asked.append(device)))
    for device in ("cpu", "auto", None):
        VAEPrior.pretrained(device=device)
    assert asked == [torch.device("cpu"), torch.device("cuda" if torch.cuda.is_available() else "cpu"), None]
