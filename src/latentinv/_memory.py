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


def _stat(path, key):
    """A value of a cgroup's ``memory.stat``, or None."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def _own_cgroups(proc="/proc/self/cgroup"):
    """This process's cgroup paths: the v2 one (``0::/path``) and the v1 memory controller's."""
    v2 = v1 = None
    try:
        with open(proc) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    v2 = path
                elif "memory" in controllers.split(","):
                    v1 = path
    except (OSError, ValueError):
        pass
    return v2, v1


#: per cgroup version: its folder under the root, limit file, usage file, and memory.stat's reclaimable cache
_CGROUP_FILES = (("", "memory.max", "memory.current", "inactive_file"),                          # v2
                 ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))  # v1


def _cgroup_room(root="/sys/fs/cgroup", proc="/proc/self/cgroup"):
    """The limit of this process's memory cgroup less its usage, the reclaimable page cache not counted as
    used (as the kernel would evict it: the inactive file pages), cgroup v2, else v1; None without a limit.
    The process's own cgroup where its folder is visible, else the root's."""
    for own, (sub, limit_file, usage_file, cache_key) in zip(_own_cgroups(proc), _CGROUP_FILES):
        base = os.path.join(root, sub)
        folders = ([os.path.join(base, own.lstrip("/"))] if own not in (None, "", "/") else []) + [base]
        for folder in folders:
            limit = _read_int(os.path.join(folder, limit_file))
            usage = _read_int(os.path.join(folder, usage_file))
            if limit is not None and usage is not None and limit < 2 ** 60:   # v1 writes "no limit" as ~2**63
                cache = _stat(os.path.join(folder, "memory.stat"), cache_key) or 0
                return max(limit - usage + cache, 0)
    return None


def saved_bytes_per_row(forward, z, grad=True):
    """Bytes that autograd keeps for the backward of ``forward`` per row of its input, the output
    included (``grad=False``: the output alone, run without autograd): measured on 2 and 4 rows like
    ``z``'s first, so that what every batch holds once (the weights a layer saves) cancels."""
    def run(n):
        storages = {}

        def pack(t):
            # packed detached: a saved output packed as itself would hold its own node, a cycle that keeps
            # the graph (and the weights' AccumulateGrad nodes, with the stream they were made on) alive
            # until a collection; autograd puts the node back on unpacking (a double backward's pass unpacks)
            s = t.untyped_storage()
            storages[s.data_ptr()] = s
            return t.detach()
        zn = z[:1].detach().expand(n, *z.shape[1:]).clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward(zn)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            storages[o.untyped_storage().data_ptr()] = o.untyped_storage()
        return sum(s.nbytes() for s in storages.values())
    return max((run(4) - run(2)) / 2, 0.0)


def is_out_of_memory(exc):
    """An allocation that failed (Python's MemoryError, torch's CPU allocator or CUDA), not any
    other RuntimeError, which stays a traceback (a bug to report)."""
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "can't allocate memory" in str(exc) or "not enough memory" in str(exc)


def check_fits(owner, n_rows, bytes_per_row, device, *, what, parts, advice):
    """Raise MemoryError where ``n_rows`` rows of ``bytes_per_row`` (a lower bound; ``parts`` says what
    it counts) cannot fit in :func:`available_bytes` of ``device``, naming the sizes and ``advice(room)``
    (a sentence, given the bytes available)."""
    room = available_bytes(device)
    need = n_rows * bytes_per_row
    if room is not None and need > room:
        raise MemoryError(
            f"{owner}: {what} need at least {_size(need)} ({_size(bytes_per_row)} per row: {parts}), but "
            f"{torch.device(device)} has {_size(room)} available. {advice(room)}")


def _size(n):
    """Bytes in the largest unit that keeps them at 1 or more (B, KiB, MiB, GiB, TiB), 3 significant digits."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while i < len(units) - 1 and abs(n) >= 1024:
        n, i = n / 1024, i + 1
    return f"{n:.3g} {units[i]}"
