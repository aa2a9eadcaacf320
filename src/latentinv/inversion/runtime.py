"""Devices and threads of the engine."""
from __future__ import annotations

import contextlib

import torch


def resolve_device(device, owner="LatentInverter"):
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a torch device."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not (isinstance(device, str) and device.startswith("cuda:")):
        raise ValueError(f"{owner}: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{owner}: device={device!r} but CUDA is not available")
    return torch.device(device)


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
