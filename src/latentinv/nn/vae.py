"""Torch modules of the variational autoencoder prior (Lopez-Alvis et al., 2021).

This module holds the network architecture and the training loss of the VAE
prior and nothing else: it imports torch and numpy only (no scikit-learn).
The scikit-learn estimator that trains it lives in :mod:`latentinv.prior`.

Conventions
-----------
Every module works on *flat* float32 models of shape ``(batch, n_features)``,
where an image of shape ``(n_rows, n_cols)`` is flattened in C order
(row 0 = top = shallowest, flat index = ``row * n_cols + col``). Convolutional
modules reshape internally.

Loss (the paper's training notebook's form; ``alpha`` is the variance of ``eps`` as the paper's Eq. 14
defines it, hence ``sqrt(alpha)``, which is 1 at the paper's alpha = 1)::

    z    = mu + sqrt(alpha) * sigma * eps,         eps ~ N(0, I)            (1)
    loss = sum_{batch, pixels} (x_hat - x)**2
           + beta * mean_{batch, latent} KL_j                                (2)
    KL_j = -0.5 * (1 + logvar_j - mu_j**2 - exp(logvar_j))                   (3)

with ``beta = 1000``, batch 100. Because the KL term of (2) is *averaged* over
batch and latent dimensions while the reconstruction is *summed*, the
equivalent weight in the usual per-sample ELBO convention (reconstruction
summed over pixels, KL summed over latent dimensions, both averaged over the
batch) is::

    beta_per_sample = beta / (batch_size * n_components)                    (4)

e.g. 1000 / (100 * 20) = 0.5 for the paper's settings.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Sequence, Tuple, Union

import torch
from torch import nn

from .autocast import autocast_enabled, bfloat16_autocast
from . import fused as _fused
from . import native
from . import subpixel as _subpixel

__all__ = [
    "ConvEncoder",
    "ConvDecoder",
    "MLPEncoder",
    "MLPDecoder",
    "VAE",
    "LatentDecoder",
    "conv_geometry",
    "kl_divergence",
    "vae_loss",
    "build_vae",
    "REFERENCE_CHANNELS",
    "REFERENCE_KERNEL_SIZES",
    "REFERENCE_HIDDEN_SIZE",
]

#: Channels of the four strided convolutions of the reference encoder.
REFERENCE_CHANNELS = (32, 64, 128, 256)
#: Kernel sizes of the four strided convolutions of the reference encoder.
REFERENCE_KERNEL_SIZES = (5, 5, 4, 4)
#: Width of the fully-connected hidden layer of the reference encoder/decoder.
REFERENCE_HIDDEN_SIZE = 512

_STRIDE = 2


def _pair_padding(size: int, kernel: int) -> int:
    """Padding of one strided convolution along one axis.

    Zero (the reference, "valid" convolution) whenever the input is at least
    as large as the kernel; otherwise the smallest padding that keeps one
    output element.
    """
    if size >= kernel:
        return 0
    return int(math.ceil((kernel - size) / 2))


def conv_geometry(image_shape: Tuple[int, int], kernel_sizes: Sequence[int], stride: int = _STRIDE):
    """Shapes of the strided convolution stack for an image of any size.

    Parameters
    ----------
    image_shape : tuple of int
        ``(n_rows, n_cols)`` of the image, in cells.
    kernel_sizes : sequence of int
        Kernel size of each strided convolution.
    stride : int, default=2
        Stride of every convolution.

    Returns
    -------
    layers : list of dict
        One dict per convolution with keys ``in_shape``, ``out_shape``,
        ``padding`` and ``output_padding`` (the latter for the mirrored
        transposed convolution, so that the decoder returns exactly
        ``in_shape``: ``out = (n_out - 1) * stride - 2 p + k + output_padding``).

    Notes
    -----
    For the paper's 129 x 65 images and kernels (5, 5, 4, 4) every padding and
    output padding is zero and the flattened map is 256 x 6 x 2 = 3072, as in
    the reference implementation.
    """
    shape = tuple(int(s) for s in image_shape)
    layers = []
    for k in kernel_sizes:
        k = int(k)
        pad = tuple(_pair_padding(s, k) for s in shape)
        out = tuple((s + 2 * p - k) // stride + 1 for s, p in zip(shape, pad))
        out_pad = tuple((s + 2 * p - k) % stride for s, p in zip(shape, pad))
        layers.append(dict(in_shape=shape, out_shape=out, padding=pad, output_padding=out_pad))
        shape = out
    return layers


def _norm(n_channels: int, spatial_shape: Tuple[int, int]) -> nn.Module:
    # Instance normalisation of a single spatial element is undefined (zero
    # variance; torch refuses it in training): fall back on the identity there.
    if spatial_shape[0] * spatial_shape[1] <= 1:
        return nn.Identity()
    return nn.InstanceNorm2d(n_channels)


def _as_image_batch(x: torch.Tensor, image_shape: Tuple[int, int], owner: str) -> torch.Tensor:
    n_rows, n_cols = image_shape
    n_cells = n_rows * n_cols
    if x.dim() == 2 and x.shape[1] == n_cells:
        return x.reshape(x.shape[0], 1, n_rows, n_cols)
    if x.dim() == 3 and tuple(x.shape[1:]) == (n_rows, n_cols):
        return x.unsqueeze(1)
    if x.dim() == 4 and tuple(x.shape[1:]) == (1, n_rows, n_cols):
        return x
    raise ValueError(
        f"{owner}: expected input of shape (batch, {n_cells}), (batch, {n_rows}, {n_cols}) "
        f"or (batch, 1, {n_rows}, {n_cols}) for image_shape={tuple(image_shape)}; "
        f"got {tuple(x.shape)}."
    )


class ConvEncoder(nn.Module):
    """Convolutional encoder of the reference VAE.

    Four strided (stride 2) convolutions without bias, each followed by
    instance normalisation and ReLU, then a flatten, a fully-connected layer
    with ReLU and two linear heads for the latent mean and log-variance.
    Shapes are derived for any image size (:func:`conv_geometry`).

    Parameters
    ----------
    image_shape : tuple of int
        ``(n_rows, n_cols)`` of the input images.
    n_components : int
        Latent dimension ``d``.
    channels : sequence of int, default=(32, 64, 128, 256)
        Output channels of the convolutions.
    kernel_sizes : sequence of int, default=(5, 5, 4, 4)
        Kernel sizes of the convolutions.
    hidden_size : int, default=512
        Width of the fully-connected hidden layer.
    """

    def __init__(self, image_shape, n_components, channels=REFERENCE_CHANNELS,
                 kernel_sizes=REFERENCE_KERNEL_SIZES, hidden_size=REFERENCE_HIDDEN_SIZE):
        super().__init__()
        if len(channels) != len(kernel_sizes):
            raise ValueError(
                f"ConvEncoder: channels and kernel_sizes must have the same length; "
                f"got {len(channels)} and {len(kernel_sizes)}."
            )
        self.image_shape = tuple(int(s) for s in image_shape)
        geometry = conv_geometry(self.image_shape, kernel_sizes)
        layers = []
        in_ch = 1
        for out_ch, k, g in zip(channels, kernel_sizes, geometry):
            layers += [
                nn.Conv2d(in_ch, int(out_ch), kernel_size=int(k), stride=_STRIDE,
                          padding=g["padding"], bias=False),
                _norm(int(out_ch), g["out_shape"]),
                nn.ReLU(),
            ]
            in_ch = int(out_ch)
        self.conv = nn.Sequential(*layers)
        flat = in_ch * geometry[-1]["out_shape"][0] * geometry[-1]["out_shape"][1]
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, int(hidden_size)), nn.ReLU())
        self.fc_mu = nn.Linear(int(hidden_size), int(n_components))
        self.fc_logvar = nn.Linear(int(hidden_size), int(n_components))

    def forward(self, x):
        """Return ``(mu, logvar)``, each of shape ``(batch, n_components)``."""
        h = self.fc(self.conv(_as_image_batch(x, self.image_shape, type(self).__name__)))
        return self.fc_mu(h), self.fc_logvar(h)


class _OneChannelConvTransposeFunction(torch.autograd.Function):
    """Transposed convolution to one output channel, for a constant weight: the CPU's path (on CUDA,
    the decoder's ``layout_fold_last`` switch).

    oneDNN runs this shape (e.g. 32 -> 1 channels, 5 x 5, stride 2: the decoder's last layer) at
    about 13 GFLOP/s, 23 ms of a 100-start decoder pass here. Contracting the channels first (one
    GEMM to the kH*kW taps) and adding the taps into the output (``fold``, col2im: for each output
    element the taps are added in kernel order, starting from zero) gives the same sums in another
    order than oneDNN (float32 rounding, ~1e-6) in a fraction of the time. The input gradient is a
    plain strided convolution with the same weight, which oneDNN runs fast.

    ``low_precision`` (bfloat16 input, under ``torch.autocast``): the GEMM runs in bfloat16 (each tap
    rounded once to bfloat16), the taps are added in float32 (the output is float32); the input
    gradient is the same convolution in bfloat16.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, output_padding, low_precision=False):
        ctx.save_for_backward(weight)
        ctx.conf = (stride, padding, low_precision)
        n, c, h, w = x.shape
        kh, kw = weight.shape[2], weight.shape[3]
        (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
        w_taps = weight.reshape(c, kh * kw).t()
        if low_precision:
            w_taps = w_taps.to(x.dtype)
        taps = torch.matmul(w_taps, x.reshape(n, c, h * w))
        if low_precision:
            taps = taps.float()
        out_h = (h - 1) * sh - 2 * ph + kh + oph
        out_w = (w - 1) * sw - 2 * pw + kw + opw
        y = nn.functional.fold(taps, (out_h, out_w), (kh, kw), stride=stride, padding=padding)
        return y

    @staticmethod
    def backward(ctx, grad_y):      # differentiable ops only: double backward works too
        (weight,) = ctx.saved_tensors
        stride, padding, low_precision = ctx.conf
        grad_x = None
        if ctx.needs_input_grad[0]:
            if low_precision:
                grad_x = nn.functional.conv2d(grad_y.to(torch.bfloat16).contiguous(), weight.to(torch.bfloat16),
                                              stride=stride, padding=padding)
            else:
                grad_x = nn.functional.conv2d(grad_y.contiguous(), weight, stride=stride, padding=padding)
        return grad_x, None, None, None, None, None


class _ConvTranspose2dToOneChannel(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters and state dict) with a fast path for its CPU shape.

    The fast path runs when the weight is a constant for autograd (no gradient asked of it: a
    fitted decoder, whose parameters latentinv freezes, or ``torch.no_grad``), in float32 on the CPU,
    or in bfloat16 under CPU autocast (then its output is float32); training takes the standard path,
    so a training run is unchanged.
    """

    def forward(self, x, output_size=None):
        low = x.dtype == torch.bfloat16 and bfloat16_autocast("cpu")
        fast = (output_size is None and x.device.type == "cpu" and _foldable(self, x, low)
                and not (torch.is_grad_enabled() and self.weight.requires_grad))
        if not fast:
            return super().forward(x, output_size)
        return _OneChannelConvTransposeFunction.apply(x.contiguous(), self.weight, self.stride,
                                                      self.padding, self.output_padding, low)


class ConvDecoder(nn.Module):
    """Convolutional decoder of the reference VAE (mirror of :class:`ConvEncoder`).

    Two fully-connected layers (``z -> hidden -> flattened map``, ReLU after
    the second, as in the reference), four transposed convolutions with
    instance normalisation and ReLU (none after the last), and a sigmoid.
    Output padding is derived so that the output is exactly ``image_shape``.

    Parameters
    ----------
    image_shape, n_components, channels, kernel_sizes, hidden_size
        As for :class:`ConvEncoder`.

    Notes
    -----
    ``forward(z)`` returns flat models of shape ``(batch, n_rows * n_cols)``
    in C order, values in [0, 1].
    """

    def __init__(self, image_shape, n_components, channels=REFERENCE_CHANNELS,
                 kernel_sizes=REFERENCE_KERNEL_SIZES, hidden_size=REFERENCE_HIDDEN_SIZE):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        geometry = conv_geometry(self.image_shape, kernel_sizes)
        channels = [int(c) for c in channels]
        self.map_shape = (channels[-1],) + tuple(geometry[-1]["out_shape"])
        flat = int(math.prod(self.map_shape))
        self.fc = nn.Sequential(
            nn.Linear(int(n_components), int(hidden_size)),
            nn.Linear(int(hidden_size), flat),
            nn.ReLU(),
        )
        layers = []
        in_channels = channels[::-1]
        out_channels = channels[::-1][1:] + [1]
        for i, (g, k, cin, cout) in enumerate(
            zip(geometry[::-1], list(kernel_sizes)[::-1], in_channels, out_channels)
        ):
            conv = _ConvTranspose2dToOneChannel if cout == 1 else nn.ConvTranspose2d
            layers.append(conv(cin, cout, kernel_size=int(k), stride=_STRIDE, padding=g["padding"],
                               output_padding=g["output_padding"], bias=False))
            if i < len(geometry) - 1:
                layers += [_norm(cout, g["in_shape"]), nn.ReLU()]
        layers.append(nn.Sigmoid())
        self.deconv = nn.Sequential(*layers)

    @property
    def n_cells(self) -> int:
        """Cells of one model (``n_rows * n_cols``)."""
        return self.image_shape[0] * self.image_shape[1]

    #: The frozen CPU float32 path (see :meth:`forward`); a switch for benchmarks and tests only.
    fast_frozen_path = True
    #: On that path, the compiled core's channels-last kernels (:mod:`latentinv.nn.native`) where they
    #: take the network; a switch for benchmarks and tests only.
    native_cpu_kernels = True
    #: On that path, the two fully-connected layers as one affine map (see :func:`_composed_fc`); a
    #: switch for benchmarks and tests only.
    compose_fc = True
    #: Off that path (CUDA; or ``fast_frozen_path = False``), for a decoder that is a constant for
    #: autograd: the transposed convolutions on channels-last maps with channels-last copies of their
    #: weights (``layout_channels_last``), each instance norm + ReLU as group norm with one group per
    #: channel + an in-place ReLU (``layout_group_norm``), the last layer (to one channel) as the CPU
    #: runs it, one product to the kernel's taps and their sum into the image (``layout_fold_last``);
    #: see :func:`_frozen_deconv`. All off until a GPU run shows which one cuDNN runs fastest
    #: (``benchmarks/bench_inversion.py --layouts``); switches (class or instance attributes) for
    #: benchmarks and tests.
    layout_channels_last = False
    layout_group_norm = False
    layout_fold_last = False
    #: Off that path too: each instance norm + ReLU as kernels generated by ``torch.compile``
    #: (:mod:`latentinv.nn.fused`: one reduction and one pointwise kernel each way, instead of torch's
    #: batch-norm kernels and a separate ReLU); before ``layout_group_norm`` where both are on.
    layout_fused_norm = False
    #: Off that path too: the two fully-connected layers as one affine map (:func:`_composed_fc`, as the
    #: CPU's path runs them): one product of 20 to 3072 instead of 20 to 512 to 3072 each way.
    layout_compose_fc = False
    #: the names ``x`` of the switches ``layout_x`` above (benchmarks and reproduce_paper.py's --layout)
    LAYOUT_SWITCHES = ("channels_last", "group_norm", "fold_last", "subpixel", "fused_norm", "compose_fc")
    #: Off that path too: each transposed convolution (but a folded last layer) as one stride-1
    #: convolution of its phases' sub-kernels and an interleave (:mod:`latentinv.nn.subpixel`), so
    #: that forward and backward run cuDNN's stride-1 kernels instead of its backward-data kernels, for
    #: 1.59 times the arithmetic. Layers with a bias, groups or dilation (none in this decoder) would run
    #: as the other switches say.
    layout_subpixel = False

    def forward(self, z):
        """Map latents ``(batch, n_components)`` to flat models ``(batch, n_cells)``.

        When the decoder is a constant for autograd (no parameter asks for a gradient, or
        ``torch.no_grad``: a fitted prior in an inversion) on the CPU, its transposed convolutions run
        channels-last with the compiled core's kernels for the instance norms + ReLU and the last layer
        (:mod:`latentinv.nn.native`), in float32, or under bfloat16 autocast with the convolutions in
        bfloat16 and the kernels in float32. Where those kernels do not apply (no compiled core,
        channels not a multiple of 16, rows wider than 128 columns, ``native_cpu_kernels = False``),
        float32 outside autocast runs each instance norm + ReLU as ``group_norm`` with one group per
        channel (the same normalisation) and an in-place ReLU; other cases take the modules as they
        are. On that path the two fully-connected layers, which have no activation between them, run
        as one affine map (:func:`_composed_fc`). Values agree with the modules to float32 round-off,
        not bit for bit; training (parameters asking for gradients) takes the modules as they are.
        """
        frozen = self.fast_frozen_path and _frozen_cpu(self, z)
        compose = self.compose_fc if frozen else self.layout_compose_fc and native.constant_for_autograd(self)
        h = _composed_fc(self.fc, z, self.map_shape) if compose else None
        if h is None:
            h = self.fc(z).reshape((z.shape[0],) + self.map_shape)
        if frozen:
            bfloat16 = autocast_enabled("cpu")
            out = None
            if self.native_cpu_kernels and (not bfloat16 or bfloat16_autocast("cpu")):
                out = native.frozen_deconv(self.deconv, h.float(), bfloat16=bfloat16)
            if out is not None:
                return out.reshape(z.shape[0], self.n_cells)
            h = h.contiguous()       # the composed map is channels-last; the paths below run NCHW
            if not bfloat16:
                return _frozen_deconv(self.deconv, h).reshape(z.shape[0], self.n_cells)
        elif (self.layout_channels_last or self.layout_group_norm or self.layout_fold_last
              or self.layout_subpixel or self.layout_fused_norm) and native.constant_for_autograd(self):
            return _frozen_deconv(self.deconv, h, group_norm=self.layout_group_norm,
                                  channels_last=self.layout_channels_last, fold_last=self.layout_fold_last,
                                  subpixel=self.layout_subpixel,
                                  fused_norm=self.layout_fused_norm).reshape(z.shape[0], self.n_cells)
        return self.deconv(h).reshape(z.shape[0], self.n_cells)


def _frozen_cpu(module: nn.Module, x: torch.Tensor) -> bool:
    """True when ``module`` is a constant for autograd and ``x`` a CPU tensor, float32 outside autocast
    or under CPU autocast."""
    if x.device.type != "cpu":
        return False
    if x.dtype != torch.float32 and not autocast_enabled("cpu"):
        return False
    return native.constant_for_autograd(module)


def _composed_fc(fc: nn.Sequential, z: torch.Tensor, map_shape) -> torch.Tensor | None:
    """``fc(z)`` reshaped to ``(batch,) + map_shape`` for ``fc = (Linear, Linear, ReLU)``, as one affine
    map ``relu(z W^T + b)`` with ``W = W2 W1`` and ``b = W2 b1 + b2`` (composed in float64 once and
    kept on the module until a weight changes); None for another ``fc``.

    The hidden layer of 512 units has no activation, so the composition is exact algebra: it removes
    the 20 -> 512 -> 3072 products (3.2 MFLOP of the reference decoder's 84 per model and direction)
    and leaves a 20 -> 3072 one. The rows of ``W`` are ordered (row, column, channel), so the map comes
    out channels-last, as the transposed convolutions take it (no reorder); float32 round-off differs
    from the two products.
    """
    mods = list(fc)
    if not (len(mods) == 3 and isinstance(mods[0], nn.Linear) and isinstance(mods[1], nn.Linear)
            and isinstance(mods[2], nn.ReLU) and len(map_shape) == 3 and z.dim() == 2):
        return None
    first, second = mods[0], mods[1]

    def compose():
        with torch.no_grad():
            w1, w2 = first.weight.double(), second.weight.double()
            weight = w2 @ w1
            bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
            if first.bias is not None:
                bias = bias + w2 @ first.bias.double()
            if second.bias is not None:
                bias = bias + second.bias.double()
            c, h, w = map_shape
            order = torch.arange(c * h * w, device=weight.device).reshape(c, h, w).permute(1, 2, 0).reshape(-1)
            dtype = first.weight.dtype
            return weight[order].to(dtype).contiguous(), bias[order].to(dtype).contiguous()

    tensors = [t for t in (first.weight, first.bias, second.weight, second.bias) if t is not None]
    weight, bias = native.cached_on(fc, "_latentinv_composed", tensors, compose)
    c, h, w = map_shape
    out = nn.functional.linear(z, weight, bias).relu_()
    return out.reshape(z.shape[0], h, w, c).permute(0, 3, 1, 2)


def _frozen_deconv(layers: nn.Sequential, h: torch.Tensor, group_norm: bool = True,
                   channels_last: bool = False, fold_last: bool = False, subpixel: bool = False,
                   fused_norm: bool = False) -> torch.Tensor:
    """``layers(h)`` for frozen layers. ``group_norm``: each (instance norm, ReLU) pair as group norm
    (one group per channel) and an in-place ReLU; group norm's backward needs its input and
    statistics, not its output, so the ReLU may overwrite that output; under bfloat16 autocast it runs
    in bfloat16 (autocast would run it in float32, with a cast of the map before and after it and of
    the gradients in the backward; the next convolution takes bfloat16 anyway, so its output loses
    nothing). ``channels_last``: each transposed convolution on a channels-last map (an instance norm,
    which returns NCHW, costs a copy back; group norm keeps the layout) with a channels-last copy of
    its weight, cached on the layer
    (under bfloat16 autocast, a bfloat16 copy: no cast at each call). ``fold_last``: the
    transposed convolution to one channel through :class:`_OneChannelConvTransposeFunction` on any
    device (under bfloat16 autocast, its product in bfloat16 and its sum in float32). ``subpixel``:
    the other transposed convolutions as one stride-1 convolution and an interleave
    (:mod:`latentinv.nn.subpixel`; its stacked sub-kernels cached on the layer, channels-last with
    ``channels_last``). ``fused_norm``: each (instance norm, ReLU) pair through
    :func:`latentinv.nn.fused.norm_relu` (compiled kernels; before ``group_norm``). Other modules as
    they are."""
    mods: list[Any] = list(layers)      # a Module's attributes are typed Tensor | Module
    device = h.device.type
    low = bfloat16_autocast(device)
    weight_dtype = torch.bfloat16 if low else h.dtype      # of the channels-last weights' cached copies
    i = 0
    while i < len(mods):
        mod = mods[i]
        norm_pair = (native.plain_instance_norm(mod) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                     and h.dim() == 4 and h.shape[2] * h.shape[3] > 1)
        if fused_norm and norm_pair:
            h = _fused.norm_relu(h, mod.eps)
            i += 2
            continue
        if group_norm and norm_pair:
            if low:     # in bfloat16 (the kernel accumulates its statistics in float32), outside autocast
                with torch.autocast(device, enabled=False):
                    h = nn.functional.group_norm(h.to(torch.bfloat16), h.shape[1], eps=mod.eps).relu_()
            else:
                h = nn.functional.group_norm(h, h.shape[1], eps=mod.eps).relu_()
            i += 2
            continue
        if fold_last and _foldable(mod, h, low):
            h = _OneChannelConvTransposeFunction.apply((h.to(torch.bfloat16) if low else h).contiguous(),
                                                       mod.weight, mod.stride, mod.padding, mod.output_padding,
                                                       low)
        elif ((subpixel and _subpixel.applies(mod))
              or (channels_last and isinstance(mod, nn.ConvTranspose2d) and mod.padding_mode == "zeros")):
            if channels_last:
                h = h.contiguous(memory_format=torch.channels_last)     # no copy where it is NHWC already
            if subpixel and _subpixel.applies(mod):
                h = _subpixel.conv_transpose(h, mod, _subpixel.phase_weight(mod, weight_dtype, channels_last))
            else:
                h = nn.functional.conv_transpose2d(h, native.channels_last_weight(mod, weight_dtype), mod.bias,
                                                   mod.stride, mod.padding, mod.output_padding, mod.groups,
                                                   mod.dilation)
        else:
            h = mod(h)
        i += 1
    return h


def _foldable(mod: nn.Module, h: torch.Tensor, low: bool) -> bool:
    """Whether :class:`_OneChannelConvTransposeFunction` computes ``mod(h)`` (``low``: under bfloat16
    autocast, where ``h`` is cast to bfloat16 first)."""
    return (isinstance(mod, nn.ConvTranspose2d) and mod.out_channels == 1 and mod.bias is None and mod.groups == 1
            and mod.dilation == (1, 1) and mod.padding_mode == "zeros" and h.dim() == 4
            and mod.weight.dtype == torch.float32 and (h.dtype == torch.float32 or low))


def _mlp(sizes, final_activation=None):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Fully-connected encoder for vector data (e.g. the paper's 2-D "eight" toy).

    Parameters
    ----------
    n_features : int
        Input dimension.
    n_components : int
        Latent dimension.
    hidden_size : int, default=64
        Width of the two hidden layers (ReLU).
    """

    def __init__(self, n_features, n_components, hidden_size=64):
        super().__init__()
        self.n_features = int(n_features)
        self.body = _mlp([self.n_features, int(hidden_size), int(hidden_size)], nn.ReLU())
        self.fc_mu = nn.Linear(int(hidden_size), int(n_components))
        self.fc_logvar = nn.Linear(int(hidden_size), int(n_components))

    def forward(self, x):
        """Return ``(mu, logvar)`` for flat inputs ``(batch, n_features)``."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.n_features:
            raise ValueError(
                f"MLPEncoder: expected input with {self.n_features} features; got {x.shape[1]}."
            )
        h = self.body(x)
        return self.fc_mu(h), self.fc_logvar(h)


class MLPDecoder(nn.Module):
    """Fully-connected decoder, mirror of :class:`MLPEncoder`.

    Parameters
    ----------
    n_features, n_components, hidden_size
        As for :class:`MLPEncoder`.
    output_activation : {"sigmoid", "identity"}, default="sigmoid"
        Sigmoid for data in [0, 1] (binary images); identity for unbounded data.
    """

    def __init__(self, n_features, n_components, hidden_size=64, output_activation="sigmoid"):
        super().__init__()
        if output_activation not in ("sigmoid", "identity"):
            raise ValueError(
                f"MLPDecoder: output_activation must be 'sigmoid' or 'identity'; "
                f"got {output_activation!r}."
            )
        final = nn.Sigmoid() if output_activation == "sigmoid" else None
        self.body = _mlp([int(n_components), int(hidden_size), int(hidden_size), int(n_features)], final)

    def forward(self, z):
        """Map latents ``(batch, n_components)`` to ``(batch, n_features)``."""
        return self.body(z)


class VAE(nn.Module):
    """Variational autoencoder: an encoder, a decoder and the reparameterisation.

    Parameters
    ----------
    encoder : nn.Module
        ``encoder(x) -> (mu, logvar)``.
    decoder : nn.Module
        ``decoder(z) -> x_hat`` (flat, ``(batch, n_features)``).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x):
        """Latent mean and log-variance ``(mu, logvar)`` of ``x``."""
        return self.encoder(x)

    def decode(self, z):
        """Mean decoder (no noise): flat models ``(batch, n_features)``."""
        return self.decoder(z)

    @staticmethod
    def reparameterise(mu, logvar, alpha=1.0, generator=None, eps=None):
        """Draw ``z = mu + sqrt(alpha) * exp(logvar / 2) * eps``, eps ~ N(0, I), eq. (1).

        ``alpha = 1`` is the usual VAE, ``alpha = 0`` returns ``mu`` exactly
        (deterministic autoencoder) without drawing any random number. ``eps``: the draw given
        (a step replayed from a CUDA graph draws it outside), None: drawn from ``generator``.
        """
        if alpha == 0:
            return mu
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + math.sqrt(alpha) * torch.exp(0.5 * logvar) * eps

    reparameterize = reparameterise

    def forward(self, x, alpha=1.0, generator=None):
        """Return ``(x_hat, mu, logvar)`` with ``z`` drawn by eq. (1)."""
        mu, logvar = self.encode(x)
        z = self.reparameterise(mu, logvar, alpha=alpha, generator=generator)
        return self.decode(z), mu, logvar


class LatentDecoder(nn.Module):
    """Batch-size agnostic view ``z -> flat model`` of any module with ``decode``.

    ``forward(z)`` returns ``module.decode(z)`` reshaped to ``(batch, n_features)``.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z):
        return self.module.decode(z).reshape(z.shape[0], -1)


def kl_divergence(mu, logvar, reduction="mean"):
    """KL divergence of N(mu, exp(logvar)) from N(0, I), eq. (3).

    Parameters
    ----------
    mu, logvar : torch.Tensor of shape (batch, n_components)
        Latent mean and log-variance.
    reduction : {"mean", "sum", "per_sample", "none"}, default="mean"
        ``"mean"``: averaged over batch *and* latent dimensions (the reference
        convention of eq. (2)); ``"sum"``: summed over both; ``"per_sample"``:
        summed over latent dimensions, shape ``(batch,)``; ``"none"``:
        elementwise.
    """
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    if reduction == "per_sample":
        return kl.reshape(kl.shape[0], -1).sum(dim=1)
    if reduction == "none":
        return kl
    raise ValueError(
        f"kl_divergence: reduction must be 'mean', 'sum', 'per_sample' or 'none'; got {reduction!r}."
    )


def vae_loss(x_hat, x, mu, logvar, beta=1000.0):
    """Training loss of the reference implementation, eq. (2).

    Parameters
    ----------
    x_hat, x : torch.Tensor of shape (batch, n_features)
        Reconstruction and data (any shape with matching number of elements).
    mu, logvar : torch.Tensor of shape (batch, n_components)
    beta : float, default=1000.0
        Weight of the KL term averaged over batch and latent dimensions; the
        per-sample equivalent is ``beta / (batch * n_components)``, eq. (4).

    Returns
    -------
    loss, reconstruction, kl : torch.Tensor (scalars)
        ``reconstruction`` is the squared error summed over batch and pixels,
        ``kl`` the KL averaged over batch and latent dimensions.
    """
    reconstruction = (x_hat.reshape(x.shape) - x).pow(2).sum()
    kl = kl_divergence(mu, logvar, reduction="mean")
    return reconstruction + beta * kl, reconstruction, kl


Factory = Callable[..., nn.Module]


#: held while torch's global CPU RNG is forked and seeded to build a network (here and in SGANPrior):
#: ``torch.random.fork_rng`` saves and restores one process-wide state, so two threads building at once drew
#: from each other's seeds (other weights than the same seed builds alone) and left the caller's state changed
_GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def forked_global_rng(seed=None):
    """torch's global CPU RNG seeded with ``seed`` (None: as it is) inside the block and restored after it,
    one thread of the process at a time (:data:`_GLOBAL_RNG_LOCK`)."""
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def build_vae(architecture: Union[str, Factory], input_shape, n_components, *,
              channels=REFERENCE_CHANNELS, kernel_sizes=REFERENCE_KERNEL_SIZES,
              hidden_size=REFERENCE_HIDDEN_SIZE, output_activation="sigmoid", seed=None):
    """Build a VAE module, initialised deterministically from ``seed``.

    Parameters
    ----------
    architecture : {"conv", "mlp"} or callable
        ``"conv"``: :class:`ConvEncoder`/:class:`ConvDecoder` (``input_shape``
        must be ``(n_rows, n_cols)``); ``"mlp"``: :class:`MLPEncoder`/
        :class:`MLPDecoder` (``input_shape`` an int or a tuple, flattened);
        a callable ``factory(input_shape, n_components) -> nn.Module`` whose
        module has ``encode(x) -> (mu, logvar)`` and ``decode(z) -> x``.
    input_shape : int or tuple of int
    n_components : int
    channels, kernel_sizes, hidden_size, output_activation
        Architecture parameters of the built-in modules.
    seed : int or None
        Initialisation seed. The module is built under
        :func:`torch.random.fork_rng`, so torch's global RNG is left unchanged, and one build at a
        time in the process: builds in several threads at once give the weights of the same builds
        in turn (a draw from torch's global RNG in another thread meanwhile is not covered).

    Returns
    -------
    module : nn.Module
        On the CPU, float32, in training mode.
    """
    with forked_global_rng(seed):
        if callable(architecture):
            module = architecture(input_shape, n_components)
            missing = [m for m in ("encode", "decode") if not callable(getattr(module, m, None))]
            if not isinstance(module, nn.Module) or missing:
                raise TypeError(
                    "build_vae: the architecture factory must return an nn.Module with "
                    f"encode(x) -> (mu, logvar) and decode(z) -> x methods; got "
                    f"{type(module).__name__} (missing {missing})."
                )
        elif architecture == "conv":
            if not (isinstance(input_shape, tuple) and len(input_shape) == 2):
                raise ValueError(
                    f"build_vae: architecture='conv' needs input_shape=(n_rows, n_cols); "
                    f"got {input_shape!r}."
                )
            module = VAE(
                ConvEncoder(input_shape, n_components, channels, kernel_sizes, hidden_size),
                ConvDecoder(input_shape, n_components, channels, kernel_sizes, hidden_size),
            )
        elif architecture == "mlp":
            n_features = int(math.prod(input_shape)) if isinstance(input_shape, tuple) else int(input_shape)
            module = VAE(
                MLPEncoder(n_features, n_components, hidden_size),
                MLPDecoder(n_features, n_components, hidden_size, output_activation),
            )
        else:
            raise ValueError(
                f"build_vae: architecture must be 'conv', 'mlp' or a callable; got {architecture!r}."
            )
    return module.float()
