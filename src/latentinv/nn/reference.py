"""Parameter layout of the paper's published VAE (github.com/jlalvis/VAE_SGD, ``VAE/autoencoder_in.py``).

The published network and latentinv's ``"conv"`` architecture with the reference settings
(channels (32, 64, 128, 256), kernels (5, 5, 4, 4), hidden 512, images 129 x 65) compute the same
function; only the parameter names differ:

=========================  ==================================  ===========================
published key              latentinv "conv" key                role
=========================  ==================================  ===========================
``encoder.0/3/6/9.weight`` ``encoder.conv.0/3/6/9.weight``     strided convolutions, no bias
``encoder.13.*``           ``encoder.fc.1.*``                  Linear(3072, 512) + ReLU
``fc1.*`` / ``fc2.*``      ``encoder.fc_mu.*`` / ``fc_logvar`` latent mean / log-variance
``fc3.*``                  ``decoder.fc.0.*``                  Linear(d, 512), no activation
``decoder.0.*``            ``decoder.fc.1.*``                  Linear(512, 3072) + ReLU
``decoder.3/6/9/12.weight````decoder.deconv.0/3/6/9.weight``   transposed convolutions, no bias
=========================  ==================================  ===========================

Both use instance normalisation without affine parameters or running statistics (no entries in
the state dict), ReLU, stride-2 unpadded convolutions (for 129 x 65 every padding and output
padding of :func:`~latentinv.nn.vae.conv_geometry` is zero, and the flattened map is 256 x 6 x 2)
and a sigmoid output. This module only renames and checks tensors; it imports torch only.
"""

from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["PUBLISHED_IMAGE_SHAPE", "PUBLISHED_N_COMPONENTS", "published_key_map",
           "published_shapes", "convert_published_state_dict"]

#: ``(n_rows, n_cols)`` of the published network's images (its ``UnFlatten`` is hard-wired to 256 x 6 x 2).
PUBLISHED_IMAGE_SHAPE = (129, 65)
#: Latent dimension of the published network (``z_dim``).
PUBLISHED_N_COMPONENTS = 20

_CONV = [(32, 1, 5), (64, 32, 5), (128, 64, 4), (256, 128, 4)]   # (out, in, kernel) of the encoder


def published_key_map():
    """Published key -> latentinv ``"conv"`` key (reference settings), in the published order."""
    mapping = {}
    for i, idx in enumerate((0, 3, 6, 9)):
        mapping[f"encoder.{idx}.weight"] = f"encoder.conv.{3 * i}.weight"
    mapping.update({
        "encoder.13.weight": "encoder.fc.1.weight", "encoder.13.bias": "encoder.fc.1.bias",
        "fc1.weight": "encoder.fc_mu.weight", "fc1.bias": "encoder.fc_mu.bias",
        "fc2.weight": "encoder.fc_logvar.weight", "fc2.bias": "encoder.fc_logvar.bias",
        "fc3.weight": "decoder.fc.0.weight", "fc3.bias": "decoder.fc.0.bias",
        "decoder.0.weight": "decoder.fc.1.weight", "decoder.0.bias": "decoder.fc.1.bias",
    })
    for i, idx in enumerate((3, 6, 9, 12)):
        mapping[f"decoder.{idx}.weight"] = f"decoder.deconv.{3 * i}.weight"
    return mapping


def published_shapes(n_components=PUBLISHED_N_COMPONENTS):
    """Published key -> tensor shape, for latent dimension ``n_components``."""
    d = int(n_components)
    shapes = {}
    for (out_ch, in_ch, k), idx in zip(_CONV, (0, 3, 6, 9)):
        shapes[f"encoder.{idx}.weight"] = (out_ch, in_ch, k, k)
    flat = 256 * 6 * 2
    shapes.update({
        "encoder.13.weight": (512, flat), "encoder.13.bias": (512,),
        "fc1.weight": (d, 512), "fc1.bias": (d,), "fc2.weight": (d, 512), "fc2.bias": (d,),
        "fc3.weight": (512, d), "fc3.bias": (512,),
        "decoder.0.weight": (flat, 512), "decoder.0.bias": (flat,),
    })
    # transposed convolutions: weight (in, out, k, k), the encoder's in reverse
    for (out_ch, in_ch, k), idx in zip(_CONV[::-1], (3, 6, 9, 12)):
        shapes[f"decoder.{idx}.weight"] = (out_ch, in_ch, k, k)
    return shapes


def convert_published_state_dict(state: Mapping, source="state dict"):
    """Check a published state dict key by key and rename it for latentinv's ``"conv"`` module.

    Parameters
    ----------
    state : mapping of str to torch.Tensor
        ``torch.load`` of ``VAE/VAE_inMSEeps100r1e3.pth`` (or any state dict of the published module).
    source : str
        Name of the file, for error messages.

    Returns
    -------
    converted : dict of str to torch.Tensor
        float32 CPU tensors under latentinv's key names.
    n_components : int
        Latent dimension, read from ``fc1.weight`` (20 for the published file).

    Raises
    ------
    ValueError
        Not a mapping of names to tensors, missing or unexpected keys, a wrong shape, or a tensor
        that is not floating point; the message names ``source`` and every offending key.
    """
    check_tensor_mapping(state, source, "the published VAE")
    fc1 = state.get("fc1.weight")
    n_components = int(fc1.shape[0]) if fc1 is not None and fc1.dim() == 2 else PUBLISHED_N_COMPONENTS
    converted = convert_published_tensors(
        state, published_shapes(n_components), published_key_map(), source,
        layout="VAE layout (VAE/autoencoder_in.py)",
        network=f"VAE (129 x 65 images, {n_components} latents)")
    return converted, n_components


def check_tensor_mapping(state, source, what):
    """ValueError unless ``state`` is a mapping of names to tensors (``what``: the expected network)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping of parameter names to tensors) of "
                         f"{what}; got {type(state).__name__}.")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{source}: expected a state dict of tensors; the entries {not_tensors[:5]} are "
                         f"{[type(state[k]).__name__ for k in not_tensors[:5]]}.")


def convert_published_tensors(state, expected, mapping, source, *, layout, network):
    """Check a published state dict against its ``expected`` key -> shape layout (exactly those keys,
    those shapes, finite floating-point tensors) and rename it by ``mapping``: float32 CPU tensors.
    ``layout`` and ``network`` name the published code in the messages."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{source}: not the published {layout}: missing keys {missing}, unexpected "
                         f"keys {unexpected}.")
    wrong = [f"{k}: expected {expected[k]}, got {tuple(state[k].shape)}"
             for k in expected if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise ValueError(f"{source}: tensor shapes differ from the published {network}: "
                         + "; ".join(wrong) + ".")
    bad_dtype = [f"{k}: {state[k].dtype}" for k in expected if not state[k].is_floating_point()]
    if bad_dtype:
        raise ValueError(f"{source}: expected floating-point tensors; got " + "; ".join(bad_dtype) + ".")
    not_finite = [k for k in expected if not bool(torch.isfinite(state[k]).all())]
    if not_finite:
        raise ValueError(f"{source}: the tensors {not_finite} hold NaN or infinite values.")
    largest = torch.finfo(torch.float32).max
    too_large = [(k, float(state[k].detach().abs().max())) for k in expected
                 if not bool(torch.isfinite(state[k].detach().float()).all())]
    if too_large:       # finite in the file's float64, infinite once cast to float32
        raise ValueError(f"{source}: " + "; ".join(f"tensor {k} holds values up to {m:.3g} in magnitude"
                                                   for k, m in too_large[:3])
                         + f", beyond float32's largest ({largest:.3g}): they overflow to infinity when cast to "
                           f"float32, in which the network computes.")
    return {mapping[k]: state[k].detach().to(device="cpu", dtype=torch.float32).contiguous()
            for k in expected}
