"""Torch building blocks of latentinv (no scikit-learn here).

See :mod:`latentinv.nn.vae` for the VAE prior's encoder, decoder and loss.
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
]
