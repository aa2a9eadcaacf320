"""latentinv.inversion.stationarity by hand: the verdict of ``is_stationary`` on misfits written out (the
fall of the misfit's root against DROP, the fits within FLOOR or within the noise), and ``descent_misfit``'s
trial points (the blocks it decodes, a zero gradient, a trial point whose misfit is not finite)."""
import numpy as np
import pytest
import torch

from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import paper_slowness
from latentinv.inversion.problem import LatentProblem, Misfit
from latentinv.inversion.stationarity import STEPS, descent_misfit, is_stationary
from latentinv.operators import StraightRayOperator


def _misfit(rmse, value, rms_for_target=None):
    """A Misfit of hand values: ``value`` is what the fall is measured on, ``rmse`` what FLOOR is compared
    with, ``rms_for_target`` (given: noise weights) what 1 is compared with."""
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    weighted = rms_for_target is not None
    return Misfit(t(rmse), t(value) if weighted else None, t(value), t(rms_for_target if weighted else rmse))


def test_the_verdict_is_the_fall_of_the_root_of_the_misfit_against_drop_unless_already_fitted():
    """Traveltimes of median 10 ns: FLOOR is 0.01 ns of data RMSE. Unweighted, the fall is measured on the
    root of the sum of squares: 100 -> 85 is a fall of 7.8 % (15 % of the sum itself), 100 -> 79 of 11.1 %."""
    Y = np.full((6, 36), 10.0)
    at = _misfit([1.0, 1.0, 1.0, 0.009, 0.02, 1.0], [100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    best = _misfit([0.9, 0.9, 1.1, 0.0009, 0.001, 0.0], [85.0, 79.0, 120.0, 1.0, 1.0, 0.0])
    # a fall of 7.8 %; of 11.1 %; a rise; a large fall from within FLOOR (0.009 ns); from just above it
    # (0.02 ns: the step's 0.001 ns does not count); an exact fit found by the step
    assert is_stationary(at, best, Y).tolist() == [True, False, True, True, False, False]
    # with noise weights: within the noise (sqrt(chi2 / n_data) 0.9) whatever the fall, not at 1.1; within
    # FLOOR though not within the noise (1.5); a small fall (5 %) outside the noise
    at = _misfit([1.0, 1.0, 0.005, 1.0], [100.0, 100.0, 100.0, 100.0], [0.9, 1.1, 1.5, 1.1])
    best = _misfit([0.1, 0.1, 0.0005, 0.95], [1.0, 1.0, 1.0, 90.25], [0.09, 0.11, 0.15, 1.045])
    assert is_stationary(at, best, Y[:4]).tolist() == [True, False, True, True]


def _line_problem(decoder, n_starts=1, slowness_map=paper_slowness, z_true=(0.5, 0.0), shift=0.0):
    """A 36-ray survey of 12 x 8 cells, data of ``decoder`` at ``z_true`` plus ``shift`` ns, and the
    LatentProblem of a run of ``n_starts`` starts per survey (2 surveys with the same data)."""
    depths = 0.1 + 0.2 * np.arange(6)
    op = StraightRayOperator(Grid2D(12, 8, 0.1), CrossholeSurvey(np.column_stack([np.zeros(6), depths]),
                                                                  np.column_stack([np.full(6, 0.8), depths])))
    with torch.no_grad():
        x = decoder(torch.tensor([z_true], dtype=torch.float32)).double().numpy()
    Y = np.repeat(np.asarray(op.response(paper_slowness(x))).reshape(1, -1) + shift, 2, axis=0)
    return LatentProblem(decoder, slowness_map, op, Y, None, n_starts, "cpu"), Y


class _Level(torch.nn.Module):
    """Every cell ``0.5 + 0.3 * z_0`` (``z_1`` unused), counting the rows of each call."""

    def __init__(self, slope=0.3):
        super().__init__()
        self.slope, self.rows = slope, []

    def forward(self, z):
        self.rows.append(len(z))
        return (0.5 + self.slope * z[:, :1]).expand(len(z), 96)


@pytest.mark.parametrize("n_starts, blocks", [(1, [2] * 9), (4, [8, 8, 2]), (9, [18]), (20, [18])])
def test_the_trial_points_are_decoded_in_blocks_of_the_runs_rows(n_starts, blocks):
    """The run was checked for n_starts rows per survey: the 9 trial points of each of the 2 surveys come in
    blocks of at most that many steps (2 rows per step), after the 2 selected latents."""
    decoder = _Level()
    problem, Y = _line_problem(decoder, n_starts)
    decoder.rows.clear()
    descent_misfit(problem, Y, None, torch.tensor([[-1.0, 0.0], [0.0, 0.0]]), uniform=False)
    assert decoder.rows == [2] + blocks and sum(blocks) == 2 * len(STEPS)


def test_a_zero_gradient_leaves_the_best_trial_at_the_selected_model():
    """A decoder that does not depend on the latents: the gradient is exactly 0, every trial point is the
    selected latent itself, and the best trial's misfit is the selected model's (not NaN from 0 / 0): data
    1 ns off its traveltimes."""
    problem, Y = _line_problem(_Level(slope=0.0), shift=1.0)
    at, best = descent_misfit(problem, Y, None, torch.tensor([[-1.0, 0.0], [0.3, 2.0]]), uniform=False)
    assert float(at.rmse[0]) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(best.rmse.numpy(), at.rmse.numpy())
    assert is_stationary(at, best, Y).tolist() == [True, True]


def test_a_trial_point_whose_misfit_is_not_finite_is_never_the_best():
    """A slowness map that is NaN above model value 0.75: from z_0 = -1 (every cell 0.2; data of z_0 = 0.5,
    0.65) the step of 2 reaches z_0 = 1 (0.8, NaN traveltimes), the step of 1 z_0 = 0 (0.5), the best."""
    nan_above = lambda x: torch.where(x > 0.75, torch.nan, paper_slowness(x))
    problem, Y = _line_problem(_Level(), slowness_map=nan_above)
    at, best = descent_misfit(problem, Y, None, torch.tensor([[-1.0, 0.0], [-1.0, 0.0]]), uniform=False)
    at_step_1, _ = descent_misfit(_line_problem(_Level())[0], Y, None, torch.zeros(2, 2), uniform=False)
    assert torch.isfinite(best.rmse).all() and float(best.rmse[0]) < 0.5 * float(at.rmse[0])
    np.testing.assert_allclose(best.rmse.numpy(), at_step_1.rmse.numpy(), rtol=1e-6)
