"""A strided transposed convolution as one stride-1 convolution and an interleave ("sub-pixel").

With stride ``s`` and kernel ``k`` (per axis), output row ``s q + r`` of a transposed convolution
(before its padding is cropped) only takes the taps ``w[s j + r]``, ``j = 0 ... J - 1`` with
``J = ceil(k / s)``:

    y[s q + r] = sum_j x[q - j] w[s j + r]        (taps beyond ``k`` are zero)

so each of the ``s1 * s2`` output phases ``(r1, r2)`` is a stride-1 convolution of ``x`` with a
``J1 x J2`` sub-kernel. Stacked as output channels, the phases are one ``conv2d`` (cross-correlation,
so the sub-kernels are flipped, with ``J - 1`` zeros padded on each side); the phases are then
interleaved into the output and its padding cropped. Forward and backward are then stride-1
convolutions, the kind of kernel GPU libraries tune most; strided transposed convolutions run as a
convolution's backward-data kernel instead. The price: more arithmetic, from the taps padded with
zeros where ``k`` is not a multiple of ``s`` (a 5 x 5 kernel of stride 2: 36 taps for 25) and from the
phases' full ``(h + J - 1) x (w + J - 1)`` grids, whose borders multiply the padding (a layer's factor is
``(h + J1 - 1)(w + J2 - 1) s1 s2 J1 J2 / (h w k1 k2)``: 1.25-1.76 for the paper's decoder, whose forward
goes from 84 to 133 MFLOP per model, by 1.59, its backward likewise; ``torch.utils.flop_counter``); and
the interleave, a copy of the output. Layers with a bias, groups or dilation are not taken
(:func:`applies`).
"""
from __future__ import annotations

import math
from typing import Tuple, cast

import torch
from torch import nn

from . import native


def applies(conv: nn.Module) -> bool:
    """Whether :func:`conv_transpose` computes ``conv``: a ``ConvTranspose2d`` without groups, dilation
    or bias, zero-padded."""
    return (isinstance(conv, nn.ConvTranspose2d) and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.bias is None and conv.padding_mode == "zeros")


def phase_weight(conv: nn.ConvTranspose2d, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    """The phases' stacked sub-kernels ``(c_out * s1 * s2, c_in, J1, J2)`` of ``conv``'s weight
    ``(c_in, c_out, k1, k2)``, channel ``(c, r1, r2)`` flipped for cross-correlation; cached on the layer
    (rebuilt when the weight changes), in ``dtype`` and, with ``channels_last``, that memory order."""
    w = conv.weight

    def build():
        (s1, s2), (k1, k2) = conv.stride, conv.kernel_size
        j1, j2 = math.ceil(k1 / s1), math.ceil(k2 / s2)
        c_in, c_out = w.shape[:2]
        padded = torch.zeros(c_in, c_out, j1 * s1, j2 * s2, dtype=w.dtype, device=w.device)
        padded[:, :, :k1, :k2] = w.detach()
        # tap (s j + r) -> (j, r); flip j; order the output channels (c, r1, r2)
        taps = padded.reshape(c_in, c_out, j1, s1, j2, s2).flip(2, 4)
        stacked = taps.permute(1, 3, 5, 0, 2, 4).reshape(c_out * s1 * s2, c_in, j1, j2).to(dtype)
        return stacked.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return native.cached_on(conv, "_latentinv_phase_weight", [w], build, dtype, channels_last)


def conv_transpose(x: torch.Tensor, conv: nn.ConvTranspose2d, weight: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for ``x`` (N, c_in, H, W) from :func:`phase_weight`'s ``weight``: one convolution, the
    phases interleaved, the padding cropped. A channels-last ``x`` gives a channels-last output."""
    (s1, s2), (k1, k2) = conv.stride, conv.kernel_size
    j1, j2 = weight.shape[2:]
    n, _, h, w = x.shape
    c_out = weight.shape[0] // (s1 * s2)
    y = nn.functional.conv2d(x, weight, padding=(j1 - 1, j2 - 1))     # (N, c_out s1 s2, h + j1 - 1, w + j2 - 1)
    hp, wp = y.shape[2:]
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        # NHWC memory: (N, hp, wp, c, r1, r2) -> (N, hp, r1, wp, r2, c), laid out channels-last again
        y = y.permute(0, 2, 3, 1).reshape(n, hp, wp, c_out, s1, s2).permute(0, 1, 4, 2, 5, 3)
        y = y.reshape(n, hp * s1, wp * s2, c_out).contiguous().permute(0, 3, 1, 2)    # a view where sizes are 1
    else:
        y = y.reshape(n, c_out, s1, s2, hp, wp).permute(0, 1, 4, 2, 5, 3).reshape(n, c_out, hp * s1, wp * s2)
    p1, p2 = cast(Tuple[int, int], conv.padding)     # a transposed convolution's is never a string
    out_h = (h - 1) * s1 - 2 * p1 + k1 + conv.output_padding[0]
    out_w = (w - 1) * s2 - 2 * p2 + k2 + conv.output_padding[1]
    # rows past the full output (s (h - 1) + k) are zeros: an output_padding may reach beyond the phases
    short_h, short_w = max(0, p1 + out_h - hp * s1), max(0, p2 + out_w - wp * s2)
    if short_h or short_w:
        y = nn.functional.pad(y, (0, short_w, 0, short_h))
    return y[:, :, p1:p1 + out_h, p2:p2 + out_w]
