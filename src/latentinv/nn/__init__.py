"""Torch building blocks of latentinv (no scikit-learn here).

See :mod:`latentinv.nn.vae` for the VAE prior's encoder, decoder and loss, and
:mod:`latentinv.nn.reference` for the parameter layout of the paper's published VAE.
"""

from .vae import (
    REFERENCE_CHANNELS,
    REFERENCE_HIDDEN_SIZE,
    REFERENCE_KERNEL_SIZES,
    VAE,
    ConvDecoder,
    ConvEncoder,
    LatentDecoder,
    MLPDecoder,
    MLPEncoder,
    build_vae,
    conv_geometry,
    kl_divergence,
    vae_loss,
)
from .reference import convert_published_state_dict, published_key_map


__all__ = [
    "ConvEncoder",
    "ConvDecoder",
    "MLPEncoder",
    "MLPDecoder",
    "VAE",
    "LatentDecoder",
    "build_vae",
    "conv_geometry",
    "kl_divergence",
    "vae_loss",
    "REFERENCE_CHANNELS",
    "REFERENCE_KERNEL_SIZES",
    "REFERENCE_HIDDEN_SIZE",
    "published_key_map",
    "convert_published_state_dict",
]
