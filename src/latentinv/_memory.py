"""Whether a batch fits in memory, checked before it is allocated.

A batch of starts or chains too large for the machine is otherwise found out by the operating system's
out-of-memory killer, which ends the process without a word, minutes into a run. The estimates here are
lower bounds (what autograd keeps for the backward, the records, the result): a batch refused by them
could not have run, and a batch they let through may still not fit where the forward's transient buffers
tip it over.
"""
from __future__ import annotations

import os

import torch

GiB = 2.0 ** 30


def available_bytes(device):
    """Memory a new allocation on ``device`` can take: on a CPU, the kernel's ``MemAvailable`` or the
    room left under this process's cgroup limit, whichever is smaller; on CUDA, the free device memory
    and what torch's cache holds unused. None where this cannot be told (then nothing is checked)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    rooms = [r for r in (_meminfo_available(), _cgroup_room()) if r is not None]
    if not rooms:
        try:
            import psutil
            rooms.append(psutil.virtual_memory().available)
        except ImportError:
            return None
    return min(rooms)


def _meminfo_available(path="/proc/meminfo"):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _cgroup_room(root="/sys/fs/cgroup"):
    """The limit of this process's memory cgroup less its usage (cgroup v2, else v1), or None."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(os.path.join(root, limit_file))
        usage = _read_int(os.path.join(root, usage_file))
        if limit is not None and usage is not None and limit < 2 ** 60:   # v1 writes "no limit" as ~2**63
            return max(limit - usage, 0)
    return None


def saved_bytes_per_row(forward, z):
    """Bytes that autograd keeps for the backward of ``forward`` per row of its input, the output
    included: measured on 2 and 4 rows like ``z``'s first, so that what every batch holds once (the
    weights a layer saves) cancels."""
    def run(n):
        storages = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t
        zn = z[:1].detach().expand(n, *z.shape[1:]).clone().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward(zn)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            storages[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        return sum(storages.values())
    return max((run(4) - run(2)) / 2, 0.0)


def check_fits(owner, n_rows, bytes_per_row, device, *, what, parts, advice):
    """Raise MemoryError where ``n_rows`` rows of ``bytes_per_row`` (a lower bound; ``parts`` says what
    it counts) cannot fit in :func:`available_bytes` of ``device``, naming the sizes and ``advice(room)``
    (a sentence, given the bytes available)."""
    room = available_bytes(device)
    need = n_rows * bytes_per_row
    if room is not None and need > room:
        raise MemoryError(
            f"{owner}: {what} need at least {need / GiB:.1f} GiB ({bytes_per_row / 2 ** 20:.2f} MiB per row: "
            f"{parts}), but {torch.device(device)} has {room / GiB:.1f} GiB available. {advice(room)}")
