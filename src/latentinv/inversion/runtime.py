"""Devices and threads of the engine."""
from __future__ import annotations

import contextlib

import torch

from .._common import _resolve_device


def resolve_device(device, owner="LatentInverter"):
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a torch device.

    The priors' parser, so that every estimator refuses the same specs with the same words (a
    malformed index, or a CUDA device this machine does not have, included).
    """
    return _resolve_device(device, owner)


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
