"""Torch modules of the spatial GAN prior (Laloy et al., 2018, 2019), as compared in Lopez-Alvis et al. (2021).

This module holds the SGAN's generator, its patch discriminator, the adversarial loss and the
parameter layout of the published generator; it imports torch only (no scikit-learn). The
scikit-learn estimator that trains it is :class:`latentinv.sgan.SGANPrior`.

Architecture (defaults = the published PyTorch code)
----------------------------------------------------
Generator ``G``: a latent array ``z`` of shape ``(latent_channels, n_x, n_y)`` (values in [-1, 1])
goes through ``n_layers`` stride-2 transposed convolutions (kernel ``k``, padding ``k // 2``, no
bias), each followed by ReLU and then instance normalisation (without affine parameters; the last
stride-2 layer has ReLU only, and nothing when no dilated layer follows), then through one transposed convolution of stride 1 per entry of
``dilations`` (dilation ``d``, padding ``d * (k - 1) / 2``, so the size is kept), with ReLU and
instance normalisation between them, and a tanh at the end::

    channels : latent_channels -> 8f -> 4f -> 2f -> f -> 1  (five stride-2 layers, f = n_filters)
               1 -> f -> 1                                 (two dilated layers, dilations 3 and 5)
    size     : (n - 1) * 2**n_layers + 1 per axis          ((5, 3) -> 129 x 65, (12, 12) -> 353 x 353)

The channel widths of the stride-2 layers are ``f * 2**(n_layers - 2 - i)`` for layer ``i`` (the
last one has 1 channel), i.e. 512, 256, 128, 64, 1 for the published ``f = 64``, five layers.

Discriminator ``D``: ``n_layers`` stride-2 convolutions (kernel ``k_D``, padding ``k_D // 2``, no
bias), channels 1 -> f -> 2f -> 4f -> 8f -> 1, LeakyReLU(0.2) then instance normalisation after
each but the last; one logit per latent cell (a 353 x 353 crop gives a 12 x 12 map of logits).

Loss: the standard (non-saturating) GAN loss with binary cross-entropy, averaged over patches and
batch; ``D`` and ``G`` take one Adam step each per iteration, ``G``'s on the same fake batch.
latentinv computes it from logits (``binary_cross_entropy_with_logits``), which is the same loss as
the published ``Sigmoid`` + ``BCELoss`` without the overflow of ``log(sigmoid)``.

Published numbers followed (where sources differ)
-------------------------------------------------
* Generator: ``SGAN/generator.py`` of jlalvis/VAE_SGD = ``training/nnmodels.py`` (``netG``) of
  elaloy/gan_for_gradient_based_inv (Laloy et al., 2019): ReLU *before* instance normalisation, the
  two dilated layers (3 and 5) and 64 channels between them. The earlier Theano SGAN
  (elaloy/SGANinv, Laloy et al., 2018) has no dilated layers and batch normalisation; latentinv
  follows the PyTorch network, whose trained weights (``netG_epoch_36.pth``) the paper used.
* Discriminator kernel 5 (``--dfs`` default of ``training/train2d.py``, the script that trained the
  published network); the class default in ``nnmodels.py`` and the Theano configuration use 9.
* Training (``train2d.py``): batch 32 crops of 353 x 353 (a 12 x 12 latent), Adam lr 5e-4,
  beta1 0.5, L2 weight decay 1e-7 (the Theano code: batch 64, 1e-5), weights initialised from
  N(0, 0.02). Training images are mapped to [-1, 1] by ``2 x - 1`` (the published loader uses
  ``pixel / 128 - 1``, i.e. [-1, 0.992] for 8-bit images) and generated models back to [0, 1] by
  ``(G(z) + 1) / 2`` (as ``SGD_DGM.py``).
"""

from __future__ import annotations

from typing import Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .autocast import bfloat16_autocast
from . import fused as _fused
from .native import channels_last_weight, constant_for_autograd
from .reference import check_tensor_mapping, convert_published_tensors

__all__ = [
    "SpatialGenerator", "PatchDiscriminator", "SGANDecoder", "adversarial_losses", "init_weights",
    "output_size", "latent_grid_size", "published_generator_key_map", "published_generator_shapes",
    "convert_published_generator_state_dict", "PUBLISHED_LATENT_SHAPE", "PUBLISHED_N_FILTERS",
    "PUBLISHED_N_LAYERS", "PUBLISHED_KERNEL_SIZE", "PUBLISHED_DILATIONS",
]

#: (latent_channels, n_x, n_y) of the published generator's latents in the inversions (129 x 65 models).
PUBLISHED_LATENT_SHAPE = (1, 5, 3)
#: Base number of filters ``f`` (``ngf``/``ndf``) of the published networks.
PUBLISHED_N_FILTERS = 64
#: Stride-2 layers of the published generator and discriminator.
PUBLISHED_N_LAYERS = 5
#: Kernel size of every published generator layer (``gfs``) and of the discriminator (``dfs``).
PUBLISHED_KERNEL_SIZE = 5
#: Dilations of the published generator's two stride-1 layers.
PUBLISHED_DILATIONS = (3, 5)

_LEAK = 0.2
_INIT_STD = 0.02


def output_size(n_latent: int, n_layers: int) -> int:
    """Cells along one axis of ``G``'s output for ``n_latent`` latent cells: ``(n - 1) 2**L + 1``."""
    return (int(n_latent) - 1) * 2 ** int(n_layers) + 1


def latent_grid_size(n_cells: int, n_layers: int) -> int:
    """Fewest latent cells whose output covers ``n_cells`` cells: ``ceil((n - 1) / 2**L) + 1``."""
    return -(-(int(n_cells) - 1) // 2 ** int(n_layers)) + 1


def _stride2_channels(latent_channels, n_filters, n_layers):
    """Input/output channels of the stride-2 transposed convolutions, in order."""
    widths = [n_filters * 2 ** (n_layers - 2 - i) for i in range(n_layers - 1)] + [1]
    ins = [latent_channels] + widths[:-1]
    return list(zip(ins, widths))


class SpatialGenerator(nn.Module):
    """Fully convolutional SGAN generator: ``(batch, c, n_x, n_y)`` latents -> images in [-1, 1].

    Parameters
    ----------
    latent_channels : int, default=1
        Channels of the latent array (``nz`` of the published code).
    n_filters : int, default=64
        Base width ``f``.
    n_layers : int, default=5
        Number of stride-2 layers (each doubles the size minus one).
    kernel_size : int, default=5
        Odd kernel size of every layer.
    dilations : sequence of int, default=(3, 5)
        One stride-1 dilated transposed convolution per entry (none: the tanh follows the last
        stride-2 layer).
    """

    def __init__(self, latent_channels=1, n_filters=PUBLISHED_N_FILTERS, n_layers=PUBLISHED_N_LAYERS,
                 kernel_size=PUBLISHED_KERNEL_SIZE, dilations=PUBLISHED_DILATIONS):
        super().__init__()
        k = int(kernel_size)
        if k % 2 != 1:
            raise ValueError(f"SpatialGenerator: kernel_size must be odd (size-preserving padding); got {k}.")
        self.n_layers = int(n_layers)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=k // 2, bias=False)
            for c_in, c_out in _stride2_channels(int(latent_channels), int(n_filters), self.n_layers))
        dilations = tuple(int(d) for d in dilations)
        widths = [1] + [int(n_filters)] * (len(dilations) - 1) + [1]
        self.refine = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i + 1], k, stride=1, padding=d * (k - 1) // 2,
                               dilation=d, bias=False)
            for i, d in enumerate(dilations))

    #: For a generator that is a constant for autograd (a fitted prior in an inversion), the transposed
    #: convolutions on channels-last maps with channels-last copies of their weights
    #: (``layout_channels_last``: cuDNN's tensor-core kernels take NHWC, without a transform each way)
    #: and each ReLU + instance norm as compiled kernels (``layout_fused_norm``,
    #: :mod:`latentinv.nn.fused`). Off until a GPU run shows which is fastest
    #: (``benchmarks/bench_inversion.py --sgan-rates``); switches (class or instance attributes) for
    #: benchmarks and tests.
    layout_channels_last = False
    layout_fused_norm = False
    #: the names ``x`` of the switches ``layout_x`` above (benchmarks and reproduce_paper.py's --sgan-layout)
    LAYOUT_SWITCHES = ("channels_last", "fused_norm")

    def forward(self, z):
        laid_out = (self.layout_channels_last or self.layout_fused_norm) and constant_for_autograd(self)
        conv = self._conv_laid_out if laid_out else (lambda layer, h: layer(h))
        relu_norm = (_fused.relu_norm if laid_out and self.layout_fused_norm
                     else (lambda h: F.instance_norm(F.relu(h))))
        h = z
        last = len(self.upsample) - 1
        for i, layer in enumerate(self.upsample):
            h = conv(layer, h)
            if i < last:
                h = relu_norm(h)
            elif len(self.refine):      # ReLU before the dilated layers; none before a direct tanh
                h = F.relu(h)
        for i, layer in enumerate(self.refine):
            h = conv(layer, h)
            if i < len(self.refine) - 1:
                h = relu_norm(h)
        return torch.tanh(h)

    def _conv_laid_out(self, layer, h):
        if not self.layout_channels_last:
            return layer(h)
        dtype = torch.bfloat16 if bfloat16_autocast(h.device.type) else h.dtype
        return F.conv_transpose2d(h.contiguous(memory_format=torch.channels_last),
                                  channels_last_weight(layer, dtype), layer.bias, layer.stride, layer.padding,
                                  layer.output_padding, layer.groups, layer.dilation)


class PatchDiscriminator(nn.Module):
    """SGAN discriminator: images in [-1, 1] ``(batch, 1, H, W)`` -> one logit per patch.

    Parameters
    ----------
    n_filters : int, default=64
    n_layers : int, default=5
    kernel_size : int, default=5
        Odd kernel size.
    """

    def __init__(self, n_filters=PUBLISHED_N_FILTERS, n_layers=PUBLISHED_N_LAYERS,
                 kernel_size=PUBLISHED_KERNEL_SIZE):
        super().__init__()
        k = int(kernel_size)
        if k % 2 != 1:
            raise ValueError(f"PatchDiscriminator: kernel_size must be odd; got {k}.")
        n_layers = int(n_layers)
        widths = [1] + [int(n_filters) * 2 ** i for i in range(n_layers - 1)] + [1]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], k, stride=2, padding=k // 2, bias=False)
            for i in range(n_layers))

    def forward(self, x):
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.instance_norm(F.leaky_relu(h, _LEAK))
        return h


def init_weights(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every convolution weight from N(0, 0.02) with ``generator`` (the published init)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, _INIT_STD, generator=generator)
    return module


def adversarial_losses(real_logits, fake_logits_detached, fake_logits):
    """The standard GAN losses from logits.

    Returns
    -------
    d_loss : tensor
        ``BCE(D(x), 1) + BCE(D(G(z)), 0)`` (means over batch and patches), for ``D``'s step.
    g_loss : tensor
        ``BCE(D(G(z)), 1)``, the non-saturating generator loss, for ``G``'s step.
    """
    ones = torch.ones_like(real_logits)
    d_loss = (F.binary_cross_entropy_with_logits(real_logits, ones)
              + F.binary_cross_entropy_with_logits(fake_logits_detached, torch.zeros_like(fake_logits_detached)))
    g_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return d_loss, g_loss


class SGANDecoder(nn.Module):
    """Flat latents ``(batch, c * n_x * n_y)`` -> flat models ``(batch, n_rows * n_cols)`` in [0, 1].

    Reshapes the latents to ``latent_shape`` (C order), runs the generator, keeps the top-left
    ``image_shape`` window of its output (all of it when the sizes match, as 5 x 3 -> 129 x 65) and
    maps tanh's [-1, 1] to [0, 1] by ``(g + 1) / 2``.
    """

    def __init__(self, generator: SpatialGenerator, latent_shape: Sequence[int], image_shape: Sequence[int]):
        super().__init__()
        self.generator = generator
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.image_shape = tuple(int(v) for v in image_shape)

    def forward(self, z):
        images = self.generator(z.reshape(z.shape[0], *self.latent_shape))
        h, w = self.image_shape
        images = images[:, 0, :h, :w]
        return ((images + 1.0) * 0.5).reshape(z.shape[0], h * w)


# ---------------------------------------------------------------------- the published layout
def _published_indices(n_layers, n_dilated):
    """Indices in the published ``main`` Sequential of the stride-2 and of the dilated layers."""
    upsample = [3 * i for i in range(n_layers)]            # conv, ReLU, IN per layer (last: conv, ReLU)
    start = 3 * (n_layers - 1) + 2
    refine = [start + 3 * j for j in range(n_dilated)]     # conv, ReLU, IN between; Tanh at the end
    return upsample, refine


def published_generator_key_map(n_layers=PUBLISHED_N_LAYERS, n_dilated=len(PUBLISHED_DILATIONS)):
    """Published key (``main.<i>.weight``) -> :class:`SpatialGenerator` key, in the published order.

    For the published network: ``main.0/3/6/9/12.weight`` -> ``upsample.0..4.weight`` and
    ``main.14/17.weight`` -> ``refine.0/1.weight`` (ReLU, InstanceNorm and Tanh hold no tensors).
    """
    upsample, refine = _published_indices(n_layers, n_dilated)
    mapping = {f"main.{idx}.weight": f"upsample.{i}.weight" for i, idx in enumerate(upsample)}
    mapping.update({f"main.{idx}.weight": f"refine.{j}.weight" for j, idx in enumerate(refine)})
    return mapping


def published_generator_shapes(latent_channels=PUBLISHED_LATENT_SHAPE[0]):
    """Published key -> tensor shape (transposed convolutions: ``(in, out, k, k)``)."""
    k = PUBLISHED_KERNEL_SIZE
    shapes = {}
    keys = list(published_generator_key_map())
    pairs = _stride2_channels(int(latent_channels), PUBLISHED_N_FILTERS, PUBLISHED_N_LAYERS)
    pairs += [(1, PUBLISHED_N_FILTERS), (PUBLISHED_N_FILTERS, 1)]
    for key, (c_in, c_out) in zip(keys, pairs):
        shapes[key] = (c_in, c_out, k, k)
    return shapes


def convert_published_generator_state_dict(state: Mapping, source="state dict") -> Tuple[dict, int]:
    """Check a published SGAN generator state dict key by key and rename it for :class:`SpatialGenerator`.

    Parameters
    ----------
    state : mapping of str to torch.Tensor
        ``torch.load`` of ``SGAN/netG_epoch_36.pth`` (jlalvis/VAE_SGD) or of any state dict of the
        published ``Generator``/``netG`` (keys ``main.<index>.weight``).
    source : str
        Name of the file, for error messages.

    Returns
    -------
    converted : dict of str to torch.Tensor
        float32 CPU tensors under :class:`SpatialGenerator`'s key names.
    latent_channels : int
        Read from ``main.0.weight`` (1 for the published file).

    Raises
    ------
    ValueError
        Not a mapping of names to tensors, missing or unexpected keys, a wrong shape, a tensor that
        is not floating point or holds NaN/inf; the message names ``source`` and the keys.
    """
    check_tensor_mapping(state, source, "the published SGAN generator")
    first = state.get("main.0.weight")
    latent_channels = int(first.shape[0]) if first is not None and first.dim() == 4 else 1
    converted = convert_published_tensors(
        state, published_generator_shapes(latent_channels), published_generator_key_map(), source,
        layout="SGAN generator layout (SGAN/generator.py, keys main.<index>.weight)",
        network="SGAN generator (64 filters, kernel 5)")
    return converted, latent_channels

