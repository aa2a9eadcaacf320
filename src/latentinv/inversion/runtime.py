"""Threads of the engine (devices: ``latentinv._common._resolve_device``, shared with the priors)."""
from __future__ import annotations

import contextlib

import torch


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
