"""Benchmark of the priors' training cost: the VAE (Lopez-Alvis et al., 2021 reference network) and
the SGAN (Laloy et al., 2019, the paper's comparison generator).

Measures, for the SGAN (``--sgan``): seconds per training iteration (one discriminator and one
generator Adam step) of the published network on 353 x 353 crops, on the CPU and on a GPU when one
is available (``--sgan-gpu-train`` then trains the published schedule there and records its pattern
statistics); and (``--patterns``) the pattern statistics (:mod:`latentinv.metrics`) of a small
CPU-trained SGAN and of a shipped VAE (the default one with ``--ti``, the procedural one without)
against training crops.

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
    python benchmarks/bench_prior.py --sgan --quick --no-vae   # SGAN seconds per step only
    nice -n 10 python benchmarks/bench_prior.py --no-vae --patterns --ti ../shared/data/channels_ti.png \
        --pattern-iterations 300 --output docs/benchmarks/sgan_patterns.json

Prints a table naming the machine and writes JSON (``--output``).
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

STARTED = time.time()      # before the imports below: the SGAN's training budget counts them

import numpy as np
import torch

from latentinv import _checkpoint
from latentinv.datasets import PatchSampler, load_channels_ti, load_image, make_channel_image
from latentinv.metrics import compare_patterns
from latentinv.nn.sgan import PatchDiscriminator, SpatialGenerator, adversarial_losses
from latentinv.nn.vae import build_vae, vae_loss
from latentinv.prior import ModelFileError, VAEPrior
from latentinv.sgan import PUBLISHED_N_ITERATIONS, SGANPrior
from machine_info import code_info, cpu_model, cpus_text  # a sibling script

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


#: The paper's truth windows (row, col, n_rows, n_cols) in channels_ti.png, excluded from training crops.
PAPER_TRUTH_WINDOWS = [(1135, 1658, 129, 65), (1502, 1958, 129, 65), (582, 503, 129, 65)]


def time_sgan_steps(device, batch, n_threads, n_steps, n_filters=64, latent=(12, 12)):
    """Median seconds per SGAN training iteration (D step + G step) on random 353 x 353 crops."""
    if device.type == "cpu":
        torch.set_num_threads(n_threads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = SpatialGenerator(n_filters=n_filters).to(device)
        d = PatchDiscriminator(n_filters=n_filters).to(device)
    adam = dict(lr=5e-4, betas=(0.5, 0.999), weight_decay=1e-7)
    opt_g, opt_d = torch.optim.Adam(g.parameters(), **adam), torch.optim.Adam(d.parameters(), **adam)
    gen = torch.Generator(device=device).manual_seed(0)
    size = [(n - 1) * 32 + 1 for n in latent]
    real = (torch.rand(batch, 1, *size, generator=gen, device=device) > 0.7).float() * 2 - 1
    times = []
    for i in range(n_steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fake = g(torch.rand(batch, 1, *latent, generator=gen, device=device) * 2 - 1)
        real_logits, fake_logits = d(real), d(fake.detach())
        d_loss, _ = adversarial_losses(real_logits, fake_logits, fake_logits)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        _, g_loss = adversarial_losses(real_logits.detach(), fake_logits.detach(), d(fake))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # first step is warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sgan_steps(args, results):
    """The SGAN's seconds per iteration (published network, 353 x 353 crops) on CPU and GPU."""
    configs = [] if args.skip_cpu else [("cpu", 2, 8 if args.quick else 32)]
    if torch.cuda.is_available():
        configs.append(("cuda", None, 32))
    print("\nSGAN (published network, 353 x 353 crops, latent 12 x 12)")
    print(f"{'device':<8}{'threads':>8}{'batch':>7}{'s/step':>10}{'published 1850 it (h)':>23}")
    for dev_name, threads, batch in configs:
        t = time_sgan_steps(torch.device(dev_name), batch, threads or 1, 1 if args.quick else 2)
        hours = t * PUBLISHED_N_ITERATIONS / 3600 * (32 / batch)
        results["sgan_steps"].append(dict(
            device=dev_name if dev_name == "cpu" else torch.cuda.get_device_name(), threads=threads,
            batch=batch, seconds_per_step=t, published_schedule_hours_batch32_estimate=hours))
        print(f"{dev_name:<8}{str(threads or '-'):>8}{batch:>7}{t:>10.2f}{hours:>23.2f}")


def _image(ti):
    """The training image of ``--ti``: "bundled" is the paper's, shipped with latentinv."""
    if ti == "bundled":
        return load_channels_ti(), "channels_ti.png (bundled with latentinv)"
    return load_image(ti), os.path.basename(ti)


def cuda_sgan_rate(results):
    """Seconds per SGAN iteration on CUDA: the row of ``results["sgan_steps"]``, or measured here."""
    rates = [r["seconds_per_step"] for r in results.get("sgan_steps", []) if r["device"] != "cpu"]
    return rates[0] if rates else time_sgan_steps(torch.device("cuda"), 32, 1, 2)


def train_in_parts(fit_to, total, deadline, per_step, done=0, part_seconds=30.0, margin=1.2, first_fraction=0.25,
                   clock=time.time):
    """Train from ``done`` to ``total`` iterations, or as many as end by ``deadline`` (in ``clock``'s
    seconds), in parts.

    ``fit_to(n)`` carries one training on to ``n`` iterations (an SGANPrior's ``fit`` on one checkpoint
    directory: parts of any length train as one run) and returns the prior. A part of about
    ``part_seconds`` (the first, at the rate ``per_step`` given, only ``first_fraction`` of that: its
    rate is measured by another loop) starts only when it is expected to end in time at the rate of the
    part before it, with a ``margin``; shortened to fit, it is skipped when not one iteration fits. A
    part's fixed cost (the networks built, the checkpoint read and written: about a second) is amortised
    in the measured rate, so a short last part may end late by up to that cost; a first rate misjudged
    by more than the margin makes the first part late. Returns ``(prior, iterations done,
    [(iterations, seconds) per part])``; the prior is None when no part ran."""
    prior, parts = None, []
    while done < total:
        left = deadline - clock()
        size = part_seconds * (1.0 if parts else first_fraction)
        n = min(total - done, max(1, int(size / per_step)), int(left / (per_step * margin)))
        if n < 1:
            break
        t0 = clock()
        prior = fit_to(done + n)
        seconds = clock() - t0
        done += n
        parts.append((n, seconds))
        per_step = seconds / n
    return prior, done, parts


def _save_replacing(prior, path):
    """Save ``prior`` to ``path``: written beside it (``path.new``), then swapped in; for the instant
    between the two renames only ``path.old`` holds it (``gpu_checks.sh`` takes that one then)."""
    new, old = f"{path}.new", f"{path}.old"
    shutil.rmtree(new, ignore_errors=True)
    prior.save(new)
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_iteration(path):
    """The iteration of the newest checkpoint in the directory ``path`` (0 when there is none)."""
    return _checkpoint.latest_iteration(path, "bench_prior")


def train_published_sgan(sampler, results, deadline=None, save_to=None, checkpoint=None,
                         total=PUBLISHED_N_ITERATIONS, part_seconds=30.0, **network):
    """The published network and schedule on CUDA (random_state=0), to be done by ``deadline``
    (``time.time()``; None: the whole schedule), in parts on the checkpoint directory ``checkpoint`` (a
    temporary one when None), each part's generator saved to ``save_to`` (so that a timeout leaves the
    last one). A training found in ``checkpoint`` is carried on; one of another training is moved aside
    (said so) and a new one started. ``network`` overrides SGANPrior's settings (tests: a small one on
    the CPU). Records ``results["sgan_training"]`` (iterations carried on, then this call's parts);
    returns ``(prior, iterations)``, the prior None when there is no training to return."""
    settings = dict(dict(device="cuda", random_state=0), **network)

    def fit_to(n):
        prior = SGANPrior(**settings, n_iterations=n).fit(sampler, checkpoint=checkpoint, checkpoint_every=max(n, 1))
        if save_to:
            _save_replacing(prior, save_to)
        print(f"SGAN training: {n} of {total} iterations", flush=True)
        return prior

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = scratch if checkpoint is None else checkpoint
        done, prior = checkpoint_iteration(checkpoint), None
        if done:
            try:       # the checkpoint's training as it stands (nothing trained): is it this training?
                prior = fit_to(done)
                print(f"SGAN training: carried on from the checkpoint's {done} iterations", flush=True)
            except ModelFileError as err:
                aside = f"{checkpoint}.refused-{int(time.time())}"
                os.replace(checkpoint, aside)
                print(f"SGAN training: the checkpoint in {checkpoint} is not this training's, moved to {aside} "
                      f"({err}); starting anew", flush=True)
                done, prior = 0, None
        record = results["sgan_training"] = dict(carried_on_from=done, total=total, parts=[])
        if deadline is not None and done < total:
            per_step = cuda_sgan_rate(results)
            record["first_rate_seconds_per_iteration"] = per_step
            print(f"SGAN training: {per_step:.3f} s per iteration measured, {deadline - time.time():.0f} s left",
                  flush=True)
            last, done, parts = train_in_parts(fit_to, total, deadline, per_step, done=done, part_seconds=part_seconds)
            prior = last or prior
            record["parts"] = [dict(iterations=n, seconds=t) for n, t in parts]
        elif done < total:
            t0 = time.time()
            prior = fit_to(total)
            record["parts"] = [dict(iterations=total - done, seconds=time.time() - t0)]
            done = total
        record["iterations"] = done
    return prior, done


def training_image(args):
    if args.ti:
        return *_image(args.ti), PAPER_TRUTH_WINDOWS
    image = make_channel_image((600, 600), width=8, random_state=0)
    return image, "make_channel_image((600, 600), width=8, random_state=0)", []


def sgan_patterns(args, results):
    """Pattern statistics of a small CPU-trained SGAN and of a shipped VAE against training crops.

    On a GPU (``--sgan-gpu-train``) the published network and schedule are trained instead.
    """
    image, source, exclude = training_image(args)
    sampler = PatchSampler(image, PAPER_SHAPE, exclude=exclude)
    reference = sampler.sample(args.pattern_samples, random_state=1)
    gpu = args.sgan_gpu_train and torch.cuda.is_available()
    t0 = time.perf_counter()
    if gpu:     # the published network and schedule, or as much of it as ends within the budget
        sgan, n = train_published_sgan(sampler, results, args.sgan_deadline, args.save_sgan, args.sgan_checkpoint)
        if sgan is None:
            rate = results["sgan_training"].get("first_rate_seconds_per_iteration")
            raise SystemExit(f"SGAN training: not one iteration fits in the {args.sgan_deadline - time.time():.0f} s "
                             f"left at {rate} s per iteration")
        label = f"published network, {n} iterations of 32 crops 353 x 353, GPU"
        if n < PUBLISHED_N_ITERATIONS:
            label += f" (the published schedule's {PUBLISHED_N_ITERATIONS} did not fit in the time given)"
    else:
        torch.set_num_threads(2)
        n = args.pattern_iterations
        sgan = SGANPrior(n_filters=8, training_latent_shape=(5, 5), batch_size=8, n_iterations=n, device="cpu",
                         random_state=0, verbose=1).fit(sampler)
        label = (f"small network (8 base filters, 5 layers, dilations 3 and 5), "
                 f"{n} iterations of 8 crops 129 x 129, CPU")
        if args.save_sgan:
            sgan.save(args.save_sgan)
    seconds = time.perf_counter() - t0
    # the shipped prior of the training image's family: the default one (the paper's image) with --ti,
    # the procedural one (the earlier default) without
    image_kind = "channels_ti" if args.ti else "procedural"
    vae = VAEPrior.pretrained(image=image_kind)
    rows = {}
    for name, prior in (("SGAN", sgan), (f"VAE (shipped prior, image={image_kind})", vae)):
        models = prior.sample(args.pattern_samples, random_state=2)
        rows[name] = compare_patterns(models, reference, max_lag=20, image_shape=PAPER_SHAPE)
    rows["training crops (another draw)"] = compare_patterns(
        sampler.sample(args.pattern_samples, random_state=3), reference, max_lag=20, image_shape=PAPER_SHAPE)
    results["patterns"] = dict(training_image=source, excluded_windows=exclude, sgan=label,
                               sgan_iterations=n,
                               sgan_training_seconds=seconds, n_samples=args.pattern_samples,
                               sgan_history_last=dict((k, v[-1]) for k, v in sgan.history_.items() if v),
                               comparison=rows)
    print(f"\nPattern statistics, {args.pattern_samples} models 129 x 65 vs as many training crops of "
          f"{source} (SGAN: {label}, trained in {seconds:.0f} s)")
    keys = ["channel_fraction", "variogram_rmse_x", "variogram_rmse_depth", "connectivity_rmse_x",
            "connectivity_rmse_depth", "mean_width_depth", "width_wasserstein_depth"]
    print(f"{'prior':<32}" + "".join(f"{k:>24}" for k in keys))
    for name, row in rows.items():
        print(f"{name:<32}" + "".join(f"{row[k]:>24.3f}" for k in keys))
    print(f"{'(reference crops)':<32}{rows['SGAN']['channel_fraction_reference']:>24.3f}"
          + " " * 24 * 4 + f"{rows['SGAN']['mean_width_depth_reference']:>24.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, short schedules")
    parser.add_argument("--ti", default=None,
                        help="training image (PNG/NPY, or 'bundled': the paper's, shipped with latentinv); "
                             "default procedural")
    parser.add_argument("--output", default="bench_prior.json")
    parser.add_argument("--no-vae", action="store_true", help="skip the VAE measurements")
    parser.add_argument("--sgan", action="store_true", help="SGAN seconds per training iteration")
    parser.add_argument("--patterns", action="store_true",
                        help="pattern statistics of a small CPU-trained SGAN and of a shipped VAE "
                             "(the default one with --ti, else the procedural one)")
    parser.add_argument("--pattern-iterations", type=int, default=300, help="small SGAN's iterations (CPU)")
    parser.add_argument("--pattern-samples", type=int, default=200, help="models and crops compared")
    parser.add_argument("--sgan-gpu-train", action="store_true",
                        help="with --patterns on a GPU: train the published network and schedule")
    parser.add_argument("--save-sgan", default=None, help="directory to save the trained SGAN in")
    parser.add_argument("--sgan-budget", type=float, default=None,
                        help="with --sgan-gpu-train: seconds for the training from this process's start, in parts "
                             "on a checkpoint, each started only when it ends in time; fewer than the published "
                             "iterations where they do not fit (said so)")
    parser.add_argument("--sgan-deadline", type=float, default=None,
                        help="the same as a time (seconds since the epoch, as `date +%%s`) the training must end by")
    parser.add_argument("--sgan-checkpoint", default=None,
                        help="with --sgan-gpu-train: the training's checkpoint directory (kept; a training "
                             "found there is carried on), else a temporary one")
    parser.add_argument("--skip-cpu", action="store_true",
                        help="with --sgan: no CPU row (about 2 min per step of the published network)")
    args = parser.parse_args()
    if args.sgan_deadline is None and args.sgan_budget is not None:
        args.sgan_deadline = STARTED + args.sgan_budget      # counted from the start: imports and setup included

    n_steps = 2 if args.quick else 5
    machine = f"{cpu_model()} ({platform.machine()} {platform.system()}), {cpus_text()}, torch {torch.__version__}"
    print(f"# bench_prior on {machine}")
    results = {"machine": machine, "latentinv": code_info(), "steps": [], "tradeoff": [], "sgan_steps": []}
    if args.sgan:
        sgan_steps(args, results)
    if args.patterns:
        sgan_patterns(args, results)
    if args.no_vae:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"\nwrote {args.output}")
        return

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
        image, source = _image(args.ti)
    else:
        image = make_channel_image((600, 600), width=8, random_state=0)
        source = "make_channel_image((600, 600), width=8, random_state=0)"
    held_out = [(0, 0, PAPER_SHAPE[0], PAPER_SHAPE[1]), (200, 300, PAPER_SHAPE[0], PAPER_SHAPE[1]),
                (400, 100, PAPER_SHAPE[0], PAPER_SHAPE[1])]
    test = np.stack([image[r:r + h, c:c + w] for r, c, h, w in held_out]).reshape(3, -1)
    sampler = PatchSampler(image, PAPER_SHAPE, exclude=held_out)
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
