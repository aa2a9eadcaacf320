"""Convergence stopping and successive halving of LatentInverter (tol, prune="halving"): each rule
re-derived from the run's own histories by an independent implementation, the batch shrinking as
starts stop, and the pipelined nonlinear path agreeing with the in-line one."""
import math

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentinv.inversion import LatentInverter, TorchGenerator
from latentinv.operators import ShortestPathOperator, StraightRayOperator

sys.path.insert(0, str(Path(__file__).with_name("golden")))
from cases import small_crosshole  # noqa: E402  (the small problem shared with the golden record)

D = 4


class Net(torch.nn.Module):
    """sigmoid(W2 tanh(W1 z)); records the batch size of every call."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = torch.nn.Parameter(torch.randn(D, 16, generator=g) * 0.7)
        self.w2 = torch.nn.Parameter(torch.randn(16, 96, generator=g) * 0.5)
        self.batch_sizes = []

    def forward(self, z):
        self.batch_sizes.append(z.shape[0])
        return torch.sigmoid(torch.tanh(z @ self.w1) @ self.w2)


def _data(op, n=2):
    with torch.no_grad():
        x = Net()(torch.tensor(np.random.default_rng(5).standard_normal((n, D)), dtype=torch.float32))
    return np.asarray(op.response((1.0 / (0.06 + 0.02 * (1.0 - x))).double().numpy())).reshape(n, -1)


def _run(op=None, pipeline=True, **params):
    op = op or StraightRayOperator(*small_crosshole())
    net = Net()
    params = dict(dict(random_state=2, device="cpu", n_starts=8, n_epochs=12, batch_size=9, lr=2e-3), **params)
    inv = LatentInverter(TorchGenerator(net, D, image_shape=(12, 8)), op, **params)
    inv._pipeline_nonlinear = pipeline
    X = _data(op)
    return inv.fit(X).invert(X), net, inv


def _best_so_far_at_epoch_ends(res, per_epoch):
    """Best full-data misfit (sum of squares = n_data rmse**2) of each start at each epoch's end."""
    sse = 36 * res.data_rmse_history**2
    best = np.fmin.accumulate(np.where(np.isnan(sse), np.inf, sse), axis=2)
    return best[:, :, per_epoch - 1::per_epoch]


def test_convergence_rule_rederived_from_the_histories():
    tol, window, per_epoch = 0.02, 2, 4
    res, _, _ = _run(tol=tol, n_epochs_no_change=window, n_epochs=30)
    best = _best_so_far_at_epoch_ends(res, per_epoch)
    for s in range(res.n_surveys):
        for k in range(res.n_starts):
            ref, last_fall, stop_epoch = np.inf, 0, None
            for e in range(best.shape[2]):          # the rule, by hand
                if best[s, k, e] < (1 - tol) * ref:
                    ref, last_fall = best[s, k, e], e
                if e - last_fall >= window:
                    stop_epoch = e
                    break
            assert res.converged[s, k] == (stop_epoch is not None), (s, k)
            expected_run = 30 * per_epoch if stop_epoch is None else (stop_epoch + 1) * per_epoch
            assert res.n_iterations_run[s, k] == expected_run, (s, k)
    assert res.converged.sum() >= 4          # the case is built so that most starts converge early


def test_halving_keeps_the_best_starts_by_their_misfit_so_far():
    per_epoch, every = 4, 2
    res, _, _ = _run(prune="halving", prune_every=every, n_epochs=8)
    best = _best_so_far_at_epoch_ends(res, per_epoch)
    for s in range(res.n_surveys):
        running = list(range(8))
        for e in (1, 3, 5):                      # epoch ends 2, 4, 6 (0-based 1, 3, 5)
            keep = max(1, math.ceil(0.5 * len(running)))
            ranked = sorted(running, key=lambda k: (best[s, k, e], k))
            for k in ranked[keep:]:
                assert res.pruned[s, k]
                assert res.n_iterations_run[s, k] == (e + 1) * per_epoch
            running = ranked[:keep]
        assert running == [k for k in range(8) if not res.pruned[s, k]]
        assert res.n_iterations_run[s, running[0]] == 8 * per_epoch
    # the selected model is the best of all starts over what they ran
    assert np.array_equal(res.best_start, np.argmin(res.data_rmse, axis=1))


def test_default_prune_every_splits_the_budget_between_the_rounds():
    _, _, inv = _run(prune="halving", n_epochs=40)        # 8 starts: 3 rounds + the final run
    assert inv._prune_every() == 40 // 4


def test_stopped_starts_leave_the_batch():
    res, net, _ = _run(prune="halving", prune_every=2, n_epochs=8)
    # the 32 iterations of the inversion (2 surveys), then the stationarity check: the 2 selected latents,
    # and its 9 trial steps per survey in blocks of n_starts (8 steps, then 1)
    check = [2, 16, 2]
    sizes = net.batch_sizes[-35:]
    assert sizes == [16] * 8 + [8] * 8 + [4] * 8 + [2] * 8 + check
    res_full, net_full, _ = _run(n_epochs=8)
    assert net_full.batch_sizes[-35:] == [16] * 32 + check
    assert not res_full.pruned.any() and not res_full.converged.any()


def test_pipelined_graph_operator_stops_as_in_line():
    def op():
        return ShortestPathOperator(*small_crosshole(), n_secondary_nodes=2, n_threads=2)
    a, _, _ = _run(op(), True, tol=0.05, n_epochs_no_change=1, prune="halving", prune_every=3,
                   n_epochs=9, lr=0.05)
    b, _, _ = _run(op(), False, tol=0.05, n_epochs_no_change=1, prune="halving", prune_every=3,
                   n_epochs=9, lr=0.05)
    assert (a.converged | a.pruned).any()
    for f in ("n_iterations_run", "converged", "pruned", "best_start"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    np.testing.assert_array_equal(a.models, b.models)


@pytest.mark.parametrize("params, match", [
    (dict(tol=0.0), "tol must be > 0"), (dict(tol=1.5), "tol must be <= 1"),
    (dict(n_epochs_no_change=0), "n_epochs_no_change must be >= 1"),
    (dict(prune="quarter"), "prune must be None or 'halving'"),
    (dict(prune_every=0), "prune_every must be >= 1"),
    (dict(prune_keep=1.0), "prune_keep must be < 1"), (dict(prune_keep=0), "prune_keep must be > 0"),
])
def test_bad_stopping_parameters_are_refused(params, match):
    with pytest.raises(ValueError, match=match):
        _run(**params)


# ---------------------------------------------------------------------------------------------------
# the rules' boundaries, on the Stopping object itself (a mutation audit found them untested)
# ---------------------------------------------------------------------------------------------------
from latentinv.inversion.stopping import DIVERGENCE_FACTOR, Stopping  # noqa: E402


def test_target_is_reached_at_equality_and_divergence_is_beyond_factor_sqrt_d():
    d = 4
    st = Stopping(4, 4, d, "cpu", target_misfit=1.5)
    bound = DIVERGENCE_FACTOR * math.sqrt(d)          # 200: the norm of a 100-sigma draw, not 100 d
    z = torch.zeros(4, d)
    z[1, 0], z[2, 0], z[3, 0] = 0.99 * bound, 1.01 * bound, float("nan")
    rms = torch.tensor([1.5, 1.6, 1.6, 1.6])          # "at most" the target: equality reaches it
    stop = st.after_step(torch.arange(4), rms, z)
    assert stop.tolist() == [True, False, True, True]
    assert st.reached.tolist() == [True, False, False, False]
    assert st.diverged.tolist() == [False, False, True, True]


def test_convergence_needs_a_fall_strictly_below_one_minus_tol():
    st = Stopping(1, 1, 2, "cpu", tol=0.5, n_epochs_no_change=2)
    rows = torch.arange(1)
    assert not st.at_epoch_end(0, rows, torch.tensor([2.0])).item()    # first fall: reference 2
    assert not st.at_epoch_end(1, rows, torch.tensor([1.0])).item()    # exactly (1 - tol) * 2: no fall
    assert st.at_epoch_end(2, rows, torch.tensor([1.0])).item()        # 2 epochs without a fall
    assert st.converged.tolist() == [True]
    st2 = Stopping(1, 1, 2, "cpu", tol=0.5, n_epochs_no_change=2)
    st2.at_epoch_end(0, rows, torch.tensor([2.0]))
    st2.at_epoch_end(1, rows, torch.tensor([0.999]))                   # a fall: the window restarts
    assert not st2.at_epoch_end(2, rows, torch.tensor([0.999])).item()


def test_halving_keeps_the_ceiling_of_the_fraction_and_breaks_ties_by_the_lower_start():
    st = Stopping(5, 5, 2, "cpu", prune_every=1, prune_keep=0.5)
    best = torch.tensor([2.0, 1.0, 2.0, 2.0, 5.0])   # start 1 best, then a three-way tie
    cut = st.at_epoch_end(0, torch.arange(5), best)
    # ceil(0.5 * 5) = 3 kept: start 1, then the tie's lower starts 0 and 2
    assert cut.tolist() == [False, False, False, True, True]
    assert st.pruned.tolist() == [False, False, False, True, True]


def test_halving_ranks_a_nan_misfit_last():
    st = Stopping(4, 4, 2, "cpu", prune_every=1, prune_keep=0.5)
    cut = st.at_epoch_end(0, torch.arange(4), torch.tensor([float("nan"), 3.0, 1.0, 2.0]))
    assert cut.tolist() == [True, True, False, False]     # keep 2: starts 2 and 3; NaN is never kept
