"""Variational-autoencoder prior as a scikit-learn transformer.

:class:`VAEPrior` trains the VAE of Lopez-Alvis et al. (2021, Computers &
Geosciences) on training models (arrays or a :class:`~latentinv.datasets.PatchSampler`
of fresh crops) and exposes its mean decoder as a differentiable torch module
(``decoder_``) for inversion in latent space. The torch modules and the loss
live in :mod:`latentinv.nn.vae`; this module is the scikit-learn shell.

Model files (:meth:`VAEPrior.save`/:meth:`VAEPrior.load`) are a safetensors
file and a JSON file, loaded without executing code and verified by two
SHA-256 checksums; :meth:`VAEPrior.from_reference_checkpoint` reads the
paper's published trained network.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from functools import partial
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _checkpoint, _storage
from ._allocator import tune_malloc_for_tensors
from ._training_step import GraphedTrainingStep, TrainingStep
from .datasets import PatchSampler, warn_unused_sampler_seed
from .nn.vae import (
    REFERENCE_CHANNELS,
    REFERENCE_HIDDEN_SIZE,
    REFERENCE_KERNEL_SIZES,
    LatentDecoder,
    build_vae,
    kl_divergence,
)
from .nn.reference import PUBLISHED_IMAGE_SHAPE, convert_published_state_dict
from ._checks import check_random_state
from ._checks import is_int as _is_int
from ._common import (  # noqa: F401  (shared with latentinv.sgan; ModelFileError etc. re-exported)
    ModelFileError,
    UnverifiedModelWarning,
    _ClonesRememberFitted,
    _DecodesLatents,
    _PicklesNetwork,
    _check_finite_output,
    _check_history_finite,
    _unchanged_on_failure,
    _check_output_fits,
    _check_state_against,
    _check_unit_interval,
    _check_saved_random_state,
    _plain_params,
    _load_safetensors,
    _read_model_files,
    _check_float32_range,
    _deterministic_kernels,
    _ndim,
    _numeric_input,
    _reject_1d,
    _parse_config as _parse_model_config,
    _parse_device,
    _resolve_device,
    _saved_device_or_cpu,
    _tensor_to_numpy,
    _read_reference_state_dict,
    _verify_checksums as _verify_model_checksums,
    _write_tensor_files,
    native_bfloat16,
)

__all__ = ["VAEPrior", "ModelFileError", "UnverifiedModelWarning"]

_WEIGHTS_FILE = "weights.safetensors"
_CONFIG_FILE = "config.json"
#: training iterations between the host's reads of the device (losses; a PatchSampler's crops)
TRAINING_BLOCK = 25


_FORMAT = "latentinv.VAEPrior"
_VERSION = 2          # 1: no checksums (before issue 14); 2: weights_sha256 + config_sha256
_CHECKSUM_KEYS = ("weights_sha256", "config_sha256")
_CONFIG_KEYS = ("format", "version", "params", "custom_architecture", "fitted")
_FITTED_KEYS = ("image_shape_", "n_features_in_", "device_", "history_", "beta_per_sample_")
#: parameters added after the format's version 2: files without them load with their defaults
_LATER_PARAMS = ("precision", "cuda_graphs")
#: the name under which the per-row scales of an int8 tensor (``save``'s ``max_bytes``) are stored
_INT8_SCALE = ".int8_scale"
_HISTORY_KEYS = ("reconstruction", "kl", "loss")
# the shared readers with VAEPrior's format (functools.partial adds no frame: warnings keep their stacklevel)
_parse_config = partial(_parse_model_config, fmt=_FORMAT, versions=(1, _VERSION), saver="VAEPrior")
_verify_checksums = partial(_verify_model_checksums, saver="VAEPrior", unverified_versions=(1,))


def _int8_rows(tensor):
    """Symmetric int8 quantization per output row (dim 0): ``(q, scale)`` with ``tensor`` ~ ``q * scale``
    to half a step (``scale / 2``), each row's scale its largest magnitude / 127 (1 for a zero row)."""
    rows = tensor.detach().float().reshape(tensor.shape[0], -1)
    scale = rows.abs().amax(1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(tensor.shape), scale


def _encoder_int8_to_fit(state, config, max_bytes, owner, weights_dtype="float32"):
    """``(state, config)`` with the encoder's largest weight tensors in int8 (:func:`_int8_rows`, the
    scales stored under ``name + _INT8_SCALE``), one at a time, until the two saved files take at most
    ``max_bytes``; unchanged when they already do. The decoder is never touched: decoded models do not
    depend on the encoder. ValueError when even an all-int8 encoder does not fit."""
    from safetensors.torch import save as safetensors_bytes

    from ._common import _add_checksums

    def files_bytes(state, config):
        weights = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in state.items()})
        return len(weights) + len(json.dumps(_add_checksums(config, weights), indent=1).encode("ascii"))

    candidates = sorted((k for k, v in state.items() if k.startswith("encoder.") and v.is_floating_point()
                         and v.dim() >= 2), key=lambda k: (-state[k].numel() * state[k].element_size(), k))
    chosen, state, size = [], dict(state), files_bytes(state, config)
    while size > max_bytes and len(chosen) < len(candidates):
        k = candidates[len(chosen)]
        chosen.append(k)
        state[k], state[k + _INT8_SCALE] = _int8_rows(state[k])
        config = dict(config, int8_tensors=sorted(chosen))
        size = files_bytes(state, config)
    if size > max_bytes:
        raise ValueError(f"{owner}: max_bytes={max_bytes:g} cannot be met: the files take {size} bytes"
                         f"{' with every encoder weight tensor in int8' if candidates else ''} (the decoder is "
                         f"never quantized); nothing was written."
                         + (" weights_dtype='float16' or 'mixed' stores the weights in about half the bytes (got "
                            "weights_dtype='float32')." if weights_dtype == "float32" else ""))
    return state, config


def _from_int8_tensors(state, names, source):
    """``state`` with the int8 tensors ``names`` back in float32 (their scales removed); ModelFileError
    for a missing tensor or scale, or a scale that is not one positive finite float32 per row."""
    state = dict(state)
    for k in sorted(names):
        q, scale = state.get(k), state.pop(k + _INT8_SCALE, None)
        if q is None or scale is None:
            raise ModelFileError(f"{source}: int8 tensor {k!r} or its scales {k + _INT8_SCALE!r} are missing.")
        if q.dim() < 1 or tuple(scale.shape) != (q.shape[0],) or not bool(
                (torch.isfinite(scale) & (scale > 0)).all()):
            raise ModelFileError(f"{source}: the scales of int8 tensor {k!r} must be {q.shape[0] if q.dim() else 1} "
                                 f"positive finite float32 values (one per row); got shape "
                                 f"{tuple(scale.shape)}.")
        state[k] = q.float() * scale.reshape(-1, *([1] * (q.dim() - 1)))
    return state


def _check_factory_module(module, n_features, n_components, device, owner, architecture):
    """A callable architecture's module keeps its contract (``encode(x) -> (mu, logvar)`` of shape
    ``(batch, n_components)``, ``decode(z)`` of ``batch * n_features`` values), checked on two rows of
    zeros in eval mode (no batch statistics move) before any step; a ValueError naming what differs."""
    where = f"{owner}: the module of architecture={architecture!r}"
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module.encode(torch.zeros((2, n_features), device=device))
            if not (isinstance(out, (tuple, list)) and len(out) == 2
                    and all(isinstance(t, torch.Tensor) for t in out)):
                raise ValueError(f"{where}: encode(x) must return (mu, logvar), two tensors; got "
                                 f"{type(out).__name__}.")
            shapes = [tuple(t.shape) for t in out]
            if any(s != (2, n_components) for s in shapes):
                raise ValueError(f"{where}: encode(x) must return (mu, logvar) of shape (2, {n_components}) "
                                 f"(batch, n_components) for x of shape (2, {n_features}); got {shapes[0]} and "
                                 f"{shapes[1]}.")
            x_hat = module.decode(out[0])
            if not isinstance(x_hat, torch.Tensor) or x_hat.numel() != 2 * n_features:
                got = x_hat.numel() if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
                raise ValueError(f"{where}: decode(z) must return 2 * {n_features} values (batch * n_features) "
                                 f"for z of shape (2, {n_components}); got {got}.")
    finally:
        module.train(was_training)


def _check_config(cls, config, config_path, owner, architecture):
    """Validate the structure and types of a parsed config; return (params, fitted) ready to use."""
    where = f"{owner}: {config_path!r}"

    def keys(mapping, required, label, optional=()):
        missing = [k for k in required if k not in mapping]
        unexpected = [k for k in mapping if k not in required and k not in optional]
        if missing or unexpected:
            raise ModelFileError(f"{where}: {label} has missing keys {missing} and unexpected keys "
                                 f"{unexpected}; expected exactly {list(required)}.")

    keys(config, _CONFIG_KEYS, "the configuration",
         optional=_CHECKSUM_KEYS + ("weights_dtype", "float32_tensors", "int8_tensors"))
    _storage.check_config_entries(config, where)
    int8 = config.get("int8_tensors")
    if int8 is not None and not (isinstance(int8, list) and int8 and all(isinstance(k, str) for k in int8)
                                 and len(set(int8)) == len(int8)):
        raise ModelFileError(f"{where}: 'int8_tensors' must be a non-empty list of distinct tensor names; "
                             f"got {int8!r}.")
    params, fitted = config["params"], config["fitted"]
    for label, value in (("params", params), ("fitted", fitted)):
        if not isinstance(value, dict):
            raise ModelFileError(f"{where}: {label!r} must be a JSON object; got {type(value).__name__}.")
    custom = config["custom_architecture"]
    if not isinstance(custom, bool):
        raise ModelFileError(f"{where}: 'custom_architecture' must be true or false; got {custom!r}.")
    keys(params, [k for k in cls._get_param_names() if k not in _LATER_PARAMS], "'params'",
         optional=tuple(_LATER_PARAMS))
    keys(fitted, _FITTED_KEYS, "'fitted'")

    params = dict(params)
    for key in ("channels", "kernel_sizes"):
        value = params[key]
        if not isinstance(value, list) or not value or not all(_is_int(v, 1) for v in value):
            raise ModelFileError(f"{where}: params.{key} must be a non-empty list of positive ints; "
                                 f"got {value!r}.")
        params[key] = tuple(value)
    shape = params["image_shape"]
    if shape is not None:
        if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(v, 1) for v in shape):
            raise ModelFileError(f"{where}: params.image_shape must be null or [n_rows, n_cols] (positive "
                                 f"ints); got {shape!r}.")
        params["image_shape"] = tuple(shape)
    try:
        _parse_device(params["device"], where, "params.device")
    except ValueError as err:
        raise ModelFileError(str(err)) from None
    _check_saved_random_state(params, where)
    if not (_is_int(params["verbose"], 0) or isinstance(params["verbose"], bool)):
        raise ModelFileError(f"{where}: params.verbose must be an int >= 0; got {params['verbose']!r}.")
    if custom:
        if params["architecture"] is not None:
            raise ModelFileError(f"{where}: params.architecture must be null when custom_architecture "
                                 f"is true; got {params['architecture']!r}.")
        if not callable(architecture):
            raise ValueError(f"{owner}: this prior was trained with a custom architecture factory; pass "
                             f"it as architecture= (a callable); got {architecture!r}.")
        params["architecture"] = architecture
    elif params["architecture"] not in ("conv", "mlp"):
        raise ModelFileError(f"{where}: params.architecture must be 'conv' or 'mlp' (or null with "
                             f"custom_architecture true); got {params['architecture']!r}.")

    image_shape_ = fitted["image_shape_"]
    if image_shape_ is not None:
        if (not isinstance(image_shape_, list) or len(image_shape_) != 2
                or not all(_is_int(v, 1) for v in image_shape_)):
            raise ModelFileError(f"{where}: fitted.image_shape_ must be null or [n_rows, n_cols] (positive "
                                 f"ints); got {image_shape_!r}.")
        image_shape_ = tuple(image_shape_)
    n_features = fitted["n_features_in_"]
    if not _is_int(n_features, 1):
        raise ModelFileError(f"{where}: fitted.n_features_in_ must be an int >= 1; got {n_features!r}.")
    if image_shape_ is not None and image_shape_[0] * image_shape_[1] != n_features:
        raise ModelFileError(f"{where}: fitted.image_shape_ {list(image_shape_)} has "
                             f"{image_shape_[0] * image_shape_[1]} cells but fitted.n_features_in_ is "
                             f"{n_features}.")
    if params["image_shape"] is not None and params["image_shape"] != image_shape_:
        raise ModelFileError(f"{where}: params.image_shape {list(params['image_shape'])} differs from "
                             f"fitted.image_shape_ {image_shape_ and list(image_shape_)}.")
    if params["architecture"] == "conv" and image_shape_ is None:
        raise ModelFileError(f"{where}: architecture 'conv' needs fitted.image_shape_ [n_rows, n_cols]; "
                             f"got null.")
    try:
        saved_device = _parse_device(fitted["device_"], where, "fitted.device_")
    except ValueError as err:
        raise ModelFileError(str(err)) from None
    if saved_device == "auto":
        raise ModelFileError(f"{where}: fitted.device_ must be a concrete device ('cpu', 'cuda', "
                             f"'cuda:N'); got 'auto'.")
    history = fitted["history_"]
    if not isinstance(history, dict):
        raise ModelFileError(f"{where}: fitted.history_ must be a JSON object; got {type(history).__name__}.")
    keys(history, _HISTORY_KEYS, "fitted.history_")
    for key, values in history.items():
        if not isinstance(values, list) or not all(
                isinstance(v, Real) and not isinstance(v, bool) for v in values):
            raise ModelFileError(f"{where}: fitted.history_.{key} must be a list of numbers.")
    if len({len(v) for v in history.values()}) > 1:
        raise ModelFileError(f"{where}: the lists of fitted.history_ differ in length: "
                             f"{ {k: len(v) for k, v in history.items()} }.")
    _check_history_finite(history, where)
    beta_per_sample = fitted["beta_per_sample_"]
    if (not isinstance(beta_per_sample, Real) or isinstance(beta_per_sample, bool)
            or not math.isfinite(beta_per_sample) or beta_per_sample < 0):
        raise ModelFileError(f"{where}: fitted.beta_per_sample_ must be a finite number >= 0; got "
                             f"{beta_per_sample!r}.")
    fitted = {"image_shape_": image_shape_, "n_features_in_": int(n_features), "device_": str(saved_device),
              "history_": {k: [float(v) for v in vals] for k, vals in history.items()},
              "beta_per_sample_": float(beta_per_sample)}
    return params, fitted


class VAEPrior(_ClonesRememberFitted, _PicklesNetwork, _DecodesLatents, ClassNamePrefixFeaturesOutMixin,
               TransformerMixin, BaseEstimator):
    """Deep generative prior: a variational autoencoder (Lopez-Alvis et al., 2021).

    Trains an encoder ``q(z | x) = N(mu(x), diag(exp(logvar(x))))`` and a mean
    decoder ``g(z)`` on training models with the loss of the paper's
    reference implementation::

        z    = mu + sqrt(alpha) * sigma * eps,  eps ~ N(0, I)                (1)
        loss = sum_{batch, pixels} (g(z) - x)**2
               + beta * mean_{batch, latent} KL(q(z_j | x) || N(0, 1))        (2)

    optimised with Adam, one step per iteration on a fresh mini-batch. The
    defaults beta = 1000 and batch 100 are the paper's (Sec. 3.1), Adam at
    1e-3 is its training notebook's (the paper names no optimizer); in the
    usual per-sample ELBO convention (reconstruction summed over pixels, KL
    summed over latent dimensions, averaged over the batch) the same loss has
    ``beta_per_sample = beta / (batch_size * n_components)`` (0.5 for the
    defaults), see :attr:`beta_per_sample_`.

    Parameters
    ----------
    n_components : int, default=20
        Latent dimension ``d``.
    image_shape : tuple of int or None, default=None
        ``(n_rows, n_cols)`` of the models, needed when ``fit`` gets flat
        models ``(n_samples, n_cells)`` and ``architecture="conv"``. Inferred
        from 3-D input or from a :class:`~latentinv.datasets.PatchSampler`.
    architecture : {"conv", "mlp"} or callable, default="conv"
        ``"conv"``: the paper's convolutional encoder/decoder (4 strided
        convolutions + 2 fully-connected layers each way, instance
        normalisation, ReLU, sigmoid output), derived for any image size.
        ``"mlp"``: two hidden fully-connected layers each way, for vector
        data (the paper's 2-D "eight" toy). A callable
        ``factory(input_shape, n_components) -> torch.nn.Module`` is called
        with ``image_shape`` (a tuple) when known, else ``n_features`` (an
        int); its module must provide ``encode(x) -> (mu, logvar)`` for
        float32 ``x`` of shape ``(batch, n_features)`` (flat, C order) and
        ``decode(z) -> x_hat`` returning ``batch * n_features`` values
        (no ``forward`` is needed; ``fit`` checks both shapes before
        training, a ValueError naming what differs).
    channels : tuple of int, default=(32, 64, 128, 256)
        Output channels of the four convolutions ("conv" only).
    kernel_sizes : tuple of int, default=(5, 5, 4, 4)
        Kernel sizes of the four convolutions ("conv" only).
    hidden_size : int, default=512
        Width of the fully-connected hidden layer(s).
    output_activation : {"sigmoid", "identity"}, default="sigmoid"
        Output of the "mlp" decoder ("conv" always ends with a sigmoid, so
        its data must lie in [0, 1] whatever this value).
    beta : float, default=1000.0
        Weight of the KL term of eq. (2) (averaged over batch and latent
        dimensions).
    alpha : float, default=1.0
        Variance of the sampling noise ``eps`` (the paper's Eq. 14), which
        eq. (1) scales by ``sqrt(alpha)``: 1 is the usual VAE (the paper's
        value), 0 a deterministic autoencoder.
    batch_size : int, default=100
        Models per Adam step (all samples when ``fit`` gets fewer).
    learning_rate : float, default=1e-3
        Adam step size.
    n_iterations : int, default=1000
        Number of Adam steps. The paper trains 1e5 steps (about 22 h on one
        CPU thread for the reference network at 129 x 65, see
        ``benchmarks/bench_prior.py``); the default is a CPU-friendly
        schedule (about 13 min on one thread) that gives a usable but not
        converged prior: raise it on a GPU.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        Torch device, resolved at ``fit`` ("auto": CUDA when available).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the mini-batch draws and the noise of
        eq. (1) (local generators only; torch's global RNG is untouched).
        The same integer gives identical weights on the CPU with the same number of torch
        threads (``torch.set_num_threads``): another count sums the weight gradients in
        another order, and the weights differ by float32 rounding (3e-8 after 6 steps of a
        small conv VAE, 1 thread against 2). ``RandomState(s)`` trains as ``s`` does, and
        advances at each ``fit`` (a second fit differs); a ``numpy.random.Generator`` is refused.
    verbose : int, default=0
        Progress bar (tqdm) when > 0.
    precision : {"float32", "bfloat16"}, default="float32"
        The training's arithmetic: ``"bfloat16"`` runs the network's forward and backward passes
        under ``torch.autocast`` (the weights, Adam's state and the loss stay float32); it needs
        native bfloat16 (AVX512-BF16 or AMX on a CPU, compute capability 8.0 on a GPU) and is
        refused elsewhere. The fitted network computes in float32 either way. On a 2-core AMD EPYC
        with AVX512-BF16 it trained the reduced network of ``pretrained(image="procedural")``
        1.35x and the reference one (the default prior's) 1.46x faster, with loss curves within
        1.5 % of float32's (``docs/benchmarks/prior_bfloat16_training_cpu.json``).

    cuda_graphs : bool, default=False
        On CUDA, run each training step from a CUDA graph (``latentinv._training_step``): one replay
        per iteration instead of hundreds of kernel launches. The noise of eq. (1) is then drawn
        outside the graph in float32 and Adam keeps its step count on the device, so the network
        differs from an eager training's by rounding (not bit for bit); the same seed still trains
        the same network. Needs CUDA (ValueError otherwise).

    Attributes
    ----------
    module_ : torch.nn.Module
        Trained VAE (``encode``/``decode``), float32, eval mode, on ``device_``, parameters
        frozen (``requires_grad=False``; call ``module_.requires_grad_(True)`` to fine-tune it).
    decoder_ : torch.nn.Module
        Mean decoder ``z (batch, n_components) -> models (batch, n_cells)``,
        float32, flat in C order of ``image_shape_`` (row 0 at the top),
        values in [0, 1] for the built-in image architectures; differentiable.
    device_ : torch.device
        Device of ``module_``.
    image_shape_ : tuple of int or None
        ``(n_rows, n_cols)`` of the models (None for vector data).
    n_features_in_ : int
        Number of cells (``n_rows * n_cols``) or features.
    history_ : dict of list of float
        Per iteration: ``"reconstruction"`` (squared error summed over batch
        and pixels), ``"kl"`` (KL averaged over batch and latent dimensions)
        and ``"loss"`` (eq. (2)).
    beta_per_sample_ : float
        ``beta / (batch * n_components)``, the equivalent per-sample weight.
    latent_distribution : str
        ``"normal"``: the prior on latents is N(0, I) (class attribute).

    References
    ----------
    Lopez-Alvis, J., Laloy, E., Nguyen, F., & Hermans, T. (2021). Deep
    generative models in inversion: the impact of the generator's
    nonlinearity and development of a new approach based on a variational
    autoencoder. Computers & Geosciences, 152, 104762.

    Examples
    --------
    >>> from latentinv.datasets import make_straight_channels
    >>> from latentinv.prior import VAEPrior
    >>> X = make_straight_channels(50, shape=(16, 16), random_state=0)
    >>> prior = VAEPrior(n_components=2, channels=(4, 8, 8, 8), hidden_size=16,
    ...                  n_iterations=2, random_state=0, device="cpu").fit(X)
    >>> prior.transform(X).shape
    (50, 2)
    """

    latent_distribution = "normal"

    def __init__(self, n_components=20, image_shape=None, architecture="conv",
                 channels=REFERENCE_CHANNELS, kernel_sizes=REFERENCE_KERNEL_SIZES,
                 hidden_size=REFERENCE_HIDDEN_SIZE, output_activation="sigmoid", beta=1000.0,
                 alpha=1.0, batch_size=100, learning_rate=1e-3, n_iterations=1000, device="auto",
                 random_state=None, verbose=0, precision="float32", cuda_graphs=False):
        self.n_components = n_components
        self.image_shape = image_shape
        self.architecture = architecture
        self.channels = channels
        self.kernel_sizes = kernel_sizes
        self.hidden_size = hidden_size
        self.output_activation = output_activation
        self.beta = beta
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.n_iterations = n_iterations
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.precision = precision
        self.cuda_graphs = cuda_graphs

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        """Check the parameters (as ``fit`` needs them) and return the resolved device."""
        self._check_hyperparams()
        device = _resolve_device(self.device, type(self).__name__)
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"{type(self).__name__}: cuda_graphs=True needs CUDA (device='cuda', or 'auto' "
                             f"on a machine with a GPU); got device {self.device!r}, resolved to {device}.")
        return device

    def _check_hyperparams(self, name=None):
        """Types and ranges of every parameter but the device's availability (shared by fit and load)."""
        name = type(self).__name__ if name is None else name

        def positive_int(value, pname, minimum=1):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name}: {pname} must be an int >= {minimum}; got {value!r}.")

        def nonneg_real(value, pname, strict=False):
            ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (strict and value == 0):
                bound = "> 0" if strict else ">= 0"
                raise ValueError(f"{name}: {pname} must be a finite float {bound}; got {value!r}.")

        positive_int(self.n_components, "n_components")
        if not isinstance(self.verbose, bool):        # True/False or an int >= 0, as load accepts
            positive_int(self.verbose, "verbose", minimum=0)
        positive_int(self.batch_size, "batch_size")
        positive_int(self.n_iterations, "n_iterations", minimum=0)
        positive_int(self.hidden_size, "hidden_size")
        nonneg_real(self.beta, "beta")
        nonneg_real(self.alpha, "alpha")
        nonneg_real(self.learning_rate, "learning_rate")
        if not (callable(self.architecture) or self.architecture in ("conv", "mlp")):
            raise ValueError(f"{name}: architecture must be 'conv', 'mlp' or a callable factory; "
                             f"got {self.architecture!r}.")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"{name}: precision must be 'float32' or 'bfloat16'; got {self.precision!r}.")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"{name}: cuda_graphs must be True or False; got {self.cuda_graphs!r}.")
        if self.output_activation not in ("sigmoid", "identity"):
            raise ValueError(f"{name}: output_activation must be 'sigmoid' or 'identity'; "
                             f"got {self.output_activation!r}.")
        if self.architecture == "conv":
            iterable = all(isinstance(v, Iterable) for v in (self.channels, self.kernel_sizes))
            ch, ks = (tuple(self.channels), tuple(self.kernel_sizes)) if iterable else ((), ())   # () is refused
            if len(ch) != len(ks) or len(ch) == 0 or any(not isinstance(v, Integral) or v < 1 for v in ch + ks):
                raise ValueError(f"{name}: channels and kernel_sizes must be equally long tuples of "
                                 f"positive ints; got channels={self.channels!r}, "
                                 f"kernel_sizes={self.kernel_sizes!r}.")
        if self.image_shape is not None:
            shape = self.image_shape
            if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                    or any(not isinstance(s, Integral) or s < 1 for s in shape)):
                raise ValueError(f"{name}: image_shape must be None or a pair of positive ints "
                                 f"(n_rows, n_cols); got {shape!r}.")

    def _validate_X(self, X, reset):
        """Return float32 flat array (n_samples, n_features); sets/checks image shape."""
        name = type(self).__name__
        X = _numeric_input(X, "X", name)
        _reject_1d(X, "X", "model", "n_cells" if reset else self.n_features_in_, name)
        if _ndim(X) == 3:
            X3 = check_array(X, allow_nd=True, dtype=[np.float64, np.float32], ensure_min_features=1,
                             ensure_all_finite=False)
            shape3 = tuple(int(s) for s in X3.shape[1:])
            expected = self.image_shape if reset else self.image_shape_
            if expected is not None and tuple(expected) != shape3:
                raise ValueError(f"{name}: models of shape {shape3} do not match "
                                 f"image_shape={tuple(expected)}.")
            X = X3.reshape(X3.shape[0], -1)
            image_shape = shape3
        else:
            image_shape = None
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite=False)
        finite = np.isfinite(X)
        if not finite.all():        # scikit-learn's message would advise HistGradientBoosting models
            i, j = np.argwhere(~finite)[0]
            raise ValueError(f"{name}: X (models) must be finite, got {int(np.isnan(X).sum())} "
                             f"NaN and {int(np.isinf(X).sum())} inf values (the first at model {i}, cell {j}: "
                             f"{float(X[i, j])!r})")
        if reset:
            if image_shape is None and self.image_shape is not None:
                image_shape = tuple(int(s) for s in self.image_shape)
                if image_shape[0] * image_shape[1] != X.shape[1]:
                    raise ValueError(f"{name}: image_shape={image_shape} has "
                                     f"{image_shape[0] * image_shape[1]} cells but X has "
                                     f"{X.shape[1]} features.")
            self.image_shape_ = image_shape
        _check_float32_range(X, "X", name)
        self._check_unit_range(X, "X")
        return np.ascontiguousarray(X)     # torch takes no negative strides (e.g. X[::-1])

    def _check_unit_range(self, X, what):
        """A sigmoid decoder outputs (0, 1): :func:`_check_unit_interval` of the training data. "conv"
        always ends with one (``output_activation`` is the "mlp" decoder's)."""
        if self.architecture == "conv":
            _check_unit_interval(X, what, type(self).__name__,
                                 "architecture='conv' ends with a sigmoid (output_activation applies to 'mlp' "
                                 "only) and outputs [0, 1]: scale 8-bit images by 1/255.")
        elif self.output_activation == "sigmoid":
            _check_unit_interval(X, what, type(self).__name__,
                                 "output_activation='sigmoid' outputs [0, 1]: scale 8-bit images by 1/255, "
                                 "or pass output_activation='identity'.")

    # ------------------------------------------------------------------ fit
    @_unchanged_on_failure
    def fit(self, X, y=None, *, checkpoint=None, checkpoint_every=1000):
        """Train the VAE.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_rows, n_cols) or (n_samples, n_cells), \
or PatchSampler
            Training models (values in [0, 1] for the sigmoid decoders: other
            values, e.g. 8-bit images, are refused), or a
            :class:`~latentinv.datasets.PatchSampler` drawing fresh crops at
            every iteration (as the paper).
        y : None
            Ignored.
        checkpoint : str or path-like, default=None
            A directory for a resumable training: every ``checkpoint_every`` iterations and at the
            end, the whole state of the loop (network, Adam's moments, every random generator, the
            place in the data, the history) is written there; a ``fit`` with the same settings and
            data that finds a checkpoint there carries on from it, and ends with the same network,
            to the bit, as one uninterrupted run on the same device with the same torch thread
            count (see ``random_state``). A larger ``n_iterations``
            continues a finished training. The files load without executing code and are verified
            by SHA-256 (``latentinv._checkpoint``); a checkpoint of another training (other
            settings, data or device type) is an error that says what differs.
        checkpoint_every : int, default=1000
            Iterations between checkpoints.

        Returns
        -------
        self : VAEPrior

        Raises
        ------
        ValueError
            On invalid parameters, NaN/inf or strings in ``X``, values beyond the float32 range
            (the network computes in float32), or a training that diverged (non-finite loss or
            weights, e.g. data far outside [0, 1] or a too large ``learning_rate``), as
            scikit-learn's MLP does. Torch tensors are accepted as array-likes. A ModelFileError (a
            ValueError) for a damaged checkpoint or one of another training.
        """
        name = type(self).__name__
        device = self._check_params()
        bfloat16 = self.precision == "bfloat16"
        if bfloat16 and not native_bfloat16(device):
            raise ValueError(f"{name}: precision='bfloat16' needs native bfloat16 arithmetic on {device} "
                             "(AVX512-BF16 or AMX on a CPU, compute capability 8.0 on a GPU), which this "
                             "machine lacks: emulated bfloat16 is slower than float32; use 'float32'.")
        _checkpoint.check_arguments(checkpoint, checkpoint_every, f"{name}.fit")
        if device.type == "cpu":
            tune_malloc_for_tensors()     # see latentinv._allocator
        rng = check_random_state(self.random_state, name)
        init_seed = int(rng.randint(np.iinfo(np.int32).max))
        noise_seed = int(rng.randint(np.iinfo(np.int32).max))

        sampler = None
        if isinstance(X, PatchSampler):
            sampler = X
            warn_unused_sampler_seed(sampler, name)
            shape = tuple(sampler.patch_shape)
            if self.image_shape is not None and tuple(self.image_shape) != shape:
                raise ValueError(f"{name}: PatchSampler patch_shape={shape} does not match "
                                 f"image_shape={tuple(self.image_shape)}.")
            for attr in ("feature_names_in_",):
                if hasattr(self, attr):
                    delattr(self, attr)
            self.image_shape_ = shape
            self.n_features_in_ = shape[0] * shape[1]
            for i, image in enumerate(sampler.images):
                self._check_unit_range(np.asarray(image), f"the PatchSampler's image {i}")
            X_train = None
        else:
            X_train = self._validate_X(X, reset=True)
            if not np.isfinite(X_train).all():  # pragma: no cover - validate_data checks
                raise ValueError(f"{name}: X contains NaN or infinity.")

        if self.architecture == "conv" and self.image_shape_ is None:
            raise ValueError(
                f"{name}: architecture='conv' needs images: pass X of shape "
                f"(n_samples, n_rows, n_cols), a PatchSampler, or image_shape=(n_rows, n_cols) "
                f"with X of shape (n_samples, n_cells); got X of shape "
                f"(n_samples, {self.n_features_in_}) and image_shape=None. Use "
                f"architecture='mlp' for vector data."
            )
        input_shape = self.image_shape_ if self.image_shape_ is not None else self.n_features_in_
        module = build_vae(self.architecture, input_shape, int(self.n_components),
                           channels=tuple(self.channels), kernel_sizes=tuple(self.kernel_sizes),
                           hidden_size=int(self.hidden_size),
                           output_activation=self.output_activation, seed=init_seed)
        module = module.to(device)
        module.train()
        if callable(self.architecture):
            _check_factory_module(module, int(self.n_features_in_), int(self.n_components), device, name,
                                  self.architecture)
        optimizer = torch.optim.Adam(module.parameters(), lr=float(self.learning_rate), capturable=self.cuda_graphs)
        generator = torch.Generator(device=device)
        generator.manual_seed(noise_seed)
        step_kw = dict(alpha=self.alpha, beta=self.beta, bfloat16=bfloat16)
        step = (GraphedTrainingStep(module, optimizer, generator, n_components=self.n_components, **step_kw)
                if self.cuda_graphs else TrainingStep(module, optimizer, generator, **step_kw))

        if X_train is not None:
            X_tensor = torch.tensor(X_train, dtype=torch.float32, device=device)
            n_samples = X_tensor.shape[0]
            batch = min(int(self.batch_size), n_samples)
        else:
            batch = int(self.batch_size)
            sampler_rng = np.random.default_rng(rng.randint(np.iinfo(np.int32).max))

        # checks before any state moves, on batches of their own (the training's draws stay where they are)
        def probe(n):
            if X_train is not None:
                return X_tensor[:n]
            corners = sampler.sample_corners(n, np.random.default_rng(0))
            return sampler.cut_tensor(*corners, device=device).reshape(n, -1)
        step.check_batch_fits(probe(1), batch, name, input_held=X_train is not None and batch == n_samples)
        if bfloat16 and device.type == "cpu":
            step.check_bfloat16_gradients(probe(batch), name)
        state = _checkpoint.TrainingState(module, optimizer, rng, None if X_train is not None else sampler_rng,
                                          generator)
        fingerprint = None
        if checkpoint is not None:
            fingerprint = _checkpoint.training_fingerprint(self, device, X_train, sampler)
            if _checkpoint.read(checkpoint, state, fingerprint, f"{name}.fit") and \
                    state.iteration > int(self.n_iterations):
                raise ValueError(f"{name}.fit: the checkpoint in {os.fspath(checkpoint)!r} is at iteration "
                                 f"{state.iteration}, beyond n_iterations={self.n_iterations}; raise "
                                 f"n_iterations or use another checkpoint directory.")
        history = state.history
        iterations = range(state.iteration, int(self.n_iterations))
        if self.verbose:
            from tqdm.auto import tqdm

            iterations = tqdm(iterations, desc=f"{name} fit", unit="it", initial=state.iteration,
                              total=int(self.n_iterations))
        # The host reads the device once per block of iterations (the losses, and the next block's
        # crops cut at once): on a GPU a read per iteration would wait for each step to finish. A
        # block ends at every checkpoint, so that the random generators saved there are where an
        # uninterrupted run would have them.
        n_total = int(self.n_iterations)

        def block_end(k):
            end = min(k + TRAINING_BLOCK, n_total)
            if checkpoint is not None:
                end = min(end, (k // checkpoint_every + 1) * checkpoint_every)
            return end

        losses, crops, end = [], None, state.iteration
        # on CUDA, deterministic cuDNN kernels: the same seed trains the same network on one GPU
        with _deterministic_kernels(device):
            for k in iterations:
                if k == end:
                    end = block_end(k)
                    if X_train is None:    # the block's crops, drawn iteration by iteration, cut at once
                        corners = [sampler.sample_corners(batch, sampler_rng) for _ in range(end - k)]
                        crops = sampler.cut_tensor(*map(np.concatenate, zip(*corners)), device=device)
                        crops = crops.reshape(end - k, batch, -1)
                        block_start = k
                if X_train is None:
                    xb = crops[k - block_start]
                elif batch == n_samples:
                    xb = X_tensor
                else:  # epochs of shuffled mini-batches
                    if state.order is None or state.position + batch > n_samples:
                        state.order = torch.tensor(rng.permutation(n_samples), device=device)
                        state.position = 0
                    xb = X_tensor[state.order[state.position:state.position + batch]]
                    state.position += batch
                losses.append(step(xb))
                state.iteration = k + 1
                if state.iteration == end:       # the block's losses, in one read
                    for r, l_kl, l in torch.stack(losses).tolist():
                        history["reconstruction"].append(r)
                        history["kl"].append(l_kl)
                        history["loss"].append(l)
                    losses = []
                    if self.verbose and hasattr(iterations, "set_postfix"):
                        iterations.set_postfix(loss=history["loss"][-1], refresh=False)
                    if checkpoint is not None and (state.iteration % checkpoint_every == 0
                                                   or state.iteration == n_total):
                        _checkpoint.write(checkpoint, state, fingerprint)
        step.release()
        bad = next((k for k, v in enumerate(history["loss"]) if not math.isfinite(v)), None)
        if bad is not None or not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            where = f"at iteration {bad}" if bad is not None else "in the weights"
            span = (f"; X holds values in [{float(X_train.min()):.6g}, {float(X_train.max()):.6g}]"
                    if X_train is not None and X_train.size else "")
            raise ValueError(f"{name}: training diverged: non-finite loss or weights {where}{span}. "
                             f"Expected models with values in [0, 1] (scale the data), or lower "
                             f"learning_rate (got {self.learning_rate!r}).")

        module.eval().requires_grad_(False)     # fitted: a constant (inversions differentiate in z only)
        self.module_ = module
        self.decoder_ = LatentDecoder(module).eval()
        self.device_ = device
        self.history_ = history
        self.beta_per_sample_ = float(self.beta) / (batch * int(self.n_components))
        self._n_features_out = int(self.n_components)
        return self

    # ------------------------------------------------------------------ inference
    def encode(self, X):
        """Latent means ``mu(x)`` of models ``X``.

        No noise: the same ``X`` gives the same latents at every call, and the sampling noise of
        eq. (1) is used in :meth:`fit` only. The rows are computed in batches (up to 1024 at a time),
        and a network may round a row differently in a batch of another size: ``encode(X[:5])`` and
        ``encode(X)[:5]`` agree to float32 rounding, not bit for bit (7e-9 for a small conv VAE; the
        same holds for :meth:`decode` and :meth:`score_samples`, 6e-8).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_rows, n_cols) or (n_samples, n_cells)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components), float64
        """
        check_is_fitted(self, "module_")
        X = self._validate_X(X, reset=False)
        outs = self._forward_chunks(X, lambda xb: self.module_.encode(xb)[0].cpu().double())
        if not outs:
            return np.empty((0, self._latent_width()))
        return _check_finite_output(torch.cat(outs), "latents", type(self).__name__, X).numpy()

    def transform(self, X):
        """Latent means of ``X`` (same as :meth:`encode`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_rows, n_cols) or (n_samples, n_cells)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components), float64
        """
        return self.encode(X)

    def decode(self, Z):
        """Mean-decoded models ``g(z)`` (no noise).

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_components)

        Returns
        -------
        X : ndarray of shape (n_samples, n_cells), float64
            Flat in C order of ``image_shape_``; reshape with
            ``X.reshape(-1, *prior.image_shape_)``.

        Raises
        ------
        ValueError
            On a wrong shape, NaN/inf or strings in ``Z``, values beyond the float32 range, or
            latents so large that the network's output is not finite (never a silent NaN);
            :meth:`encode` and :meth:`score_samples` raise the same way for ``X``.
        """
        return self._decode(Z)

    def inverse_transform(self, X):
        """Mean-decoded models of latents ``X`` (same as :meth:`decode`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Latents (scikit-learn's name for :meth:`decode`'s ``Z``).

        Returns
        -------
        X : ndarray of shape (n_samples, n_cells), float64
            Flat in C order of ``image_shape_``.
        """
        return self.decode(X)

    def score_samples(self, X):
        """Per-sample evidence lower bound (ELBO), up to a constant.

        ``ELBO(x) = -sum_pixels (g(mu(x)) - x)**2 - sum_j KL_j(x)``, with the
        reconstruction evaluated at the latent mean (a deterministic,
        single-point estimate of the expected reconstruction term) and the KL
        summed over latent dimensions (eq. (3) of :mod:`latentinv.nn.vae`).
        This is the unit-weight per-sample convention, not the training
        loss of eq. (2).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_rows, n_cols) or (n_samples, n_cells)

        Returns
        -------
        elbo : ndarray of shape (n_samples,), float64
        """
        check_is_fitted(self, "module_")
        X = self._validate_X(X, reset=False)

        def elbo(xb):
            mu, logvar = self.module_.encode(xb)
            x_hat = self.decoder_(mu)
            se = (x_hat.double() - xb.double()).pow(2).sum(dim=1)
            kl = kl_divergence(mu.double(), logvar.double(), reduction="per_sample")
            return (-se - kl).cpu()

        outs = self._forward_chunks(X, elbo)
        return _check_finite_output(torch.cat(outs), "ELBO values", type(self).__name__, X).numpy()

    def score(self, X, y=None):
        """Mean per-sample ELBO of ``X`` (see :meth:`score_samples`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_rows, n_cols) or (n_samples, n_cells)
        y : None
            Ignored (scikit-learn's signature).

        Returns
        -------
        score : float
        """
        return float(np.mean(self.score_samples(X)))

    # ------------------------------------------------------------------ persistence
    def _config(self):
        params = self.get_params(deep=False)
        custom = callable(params["architecture"])
        params["architecture"] = None if custom else params["architecture"]
        params["device"] = str(params["device"])
        params = _plain_params(params, f"{type(self).__name__}.save")     # numpy scalars as numbers, tuples as lists
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "params": params,
            "custom_architecture": custom,
            "fitted": {
                "image_shape_": list(self.image_shape_) if self.image_shape_ is not None else None,
                "n_features_in_": int(self.n_features_in_),
                "device_": str(self.device_),
                "history_": {k: [float(v) for v in vals] for k, vals in self.history_.items()},
                "beta_per_sample_": float(self.beta_per_sample_),
            },
        }

    def save(self, path, weights_dtype="float32", max_bytes=None):
        """Save the fitted prior to the directory ``path``, with checksums.

        Writes ``path/weights.safetensors`` (the state dict of ``module_``, CPU tensors) and
        ``path/config.json`` (parameters, fitted shapes, history). Neither needs code execution to
        load. ``config.json`` records two SHA-256 digests that :meth:`load` verifies:

        * ``weights_sha256``: of the bytes of ``weights.safetensors``;
        * ``config_sha256``: of the canonical JSON of ``config.json`` without ``config_sha256``
          (keys sorted, separators ``","`` and ``":"``, ASCII), so an edit of any field
          (architecture, shapes, ``weights_sha256`` itself) is detected.

        The checksums detect corruption and accidental edits, not deliberate forgery (whoever can
        edit the files can recompute them). Both files are written to temporary names, then
        renamed, the configuration last: a save that fails while writing (a full disk, an interrupt)
        leaves the directory as it was, a prior saved there before included. A prior with a
        callable ``architecture`` is saved too, but :meth:`load` then needs the factory again.

        Parameters
        ----------
        path : str or path-like
            Directory (created if missing).
        weights_dtype : {"float32", "float16", "mixed"}, default="float32"
            How the weights are stored (:meth:`load` upcasts to float32, in which the network
            computes). ``"float16"`` halves the file; it is refused (ValueError) unless the models
            decoded with the rounded weights agree with the float32 ones to 1e-3 on 256 latents of
            the prior (and no weight overflows float16). ``"mixed"`` stores float16 too, but keeps in
            float32 the fewest tensors that the decoded models need to meet that 1e-3 (the most
            sensitive per byte first, often a few small ones) and any tensor that would overflow;
            their names are recorded in ``config.json`` (``float32_tensors``). Either way the guard
            covers the decoded models: :meth:`encode` moves by the encoder's float16 rounding. The
            prior in memory is not changed.
        max_bytes : int or None, default=None
            A budget for the two files together. When they would take more, the encoder's largest
            weight tensors are stored as int8 with one float32 scale per output row (rounding error
            at most half a scale step, 1/254 of the row's largest magnitude), one at a time until the
            files fit; their names are recorded in ``config.json`` (``int8_tensors``) and
            :meth:`load` restores float32 from them. The decoder is never quantized, so decoded
            models (``decode``, ``sample``, inversions) are those of ``weights_dtype``; :meth:`encode`
            moves by the int8 rounding. ValueError, before anything is written, when the files do not
            fit even with every encoder weight in int8.

        Raises
        ------
        ValueError
            An unknown ``weights_dtype``, a refused float16 rounding, a ``max_bytes`` that cannot be
            met, or parameters changed by ``set_params`` after ``fit`` that no longer describe the
            fitted network (the files could not be loaded back; pickling refuses them too).
        """
        check_is_fitted(self, "module_")
        name = f"{type(self).__name__}.save"
        _storage.check_weights_dtype(weights_dtype, name)
        self._check_params_describe_network(name)
        if max_bytes is not None and not (isinstance(max_bytes, Real) and not isinstance(max_bytes, bool)
                                          and math.isfinite(max_bytes) and max_bytes > 0):
            raise ValueError(f"{name}: max_bytes must be a positive number of bytes or None; got {max_bytes!r}.")
        config = self._config()
        state, entries = _storage.stored_state(self.module_.state_dict(), weights_dtype, self._decoding_error, name)
        config.update(entries)
        if max_bytes is not None:
            state, config = _encoder_int8_to_fit(state, config, max_bytes, name, weights_dtype)
        _write_tensor_files(path, state, config, owner=name)

    def _decoding_error(self):
        """:func:`latentinv._storage.decoding_error` of this prior: its decoder on 256 of its latents."""
        z = torch.randn(256, self._latent_width(), generator=torch.Generator().manual_seed(0)).to(self.device_)
        return _storage.decoding_error(self.module_, lambda module, z: LatentDecoder(module).eval()(z), z)

    @classmethod
    def pretrained(cls, device=None, image="channels_ti"):
        """A prior shipped with the package (no external file, no code execution).

        Their files carry checksums, verified at every load.

        - ``image="channels_ti"`` (the default prior): the paper's reference network (channels (32,
          64, 128, 256), hidden 512, beta 1000, alpha 1) at the paper's schedule, 1e5 Adam steps of
          100 crops of 129 x 65 (trained on an NVIDIA H200 in bfloat16 from CUDA graphs, 276 s, by
          ``scripts/train_default_prior.py``), on the paper's training image
          (:func:`latentinv.datasets.load_channels_ti`) without any crop overlapping the paper's
          truths mc1-mc3 (:func:`latentinv.datasets.load_paper_truth`) or rows 2200-2499
          (:data:`latentinv.datasets.HELD_OUT_WINDOW`); record in ``docs/channels_ti_prior.json``
          (held-out reconstruction RMSE 0.135; the curve in ``docs/channels_ti_prior_training.json``,
          not in the prior: its ``history_`` is empty). Stored in 9.1 MB: the decoder's largest
          fully-connected weight in float16 and its other tensors in float32 (decoded models within
          1e-3 of the trained float32 network's), the encoder in float16 but its largest tensor in
          int8 (``save``'s ``max_bytes``; ``encode`` moved by 0.009 on average on held-out crops).
          Truths it never saw: :func:`latentinv.datasets.load_held_out_crop` (crops of rows
          2200-2499) and mc1-mc3.
        - ``image="procedural"`` (the earlier default): a reduced network (channels (16, 32, 64,
          128), hidden 256) trained on the CPU for 6000 Adam steps of 64 crops on procedural channel
          images; record in ``docs/default_prior.json`` (held-out reconstruction RMSE 0.246). Models
          from the same family of images: ``make_channel_image(**PRETRAINED_IMAGE_SETTINGS, random_state=s)``
          (:mod:`latentinv.datasets`) with a seed other than its training seeds (11-14) and the
          held-out one of its record (99).

        Parameters
        ----------
        device : {None, "cpu", "cuda", "cuda:N", "auto"} or torch.device, default=None
            None: the CPU (where it was saved); "auto": CUDA when available, else the CPU. Asking
            for CUDA on a machine without it raises a ValueError.
        image : {"channels_ti", "procedural"}, default="channels_ti"
            The images the prior was trained on: the paper's training image, or procedural ones.

        Returns
        -------
        prior : VAEPrior
            Fitted, loaded as by :meth:`load` (checksums verified).

        Raises
        ------
        ValueError
            For an unknown ``image`` or ``device``.
        """
        from importlib.resources import files

        folders = {"procedural": "default_prior", "channels_ti": "channels_ti_prior"}
        if image not in folders:
            raise ValueError(f"{cls.__name__}.pretrained: image must be one of {sorted(folders)}, "
                             f"got {image!r}")
        if device is not None:
            device = _resolve_device(device, f"{cls.__name__}.pretrained")
        return cls.load(str(files("latentinv") / "data" / folders[image]), device=device)

    @classmethod
    def load(cls, path, device=None, architecture=None):
        """Load a prior written by :meth:`save` (no code is executed), verifying its checksums.

        Parameters
        ----------
        path : str or path-like
            Directory given to :meth:`save`.
        device : {None, "cpu", "cuda", "cuda:N", "auto"} or torch.device, default=None
            Device of the loaded module. None: the one it was on when saved (fitted attribute
            ``device_`` in ``config.json``) if available here, else the CPU with a warning;
            "auto": CUDA when available, else the CPU. Asking for CUDA on a machine without it
            raises a ValueError.
        architecture : callable or None
            The module factory, required when the prior was trained with a callable
            ``architecture``.

        Returns
        -------
        prior : VAEPrior
            Fitted.

        Raises
        ------
        FileNotFoundError
            ``path`` is not a directory, or ``config.json`` or ``weights.safetensors`` is missing.
        ModelFileError
            (a ValueError) naming the file and what is wrong: invalid JSON (e.g. truncated), a
            missing or unexpected key, a parameter of the wrong type or out of range (the checks of
            ``fit``), fitted attributes inconsistent with each other, a checksum that does not
            match (edited configuration, corrupted or replaced weights), a weights file that is
            not safetensors, tensors whose names, shapes or dtypes differ from the architecture
            that ``config.json`` describes, a ``history_`` holding NaN or infinity, or a network
            that decodes a probe latent to another number of cells than ``n_features_in_`` (a custom
            factory that does not follow ``image_shape_``). An edit of ``image_shape_`` together
            with ``n_features_in_`` that the built-in networks also fit (e.g. 16 x 16 -> 15 x 15)
            cannot be told from a prior trained so: the checksums guard against it.

        Warns
        -----
        UnverifiedModelWarning
            For files written before checksums existed (format version 1 without
            ``weights_sha256``/``config_sha256``): they are loaded after every structural check,
            but an edit of the weights' values or of a field that keeps the tensor shapes (e.g.
            ``image_shape_`` [129, 65] -> [65, 129]) cannot be detected. Re-save such a prior with
            :meth:`save` to add checksums.
        """
        name = f"{cls.__name__}.load"
        target = None if device is None else _resolve_device(device, name)
        (config_path, weights_path), (raw_config, weights) = _read_model_files(path, name, cls.__name__)
        config = _parse_config(raw_config, config_path, name)
        _verify_checksums(config, weights, config_path, weights_path, name)
        params, fitted = _check_config(cls, config, config_path, name, architecture)

        prior = cls(**params)
        try:
            prior._check_hyperparams(name=f"{name}: {config_path}: params")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        prior.image_shape_ = fitted["image_shape_"]
        prior.n_features_in_ = fitted["n_features_in_"]
        prior.history_ = fitted["history_"]
        prior.beta_per_sample_ = fitted["beta_per_sample_"]
        prior._n_features_out = int(prior.n_components)

        state = _load_safetensors(weights, weights_path, name)
        int8 = set(config.get("int8_tensors") or ())
        if config.get("weights_dtype", "float32") != "float32" or int8:
            _storage.check_stored_dtypes(state, config, name, weights_path, config_path, int8, _INT8_SCALE)
            state = _storage.upcast(_from_int8_tensors(state, int8, f"{name}: {weights_path!r}"))
        if target is None:
            target = _saved_device_or_cpu(fitted["device_"], f"{name}: {config_path!r} records that the "
                                          f"network was on {fitted['device_']!r} when saved (device_), but")
        prior._restore_network(state, target, source=f"{name}: {weights_path!r}")
        prior._check_decodes_fitted_shape(f"{name}: {config_path!r}")
        return prior

    def _check_decodes_fitted_shape(self, where):
        """ModelFileError naming ``where`` unless one probe latent decodes to a finite model of
        ``n_features_in_`` cells (``image_shape_``'s): a network built from an edited configuration (or
        a custom factory that ignores its input shape) would decode models of another size."""
        z = torch.randn(1, self._latent_width(), generator=torch.Generator().manual_seed(0)).to(self.device_)
        with torch.no_grad():
            out = self.decoder_(z)
        cells = int(out.numel())
        shape = "" if self.image_shape_ is None else f" (fitted.image_shape_ {list(self.image_shape_)})"
        if cells != int(self.n_features_in_):
            raise ModelFileError(f"{where}: the network decodes models of {cells} cells, but "
                                 f"fitted.n_features_in_ is {self.n_features_in_}{shape}.")
        if not bool(torch.isfinite(out).all()):
            raise ModelFileError(f"{where}: the network decodes a probe latent to NaN or infinite values; "
                                 f"expected a model of {cells} finite cells.")

    @classmethod
    def from_reference_checkpoint(cls, path, device="cpu"):
        """Load the paper's published trained VAE into a fitted prior.

        The file is ``VAE/VAE_inMSEeps100r1e3.pth`` of github.com/jlalvis/VAE_SGD (not shipped
        with latentinv): a torch state dict of the module of ``VAE/autoencoder_in.py``. It is read
        with ``torch.load(path, map_location="cpu", weights_only=True)`` (no code execution), every
        key and shape is checked against the published layout, and the tensors are renamed for
        the ``"conv"`` architecture with the reference settings, which computes the same network
        (see :mod:`latentinv.nn.reference` for the correspondence).

        The returned prior has the paper's parameters (``n_components`` read from the file, 20 for
        the published one; ``image_shape=(129, 65)``; channels (32, 64, 128, 256); kernels
        (5, 5, 4, 4); hidden 512; beta 1000; alpha 1; batch 100; Adam 1e-3; 1e5 iterations), an
        empty ``history_`` (the training curve is not in the file), and saves and loads through
        :meth:`save`/:meth:`load` like any other.

        Parameters
        ----------
        path : str or path-like
            The ``.pth`` file.
        device : {"cpu", "cuda", "cuda:N", "auto"} or torch.device, default="cpu"
            Device of the loaded network ("auto": CUDA when available).

        Returns
        -------
        prior : VAEPrior
            Fitted.

        Raises
        ------
        FileNotFoundError
            ``path`` is not a file.
        ModelFileError
            (a ValueError) naming the file: not a torch file, truncated, not a state dict, missing
            or unexpected keys, wrong shapes, non floating-point or non-finite tensors, or values
            beyond float32's range (they would overflow when cast).
        """
        name = f"{cls.__name__}.from_reference_checkpoint"
        target = _resolve_device(device, name)
        state = _read_reference_state_dict(path, name, "VAE/VAE_inMSEeps100r1e3.pth")
        try:
            converted, n_components = convert_published_state_dict(state, source=f"{name}: {os.fspath(path)!r}")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        batch_size, beta = 100, 1000.0
        prior = cls(n_components=n_components, image_shape=PUBLISHED_IMAGE_SHAPE, architecture="conv",
                    channels=REFERENCE_CHANNELS, kernel_sizes=REFERENCE_KERNEL_SIZES,
                    hidden_size=REFERENCE_HIDDEN_SIZE, output_activation="sigmoid", beta=beta,
                    alpha=1.0, batch_size=batch_size, learning_rate=1e-3, n_iterations=100_000,
                    device=str(device) if isinstance(device, torch.device) else device)
        prior.image_shape_ = tuple(PUBLISHED_IMAGE_SHAPE)
        prior.n_features_in_ = PUBLISHED_IMAGE_SHAPE[0] * PUBLISHED_IMAGE_SHAPE[1]
        prior.history_ = {"reconstruction": [], "kl": [], "loss": []}
        prior.beta_per_sample_ = beta / (batch_size * n_components)
        prior._n_features_out = int(n_components)
        prior._restore_network(converted, target, source=f"{name}: {os.fspath(path)!r}")
        return prior

    def _new_network(self):
        """The module that the parameters and the fitted input shape describe."""
        input_shape = self.image_shape_ if self.image_shape_ is not None else self.n_features_in_
        return build_vae(self.architecture, input_shape, int(self.n_components),
                         channels=tuple(self.channels), kernel_sizes=tuple(self.kernel_sizes),
                         hidden_size=int(self.hidden_size), output_activation=self.output_activation, seed=0)

    def _latent_width(self):
        return int(self._n_features_out)      # fitted; n_components may have been set since

    def _described(self):
        return (f"architecture={self.architecture!r}, n_components={self.n_components}, "
                f"image_shape_={self.image_shape_}, n_features_in_={self.n_features_in_}, "
                f"channels={tuple(self.channels)}, kernel_sizes={tuple(self.kernel_sizes)}, "
                f"hidden_size={self.hidden_size}")

    def _restore_network(self, state, device, source="state"):
        """Build the module that the parameters describe, check ``state`` against it, load it."""
        module = self._new_network()
        _check_state_against(module, state, source, self._described())
        module.load_state_dict(state)
        module = module.to(device).eval().requires_grad_(False)
        self.module_ = module
        self.decoder_ = LatentDecoder(module).eval()
        self.device_ = device

    def to(self, device):
        """Move the fitted network to ``device`` (e.g. train on a GPU, then serve on the CPU).

        Only the fitted state moves (``module_``, ``device_``); the ``device`` parameter, which a
        refit uses, is left as it is.

        Parameters
        ----------
        device : {"cpu", "cuda", "cuda:N", "auto"} or torch.device

        Returns
        -------
        self : VAEPrior
        """
        check_is_fitted(self, "module_")
        dev = _resolve_device(device, f"{type(self).__name__}.to")
        self.module_ = self.module_.to(dev).eval()
        self.decoder_ = LatentDecoder(self.module_).eval()
        self.device_ = dev
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags
