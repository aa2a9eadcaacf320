"""The VAE prior's training speed and loss curve as ``VAEPrior.fit`` runs it, float32 against bfloat16.

The reference network (channels 32, 64, 128, 256, hidden 512, 20 latents: the paper's), batches of
100 crops of 129 x 65 of the paper's training image (bundled; mc1-mc3 and the held-out band excluded),
cut on the device. Rows, each a full ``fit`` of ``--iterations`` steps from the same seed:

- float32 (the main row), and bfloat16 (autocast; where the device has native bfloat16);
- on CUDA, both replayed from a CUDA graph (``VAEPrior(cuda_graphs=True)``);
- ablation: the host reading the device every iteration (``latentinv.prior.TRAINING_BLOCK = 1``: the
  losses and the crops, as before the blocks), float32.

For each: seconds per iteration (after a warm-up fit), the projected time of the paper's schedule
(1e5 iterations), and the loss curve as means over windows of ``--window`` iterations, with the
largest relative difference of bfloat16's windows from float32's (the curve "kept" or not).

Usage::

    python benchmarks/bench_training.py --device cuda --iterations 2000 --output bench_training.json
    python benchmarks/bench_training.py --device cpu --iterations 60 --window 20 --threads 2   # a check
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import code_info, cpu_counts, cpu_model  # noqa: E402

import latentinv.prior as prior_module  # noqa: E402
from latentinv._common import native_bfloat16  # noqa: E402
from latentinv.datasets import DEFAULT_PRIOR_EXCLUDED_WINDOWS, PatchSampler, load_channels_ti  # noqa: E402
from latentinv.prior import VAEPrior  # noqa: E402

PAPER_ITERATIONS = 100_000
REFERENCE = dict(channels=(32, 64, 128, 256), hidden_size=512, n_components=20, batch_size=100)


def fit(device, iterations, precision, seed=0, cuda_graphs=False):
    sampler = PatchSampler(load_channels_ti(), (129, 65), exclude=DEFAULT_PRIOR_EXCLUDED_WINDOWS)
    prior = VAEPrior(**REFERENCE, n_iterations=iterations, precision=precision, device=device,
                     random_state=seed, cuda_graphs=cuda_graphs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    prior.fit(sampler)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, prior.history_["loss"]


def windows(curve, width):
    n = len(curve) // width
    return np.asarray(curve[:n * width], dtype=np.float64).reshape(n, width).mean(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--window", type=int, default=200, help="iterations per loss-curve window")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--output", default="bench_training.json")
    a = p.parse_args(argv)
    for name in ("iterations", "window"):        # --window 0 divided by zero after the training
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(a, name)}")
    if a.window > a.iterations:
        p.error(f"--window {a.window} is longer than --iterations {a.iterations}: the curves would have no window")
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    bf16 = native_bfloat16(dev)
    variants = [("float32", "float32", None, False)]
    if bf16:
        variants.append(("bfloat16", "bfloat16", None, False))
    if dev.type == "cuda":
        variants.append(("float32, CUDA graph", "float32", None, True))
        if bf16:
            variants.append(("bfloat16, CUDA graph", "bfloat16", None, True))
    variants.append(("float32, host reads every iteration (ablation)", "float32", 1, False))
    fit(a.device, 5, "float32")       # warm-up (kernels, allocator)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    machine = dict(cpu=cpu_model(), **cpu_counts(), gpu=gpu, torch=torch.__version__,
                   threads=torch.get_num_threads())
    rows = []
    record = dict(command="python benchmarks/bench_training.py " + " ".join(argv or sys.argv[1:]),
                  machine=machine, latentinv=code_info(), network=REFERENCE, window=a.window, rows=rows)

    def save():      # after each row: a deadline loses only the row in progress
        Path(a.output).write_text(json.dumps(record, indent=1))

    base = None      # the float32 row's (seconds, loss windows), the first row
    for label, precision, block, graphs in variants:
        saved = prior_module.TRAINING_BLOCK
        if block is not None:
            prior_module.TRAINING_BLOCK = block
        try:
            seconds, curve = fit(a.device, a.iterations, precision, cuda_graphs=graphs)
        except Exception as exc:      # a row that fails is recorded as failed, the others still run
            rows.append(dict(variant=label, precision=precision, cuda_graphs=graphs, ablation=block is not None,
                             error=f"{type(exc).__name__}: {exc}"))
            print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            save()
            continue
        finally:
            prior_module.TRAINING_BLOCK = saved
        c = windows(curve, a.window)
        per = seconds / a.iterations
        row = dict(variant=label, precision=precision, cuda_graphs=graphs, ablation=block is not None,
                   iterations=a.iterations, seconds=seconds, ms_per_iteration=1e3 * per,
                   paper_schedule_minutes=per * PAPER_ITERATIONS / 60, loss_windows=c.tolist())
        if label == "float32":
            base = (seconds, c)
        if base is not None:
            row["speedup_vs_float32"] = base[0] / seconds
            row["max_window_rel_diff_vs_float32"] = (float(np.max(np.abs(c - base[1]) / np.abs(base[1])))
                                                     if len(c) else None)
        rows.append(row)
        print(f"{label}: {row['ms_per_iteration']:.2f} ms per iteration", flush=True)
        save()
    print(f"machine: {machine}")
    print(f"{'variant':<50}{'ms/it':>9}{'1e5 its (min)':>15}{'speedup':>9}{'max curve diff':>16}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<50}FAILED: {r['error']}")
            continue
        diff = r.get("max_window_rel_diff_vs_float32")
        print(f"{r['variant']:<50}{r['ms_per_iteration']:>9.2f}{r['paper_schedule_minutes']:>15.1f}"
              f"{r.get('speedup_vs_float32', float('nan')):>8.2f}x{'' if diff is None else f'{100 * diff:>14.2f} %'}")


if __name__ == "__main__":
    main()
