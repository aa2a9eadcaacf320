"""The frozen convolutional decoder on the CPU through the compiled core's kernels (float32; under
bfloat16 autocast, the transposed convolutions in bfloat16 and the kernels in float32).

A fitted decoder is a constant for autograd (its parameters are frozen; an inversion asks for the
gradient with respect to the latents only). Its CPU pass then runs channels-last: oneDNN's transposed
convolutions read and write NHWC maps without reordering them (a 100-start pass of the paper's network:
85 against 131 ms for the three hidden transposed convolutions forward and backward, two threads), and
the layers that torch runs slowly on NHWC maps, or that oneDNN runs slowly at all, are the core's
kernels (``cpp/decoder_kernel.hpp``):

- each instance norm + ReLU: one kernel forward (statistics and the normalised, rectified map) and one
  backward (from the input, the statistics and the output gradient);
- the last instance norm + ReLU and the last transposed convolution (C channels to 1, stride 2) as one
  kernel each way: forward, the normalised map goes straight into the planes of a gather over output
  phase rows and is never stored; backward, the input gradient of the convolution stays in a
  per-sample buffer for the norm's backward (each saves a write and a read of a 25 MB map per pass).

The hidden transposed convolutions take their weights channels-last too, converted once per weight
(oneDNN otherwise reorders a weight at every call: 2 ms per pass for the 256 -> 128 layer). A hidden
layer whose input has at most 16 pixels (the paper network's first, on a 6 x 2 map) runs forward as one
GEMM to all its taps and the core's col2im (:class:`_DeconvByGEMM`): oneDNN runs that shape at about
60 % of the GEMM rate (9.1 against 6.3 ms for the GEMM alone, 100 starts, two threads).

Values agree with the modules to float32 round-off (other summation orders, fused multiply-adds), not
bit for bit. A second derivative (``create_graph=True``) goes through torch's own differentiable ops.
Shapes the kernels do not take (channels not a multiple of 16, padding, a last layer wider than 128
columns...) return ``None`` from :func:`frozen_deconv`, and the caller takes the torch path.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Optional, Tuple, cast

import torch
from torch import nn

from .._backend import core

__all__ = ["available", "isa", "openmp_runtime", "frozen_deconv"]


def available() -> bool:
    """Whether the compiled core with the decoder kernels is importable."""
    return core is not None and hasattr(core, "decoder_norm_relu_forward")


_RUNTIME: dict[str, Any] = {"checked": False, "name": None}


def openmp_runtime() -> Optional[str]:
    """Share torch's OpenMP thread pool with the kernels; returns the runtime's name, or None.

    Torch's intra-op workers spin for milliseconds after each operation (libgomp's default wait policy),
    so threads of the kernels' own would share the cores with them (two threads measured no faster than
    one). The kernels take the entry points of the OpenMP runtime this process has already loaded for
    torch (``RTLD_NOLOAD``: nothing new is loaded) and run as a parallel region of torch's own pool;
    where none is found (another platform, a torch without OpenMP), they keep threads of their own.
    ``LATENTINV_KERNEL_THREADS=own`` keeps them so everywhere.
    """
    if _RUNTIME["checked"] or not available():
        return _RUNTIME["name"]
    _RUNTIME["checked"] = True
    if os.environ.get("LATENTINV_KERNEL_THREADS", "") == "own" or not hasattr(os, "RTLD_NOLOAD"):
        return None
    for name in ("libgomp.so.1", "libiomp5.so", "libomp.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            parallel, thread_num = lib.GOMP_parallel, lib.omp_get_thread_num
        except (OSError, AttributeError):
            continue
        core.decoder_set_openmp_runtime(ctypes.cast(parallel, ctypes.c_void_p).value,
                                        ctypes.cast(thread_num, ctypes.c_void_p).value)
        _RUNTIME["name"] = name
        break
    return _RUNTIME["name"]


def isa() -> Optional[str]:
    """The instruction set the kernels run with here ('avx512', 'avx2', 'portable'), None without them."""
    return core.decoder_isa("auto") if available() else None


def _nhwc(t: torch.Tensor):
    """The NumPy view of a channels-last (n, c, h, w) tensor as (n, h, w, c), no copy."""
    return t.detach().permute(0, 2, 3, 1).numpy()


class _NormReLU(torch.autograd.Function):
    """Instance norm (no affine, biased variance) then ReLU of a channels-last map."""

    @staticmethod
    def forward(ctx, x, eps):
        n, c, _, _ = x.shape
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, rstd = torch.empty((n, c)), torch.empty((n, c))
        core.decoder_norm_relu_forward(_nhwc(x), _nhwc(y), mean.numpy(), rstd.numpy(), float(eps),
                                       torch.get_num_threads())
        ctx.save_for_backward(x, mean, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):
        x, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph (a second derivative): the same gradient through torch's differentiable ops,
            # from the saved input itself, so that the result depends on x as well as on g
            out = nn.functional.group_norm(x, x.shape[1], eps=ctx.eps).relu()
            return torch.autograd.grad(out, x, g, create_graph=True)[0], None
        g = g.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        core.decoder_norm_relu_backward(_nhwc(x), _nhwc(g), mean.numpy(), rstd.numpy(), _nhwc(dx),
                                        torch.get_num_threads())
        return dx, None


class _NormReLUDeconv1(torch.autograd.Function):
    """The last block: instance norm + ReLU of a channels-last map, then the transposed convolution to
    one channel (stride 2, no padding, no bias), in one kernel each way (the normalised map is never
    stored, the gradient at it stays in a per-sample buffer)."""

    @staticmethod
    def forward(ctx, x, eps, weight, output_padding):
        n, c, h, wd = x.shape
        k = weight.shape[-1]
        out_h, out_w = 2 * (h - 1) + k + output_padding[0], 2 * (wd - 1) + k + output_padding[1]
        w = weight.detach().reshape(c, k, k).contiguous()
        y = torch.empty((n, 1, out_h, out_w))
        mean, rstd = torch.empty((n, c)), torch.empty((n, c))
        core.decoder_deconv1_forward(_nhwc(x), w.numpy(), y.view(n, out_h, out_w).numpy(), torch.get_num_threads(),
                                     "auto", mean.numpy(), rstd.numpy(), float(eps))
        ctx.save_for_backward(x, mean, rstd, w)
        ctx.conf = (eps, weight, output_padding)
        return y

    @staticmethod
    def backward(ctx, g):
        x, mean, rstd, w = ctx.saved_tensors
        eps, weight, output_padding = ctx.conf
        if torch.is_grad_enabled():          # create_graph: torch's differentiable ops (see _NormReLU)
            h = nn.functional.group_norm(x, x.shape[1], eps=eps).relu()
            out = nn.functional.conv_transpose2d(h, weight, stride=2, output_padding=output_padding)
            return torch.autograd.grad(out, x, g, create_graph=True)[0], None, None, None
        n = x.shape[0]
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        core.decoder_deconv1_backward(g.reshape(n, g.shape[-2], g.shape[-1]).contiguous().numpy(), w.numpy(),
                                      _nhwc(dx), torch.get_num_threads(), "auto", _nhwc(x), mean.numpy(),
                                      rstd.numpy())
        return dx, None, None, None


class _DeconvByGEMM(torch.autograd.Function):
    """A transposed convolution of a channels-last map as one GEMM to every tap, ``(n h w, c_in) @
    (c_in, k_h k_w c_out)``, whose taps are then added into the output (col2im). oneDNN runs the
    decoder's first layer (256 -> 128 channels on a 6 x 2 map) at about 60 % of the GEMM rate; the GEMM
    form runs at the rate, and its adds cost a tenth of that. The backward is the strided convolution
    torch's own backward runs."""

    @staticmethod
    def forward(ctx, x, conv, taps_weight):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        cout = conv.out_channels
        out_h, out_w = _out_size(conv, h, 0), _out_size(conv, w, 1)
        taps = (x.permute(0, 2, 3, 1).reshape(n * h * w, c) @ taps_weight).view(n, h, w, kh, kw, cout)
        out = torch.empty((n, out_h, out_w, cout))
        core.decoder_col2im(taps.numpy(), out.numpy(), [sh, sw], [ph, pw], torch.get_num_threads())
        ctx.save_for_backward(x)
        ctx.conv = conv
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        conv = ctx.conv
        if torch.is_grad_enabled():           # create_graph: torch's differentiable ops
            out = nn.functional.conv_transpose2d(x, conv.weight, None, conv.stride, conv.padding,
                                                 conv.output_padding)
            return torch.autograd.grad(out, x, g, create_graph=True)[0], None, None
        gx = nn.functional.conv2d(g.contiguous(memory_format=torch.channels_last),
                                  channels_last_weight(conv, torch.float32), None, conv.stride, conv.padding)
        return gx, None, None


def _taps_weight(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """The layer's weight as the ``(c_in, k_h k_w c_out)`` matrix of :class:`_DeconvByGEMM`, cached on
    the module (:func:`cached_on`)."""
    w = conv.weight
    return cached_on(conv, "_latentinv_taps_weight", [w],
                     lambda: w.detach().float().permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous())


#: Input maps of at most this many pixels take the GEMM form (:class:`_DeconvByGEMM`) in float32: on
#: larger ones oneDNN's transposed convolution is faster (the taps outgrow the caches).
GEMM_FORM_MAX_PIXELS = 16


def plain_instance_norm(m: nn.Module) -> bool:
    """An ``InstanceNorm2d`` without affine parameters or running statistics (what the kernels compute;
    the decoder's group-norm path relies on it too)."""
    return isinstance(m, nn.InstanceNorm2d) and not m.affine and not m.track_running_stats


def _plain_deconv(m: nn.Module, one_channel: bool) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.bias is None and m.groups == 1
            and m.dilation == (1, 1) and m.padding_mode == "zeros"
            and (not one_channel or (m.out_channels == 1 and m.stride == (2, 2) and m.padding == (0, 0)
                                     and m.kernel_size[0] == m.kernel_size[1] <= 16)))


def _plan(layers: nn.Sequential):
    """The decoder's layers as [(deconv, norm)...] + last deconv, or None when the kernels do not fit."""
    mods: list[Any] = list(layers)      # a Module's attributes are typed Tensor | Module
    if len(mods) < 2 or not isinstance(mods[-1], nn.Sigmoid) or not _plain_deconv(mods[-2], True):
        return None
    blocks, body = [], mods[:-2]
    if len(body) % 3:
        return None
    for i in range(0, len(body), 3):
        conv, norm, act = body[i:i + 3]
        if not (_plain_deconv(conv, False) and plain_instance_norm(norm) and isinstance(act, nn.ReLU)
                and conv.out_channels % 16 == 0):
            return None
        blocks.append((conv, norm))
    return blocks, mods[-2]


def constant_for_autograd(module: nn.Module) -> bool:
    """True when no parameter of ``module`` takes part in autograd here (frozen, or ``torch.no_grad``):
    the decoders' own paths (these kernels, the layout switches) are for such a module only."""
    return not (torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()))


def cached_on(module: nn.Module, slot: str, tensors, build, *extra):
    """``build()``, kept in ``module.__dict__[slot]`` until one of ``tensors`` changes (another tensor,
    or the same one written in place: its version counter moves) or ``extra`` differs."""
    key = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors) + extra
    cached = module.__dict__.get(slot)
    if cached is None or cached[0] != key:
        cached = (key, build())
        module.__dict__[slot] = cached
    return cached[1]


def channels_last_weight(conv: nn.ConvTranspose2d, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight in channels-last memory order and ``dtype``, cached on the module."""
    w = conv.weight
    return cached_on(conv, "_latentinv_channels_last_weight", [w],
                     lambda: w.detach().to(dtype).contiguous(memory_format=torch.channels_last), dtype)


def _out_size(conv: nn.ConvTranspose2d, size: int, axis: int) -> int:
    padding = cast(Tuple[int, int], conv.padding)     # a transposed convolution's is never a string
    return ((size - 1) * conv.stride[axis] - 2 * padding[axis] + conv.kernel_size[axis]
            + conv.output_padding[axis])


def frozen_deconv(layers: nn.Sequential, h: torch.Tensor, bfloat16: bool = False) -> Optional[torch.Tensor]:
    """``layers(h)`` for the decoder's transposed-convolution stack (float32 CPU input, frozen layers),
    or None when the kernels do not take these layers or shapes (the caller then runs them itself).

    ``bfloat16`` (under CPU autocast): the transposed convolutions in bfloat16 (inputs and weights
    rounded to it, as autocast does), the norms and the last layer in float32, as autocast runs
    instance norms; the output is float32.
    """
    plan = _plan(layers) if available() else None
    if plan is None or h.dim() != 4:
        return None
    blocks, last = plan
    width = h.shape[3]
    for conv in [c for c, _ in blocks] + [last]:
        width = _out_size(conv, width, 1)
    if not blocks or width > 128:        # the last layer's kernel takes rows of up to 128 columns
        return None
    openmp_runtime()
    conv_dtype = torch.bfloat16 if bfloat16 else torch.float32
    h = h.to(conv_dtype).contiguous(memory_format=torch.channels_last)
    for i, (conv, norm) in enumerate(blocks):
        if not bfloat16 and h.shape[2] * h.shape[3] <= GEMM_FORM_MAX_PIXELS:
            h = _DeconvByGEMM.apply(h, conv, _taps_weight(conv))
        else:
            h = nn.functional.conv_transpose2d(h, channels_last_weight(conv, conv_dtype), None, conv.stride,
                                               conv.padding, conv.output_padding)
        h = h.float()                    # no copy in float32
        if i < len(blocks) - 1:
            h = _NormReLU.apply(h, norm.eps).to(conv_dtype)
    return torch.sigmoid(_NormReLUDeconv1.apply(h, norm.eps, last.weight, tuple(last.output_padding)))
