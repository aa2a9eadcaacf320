"""Benchmark of the VAE prior's training cost (Lopez-Alvis et al., 2021 reference network).

Measures, for the reference convolutional VAE on 129 x 65 models:

* the time of one training step (forward, loss of eq. (2), backward, Adam) and the
  training throughput (samples/s) at batch 100 and 32, on the CPU with 1 and 2 threads,
  and on a GPU when one is available;
* the time the paper's schedule (1e5 iterations x 100 samples) would take;
* a quality-vs-time trade-off: a few short schedules (and a narrower network) trained
  on crops of a procedural channel image, with the held-out reconstruction pixel RMSE.

Usage::

    python benchmarks/bench_prior.py            # full (a few minutes per schedule)
    python benchmarks/bench_prior.py --quick    # about a minute
    python benchmarks/bench_prior.py --ti ../shared/data/channels_ti.png

Prints a table naming the machine and writes JSON (``--output``).
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from latentinv.datasets import PatchSampler, load_image, make_channel_image
from latentinv.nn.vae import build_vae, vae_loss
from latentinv.prior import VAEPrior

PAPER_SHAPE = (129, 65)
PAPER_ITERATIONS = 100_000


def time_steps(device, batch, n_threads, n_steps, channels=(32, 64, 128, 256), hidden=512):
    """Median seconds per Adam step of the VAE on random binary 129 x 65 batches."""
    if device.type == "cpu":
        torch.set_num_threads(n_threads)
    module = build_vae("conv", PAPER_SHAPE, 20, channels=channels, hidden_size=hidden, seed=0).to(device)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(batch, PAPER_SHAPE[0] * PAPER_SHAPE[1], generator=gen, device=device) > 0.7).float()
    times = []
    for i in range(n_steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x_hat, mu, logvar = module(x, generator=gen)
        loss, _, _ = vae_loss(x_hat, x, mu, logvar, beta=1000.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # first step is warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, short schedules")
    parser.add_argument("--ti", default=None, help="training image (PNG/NPY); default procedural")
    parser.add_argument("--output", default="bench_prior.json")
    args = parser.parse_args()

    n_steps = 2 if args.quick else 5
    machine = f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    print(f"# bench_prior on {machine}")
    results = {"machine": machine, "steps": [], "tradeoff": []}

    configs = [("cpu", 1), ("cpu", 2)]
    if torch.cuda.is_available():
        configs.append(("cuda", None))
    print(f"\n{'device':<8}{'threads':>8}{'batch':>7}{'s/step':>10}{'samples/s':>11}{'paper 1e5x100 (h)':>19}")
    for dev_name, threads in configs:
        device = torch.device(dev_name)
        for batch in (100, 32):
            t = time_steps(device, batch, threads or 1, n_steps)
            row = dict(device=dev_name if dev_name == "cpu" else torch.cuda.get_device_name(),
                       threads=threads, batch=batch, seconds_per_step=t, samples_per_second=batch / t,
                       paper_schedule_hours=t * PAPER_ITERATIONS / 3600 if batch == 100 else None)
            results["steps"].append(row)
            print(f"{dev_name:<8}{str(threads or '-'):>8}{batch:>7}{t:>10.3f}{batch / t:>11.1f}"
                  f"{(t * PAPER_ITERATIONS / 3600 if batch == 100 else float('nan')):>19.1f}")

    # ---------------------------------------------------------------- quality vs time
    torch.set_num_threads(1)
    if args.ti:
        image = load_image(args.ti)
        source = os.path.basename(args.ti)
    else:
        image = make_channel_image((600, 600), width=8, random_state=0)
        source = "make_channel_image((600, 600), width=8, random_state=0)"
    held_out = [(0, 0, PAPER_SHAPE[0], PAPER_SHAPE[1]), (200, 300, PAPER_SHAPE[0], PAPER_SHAPE[1]),
                (400, 100, PAPER_SHAPE[0], PAPER_SHAPE[1])]
    test = np.stack([image[r:r + h, c:c + w] for r, c, h, w in held_out]).reshape(3, -1)
    sampler = PatchSampler(image, PAPER_SHAPE, exclude=held_out, random_state=0)
    trivial = float(np.sqrt(np.mean((test - image.mean()) ** 2)))
    if args.quick:
        schedules = [("narrow (8,16,32,64)/128", (8, 16, 32, 64), 128, 20, 32),
                     ("narrow (8,16,32,64)/128", (8, 16, 32, 64), 128, 60, 32)]
    else:
        schedules = [("narrow (8,16,32,64)/128", (8, 16, 32, 64), 128, 200, 32),
                     ("narrow (8,16,32,64)/128", (8, 16, 32, 64), 128, 600, 32),
                     ("reference (32..256)/512", (32, 64, 128, 256), 512, 100, 32),
                     ("reference (32..256)/512", (32, 64, 128, 256), 512, 300, 32)]
    print(f"\nQuality vs training time (1 thread), image {source}, 3 held-out 129x65 truths;"
          f" mean-value predictor RMSE {trivial:.3f}; beta = 1000 * batch / 100 keeps the"
          f" per-sample weight beta / (batch * 20) = 0.5 of the paper")
    print(f"{'network':<26}{'batch':>6}{'iters':>7}{'train s':>9}{'RMSE':>8}{'binary RMSE':>13}")
    for label, channels, hidden, iters, batch in schedules:
        prior = VAEPrior(channels=channels, hidden_size=hidden, n_iterations=iters, batch_size=batch,
                         beta=1000.0 * batch / 100, random_state=0, device="cpu")
        t0 = time.perf_counter()
        prior.fit(sampler)
        seconds = time.perf_counter() - t0
        rec = prior.decode(prior.encode(test.reshape(3, *PAPER_SHAPE)))
        rmse = float(np.sqrt(np.mean((rec - test) ** 2)))
        rmse_bin = float(np.sqrt(np.mean(((rec > 0.5) - test) ** 2)))
        results["tradeoff"].append(dict(network=label, batch=batch, iterations=iters, seconds=seconds,
                                        rmse=rmse, binary_rmse=rmse_bin, trivial_rmse=trivial))
        print(f"{label:<26}{batch:>6}{iters:>7}{seconds:>9.1f}{rmse:>8.3f}{rmse_bin:>13.3f}")

    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
