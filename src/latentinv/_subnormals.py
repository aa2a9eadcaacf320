"""Subnormal floats kept after torch compiles for the CPU.

torch's CPU compiler (inductor) builds its kernels with ``-ffast-math``; with gcc older than 13 that links
``crtfastmath.o``, whose constructor turns on flush-to-zero and denormals-are-zero when the kernel's library
is loaded: in the loading thread, and in every thread it starts afterwards. Seen with torch 2.4.0 and
gcc 12 (torch 2.2.0 and 2.13.0 leave them off): after ``latentinv.nn.fused``'s first CPU kernel, the whole
process computed ``5e-324 * 1.0 == 0``, in NumPy as in torch. :func:`keep_subnormals` undoes that around
the calls that may compile, and :func:`undo_flush_to_zero` after a backward that compiles its kernels
when it first runs (torch 2.4's compiled backward does); a flush-to-zero the user set beforehand is left
as it was.
"""
import contextlib
import warnings

import numpy as np
import torch

__all__ = ["flushes_subnormals", "keep_subnormals", "undo_flush_to_zero"]

_POOL_CHECK_SIZE = 1 << 16       # elements: above torch's grain size, so that its intra-op threads take part
_pool_started = False


def flushes_subnormals(parallel: bool = False) -> bool:
    """Whether float math flushes subnormals to zero on this thread, or (``parallel``) in a torch
    operation that torch's intra-op threads share."""
    if not parallel:
        return float(np.float64(5e-324) * np.float64(1.0)) == 0.0
    tiny = torch.full((_POOL_CHECK_SIZE,), 5e-324, dtype=torch.float64)
    return bool(((tiny * 1.0) == 0).any())


def undo_flush_to_zero(flushed_before: bool) -> None:
    """Turn flush-to-zero off again in this thread where it was off before (``flushed_before`` False) and
    is on now; a RuntimeWarning where it stays on here or in torch's intra-op threads."""
    if flushed_before or not flushes_subnormals():
        return
    torch.set_flush_denormal(False)
    if flushes_subnormals() or flushes_subnormals(parallel=True):
        warnings.warn(
            f"latentinv: a kernel that torch {torch.__version__} compiled for the CPU turned on flush-to-zero "
            f"of subnormal floats in this process (its -ffast-math with gcc < 13), and it could not be turned "
            f"off again in every thread: numbers below 2.2e-308 (float64) or 1.2e-38 (float32) now compute "
            f"as 0. A gcc of version 13 or newer, or another torch, avoids it", RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def keep_subnormals():
    """Run a call that may load a compiled CPU kernel, then :func:`undo_flush_to_zero`. torch's intra-op
    threads are started before the first such call, so that none inherits the flag; a flag the user set
    beforehand is kept."""
    global _pool_started
    if not _pool_started:
        flushes_subnormals(parallel=True)       # starts the pool, with the flag as it is now
        _pool_started = True
    before = flushes_subnormals()
    try:
        yield
    finally:
        undo_flush_to_zero(before)
