"""A guard for the tests of code that a CUDA graph captures: inside :meth:`HostReadGuard.watching`, a read
of a tensor's value by the host (a synchronisation on CUDA, which a capture cannot hold) raises
:class:`HostRead` and is recorded."""
import contextlib

import torch

#: the Tensor methods through which the host reads a value
HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")


class HostRead(AssertionError):
    pass


class HostReadGuard:
    """Patches :data:`HOST_READS` through ``monkeypatch``; ``reads`` lists those made while watching."""

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
            yield
        finally:
            self.active = False
