"""Small, fast inversion problems that exercise every branch of the SGD engine (shared by the golden
record's writer and its test)."""
import dataclasses
from pathlib import Path

import numpy as np
import torch

from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import LatentInverter, TorchGenerator
from latentinv.operators import ShortestPathOperator, StraightRayOperator

D = 4


def small_crosshole():
    """The tests' small crosshole problem: 12 x 8 cells of 0.1 m, 6 + 6 sensors, every pair."""
    depths = 0.1 + 0.2 * np.arange(6)
    src = np.column_stack([np.zeros(6), depths])
    rec = np.column_stack([np.full(6, 0.8), depths])
    return Grid2D(12, 8, 0.1), CrossholeSurvey(src, rec)       # 96 cells, 36 data


class _Net(torch.nn.Module):
    """A small nonlinear generator: sigmoid(W2 tanh(W1 z)), fixed weights."""

    def __init__(self, d, n_cells):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w1 = torch.nn.Parameter(torch.randn(d, 16, generator=g) * 0.7)
        self.w2 = torch.nn.Parameter(torch.randn(16, n_cells, generator=g) * 0.5)

    def forward(self, z):
        return torch.sigmoid(torch.tanh(z @ self.w1) @ self.w2)


def _generator(distribution="normal"):
    return TorchGenerator(_Net(D, 96), D, latent_distribution=distribution, image_shape=(12, 8))


def _data(op, n=3):
    gen = _generator()
    with torch.no_grad():
        x = gen.decoder_(torch.tensor(np.random.default_rng(3).standard_normal((n, D)), dtype=torch.float32))
    s = (1.0 / (0.06 + 0.02 * (1.0 - x))).double().numpy()
    t = np.asarray(op.response(s)).reshape(n, -1)
    return t + 0.05 * np.random.default_rng(4).standard_normal(t.shape)


#: The observed data of the record's cases, by operator kind (:func:`kind`), as the machine that wrote
#: the record computed them with :func:`_data` (written by ``make_engine_golden.py``).
DATA_FILE = Path(__file__).with_name("engine_golden_data.npz")

#: The data the cases invert: None for :func:`_data`'s, computed here; or ``{kind: (3, 36) array}``, e.g.
#: :func:`recorded_data`. The engine seeds each survey's random streams (mini-batch orders, clipping
#: draws) from the bits of its data (``randomness.survey_generators``): data that another CPU's torch
#: rounds otherwise by one ulp draw other mini-batches from the first step on, so a comparison with the
#: record across machines needs the record's own data.
observed = None


def kind(op):
    """The key of an operator's data: "graph" (shortest path) or "straight"."""
    return "graph" if isinstance(op, ShortestPathOperator) else "straight"


def recorded_data():
    """The record's observed data (``DATA_FILE``): ``{kind: (3, 36) float64 array}``."""
    with np.load(DATA_FILE) as f:
        return {k: f[k] for k in f.files}


def _invert(op, distribution="normal", pipeline=True, **params):
    params = dict(dict(random_state=11, device="cpu", n_starts=4, n_epochs=3), **params)
    inv = LatentInverter(_generator(distribution), op, **params)
    inv._pipeline_nonlinear = pipeline
    X = _data(op) if observed is None else observed[kind(op)].copy()
    return inv.fit(X).invert(X)


def _straight():
    return StraightRayOperator(*small_crosshole())


def _graph():
    return ShortestPathOperator(*small_crosshole(), n_secondary_nodes=2, n_threads=2)


CASES = {
    "sgd_ring": lambda: _invert(_straight(), batch_size=9, lr=1e-3),
    "sgd_noise_target": lambda: _invert(_straight(), batch_size=9, lr=1e-4, noise_std=0.1,
                                        target_misfit=4.5, n_epochs=6),
    "sgd_origin_all_data": lambda: _invert(_straight(), batch_size=None, lr=1e-3,
                                           regularization="origin"),
    "adam_uniform_normal_clip": lambda: _invert(_straight(), "uniform", optimizer="adam", lr=0.05,
                                                batch_size=12, regularization=None,
                                                clip_resample="normal"),
    "sgd_uniform_uniform_clip": lambda: _invert(_straight(), "uniform", lr=0.05, batch_size=12,
                                                regularization=None, clip_resample="uniform"),
    "graph_pipelined": lambda: _invert(_graph(), batch_size=9, lr=0.1, lam=1.0, lam_decay=0.99),
    "graph_inline_exact": lambda: _invert(_graph(), pipeline=False, batch_size=9, lr=0.01,
                                          nonlinear_gradient="exact"),
    "graph_noise": lambda: _invert(_graph(), batch_size=18, lr=0.001, noise_std=0.2),
}


#: cases whose starts stop early (target misfit): their batch shrinks as they stop
SHRINKING = {"sgd_noise_target"}


def result_arrays(result):
    """The result's arrays by field name (None fields left out)."""
    out = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = value
    return out
