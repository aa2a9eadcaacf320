"""Autocast's state for one device type, on every torch the package allows (``torch>=2.2``).

``torch.is_autocast_enabled(device_type)`` and ``torch.get_autocast_dtype(device_type)`` are new in
torch 2.4; before, each device type had its own functions (``is_autocast_cpu_enabled``, and for CUDA
the argument-free ``is_autocast_enabled`` with ``get_autocast_gpu_dtype``). The decoders ask this on
every forward, to choose their bfloat16 paths, so the choice of API is made once, at import.
"""

import torch

__all__ = ["autocast_enabled", "bfloat16_autocast"]


def _has_device_type_api(torch_module) -> bool:
    """Whether ``torch_module`` has both functions that take a device type (torch >= 2.4), asked of the
    functions themselves rather than of the version."""
    if not hasattr(torch_module, "get_autocast_dtype"):
        return False
    try:
        torch_module.is_autocast_enabled("cpu")
    except TypeError:       # "takes no arguments (1 given)"
        return False
    return True


_BY_DEVICE_TYPE = _has_device_type_api(torch)

# torch < 2.4: the per-device functions of the two device types latentinv runs on
_OLD_API = {"cpu": ("is_autocast_cpu_enabled", "get_autocast_cpu_dtype"),
            "cuda": ("is_autocast_enabled", "get_autocast_gpu_dtype")}


def _old_api(device_type: str):
    names = _OLD_API.get(device_type)
    if names is None:       # another device type (mps, xpu): latentinv never turns autocast on there
        return None
    return getattr(torch, names[0]), getattr(torch, names[1])


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", ...)."""
    if _BY_DEVICE_TYPE:
        return bool(torch.is_autocast_enabled(device_type))
    api = _old_api(device_type)
    return api is not None and bool(api[0]())


def bfloat16_autocast(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` and casts to bfloat16."""
    if not autocast_enabled(device_type):
        return False
    dtype = torch.get_autocast_dtype(device_type) if _BY_DEVICE_TYPE else _old_api(device_type)[1]()
    return dtype == torch.bfloat16
