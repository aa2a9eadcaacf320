"""A guard for the tests of code that a CUDA graph captures, run on the CPU. Inside
:meth:`HostReadGuard.watching` it raises :class:`HostRead`, and records the call, on:

- a read of a tensor's value by the host (a synchronisation on CUDA, which a capture cannot hold);
- a tensor factory called without a device (``torch.zeros(n)``): on the CPU it passes unseen, on CUDA it
  makes a CPU tensor inside the step, a host-to-device copy or a device mismatch there.
"""
import contextlib

import torch
from torch.overrides import TorchFunctionMode

#: the Tensor methods through which the host reads a value
HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")
#: the factories that make a CPU tensor unless given a device
FACTORIES = (torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.zeros, torch.ones, torch.full,
             torch.empty, torch.arange, torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint,
             torch.randperm)


class HostRead(AssertionError):
    pass


class _DevicelessFactories(TorchFunctionMode):
    def __init__(self, reads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            name = f"torch.{func.__name__} without a device"
            self.reads.append(name)
            raise HostRead(f"a CPU tensor made inside the step: {name}")
        return func(*args, **kwargs)


class HostReadGuard:
    """Patches :data:`HOST_READS` through ``monkeypatch``; ``reads`` lists those made while watching, and
    the factories called without a device."""

    def __init__(self, monkeypatch):
        self.reads, self.active = [], False
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._guarded(name, getattr(torch.Tensor, name)))

    def _guarded(self, name, original):
        def guarded(tensor, *args, **kwargs):
            if self.active:
                self.reads.append(name)
                raise HostRead(f"the host read a tensor: Tensor.{name}")
            return original(tensor, *args, **kwargs)
        return guarded

    @contextlib.contextmanager
    def watching(self):
        self.active = True
        try:
            with _DevicelessFactories(self.reads):
                yield
        finally:
            self.active = False
