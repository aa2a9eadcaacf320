"""Randomness of the engine: one int seed; the initial latents, shared by all surveys; per-survey,
per-start streams (mini-batch orders, stochastic-clipping draws, proposals) seeded by the survey's
own data, so that a survey's result depends neither on the other surveys nor on their order."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .._checks import check_random_state


def as_seed(random_state, owner="random_state"):
    """One int seed from a ``random_state`` (int, RandomState or None); ``owner`` names the caller in
    the error for anything else."""
    return int(check_random_state(random_state, owner).randint(np.iinfo(np.int32).max))


def replayable_seed(random_state, owner="random_state"):
    """``(seed, replay)``: the engine's int seed for ``random_state``, and the int that, given as
    ``random_state``, gives the same seed again: an int is its own replay; None and a RandomState
    give one int drawn from them first (so a run of ``random_state=None`` can be repeated from its
    result's ``settings["replay_random_state"]``)."""
    if random_state is None or isinstance(random_state, np.random.RandomState):
        replay = as_seed(random_state, owner)
    else:
        check_random_state(random_state, owner)
        replay = int(random_state)
    return as_seed(replay, owner), replay


def initial_latents(seed, n_starts, n_components, latent_distribution):
    """The ``n_starts`` initial latents (float32, CPU), the same for every survey.

    Drawn row by row from one NumPy generator, so that start ``k`` is the same whatever
    ``n_starts`` (more starts only add rows).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    if latent_distribution == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n_starts, n_components))
    else:
        z = rng.standard_normal(size=(n_starts, n_components))
    return torch.tensor(z, dtype=torch.float32)


def traveltimes_digest(y):
    """SHA-256 of traveltimes as float64 numbers, not as bits: -0.0 is hashed as 0.0 (``+ 0.0`` turns
    one into the other), so data equal as numbers seed the same streams and pair with the same starts."""
    return hashlib.sha256((np.ascontiguousarray(y, dtype=np.float64) + 0.0).tobytes())


def survey_generators(seed, y, n_starts, n_streams=2):
    """Per-start NumPy generators of one survey, ``n_streams`` lists of ``n_starts``: for the SGD,
    (mini-batch orders, stochastic clipping).

    Seeded from the estimator's seed and the survey's data, so that a survey's streams do not
    depend on the other surveys or their order.
    """
    digest = traveltimes_digest(y).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    children = np.random.SeedSequence([seed] + words).spawn(n_streams * n_starts)
    gens = [np.random.default_rng(c) for c in children]
    return tuple(gens[i * n_starts:(i + 1) * n_starts] for i in range(n_streams))


class EpochStreams:
    """Per-epoch random numbers of the SGD for ``R = n_surveys * n_starts`` rows (row ``r`` = survey
    ``r // n_starts``, start ``r % n_starts``): mini-batch orders without replacement and, for
    uniform latents, the stochastic-clipping redraws (``"uniform"``: U(-1, 1); ``"normal"``: N(0, 1))."""

    def __init__(self, seed, Y, n_starts, n_data, batch_size, n_components, clip_resample, device,
                 dtype=torch.float32):
        gens = [survey_generators(seed, y, n_starts) for y in Y]
        self.batch_rngs = [g for pair in gens for g in pair[0]]
        self.clip_rngs = [g for pair in gens for g in pair[1]]
        self.n_data, self.batch_size = n_data, batch_size
        self.per_epoch = n_data // batch_size
        self.d, self.clip_resample, self.device, self.dtype = n_components, clip_resample, device, dtype

    def batches(self, n_epochs=1):
        """Mini-batch ray indices of the next ``n_epochs`` epochs, ``(R, n_epochs * per_epoch, batch_size)``
        on the device: the same numbers as ``n_epochs`` calls of one epoch, concatenated."""
        used = self.per_epoch * self.batch_size
        perms = np.stack([np.concatenate([g.permutation(self.n_data)[:used] for _ in range(n_epochs)])
                          for g in self.batch_rngs])
        return torch.tensor(perms.reshape(len(perms), n_epochs * self.per_epoch, self.batch_size),
                            device=self.device)

    def redraws(self, n_epochs=1):
        """Stochastic-clipping draws of the next ``n_epochs`` epochs, ``(n_epochs * per_epoch, R, d)`` on
        the device: the same numbers as ``n_epochs`` calls of one epoch (a generator fills an array
        in order), concatenated."""
        shape = (n_epochs * self.per_epoch, self.d)
        if self.clip_resample == "normal":
            draws = np.stack([g.standard_normal(shape) for g in self.clip_rngs], 1)
        else:
            draws = np.stack([2.0 * g.random(shape) - 1.0 for g in self.clip_rngs], 1)
        return torch.tensor(draws, dtype=self.dtype, device=self.device)
