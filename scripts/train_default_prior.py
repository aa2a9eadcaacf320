"""Train the priors shipped with latentinv (``VAEPrior.pretrained()``), reproducibly.

Everything comes from the package itself (the bundled training image or procedural ones, fixed seeds):
no external file. The script writes the weights and config into ``src/latentinv/data/<folder>/`` and a
quality report (training curve, held-out reconstruction RMSE, acceptance rate of VSbrd inversions of
truths the prior never saw) into ``docs/<folder>.json`` and ``docs/<folder>_curve.png``:

- ``--image channels_ti`` (the default; folder ``channels_ti_prior``, the default prior
  ``VAEPrior.pretrained()``): the paper's training image (bundled,
  ``latentinv.datasets.load_channels_ti``), keeping out every crop that overlaps the paper's truths
  mc1-mc3 or the held-out band ``latentinv.datasets.HELD_OUT_WINDOW`` (rows 2200-2499, where the
  held-out truths of its record and the demo's truth are cropped);
- ``--image procedural`` (folder ``default_prior``, ``VAEPrior.pretrained(image="procedural")``, the
  earlier default): procedural channel images (``PRETRAINED_IMAGE_SETTINGS``, seeds 11-14).

Usage (from the repository root)::

    python scripts/train_default_prior.py --threads 2   # the committed default prior (about 10 min)
    python scripts/train_default_prior.py --image procedural --threads 1   # the procedural one (27 min)
    python scripts/train_default_prior.py --iterations 200 --out /tmp/p --report /tmp/r   # a quick check
"""
import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from latentinv import LatentInverter, StraightRayOperator, VAEPrior, paper_crosshole
from latentinv.datasets import (DEFAULT_PRIOR_EXCLUDED_WINDOWS, HELD_OUT_WINDOW, PRETRAINED_IMAGE_SETTINGS,
                                PatchSampler, load_channels_ti, make_channel_image)
from latentinv.metrics import compare_patterns, data_rmse

# The procedural training images and the held-out image of the truths (different seeds).
TRAINING_SEEDS = (11, 12, 13, 14)
HELD_OUT_SEED = 99
PATCH_SHAPE = (129, 65)
#: rows of the paper's training image kept out of training for the held-out truths (channels_ti)
TI_HELD_OUT_ROWS = (HELD_OUT_WINDOW[0], HELD_OUT_WINDOW[0] + HELD_OUT_WINDOW[2])
#: package data folder (and record stem) of each training image
FOLDERS = {"channels_ti": "channels_ti_prior", "procedural": "default_prior"}


def channel_image(seed):
    """One procedural training image: sinuous, branching channels, about 27 % channel."""
    return make_channel_image(**PRETRAINED_IMAGE_SETTINGS, random_state=seed)


def held_out_truths(n, image="procedural", seed=HELD_OUT_SEED):
    """``n`` crops of the paper's model size from an image (or a band of it) the prior never saw."""
    if image == "channels_ti":
        r0, r1 = TI_HELD_OUT_ROWS
        source = load_channels_ti()[r0:r1]
    else:
        source = channel_image(seed)
    sampler = PatchSampler(source, PATCH_SHAPE, random_state=seed)
    return sampler.sample(n).reshape(n, -1).astype(np.float64)


def training_sampler(image):
    if image == "channels_ti":
        return PatchSampler(load_channels_ti(), PATCH_SHAPE, exclude=DEFAULT_PRIOR_EXCLUDED_WINDOWS)
    return PatchSampler([channel_image(s) for s in TRAINING_SEEDS], PATCH_SHAPE)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", choices=("channels_ti", "procedural"), default="channels_ti",
                   help="training images: the paper's (bundled; the default prior) or procedural ones")
    p.add_argument("--iterations", type=int, default=6000, help="Adam steps (6000: the shipped prior)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, nargs=4, default=(16, 32, 64, 128))
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the prior is saved for the CPU either way)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (the shipped prior: 1; other counts round differently)")
    p.add_argument("--n-truths", type=int, default=10, help="held-out truths inverted for the acceptance rate")
    p.add_argument("--n-starts", type=int, default=20)
    p.add_argument("--out", default=None,
                   help="folder of the prior [default: src/latentinv/data/channels_ti_prior, or "
                        "default_prior with --image procedural]")
    p.add_argument("--report", default="docs", help="folder of the record (<folder>.json) and the curve")
    p.add_argument("--evaluate-only", action="store_true", help="evaluate the prior saved in --out")
    p.add_argument("--no-evaluate", action="store_true",
                   help="train and save only (then --evaluate-only, e.g. beside other work)")
    p.add_argument("--no-history-in-prior", action="store_true",
                   help="save the prior without its training history (an empty history_, as "
                        "VAEPrior.from_reference_checkpoint): the paper's 1e5 iterations would add about "
                        "6 MB of JSON to a prior that must stay under 10 MB; the curve stays in the record")
    p.add_argument("--checkpoint", default=None,
                   help="directory of a resumable training (VAEPrior.fit's checkpoint): a run stopped by a "
                        "time limit carries on from there when started again with the same arguments")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="the training's arithmetic (VAEPrior's precision; bfloat16 needs native support)")
    p.add_argument("--weights-dtype", choices=("float32", "float16", "mixed"), default="float32",
                   help="how the prior's weights are stored (VAEPrior.save; 'mixed' keeps the reference "
                        "network under 10 MB)")
    p.add_argument("--max-bytes", type=float, default=None,
                   help="a budget for the saved prior's files (VAEPrior.save's max_bytes: the encoder's largest "
                        "tensors are stored int8 until they fit; the decoder never is)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="each training step replayed from a CUDA graph (VAEPrior's cuda_graphs; CUDA only)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("src", "latentinv", "data", FOLDERS[args.image])
    torch.set_num_threads(args.threads)
    if args.evaluate_only:
        prior = VAEPrior.load(args.out, device=args.device)
        with open(os.path.join(args.report, f"{_stem(args)}_training.json")) as f:
            training = json.load(f)
        train_s, history = training["train_seconds"], training["history"]
        every = int(training.get("history_every", 1))     # a record thinned by benchmarks/gpu_results.py
        arithmetic = training.get("arithmetic")
    else:
        prior, train_s = train(args)
        history, every, arithmetic = prior.history_, 1, _arithmetic(args)
        if args.no_evaluate:
            return
    evaluate(prior, train_s, history, every, args, arithmetic)


def _arithmetic(args):
    """How the training ran (the saved prior's parameters say how to train again on any machine)."""
    return {"device": args.device, "precision": args.precision, "cuda_graphs": bool(args.cuda_graphs)}


def train(args):

    sampler = training_sampler(args.image)
    # beta keeps the paper's weight per sample: beta / (batch * d) = 1000 / (100 * 20)
    beta = 1000.0 * args.batch_size / 100.0
    prior = VAEPrior(n_components=20, channels=tuple(args.channels), hidden_size=args.hidden_size,
                     batch_size=args.batch_size, beta=beta, alpha=1.0, n_iterations=args.iterations,
                     device=args.device, random_state=0, verbose=1, precision=args.precision,
                     cuda_graphs=args.cuda_graphs)
    t0 = time.perf_counter()
    prior.fit(sampler, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    train_s = time.perf_counter() - t0      # of this call (a resumed training: its remaining iterations)
    os.makedirs(args.report, exist_ok=True)
    with open(os.path.join(args.report, f"{_stem(args)}_training.json"), "w") as f:
        json.dump({"train_seconds": train_s, "arithmetic": _arithmetic(args), "history": prior.history_}, f)
    # shipped for any machine: weights saved from the CPU, and parameters that refit anywhere (CUDA where
    # there is one; float32, eager: bfloat16 and CUDA graphs only change how fast a training runs, and a
    # machine without them refuses them). How this one ran is in its record ("training_arithmetic").
    prior.to("cpu").set_params(device="auto", precision="float32", cuda_graphs=False)
    history = prior.history_
    if args.no_history_in_prior:
        prior.history_ = {k: [] for k in history}
    prior.save(args.out, weights_dtype=args.weights_dtype, max_bytes=args.max_bytes)
    prior.history_ = history
    prior.to(args.device)
    return prior, train_s


def evaluate(prior, train_s, history, every, args, arithmetic):
    """The prior's record; ``history`` holds every ``every``-th iteration's losses."""

    # quality 1: reconstruction RMSE (pixel values in [0, 1]) on held-out crops
    held = held_out_truths(200, args.image)
    recon = prior.decode(prior.encode(held))
    recon_rmse = float(np.sqrt(np.mean((recon - held) ** 2)))
    samples = prior.sample(200, random_state=1)

    # quality 2: VSbrd inversions (linear operator, paper settings) of truths the prior never saw
    grid, survey = paper_crosshole(0.01, 6.49)
    op = StraightRayOperator(grid, survey)
    truths = held[: args.n_truths]
    slowness = lambda x: 1.0 / (0.06 + 0.02 * (1.0 - x))  # noqa: E731  (the paper's map, ns/m)
    d_obs = op.response(slowness(truths))
    # acceptance threshold of a truth: data RMSE of its encode-decode (paper Table 2)
    thresholds = data_rmse(op.response(slowness(np.clip(prior.decode(prior.encode(truths)), 0, 1))), d_obs,
                           multioutput="raw_values")
    inv = LatentInverter(prior=prior, operator=op, n_starts=args.n_starts, random_state=0, device=args.device)
    t1 = time.perf_counter()
    result = inv.fit(d_obs).invert(d_obs)
    invert_s = time.perf_counter() - t1
    accepted = result.accepted_fraction(thresholds[:, None])
    report = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in prior.get_params().items()
                   if k not in ("architecture",)},
        "training_images": ({"generator": "latentinv.datasets.make_channel_image",
                             "settings": "latentinv.datasets.PRETRAINED_IMAGE_SETTINGS",
                             **PRETRAINED_IMAGE_SETTINGS, "seeds": TRAINING_SEEDS,
                             "patch_shape": PATCH_SHAPE} if args.image == "procedural" else
                            {"image": "latentinv.datasets.load_channels_ti (the paper's)",
                             "excluded": "crops overlapping mc1-mc3 (PAPER_TRUTH_WINDOWS) or rows "
                                         f"{TI_HELD_OUT_ROWS[0]}-{TI_HELD_OUT_ROWS[1] - 1}",
                             "held_out_truths": f"crops of rows {TI_HELD_OUT_ROWS[0]}-{TI_HELD_OUT_ROWS[1] - 1}",
                             "patch_shape": PATCH_SHAPE}),
        "train_seconds": train_s,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(0)}" if prior.device_.type == "cuda" else ""),
        "train_device": (arithmetic or {}).get("device", args.device),
        "training_arithmetic": arithmetic,
        "heldout_reconstruction_rmse": recon_rmse,
        "heldout_channel_fraction": float(held.mean()),
        "sample_channel_fraction": float((samples > 0.5).mean()),
        # quality 3: pattern statistics (latentinv.metrics) of 200 prior samples against the 200 held-out
        # crops (thresholded at 0.5; variograms and connectivity over lags 1-20, channel widths)
        "patterns_vs_heldout_crops": compare_patterns(samples, held, max_lag=20, image_shape=PATCH_SHAPE),
        "vsbrd": {"n_truths": len(truths), "n_starts": args.n_starts, "thresholds_ns": thresholds.tolist(),
                  "accepted_fraction_per_truth": np.asarray(accepted).tolist(),
                  "mean_accepted_fraction": float(np.mean(accepted)),
                  "best_rmse_ns": result.data_rmse.min(axis=1).tolist(),
                  "median_rmse_ns": np.median(result.data_rmse, axis=1).tolist(),
                  "invert_seconds": invert_s},
        "history_every_50": {k: v[::max(1, 50 // every)] for k, v in history.items()},
    }
    os.makedirs(args.report, exist_ok=True)
    with open(os.path.join(args.report, f"{_stem(args)}.json"), "w") as f:
        json.dump(report, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        for a, key in zip(ax, ("reconstruction", "kl")):
            h = np.asarray(history[key])
            k = max(1, len(h) // 100)
            smooth = np.convolve(h, np.ones(k) / k, mode="valid")
            a.plot(np.arange(len(smooth)) * every, smooth)
            a.set(xlabel="iteration", title=key, yscale="log")
        fig.tight_layout()
        fig.savefig(os.path.join(args.report, f"{_stem(args)}_curve.png"), dpi=90)
    except Exception as exc:  # the curve is a nicety; the JSON is the record
        print("no curve:", exc)
    print(json.dumps({k: report[k] for k in ("train_seconds", "heldout_reconstruction_rmse",
                                              "sample_channel_fraction", "heldout_channel_fraction")}, indent=1))
    print("VSbrd mean accepted fraction:", report["vsbrd"]["mean_accepted_fraction"])


def _stem(args):
    """File names of the record: channels_ti_prior* or default_prior* (procedural)."""
    return FOLDERS[args.image]


if __name__ == "__main__":
    main()
