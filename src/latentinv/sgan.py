"""Spatial GAN prior as a scikit-learn estimator (the comparison generator of Lopez-Alvis et al., 2021).

:class:`SGANPrior` trains the spatial generative adversarial network of Laloy et al. (2018, Water
Resources Research; the PyTorch version of Laloy et al., 2019, Computers & Geosciences) on crops of
a training image and exposes its generator through the generator protocol of
:class:`~latentinv.inversion.LatentInverter` (``decoder_``, ``n_components``,
``latent_distribution = "uniform"``, ``image_shape_``), so that the paper's SGAN cases (SAnnn, SSbnd
of Table 1) run through the same inverter, with stochastic clipping of the latents.

The torch modules, the loss and the published parameter layout are in :mod:`latentinv.nn.sgan`,
whose docstring says which published numbers are followed where the papers and codes differ
(PyTorch generator of ``SGAN/generator.py`` with its two dilated layers; discriminator kernel 5;
batch 32 of 353 x 353 crops; Adam 5e-4, beta1 0.5, weight decay 1e-7). Model files
(:meth:`SGANPrior.save`/:meth:`SGANPrior.load`) are a safetensors file and a JSON file verified by
SHA-256 checksums, in the format of :class:`~latentinv.prior.VAEPrior`;
:meth:`SGANPrior.from_reference_checkpoint` reads the published trained generator.
"""

from __future__ import annotations

import math
import os
from numbers import Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _checkpoint, _storage
from ._allocator import tune_malloc_for_tensors
from ._checks import check_random_state
from ._checks import is_int as _is_int
from ._common import (
    ModelFileError,
    _ClonesRememberFitted,
    _DecodesLatents,
    _PicklesNetwork,
    _read_reference_state_dict,
    _check_saved_random_state,
    _plain_params,
    _unchanged_on_failure,
    _write_tensor_files,
    _check_finite_output,
    _check_float32_range,
    _check_history_finite,
    _check_state_against,
    _check_unit_interval,
    _deterministic_kernels,
    _load_safetensors,
    _ndim,
    _numeric_input,
    _parse_config,
    _parse_device,
    _read_model_files,
    _resolve_device,
    _saved_device_or_cpu,
    _verify_checksums,
)
from .datasets import PatchSampler, warn_unused_sampler_seed
from .nn.sgan import (
    PUBLISHED_DILATIONS,
    PUBLISHED_KERNEL_SIZE,
    PUBLISHED_LATENT_SHAPE,
    PUBLISHED_N_FILTERS,
    PUBLISHED_N_LAYERS,
    PatchDiscriminator,
    SGANDecoder,
    SpatialGenerator,
    adversarial_losses,
    convert_published_generator_state_dict,
    init_weights,
    latent_grid_size,
    output_size,
)
from .nn.vae import forked_global_rng

__all__ = ["SGANPrior"]

_FORMAT = "latentinv.SGANPrior"
_VERSION = 1          # checksums from the start
_CONFIG_KEYS = ("format", "version", "params", "fitted", "weights_sha256", "config_sha256")
_FITTED_KEYS = ("image_shape_", "latent_shape_", "training_shape_", "n_features_in_", "device_", "history_")
_HISTORY_KEYS = ("discriminator", "generator", "real_score", "fake_score")
#: Number of iterations of the published training: 37 epochs (netG_epoch_36.pth) of train2d.py's
#: default 50 iterations.
PUBLISHED_N_ITERATIONS = 37 * 50


def _check_latent_cells(latent_shape, n_layers, n_dilated, what, owner):
    """Instance normalisation follows every stride-2 layer but the last and every dilated layer but the
    last, and needs more than one cell: a 1 x 1 latent keeps 1 x 1 maps through every layer."""
    if (n_layers >= 2 or n_dilated >= 2) and int(latent_shape[0]) * int(latent_shape[1]) < 2:
        raise ValueError(
            f"{owner}: {what} must have at least 2 latent cells, e.g. (1, 2) or (2, 1), for this generator "
            f"(n_layers={n_layers}, {n_dilated} dilated layers): its instance normalisation needs "
            f"feature maps of more than one cell, and a 1 x 1 latent gives 1 x 1 maps; got "
            f"{tuple(latent_shape)!r}.")


def _fitted_shape_problems(image_shape, training_latent_shape, n_layers, image_shape_, training_shape_,
                           n_features_in_):
    """How the fitted shapes differ from those ``fit`` makes with these parameters (a list of sentences
    naming the keys of ``config.json``): ``training_shape_`` is the output of ``training_latent_shape``'s
    grid, or without one the samples' shape, of ``n_features_in_`` cells; without ``image_shape`` the
    models have the samples' shape too. (``n_features_in_`` counts a training sample's cells: with an
    ``image_shape`` or training crops it is not tied to the models' or the crops' shape.)"""
    cells = lambda shape: int(shape[0]) * int(shape[1])
    problems = []
    if training_latent_shape is not None:
        crops = [output_size(n, n_layers) for n in training_latent_shape]
        if list(training_shape_) != crops:
            problems.append(f"fitted.training_shape_ {list(training_shape_)} is not the output of "
                            f"params.training_latent_shape {list(training_latent_shape)} with n_layers={n_layers} "
                            f"({crops}).")
    elif cells(training_shape_) != n_features_in_:
        problems.append(f"fitted.training_shape_ {list(training_shape_)} has {cells(training_shape_)} cells but "
                        f"fitted.n_features_in_ is {n_features_in_} (with params.training_latent_shape null "
                        f"the training crops are the samples).")
    if image_shape is None:
        if cells(image_shape_) != n_features_in_:
            problems.append(f"fitted.image_shape_ {list(image_shape_)} has {cells(image_shape_)} cells but "
                            f"fitted.n_features_in_ is {n_features_in_} (with params.image_shape null the "
                            f"models have the training samples' shape).")
        elif training_latent_shape is None and list(image_shape_) != list(training_shape_):
            problems.append(f"fitted.image_shape_ {list(image_shape_)} differs from fitted.training_shape_ "
                            f"{list(training_shape_)} (with params.image_shape and "
                            f"params.training_latent_shape null both are the training samples' shape).")
    return problems


#: what to do with training data outside [0, 1] (a warning, not an error: scikit-learn's estimator checks
#: feed real data of any range, and the generator has no other output range to offer for them)
_UNIT_REMEDY = ("The generator's models are (tanh + 1) / 2, in [0, 1], and cannot reproduce them: scale 8-bit "
                "images by 1/255.")


class SGANPrior(_ClonesRememberFitted, _PicklesNetwork, _DecodesLatents, BaseEstimator):
    """Deep generative prior: a spatial GAN (Laloy et al., 2018, 2019), as compared in Lopez-Alvis et al. (2021).

    A fully convolutional generator ``G`` maps a latent array ``z`` of shape
    ``(latent_channels, n_x, n_y)``, uniform in [-1, 1], to an image whose size grows with the
    latent grid, ``(n - 1) * 2**n_layers + 1`` cells per axis (5 x 3 -> 129 x 65 for the paper's
    models, 12 x 12 -> 353 x 353 for the training crops). A patch discriminator ``D`` scores every
    patch of a crop as real or generated. Training alternates one Adam step of ``D`` on
    ``BCE(D(x), 1) + BCE(D(G(z)), 0)`` and one of ``G`` on ``BCE(D(G(z)), 1)`` (the standard GAN
    loss), each iteration on a fresh batch of crops ``x`` (mapped from [0, 1] to [-1, 1] by
    ``2 x - 1``) and fresh latents ``z``, whose ``G(z)`` both steps use. Models are ``(G(z) + 1) / 2``, in [0, 1].

    The defaults are the published network and training (see :mod:`latentinv.nn.sgan`): 64 base
    filters, five stride-2 layers of kernel 5, dilated layers 3 and 5, discriminator kernel 5,
    batch 32 crops of 353 x 353, Adam 5e-4 with beta1 0.5, weight decay 1e-7.

    Parameters
    ----------
    image_shape : tuple of int or None, default=None
        ``(n_rows, n_cols)`` of the models that :meth:`decode` and :meth:`sample` return (the
        inversion grid). None: the shape of the training data (a PatchSampler's ``patch_shape``,
        the samples of 3-D ``X``, or one row of ``n_features`` cells for flat ``X``). The latent
        grid is the smallest whose output covers it (5 x 3 for 129 x 65); a larger output is
        cropped to its top-left ``image_shape`` window.
    latent_channels : int, default=1
        Channels of the latent array (``nz`` of the published code): ``n_components =
        latent_channels * n_x * n_y``.
    n_filters : int, default=64
        Base width ``f`` of both networks (generator 8f, 4f, 2f, f; discriminator f, 2f, 4f, 8f
        for five layers).
    n_layers : int, default=5
        Stride-2 layers of the generator and of the discriminator.
    kernel_size : int, default=5
        Odd kernel size of the generator's layers.
    dilations : tuple of int, default=(3, 5)
        Dilations of the generator's stride-1 layers after the upsampling (``()``: none).
    discriminator_kernel_size : int, default=5
        Odd kernel size of the discriminator's layers.
    training_latent_shape : tuple of int or None, default=(12, 12)
        Latent grid ``(n_x, n_y)`` during training; the crops are its output size (353 x 353 for
        12 x 12 and five layers), drawn at random from the training images (avoiding a
        PatchSampler's exclusion windows). None: train on the training samples as given (whole
        samples of ``X``, or crops of the PatchSampler's ``patch_shape``).
    batch_size : int, default=32
        Crops (and latent arrays) per iteration.
    learning_rate : float, default=5e-4
        Adam step size of both networks.
    beta1 : float, default=0.5
        Adam's first-moment decay.
    weight_decay : float, default=1e-7
        Adam's L2 weight decay (``l2_fac`` of the published code).
    n_iterations : int, default=1850
        Iterations (one step of ``D`` and one of ``G`` each); 1850 is the published training
        (37 epochs of 50 iterations, ``netG_epoch_36.pth``).
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        Torch device, resolved at ``fit`` ("auto": CUDA when available).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the crops and the latents of training (local generators only;
        torch's global RNG is untouched). The same integer gives identical weights on the CPU
        with the same number of torch threads (``torch.set_num_threads``): another count sums the
        weight gradients in another order (4e-9 after 3 iterations of a tiny SGAN, 1 thread
        against 2). ``RandomState(s)`` trains as ``s`` does, and advances at each ``fit``; a
        ``numpy.random.Generator`` is refused.
    verbose : int, default=0
        Progress bar (tqdm) when > 0.

    Attributes
    ----------
    generator_ : latentinv.nn.sgan.SpatialGenerator
        Trained generator, float32, eval mode, parameters frozen, on ``device_``. Any latent grid
        works: ``generator_(z)`` for ``z`` of shape ``(batch, latent_channels, n_x, n_y)``.
    decoder_ : torch.nn.Module
        Flat latents ``(batch, n_components)`` (C order of ``latent_shape_``) -> flat models
        ``(batch, n_cells)`` in [0, 1] (C order of ``image_shape_``, row 0 at the top);
        differentiable.
    latent_shape_ : tuple of int
        ``(latent_channels, n_x, n_y)`` of the latents of :meth:`decode` ((1, 5, 3) for 129 x 65).
    image_shape_ : tuple of int
        ``(n_rows, n_cols)`` of the decoded models.
    training_shape_ : tuple of int
        ``(n_rows, n_cols)`` of the training crops.
    n_features_in_ : int
        Cells of a training sample (``n_rows * n_cols`` of ``X``'s samples or of the
        PatchSampler's crops).
    device_ : torch.device
    history_ : dict of list of float
        Per iteration: ``"discriminator"`` and ``"generator"`` losses, ``"real_score"`` and
        ``"fake_score"`` (mean ``sigmoid(D)`` on real and generated crops).
    n_components : int
        ``latent_channels * n_x * n_y`` (15 for the paper's models); fitted.
    latent_distribution : str
        ``"uniform"``: the prior on latents is U(-1, 1) (class attribute).

    Notes
    -----
    Only the generator is kept after ``fit`` (and saved): a training is resumed from a checkpoint
    directory (``fit(X, checkpoint=path)``), not from a saved prior. Training data with values
    outside [0, 1] draw a UserWarning: the generator's models lie in [0, 1] and cannot reproduce them.

    References
    ----------
    Laloy, E., Hérault, R., Jacques, D., & Linde, N. (2018). Training-image based geostatistical
    inversion using a spatial generative adversarial neural network. Water Resources Research, 54.

    Laloy, E., Linde, N., Ruffino, C., Hérault, R., Gasso, G., & Jacques, D. (2019). Gradient-based
    deterministic inversion of geophysical data with generative adversarial networks: is it
    feasible? Computers & Geosciences, 133.

    Lopez-Alvis, J., Laloy, E., Nguyen, F., & Hermans, T. (2021). Deep generative models in
    inversion. Computers & Geosciences, 152, 104762.

    Examples
    --------
    >>> from latentinv.datasets import make_straight_channels
    >>> from latentinv.sgan import SGANPrior
    >>> X = make_straight_channels(20, shape=(17, 9), random_state=0)
    >>> prior = SGANPrior(n_filters=4, n_layers=3, dilations=(), training_latent_shape=None,
    ...                   batch_size=8, n_iterations=2, random_state=0, device="cpu").fit(X)
    >>> prior.latent_shape_, prior.n_components
    ((1, 3, 2), 6)
    >>> prior.sample(4, random_state=0).shape
    (4, 153)
    """

    latent_distribution = "uniform"
    _chunk = 256      # latents per forward pass in decode

    # pickling (latentinv._common._PicklesNetwork): the generator travels as torch-saved tensors
    _network_attr = "generator_"
    _pickled_key = "_generator_state"

    def __init__(self, image_shape=None, latent_channels=1, n_filters=PUBLISHED_N_FILTERS,
                 n_layers=PUBLISHED_N_LAYERS, kernel_size=PUBLISHED_KERNEL_SIZE,
                 dilations=PUBLISHED_DILATIONS, discriminator_kernel_size=PUBLISHED_KERNEL_SIZE,
                 training_latent_shape=(12, 12), batch_size=32, learning_rate=5e-4, beta1=0.5,
                 weight_decay=1e-7, n_iterations=PUBLISHED_N_ITERATIONS, device="auto",
                 random_state=None, verbose=0):
        self.image_shape = image_shape
        self.latent_channels = latent_channels
        self.n_filters = n_filters
        self.n_layers = n_layers
        self.kernel_size = kernel_size
        self.dilations = dilations
        self.discriminator_kernel_size = discriminator_kernel_size
        self.training_latent_shape = training_latent_shape
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.weight_decay = weight_decay
        self.n_iterations = n_iterations
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ protocol
    @property
    def n_components(self):
        """Latent dimension ``latent_channels * n_x * n_y`` of :meth:`decode` (fitted)."""
        shape = self.__dict__.get("latent_shape_")
        if shape is None:
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet: n_components "
                                 f"follows from the models' shape; call 'fit' (or load) first.")
        return int(np.prod(shape))

    # ------------------------------------------------------------------ checks
    def _check_hyperparams(self, name=None):
        """Types and ranges of every parameter but the device's availability (fit and load)."""
        name = type(self).__name__ if name is None else name

        def integer(value, pname, minimum=1):
            if not _is_int(value, minimum):
                raise ValueError(f"{name}: {pname} must be an int >= {minimum}; got {value!r}.")

        def real(value, pname, low, high=None, strict=False):
            ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if strict else value >= low) and (high is None or value < high)
            if not ok:
                bound = f"{'>' if strict else '>='} {low}" + ("" if high is None else f" and < {high}")
                raise ValueError(f"{name}: {pname} must be a finite float {bound}; got {value!r}.")

        def pair(value, pname, allow_none):
            if value is None and allow_none:
                return
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(_is_int(v, 1) for v in value)):
                none = "None or " if allow_none else ""
                raise ValueError(f"{name}: {pname} must be {none}a pair of positive ints; got {value!r}.")

        integer(self.latent_channels, "latent_channels")
        integer(self.n_filters, "n_filters")
        integer(self.n_layers, "n_layers")
        integer(self.batch_size, "batch_size")
        integer(self.n_iterations, "n_iterations", minimum=0)
        for pname in ("kernel_size", "discriminator_kernel_size"):
            value = getattr(self, pname)
            if not _is_int(value, 1) or value % 2 != 1:
                raise ValueError(f"{name}: {pname} must be an odd int >= 1 (size-preserving padding); "
                                 f"got {value!r}.")
        if (not isinstance(self.dilations, (tuple, list))
                or not all(_is_int(d, 1) for d in self.dilations)):
            raise ValueError(f"{name}: dilations must be a tuple of positive ints (possibly empty); "
                             f"got {self.dilations!r}.")
        real(self.learning_rate, "learning_rate", 0.0, strict=True)
        real(self.beta1, "beta1", 0.0, 1.0)
        real(self.weight_decay, "weight_decay", 0.0)
        pair(self.image_shape, "image_shape", allow_none=True)
        pair(self.training_latent_shape, "training_latent_shape", allow_none=True)
        if not (_is_int(self.verbose, 0) or isinstance(self.verbose, bool)):
            raise ValueError(f"{name}: verbose must be an int >= 0; got {self.verbose!r}.")

    def _validate_X(self, X):
        """Training samples as float32 images (n_samples, n_rows, n_cols); sets n_features_in_."""
        name = type(self).__name__
        X = _numeric_input(X, "X", name)
        if _ndim(X) not in (-1, 2, 3):
            raise ValueError(f"{name}: X must be images (n_samples, n_rows, n_cols), flat samples "
                             f"(n_samples, n_cells) or a PatchSampler; got an array of shape {np.shape(X)}.")
        if _ndim(X) == 3:
            X3 = check_array(X, allow_nd=True, dtype=[np.float64, np.float32], input_name="X")
            shape = tuple(int(s) for s in X3.shape[1:])
            X = X3.reshape(X3.shape[0], -1)
        else:
            shape = None
        X = validate_data(self, X, reset=True, dtype=[np.float64, np.float32])
        if shape is None:
            shape = (1, X.shape[1])     # flat samples: one row of n_features cells each
            if self.image_shape is not None and self.image_shape[0] * self.image_shape[1] == X.shape[1]:
                shape = tuple(int(v) for v in self.image_shape)
        _check_float32_range(X, "X", name)
        _check_unit_interval(X, "X", name, _UNIT_REMEDY, warn=True)
        return X.reshape(X.shape[0], *shape).astype(np.float32), shape

    # ------------------------------------------------------------------ fit
    def _crop_source(self, X, name):
        """(images, exclusion windows, sample shape) of the training data."""
        if isinstance(X, PatchSampler):
            warn_unused_sampler_seed(X, name)
            for attr in ("feature_names_in_",):
                if hasattr(self, attr):
                    delattr(self, attr)
            shape = tuple(int(v) for v in X.patch_shape)
            self.n_features_in_ = shape[0] * shape[1]
            for i, image in enumerate(X.images):
                _check_unit_interval(np.asarray(image), f"the PatchSampler's image {i}", name, _UNIT_REMEDY,
                                     warn=True)
            return X.images, X.exclude, shape
        images, shape = self._validate_X(X)
        return list(images), None, shape

    @_unchanged_on_failure
    def fit(self, X, y=None, *, checkpoint=None, checkpoint_every=100):
        """Train the SGAN.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_rows, n_cols) or (n_samples, n_cells), or PatchSampler
            Training images (values in [0, 1], 1 = channel). With the default
            ``training_latent_shape`` crops of 353 x 353 are drawn from them (from a
            :class:`~latentinv.datasets.PatchSampler`'s images, avoiding its exclusion windows);
            with ``training_latent_shape=None`` the samples themselves (or the sampler's crops)
            are the training batch. Flat samples are images of one row unless ``image_shape``
            has their number of cells.
        y : None
            Ignored.
        checkpoint : str or path-like, default=None
            A directory for a resumable training: every ``checkpoint_every`` iterations and at the
            end, the whole state of the loop (generator, discriminator, both Adam optimizers'
            moments, the crops' and latents' random generators, the history) is written there; a
            ``fit`` with the same settings and data that finds a checkpoint there carries on from
            it, and ends with the same generator, to the bit, as one uninterrupted run on the same
            device with the same torch thread count (see ``random_state``). A larger ``n_iterations`` continues a finished training (the schedule has no
            decay, so training in parts of any length equals one run). Files as
            :meth:`VAEPrior.fit`'s checkpoints: no code executed to read them, verified by SHA-256;
            a checkpoint of another training is an error that says what differs.
        checkpoint_every : int, default=100
            Iterations between checkpoints (one of the published network's is about 100 MB).

        Returns
        -------
        self : SGANPrior

        Raises
        ------
        ValueError
            On invalid parameters, NaN/inf or strings in ``X``, values beyond the float32 range,
            training crops larger than the training images, or a training that diverged
            (non-finite losses or weights). A ModelFileError (a ValueError) for a damaged
            checkpoint or one of another training.
        """
        name = type(self).__name__
        self._check_hyperparams()
        _checkpoint.check_arguments(checkpoint, checkpoint_every, f"{name}.fit")
        device = _resolve_device(self.device, name)
        if device.type == "cpu":
            tune_malloc_for_tensors()
        rng = check_random_state(self.random_state, name)
        seeds = [int(rng.randint(np.iinfo(np.int32).max)) for _ in range(4)]
        images, exclude, sample_shape = self._crop_source(X, name)

        L = int(self.n_layers)
        image_shape = tuple(int(v) for v in (self.image_shape or sample_shape))
        if self.training_latent_shape is None:
            train_shape = sample_shape
            train_latent = tuple(latent_grid_size(n, L) for n in train_shape)
        else:
            train_latent = tuple(int(v) for v in self.training_latent_shape)
            train_shape = tuple(output_size(n, L) for n in train_latent)
        n_dilated = len(tuple(self.dilations))
        _check_latent_cells(train_latent, L, n_dilated, "training_latent_shape (or the training crops' "
                            "latent grid)", name)
        _check_latent_cells(tuple(latent_grid_size(n, L) for n in image_shape), L, n_dilated,
                            f"the latent grid of image_shape {image_shape}", name)
        biggest = tuple(max(im.shape[i] for im in images) for i in (0, 1))
        if isinstance(X, PatchSampler) or self.training_latent_shape is not None:
            try:
                sampler = PatchSampler(images, train_shape, exclude=exclude)
            except ValueError as err:
                raise ValueError(
                    f"{name}: training crops of {train_shape} cells (training_latent_shape="
                    f"{self.training_latent_shape}, n_layers={L}) cannot be drawn from the training "
                    f"images (largest {biggest}): {err} Use a smaller training_latent_shape, or "
                    f"None to train on the samples as given.") from None
            stack = None
        else:
            sampler = None
            stack = torch.tensor(np.stack(images), dtype=torch.float32, device=device)     # held where it trains

        lc = int(self.latent_channels)
        generator = self._new_network()
        with forked_global_rng():   # torch's default init draws from the global RNG (one thread at a time)
            discriminator = PatchDiscriminator(int(self.n_filters), L, int(self.discriminator_kernel_size))
        init = torch.Generator().manual_seed(seeds[0])
        init_weights(generator, init)
        init_weights(discriminator, init)
        generator.to(device).train()
        discriminator.to(device).train()
        adam = dict(lr=float(self.learning_rate), betas=(float(self.beta1), 0.999),
                    weight_decay=float(self.weight_decay))
        opt_g = torch.optim.Adam(generator.parameters(), **adam)
        opt_d = torch.optim.Adam(discriminator.parameters(), **adam)
        noise = torch.Generator(device=device).manual_seed(seeds[1])
        crop_rng = np.random.default_rng(seeds[2])
        batch = int(self.batch_size)
        h, w = train_shape

        n_total = int(self.n_iterations)
        state = _checkpoint.TrainingState(torch.nn.ModuleDict(dict(generator=generator, discriminator=discriminator)),
                                          [opt_g, opt_d], None, crop_rng, noise, history_keys=_HISTORY_KEYS)
        if checkpoint is not None:
            fingerprint = _checkpoint.training_fingerprint(
                self, device, None if stack is None else stack.cpu().numpy(), sampler, estimator=name,
                ignore=("image_shape",))     # the decoded models' grid: the training's data are in the digest
            if _checkpoint.read(checkpoint, state, fingerprint, f"{name}.fit") and state.iteration > n_total:
                raise ValueError(f"{name}.fit: the checkpoint in {os.fspath(checkpoint)!r} is at iteration "
                                 f"{state.iteration}, beyond n_iterations={n_total}; raise n_iterations or "
                                 f"use another checkpoint directory.")
        history = state.history
        iterations = range(state.iteration, n_total)
        if self.verbose:
            from tqdm.auto import tqdm

            iterations = tqdm(iterations, desc=f"{name} fit", unit="it", initial=state.iteration, total=n_total)
        with _deterministic_kernels(device):
            for k in iterations:
                if sampler is not None:     # cut where the network computes, from the images kept there
                    real = sampler.sample_tensor(batch, random_state=crop_rng, device=device).reshape(batch, 1, h, w)
                else:
                    idx = torch.as_tensor(crop_rng.integers(0, stack.shape[0], size=batch), device=device)
                    real = stack[idx].reshape(batch, 1, h, w)
                real = 2.0 * real - 1.0
                z = torch.rand((batch, lc) + train_latent, generator=noise, device=device) * 2.0 - 1.0
                fake = generator(z)[:, :, :h, :w]
                real_logits = discriminator(real)
                fake_logits_d = discriminator(fake.detach())
                d_loss, _ = adversarial_losses(real_logits, fake_logits_d, fake_logits_d)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                _, g_loss = adversarial_losses(real_logits.detach(), fake_logits_d.detach(),
                                               discriminator(fake))
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                history["discriminator"].append(float(d_loss.detach()))
                history["generator"].append(float(g_loss.detach()))
                history["real_score"].append(float(torch.sigmoid(real_logits.detach()).mean()))
                history["fake_score"].append(float(torch.sigmoid(fake_logits_d.detach()).mean()))
                if self.verbose and hasattr(iterations, "set_postfix"):
                    iterations.set_postfix(d=history["discriminator"][-1], g=history["generator"][-1],
                                           refresh=False)
                state.iteration = k + 1
                if checkpoint is not None and (state.iteration % checkpoint_every == 0
                                               or state.iteration == n_total):
                    _checkpoint.write(checkpoint, state, fingerprint)
        losses = history["discriminator"] + history["generator"]
        if not all(math.isfinite(v) for v in losses) or not all(
                bool(torch.isfinite(p).all()) for p in generator.parameters()):
            raise ValueError(f"{name}: training diverged: non-finite losses or generator weights. "
                             f"Expected training images with values in [0, 1], or lower learning_rate "
                             f"(got {self.learning_rate!r}).")

        self.image_shape_ = image_shape
        self.training_shape_ = tuple(train_shape)
        self.history_ = history
        self._set_generator(generator, device)
        return self

    def _set_generator(self, generator, device):
        """Fitted state from a generator and ``image_shape_`` (latent grid derived from the generator's
        own layers, not from the parameters, which ``set_params`` may have changed since ``fit``)."""
        L = len(generator.upsample)
        self.latent_shape_ = (int(generator.upsample[0].in_channels),) + tuple(
            latent_grid_size(n, L) for n in self.image_shape_)
        generator = generator.to(device).eval().requires_grad_(False)
        self.generator_ = generator
        self.decoder_ = SGANDecoder(generator, self.latent_shape_, self.image_shape_).eval()
        self.device_ = device

    # ------------------------------------------------------------------ inference
    def decode(self, Z):
        """Models ``(G(z) + 1) / 2`` of latents ``Z``.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_components)
            Latents, flat in C order of ``latent_shape_``; the prior's box is [-1, 1] (values
            outside it are decoded as they are, as stochastic clipping with
            ``clip_resample="normal"`` needs).

        Returns
        -------
        X : ndarray of shape (n_samples, n_cells), float64
            Flat in C order of ``image_shape_``, values in [0, 1]; reshape with
            ``X.reshape(-1, *prior.image_shape_)``.

        Raises
        ------
        ValueError
            On a wrong shape, NaN/inf or strings in ``Z``, values beyond the float32 range, or a
            non-finite network output.
        """
        return self._decode(Z, f" (latent arrays of shape {self.latent_shape_}, flat in C order)")

    def sample_images(self, n_samples=1, latent_shape=(12, 12), random_state=None):
        """Draw images of any size from a latent grid of ``latent_shape`` cells (the SGAN's
        fully convolutional generator), e.g. 353 x 353 for 12 x 12 with five layers.

        Parameters
        ----------
        n_samples : int, default=1
        latent_shape : tuple of int, default=(12, 12)
            ``(n_x, n_y)`` latent cells. At least 2 cells in all (``(1, 1)`` is refused) unless the
            generator has no instance normalisation (``n_layers == 1`` and at most one dilation).
        random_state : int, RandomState instance or None

        Returns
        -------
        images : ndarray of shape (n_samples, n_rows, n_cols), float64
            Values in [0, 1]; ``n_rows = (n_x - 1) * 2**n_layers + 1`` (same for columns).

        Raises
        ------
        ValueError
            ``n_samples`` not an int >= 1, or ``latent_shape`` not a pair of positive ints or too
            small for the generator.
        """
        check_is_fitted(self, "generator_")
        name = type(self).__name__
        if not _is_int(n_samples, 1):
            raise ValueError(f"{name}: n_samples must be an int >= 1; got {n_samples!r}.")
        if (not isinstance(latent_shape, (tuple, list)) or len(latent_shape) != 2
                or not all(_is_int(v, 1) for v in latent_shape)):
            raise ValueError(f"{name}: latent_shape must be a pair of positive ints (n_x, n_y); got "
                             f"{latent_shape!r}.")
        _check_latent_cells(latent_shape, len(self.generator_.upsample), len(self.generator_.refine),
                            "latent_shape", name)
        shape = (int(n_samples), int(self.latent_shape_[0])) + tuple(int(v) for v in latent_shape)
        Z = check_random_state(random_state, f"{type(self).__name__}.sample_images").uniform(-1.0, 1.0, size=shape)
        images = []
        with torch.no_grad():
            for z in Z:
                zb = torch.tensor(z[None], dtype=torch.float32, device=self.device_)
                images.append(((self.generator_(zb)[0, 0] + 1.0) * 0.5).cpu().double())
        return _check_finite_output(torch.stack(images), "images", name, Z).numpy()

    # ------------------------------------------------------------------ devices, pickling
    def to(self, device):
        """Move the fitted generator to ``device``; returns ``self``.

        Only the fitted state moves; the ``device`` parameter, which a refit uses, is left as it is.

        Parameters
        ----------
        device : {"cpu", "cuda", "cuda:N", "auto"} or torch.device

        Returns
        -------
        self : SGANPrior

        Raises
        ------
        ValueError
            For an unknown device, or CUDA on a machine without it.
        """
        check_is_fitted(self, "generator_")
        self._set_generator(self.generator_, _resolve_device(device, f"{type(self).__name__}.to"))
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------------ persistence
    def _new_network(self):
        """A generator of the configured architecture (torch's global RNG left as it was)."""
        with forked_global_rng():   # torch's default init draws from the global RNG (one thread at a time)
            return SpatialGenerator(int(self.latent_channels), int(self.n_filters), int(self.n_layers),
                                    int(self.kernel_size), tuple(self.dilations))

    def _described(self):
        return (f"latent_channels={self.latent_channels}, n_filters={self.n_filters}, "
                f"n_layers={self.n_layers}, kernel_size={self.kernel_size}, "
                f"dilations={tuple(self.dilations)}")

    def _check_params_describe_network(self, owner):
        """The network's check, then the fitted shapes' (:func:`_fitted_shape_problems`, which
        :meth:`load` applies): shared by :meth:`save` and pickling, so neither writes a prior that
        ``load`` would refuse."""
        super()._check_params_describe_network(owner)
        problems = _fitted_shape_problems(self.image_shape, self.training_latent_shape, int(self.n_layers),
                                          self.image_shape_, self.training_shape_, int(self.n_features_in_))
        if problems:
            raise ValueError(f"{owner}: the parameters were changed after fit (set_params?) and no longer "
                             f"describe the fitted prior, which could not be loaded back: "
                             + " ".join(problems) + " Restore them, or fit again.")

    def _restore_network(self, state, device, source):
        generator = self._new_network()
        _check_state_against(generator, state, source, self._described())
        generator.load_state_dict(state)
        self._set_generator(generator, device)

    def _config(self):
        params = self.get_params(deep=False)
        params["device"] = str(params["device"])
        params = _plain_params(params, f"{type(self).__name__}.save")     # numpy scalars as numbers, tuples as lists
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "params": params,
            "fitted": {
                "image_shape_": list(self.image_shape_),
                "latent_shape_": list(self.latent_shape_),
                "training_shape_": list(self.training_shape_),
                "n_features_in_": int(self.n_features_in_),
                "device_": str(self.device_),
                "history_": {k: [float(v) for v in vals] for k, vals in self.history_.items()},
            },
        }

    def save(self, path, weights_dtype="float32"):
        """Save the fitted generator to the directory ``path``, with checksums.

        Writes ``path/weights.safetensors`` (the generator's state dict, CPU tensors) and
        ``path/config.json`` (parameters, fitted shapes, training history) with the SHA-256 of the
        weights (``weights_sha256``) and of the canonical JSON without its own digest
        (``config_sha256``), as :meth:`latentinv.prior.VAEPrior.save`. Neither file needs code
        execution to load; both are written to temporary names, then renamed, the configuration
        last: a save that fails while writing (a full disk, an interrupt) leaves the directory as
        it was. The discriminator is not saved.

        Parameters
        ----------
        path : str or path-like
            Directory (created if missing).
        weights_dtype : {"float32", "float16", "mixed"}, default="float32"
            How the weights are stored (:meth:`load` upcasts to float32, in which the generator
            computes), as :meth:`VAEPrior.save`: ``"float16"`` (half the file: the published network's
            16.5 MiB become 8.2) is refused (ValueError) unless the models decoded with the rounded
            weights agree with float32's to 1e-3 on 256 latents of the prior; ``"mixed"`` keeps in
            float32 the fewest tensors that agreement needs (named in ``config.json``,
            ``float32_tensors``). The prior in memory is not changed.

        Raises
        ------
        ValueError
            An unknown ``weights_dtype``, a refused float16 rounding, or parameters changed by
            ``set_params`` after ``fit`` that no longer describe the fitted generator (the file could
            not be loaded back; pickling refuses them too) or its fitted shapes (``image_shape``
            or ``training_latent_shape`` other than those of the fit; :meth:`load` checks them).
        """
        check_is_fitted(self, "generator_")
        name = f"{type(self).__name__}.save"
        _storage.check_weights_dtype(weights_dtype, name)
        self._check_params_describe_network(name)
        state, entries = _storage.stored_state(self.generator_.state_dict(), weights_dtype, self._decoding_error, name)
        _write_tensor_files(path, state, dict(self._config(), **entries), owner=name)

    def _decoding_error(self):
        """:func:`latentinv._storage.decoding_error` of this prior: its decoded models of 256 uniform
        latents."""
        z = (torch.rand(256, self.n_components, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(self.device_)
        shapes = (self.latent_shape_, self.image_shape_)
        return _storage.decoding_error(self.generator_, lambda g, z: SGANDecoder(g, *shapes).eval()(z), z)

    @classmethod
    def load(cls, path, device=None):
        """Load a prior written by :meth:`save` (no code is executed), verifying its checksums.

        Parameters
        ----------
        path : str or path-like
            Directory given to :meth:`save`.
        device : {None, "cpu", "cuda", "cuda:N", "auto"} or torch.device, default=None
            None: the device it was saved from when available here, else the CPU with a warning.

        Returns
        -------
        prior : SGANPrior
            Fitted.

        Raises
        ------
        FileNotFoundError
            ``path`` is not a directory, or a file is missing.
        ModelFileError
            (a ValueError) naming the file and the problem: invalid JSON, a checksum that does not
            match (edited configuration, corrupted or replaced weights), missing or unexpected
            keys, parameters of the wrong type or range, inconsistent fitted shapes (``image_shape_``,
            ``training_shape_`` and ``n_features_in_`` other than those ``fit`` makes with the saved
            parameters), a ``history_`` holding NaN or infinity, a weights file that is not
            safetensors or whose tensors do not fit the configured network.
        """
        name = f"{cls.__name__}.load"
        target = None if device is None else _resolve_device(device, name)
        (config_path, weights_path), (raw, weights) = _read_model_files(path, name, cls.__name__)
        config = _parse_config(raw, config_path, name, fmt=_FORMAT, versions=(_VERSION,),
                               saver=cls.__name__)
        _verify_checksums(config, weights, config_path, weights_path, name, saver=cls.__name__)
        where = f"{name}: {config_path!r}"
        prior, fitted = cls._from_config(config, where)
        state = _load_safetensors(weights, weights_path, name)
        if config.get("weights_dtype", "float32") != "float32":
            _storage.check_stored_dtypes(state, config, name, weights_path, config_path)
            state = _storage.upcast(state)
        if target is None:
            target = _saved_device_or_cpu(fitted["device_"], f"{where} records that the network was on "
                                          f"{fitted['device_']!r} when saved (device_), but")
        prior._restore_network(state, target, source=f"{name}: {weights_path!r}")
        if tuple(prior.latent_shape_) != fitted["latent_shape_"]:
            raise ModelFileError(f"{where}: fitted.latent_shape_ {list(fitted['latent_shape_'])} is not "
                                 f"the latent grid of image_shape_ {list(prior.image_shape_)} "
                                 f"({list(prior.latent_shape_)}).")
        problems = _fitted_shape_problems(prior.image_shape, prior.training_latent_shape, int(prior.n_layers),
                                          prior.image_shape_, prior.training_shape_, prior.n_features_in_)
        if problems:        # after the tensors, which confirm n_layers
            raise ModelFileError(f"{where}: {problems[0]}")
        prior._check_decodes_fitted_shape(where)
        return prior

    def _check_decodes_fitted_shape(self, where):
        """ModelFileError naming ``where`` unless the generator's output for one probe latent covers
        ``image_shape_`` and decodes to a finite model of that shape."""
        z = torch.rand((1,) + tuple(self.latent_shape_), generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            full = self.generator_(z.to(self.device_))
            out = self.decoder_(z.reshape(1, -1).to(self.device_))
        rows, cols = (int(v) for v in full.shape[-2:])
        if rows < self.image_shape_[0] or cols < self.image_shape_[1] or out.numel() != math.prod(self.image_shape_):
            raise ModelFileError(f"{where}: the generator makes models of {rows} x {cols} cells from latents of "
                                 f"shape {list(self.latent_shape_)}, which do not cover fitted.image_shape_ "
                                 f"{list(self.image_shape_)}.")
        if not bool(torch.isfinite(out).all()):
            raise ModelFileError(f"{where}: the generator decodes a probe latent to NaN or infinite values; "
                                 f"expected a model of {list(self.image_shape_)} finite cells.")

    @classmethod
    def _from_config(cls, config, where):
        """An SGANPrior with the parameters and fitted shapes of a verified configuration."""
        def keys(mapping, required, label, optional=()):
            if not isinstance(mapping, dict):
                raise ModelFileError(f"{where}: {label} must be a JSON object; got {type(mapping).__name__}.")
            missing = [k for k in required if k not in mapping]
            unexpected = [k for k in mapping if k not in required and k not in optional]
            if missing or unexpected:
                also = f" (and optionally {list(optional)})" if optional else ""
                raise ModelFileError(f"{where}: {label} has missing keys {missing} and unexpected keys "
                                     f"{unexpected}; expected exactly {list(required)}{also}.")

        def shape(value, label, length=2):
            if (not isinstance(value, list) or len(value) != length
                    or not all(_is_int(v, 1) for v in value)):
                raise ModelFileError(f"{where}: {label} must be a list of {length} positive ints; got "
                                     f"{value!r}.")
            return tuple(value)

        keys(config, _CONFIG_KEYS, "the configuration", optional=("weights_dtype", "float32_tensors"))
        _storage.check_config_entries(config, where)
        keys(config["params"], cls._get_param_names(), "'params'")     # a JSON object before dict() of it
        params, fitted = dict(config["params"]), config["fitted"]
        keys(fitted, _FITTED_KEYS, "'fitted'")
        for key in ("image_shape", "training_latent_shape"):
            if params[key] is not None:
                params[key] = shape(params[key], f"params.{key}")
        if not isinstance(params["dilations"], list):
            raise ModelFileError(f"{where}: params.dilations must be a list of positive ints; got "
                                 f"{params['dilations']!r}.")
        params["dilations"] = tuple(params["dilations"])
        try:
            _parse_device(params["device"], where, "params.device")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        _check_saved_random_state(params, where)
        prior = cls(**params)
        try:
            prior._check_hyperparams(name=f"{where}: params")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        image_shape_ = shape(fitted["image_shape_"], "fitted.image_shape_")
        latent_shape_ = shape(fitted["latent_shape_"], "fitted.latent_shape_", length=3)
        try:
            _check_latent_cells(latent_shape_[1:], prior.n_layers, len(prior.dilations), "fitted.latent_shape_",
                                where)
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        training_shape_ = shape(fitted["training_shape_"], "fitted.training_shape_")
        n_features = fitted["n_features_in_"]
        if not _is_int(n_features, 1):
            raise ModelFileError(f"{where}: fitted.n_features_in_ must be an int >= 1; got {n_features!r}.")
        if params["image_shape"] is not None and params["image_shape"] != image_shape_:
            raise ModelFileError(f"{where}: params.image_shape {list(params['image_shape'])} differs from "
                                 f"fitted.image_shape_ {list(image_shape_)}.")
        try:
            saved = _parse_device(fitted["device_"], where, "fitted.device_")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        if saved == "auto":
            raise ModelFileError(f"{where}: fitted.device_ must be a concrete device; got 'auto'.")
        history = fitted["history_"]
        keys(history, _HISTORY_KEYS, "fitted.history_")
        for key, values in history.items():
            if not isinstance(values, list) or not all(
                    isinstance(v, Real) and not isinstance(v, bool) for v in values):
                raise ModelFileError(f"{where}: fitted.history_.{key} must be a list of numbers.")
        if len({len(v) for v in history.values()}) > 1:
            raise ModelFileError(f"{where}: the lists of fitted.history_ differ in length.")
        _check_history_finite(history, where)
        prior.image_shape_ = image_shape_
        prior.training_shape_ = training_shape_
        prior.n_features_in_ = int(n_features)
        prior.history_ = {k: [float(v) for v in vals] for k, vals in history.items()}
        fitted = dict(fitted, latent_shape_=latent_shape_, device_=str(saved))
        return prior, fitted

    @classmethod
    def from_reference_checkpoint(cls, path, device="cpu"):
        """Load the published trained SGAN generator into a fitted prior.

        The file is ``SGAN/netG_epoch_36.pth`` of github.com/jlalvis/VAE_SGD (also
        ``inversion/generation/netG_epoch_36.pth`` of elaloy/gan_for_gradient_based_inv; not shipped
        with latentinv): a torch state dict of the ``Generator`` of ``SGAN/generator.py`` (keys
        ``main.<index>.weight``). It is read with ``torch.load(path, map_location="cpu",
        weights_only=True)`` (no code execution), every key and shape is checked against the
        published layout, and the tensors are renamed for :class:`~latentinv.nn.sgan.SpatialGenerator`
        (see :func:`~latentinv.nn.sgan.published_generator_key_map`), which computes the same
        function. The prior has the published parameters, ``image_shape_ = (129, 65)`` (latents of
        shape (1, 5, 3), ``n_components = 15``), an empty ``history_``, and saves and loads through
        :meth:`save`/:meth:`load` like any other.

        Parameters
        ----------
        path : str or path-like
            The ``.pth`` file.
        device : {"cpu", "cuda", "cuda:N", "auto"} or torch.device, default="cpu"

        Returns
        -------
        prior : SGANPrior
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
        state = _read_reference_state_dict(path, name, "SGAN/netG_epoch_36.pth")
        path = os.fspath(path)
        try:
            converted, latent_channels = convert_published_generator_state_dict(
                state, source=f"{name}: {path!r}")
        except ValueError as err:
            raise ModelFileError(str(err)) from None
        _, n_x, n_y = PUBLISHED_LATENT_SHAPE
        image_shape = (output_size(n_x, PUBLISHED_N_LAYERS), output_size(n_y, PUBLISHED_N_LAYERS))
        prior = cls(image_shape=image_shape, latent_channels=latent_channels,
                    device=str(device) if isinstance(device, torch.device) else device)
        try:        # a file whose first layer has no input channel would give a prior of 0 latents
            prior._check_hyperparams(name=f"{name}: {path!r}")
        except ValueError as err:
            raise ModelFileError(f"{err} (read from main.0.weight's first dimension)") from None
        prior.image_shape_ = image_shape
        prior.training_shape_ = tuple(output_size(n, PUBLISHED_N_LAYERS) for n in (12, 12))
        prior.n_features_in_ = prior.training_shape_[0] * prior.training_shape_[1]
        prior.history_ = {k: [] for k in _HISTORY_KEYS}
        prior._restore_network(converted, target, source=f"{name}: {path!r}")
        return prior
